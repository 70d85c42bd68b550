"""Every Redis key the service uses, in one table: its name pattern, Redis type, time to live and the
module that reads and writes it. Modules build key names from these entries (`Key.of`), never from
string literals, so this table is the whole list. RQ's own keys (`rq:*`) belong to RQ and are not here.
"""

from dataclasses import dataclass
from typing import Literal

RedisType = Literal["string", "hash", "list", "set", "zset", "stream", "channel"]
PREFIX = "ar:"


@dataclass(frozen=True)
class Key:
    pattern: str  # after PREFIX; `{}` stands for the parts named in `parts`
    type: RedisType
    ttl: str  # "none", or how long it lives and why
    owner: str  # the module that writes it
    what: str
    parts: tuple[str, ...] = ()

    def of(self, *parts: object) -> str:
        """The key's name with `parts` filled in."""
        if len(parts) != len(self.parts):
            raise ValueError(f"key {self.pattern!r} takes {self.parts}, got {parts!r}")
        return PREFIX + self.pattern.format(*parts)


STORE = "services/store"
PROPOSAL = Key(
    "proposal:{}", "string", "none", STORE, "a proposal's record (zlib JSON, bodies by hash)", ("id",)
)
BODY = Key("body:{}", "string", "none", STORE, "zlib of one train.py body, stored once", ("sha256",))
EVENTS = Key("events:{}", "list", "none", STORE, "a proposal's events, oldest first", ("id",))
PROPOSALS = Key("proposals", "zset", "none", STORE, "id → created_at: listing order")
STATE = Key("state:{}", "zset", "none", STORE, "id → created_at of the proposals in a state", ("state",))
DEDUPE = Key(
    "dedupe:{}:{}", "string", "none", STORE, "the id with this content on this base", ("base", "hash")
)
IDEMPOTENCY = Key(
    "idem:{}:{}", "string", "a day: how long a retried submit finds its first answer", STORE,
    "`<id> <request hash>` of a submit with that Idempotency-Key", ("owner", "key"),
)  # fmt: skip
STATS = Key("stats", "hash", "none", STORE, "counters kept with every write (services/store/stats.py)")
FIRST_RUN = Key("stats:first-run", "zset", "none", STORE, "when the earliest stored run started")
RESULTS = Key("results", "zset", "none", STORE, "`<id>\t<results.tsv row>` → created_at")
SCHEMA = Key("schema", "string", "none", STORE, "the store's layout version")
LOG_AGING = Key(
    "aging:logs", "zset", "none (members leave once aged)", STORE,
    "id → when it finished: finished proposals whose run log tails are still kept",
)  # fmt: skip
SCORES = Key("scores", "zset", "none", STORE, "id → val_bpb: the leaderboard")
FINGERPRINT_SCORES = Key("scores:{}", "zset", "none", STORE, "id → val_bpb on one fingerprint", ("fp",))
FINGERPRINTS = Key("fingerprints", "set", "none", STORE, "fingerprint keys seen")
FINGERPRINT_FIELDS = Key("fingerprint-fields", "hash", "none", STORE, "fingerprint key → its fields")
CALIBRATION = Key("calibration:{}", "hash", "none", STORE, "commit → val_bpb of its runs", ("fp",))
CALIBRATION_RUNS = Key("calibration:{}:run-ids", "set", "none", STORE, "run ids counted in it", ("fp",))
GAP = Key("calibration-gap:{}", "hash", "none", STORE, "commit → test − val of its runs", ("fp",))
GAP_RUNS = Key("calibration-gap:{}:run-ids", "set", "none", STORE, "run ids counted in it", ("fp",))
PAIR = Key("calibration-pair:{}", "hash", "none", STORE, "confirmation → its paired differences", ("fp",))
PAIR_RUNS = Key("calibration-pair:{}:run-ids", "set", "none", STORE, "run ids counted in it", ("fp",))
BEST = Key("best", "string", "none", STORE, "JSON of Best")
COMMITS = Key("commits", "hash", "none", STORE, "branch commit → its train.py")
LINEAGE = Key("lineage", "hash", "none", STORE, "branch commit → its LineageEntry")
TOKENS = Key("tokens", "hash", "none", STORE, "sha256(token) → {name, role}")
PROGRAM_VERSIONS = Key("program:versions", "list", "none", STORE, "program.md versions; index i: i + 1")
LIVE_LOG = Key("livelog:{}", "stream", "an hour after the last append", STORE, "a running log", ("id",))
REPO_BUNDLE = Key("repo-bundle", "hash", "none", STORE, "{head, bundle}: the research branch as a bundle")
EVENTS_CHANNEL = Key("events", "channel", "none", STORE, "every transition, published")
QUOTA_PLACES = Key(
    "quota:places:{}", "zset", "members expire: a reservation 30 s, a place while queued",
    "services/controller/quotas.py", "a token's places among queued proposals", ("token",),
)  # fmt: skip
QUOTA_RATE = Key(
    "quota:rate:{}:{}", "string", "two minutes: a window's counter outlives its minute",
    "services/controller/quotas.py", "a token's submits in one minute", ("token", "window"),
)  # fmt: skip
LEASE = Key(
    "lease:{}", "string", "worker_lease_ttl_s, refreshed while it runs", "services/worker/recovery.py",
    "the worker running a proposal", ("id",),
)  # fmt: skip
WORKER_NAME = Key(
    "worker-name:{}", "string", "worker_lease_ttl_s, refreshed while the worker lives", "services/worker/recovery.py",
    "the live worker process that holds a worker name (host, pid)", ("name",),
)  # fmt: skip
LEASED = Key("leased", "set", "none", "services/worker/recovery.py", "ids that hold or held a lease")
CONFIRM_CLAIM = Key(
    "claim:{}:confirm", "string", "the confirmation runs' budget", "services/worker/worker.py",
    "the worker running a proposal's confirmation runs", ("id",),
)  # fmt: skip
FIXED_FILES = Key(
    "fixed-files:{}",
    "string",
    "none",
    "services/worker/fixed_files.py",
    "pinned fixed-file hashes",
    ("scope",),
)
REPLACING = Key(
    "replacing:{}", "string", "a few seconds: one sweeper replaces a dead job", "services/queue.py",
    "a lock on replacing a run job", ("job",),
)  # fmt: skip
WAITING_FOR_BASELINE = Key(
    "waiting-for-baseline",
    "list",
    "none",
    "services/committer/committer.py",
    "proposals scored before the baseline",
)
BASELINE_REQUESTED = Key(
    "baseline-requested",
    "string",
    "none",
    "services/committer/committer.py",
    "the baseline's runs were asked for",
)
NEW_FINGERPRINT_RUNS = Key(
    "new-fingerprint-runs:{}", "string", "none", "services/committer/committer.py",
    "the runs of the best asked for on a new fingerprint", ("fp",),
)  # fmt: skip

TABLE: tuple[Key, ...] = tuple(value for value in list(globals().values()) if isinstance(value, Key))
