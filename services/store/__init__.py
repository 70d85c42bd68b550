"""The store: proposals, their events, the research record, program.md versions, tokens, live logs.

Every key the service uses, with its type, time to live and owner, is in one table:
services/store/keys.py. Redis errors are translated into StoreUnavailable here (`translate_errors`); every
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

import functools
import hashlib
import json
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

import redis

from services.errors import (
    Conflict,
    IdempotencyKeyReused,
    IllegalTransition,
    NotFound,
    StoreNeedsMigration,
    StoreUnavailable,
)
from services.models import Best, Event, Fingerprint, LineageEntry, ProgramVersion, Proposal, RunResult, now
from services.states import TERMINAL, State, may_follow
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
BODY_ZLIB_LEVEL = 1  # 33 KB of train.py in ~0.3 ms to ~13 KB; level 6 saves 10% more for 3x the time
RECORD_ZLIB_LEVEL = 6  # records are small (~6 KB of JSON): the better ratio costs ~0.1 ms
COMMIT_FILES_CACHED = 16  # commits' train.py kept per store (the best and recent bases)
BODY_CACHE_ENTRIES = 256  # decompressed bodies kept per process (content-addressed: never stale)
MIGRATE_COMMAND = "python -m services.store.migrate"
# The records whose layout changed: a store without them is stamped with SCHEMA_VERSION as it is.
_DATA_KEYS = ("ar:proposals",)
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
_CREATE_UNLESS_EXISTS = """
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
    services/quotas.py), translate at their boundary with this."""

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


@dataclass(frozen=True)
class StatusRead:
    queues: dict[str, int]  # queue name → jobs waiting
    states: dict[str, int]  # state → proposals in it (every state, 0 included)
    counters: dict[str, float]  # every counter of services/store/stats.py
    best: Best | None


class Store:
    def __init__(self, client: "redis.Redis[bytes]") -> None:
        self.r = client
        # commit → train.py: a commit's file never changes, and every submit reads its base's
        self._commit_files: dict[str, str] = {}

    @classmethod
    def from_url(cls, url: str) -> "Store":
        return cls(connect(url))

    @translate_errors
    def ping(self) -> bool:
        return bool(self.r.ping())

    # --- proposals

    @translate_errors
    def create(
        self, proposal: Proposal, *, dedupe: bool = True, idempotency: tuple[str, str, str] | None = None,
        also: "Callable[[redis.client.Pipeline[bytes]], None] | None" = None,
    ) -> tuple[Proposal, bool]:  # fmt: skip
        """Store a new proposal; return (proposal, created). A duplicate (same normalised content on the
        same base) or a repeated (owner, Idempotency-Key, request hash) returns the existing proposal and
        stores nothing; the key with another request hash raises IdempotencyKeyReused. Atomic:
        concurrent submits of the same content or key create exactly one. `also` queues more writes
        (another module's keys) that happen with the proposal's, and only if it is created.

        One round trip: the check and the writes run as one Lua script (`_CREATE_UNLESS_EXISTS`), the
        writes queued on an unsent pipeline by the same code every other write uses."""
        guards = []
        values = {}
        if idempotency is not None:
            owner, key, request_hash = idempotency
            guards.append(_idem_key(owner, key))
            values[_idem_key(owner, key)] = f"{proposal.id} {request_hash}"
        if dedupe:
            guards.append(f"ar:dedupe:{proposal.base_commit}:{proposal.content_hash}")
        event = Event(at=proposal.created_at, state=proposal.state, reason=SUBMITTED_REASON)
        record, bodies = _encode(proposal)
        with self.r.pipeline(transaction=False) as writes:  # recorded, never executed
            _put_bodies(writes, bodies)
            writes.set(f"ar:proposal:{proposal.id}", record)
            writes.rpush(f"ar:events:{proposal.id}", event.model_dump_json())
            writes.zadd("ar:proposals", {proposal.id: proposal.created_at})
            writes.zadd(f"ar:state:{proposal.state}", {proposal.id: proposal.created_at})
            _count(writes, None, proposal)
            for key in guards:
                writes.set(key, values.get(key, proposal.id), ex=IDEMPOTENCY_TTL_S if key in values else None)
            writes.publish(EVENTS_CHANNEL, _event_message(proposal.id, event))
            if also is not None:
                also(writes)
            argv = [part for args, _ in writes.command_stack for part in (len(args), *args)]
        found, existing = self.r.register_script(_CREATE_UNLESS_EXISTS)(keys=guards, args=argv)
        if not found:
            return proposal, True
        if idempotency is not None and found == 1:
            return self._replay(existing, idempotency[1], idempotency[2]), False
        return self.get(existing.decode()), False

    @translate_errors
    def duplicate(self, base_commit: str, content_hash: str) -> Proposal | None:
        """The proposal with this normalised content on this base, if one was stored."""
        existing = self.r.get(f"ar:dedupe:{base_commit}:{content_hash}")
        return None if existing is None else self.get(existing.decode())

    @translate_errors
    def idempotent(self, owner: str, key: str, request_hash: str) -> Proposal | None:
        """The proposal an earlier submit by `owner` with this Idempotency-Key created, if any; raises
        IdempotencyKeyReused if that submit was another request."""
        existing = self.r.get(_idem_key(owner, key))
        if existing is None:
            return None
        try:
            return self._replay(existing, key, request_hash)
        except NotFound:
            return None

    def _replay(self, value: bytes, key: str, request_hash: str) -> Proposal:
        proposal_id, _, stored_hash = value.decode().partition(" ")
        if stored_hash and stored_hash != request_hash:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {key!r} was used for another request (proposal {proposal_id}); "
                "a retry must repeat the same body; use a new key for a new submit"
            )
        return self.get(proposal_id)

    @translate_errors
    def get(self, proposal_id: str) -> Proposal:
        raw = self.r.get(f"ar:proposal:{proposal_id}")
        if raw is None:
            raise NotFound(f"no proposal with id {proposal_id!r}")
        return self._decode([raw])[0]

    def _decode(self, raws: "list[bytes]") -> list[Proposal]:
        """Records → proposals, their bodies read in one round trip (those not cached already)."""
        fields = [_fields(raw) for raw in raws]
        wanted = {f[k] for f in fields for k in _BODY_HASHES if k in f}
        found = {h: _body_cache[h] for h in wanted if h in _body_cache}
        missing = sorted(wanted - found.keys())
        if missing:
            for sha, blob in zip(missing, self.r.mget([f"ar:body:{h}" for h in missing]), strict=True):
                if blob is None:
                    raise StoreUnavailable(f"the train.py body {sha} is missing from the store")
                found[sha] = zlib.decompress(blob).decode("utf-8")
                _remember(sha, found[sha])
        for f in fields:
            for key, name in _BODY_HASHES.items():
                if key in f:
                    f[name] = found[f.pop(key)]
        return [Proposal.model_validate(f) for f in fields]

    @translate_errors
    def page(
        self, state: State | None = None, offset: int = 0, limit: int = 50
    ) -> tuple[list[Proposal], int]:
        """Newest first. An offset past the end reads nothing (Redis refuses one beyond 64 bits)."""
        key = f"ar:state:{state}" if state is not None else "ar:proposals"
        total = int(self.r.zcard(key))
        ids = self.r.zrevrange(key, offset, offset + limit - 1) if offset < total else []
        raws = self.r.mget([f"ar:proposal:{i.decode()}" for i in ids]) if ids else []
        return self._decode([raw for raw in raws if raw is not None]), total

    @translate_errors
    def count_by_state(self) -> dict[str, int]:
        counts = self.r.hmget(STATS_KEY, [stats.state_field(state) for state in State])
        return {state.value: int(count or 0) for state, count in zip(State, counts, strict=True)}

    @translate_errors
    def status(self, queue_keys: Mapping[str, str]) -> "StatusRead":
        """What /v1/status shows, in one round trip whatever the number of proposals: the length of
        each list in `queue_keys` (name → key; the queues' keys are RQ's, services/queue.py), the
        counters and the best."""
        pipe = self.r.pipeline(transaction=False)
        for key in queue_keys.values():
            pipe.llen(key)
        pipe.hgetall(STATS_KEY)
        pipe.get("ar:best")
        *lengths, raw_counters, raw_best = pipe.execute()
        counters = {k.decode(): float(v) for k, v in raw_counters.items()}
        return StatusRead(
            queues={name: int(n) for name, n in zip(queue_keys, lengths, strict=True)},
            states={state.value: int(counters.get(stats.state_field(state), 0)) for state in State},
            counters=counters,
            best=None if raw_best is None else Best.model_validate_json(raw_best),
        )

    @translate_errors
    def stats(self) -> tuple[dict[str, float], float | None]:
        """(every counter of services/store/stats.py, when the earliest stored run started or None);
        one round trip, whatever the number of proposals."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(STATS_KEY)
        pipe.zscore(FIRST_RUN_KEY, "first")
        raw, first = pipe.execute()
        return {k.decode(): float(v) for k, v in raw.items()}, first

    @translate_errors
    def put_many(self, proposals: list[Proposal], fingerprint_key: str | None = None) -> None:
        """Store finished proposals as they are, in one round trip (imports and benchmarks seed the
        record with this): each with its state's index, its dedupe key, an event for its submit and
        one for its state, its score when scored, and its counters. Not atomic: for a store no
        service writes to meanwhile."""
        pipe = self.r.pipeline(transaction=False)
        for p in proposals:
            record, bodies = _encode(p)
            _put_bodies(pipe, bodies)
            pipe.set(f"ar:proposal:{p.id}", record)
            events = [Event(at=p.created_at, state=State.QUEUED, reason=SUBMITTED_REASON)]
            if p.state != State.QUEUED:
                events.append(Event(at=p.updated_at, state=p.state, reason=p.reason))
            pipe.rpush(f"ar:events:{p.id}", *(e.model_dump_json() for e in events))
            pipe.zadd("ar:proposals", {p.id: p.created_at})
            pipe.zadd(f"ar:state:{p.state}", {p.id: p.created_at})
            if p.kind == "proposal":
                pipe.set(f"ar:dedupe:{p.base_commit}:{p.content_hash}", p.id)
            if p.state in TERMINAL and any(r.log_tail for r in (*p.results, *p.baseline_results)):
                pipe.zadd(LOG_AGING_KEY, {p.id: p.updated_at})
            if p.decision is not None:
                pipe.zadd("ar:scores", {p.id: p.decision.candidate_bpb})
                if fingerprint_key is not None:
                    pipe.zadd(f"ar:scores:{fingerprint_key}", {p.id: p.decision.candidate_bpb})
            _count(pipe, None, p)
        pipe.execute()

    @translate_errors
    def results_rows(self) -> list[str]:
        """The results.tsv rows of every agent proposal with a verdict or a crash, oldest first."""
        return [m.decode().partition("\t")[2] for m in self.r.zrange(RESULTS_KEY, 0, -1)]

    # --- aging

    @translate_errors
    def age_run_logs(self, retention_s: float, now_s: float | None = None) -> int:
        """Replace the run log tails of proposals that finished more than `retention_s` ago with
        AGED_LOG_TAIL ("Aging" in the module docstring); returns how many proposals were aged. Only
        `log_tail` changes: the proposal's state, numbers, decision, counters and events stay as they
        are. Safe to run from several processes at once (each proposal is rewritten optimistically)."""
        cutoff = (now() if now_s is None else now_s) - retention_s
        aged = 0
        while ids := [
            i.decode() for i in self.r.zrangebyscore(LOG_AGING_KEY, "-inf", cutoff, 0, AGING_BATCH)
        ]:
            for proposal_id in ids:
                aged += self._age_logs(proposal_id)
            self.r.zrem(LOG_AGING_KEY, *ids)
        return aged

    def _age_logs(self, proposal_id: str) -> int:
        key = f"ar:proposal:{proposal_id}"

        def attempt(pipe: "redis.client.Pipeline[bytes]") -> int:
            raw = cast("bytes | None", pipe.get(key))  # immediate while watching
            if raw is None:
                pipe.reset()
                return 0
            old = self._decode([raw])[0]
            new = old.model_copy(
                update={
                    "results": [_aged(r) for r in old.results],
                    "baseline_results": [_aged(r) for r in old.baseline_results],
                }
            )
            if new == old:
                pipe.reset()
                return 0
            record, bodies = _encode(new)
            pipe.multi()
            _put_bodies(pipe, bodies)
            pipe.set(key, record)
            pipe.execute()
            return 1

        return optimistic(self.r, [key], attempt)

    # --- the layout version

    @translate_errors
    def rewrite_all(self, batch: int) -> int:
        """Rewrite every proposal in the current record format and count the counters from scratch,
        then stamp SCHEMA_VERSION (the migration; safe to repeat). Returns the number of proposals."""
        ids = [i.decode() for i in self.r.zrange("ar:proposals", 0, -1)]
        counters: dict[str, float] = {}
        rows: list[dict[str | bytes, bytes | float | int | str]] = []
        first: float | None = None
        for start in range(0, len(ids), batch):
            proposals = self.get_many(ids[start : start + batch])
            pipe = self.r.pipeline(transaction=False)
            for proposal in proposals:
                record, bodies = _encode(proposal)
                _put_bodies(pipe, bodies)
                pipe.set(f"ar:proposal:{proposal.id}", record)
                if proposal.state in TERMINAL and any(
                    r.log_tail for r in (*proposal.results, *proposal.baseline_results)
                ):  # finished before the aging index existed: aged from when it last changed
                    pipe.zadd(LOG_AGING_KEY, {proposal.id: proposal.updated_at})
                started = stats.first_run_started_at(proposal)
                first = started if first is None or (started is not None and started < first) else first
            pipe.execute()
            batch_rows: dict[str | bytes, bytes | float | int | str] = {
                m: p.created_at for p in proposals if (m := stats.results_member(p)) is not None
            }
            if batch_rows:
                rows.append(batch_rows)
            for field, value in stats.recount(proposals).items():
                counters[field] = counters.get(field, 0.0) + value
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(STATS_KEY, FIRST_RUN_KEY, RESULTS_KEY)
        for proposal_rows in rows:
            pipe.zadd(RESULTS_KEY, proposal_rows)
        if counters:
            pipe.hset(
                STATS_KEY, mapping={k: v if stats.is_float(k) else int(v) for k, v in counters.items() if v}
            )
        if first is not None:
            pipe.zadd(FIRST_RUN_KEY, {"first": first})
        pipe.set(SCHEMA_KEY, SCHEMA_VERSION)
        pipe.execute()
        return len(ids)

    @translate_errors
    def open_schema(self) -> int:
        """Check that this store has the layout this code writes (an empty store is stamped with it);
        raise StoreNeedsMigration naming the command otherwise. Every service calls this at start."""
        raw = self.r.get(SCHEMA_KEY)
        if raw is None:
            if self.r.exists(*_DATA_KEYS):
                raise StoreNeedsMigration(_migrate_message(1))
            self.r.set(SCHEMA_KEY, SCHEMA_VERSION, nx=True)
            raw = self.r.get(SCHEMA_KEY)
        version = int(raw or 0)
        if version > SCHEMA_VERSION:
            raise StoreNeedsMigration(
                f"this Redis store has layout {version}, written by a newer version of the service than "
                f"this one (layout {SCHEMA_VERSION}); run the newer version"
            )
        if version < SCHEMA_VERSION:
            raise StoreNeedsMigration(_migrate_message(version))
        return version

    @translate_errors
    def transition(
        self, proposal_id: str, state: State, reason: str, *, expect: set[State] | None = None, **changes: Any
    ) -> Proposal:
        """Move a proposal to `state` (appending an event), applying `changes` atomically. With
        `expect`, raise Conflict unless the proposal is in one of those states (a compare-and-set:
        of two workers taking the same proposal, one wins)."""
        return self._modify(proposal_id, state, reason, changes, expect)

    @translate_errors
    def update(self, proposal_id: str, **changes: Any) -> Proposal:
        """Change fields without a state transition."""
        return self._modify(proposal_id, None, "", changes, None)

    def _modify(
        self, proposal_id: str, state: State | None, reason: str, changes: dict[str, Any],
        expect: set[State] | None,
    ) -> Proposal:  # fmt: skip
        key = f"ar:proposal:{proposal_id}"

        def attempt(pipe: "redis.client.Pipeline[bytes]") -> Proposal:
            raw = cast("bytes | None", pipe.get(key))  # immediate while watching
            if raw is None:
                raise NotFound(f"no proposal with id {proposal_id!r}")
            old = self._decode([raw])[0]
            if expect is not None and old.state not in expect:
                pipe.reset()
                wanted = "/".join(sorted(expect))
                raise Conflict(f"proposal {proposal_id} is {old.state}, not {wanted}")
            if state is not None and not may_follow(old.state, state):
                pipe.reset()
                raise IllegalTransition(
                    f"proposal {proposal_id} is {old.state}; it cannot become {state} "
                    "(services.states.TRANSITIONS)"
                )
            fields = dict(changes, updated_at=now())
            if state is not None:
                fields.update(state=state, reason=reason, transitions=old.transitions + 1)
            new = Proposal.model_validate({**old.model_dump(), **fields})  # validates changes
            record, bodies = _encode(new)
            pipe.multi()
            _put_bodies(pipe, bodies)
            pipe.set(key, record)
            _count(pipe, old, new)
            if state is not None:
                event = Event(at=new.updated_at, state=state, reason=reason)
                if state in TERMINAL and any(r.log_tail for r in (*new.results, *new.baseline_results)):
                    pipe.zadd(LOG_AGING_KEY, {proposal_id: new.updated_at})
                pipe.zrem(f"ar:state:{old.state}", proposal_id)
                pipe.zadd(f"ar:state:{state}", {proposal_id: old.created_at})
                pipe.rpush(f"ar:events:{proposal_id}", event.model_dump_json())
                pipe.publish(EVENTS_CHANNEL, _event_message(proposal_id, event))
            pipe.execute()
            return new

        return optimistic(self.r, [key], attempt)

    @translate_errors
    def cancel(self, proposal_id: str, reason: str) -> Proposal:
        try:
            return self.transition(proposal_id, State.CANCELLED, reason, expect={State.QUEUED})
        except Conflict as exc:
            raise Conflict(f"{exc}; only queued proposals can be cancelled") from exc

    @translate_errors
    def events(self, proposal_id: str) -> list[Event]:
        pipe = self.r.pipeline(transaction=False)
        pipe.exists(f"ar:proposal:{proposal_id}")
        pipe.lrange(f"ar:events:{proposal_id}", 0, -1)
        exists, raws = pipe.execute()
        if not exists:
            raise NotFound(f"no proposal with id {proposal_id!r}")
        return [Event.model_validate_json(raw) for raw in raws]

    @translate_errors
    def record_score(self, proposal_id: str, val_bpb: float, fingerprint_key: str | None = None) -> None:
        """A proposal's score, on the overall board and on its fingerprint's board."""
        pipe = self.r.pipeline(transaction=True)
        pipe.zadd("ar:scores", {proposal_id: val_bpb})
        if fingerprint_key is not None:
            pipe.zadd(f"ar:scores:{fingerprint_key}", {proposal_id: val_bpb})
            pipe.sadd("ar:fingerprints", fingerprint_key)
        pipe.execute()

    @translate_errors
    def fingerprints(self) -> list[str]:
        return sorted(f.decode() for f in self.r.smembers("ar:fingerprints"))

    @translate_errors
    def leaderboard(self, limit: int = 50, fingerprint_key: str | None = None) -> list[Proposal]:
        """Best scores first; scores of different fingerprints are never mixed when one is given."""
        key = "ar:scores" if fingerprint_key is None else f"ar:scores:{fingerprint_key}"
        ids = self.r.zrange(key, 0, limit - 1)
        raws = self.r.mget([f"ar:proposal:{i.decode()}" for i in ids]) if ids else []
        return self._decode([raw for raw in raws if raw is not None])

    # --- research branch mirror (written by the committer, read by the controller)

    @translate_errors
    def add_commit(self, commit: str, train_py: str) -> None:
        self.r.hset("ar:commits", commit, train_py)
        self._commit_files.pop(commit, None)

    @translate_errors
    def commit_train_py(self, commit: str) -> str | None:
        """The commit's train.py (kept in this process once read: a commit's file never changes)."""
        cached = self._commit_files.get(commit)
        if cached is not None:
            return cached
        raw = self.r.hget("ar:commits", commit)
        if raw is None:
            return None
        while len(self._commit_files) >= COMMIT_FILES_CACHED:
            del self._commit_files[next(iter(self._commit_files))]
        self._commit_files[commit] = raw.decode()
        return self._commit_files[commit]

    @translate_errors
    def resolve_commit(self, prefix: str) -> str | None:
        """Full id of the commit starting with `prefix` (≥ 7 hex digits), if exactly one does."""
        if self.r.hexists("ar:commits", prefix):
            return prefix
        matches = [c.decode() for c in self.r.hkeys("ar:commits") if c.decode().startswith(prefix)]
        return matches[0] if len(matches) == 1 else None

    @translate_errors
    def get_best(self) -> Best | None:
        raw = self.r.get("ar:best")
        return None if raw is None else Best.model_validate_json(raw)

    @translate_errors
    def set_best(self, best: Best) -> None:
        self.r.set("ar:best", best.model_dump_json())

    @translate_errors
    def add_lineage(self, entry: LineageEntry) -> None:
        """Record (or replace) a branch commit's lineage entry; idempotent, so a backfill or a retried
        merge writes the same entry again."""
        self.r.hset("ar:lineage", entry.commit, entry.model_dump_json())

    @translate_errors
    def lineage_entry(self, commit: str) -> LineageEntry | None:
        raw = self.r.hget("ar:lineage", commit)
        return None if raw is None else LineageEntry.model_validate_json(raw)

    @translate_errors
    def lineage(self) -> list[LineageEntry]:
        """Every recorded commit of the research branch, oldest first."""
        entries = [LineageEntry.model_validate_json(raw) for raw in self.r.hvals("ar:lineage")]
        return sorted(entries, key=lambda e: e.position)

    @translate_errors
    def set_repo_bundle(self, head: str, bundle: bytes) -> None:
        """The committer's latest bundle of the research branch (its head, and the bundle's bytes)."""
        self.r.hset("ar:repo-bundle", mapping={"head": head, "bundle": bundle})

    @translate_errors
    def repo_bundle(self) -> tuple[str, bytes] | None:
        """(head, bundle bytes) of the latest bundle, or None before the committer wrote one."""
        head, bundle = self.r.hmget("ar:repo-bundle", ["head", "bundle"])
        return None if head is None or bundle is None else (head.decode(), bundle)

    # --- fingerprints: what each key stands for

    @translate_errors
    def add_fingerprint(self, fingerprint: Fingerprint) -> str:
        """Remember the fields behind a fingerprint key; returns the key."""
        key = fingerprint.key()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset("ar:fingerprint-fields", key, fingerprint.model_dump_json())
        pipe.sadd("ar:fingerprints", key)
        pipe.execute()
        return key

    @translate_errors
    def fingerprint_fields(self) -> dict[str, Fingerprint]:
        raw = self.r.hgetall("ar:fingerprint-fields")
        return {k.decode(): Fingerprint.model_validate_json(v) for k, v in raw.items()}

    @translate_errors
    def leaderboard_size(self, fingerprint_key: str | None = None) -> int:
        return int(self.r.zcard("ar:scores" if fingerprint_key is None else f"ar:scores:{fingerprint_key}"))

    # --- noise calibration: every scored run of a commit on the branch, per fingerprint

    @translate_errors
    def add_calibration_runs(self, fingerprint_key: str, commit: str, scores: Mapping[str, float]) -> None:
        """Record the val_bpb of runs of a branch commit (run id → score). A run already recorded is
        skipped, so a retried or duplicated decision job counts each run once."""
        self._append_runs(f"ar:calibration:{fingerprint_key}", fingerprint_key, commit, scores)

    @translate_errors
    def calibration_runs(self, fingerprint_key: str) -> dict[str, list[float]]:
        return self._runs_by_commit(f"ar:calibration:{fingerprint_key}")

    @translate_errors
    def add_gap_calibration_runs(self, fingerprint_key: str, commit: str, gaps: Mapping[str, float]) -> None:
        """Record test_bpb − val_bpb of runs of a branch commit (run id → gap; the tripwire's noise
        calibration), each run once like `add_calibration_runs`."""
        if gaps:
            self._append_runs(f"ar:calibration-gap:{fingerprint_key}", fingerprint_key, commit, gaps)

    @translate_errors
    def gap_calibration_runs(self, fingerprint_key: str) -> dict[str, list[float]]:
        return self._runs_by_commit(f"ar:calibration-gap:{fingerprint_key}")

    def _append_runs(self, key: str, fingerprint_key: str, commit: str, scores: Mapping[str, float]) -> None:
        """Append the scores of runs not yet counted under `key` (their ids kept in `key:run-ids`), in
        one transaction."""
        counted = f"{key}:run-ids"
        run_ids = list(scores)
        if not run_ids:
            return

        def attempt(pipe: "redis.client.Pipeline[bytes]") -> None:
            seen = cast("list[int]", pipe.smismember(counted, run_ids))  # type: ignore[no-untyped-call]
            fresh = [run_id for run_id, known in zip(run_ids, seen, strict=True) if not known]
            if not fresh:
                pipe.unwatch()
                return
            raw = cast("bytes | None", pipe.hget(key, commit))
            runs = [*(json.loads(raw) if raw else []), *(scores[run_id] for run_id in fresh)]
            pipe.multi()
            pipe.hset(key, commit, json.dumps(runs))
            pipe.sadd(counted, *fresh)
            pipe.sadd("ar:fingerprints", fingerprint_key)
            pipe.execute()
            return

        return optimistic(self.r, [key, counted], attempt)

    def _runs_by_commit(self, key: str) -> dict[str, list[float]]:
        raw = self.r.hgetall(key)
        return {k.decode(): [float(x) for x in json.loads(v)] for k, v in raw.items()}

    # --- tokens

    @translate_errors
    def add_token(self, token_hash: str, name: str, role: str) -> None:
        self.r.hset("ar:tokens", token_hash, json.dumps({"name": name, "role": role}))

    @translate_errors
    def token(self, token_hash: str) -> dict[str, str] | None:
        raw = self.r.hget("ar:tokens", token_hash)
        return None if raw is None else dict(json.loads(raw))

    @translate_errors
    def add_first_token(self, token_hash: str, name: str, role: str) -> bool:
        """Add the token only while no token exists; True if it was added. Atomic: of several processes
        starting at once, one adds its token."""

        def attempt(pipe: "redis.client.Pipeline[bytes]") -> bool:
            if pipe.hlen("ar:tokens"):
                pipe.reset()
                return False
            pipe.multi()
            pipe.hset("ar:tokens", token_hash, json.dumps({"name": name, "role": role}))
            pipe.execute()
            return True

        return optimistic(self.r, ["ar:tokens"], attempt)

    @translate_errors
    def has_tokens(self) -> bool:
        return bool(self.r.hlen("ar:tokens"))

    @translate_errors
    def subscribe(self) -> Iterator[dict[str, Any]]:
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(EVENTS_CHANNEL)
        try:
            for message in pubsub.listen():  # type: ignore[no-untyped-call]
                yield dict(json.loads(message["data"]))
        finally:
            pubsub.close()

    # --------------------------------------------------------------------------------- program.md
    # versions, live logs, a polling event subscription, bulk reads for statistics and metrics

    @translate_errors
    def add_program_version(
        self, text: str, author: str, message: str, *, only_if_empty: bool = False
    ) -> tuple[ProgramVersion, bool]:
        """Append a version of program.md; return (version, created). Text identical to the current
        version creates nothing and returns the current one; with `only_if_empty` (seeding at start-up)
        nothing is created once any version exists. Atomic against concurrent writers."""
        key = "ar:program:versions"

        def attempt(pipe: "redis.client.Pipeline[bytes]") -> tuple[ProgramVersion, bool]:
            raw = cast("bytes | None", pipe.lindex(key, -1))  # immediate while watching
            current = None if raw is None else ProgramVersion.model_validate_json(raw)
            if current is not None and (only_if_empty or current.text == text):
                pipe.reset()
                return current, False
            version = ProgramVersion(
                version=1 if current is None else current.version + 1,
                text=text,
                author=author,
                message=message,
            )
            pipe.multi()
            pipe.rpush(key, version.model_dump_json())
            pipe.execute()
            return version, True

        return optimistic(self.r, [key], attempt)

    @translate_errors
    def program_version(self, version: int | None = None) -> ProgramVersion | None:
        """Version `version` (from 1), or the current one when None; None if there is no such version."""
        if version is not None and not 1 <= version <= REDIS_MAX_MEMBERS:
            return None
        raw = self.r.lindex("ar:program:versions", -1 if version is None else version - 1)
        return None if raw is None else ProgramVersion.model_validate_json(raw)

    @translate_errors
    def program_versions(self) -> list[ProgramVersion]:
        """Every version, oldest first."""
        return [
            ProgramVersion.model_validate_json(raw) for raw in self.r.lrange("ar:program:versions", 0, -1)
        ]

    @translate_errors
    def append_live_log(self, proposal_id: str, chunk: str) -> None:
        """Append a chunk of a running proposal's log (the worker calls this as output arrives). Long
        chunks are split; only the newest LIVE_LOG_MAX_ENTRIES entries are kept; the log expires
        LIVE_LOG_TTL_S after the last append."""
        if not chunk:
            return
        key = f"ar:livelog:{proposal_id}"
        pipe = self.r.pipeline(transaction=True)
        for start in range(0, len(chunk), LIVE_LOG_ENTRY_CHARS):
            piece = chunk[start : start + LIVE_LOG_ENTRY_CHARS]
            pipe.xadd(
                key,
                {"chunk": piece.encode("utf-8", "replace")},
                maxlen=LIVE_LOG_MAX_ENTRIES,
                approximate=False,
            )
        pipe.expire(key, LIVE_LOG_TTL_S)
        pipe.execute()

    @translate_errors
    def read_live_log(
        self, proposal_id: str, after: str = "0", limit: int = LIVE_LOG_READ_MAX
    ) -> list[tuple[str, str]]:
        """Entries (entry id, chunk) appended after the entry id `after` ("0": from the oldest kept),
        oldest first; pass the last id back to read on. Never blocks."""
        answer = self.r.xread({f"ar:livelog:{proposal_id}": after}, count=limit)
        if not answer:
            return []
        _, entries = answer[0]
        return [
            (entry_id.decode(), fields[b"chunk"].decode("utf-8", "replace")) for entry_id, fields in entries
        ]

    @translate_errors
    def proposal_state(self, proposal_id: str) -> State | None:
        """The proposal's state from the state indexes (cheap: does not load the proposal)."""
        pipe = self.r.pipeline(transaction=False)
        for state in State:
            pipe.zscore(f"ar:state:{state}", proposal_id)
        for state, score in zip(State, pipe.execute(), strict=True):
            if score is not None:
                return state
        return None

    @translate_errors
    def proposal_ids_by_state(self) -> dict[State, list[str]]:
        pipe = self.r.pipeline(transaction=False)
        for state in State:
            pipe.zrange(f"ar:state:{state}", 0, -1)
        return {state: [i.decode() for i in ids] for state, ids in zip(State, pipe.execute(), strict=True)}

    @translate_errors
    def get_many(self, proposal_ids: list[str], batch: int = 100) -> list[Proposal]:
        """The proposals that exist among `proposal_ids`, in that order (fetched `batch` at a time)."""
        found: list[Proposal] = []
        for start in range(0, len(proposal_ids), batch):
            keys = [f"ar:proposal:{i}" for i in proposal_ids[start : start + batch]]
            found.extend(self._decode([raw for raw in self.r.mget(keys) if raw is not None]))
        return found

    @translate_errors
    def event_subscription(self) -> "EventSubscription":
        """A subscription to the `ar:events` channel, active when this returns (so no transition
        published afterwards is missed); poll it with `get(timeout_s)`, close it when done."""
        return EventSubscription(self.r)


class EventSubscription:
    """Polling reader of the `ar:events` channel (redis-py's PubSub behind it; it reconnects and
    resubscribes by itself after a dropped connection)."""

    def __init__(self, client: "redis.Redis[bytes]") -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=False)
        self._pubsub.subscribe(EVENTS_CHANNEL)
        confirmed = self._pubsub.get_message(timeout=5.0)
        if confirmed is None or confirmed.get("type") != "subscribe":
            self._pubsub.close()
            raise StoreUnavailable("Redis did not confirm the subscription to the events channel")

    @translate_errors
    def get(self, timeout_s: float) -> dict[str, Any] | None:
        """The next transition, or None if none arrives within `timeout_s`."""
        message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout_s)
        if message is None or message.get("type") != "message":
            return None
        return dict(json.loads(message["data"]))

    def close(self) -> None:
        self._pubsub.close()


_BODY_HASHES = {"train_py_sha256": "train_py", "base_train_py_sha256": "base_train_py"}
_body_cache: dict[str, str] = {}  # sha256 → body; insertion order is age (dicts keep it)
_compressed: dict[str, bytes] = {}  # sha256 → zlib of the body, for bodies written again (the base)


def _remember(sha: str, body: str) -> None:
    _body_cache[sha] = body
    while len(_body_cache) > BODY_CACHE_ENTRIES:
        del _body_cache[next(iter(_body_cache))]


def _encode(p: Proposal) -> tuple[bytes, dict[str, bytes]]:
    """(the record, {sha256: zlib of body} of its two train.py bodies)."""
    data = p.model_dump(mode="json", exclude=set(_BODY_HASHES.values()))
    bodies: dict[str, bytes] = {}
    for key, name in _BODY_HASHES.items():
        text: str = getattr(p, name)
        raw = text.encode("utf-8")
        sha = hashlib.sha256(raw).hexdigest()
        data[key] = sha
        if sha not in _compressed:
            if len(_compressed) >= BODY_CACHE_ENTRIES:
                del _compressed[next(iter(_compressed))]
            _compressed[sha] = zlib.compress(raw, BODY_ZLIB_LEVEL)
        bodies[sha] = _compressed[sha]
        _remember(sha, text)
    return RECORD_MARK + zlib.compress(
        json.dumps(data, separators=(",", ":")).encode(), RECORD_ZLIB_LEVEL
    ), bodies


def _fields(raw: bytes) -> dict[str, Any]:
    """A record's fields: layout 2 (compressed, bodies by hash) or layout 1 (JSON, bodies inline)."""
    if raw.startswith(RECORD_MARK):
        raw = zlib.decompress(raw[len(RECORD_MARK) :])
    return dict(json.loads(raw))


def _aged(result: RunResult) -> RunResult:
    return result.model_copy(update={"log_tail": AGED_LOG_TAIL}) if result.log_tail else result


def _put_bodies(pipe: "redis.client.Pipeline[bytes]", bodies: dict[str, bytes]) -> None:
    for sha, blob in bodies.items():
        pipe.set(f"ar:body:{sha}", blob, nx=True)


def _count(pipe: "redis.client.Pipeline[bytes]", old: Proposal | None, new: Proposal) -> None:
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


def _migrate_message(version: int) -> str:
    return (
        f"this Redis store has layout {version}, written by an older version of the service; this version "
        f"reads layout {SCHEMA_VERSION}. Stop the controller, workers and committer, then run "
        f"`{MIGRATE_COMMAND} --redis-url <the same AR_REDIS_URL>` once (it keeps every record), and start "
        "them again"
    )


def state_key(state: State) -> str:
    """The index of the proposals in `state` (a zset id → created_at), for scripts that read it."""
    return f"ar:state:{state}"


def _idem_key(owner: str, key: str) -> str:
    return f"ar:idem:{owner}:{key}"


def _event_message(proposal_id: str, event: Event) -> str:
    return json.dumps({"proposal_id": proposal_id, **event.model_dump(mode="json")})
