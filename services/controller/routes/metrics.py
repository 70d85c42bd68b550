"""GET /metrics: Prometheus text exposition. No auth: it shows counts, durations and scores, no
proposal contents, names or tokens (see services/metrics.py for what each metric means)."""

from fastapi import APIRouter, Response

from services import metrics
from services.controller.deps import DigestsDep, RedisDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {metrics.CONTENT_TYPE: {}}}})
def prometheus(store: StoreDep, conn: RedisDep, digests: DigestsDep) -> Response:
    """Queue depths, proposals by state, run durations, GPU busy share, accepts."""
    body = metrics.render(metrics.snapshot(store, conn, digests))
    return Response(body, media_type=metrics.CONTENT_TYPE)
