"""The lifecycle of a proposal: one `str` enum, the same strings in Redis, the API, events and logs."""

from enum import StrEnum


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    EVALUATING = "evaluating"
    CONFIRMING = "confirming"
    ACCEPTED = "accepted"
    MERGED = "merged"
    REJECTED = "rejected"
    # Failures: each has its own state so a user can tell a bad idea from a broken machine.
    CRASHED = "crashed"
    TIMED_OUT = "timed_out"
    OOM = "oom"
    VOIDED = "voided"
    INFRA_ERROR = "infra_error"
    CANCELLED = "cancelled"


ACTIVE = frozenset({State.QUEUED, State.RUNNING, State.EVALUATING, State.CONFIRMING, State.ACCEPTED})
TERMINAL = frozenset(set(State) - ACTIVE)
FAILURES = frozenset(
    {State.CRASHED, State.TIMED_OUT, State.OOM, State.VOIDED, State.INFRA_ERROR, State.CANCELLED}
)
