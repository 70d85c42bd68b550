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

# ---------------------------------------------------------------------------- the transition table
# Which state may follow which. `Store.transition` is the one place a state changes and refuses any
# move not listed here (IllegalTransition). A terminal state has no successor: its record is final.
# Why each move exists:
#   queued     → running: a worker takes it; cancelled: an admin; infra_error: retries used up
#   running    → evaluating: trained, being scored; a failure: the run's outcome; queued: an
#                infrastructure retry, or its worker died (orphan recovery)
#   evaluating → evaluating: a run of a commit scores its next seed; confirming / rejected: the
#                screening verdict; merged: a run of a commit recorded; queued: the best moved, or an
#                infrastructure retry; a failure: a later seed failed, or no run scored (voided)
#   confirming → confirming: more paired runs asked for, or an infrastructure retry; accepted /
#                rejected: the verdict; queued: the best moved; a failure: a confirmation run failed
#   accepted   → merged; queued: the best moved; rejected: the change no longer applies to the new
#                best; infra_error: git failed on the last attempt
_RUN_FAILURES = frozenset({State.CRASHED, State.TIMED_OUT, State.OOM, State.VOIDED, State.INFRA_ERROR})
TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.RUNNING, State.CANCELLED, State.INFRA_ERROR}),
    State.RUNNING: frozenset({State.EVALUATING, State.QUEUED, *_RUN_FAILURES}),
    State.EVALUATING: frozenset(
        {State.EVALUATING, State.CONFIRMING, State.REJECTED, State.MERGED, State.QUEUED, *_RUN_FAILURES}
    ),
    State.CONFIRMING: frozenset(
        {State.CONFIRMING, State.ACCEPTED, State.REJECTED, State.QUEUED, *_RUN_FAILURES}
    ),
    State.ACCEPTED: frozenset({State.MERGED, State.QUEUED, State.REJECTED, State.INFRA_ERROR}),
    **{state: frozenset() for state in TERMINAL},
}


def may_follow(old: State, new: State) -> bool:
    """Whether a proposal in `old` may move to `new` (TRANSITIONS)."""
    return new in TRANSITIONS[old]
