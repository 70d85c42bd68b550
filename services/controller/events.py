"""Server-sent events: state transitions as they happen, and the live log of a running proposal.

No FastAPI here: the routes wrap these async generators in a streaming response.

Transitions reach the controller on the store's `ar:events` channel. One `EventHub` per app holds a
single subscription, read by one thread, and fans each message out to an asyncio queue per open
stream; so a hundred watchers cost one Redis connection and one thread, not a hundred. A stream
whose client reads too slowly (its queue fills) is ended with an `error` event; the client reconnects.

Wire format (https://html.spec.whatwg.org/multipage/server-sent-events.html): each event is
`event: <name>` and one `data: <JSON>` line; comments (`: keepalive`) every heartbeat interval keep
proxies from closing an idle stream.
"""

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from anyio import to_thread

from services.controller.disclosure import Disclosure
from services.errors import StoreUnavailable
from services.states import TERMINAL, State
from services.store import EventSubscription, Store

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0  # a comment line this often on an idle stream
RETRY_MS = 3000  # what a client's EventSource waits before reconnecting
QUEUE_SIZE = 1000  # transitions buffered per stream before it counts as too slow
POLL_TIMEOUT_S = 0.25  # how long the hub's thread waits for a message before checking for stop
LOG_POLL_S = 0.5  # how often a live-log stream looks for new output
REDIS_RETRY_S = 1.0  # pause after Redis failed under the hub, before reading again


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def preamble() -> str:
    return f"retry: {RETRY_MS}\n: connected\n\n"


KEEPALIVE = ": keepalive\n\n"


# ---------------------------------------------------------------------------- fan-out hub


@dataclass(eq=False)
class _Listener:
    loop: asyncio.AbstractEventLoop
    queue: "asyncio.Queue[dict[str, Any] | None]" = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))


class EventHub:
    """One subscription to the events channel, started by the first listener, shared by all."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._listeners: set[_Listener] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscription: EventSubscription | None = None

    @asynccontextmanager
    async def listen(self) -> AsyncIterator["asyncio.Queue[dict[str, Any] | None]"]:
        """A queue of transitions published from now on (None: the stream must end)."""
        await to_thread.run_sync(self._start)
        listener = _Listener(asyncio.get_running_loop())
        with self._lock:
            self._listeners.add(listener)
        try:
            yield listener.queue
        finally:
            with self._lock:
                self._listeners.discard(listener)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            thread, self._thread = self._thread, None
            listeners = list(self._listeners)
        for listener in listeners:
            _offer(listener, None)
        if thread is not None:
            thread.join(POLL_TIMEOUT_S * 5)
        if self._subscription is not None:
            self._subscription.close()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            # Subscribed (and confirmed) before any listener is added: nothing published after a
            # listener registers is missed.
            self._subscription = self._store.event_subscription()
            self._thread = threading.Thread(target=self._pump, name="event-hub", daemon=True)
            self._thread.start()

    def _pump(self) -> None:
        assert self._subscription is not None
        failing = False
        while not self._stop.is_set():
            try:
                message = self._subscription.get(POLL_TIMEOUT_S)
            except StoreUnavailable as exc:
                if not failing:
                    log.warning("event stream: Redis failed (%s); retrying", exc)
                failing = True
                self._stop.wait(REDIS_RETRY_S)
                continue
            failing = False
            if message is None:
                continue
            with self._lock:
                listeners = list(self._listeners)
            for listener in listeners:
                _offer(listener, message)


def _offer(listener: _Listener, message: dict[str, Any] | None) -> None:
    with contextlib.suppress(RuntimeError):  # the listener's event loop has closed: its stream is gone
        listener.loop.call_soon_threadsafe(_put, listener.queue, message)


def _put(queue: "asyncio.Queue[dict[str, Any] | None]", message: dict[str, Any] | None) -> None:
    try:
        queue.put_nowait(message)
    except asyncio.QueueFull:
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)  # too slow: end the stream rather than skip transitions silently


# ---------------------------------------------------------------------------- streams


async def transitions(
    hub: EventHub, store: Store, proposal_id: str | None, viewer: Disclosure, heartbeat_s: float = HEARTBEAT_S
) -> AsyncIterator[str]:
    """`state` events for every transition (or one proposal's), as `viewer` may see them. For one
    proposal, the first event is its current state, and the stream ends after a terminal state."""
    async with hub.listen() as queue:
        yield preamble()
        if proposal_id is not None:
            proposal = await to_thread.run_sync(store.get, proposal_id)
            current = _transition(proposal.id, proposal.state, proposal.reason, proposal.updated_at)
            yield sse("state", viewer.data(current))
            if proposal.state in TERMINAL:
                return
        while True:
            try:
                message = await asyncio.wait_for(queue.get(), heartbeat_s)
            except TimeoutError:
                yield KEEPALIVE
                continue
            if message is None:
                yield sse(
                    "error", {"detail": "the stream ended (server shutdown or a slow client); reconnect"}
                )
                return
            if proposal_id is not None and message.get("proposal_id") != proposal_id:
                continue
            yield sse("state", viewer.data(message))
            if proposal_id is not None and message.get("state") in TERMINAL:
                return


async def live_log(
    store: Store,
    proposal_id: str,
    after: str = "0",
    heartbeat_s: float = HEARTBEAT_S,
    poll_s: float = LOG_POLL_S,
) -> AsyncIterator[str]:
    """`log` events ({"text"}) with the stream entry id as event id (a reconnecting client sends it
    back as Last-Event-ID), then one `end` event ({"state"}) once the proposal is in a terminal state
    and its output is drained."""
    yield preamble()
    quiet_since = time.monotonic()
    while True:
        state, entries = await to_thread.run_sync(_poll_log, store, proposal_id, after)
        for entry_id, chunk in entries:
            yield sse("log", {"text": chunk}, entry_id)
            after = entry_id
        if entries:
            quiet_since = time.monotonic()
            continue  # read on at once: there may be more than one read's worth
        if state is None or state in TERMINAL:
            yield sse("end", {"state": None if state is None else state.value})
            return
        if time.monotonic() - quiet_since >= heartbeat_s:
            yield KEEPALIVE
            quiet_since = time.monotonic()
        await asyncio.sleep(poll_s)


def _poll_log(store: Store, proposal_id: str, after: str) -> tuple[State | None, list[tuple[str, str]]]:
    # The state is read first: output appended before a terminal transition is in this read or later.
    state = store.proposal_state(proposal_id)
    return state, store.read_live_log(proposal_id, after)


def _transition(proposal_id: str, state: State, reason: str, at: float) -> dict[str, Any]:
    return {"proposal_id": proposal_id, "state": state.value, "reason": reason, "at": at}
