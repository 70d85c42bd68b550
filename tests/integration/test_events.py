"""Server-sent events over real HTTP (uvicorn in a thread, real Redis): transitions published by
store.transition reach /v1/events, the live log reaches /log/stream; and the store's live-log
methods (size cap, TTL, reading on)."""

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.states import State
from services.store import LIVE_LOG_ENTRY_CHARS, LIVE_LOG_MAX_ENTRIES, LIVE_LOG_TTL_S, Store
from tests.support.live_server import ADMIN, agent_token, stored_proposal
from tests.support.walk import walk

READ_TIMEOUT_S = 5.0


@pytest.fixture
def http(url: str, store: Store) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {agent_token(store)}"}
    with httpx.Client(base_url=url, headers=headers, timeout=READ_TIMEOUT_S) as client:
        yield client


def frames(answer: httpx.Response) -> Iterator[tuple[str, Any, str | None]]:
    """(event, data, id) of each event; ("comment", text, None) of each comment line."""
    event, data, event_id = "message", "", None
    for line in answer.iter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip(), None
        elif line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line.startswith("id: "):
            event_id = line.removeprefix("id: ")
        elif not line and data:
            yield event, json.loads(data), event_id
            event, data, event_id = "message", "", None


def next_event(stream: Iterator[tuple[str, Any, str | None]]) -> tuple[str, Any, str | None]:
    return next(frame for frame in stream if frame[0] != "comment")


# ---------------------------------------------------------------------------- transitions


def test_one_proposals_transitions_then_the_stream_ends(http: httpx.Client, store: Store) -> None:
    proposal = stored_proposal(store)
    with http.stream("GET", "/v1/events", params={"proposal_id": proposal.id}) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        stream = frames(answer)
        at = float(round(proposal.updated_at))  # agents see timestamps in whole seconds
        assert next_event(stream) == (
            "state",
            {"proposal_id": proposal.id, "state": "queued", "reason": "", "at": at},
            None,
        )
        other = stored_proposal(store, "0.005")
        walk(store, other.id, State.RUNNING, "someone else's")
        walk(store, proposal.id, State.RUNNING, "worker-0 started training")
        event, data, _ = next_event(stream)
        assert (event, data["proposal_id"], data["state"]) == ("state", proposal.id, "running")
        assert data["reason"] == "worker-0 started training"
        walk(store, proposal.id, State.CRASHED, "exit code 1")
        assert next_event(stream)[1]["state"] == "crashed"
        assert list(stream) == []  # the server ended the stream after the terminal state


def test_all_transitions_with_keepalives(http: httpx.Client, store: Store) -> None:
    proposal = stored_proposal(store)
    with http.stream("GET", "/v1/events") as answer:
        stream = frames(answer)
        assert next(stream) == ("comment", "connected", None)
        assert next(stream) == ("comment", "keepalive", None)  # within the test server's 0.2 s heartbeat
        later = stored_proposal(store, "0.003")  # created after subscribing: a `queued` event
        walk(store, proposal.id, State.CANCELLED, "by test")
        seen = [next_event(stream)[1] for _ in range(2)]
    assert [(d["proposal_id"], d["state"]) for d in seen] == [
        (later.id, "queued"),
        (proposal.id, "cancelled"),
    ]


def test_a_finished_proposal_streams_its_state_and_ends(http: httpx.Client, store: Store) -> None:
    proposal = stored_proposal(store)
    walk(store, proposal.id, State.CANCELLED, "by test")
    with http.stream("GET", "/v1/events", params={"proposal_id": proposal.id}) as answer:
        events = [frame for frame in frames(answer) if frame[0] != "comment"]
    assert [(e, d["state"]) for e, d, _ in events] == [("state", "cancelled")]


def test_many_watchers_share_one_subscription(http: httpx.Client, store: Store) -> None:
    proposal = stored_proposal(store)
    results: list[str] = []
    ready = threading.Semaphore(0)

    def watch() -> None:
        seen = []
        with http.stream("GET", "/v1/events", params={"proposal_id": proposal.id}) as answer:
            for event, data, _ in frames(answer):
                if event == "state":
                    seen.append(data["state"])
                    if len(seen) == 1:
                        ready.release()  # subscribed and has the snapshot
        results.append(",".join(seen))

    watchers = [threading.Thread(target=watch) for _ in range(5)]
    for thread in watchers:
        thread.start()
    for _ in watchers:
        assert ready.acquire(timeout=READ_TIMEOUT_S)
    assert store.r.pubsub_numsub("ar:events")[0][1] == 1  # one Redis subscription for all five
    walk(store, proposal.id, State.CANCELLED, "by test")
    for thread in watchers:
        thread.join(READ_TIMEOUT_S)
    assert results == ["queued,cancelled"] * 5


def test_stream_errors_are_problems(http: httpx.Client, url: str) -> None:
    answer = http.get("/v1/events", params={"proposal_id": "p_missing"})
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "no proposal with id 'p_missing'" in answer.json()["detail"]
    assert http.get("/v1/proposals/p_missing/log/stream").status_code == 404
    assert httpx.get(f"{url}/v1/events", timeout=READ_TIMEOUT_S).status_code == 401
    bad = http.get("/v1/proposals/p_x/log/stream", headers={"Last-Event-ID": "junk"})
    assert bad.status_code == 422


# ---------------------------------------------------------------------------- live log


def test_live_log_streams_output_then_ends(http: httpx.Client, store: Store) -> None:
    proposal = stored_proposal(store)
    walk(store, proposal.id, State.RUNNING, "started")
    store.append_live_log(proposal.id, "step 1 loss 3.2\n")
    with http.stream("GET", f"/v1/proposals/{proposal.id}/log/stream") as answer:
        stream = frames(answer)
        first = next_event(stream)
        assert first[:2] == ("log", {"text": "step 1 loss 3.2\n"})
        store.append_live_log(proposal.id, "step 2 loss 3.1\n")
        second = next_event(stream)
        assert second[1] == {"text": "step 2 loss 3.1\n"}
        assert first[2] is not None and second[2] is not None and second[2] > first[2]
        store.append_live_log(proposal.id, "done\n")
        walk(store, proposal.id, State.TIMED_OUT, "killed at the limit")
        rest = [frame for frame in stream if frame[0] != "comment"]
    assert [(e, d) for e, d, _ in rest] == [("log", {"text": "done\n"}), ("end", {"state": "timed_out"})]
    # A reconnecting client sends the last id it saw and gets only what came after.
    with http.stream(
        "GET", f"/v1/proposals/{proposal.id}/log/stream", headers={"Last-Event-ID": str(second[2])}
    ) as answer:
        resumed = [(e, d) for e, d, _ in frames(answer) if e != "comment"]
    assert resumed == [("log", {"text": "done\n"}), ("end", {"state": "timed_out"})]


def test_store_live_log_is_capped_and_expires(store: Store) -> None:
    store.append_live_log("p1", "")
    assert store.read_live_log("p1") == []
    big = "x" * (LIVE_LOG_ENTRY_CHARS * 2 + 5)
    store.append_live_log("p1", big)
    entries = store.read_live_log("p1")
    assert [len(chunk) for _, chunk in entries] == [LIVE_LOG_ENTRY_CHARS, LIVE_LOG_ENTRY_CHARS, 5]
    assert "".join(chunk for _, chunk in entries) == big
    assert store.read_live_log("p1", after=entries[0][0]) == entries[1:]
    assert 0 < store.r.ttl("ar:livelog:p1") <= LIVE_LOG_TTL_S
    for i in range(LIVE_LOG_MAX_ENTRIES + 10):
        store.append_live_log("p1", f"line {i}\n")
    kept = store.read_live_log("p1")
    assert len(kept) == LIVE_LOG_MAX_ENTRIES
    assert kept[-1][1] == f"line {LIVE_LOG_MAX_ENTRIES + 9}\n"
    assert store.read_live_log("p1", after=kept[-1][0]) == []
    assert store.read_live_log("p2") == []


def test_admin_token_reads_streams_too(url: str, store: Store) -> None:
    proposal = stored_proposal(store)
    walk(store, proposal.id, State.CANCELLED, "by test")
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.stream("GET", f"{url}/v1/proposals/{proposal.id}/log/stream", headers=headers) as answer:
        assert answer.status_code == 200
        events = [(e, d) for e, d, _ in frames(answer) if e != "comment"]
    assert events == [("end", {"state": "cancelled"})]
