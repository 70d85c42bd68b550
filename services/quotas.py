"""Per-token submit quotas, the one module that knows their Redis keys.

Two limits per agent token (admin tokens are the operator's and have none):
  - queued: how many of the token's proposals may wait in the `queued` state at once;
  - rate: how many valid submits the token may make per minute (fixed one-minute windows; a
    duplicate counts, an idempotent replay does not; invalid input gets its 4xx and, as every
    rejected submission, writes nothing to Redis, so it does not count).
Going over raises `QuotaExceeded`, answered 429 with `Retry-After`.

Not atomic: two concurrent submits of one token may both pass the queued check and end one over
the limit. The limit bounds a token's share of the queue; it is not a lock.
"""

import time

import redis

from services.auth import Principal, Role
from services.errors import QuotaExceeded
from services.store import Store

RATE_WINDOW_S = 60  # the rate limit is per minute
RATE_KEY_TTL_S = 2 * RATE_WINDOW_S  # a window's counter outlives its minute, then expires
QUEUED_KEY = "ar:quota:queued:{}"  # set of proposal ids the token submitted that may still be queued
RATE_KEY = "ar:quota:rate:{}:{}"  # submits of the token in one window (token hash, window number)


def applies_to(principal: Principal) -> bool:
    return principal.role is not Role.ADMIN


def count_submit(
    conn: "redis.Redis[bytes]", principal: Principal, per_minute: int, now: float | None = None
) -> None:
    """Count one submit in the current minute; raise QuotaExceeded beyond `per_minute`."""
    now = time.time() if now is None else now
    key = RATE_KEY.format(principal.token_hash, int(now // RATE_WINDOW_S))
    if int(conn.get(key) or 0) < per_minute:  # read first: a refused submit is not counted
        pipe = conn.pipeline()
        pipe.incr(key)
        pipe.expire(key, RATE_KEY_TTL_S)
        count = int(pipe.execute()[0])
    else:
        count = per_minute + 1
    if count > per_minute:
        retry_after_s = max(1, RATE_WINDOW_S - int(now % RATE_WINDOW_S))
        raise QuotaExceeded(
            f"token {principal.name!r} reached its limit of {per_minute} submits per minute; "
            f"retry in {retry_after_s} s",
            retry_after_s=retry_after_s,
        )


def check_queued(
    store: Store, conn: "redis.Redis[bytes]", principal: Principal, limit: int, retry_after_s: int
) -> None:
    """Raise QuotaExceeded if `limit` of the token's proposals are queued. Proposals that have left
    the queue are forgotten here (a proposal re-queued later no longer counts)."""
    key = QUEUED_KEY.format(principal.token_hash)
    members = [raw.decode() for raw in conn.smembers(key)]
    queued = store.queued_among(members)
    gone = [pid for pid in members if pid not in queued]
    if gone:
        conn.srem(key, *gone)
    waiting = len(queued)
    if waiting >= limit:
        raise QuotaExceeded(
            f"token {principal.name!r} has {waiting} proposals queued (limit {limit}); retry in about "
            f"{retry_after_s} s, once one of them has started running",
            retry_after_s=retry_after_s,
        )


def record_queued(conn: "redis.Redis[bytes]", principal: Principal, proposal_id: str) -> None:
    conn.sadd(QUEUED_KEY.format(principal.token_hash), proposal_id)
