"""`autoresearch-controller`: serve the API with uvicorn, configured from the environment (AR_*)."""

import logging

import uvicorn

from services.controller.app import create_app
from services.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings = Settings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)


if __name__ == "__main__":
    main()
