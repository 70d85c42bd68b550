"""What every part of the store shares: the constants of the layout, the one client factory
(`connect`), the Redis error translation (`translate_errors`), the optimistic-transaction loop
(`optimistic`), the base class holding the connection, and how a proposal's record is encoded (its
bodies stored once, by hash) and its counters kept with each write. The package docstring
(services/store/__init__.py) describes the keys.
"""

import functools
import hashlib
import json
import zlib
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import redis
from isal import isal_zlib

from services.errors import StoreUnavailable
from services.models import Event, Proposal, RunResult
from services.states import State
from services.store import stats

P = ParamSpec("P")
R = TypeVar("R")

EVENTS_CHANNEL = "ar:events"
STATS_KEY = "ar:stats"
RESULTS_KEY = "ar:results"
FIRST_RUN_KEY = "ar:stats:first-run"
SCHEMA_KEY = "ar:schema"
# The layout of the keys below. 1 (no `ar:schema` key): before counters were kept with the writes.
# 2: `ar:stats` counters. A store of an older layout is refused until `MIGRATE_COMMAND` has run.
SCHEMA_VERSION = 2
RECORD_MARK = b"z"  # a record of layout 2 starts with it; JSON (layout 1) starts with "{"
# Bodies are compressed with ISA-L's deflate (`isal_zlib`, a zlib stream that zlib reads): 33 KB of
# train.py in ~0.06 ms to ~13 KB at its level 1, where zlib's level 1 takes ~0.4 ms (and level 6,
# 10% smaller, 3x that); every unique submit compresses its candidate.
BODY_ZLIB_LEVEL = 1
RECORD_ZLIB_LEVEL = 6  # records are small (~6 KB of JSON): the better ratio costs ~0.1 ms
COMMIT_FILES_CACHED = 16  # commits' train.py kept per store (the best and recent bases)
BODY_CACHE_ENTRIES = 256  # decompressed bodies kept per process (content-addressed: never stale)
MIGRATE_COMMAND = "python -m services.store.migrate"
# The records whose layout changed: a store without them is stamped with SCHEMA_VERSION as it is.
DATA_KEYS = ("ar:proposals",)
LOG_AGING_KEY = "ar:aging:logs"
# What a run's log tail becomes once aged out: says where it went, so a reader of GET .../log knows.
AGED_LOG_TAIL = (
    "[log tail removed by the store's aging policy (AR_RUN_LOG_RETENTION_S); the run's numbers are kept]\n"
)
AGING_BATCH = 200  # proposals aged per round trip of `age_run_logs`
SUBMITTED_REASON = "submitted"  # the reason of a proposal's first event, written by `create`
IDEMPOTENCY_TTL_S = 24 * 3600  # how long a retried submit finds its first answer
# Live logs are for watching a run; the kept tail of a finished run is in its RunResult. The cap bounds
# Redis memory: entries of at most LIVE_LOG_ENTRY_CHARS characters (<= 4 KiB of UTF-8), at most
# LIVE_LOG_MAX_ENTRIES of them (older ones are trimmed), so <= 256 KiB per proposal.
LIVE_LOG_ENTRY_CHARS = 1024
LIVE_LOG_MAX_ENTRIES = 64
LIVE_LOG_TTL_S = 3600  # a live log expires an hour after its last append
LIVE_LOG_READ_MAX = 256  # entries returned by one read
# A Redis list holds at most 2**32 - 1 members, and Redis refuses an index beyond 64 bits: a larger
# program.md version cannot exist and is never sent to Redis.
REDIS_MAX_MEMBERS = 2**32 - 1
# Every Redis client is made by `connect`, with explicit timeouts (redis-py 8 defaults both to 5 s).
REDIS_CONNECT_TIMEOUT_S = 5  # a Redis that accepts no connection within 5 s is down: fail, retry later
# How long a store client waits for a reply. It sends no blocking command (no BLPOP, no XREAD BLOCK):
# its pub/sub polls each wait their own `timeout` (at most 5 s, for the subscription's confirmation),
# and `PubSub.listen()` reads with no timeout by redis-py's design. So 10 s only ever cuts off a Redis
# that stopped answering. (RQ's clients block longer: `queue.rq_worker` makes its own.)
STORE_SOCKET_TIMEOUT_S = 10


# KEYS: guard keys. ARGV: commands, each as its argument count and then its arguments. If a guard key
# holds a value, returns {its 1-based index, the value} and writes nothing; else runs every command
# and returns {0}. A script runs alone, so the check and the writes are one atomic step.
CREATE_UNLESS_EXISTS = """
for i, key in ipairs(KEYS) do
    local value = redis.call('GET', key)
    if value then
        return {i, value}
    end
end
local at = 1
while at <= #ARGV do
    local argc = tonumber(ARGV[at])
    redis.call(unpack(ARGV, at + 1, at + argc))
    at = at + argc + 1
end
return {0, ''}
"""


def optimistic(
    client: "redis.Redis[bytes]", watch: list[str], attempt: "Callable[[redis.client.Pipeline[bytes]], R]"
) -> R:
    """The optimistic-transaction loop, the one place it is written: WATCH `watch`, then `attempt(pipe)`
    reads (immediately, while watching), queues its writes after `pipe.multi()` and executes them;
    if a watched key changed meanwhile (WatchError), the attempt starts again on fresh reads."""
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                if watch:
                    pipe.watch(*watch)
                return attempt(pipe)
            except redis.WatchError:
                continue


def translate_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Redis errors raised by `fn` become StoreUnavailable (services/errors.py), naming the cause: the
    store, and the modules that send their own commands on its connection (services/queue.py,
    services/controller/quotas.py), translate at their boundary with this."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    return wrapper


def connect(url: str, socket_timeout_s: float = STORE_SOCKET_TIMEOUT_S) -> "redis.Redis[bytes]":
    """A Redis client with explicit timeouts; `socket_timeout_s` must be longer than every blocking
    command made on it."""
    return redis.Redis.from_url(
        url, socket_timeout=socket_timeout_s, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S
    )


class StoreBase:
    """The connection and what this process keeps of the store; each part of `Store` extends it."""

    def __init__(self, client: "redis.Redis[bytes]") -> None:
        self.r = client
        # commit → train.py: a commit's file never changes, and every submit reads its base's
        self._commit_files: dict[str, str] = {}


BODY_HASHES = {"train_py_sha256": "train_py", "base_train_py_sha256": "base_train_py"}
body_cache: dict[str, str] = {}  # sha256 → body; insertion order is age (dicts keep it)
compressed_bodies: dict[str, bytes] = {}  # sha256 → zlib of the body, for bodies written again (the base)


def remember_body(sha: str, body: str) -> None:
    body_cache[sha] = body
    while len(body_cache) > BODY_CACHE_ENTRIES:
        del body_cache[next(iter(body_cache))]


def encode_record(p: Proposal) -> tuple[bytes, dict[str, bytes]]:
    """(the record, {sha256: zlib of body} of its two train.py bodies)."""
    data = p.model_dump(mode="json", exclude=set(BODY_HASHES.values()))
    bodies: dict[str, bytes] = {}
    for key, name in BODY_HASHES.items():
        text: str = getattr(p, name)
        raw = text.encode("utf-8")
        sha = hashlib.sha256(raw).hexdigest()
        data[key] = sha
        if sha not in compressed_bodies:
            if len(compressed_bodies) >= BODY_CACHE_ENTRIES:
                del compressed_bodies[next(iter(compressed_bodies))]
            compressed_bodies[sha] = isal_zlib.compress(raw, BODY_ZLIB_LEVEL)
        bodies[sha] = compressed_bodies[sha]
        remember_body(sha, text)
    return RECORD_MARK + zlib.compress(
        json.dumps(data, separators=(",", ":")).encode(), RECORD_ZLIB_LEVEL
    ), bodies


def record_fields(raw: bytes) -> dict[str, Any]:
    """A record's fields: layout 2 (compressed, bodies by hash) or layout 1 (JSON, bodies inline)."""
    if raw.startswith(RECORD_MARK):
        raw = zlib.decompress(raw[len(RECORD_MARK) :])
    return dict(json.loads(raw))


def aged(result: RunResult) -> RunResult:
    return result.model_copy(update={"log_tail": AGED_LOG_TAIL}) if result.log_tail else result


def put_bodies(pipe: "redis.client.Pipeline[bytes]", bodies: dict[str, bytes]) -> None:
    for sha, blob in bodies.items():
        pipe.set(f"ar:body:{sha}", blob, nx=True)


def count_write(pipe: "redis.client.Pipeline[bytes]", old: Proposal | None, new: Proposal) -> None:
    """Queue the counters' change for a write of `new` (over `old`) on a MULTI pipeline."""
    for field, change in stats.difference(old, new).items():
        if stats.is_float(field):
            pipe.hincrbyfloat(STATS_KEY, field, change)
        else:
            pipe.hincrby(STATS_KEY, field, int(change))
    old_row = None if old is None else stats.results_member(old)
    new_row = stats.results_member(new)
    if old_row != new_row:
        if old_row is not None:
            pipe.zrem(RESULTS_KEY, old_row)
        if new_row is not None:
            pipe.zadd(RESULTS_KEY, {new_row: new.created_at})
    started = stats.first_run_started_at(new)
    if started is not None:
        pipe.zadd(FIRST_RUN_KEY, {"first": started}, lt=True)


def migrate_message(version: int) -> str:
    return (
        f"this Redis store has layout {version}, written by an older version of the service; this version "
        f"reads layout {SCHEMA_VERSION}. Stop the controller, workers and committer, then run "
        f"`{MIGRATE_COMMAND} --redis-url <the same AR_REDIS_URL>` once (it keeps every record), and start "
        "them again"
    )


def state_key(state: State) -> str:
    """The index of the proposals in `state` (a zset id → created_at), for scripts that read it."""
    return f"ar:state:{state}"


def idem_key(owner: str, key: str) -> str:
    return f"ar:idem:{owner}:{key}"


def event_message(proposal_id: str, event: Event) -> str:
    return json.dumps({"proposal_id": proposal_id, **event.model_dump(mode="json")})
