"""Liveness and readiness (no auth, for orchestrators) and /v1/status."""

from fastapi import APIRouter

from services.controller import logic, research
from services.controller.deps import StoreDep, Viewer
from services.controller.problems import PROBLEM_RESPONSE
from services.controller.schemas import Health, Ready, StatusView

router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["health"])
def healthz() -> Health:
    """The process answers (touches nothing else)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Ready, responses={503: PROBLEM_RESPONSE}, tags=["health"])
def readyz(store: StoreDep) -> Ready:
    """Redis answers and a best commit exists; 503 with the reason otherwise."""
    return Ready(status="ready", best_commit=logic.readiness(store).commit)


@router.get("/v1/status", response_model=StatusView, tags=["health"])
def status(viewer: Viewer, store: StoreDep) -> StatusView:
    """Queue depths, proposals per state, the best commit, and GPU-seconds spent per improvement."""
    current = logic.status(store)
    best = current.best
    cost = research.cost_of(current.counters)
    view = StatusView(
        queues=current.queues,
        states=current.states,
        best_commit=None if best is None else best.commit,
        best_val_bpb=None if best is None else best.val_bpb,
        gpu_seconds_total=cost.gpu_seconds_total,
        merged_improvements=cost.merged_improvements,
        gpu_seconds_per_improvement=cost.gpu_seconds_per_improvement,
    )
    return viewer.model(view)
