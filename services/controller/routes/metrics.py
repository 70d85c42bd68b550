"""GET /metrics: Prometheus text exposition. No auth: it shows counts, durations and scores, no
proposal contents, names or tokens (see services/controller/metrics.py for what each metric means)."""

from fastapi import APIRouter, Response

from services.controller import metrics
from services.controller.deps import SettingsDep, StoreDep
from services.controller.disclosure import Disclosure

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {metrics.CONTENT_TYPE: {}}}})
def prometheus(store: StoreDep, settings: SettingsDep) -> Response:
    """Queue depths, proposals by state, run durations, GPU busy share, accepts (scores as agents see them:
    this route has no auth)."""
    body = metrics.render(metrics.snapshot(store, Disclosure.of(None, settings).score))
    return Response(body, media_type=metrics.CONTENT_TYPE)
