"""`autoresearch-controller`: serve the API with uvicorn, configured from the environment (AR_*)."""

import asyncio
import logging
import socket

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.controller.app import create_app
from services.logs import configure_logging
from services.settings import Settings

# Open event streams would hold a graceful shutdown forever; after this they are cut.
SHUTDOWN_GRACE_S = 5


def no_delay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on a TCP connection. asyncio turns it off only for sockets it knows
    to be TCP; the listening socket uvicorn hands to its worker processes (AR_CONTROLLER_WORKERS above
    1) is rebuilt from a file descriptor without that mark, and each answer, written as a head and then
    a body, then waited ~40 ms for the client's delayed ACK."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol on httptools (llhttp, in C: the one the controller serves with),
    on a connection with Nagle's algorithm off (`no_delay`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        no_delay(transport)
        super().connection_made(transport)


class NoDelayH11Protocol(H11Protocol):
    """uvicorn's pure-Python HTTP/1.1 protocol (h11), on a connection with Nagle's algorithm off."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        no_delay(transport)
        super().connection_made(transport)


def build_app() -> FastAPI:
    """The app, configured from the environment; each uvicorn worker process builds its own."""
    configure_logging()
    logging.getLogger("mcp").setLevel(logging.WARNING)  # the MCP SDK logs each stateless request at INFO
    settings = Settings()
    return create_app(settings, program_path=settings.controller.program_path)


def main() -> None:
    configure_logging()
    settings = Settings()
    workers = settings.controller.controller_workers
    uvicorn.run(
        build_app() if workers == 1 else "services.controller.main:build_app",  # workers import it by name
        factory=workers > 1,
        workers=workers if workers > 1 else None,
        http=NoDelayHttpToolsProtocol,  # the parser in C: ~0.7 ms less CPU per request than h11
        loop="auto",  # uvloop (libuv's loop, less CPU per request) where installed, else asyncio's
        host=settings.controller.host,
        port=settings.controller.port,
        log_config=None,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )


if __name__ == "__main__":
    main()
