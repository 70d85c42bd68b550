"""`create_app(settings)`: the FastAPI application, with everything it uses passed in."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from services.controller import auth, bodies, events, logic, mcp_http, problems, schemas
from services.controller.routes import best, health, metrics, program, proposals, research, runs, tokens, ui
from services.controller.routes import events as event_routes
from services.settings import KIB, Settings
from services.store import Store

log = logging.getLogger(__name__)

API_VERSION = "1"
BODY_SLACK_BYTES = 64 * KIB  # room for numbers, names, commit ids, JSON punctuation and whitespace
ESCAPED_BYTES_PER_CHAR = 12  # a character outside the BMP, as a JSON encoder may escape it: \\ud83d\\ude00


def request_body_limit(settings: Settings) -> int:
    """The largest request body read: above the largest body the schema allows, even with every
    character escaped, so a field over its own limit is read and refused by name (422), not as a 413."""
    models = schemas.request_models(schemas.Limits.of(settings)).values()
    chars = max(sum(bodies.string_limits(model).values()) for model in models)
    return chars * ESCAPED_BYTES_PER_CHAR + BODY_SLACK_BYTES


DEFAULT_PROGRAM_PATH = Path("program.md")  # relative to the working directory (/app in the image)


def create_app(
    settings: Settings,
    store: Store | None = None,
    redis: "redis.Redis[bytes] | None" = None,
    *,
    program_path: Path | None = DEFAULT_PROGRAM_PATH,
    sse_heartbeat_s: float = events.HEARTBEAT_S,
) -> FastAPI:
    """Build the app. Without `store`/`redis`, one connection is made from settings.redis_url (lazily:
    redis-py connects on first use) and closed at shutdown. The first admin token is registered at
    start-up; an unreachable Redis then stops the start, so the orchestrator restarts it. At start-up
    program.md version 1 is seeded from `program_path` if the store holds no version yet, and the best's
    train.py is prepared for submits (`logic.warm_up`)."""
    owns_connection = store is None and redis is None
    if store is None:
        store = Store(redis) if redis is not None else Store.from_url(settings.redis_url)
    conn = redis if redis is not None else store.r
    hub = events.EventHub(store)
    mcp = mcp_http.McpEndpoint(store, max_body_bytes=request_body_limit(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(store.open_schema)  # an older layout: refused, naming the migration
        await run_in_threadpool(auth.bootstrap_admin, store, settings.admin_token)
        await run_in_threadpool(logic.seed_program, store, program_path)
        await run_in_threadpool(logic.warm_up, store)  # the best's train.py, outlined for submits
        try:
            async with mcp.running(app):
                yield
        finally:
            await run_in_threadpool(hub.close)
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
    app.state.event_hub = hub
    app.state.sse_heartbeat_s = sse_heartbeat_s
    setattr(app.state, bodies.MODELS_STATE, schemas.request_models(schemas.Limits.of(settings)))
    problems.install(app)
    routers = [
        m.router
        for m in (proposals, runs, best, program, event_routes, tokens, health, metrics, ui, research)
    ]
    for router in routers:
        app.include_router(router)
    app.router.routes.append(mcp_http.route(mcp))  # MCP over streamable HTTP
    # FastAPI keeps included routers apart from the app's own routes; the 405 answer, the schema's
    # bodies and the 413 hints need them all.
    own = [route for route in app.router.routes if isinstance(route, Route)]
    setattr(app.state, bodies.ROUTES_STATE, own + [route for router in routers for route in router.routes])
    app.add_middleware(
        problems.BodySizeLimit, max_bytes=request_body_limit(settings), hints=bodies.size_hints(app)
    )
    return app
