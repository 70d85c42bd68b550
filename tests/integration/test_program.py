"""program.md as a versioned object over HTTP (TestClient, real Redis): seeding, history with diffs,
admin-only updates with validation (problem+json, nothing stored), submits naming a version, and the
per-version statistics."""

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from services.controller.app import create_app
from services.controller.logic import PROGRAM_MAX_BYTES
from services.models import Decision
from services.settings import Settings
from services.states import State
from services.store import Store
from tests.support.api import api_client, assert_problem, keys
from tests.support.live_server import ADMIN, agent_token, seed, settings_for, stored_proposal, with_lr
from tests.support.walk import walk

V1 = "# Research program\n\nLower val_bpb.\nOne idea per proposal.\n"
V2 = "# Research program\n\nLower val_bpb.\nTwo ideas at most per proposal.\n"

Headers = dict[str, str]


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return settings_for(redis_url)


@pytest.fixture
def program_file(tmp_path: Path) -> Path:
    path = tmp_path / "program.md"
    path.write_text(V1, encoding="utf-8")
    return path


@pytest.fixture
def client(settings: Settings, store: Store, program_file: Path) -> Iterator[TestClient]:
    with api_client(settings, seed(store), program_file) as test_client:
        yield test_client


@pytest.fixture
def admin() -> Headers:
    return {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def agent(client: TestClient, store: Store) -> Headers:
    return {"Authorization": f"Bearer {agent_token(store)}"}


# ---------------------------------------------------------------------------- reading


def test_version_1_is_seeded_from_the_file(client: TestClient, agent: Headers) -> None:
    answer = client.get("/v1/program", headers=agent)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["version"], body["text"], body["author"]) == (1, V1, "repo")
    detail = client.get("/v1/program/versions/1", headers=agent).json()
    assert detail["diff"].startswith("--- /dev/null\n+++ program.md@1\n")
    assert "+One idea per proposal.\n" in detail["diff"]


def test_seed_happens_once(settings: Settings, store: Store, program_file: Path, tmp_path: Path) -> None:
    with api_client(settings, seed(store), program_file):
        pass
    other = tmp_path / "other.md"
    other.write_text("something else\n", encoding="utf-8")
    with api_client(settings, store, other) as client:
        body = client.get("/v1/program", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert (body["version"], body["text"]) == (1, V1)
    assert len(store.program_versions()) == 1


def test_no_file_no_program_until_an_admin_sets_one(
    settings: Settings, store: Store, tmp_path: Path, admin: Headers, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING),
        TestClient(create_app(settings, store=seed(store), program_path=tmp_path / "missing.md")) as client,
    ):
        assert_problem(client.get("/v1/program", headers=admin), 404, "not-found", "PUT /v1/program")
        answer = client.put("/v1/program", json={"text": V1, "message": "first"}, headers=admin)
        assert answer.status_code == 201, answer.text
        assert answer.json()["version"] == 1
    assert "program.md not seeded" in caplog.text


# ---------------------------------------------------------------------------- updating


def test_admin_sets_a_new_version_with_history_and_diff(
    client: TestClient, admin: Headers, agent: Headers
) -> None:
    answer = client.put("/v1/program", json={"text": V2, "message": "allow two ideas"}, headers=admin)
    assert answer.status_code == 201, answer.text
    assert answer.headers["location"] == "/v1/program/versions/2"
    assert (answer.json()["version"], answer.json()["author"]) == (2, "admin")
    assert client.get("/v1/program", headers=agent).json()["text"] == V2
    versions = client.get("/v1/program/versions", headers=agent).json()
    assert [(v["version"], v["message"]) for v in versions] == [
        (1, "seeded from program.md"),
        (2, "allow two ideas"),
    ]
    assert versions[1]["bytes"] == len(V2.encode())
    assert "text" not in versions[0]
    diff = client.get("/v1/program/versions/2", headers=agent).json()["diff"]
    assert "--- program.md@1\n+++ program.md@2\n" in diff
    assert "-One idea per proposal.\n+Two ideas at most per proposal.\n" in diff


def test_identical_text_makes_no_new_version(client: TestClient, admin: Headers, store: Store) -> None:
    answer = client.put("/v1/program", json={"text": V1, "message": "again"}, headers=admin)
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == 1
    assert len(store.program_versions()) == 1


def test_agents_cannot_set_the_program(client: TestClient, agent: Headers, store: Store) -> None:
    answer = client.put("/v1/program", json={"text": V2, "message": "mine"}, headers=agent)
    assert_problem(answer, 403, "forbidden", "admin")
    assert len(store.program_versions()) == 1


@pytest.mark.parametrize(
    ("body", "status", "slug", "detail"),
    [
        ({"text": "  \n ", "message": "m"}, 422, "invalid-program", "text is empty"),
        (
            {"text": "x" * (PROGRAM_MAX_BYTES + 1), "message": "m"},
            422,
            "validation-error",
            f"body.text: String should have at most {PROGRAM_MAX_BYTES} characters",
        ),
        (  # within the schema's character count, over the byte limit: three bytes of UTF-8 per "€"
            {"text": "€" * (PROGRAM_MAX_BYTES // 2), "message": "m"},
            422,
            "invalid-program",
            f"the limit is {PROGRAM_MAX_BYTES} bytes",
        ),
        ({"text": "a\0b", "message": "m"}, 422, "invalid-program", "U+0000 on line 1"),
        ({"text": "ok", "message": "two\nlines"}, 422, "invalid-text", "message holds U+000A (LINE FEED"),
        (
            {"text": "ok", "message": "a\0b"},
            422,
            "invalid-text",
            "message holds U+0000 (NULL, a control character) at character 2",
        ),
        (
            {"text": "ok", "message": "a\u202eb"},
            422,
            "invalid-text",
            "message holds U+202E (RIGHT-TO-LEFT OVERRIDE",
        ),
        ({"text": "ok", "message": "a\x1b[2Jb"}, 422, "invalid-text", "message holds U+001B (ESCAPE"),
        ({"text": "ok", "message": "   "}, 422, "invalid-program", "one non-empty line"),
        ({"text": "ok"}, 422, "validation-error", "body.message: Field required"),
        ({"text": "ok", "message": "m", "extra": 1}, 422, "validation-error", "body.extra"),
    ],
)
def test_bad_updates_are_refused_and_nothing_is_stored(
    client: TestClient,
    admin: Headers,
    redis_client: "redis.Redis[bytes]",
    body: dict[str, Any],
    status: int,
    slug: str,
    detail: str,
) -> None:
    before = keys(redis_client)
    assert_problem(client.put("/v1/program", json=body, headers=admin), status, slug, detail)
    assert keys(redis_client) == before
    assert redis_client.llen("ar:program:versions") == 1


@pytest.mark.parametrize(
    ("content", "status", "slug", "detail"),
    [
        (
            b'{"text": "\\ud800", "message": "m"}',
            422,
            "validation-error",
            "body.text: holds a lone surrogate (U+D800) at line 1, column 1",
        ),
        (
            b'{"text": "\xff\xfe", "message": "m"}',
            400,
            "bad-request",
            "the body is not valid UTF-8: byte 0xFF at offset 10",
        ),
    ],
)
def test_text_must_be_utf8(
    client: TestClient,
    admin: Headers,
    redis_client: "redis.Redis[bytes]",
    content: bytes,
    status: int,
    slug: str,
    detail: str,
) -> None:
    answer = client.put("/v1/program", content=content, headers={**admin, "content-type": "application/json"})
    assert_problem(answer, status, slug, detail)
    assert redis_client.llen("ar:program:versions") == 1


def test_unknown_versions(client: TestClient, agent: Headers) -> None:
    assert_problem(
        client.get("/v1/program/versions/9", headers=agent), 404, "not-found", "no program.md version 9"
    )
    assert_problem(
        client.get("/v1/program/versions/0", headers=agent), 422, "validation-error", "path.version"
    )
    assert_problem(client.get("/v1/program"), 401, "unauthorized", "missing bearer token")


# ---------------------------------------------------------------------------- submits and statistics


def test_submit_must_name_an_existing_version(
    client: TestClient, agent: Headers, admin: Headers, redis_client: "redis.Redis[bytes]"
) -> None:
    body = {"title": "lr", "agent": "a", "train_py": with_lr("0.003"), "program_version": 2}
    before = keys(redis_client)
    answer = client.post("/v1/proposals", json=body, headers=agent)
    assert_problem(
        answer, 422, "unknown-program-version", "program_version 2 does not exist (the current one is 1)"
    )
    assert keys(redis_client) == before
    client.put("/v1/program", json={"text": V2, "message": "v2"}, headers=admin)
    answer = client.post("/v1/proposals", json=body, headers=agent)
    assert answer.status_code == 201, answer.text
    assert answer.json()["program_version"] == 2


def decide(store: Store, proposal_id: str, state: State, delta: float) -> None:
    decision = Decision(
        accepted=state == State.MERGED,
        rule="test",
        candidate_bpb=1.5 + delta,
        best_bpb=1.5,
        best_commit="0" * 40,
        delta_bpb=delta,
        reason="numbers",
    )
    walk(store, proposal_id, State.RUNNING, "started")
    walk(store, proposal_id, State.EVALUATING, "trained")
    walk(store, proposal_id, state, "decided", decision=decision)


def test_stats_per_version(client: TestClient, admin: Headers, agent: Headers, store: Store) -> None:
    client.put("/v1/program", json={"text": V2, "message": "v2"}, headers=admin)
    decide(store, stored_proposal(store, "0.01", program_version=1).id, State.MERGED, -0.02)
    decide(store, stored_proposal(store, "0.02", program_version=1).id, State.REJECTED, 0.01)
    walk(store, stored_proposal(store, "0.03", program_version=1).id, State.CRASHED, "boom")
    stored_proposal(store, "0.04", program_version=1)  # still queued
    decide(store, stored_proposal(store, "0.05", program_version=2).id, State.REJECTED, 0.004)
    decide(store, stored_proposal(store, "0.06").id, State.MERGED, -0.001)  # named no version
    answer = client.get("/v1/program/stats", headers=agent)
    assert answer.status_code == 200, answer.text
    rows = {row["version"]: row for row in answer.json()}
    assert list(rows) == [1, 2, None]
    one = rows[1]
    assert (one["proposals"], one["scored"], one["merged"], one["failed"]) == (4, 2, 1, 1)
    assert one["win_rate"] == pytest.approx(0.5)
    assert one["mean_delta_bpb"] == pytest.approx(-0.005)
    assert (rows[2]["scored"], rows[2]["merged"], rows[2]["win_rate"]) == (1, 0, 0.0)
    assert rows[None]["mean_delta_bpb"] == pytest.approx(-0.001)
