"""The store: proposals, their events, the research record, program.md versions, tokens, live logs.

One module per noun behind one class, `Store`: proposals.py (proposals, their events, counters,
aging, the layout), research.py (the branch's commits, best, lineage, fingerprints, calibration),
programs.py (program.md versions), tokens.py, livelogs.py; base.py holds what they share. Every key
the service uses, with its type, time to live and owner, is in one table: services/store/keys.py.
Redis errors are translated into StoreUnavailable at every method (`translate_errors`); every
read-modify-write goes through one optimistic-transaction loop (`optimistic`).

Keys (prefix `ar:`):
    proposal:<id>          a Proposal's record: "z" + zlib of its JSON, in which the two train.py bodies
                           are replaced by their sha256 (`train_py_sha256`, `base_train_py_sha256`);
                           layout 1 held plain JSON with the bodies inline
    body:<sha256>          zlib of one train.py body, stored once whoever refers to it (never changes)
    events:<id>            list of Event JSON, oldest first
    proposals              zset id → created_at (listing order)
    state:<state>          zset id → created_at (listing by state)
    dedupe:<base>:<hash>   id of the proposal with that normalised content on that base
    idem:<owner>:<key>     `<id> <request hash>` of a submit with that Idempotency-Key (a day); the
                           hash binds the key to that request (older values hold the id alone)
    scores                 zset id → val_bpb of scored proposals (leaderboard)
    scores:<fingerprint>   zset id → val_bpb, per fingerprint (scores are compared only within one)
    fingerprints           set of fingerprint keys seen
    fingerprint-fields     hash fingerprint key → JSON of its Fingerprint (what the key stands for)
    calibration:<fp>       hash commit → JSON list of every val_bpb of that branch commit (noise)
    calibration:<fp>:run-ids      set of the run ids counted in it (each run counts once)
    calibration-gap:<fp>   hash commit → JSON list of test_bpb − val_bpb of its runs that scored the
                           test split (the held-out test tripwire's noise)
    calibration-gap:<fp>:run-ids  set of the run ids counted in it
    calibration-pair:<fp>  hash proposal@base → JSON list of its confirmation's paired differences
                           (candidate − best on one seed: the same-seed correlation of seq-bayes/v4)
    calibration-pair:<fp>:run-ids set of the run ids counted in it
    best                   JSON of Best
    commits                hash commit → train.py on the research branch
    lineage                hash commit → JSON of its LineageEntry (the branch's history, for the API)
    tokens                 hash sha256(token) → JSON {name, role}
    program:versions       list of ProgramVersion JSON; index i holds version i + 1
    livelog:<id>           stream of {chunk} entries: the live log of a running proposal (capped, expires)
    repo-bundle            hash {head, bundle}: a git bundle of the research branch and its notes as
                           agents may read them, written by the committer (GET /v1/repo.bundle)
    stats                  hash counter → number: proposals per state, GPU-seconds, runs by outcome and
                           duration, program.md rows (services/store/stats.py), kept with every write
    stats:first-run        zset {"first": when the earliest stored run started}
    results                zset "<id>\t<results.tsv row>" → created_at, kept with each write
    schema                 the store's layout version (SCHEMA_VERSION); services/store/migrate.py
    aging:logs             zset id → when it finished, of finished proposals whose run log tails are
                           still kept (`age_run_logs`; "Aging" below)
Channel `ar:events` carries every transition as JSON {proposal_id, state, reason, at}.

Aging. What grows with the record and is not evidence is trimmed; evidence never is:
    live logs              capped (LIVE_LOG_MAX_ENTRIES) and expire LIVE_LOG_TTL_S after the last append
    run log tails          a finished proposal's `RunResult.log_tail`s are replaced by AGED_LOG_TAIL once
                           it finished longer ago than the retention (`age_run_logs`, run by the
                           workers' sweep, AR_RUN_LOG_RETENTION_S); every other field of every run stays
    idempotency keys       expire after IDEMPOTENCY_TTL_S
Kept whatever their age: proposal records with every run's numbers, fingerprints and seeds, decisions,
events, scores, calibration, lineage, results.tsv rows, bodies. A decision cites runs by their
numbers (Decision, RunResult), and the committer's git notes hold the same results without the log
tails (committer.py), so no aging touches what a decision or a note refers to.
"""

from services.store import keys, stats
from services.store.base import (
    AGED_LOG_TAIL,
    IDEMPOTENCY_TTL_S,
    LIVE_LOG_ENTRY_CHARS,
    LIVE_LOG_MAX_ENTRIES,
    LIVE_LOG_READ_MAX,
    LIVE_LOG_TTL_S,
    LOG_AGING_KEY,
    MIGRATE_COMMAND,
    REDIS_CONNECT_TIMEOUT_S,
    SCHEMA_KEY,
    SCHEMA_VERSION,
    STORE_SOCKET_TIMEOUT_S,
    SUBMITTED_REASON,
    connect,
    optimistic,
    state_key,
    translate_errors,
)
from services.store.livelogs import LiveLogStore
from services.store.programs import ProgramStore
from services.store.proposals import EventSubscription, ProposalStore, StatusRead
from services.store.research import ResearchStore
from services.store.tokens import TokenStore


class Store(ProposalStore, ResearchStore, ProgramStore, TokenStore, LiveLogStore):
    """The whole store, one part per noun (services/store/proposals.py, research.py, programs.py,
    tokens.py, livelogs.py), on one connection."""

    @classmethod
    def from_url(cls, url: str) -> "Store":
        return cls(connect(url))

    @translate_errors
    def ping(self) -> bool:
        return bool(self.r.ping())


__all__ = [
    "AGED_LOG_TAIL",
    "IDEMPOTENCY_TTL_S",
    "LIVE_LOG_ENTRY_CHARS",
    "LIVE_LOG_MAX_ENTRIES",
    "LIVE_LOG_READ_MAX",
    "LIVE_LOG_TTL_S",
    "LOG_AGING_KEY",
    "MIGRATE_COMMAND",
    "REDIS_CONNECT_TIMEOUT_S",
    "SCHEMA_KEY",
    "SCHEMA_VERSION",
    "STORE_SOCKET_TIMEOUT_S",
    "SUBMITTED_REASON",
    "EventSubscription",
    "StatusRead",
    "Store",
    "connect",
    "keys",
    "optimistic",
    "state_key",
    "stats",
    "translate_errors",
]
