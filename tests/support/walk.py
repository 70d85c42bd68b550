"""Move a stored proposal to any state along the transition table, for tests that set up a state
without running the steps before it."""

from typing import Any

from services.models import Proposal
from services.states import TRANSITIONS, State
from services.store import Store


def path_to(start: State) -> dict[State, list[State]]:
    """The shortest allowed path from `start` to each reachable state (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for state in frontier:
            for follower in sorted(TRANSITIONS[state]):
                if follower not in paths:
                    paths[follower] = [*paths[state], follower]
                    following.append(follower)
        frontier = following
    return paths


def walk(store: Store, proposal_id: str, state: State, reason: str, **changes: Any) -> Proposal:
    """`store.transition` to `state`, through the states the table puts before it when the move is
    not allowed directly; `changes` go with the last step."""
    current = store.get(proposal_id).state
    steps = [state] if state in TRANSITIONS[current] else path_to(current)[state][1:]
    for step in steps[:-1]:
        store.transition(proposal_id, step, f"{reason} (via {step})")
    return store.transition(proposal_id, steps[-1], reason, **changes)
