"""/v1/proposals: submit, read, list, log, cancel."""

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response, status
from fastapi.responses import PlainTextResponse

from services.controller import logic
from services.controller.bodies import json_body
from services.controller.deps import Admin, Caller, SettingsDep, StoreDep, Viewer
from services.controller.problems import PROBLEM_RESPONSE
from services.controller.schemas import ProposalDetail, ProposalPage, ProposalSummary, SubmitProposal
from services.states import State

router = APIRouter(prefix="/v1/proposals", tags=["proposals"])

ProposalId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="a proposal's id")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="retries with the same key (per token) get the first answer",
    ),
]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: PROBLEM_RESPONSE}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ProposalDetail,
    responses={
        200: {"description": "a duplicate or a retried submit: the existing proposal"},
        422: PROBLEM_RESPONSE,
        429: {**PROBLEM_RESPONSE, "description": "a quota of the token is used up; see Retry-After"},
    },
)
def submit(
    caller: Caller,
    body: Annotated[SubmitProposal, json_body(SubmitProposal)],
    viewer: Viewer,
    store: StoreDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Submit a whole `train.py` or a unified diff; validated, deduplicated, queued."""
    proposal, created = logic.submit_proposal(store, settings, caller, body, idempotency_key)
    detail = viewer.model(ProposalDetail.of(proposal, logic.submitted_events(store, proposal, created)))
    # Serialised here, in this thread, from the model just built: returned as a model, FastAPI would
    # validate it again and serialise it on another trip through the thread pool (response_model
    # above still documents the body).
    return Response(
        detail.model_dump_json(),
        status_code=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        headers={"Location": f"/v1/proposals/{proposal.id}"},
        media_type="application/json",
    )


@router.get("", response_model=ProposalPage, responses={422: PROBLEM_RESPONSE})
def list_proposals(
    viewer: Viewer,
    store: StoreDep,
    settings: SettingsDep,
    state: State | None = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int | None, Query(ge=1, description="default 50, at most AR_PAGE_SIZE_MAX")] = None,
) -> ProposalPage:
    """Newest first, optionally only those in one state."""
    proposals, total, size = logic.list_proposals(store, settings, state, offset, limit)
    page = ProposalPage(
        items=[ProposalSummary.of(p) for p in proposals], total=total, offset=offset, limit=size
    )
    return viewer.model(page)


@router.get("/{proposal_id}", response_model=ProposalDetail, responses=NOT_FOUND)
def get_proposal(proposal_id: ProposalId, viewer: Viewer, store: StoreDep) -> ProposalDetail:
    """Everything about one proposal, with its event history (agents: rounded scores, no test figures)."""
    return viewer.model(ProposalDetail.of(*logic.get_proposal(store, proposal_id)))


@router.get("/{proposal_id}/log", response_class=PlainTextResponse, responses=NOT_FOUND)
def get_log(proposal_id: ProposalId, viewer: Viewer, store: StoreDep) -> str:
    """The kept log tail of each finished run under a header (candidate or best, seed, outcome, score),
    paired runs best first so that the candidate's run and score end it (text/plain)."""
    return logic.proposal_log(store, proposal_id, viewer.score_text, viewer.text)


@router.post(
    "/{proposal_id}/cancel", response_model=ProposalDetail, responses={**NOT_FOUND, 409: PROBLEM_RESPONSE}
)
def cancel(proposal_id: ProposalId, admin: Admin, store: StoreDep) -> ProposalDetail:
    """Cancel a queued proposal (admin)."""
    proposal = logic.cancel_proposal(store, admin, proposal_id)
    return ProposalDetail.of(proposal, store.events(proposal.id))
