"""`autoresearch-controller`: serve the API with uvicorn, configured from the environment (AR_*)."""

import logging

import uvicorn
from fastapi import FastAPI

from services.controller.app import create_app
from services.logs import configure_logging
from services.settings import Settings

# Open event streams would hold a graceful shutdown forever; after this they are cut.
SHUTDOWN_GRACE_S = 5


def build_app() -> FastAPI:
    """The app, configured from the environment; each uvicorn worker process builds its own."""
    configure_logging()
    logging.getLogger("mcp").setLevel(logging.WARNING)  # the MCP SDK logs each stateless request at INFO
    settings = Settings()
    return create_app(settings, program_path=settings.program_path)


def main() -> None:
    configure_logging()
    settings = Settings()
    workers = settings.controller_workers
    uvicorn.run(
        build_app() if workers == 1 else "services.controller.main:build_app",  # workers import it by name
        factory=workers > 1,
        workers=workers if workers > 1 else None,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )


if __name__ == "__main__":
    main()
