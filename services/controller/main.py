"""`autoresearch-controller`: serve the API with uvicorn, configured from the environment (AR_*)."""

import uvicorn

from services.controller.app import create_app
from services.logs import configure_logging
from services.settings import Settings


def main() -> None:
    configure_logging()
    settings = Settings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)


if __name__ == "__main__":
    main()
