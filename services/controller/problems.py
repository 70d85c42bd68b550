"""Errors as RFC 9457 problem details (`application/problem+json`), mapped in this one place.

    ProposalError   NotFound 404, Conflict 409, InvalidPatch / InvalidPython / InvalidText / UnknownBase /
                    IdempotencyKeyReused / other 422
    AuthError       401 (with `WWW-Authenticate: Bearer`), 403 when the role is too low
    QuotaExceeded   429 (with `Retry-After`, seconds)
    InfraError      NotReady / StoreUnavailable / others 503
    redis.RedisError that escaped a module without translating it: 503
    request validation (pydantic) 422, naming each bad field; HTTP errors (404 route, 405 with every
    method of the path in `Allow`, 415 and 400 from services/controller/bodies.py) as they are
    body larger than the limit: 413, before the body is read (BodySizeLimit middleware), naming the
    size limits of the route's fields
    anything else: 500, logged with its traceback; the client gets no internals

`type` is a URN per problem kind (`urn:autoresearch:problem:<slug>`), listed in docs/api.md.
"""

import http
import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.controller import bodies
from services.errors import (
    AuthError,
    Conflict,
    IdempotencyKeyReused,
    InfraError,
    InvalidPatch,
    InvalidProgram,
    InvalidPython,
    InvalidText,
    NotFound,
    NotReady,
    ProposalError,
    QuotaExceeded,
    ServiceError,
    StoreUnavailable,
    UnknownBase,
    UnknownProgramVersion,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:autoresearch:problem:"

# Most specific first: the first class the error is an instance of decides.
_SERVICE_ERRORS: list[tuple[type[ServiceError], int, str, str]] = [
    (NotFound, 404, "not-found", "Not found"),
    (Conflict, 409, "conflict", "Conflict with the current state"),
    (InvalidPatch, 422, "invalid-patch", "Invalid patch"),
    (InvalidPython, 422, "invalid-python", "Candidate is not valid Python"),
    (InvalidText, 422, "invalid-text", "Text holds a character that is not stored"),
    (UnknownBase, 422, "unknown-base", "Unknown base commit"),
    (IdempotencyKeyReused, 422, "idempotency-key-reused", "Idempotency-Key reused for another request"),
    (UnknownProgramVersion, 422, "unknown-program-version", "Unknown program.md version"),
    (InvalidProgram, 422, "invalid-program", "Invalid program.md"),
    (ProposalError, 422, "invalid-request", "Invalid request"),
    (NotReady, 503, "not-ready", "Service not ready"),
    (StoreUnavailable, 503, "store-unavailable", "Store unavailable"),
    (InfraError, 503, "infra-unavailable", "Infrastructure unavailable"),
]


# Names that do not depend on the Python version's HTTPStatus phrases (413 was renamed in 3.13).
_HTTP_NAMES = {413: ("content-too-large", "Content too large"), 404: ("not-found", "Not found")}


class Problem(BaseModel):
    """The error body of every non-2xx answer (for the OpenAPI schema)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


PROBLEM_RESPONSE: dict[str, Any] = {"model": Problem, "content": {PROBLEM_JSON: {}}}
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {**PROBLEM_RESPONSE, "description": http.HTTPStatus(status).phrase}
    for status in (401, 403, 413, 503)
}


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {"type": TYPE_PREFIX + slug, "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(redis.RedisError, _redis_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    _document(app)


# ---------------------------------------------------------------------------- the OpenAPI schema

_PROBLEM_REF = "#/components/schemas/Problem"
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _document(app: FastAPI) -> None:
    """Make /openapi.json say what the handlers above send: every 4xx and 5xx is a `Problem` as
    application/problem+json. FastAPI would document its own 422 body (`HTTPValidationError` as
    application/json) and, for `PROBLEM_RESPONSE`, the model under application/json too; an
    operation with a body also answers 400 (not UTF-8), 413, 415 (not JSON) and 422."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            bodies.document(app, schema)
            _problems_in_schema(schema)
            _page_limits_in_schema(schema, app.state.settings.controller.page_size_max)
            _links_in_schema(schema)
        return generate()

    app.openapi = openapi  # type: ignore[method-assign]


_BODY_ERRORS = {
    "400": "the body is not valid UTF-8",
    "413": "the body is larger than any valid request",
    "415": f"the body is not sent as {bodies.JSON}",
    "422": "the body is not JSON, or a field is invalid",
}


def _problems_in_schema(schema: dict[str, Any]) -> None:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:
                for status, description in _BODY_ERRORS.items():
                    responses.setdefault(status, {"description": description})
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    response["content"] = {PROBLEM_JSON: {"schema": {"$ref": _PROBLEM_REF}}}
    components = schema.get("components", {}).get("schemas", {})
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        components.pop(name, None)


def _page_limits_in_schema(schema: dict[str, Any], page_size_max: int) -> None:
    """A `limit` query parameter is at most AR_PAGE_SIZE_MAX (checked by logic.page_size)."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query" and parameter["name"] == "limit":
                    for branch in parameter["schema"].get("anyOf", [parameter["schema"]]):
                        if branch.get("type") == "integer":
                            branch["maximum"] = page_size_max


# What a created proposal (or run, or program.md version) leads to: OpenAPI links, which clients and
# stateful fuzzers follow from the answer to the operations that read or act on what it made.
_PROPOSAL_ID = {"proposal_id": "$response.body#/id"}
_PROPOSAL_LINKS = {
    "GetProposal": ("get", "/v1/proposals/{proposal_id}", _PROPOSAL_ID),
    "GetLog": ("get", "/v1/proposals/{proposal_id}/log", _PROPOSAL_ID),
    "CancelProposal": ("post", "/v1/proposals/{proposal_id}/cancel", _PROPOSAL_ID),
}
_LINKS = {
    ("post", "/v1/proposals"): ("200", "201", _PROPOSAL_LINKS),
    ("post", "/v1/runs"): ("201", "201", _PROPOSAL_LINKS),
    ("put", "/v1/program"): (
        "200",
        "201",
        {
            "GetProgramVersion": (
                "get",
                "/v1/program/versions/{version}",
                {"version": "$response.body#/version"},
            )
        },
    ),
}


def _links_in_schema(schema: dict[str, Any]) -> None:
    paths = schema.get("paths", {})
    for (method, path), (*statuses, links) in _LINKS.items():
        for status in statuses:
            response = paths[path][method]["responses"].get(status)
            if response is None:
                continue
            response["links"] = {
                name: {
                    "operationId": paths[target_path][target_method]["operationId"],
                    "parameters": parameters,
                }
                for name, (target_method, target_path, parameters) in links.items()
            }


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, AuthError):
        if exc.forbidden:
            return problem(403, "forbidden", "Forbidden", str(exc))
        return problem(401, "unauthorized", "Unauthorized", str(exc), headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, QuotaExceeded):
        retry = {"Retry-After": str(exc.retry_after_s)}
        return problem(429, "quota-exceeded", "Quota exceeded", str(exc), headers=retry)
    for cls, status, slug, title in _SERVICE_ERRORS:
        if isinstance(exc, cls):
            if status >= 500:
                log.warning("%s %s: %s", request.method, request.url.path, exc)
            return problem(status, slug, title, str(exc))
    return await _unexpected_error(request, exc)


async def _redis_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: Redis error: %s", request.method, request.url.path, exc)
    return problem(503, "store-unavailable", "Store unavailable", "Redis did not answer; try again shortly")


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_describe(error) for error in exc.errors()]
    detail = "; ".join(f"{e['field']}: {e['msg']}" for e in errors) or "the request is invalid"
    return problem(422, "validation-error", "Invalid request", detail, errors=errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    phrase = http.HTTPStatus(exc.status_code).phrase
    detail = (
        exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else _http_detail(exc.status_code)
    )
    slug, title = _HTTP_NAMES.get(
        exc.status_code, (phrase.lower().replace(" ", "-").replace("'", ""), phrase)
    )
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope))
    return problem(exc.status_code, slug, title, detail, headers=headers)


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of this path answers (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    routes: list[BaseRoute] = getattr(app.state, bodies.ROUTES_STATE)
    for route in routes:
        if isinstance(route, Route) and route.methods and route.matches(scope)[0] is not Match.NONE:
            methods |= route.methods
    return sorted(methods)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal-error", "Internal error", "the controller failed unexpectedly; see its log")


def _describe(error: Any) -> dict[str, Any]:
    """A pydantic error without its `input` (which may be a whole train.py) and with a dotted field."""
    loc = [str(part) for part in error.get("loc", ())]
    msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    ctx = error.get("ctx") or {}
    if error.get("type") == "json_invalid" and "error" in ctx:
        msg = f"{msg} ({ctx['error']})"
    return {"field": ".".join(loc) or "request", "msg": msg, "type": str(error.get("type", ""))}


def _http_detail(status: int) -> str:
    return {
        404: "no such endpoint; see /openapi.json",
        405: "method not allowed on this endpoint; see /openapi.json",
        413: "the request body is too large",
    }.get(status, http.HTTPStatus(status).description)


# ---------------------------------------------------------------------------- request size


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int, fields: str) -> None:
        super().__init__(
            413, f"the request body is larger than {limit} bytes, more than any valid request; {fields}"
        )


class BodySizeLimit:
    """Refuse bodies over `max_bytes` with 413 before they are parsed: at once when Content-Length
    says so, else as soon as the streamed body passes the limit (the error is an HTTPException, so
    FastAPI's body reader lets it through to the problem handler). `max_bytes` is above the largest
    valid body, so a field over its own limit is refused by validation, which names it; the 413 says
    what the route's fields may hold (`hints`, by path)."""

    def __init__(self, app: ASGIApp, max_bytes: int, hints: dict[str, str]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.hints = hints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hint = self.hints.get(scope.get("path", ""), "this endpoint takes no body")
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            exc = _BodyTooLarge(self.max_bytes, hint)
            response = problem(413, "content-too-large", "Content too large", str(exc.detail))
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes, hint)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
