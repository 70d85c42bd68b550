"""/v1/best and /v1/leaderboard."""

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from services.controller import logic
from services.controller.deps import Caller, SettingsDep, StoreDep
from services.controller.schemas import BestView, LeaderboardRow, score_of

router = APIRouter(prefix="/v1", tags=["best"])


@router.get("/best", response_model=BestView)
def best(caller: Caller, store: StoreDep) -> BestView:
    """The head of the research branch: commit, score and its train.py."""
    current, train_py = logic.best_train_py(store)
    return BestView(
        **current.model_dump(include={"commit", "val_bpb", "proposal_id", "updated_at"}), train_py=train_py
    )


@router.get("/best/train.py", response_class=PlainTextResponse)
def best_train_py(caller: Caller, store: StoreDep) -> PlainTextResponse:
    """The best train.py as a file; its commit is in the ETag and X-Commit headers."""
    current, train_py = logic.best_train_py(store)
    return PlainTextResponse(train_py, headers={"ETag": f'"{current.commit}"', "X-Commit": current.commit})


@router.get("/leaderboard", response_model=list[LeaderboardRow])
def leaderboard(
    caller: Caller,
    store: StoreDep,
    settings: SettingsDep,
    limit: Annotated[int | None, Query(ge=1, description="default 50")] = None,
) -> list[LeaderboardRow]:
    """Scored proposals, best (lowest val_bpb) first."""
    return [
        LeaderboardRow(
            id=p.id,
            title=p.title,
            agent=p.agent,
            val_bpb=score_of(p),
            state=p.state,
            merged_commit=p.merged_commit,
            delta=None if p.decision is None else p.decision.delta_bpb,
        )
        for p in logic.leaderboard(store, settings, limit)
    ]
