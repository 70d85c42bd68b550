"""Per-token submit quotas, the one module that knows their Redis keys.

Two limits per agent token (admin tokens are the operator's and have none):
  - queued: how many of the token's proposals may wait in the `queued` state at once;
  - rate: how many valid submits the token may make per minute (fixed one-minute windows; a
    duplicate counts, an idempotent replay does not; invalid input gets its 4xx and, as every
    rejected submission, writes nothing to Redis, so it does not count).
Going over raises `QuotaExceeded`, answered 429 with `Retry-After`.

Both are atomic, so concurrent submits of one token never end over a limit: each is one Lua
script that checks and takes in one step (a submit runs both in one script, `submit_place`). A
submit takes a place among the token's queued proposals before it stores its proposal
(`queued_place`): the place is a reservation that counts for RESERVATION_TTL_S, kept once the
proposal is stored `queued` (it then counts while the proposal is queued) and given back if the
submit ends otherwise (a duplicate, another 4xx, a crash: expiry).
A Redis error is raised as StoreUnavailable (`store.translate_errors`).
"""

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import redis

from services.controller.auth import Principal, Role
from services.errors import QuotaExceeded
from services.states import State
from services.store import keys, state_key, translate_errors

RATE_WINDOW_S = 60  # the rate limit is per minute
RATE_KEY_TTL_S = 2 * RATE_WINDOW_S  # a window's counter outlives its minute, then expires
RESERVATION_TTL_S = 30  # a submit's place counts this long before its proposal is stored (or not)
# zset: proposal id → 0 once stored (it counts while it is queued), or the reservation's expiry (ms)

# The start of both reserving scripts (KEYS[1]: the token's places, KEYS[2]: the queued-state index,
# ARGV[2]: the limit): reads the server's clock (`now`, ms) and `held`, the places held: those whose
# proposal is queued or whose reservation has not expired. Fewer places than the limit hold fewer than
# the limit, so nothing is counted then (`held` is the number of places, an upper bound). From the
# limit on they are counted exactly: the queued ones in C (ZINTERCARD), the unexpired reservations of
# proposals not stored yet one by one; places whose proposal left the queue (or whose reservation
# expired) are forgotten by a scan once they outnumber those held (by SCAN_SLACK), so that the scan
# costs each place O(1) over time. Counting every place with a Lua step, on every submit, cost Redis
# milliseconds per submit for a token with thousands queued. Without ZINTERCARD (Redis before 7.0) it
# scans every time, as it did.
SCAN_SLACK = 32
_HELD = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[2]) then
    local places_count = held
    local queued = redis.pcall('ZINTERCARD', 2, KEYS[1], KEYS[2])
    held = nil
    if type(queued) == 'number' then
        held = queued
        for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
            if not redis.call('ZSCORE', KEYS[2], id) then
                held = held + 1
            end
        end
    end
    if held == nil or places_count - held > held + {SCAN_SLACK} then
        local places = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
        held = 0
        for i = 1, #places, 2 do
            local id, until_ms = places[i], tonumber(places[i + 1])
            if redis.call('ZSCORE', KEYS[2], id) or until_ms > now then
                held = held + 1
            else
                redis.call('ZREM', KEYS[1], id)
            end
        end
    end
end
"""
# ARGV: proposal id, limit, reservation ttl (ms). Takes a place for the proposal if fewer than the
# limit are held. Returns {taken 0/1, places held before (exact when refused)}.
_TAKE = """
if held >= tonumber(ARGV[2]) then
    return {0, held}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return {1, held}
"""
_RESERVE = _HELD + _TAKE
# KEYS: the token's places, the queued-state index, the rate window's counter. ARGV: proposal id,
# queued limit, reservation ttl (ms), rate limit, rate ttl (s). `_RESERVE` and `_COUNT` in one step
# (one round trip for a submit): the queued limit is checked first, then the rate; a refusal takes
# nothing. Returns {taken 0/1, places held before, the count or -1 when the rate refused}.
_TAKE_AND_COUNT = """
if held >= tonumber(ARGV[2]) then
    return {0, held, 0}
end
local count = tonumber(redis.call('GET', KEYS[3]) or '0')
if count >= tonumber(ARGV[4]) then
    return {0, held, -1}
end
count = redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], ARGV[5])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return {1, held, count}
"""
_RESERVE_AND_COUNT = _HELD + _TAKE_AND_COUNT
# KEYS: the token's places, the queued-state index. ARGV: proposal id. A stored, queued proposal
# keeps its place (it counts while queued); otherwise the place is given back.
_SETTLE = """
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
    redis.call('ZADD', KEYS[1], 'XX', 0, ARGV[1])
else
    redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""
# KEYS: the window's counter. ARGV: limit, ttl (s). Counts one submit unless the limit is reached;
# returns the count, or -1 when refused (a refused submit is not counted).
_COUNT = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count >= tonumber(ARGV[1]) then
    return -1
end
count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return count
"""


def applies_to(principal: Principal) -> bool:
    return principal.role is not Role.ADMIN


@translate_errors
def count_submit(
    conn: "redis.Redis[bytes]", principal: Principal, per_minute: int, now: float | None = None
) -> None:
    """Count one submit in the current minute; raise QuotaExceeded beyond `per_minute`."""
    now = time.time() if now is None else now
    count = int(
        conn.register_script(_COUNT)(keys=[_rate_key(principal, now)], args=[per_minute, RATE_KEY_TTL_S])
    )
    if count < 0:
        raise _rate_exceeded(principal, per_minute, now)


def _rate_key(principal: Principal, now: float) -> str:
    return keys.QUOTA_RATE.of(principal.token_hash, int(now // RATE_WINDOW_S))


def _rate_exceeded(principal: Principal, per_minute: int, now: float) -> QuotaExceeded:
    retry_after_s = max(1, RATE_WINDOW_S - int(now % RATE_WINDOW_S))
    return QuotaExceeded(
        f"token {principal.name!r} reached its limit of {per_minute} submits per minute; "
        f"retry in {retry_after_s} s",
        retry_after_s=retry_after_s,
    )


def _queue_full(principal: Principal, held: int, limit: int, retry_after_s: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"token {principal.name!r} has {held} proposals queued (limit {limit}); retry in about "
        f"{retry_after_s} s, once one of them has started running",
        retry_after_s=retry_after_s,
    )


class Place:
    """A submit's place among its token's queued proposals (`submit_place`)."""

    def __init__(self, places_key: str, proposal_id: str) -> None:
        self.places_key = places_key
        self.proposal_id = proposal_id
        self.kept = False

    def keep(self, pipe: "redis.client.Pipeline[bytes]") -> None:
        """Queue on the write that stores the proposal `queued` what settling would then do: the place
        is kept while it is queued. The caller sets `kept` once that write is done."""
        pipe.zadd(self.places_key, {self.proposal_id: 0}, xx=True)


@contextlib.contextmanager
def submit_place(
    conn: "redis.Redis[bytes]", principal: Principal, proposal_id: str, *, limit: int, per_minute: int,
    retry_after_s: int,
) -> Iterator[Place]:  # fmt: skip
    """`queued_place` and `count_submit` in one round trip: take a place for `proposal_id` among the
    token's queued proposals and count the submit in this minute (raise QuotaExceeded, taking nothing,
    if `limit` places are held or `per_minute` submits made); the block stores the proposal. The place
    is settled as `queued_place` settles it, unless the block's write kept it (`Place.keep`)."""
    now = time.time()
    script_keys = [keys.QUOTA_PLACES.of(principal.token_hash), state_key(State.QUEUED)]
    args = [proposal_id, limit, RESERVATION_TTL_S * 1000, per_minute, RATE_KEY_TTL_S]
    taken, held, count = _run_script(
        _RESERVE_AND_COUNT, conn, [*script_keys, _rate_key(principal, now)], args
    )
    if not taken:
        if int(count) < 0:
            raise _rate_exceeded(principal, per_minute, now)
        raise _queue_full(principal, int(held), limit, retry_after_s)
    place = Place(script_keys[0], proposal_id)
    try:
        yield place
    finally:
        if not place.kept:
            _settle(conn, script_keys, proposal_id)


@translate_errors
def _run_script(script: str, conn: "redis.Redis[bytes]", script_keys: list[str], args: list[object]) -> Any:
    return conn.register_script(script)(keys=script_keys, args=args)


def _settle(conn: "redis.Redis[bytes]", script_keys: list[str], proposal_id: str) -> None:
    with contextlib.suppress(redis.RedisError):  # if Redis is away, the reservation expires
        conn.register_script(_SETTLE)(keys=script_keys, args=[proposal_id])


@contextlib.contextmanager
def queued_place(
    conn: "redis.Redis[bytes]", principal: Principal, proposal_id: str, limit: int, retry_after_s: int
) -> Iterator[None]:
    """Take a place for `proposal_id` among the token's queued proposals for the block (raise
    QuotaExceeded if `limit` are held); the block stores the proposal. Afterwards the place is kept
    if the proposal is queued, given back otherwise."""
    script_keys = [keys.QUOTA_PLACES.of(principal.token_hash), state_key(State.QUEUED)]
    taken, held = _run_script(_RESERVE, conn, script_keys, [proposal_id, limit, RESERVATION_TTL_S * 1000])
    if not taken:
        raise _queue_full(principal, held, limit, retry_after_s)
    try:
        yield
    finally:
        _settle(conn, script_keys, proposal_id)
