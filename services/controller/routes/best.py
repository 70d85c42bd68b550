"""/v1/best and /v1/leaderboard (per fingerprint)."""

import statistics
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from services.controller import logic, research
from services.controller.deps import Caller, SettingsDep, StoreDep, Viewer
from services.controller.problems import PROBLEM_RESPONSE
from services.controller.schemas import BestView, LeaderboardRow, score_of

router = APIRouter(prefix="/v1", tags=["best"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: PROBLEM_RESPONSE, 422: PROBLEM_RESPONSE}


@router.get("/best", response_model=BestView)
def best(viewer: Viewer, store: StoreDep) -> BestView:
    """The head of the research branch: commit, score and its train.py, and its score re-measured (the
    mean of its runs since), which a recorded score lucky in its runs drifts away from."""
    current, train_py = logic.best_train_py(store)
    runs = logic.best_runs(store, current)
    view = BestView(
        **current.model_dump(include={"commit", "val_bpb", "proposal_id", "updated_at"}), train_py=train_py,
        best_runs=runs, remeasured_bpb=statistics.fmean(runs) if runs else None,
    )  # fmt: skip
    return viewer.model(view)


@router.get("/best/train.py", response_class=PlainTextResponse)
def best_train_py(caller: Caller, store: StoreDep) -> PlainTextResponse:
    """The best train.py as a file; its commit is in the ETag and X-Commit headers."""
    current, train_py = logic.best_train_py(store)
    return PlainTextResponse(train_py, headers={"ETag": f'"{current.commit}"', "X-Commit": current.commit})


FingerprintKey = Annotated[
    str | None,
    Query(
        pattern=r"^[0-9a-f]{16}$",
        description="a fingerprint key (GET /v1/fingerprints); default: the current best's",
    ),
]


@router.get("/leaderboard", response_model=list[LeaderboardRow], responses=NOT_FOUND)
def leaderboard(
    viewer: Viewer,
    store: StoreDep,
    settings: SettingsDep,
    limit: Annotated[int | None, Query(ge=1, description="default 50")] = None,
    fingerprint: FingerprintKey = None,
) -> list[LeaderboardRow]:
    """Scored proposals of one fingerprint, best (lowest val_bpb) first; fingerprints never mix."""
    key, proposals = research.leaderboard(store, logic.page_size(settings, limit), fingerprint)
    rows = [
        LeaderboardRow(
            id=p.id,
            title=p.title,
            agent=p.agent,
            val_bpb=score_of(p),
            state=p.state,
            merged_commit=p.merged_commit,
            delta=None if p.decision is None else p.decision.delta_bpb,
            fingerprint=key,
        )
        for p in proposals
    ]
    return viewer.models(rows)
