"""HTTP details third-party clients rely on: `Allow` on a 405, 415 for a body that is not JSON, where
an undecodable body goes wrong, Idempotency-Key reuse, size errors that name their field, the schema's
limits equal to the ones enforced, and request body examples that succeed.

The app runs with limits unlike the defaults, so a schema that ignored the settings would fail here.
Every refusal is checked against the store too: nothing was written."""

import json
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from pydantic import SecretStr

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from services.controller.app import request_body_limit
from services.controller.schemas import EXAMPLE_TRAIN_PY
from services.models import Best
from services.settings import KIB, Settings
from services.store import Store
from tests.support.api import ADMIN, BASE, BETTER, COMMIT, api_client, assert_problem, keys, submission

TITLE_CHARS = 50
DESCRIPTION_CHARS = 300
PATCH_BYTES = 4 * KIB
PAGE_SIZE_MAX = 7
Headers = dict[str, str]


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        admin_token=SecretStr(ADMIN),
        max_title_chars=TITLE_CHARS,
        max_description_chars=DESCRIPTION_CHARS,
        max_patch_bytes=PATCH_BYTES,
        page_size_max=PAGE_SIZE_MAX,
    )


@pytest.fixture
def client(settings: Settings, store: Store) -> Iterator[TestClient]:
    store.add_commit(COMMIT, BASE)
    store.set_best(Best(commit=COMMIT, val_bpb=1.5))
    with api_client(settings, store) as test_client:
        yield test_client


@pytest.fixture
def admin() -> Headers:
    return {"Authorization": f"Bearer {ADMIN}"}


# ---------------------------------------------------------------------------- 405


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/proposals", "GET, POST"),
        ("PATCH", "/v1/program", "GET, PUT"),
        ("PUT", "/v1/proposals/p_1/cancel", "POST"),
        ("POST", "/v1/best", "GET"),
    ],
)
def test_a_405_lists_every_method_of_the_path(
    client: TestClient, admin: Headers, method: str, path: str, allow: str
) -> None:
    answer = client.request(method, path, headers=admin)
    assert_problem(answer, 405, "method-not-allowed", "not allowed")
    assert answer.headers["allow"] == allow


def test_every_path_answers_options_with_its_documented_methods(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        concrete = path.replace("{proposal_id}", "p_1").replace("{version}", "1")
        answer = client.options(concrete)
        assert answer.status_code == 405, (path, answer.text)
        allowed = set(answer.headers["allow"].split(", "))
        assert allowed - {"HEAD"} == {m.upper() for m in operations}, (path, allowed)


# ---------------------------------------------------------------------------- bodies that are not JSON


@pytest.mark.parametrize(
    ("content_type", "got"),
    [
        (None, "no Content-Type"),
        ("text/plain", "Content-Type 'text/plain'"),
        ("application/x-www-form-urlencoded", "'application/x-www-form-urlencoded'"),
        ("application/json; charset=latin-1", "'application/json; charset=latin-1'"),
    ],
)
@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/proposals"), ("PUT", "/v1/program")])
def test_a_body_not_sent_as_json_is_415(
    client: TestClient,
    admin: Headers,
    redis_client: "redis.Redis[bytes]",
    content_type: str | None,
    got: str,
    method: str,
    path: str,
) -> None:
    before = keys(redis_client)
    headers = admin if content_type is None else {**admin, "content-type": content_type}
    answer = client.request(method, path, content=json.dumps(submission()).encode(), headers=headers)
    body = assert_problem(answer, 415, "unsupported-media-type", "Content-Type: application/json")
    assert got in body["detail"]
    assert keys(redis_client) == before


def test_json_with_a_utf8_charset_or_a_json_suffix_is_accepted(client: TestClient, admin: Headers) -> None:
    for content_type in ("application/json; charset=UTF-8", "application/merge-patch+json"):
        body = json.dumps(submission(title=content_type)).encode()
        answer = client.post("/v1/proposals", content=body, headers={**admin, "content-type": content_type})
        assert answer.status_code in (200, 201), answer.text


@pytest.mark.parametrize(
    ("content", "status", "slug", "detail"),
    [
        (b'{"title": "caf\xe9"}', 400, "bad-request", "not valid UTF-8: byte 0xE9 at offset 14 (0-based)"),
        (b'\xef\xbb\xbf{"title": "t"}', 422, "validation-error", "Unexpected UTF-8 BOM"),
        (
            b'{\n  "title": "t",\n  "agent": "a"\n  "train_py": "x = 1"\n}',
            422,
            "validation-error",
            "body: JSON decode error: Expecting ',' delimiter at line 4, column 3",
        ),
        (b'{"title": "t",}', 422, "validation-error", "at line 1, column 15"),
    ],
)
def test_undecodable_bodies_say_where(
    client: TestClient,
    admin: Headers,
    redis_client: "redis.Redis[bytes]",
    content: bytes,
    status: int,
    slug: str,
    detail: str,
) -> None:
    before = keys(redis_client)
    answer = client.post(
        "/v1/proposals", content=content, headers={**admin, "content-type": "application/json"}
    )
    assert_problem(answer, status, slug, detail)
    assert keys(redis_client) == before


def test_json_types_are_strict(client: TestClient, admin: Headers) -> None:
    answer = client.post("/v1/runs", json={"count": "2"}, headers=admin)
    assert_problem(answer, 422, "validation-error", "body.count: Input should be a valid integer")
    answer = client.post("/v1/runs", json={"seeds": [False]}, headers=admin)
    assert_problem(answer, 422, "validation-error", "body.seeds.0: Input should be a valid integer")


# ---------------------------------------------------------------------------- Idempotency-Key


def test_an_idempotency_key_is_bound_to_its_body(
    client: TestClient, admin: Headers, redis_client: "redis.Redis[bytes]"
) -> None:
    headers = {**admin, "Idempotency-Key": "retry-1", "content-type": "application/json"}
    first = client.post("/v1/proposals", content=json.dumps(submission()), headers=headers)
    assert first.status_code == 201, first.text
    # The same fields in another order and layout are the same request.
    same = json.dumps(dict(reversed(list(submission().items()))), indent=2)
    replay = client.post("/v1/proposals", content=same, headers=headers)
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    before = keys(redis_client)
    other = client.post("/v1/proposals", json=submission(title="another idea"), headers=headers)
    body = assert_problem(other, 422, "idempotency-key-reused", "Idempotency-Key 'retry-1' was used for")
    assert first.json()["id"] in body["detail"] and "use a new key" in body["detail"]
    assert keys(redis_client) == before


# ---------------------------------------------------------------------------- size errors name their field


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        (
            {"title": "x" * (TITLE_CHARS + 1)},
            f"body.title: String should have at most {TITLE_CHARS} characters",
        ),
        (
            {"description": "x" * (DESCRIPTION_CHARS * 100)},
            f"body.description: String should have at most {DESCRIPTION_CHARS} characters",
        ),
        (
            {"train_py": BETTER + "#" * PATCH_BYTES},
            f"body.train_py: String should have at most {PATCH_BYTES} characters",
        ),
        ({"train_py": BETTER + "#" + "é" * (PATCH_BYTES // 2)}, f"the limit is {PATCH_BYTES} bytes"),
        (
            {"diff": "x" * (PATCH_BYTES + 1)},
            f"body.diff: String should have at most {PATCH_BYTES} characters",
        ),
    ],
)
def test_a_field_over_its_limit_is_named_with_the_limit(
    client: TestClient, admin: Headers, fields: dict[str, Any], detail: str
) -> None:
    answer = client.post("/v1/proposals", json=submission(**fields), headers=admin)
    assert answer.status_code == 422, answer.text
    assert detail in answer.json()["detail"]
    assert "train.py or diff" not in answer.json()["detail"]


def test_a_body_over_the_request_limit_names_each_fields_limit(
    client: TestClient, admin: Headers, settings: Settings
) -> None:
    too_big = b"x" * (request_body_limit(settings) + 1)
    answer = client.post(
        "/v1/proposals", content=too_big, headers={**admin, "content-type": "application/json"}
    )
    body = assert_problem(
        answer, 413, "content-too-large", f"larger than {request_body_limit(settings)} bytes"
    )
    for part in (
        f"title at most {TITLE_CHARS} characters",
        f"description at most {DESCRIPTION_CHARS} characters",
        f"train_py at most {PATCH_BYTES} bytes of UTF-8",
        f"diff at most {PATCH_BYTES} bytes of UTF-8",
    ):
        assert part in body["detail"]
    runs = client.post("/v1/runs", content=too_big, headers={**admin, "content-type": "application/json"})
    assert "train_py" not in runs.json()["detail"] and "title at most" in runs.json()["detail"]


# ---------------------------------------------------------------------------- errors name the client's field


def test_runs_of_an_unknown_commit_name_the_commit_field(client: TestClient, admin: Headers) -> None:
    answer = client.post("/v1/runs", json={"commit": "deadbeef"}, headers=admin)
    body = assert_problem(answer, 422, "unknown-base", "commit 'deadbeef' is unknown")
    assert "base_commit" not in body["detail"] and "omit commit" in body["detail"]
    answer = client.post("/v1/proposals", json=submission(base_commit="deadbeef"), headers=admin)
    assert_problem(answer, 422, "unknown-base", "base_commit 'deadbeef' is unknown")


# ---------------------------------------------------------------------------- the schema's limits


def _python_of(length: int) -> str:
    """A train.py of exactly `length` characters that compiles and differs from the base."""
    return EXAMPLE_TRAIN_PY + "#" * (length - len(EXAMPLE_TRAIN_PY) - 1) + "\n"


# How to make a valid value of a given length for fields whose content has rules of its own.
FILLERS: dict[str, Callable[[int], str]] = {"train_py": _python_of, "agent": lambda n: "a" * n}
LIMIT_KEYWORDS = ("maxLength", "minLength", "maximum", "minimum", "maxItems", "minItems")


def _branches(field: dict[str, Any]) -> list[dict[str, Any]]:
    return [branch for branch in [field, *field.get("anyOf", [])] if branch.get("type") != "null"]


def _value(field: dict[str, Any], name: str, keyword: str, bound: int) -> Any:
    kind = next(b["type"] for b in _branches(field) if "type" in b)
    if kind == "string":
        return FILLERS.get(name, lambda n: "x" * n)(bound)
    if kind == "array":
        return list(range(bound))
    return bound


def _request_bodies(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                yield method, path, schema["components"]["schemas"][ref.rsplit("/", 1)[1]]


def test_every_schema_limit_is_the_enforced_limit(client: TestClient, admin: Headers) -> None:
    schema = client.get("/openapi.json").json()
    checked = []
    for method, path, body_schema in _request_bodies(schema):
        example = body_schema["examples"][0]
        for name, field in body_schema["properties"].items():
            for branch in _branches(field):
                for keyword in set(LIMIT_KEYWORDS) & set(branch):
                    bound = branch[keyword]
                    step = 1 if keyword.startswith("max") else -1
                    at = client.request(
                        method,
                        path,
                        json={**example, name: _value(field, name, keyword, bound)},
                        headers=admin,
                    )
                    assert f"body.{name}:" not in at.text, (path, name, keyword, bound, at.text)
                    assert "the limit is" not in at.text, (path, name, keyword, bound, at.text)
                    over_value = _value(field, name, keyword, bound + step)
                    over = client.request(method, path, json={**example, name: over_value}, headers=admin)
                    assert over.status_code == 422, (path, name, keyword, over.text)
                    assert f"body.{name}" in over.json()["detail"] and str(bound) in over.json()["detail"]
                    checked.append((path, name, keyword, bound))
    limited = {(path, name, keyword) for path, name, keyword, _ in checked}
    assert ("/v1/proposals", "title", "maxLength") in limited
    assert ("/v1/proposals", "train_py", "maxLength") in limited
    assert ("/v1/runs", "count", "maximum") in limited
    assert ("/v1/program", "text", "maxLength") in limited
    bounds = {(path, name, keyword): bound for path, name, keyword, bound in checked}
    assert bounds[("/v1/proposals", "title", "maxLength")] == TITLE_CHARS
    assert bounds[("/v1/proposals", "description", "maxLength")] == DESCRIPTION_CHARS
    assert bounds[("/v1/proposals", "diff", "maxLength")] == PATCH_BYTES
    assert bounds[("/v1/runs", "title", "maxLength")] == TITLE_CHARS


def test_the_page_limit_in_the_schema_is_the_enforced_one(client: TestClient, admin: Headers) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("/v1/proposals", "/v1/leaderboard"):
        [limit] = [p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == "limit"]
        [maximum] = [b["maximum"] for b in limit["schema"]["anyOf"] if "maximum" in b]
        assert maximum == PAGE_SIZE_MAX
        assert client.get(path, params={"limit": maximum}, headers=admin).status_code == 200
        assert_problem(
            client.get(path, params={"limit": maximum + 1}, headers=admin),
            422,
            "invalid-request",
            str(maximum),
        )


# ---------------------------------------------------------------------------- examples


def test_every_request_body_example_succeeds(client: TestClient, admin: Headers) -> None:
    schema = client.get("/openapi.json").json()
    posted = []
    for method, path, body_schema in _request_bodies(schema):
        assert body_schema.get("examples"), f"{method} {path} has no example"
        for example in body_schema["examples"]:
            answer = client.request(method, path, json=example, headers=admin)
            assert answer.status_code in (200, 201), (method, path, answer.text)
            again = client.request(method, path, json=example, headers=admin)
            assert again.status_code in (200, 201), (
                method,
                path,
                again.text,
            )  # a duplicate is its documented 200
            posted.append(path)
    assert sorted(posted) == ["/v1/program", "/v1/proposals", "/v1/runs", "/v1/tokens"]
