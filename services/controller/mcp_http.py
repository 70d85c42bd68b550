"""`/mcp`: the MCP tools and resources of services/mcp_tools.py over streamable HTTP.

    claude mcp add --transport http autoresearch http://gpu-box:8000/mcp \\
        --header "Authorization: Bearer ar_..."

- **Auth per request.** Every request carries its own bearer token, checked as REST checks it (401 or
  503 as problem details, before anything of MCP runs). Each tool then calls the REST route it wraps
  in-process (httpx over ASGI, no socket) with that same Authorization header, so routes, roles,
  quotas, idempotency and disclosure apply exactly as they do to the token over REST.
- **Stateless.** No `Mcp-Session-Id` and nothing kept between requests; answers are plain JSON (no
  event stream), so any controller process behind a load balancer can answer any request.
- **No Host/Origin allow-list** (the SDK's DNS-rebinding guard): the controller answers under
  whatever name the operator gives it, and a web page that rebinds a name still cannot send the
  bearer token, without which nothing is answered.
"""

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.security.utils import get_authorization_scheme_param
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from services.cli.client import ApiError
from services.controller import auth
from services.mcp_tools import build_server
from services.store import Store

PATH = "/mcp"
METHODS = ["GET", "POST", "DELETE"]  # the transport's; stateless, the SDK refuses GET and DELETE
IN_PROCESS_BASE_URL = "http://controller"  # never resolved: requests go to the app itself
NO_HOST_CHECK = TransportSecuritySettings(enable_dns_rebinding_protection=False)


class InProcessApi:
    """The REST API called in-process, as the caller of one MCP request (its Authorization header)."""

    def __init__(self, http: httpx.AsyncClient, authorization: str | None) -> None:
        self._http = http
        self._headers = {"Authorization": authorization} if authorization else {}

    async def get(self, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        return (await self._call("GET", path, params=query)).json()

    async def text(self, path: str) -> str:
        return (await self._call("GET", path)).text

    async def submit(self, body: dict[str, Any], idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        key = idempotency_key or f"mcp-{uuid.uuid4().hex}"
        answer = await self._call("POST", "/v1/proposals", json=body, headers={"Idempotency-Key": key})
        return dict(answer.json()), answer.status_code == httpx.codes.CREATED

    async def _call(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        answer = await self._http.request(
            method, path, headers={**self._headers, **(headers or {})}, **kwargs
        )
        if answer.status_code >= 400:
            raise _refusal(answer)
        return answer


def _refusal(answer: httpx.Response) -> ApiError:
    """The controller's problem details (services/controller/problems.py) as the client's ApiError."""
    try:
        problem = answer.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        return ApiError(answer.status_code, answer.reason_phrase, answer.text[:300])
    return ApiError(
        answer.status_code,
        str(problem.get("title", answer.reason_phrase)),
        str(problem.get("detail", "")),
        str(problem.get("type", "")),
    )


def route(endpoint: "McpEndpoint") -> Route:
    """The `/mcp` route (not in /openapi.json: JSON-RPC, not REST; docs/mcp.md)."""
    return Route(PATH, endpoint, methods=METHODS, include_in_schema=False)


class McpEndpoint:
    """The ASGI app behind the `/mcp` route. `running(app)` (in the app's lifespan) starts what it
    needs; each request is authenticated, then handed to the SDK's stateless transport."""

    def __init__(self, store: Store, max_body_bytes: int) -> None:
        self._store = store
        self._max_body_bytes = max_body_bytes
        self._http: httpx.AsyncClient | None = None
        self._server = build_server(self._api_for)
        self._manager: StreamableHTTPSessionManager | None = None

    @asynccontextmanager
    async def running(self, app: FastAPI) -> AsyncIterator[None]:
        # A new manager per lifespan: the SDK runs each one once (tests start one app several times).
        self._server.streamable_http_app(
            stateless_http=True,
            json_response=True,
            transport_security=NO_HOST_CHECK,
            max_request_body_size=self._max_body_bytes,
        )
        manager = self._server.session_manager
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with (
            httpx.AsyncClient(transport=transport, base_url=IN_PROCESS_BASE_URL) as http,
            manager.run(),
        ):
            self._http, self._manager = http, manager
            try:
                yield
            finally:
                self._http, self._manager = None, None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
        # Raises AuthError (401) or a Redis error (503); the app's handlers answer with a problem.
        await run_in_threadpool(auth.authenticate, self._store, token if scheme.lower() == "bearer" else None)
        if self._manager is None:
            raise RuntimeError("the MCP endpoint is not running (the app's lifespan did not start it)")
        await self._manager.handle_request(scope, receive, send)

    def _api_for(self, request: Any) -> InProcessApi:
        if self._http is None:
            raise RuntimeError("the MCP endpoint is not running")
        headers = getattr(request, "headers", None)
        return InProcessApi(self._http, None if headers is None else headers.get("authorization"))
