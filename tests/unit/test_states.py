from services.states import ACTIVE, FAILURES, TERMINAL, TRANSITIONS, State
from tests.support.walk import path_to


def test_state_strings_are_the_contract() -> None:
    assert [s.value for s in State] == [
        "queued",
        "running",
        "evaluating",
        "confirming",
        "accepted",
        "merged",
        "rejected",
        "crashed",
        "timed_out",
        "oom",
        "voided",
        "infra_error",
        "cancelled",
    ]


def test_every_state_is_active_or_terminal_never_both() -> None:
    assert set(State) == ACTIVE | TERMINAL
    assert not ACTIVE & TERMINAL
    assert FAILURES <= TERMINAL


def test_the_transition_table_names_every_state_and_terminal_states_are_final() -> None:
    assert set(TRANSITIONS) == set(State)
    for state in TERMINAL:
        assert TRANSITIONS[state] == frozenset(), state
    for state in ACTIVE:
        assert TRANSITIONS[state], f"{state} is active but nothing may follow it"


def test_every_state_is_reachable_from_queued() -> None:
    assert set(path_to(State.QUEUED).keys()) == set(State)
