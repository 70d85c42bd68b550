"""Proposals and their events: create (deduplicated, idempotent), read, list, move between
states, count, score, age, and the layout's migration; the `ar:events` channel.
"""

import json
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from services.errors import (
    Conflict,
    IdempotencyKeyReused,
    IllegalTransition,
    NotFound,
    StoreNeedsMigration,
    StoreUnavailable,
)
from services.models import Best, Event, Proposal, now
from services.states import TERMINAL, State, may_follow
from services.store import stats
from services.store.base import (
    AGING_BATCH,
    BODY_HASHES,
    CREATE_UNLESS_EXISTS,
    DATA_KEYS,
    EVENTS_CHANNEL,
    FIRST_RUN_KEY,
    IDEMPOTENCY_TTL_S,
    LOG_AGING_KEY,
    RESULTS_KEY,
    SCHEMA_KEY,
    SCHEMA_VERSION,
    STATS_KEY,
    SUBMITTED_REASON,
    StoreBase,
    aged,
    body_cache,
    count_write,
    encode_record,
    event_message,
    idem_key,
    migrate_message,
    optimistic,
    put_bodies,
    record_fields,
    remember_body,
    translate_errors,
)


@dataclass(frozen=True)
class StatusRead:
    queues: dict[str, int]  # queue name → jobs waiting
    states: dict[str, int]  # state → proposals in it (every state, 0 included)
    counters: dict[str, float]  # every counter of services/store/stats.py
    best: Best | None


class ProposalStore(StoreBase):
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

        One round trip: the check and the writes run as one Lua script (`CREATE_UNLESS_EXISTS`), the
        writes queued on an unsent pipeline by the same code every other write uses."""
        guards = []
        values = {}
        if idempotency is not None:
            owner, key, request_hash = idempotency
            guards.append(idem_key(owner, key))
            values[idem_key(owner, key)] = f"{proposal.id} {request_hash}"
        if dedupe:
            guards.append(f"ar:dedupe:{proposal.base_commit}:{proposal.content_hash}")
        event = Event(at=proposal.created_at, state=proposal.state, reason=SUBMITTED_REASON)
        record, bodies = encode_record(proposal)
        with self.r.pipeline(transaction=False) as writes:  # recorded, never executed
            put_bodies(writes, bodies)
            writes.set(f"ar:proposal:{proposal.id}", record)
            writes.rpush(f"ar:events:{proposal.id}", event.model_dump_json())
            writes.zadd("ar:proposals", {proposal.id: proposal.created_at})
            writes.zadd(f"ar:state:{proposal.state}", {proposal.id: proposal.created_at})
            count_write(writes, None, proposal)
            for key in guards:
                writes.set(key, values.get(key, proposal.id), ex=IDEMPOTENCY_TTL_S if key in values else None)
            writes.publish(EVENTS_CHANNEL, event_message(proposal.id, event))
            if also is not None:
                also(writes)
            argv = [part for args, _ in writes.command_stack for part in (len(args), *args)]
        found, existing = self.r.register_script(CREATE_UNLESS_EXISTS)(keys=guards, args=argv)
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
        existing = self.r.get(idem_key(owner, key))
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
        fields = [record_fields(raw) for raw in raws]
        wanted = {f[k] for f in fields for k in BODY_HASHES if k in f}
        found = {h: body_cache[h] for h in wanted if h in body_cache}
        missing = sorted(wanted - found.keys())
        if missing:
            for sha, blob in zip(missing, self.r.mget([f"ar:body:{h}" for h in missing]), strict=True):
                if blob is None:
                    raise StoreUnavailable(f"the train.py body {sha} is missing from the store")
                found[sha] = zlib.decompress(blob).decode("utf-8")
                remember_body(sha, found[sha])
        for f in fields:
            for key, name in BODY_HASHES.items():
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
            record, bodies = encode_record(p)
            put_bodies(pipe, bodies)
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
            count_write(pipe, None, p)
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
                    "results": [aged(r) for r in old.results],
                    "baseline_results": [aged(r) for r in old.baseline_results],
                }
            )
            if new == old:
                pipe.reset()
                return 0
            record, bodies = encode_record(new)
            pipe.multi()
            put_bodies(pipe, bodies)
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
                record, bodies = encode_record(proposal)
                put_bodies(pipe, bodies)
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
            if self.r.exists(*DATA_KEYS):
                raise StoreNeedsMigration(migrate_message(1))
            self.r.set(SCHEMA_KEY, SCHEMA_VERSION, nx=True)
            raw = self.r.get(SCHEMA_KEY)
        version = int(raw or 0)
        if version > SCHEMA_VERSION:
            raise StoreNeedsMigration(
                f"this Redis store has layout {version}, written by a newer version of the service than "
                f"this one (layout {SCHEMA_VERSION}); run the newer version"
            )
        if version < SCHEMA_VERSION:
            raise StoreNeedsMigration(migrate_message(version))
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
            record, bodies = encode_record(new)
            pipe.multi()
            put_bodies(pipe, bodies)
            pipe.set(key, record)
            count_write(pipe, old, new)
            if state is not None:
                event = Event(at=new.updated_at, state=state, reason=reason)
                if state in TERMINAL and any(r.log_tail for r in (*new.results, *new.baseline_results)):
                    pipe.zadd(LOG_AGING_KEY, {proposal_id: new.updated_at})
                pipe.zrem(f"ar:state:{old.state}", proposal_id)
                pipe.zadd(f"ar:state:{state}", {proposal_id: old.created_at})
                pipe.rpush(f"ar:events:{proposal_id}", event.model_dump_json())
                pipe.publish(EVENTS_CHANNEL, event_message(proposal_id, event))
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

    @translate_errors
    def subscribe(self) -> Iterator[dict[str, Any]]:
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(EVENTS_CHANNEL)
        try:
            for message in pubsub.listen():  # type: ignore[no-untyped-call]
                yield dict(json.loads(message["data"]))
        finally:
            pubsub.close()

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
