"""The controller's HTTP protocol turns Nagle's algorithm off on every connection it serves, also on a
listening socket that asyncio does not recognise as TCP (as uvicorn's worker processes get it, rebuilt
from a file descriptor): otherwise each answer, written as a head and then a body, waits for the
client's delayed ACK (~40 ms)."""

import asyncio
import socket
import threading

import httpx
import pytest
import uvicorn

from services.controller.main import NoDelayH11Protocol, NoDelayHttpToolsProtocol
from tests.support.net import wait_for

HANG_GUARD_S = 30  # a guard against a hang, not a timing assertion


async def hello(scope, receive, send):  # type: ignore[no-untyped-def]
    """The smallest ASGI app: 200 and a two-byte body."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("protocol", [NoDelayHttpToolsProtocol, NoDelayH11Protocol])
def test_every_connection_has_nagle_off_even_when_asyncio_would_leave_it_on(protocol: type) -> None:
    seen: list[int] = []

    class Recording(protocol):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    # protocol 0, not IPPROTO_TCP: asyncio's own TCP_NODELAY step skips the sockets accepted on it
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(hello, http=Recording, lifespan="off", log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, HANG_GUARD_S, "the server to start")
        for _ in range(2):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=HANG_GUARD_S) as client:
                assert client.get("/").text == "ok"
    finally:
        server.should_exit = True
        thread.join(HANG_GUARD_S)
        listener.close()
    assert seen == [1, 1]
