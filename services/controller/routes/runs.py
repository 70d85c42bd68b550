"""/v1/runs: runs of an existing commit (admin)."""

from typing import Annotated

from fastapi import APIRouter, Response, status

from services.controller import logic
from services.controller.bodies import json_body
from services.controller.deps import Admin, SettingsDep, StoreDep
from services.controller.problems import PROBLEM_RESPONSE
from services.controller.schemas import ProposalDetail, RequestRuns

router = APIRouter(prefix="/v1/runs", tags=["runs"])


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=ProposalDetail, responses={422: PROBLEM_RESPONSE}
)
def request_runs(
    response: Response,
    admin: Admin,
    body: Annotated[RequestRuns, json_body(RequestRuns)],
    store: StoreDep,
    settings: SettingsDep,
) -> ProposalDetail:
    """Run a commit (default: the best) `count` times with given or default seeds; never deduplicated."""
    proposal = logic.request_runs(store, settings, admin, body)
    response.headers["Location"] = f"/v1/proposals/{proposal.id}"
    return ProposalDetail.of(proposal, store.events(proposal.id))
