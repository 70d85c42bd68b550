"""What both agents do around their ideas: read the research state, submit a candidate, wait for its
outcome, and keep the outcomes as the agent's memory. All through the HTTP API (services.cli.client)."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.cli.client import ApiClient, ApiError, ClientError
from services.settings import Settings
from services.states import TERMINAL, State

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 900.0  # at start-up: the controller up and the baseline scored
READY_POLL_S = 5.0
REFUSED = "refused"  # an outcome's state when the controller refused the submit (422)
NOT_SUBMITTED = "not-submitted"  # ... when the agent had nothing to submit (no diff, LLM failure)


class Clock:
    """Sleep and monotonic time, injectable so tests need not wait."""

    def __init__(
        self, sleep: Callable[[float], None] = time.sleep, now: Callable[[], float] = time.monotonic
    ):
        self.sleep = sleep
        self.now = now


@dataclass(frozen=True)
class Research:
    """What an agent reads before each idea."""

    program_version: int
    program: str
    best_commit: str
    best_val_bpb: float | None
    train_py: str
    recent: list[dict[str, Any]]  # newest proposals (ProposalSummary rows of GET /v1/proposals)


@dataclass(frozen=True)
class Outcome:
    """How one idea ended: a terminal proposal state, or REFUSED / NOT_SUBMITTED with the reason."""

    title: str
    state: str
    reason: str
    proposal_id: str | None = None
    val_bpb: float | None = None
    delta_bpb: float | None = None
    duplicate: bool = False

    @property
    def merged(self) -> bool:
        return self.state == State.MERGED


def agent_token(settings: Settings) -> str:
    for token in (settings.agent_token, settings.admin_token):
        if token is not None and token.get_secret_value():  # compose passes unset variables as ""
            return token.get_secret_value()
    raise SystemExit("set AR_AGENT_TOKEN to an agent token (an admin makes one: POST /v1/tokens)")


def wait_ready(client: ApiClient, clock: Clock, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until the controller answers and the research branch has a scored best."""
    deadline = clock.now() + timeout_s
    while True:
        try:
            best = client.get("/v1/best")
            if best.get("val_bpb") is not None:
                return
            why = "the baseline is not scored yet"
        except ClientError as exc:
            why = str(exc)
        if clock.now() >= deadline:
            raise SystemExit(f"the controller is not ready after {timeout_s:.0f} s: {why}")
        log.info("waiting for the controller", extra={"why": why})
        clock.sleep(READY_POLL_S)


def read_research(client: ApiClient, recent: int) -> Research:
    program = client.get("/v1/program")
    best = client.get("/v1/best")
    rows = client.get("/v1/proposals", limit=recent)["items"] if recent else []
    return Research(
        program_version=int(program["version"]),
        program=str(program["text"]),
        best_commit=str(best["commit"]),
        best_val_bpb=best["val_bpb"],
        train_py=str(best["train_py"]),
        recent=list(rows),
    )


def submit_and_wait(client: ApiClient, body: dict[str, Any], settings: Settings, clock: Clock) -> Outcome:
    """Submit, then read the proposal until it is in a terminal state. A refusal is an outcome."""
    title = str(body["title"])
    try:
        proposal, created = client.submit(body)
    except ApiError as exc:
        if exc.status != 422:
            raise
        return Outcome(title, REFUSED, exc.detail or exc.title)
    # `created` is a LogRecord attribute: as an extra it makes logging raise KeyError.
    log.info("submitted", extra={"proposal_id": proposal["id"], "title": title, "duplicate": not created})
    outcome = wait_for_outcome(client, str(proposal["id"]), settings, clock)
    return Outcome(**{**vars(outcome), "duplicate": not created})


def wait_for_outcome(client: ApiClient, proposal_id: str, settings: Settings, clock: Clock) -> Outcome:
    deadline = clock.now() + settings.agent_outcome_timeout_s
    while True:
        detail = client.get(f"/v1/proposals/{proposal_id}")
        if State(detail["state"]) in TERMINAL:
            return outcome_of(detail)
        if clock.now() >= deadline:
            return Outcome(str(detail["title"]), str(detail["state"]), "gave up waiting", proposal_id)
        clock.sleep(settings.agent_poll_s)


def outcome_of(detail: dict[str, Any]) -> Outcome:
    decision = detail.get("decision") or {}
    return Outcome(
        title=str(detail["title"]),
        state=str(detail["state"]),
        reason=str(detail["reason"]),
        proposal_id=str(detail["id"]),
        val_bpb=detail.get("val_bpb"),
        delta_bpb=decision.get("delta_bpb"),
    )


def log_outcome(iteration: int, outcome: Outcome) -> None:
    log.info(
        "outcome",
        extra={
            "iteration": iteration,
            "proposal_id": outcome.proposal_id,
            "state": outcome.state,
            "val_bpb": outcome.val_bpb,
            "delta_bpb": outcome.delta_bpb,
            "reason": outcome.reason[:300],
        },
    )
