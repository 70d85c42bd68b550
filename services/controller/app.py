"""`create_app(settings)`: the FastAPI application, with everything it uses passed in."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from services import auth
from services.controller import problems
from services.controller.routes import best, health, proposals, runs, tokens
from services.settings import KIB, Settings
from services.store import Store

log = logging.getLogger(__name__)

API_VERSION = "1"
BODY_SLACK_BYTES = 64 * KIB  # room for title, description and JSON escaping beyond the two patch texts


def request_body_limit(settings: Settings) -> int:
    """The largest request body read: room for a file (or diff), its escaping, and the text fields."""
    return settings.max_patch_bytes * 2 + BODY_SLACK_BYTES


def create_app(
    settings: Settings, store: Store | None = None, redis: "redis.Redis[bytes] | None" = None
) -> FastAPI:
    """Build the app. Without `store`/`redis`, one connection is made from settings.redis_url (lazily:
    redis-py connects on first use) and closed at shutdown. The first admin token is registered at
    start-up; an unreachable Redis then stops the start, so the orchestrator restarts it."""
    owns_connection = store is None and redis is None
    if store is None:
        store = Store(redis) if redis is not None else Store.from_url(settings.redis_url)
    conn = redis if redis is not None else store.r

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(auth.bootstrap_admin, store, settings.admin_token)
        try:
            yield
        finally:
            if owns_connection:
                conn.close()

    app = FastAPI(
        title="autoresearch",
        version=API_VERSION,
        summary="Submit changes to trainer/train.py; each runs sandboxed, is scored, and merged if it wins.",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
        responses=problems.COMMON_RESPONSES,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.redis = conn
    problems.install(app)
    app.add_middleware(problems.BodySizeLimit, max_bytes=request_body_limit(settings))
    for module in (proposals, runs, best, tokens, health):
        app.include_router(module.router)
    return app
