"""`autoresearch-controller`: serve the API with uvicorn, configured from the environment (AR_*)."""

import logging

import uvicorn

from services.controller.app import create_app
from services.logs import configure_logging
from services.settings import Settings

# Open event streams would hold a graceful shutdown forever; after this they are cut.
SHUTDOWN_GRACE_S = 5


def main() -> None:
    configure_logging()
    logging.getLogger("mcp").setLevel(logging.WARNING)  # the MCP SDK logs each stateless request at INFO
    settings = Settings()
    uvicorn.run(
        create_app(settings, program_path=settings.program_path),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )


if __name__ == "__main__":
    main()
