"""Server-sent event streams: /v1/events (state transitions) and /v1/proposals/{id}/log/stream."""

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator
from starlette.concurrency import run_in_threadpool

from services.controller import events
from services.controller.deps import Caller, HeartbeatDep, HubDep, StoreDep, Viewer
from services.controller.problems import PROBLEM_RESPONSE
from services.controller.routes.proposals import ProposalId

router = APIRouter(prefix="/v1", tags=["events"])

EVENT_STREAM = "text/event-stream"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {EVENT_STREAM: {}}, "description": "a server-sent events stream"},
    404: PROBLEM_RESPONSE,
}
STREAM_ID_PATTERN = r"^\d{1,20}-\d{1,20}$"
STREAM_ID_PART_MAX = 2**64 - 1  # both halves of a Redis stream entry id are unsigned 64-bit integers


def _fits_redis(entry_id: str | None) -> str | None:
    """The pattern lets 20 digits through, which can exceed 64 bits: Redis would refuse the id only once
    the stream had started (a dropped connection instead of a 422)."""
    if entry_id is not None and any(int(part) > STREAM_ID_PART_MAX for part in entry_id.split("-")):
        raise ValueError(f"both parts of a stream entry id are at most {STREAM_ID_PART_MAX}")
    return entry_id


StreamEntryId = Annotated[
    str | None,
    Query(pattern=STREAM_ID_PATTERN, description="resume after this id"),
    AfterValidator(_fits_redis),
]
LastEventId = Annotated[
    str | None, Header(alias="Last-Event-ID", pattern=STREAM_ID_PATTERN), AfterValidator(_fits_redis)
]


@router.get("/events", response_class=StreamingResponse, responses=STREAM_RESPONSES)
async def transitions(
    viewer: Viewer,
    store: StoreDep,
    hub: HubDep,
    heartbeat_s: HeartbeatDep,
    proposal_id: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = None,
) -> StreamingResponse:
    """`state` events `{proposal_id, state, reason, at}` for every transition, or for one proposal's
    (then the current state comes first and the stream ends after a terminal state)."""
    if proposal_id is not None:
        await run_in_threadpool(store.get, proposal_id)  # 404 before the stream starts
    stream = events.transitions(hub, store, proposal_id, viewer, heartbeat_s)
    return StreamingResponse(stream, media_type=EVENT_STREAM, headers=STREAM_HEADERS)


@router.get(
    "/proposals/{proposal_id}/log/stream", response_class=StreamingResponse, responses=STREAM_RESPONSES
)
async def live_log(
    proposal_id: ProposalId,
    caller: Caller,
    store: StoreDep,
    heartbeat_s: HeartbeatDep,
    after: StreamEntryId = None,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    """`log` events `{text}` of a proposal's output as it runs, then `end` `{state}` once it is in a
    terminal state. Resume with `Last-Event-ID` (or `?after=`)."""
    await run_in_threadpool(store.get, proposal_id)
    stream = events.live_log(store, proposal_id, last_event_id or after or "0", heartbeat_s)
    return StreamingResponse(stream, media_type=EVENT_STREAM, headers=STREAM_HEADERS)
