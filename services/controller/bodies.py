"""JSON request bodies: read, decode and validate with the app's request models, in this one place.

A route takes its body as a dependency, `body: Annotated[SubmitProposal, json_body(SubmitProposal)]`,
after its auth dependency, so an unauthenticated caller's body is never parsed. The steps, each with
its own answer:

    a body with a Content-Type other than application/json (or none)   415, naming application/json
    bytes that are not UTF-8                                           400, naming the byte offset
    text that is not JSON                                              422, naming line and column
    JSON that the model refuses                                        422, naming each field

An empty body is a missing body (422 `body: Field required`). The model is the one `create_app` built
for its settings (schemas.request_models), and `document` puts that same model into /openapi.json,
so the schema's limits are the ones enforced.
"""

import json
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute

from services.controller.schemas import Request as RequestModel

JSON = "application/json"
MODELS_STATE = "request_models"  # app.state attribute: {base model: the model this app validates with}
ROUTES_STATE = "api_routes"  # app.state attribute: every route, the included routers' ones too


class UnsupportedMediaType(HTTPException):
    def __init__(self, content_type: str | None) -> None:
        got = "no Content-Type" if not content_type else f"Content-Type {content_type!r}"
        super().__init__(415, f"the body must be JSON sent as Content-Type: {JSON} (got {got})")


class NotUtf8(HTTPException):
    def __init__(self, exc: UnicodeDecodeError) -> None:
        byte = exc.object[exc.start]
        super().__init__(
            400,
            f"the body is not valid UTF-8: byte 0x{byte:02X} at offset {exc.start} (0-based) is "
            f"{exc.reason.removeprefix('invalid ')}; send JSON encoded as UTF-8",
        )


class TooDeep(HTTPException):
    def __init__(self) -> None:
        super().__init__(400, "the body's JSON is nested too deeply to parse; send a flatter document")


class JsonBody:
    """A FastAPI dependency that yields the request's body as an instance of `model` (or of the
    subclass this app built with its limits)."""

    def __init__(self, model: type[RequestModel]) -> None:
        self.model = model

    async def __call__(self, request: Request) -> Any:
        text = await read_json(request)
        if text is None:
            raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
        models: dict[type[RequestModel], type[RequestModel]] = getattr(request.app.state, MODELS_STATE)
        try:  # strict: JSON's types as the schema states them (no "1" for 1, no false for 0)
            return models[self.model].model_validate_json(text, strict=True)
        except ValidationError as exc:
            errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
            raise RequestValidationError(errors) from exc


def json_body(model: type[RequestModel]) -> Any:
    """`Annotated[Model, json_body(Model)]`: the dependency marker for a route's JSON body."""
    return Depends(JsonBody(model))


async def read_json(request: Request) -> str | None:
    """The body as checked JSON text; None when it is empty (so the model reports it as missing)."""
    raw = await request.body()
    if not raw:
        return None
    content_type = request.headers.get("content-type")
    if not is_json(content_type):
        raise UnsupportedMediaType(content_type)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotUtf8(exc) from exc
    try:
        data = json.loads(text)
    except RecursionError as exc:  # brackets nested past the parser's depth
        raise TooDeep() from exc
    except json.JSONDecodeError as exc:
        error = {
            "type": "json_invalid",
            "loc": ("body",),
            "msg": f"JSON decode error: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            "input": {},
        }
        raise RequestValidationError([error]) from exc
    surrogate = _lone_surrogate(data, ("body",))
    if surrogate is not None:
        raise RequestValidationError([surrogate])
    return text


def _lone_surrogate(value: Any, loc: tuple[str | int, ...]) -> dict[str, Any] | None:
    """The first string (key or value) holding a lone surrogate (JSON lets `\\ud800` through; no text
    field stores one), as a validation error that names the field and the position."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            line = value.count("\n", 0, exc.start) + 1
            column = exc.start - (value.rfind("\n", 0, exc.start) + 1) + 1
            msg = (
                f"holds a lone surrogate (U+{ord(value[exc.start]):04X}) at line {line}, column {column}; "
                "send valid UTF-8 text"
            )
            return {"type": "string_unicode", "loc": loc, "msg": msg, "input": {}}
        return None
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = [(key, key) for key in value] + list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    for key, item in items:
        found = _lone_surrogate(item, (*loc, key if isinstance(key, (str, int)) else str(key)))
        if found is not None:
            return found
    return None


def is_json(content_type: str | None) -> bool:
    """application/json or application/<anything>+json, with no charset but UTF-8 (RFC 8259)."""
    if not content_type:
        return False
    media_type, *params = (part.strip().lower() for part in content_type.split(";"))
    kind, _, subtype = media_type.partition("/")
    if kind != "application" or not (subtype == "json" or subtype.endswith("+json")):
        return False
    charsets = [p.split("=", 1)[1].strip('" ') for p in params if p.startswith("charset=")]
    return all(charset in ("utf-8", "utf8") for charset in charsets)


# ---------------------------------------------------------------------------- the OpenAPI schema


def routes_with_bodies(app: FastAPI) -> Iterator[tuple[APIRoute, type[RequestModel]]]:
    """(route, the model this app validates its body with) for each route that takes a JSON body."""
    models: dict[type[RequestModel], type[RequestModel]] = getattr(app.state, MODELS_STATE)
    routes: Sequence[BaseRoute] = getattr(app.state, ROUTES_STATE)
    for route in routes:
        if isinstance(route, APIRoute):
            for dependency in route.dependant.dependencies:
                if isinstance(dependency.call, JsonBody):
                    yield route, models[dependency.call.model]


def document(app: FastAPI, schema: dict[str, Any]) -> None:
    """Add each JSON body to its operation, with the model (and examples) this app validates with."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for route, model in routes_with_bodies(app):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in model_schema.pop("$defs", {}).items():
            components.setdefault(name, definition)
        name = model_schema["title"]
        components[name] = model_schema
        for method in route.methods or ():
            operation = schema["paths"][route.path_format][method.lower()]
            operation["requestBody"] = {
                "required": True,
                "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{name}"}}},
            }


def size_hints(app: FastAPI) -> dict[str, str]:
    """For each path that takes a JSON body: what its fields may hold, for the 413 answer."""
    return {route.path_format: _size_hint(model) for route, model in routes_with_bodies(app)}


def string_limits(model: type[RequestModel]) -> dict[str, int]:
    """Each string property's maxLength in the model's schema."""
    limits = {}
    for name, field in model.model_json_schema()["properties"].items():
        if (max_length := string_limit(field, "maxLength")) is not None:
            limits[name] = int(max_length)
    return limits


def _size_hint(model: type[RequestModel]) -> str:
    limits = []
    for name, field in model.model_json_schema()["properties"].items():
        if "x-max-bytes" in field:
            limits.append(f"{name} at most {field['x-max-bytes']} bytes of UTF-8")
        elif (max_length := string_limit(field, "maxLength")) is not None:
            limits.append(f"{name} at most {max_length} characters")
    return "send " + ", ".join(limits) if limits else "send a smaller body"


def string_limit(field: dict[str, Any], keyword: str) -> Any:
    """`keyword` of a property's schema, or of its non-null branch when it may be null."""
    for branch in [field, *field.get("anyOf", [])]:
        if keyword in branch:
            return branch[keyword]
    return None
