from services.states import ACTIVE, FAILURES, TERMINAL, State


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
