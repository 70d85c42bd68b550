"""The controller over HTTP (FastAPI's TestClient) against a real Redis and real RQ queues.

Every rejected request is checked twice: the answer (status, problem+json, a detail that says what to
fix) and the store (no Redis key was written, nothing was enqueued)."""

import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from redis.backoff import NoBackoff
from redis.retry import Retry

with warnings.catch_warnings():
    # Starlette >= 1.x warns that its TestClient prefers `httpx2`; the plain httpx still works.
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from services.controller.app import create_app, request_body_limit
from services.controller.auth import Role, create_token, hash_token
from services.models import Best, Decision, RunResult
from services.patches import canonical_diff
from services.queue import RUN_JOB, runs_queue
from services.settings import KIB, Settings
from services.states import State
from services.store import Store
from tests.support.api import ADMIN, BASE, BETTER, COMMIT, api_client, assert_problem, keys, submission
from tests.support.walk import walk

OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
MAX_PATCH = 16 * KIB

Client = TestClient
Headers = dict[str, str]


def with_lr(value: str) -> str:
    return BASE.replace("LEARNING_RATE = 0.001", f"LEARNING_RATE = {value}")


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url, admin_token=SecretStr(ADMIN), max_patch_bytes=MAX_PATCH, page_size_max=10
    )


@pytest.fixture
def seeded(store: Store) -> Store:
    store.add_commit(COMMIT, BASE)
    store.set_best(Best(commit=COMMIT, val_bpb=1.5))
    return store


@pytest.fixture
def client(settings: Settings, seeded: Store) -> Iterator[TestClient]:
    with api_client(settings, seeded) as test_client:
        yield test_client


@pytest.fixture
def admin() -> Headers:
    return {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def agent(client: TestClient, admin: Headers) -> Headers:
    answer = client.post("/v1/tokens", json={"name": "agent-1", "role": "agent"}, headers=admin)
    assert answer.status_code == 201, answer.text
    return {"Authorization": f"Bearer {answer.json()['token']}"}


def jobs(conn: "redis.Redis[bytes]") -> list[tuple[str, tuple[Any, ...]]]:
    return [(job.func_name, tuple(job.args)) for job in runs_queue(conn).jobs]


# ---------------------------------------------------------------------------- submit: accepted


def test_descriptions_keep_lines_and_tabs_and_titles_any_printable_text(
    client: TestClient, agent: Headers
) -> None:
    fields = {"title": "Größere Lernrate: ×2 ✓", "description": "Why:\n\t- faster\n\t- 😀 stable\n"}
    answer = client.post("/v1/proposals", json=submission(**fields), headers=agent)
    assert answer.status_code == 201, answer.text
    assert {k: answer.json()[k] for k in fields} == fields


def test_full_file_is_stored_and_enqueued(
    client: TestClient, agent: Headers, store: Store, redis_client: "redis.Redis[bytes]"
) -> None:
    answer = client.post("/v1/proposals", json=submission(program_version=1), headers=agent)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert answer.headers["location"] == f"/v1/proposals/{body['id']}"
    assert body["state"] == "queued"
    assert body["base_commit"] == COMMIT
    assert body["seeds"] == [42]
    assert body["program_version"] == 1
    assert body["diff"] == canonical_diff(BASE, BETTER)
    assert [e["state"] for e in body["events"]] == ["queued"]
    stored = store.get(body["id"])
    assert stored.train_py == BETTER and stored.base_train_py == BASE
    assert jobs(redis_client) == [(RUN_JOB, (body["id"],))]


def test_diff_against_a_prefix_of_the_base_is_accepted(
    client: TestClient, agent: Headers, store: Store, redis_client: "redis.Redis[bytes]"
) -> None:
    diff = canonical_diff(BASE, BETTER)
    answer = client.post(
        "/v1/proposals", json=submission(diff=diff, base_commit=COMMIT[:7].upper()), headers=agent
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["base_commit"] == COMMIT
    assert store.get(answer.json()["id"]).train_py == BETTER
    assert len(jobs(redis_client)) == 1


def test_explicit_older_base_is_used(
    client: TestClient, agent: Headers, store: Store, redis_client: "redis.Redis[bytes]"
) -> None:
    store.add_commit(OTHER_COMMIT, BETTER)
    store.set_best(Best(commit=OTHER_COMMIT, val_bpb=1.4))
    answer = client.post(
        "/v1/proposals", json=submission(train_py=with_lr("0.003"), base_commit=COMMIT), headers=agent
    )
    assert answer.status_code == 201
    assert store.get(answer.json()["id"]).base_train_py == BASE


# ---------------------------------------------------------------------------- submit: rejected

OTHER_FILE_DIFF = "--- a/trainer/prepare.py\n+++ b/trainer/prepare.py\n@@ -1 +1 @@\n-import os\n+import sys\n"
TRAVERSAL_DIFF = "--- a/../etc/passwd\n+++ b/../etc/passwd\n@@ -1 +1 @@\n-import os\n+import sys\n"
STALE_DIFF = (
    "--- a/trainer/train.py\n+++ b/trainer/train.py\n"
    "@@ -3,1 +3,1 @@\n-LEARNING_RATE = 0.01\n+LEARNING_RATE = 1\n"
)

REJECTED = [
    # (request body fields, status, problem slug, part of the detail)
    ({"diff": OTHER_FILE_DIFF}, 422, "invalid-patch", "only trainer/train.py may change"),
    ({"diff": TRAVERSAL_DIFF}, 422, "invalid-patch", "is not allowed"),
    ({"diff": STALE_DIFF}, 422, "invalid-patch", "hunk 1 (@@ -3,1 +3,1 @@) does not apply: line 3"),
    ({"diff": "please apply my change"}, 422, "invalid-patch", "send a unified diff"),
    ({"train_py": BASE + "def broken(:\n"}, 422, "invalid-python", "line 18"),
    ({"train_py": BASE.replace("\n", "  \r\n")}, 422, "invalid-patch", "changes nothing"),
    ({"train_py": BETTER + "x = '\0'\n"}, 422, "invalid-patch", "NUL byte on line 18"),
    (
        {"train_py": BETTER + "x = '\ud800'\n"},
        422,
        "validation-error",
        "body.train_py: holds a lone surrogate (U+D800) at line 18, column 6",
    ),
    (
        {"train_py": BETTER + "#" * MAX_PATCH},
        422,
        "validation-error",
        f"body.train_py: String should have at most {MAX_PATCH} characters",
    ),
    (  # within the schema's character count, over the byte limit: two bytes of UTF-8 per "é"
        {"train_py": BETTER + "#" + "é" * (MAX_PATCH // 2)},
        422,
        "invalid-patch",
        f"bytes of UTF-8; the limit is {MAX_PATCH} bytes",
    ),
    ({"train_py": BETTER, "diff": canonical_diff(BASE, BETTER)}, 422, "validation-error", "exactly one"),
    ({"train_py": ...}, 422, "validation-error", "exactly one"),
    ({"base_commit": "deadbeef"}, 422, "unknown-base", "base_commit 'deadbeef' is unknown"),
    ({"base_commit": "abc"}, 422, "validation-error", "body.base_commit"),
    ({"base_commit": "not-hex-at-all"}, 422, "validation-error", "body.base_commit"),
    ({"title": ...}, 422, "validation-error", "body.title: Field required"),
    ({"title": ""}, 422, "validation-error", "body.title"),
    ({"title": "x" * 201}, 422, "validation-error", "body.title: String should have at most 200 characters"),
    (
        {"title": "two\nlines"},
        422,
        "invalid-text",
        "title holds U+000A (LINE FEED, a control character) at character 4; it must be one line",
    ),
    (
        {"title": "fix\0it"},
        422,
        "invalid-text",
        "title holds U+0000 (NULL, a control character) at character 4",
    ),
    ({"title": "a\u2028b"}, 422, "invalid-text", "U+2028 (LINE SEPARATOR, a line separator) at character 2"),
    ({"title": "a\u2029b"}, 422, "invalid-text", "U+2029 (PARAGRAPH SEPARATOR, a paragraph separator)"),
    ({"title": "a\x85b"}, 422, "invalid-text", "U+0085 (NEXT LINE, a control character) at character 2"),
    ({"title": "a\x0bb"}, 422, "invalid-text", "U+000B (LINE TABULATION, a control character)"),
    ({"title": "a\tb"}, 422, "invalid-text", "U+0009 (CHARACTER TABULATION, a control character)"),
    ({"title": "\x1b[31mred"}, 422, "invalid-text", "U+001B (ESCAPE, a control character) at character 1"),
    ({"title": "x\x9bred"}, 422, "invalid-text", "U+009B (a control character) at character 2"),
    (
        {"title": "safe \u202egnp.exe"},
        422,
        "invalid-text",
        "U+202E (RIGHT-TO-LEFT OVERRIDE, an invisible format",
    ),
    ({"title": "a\u2066b\u2069"}, 422, "invalid-text", "U+2066 (LEFT-TO-RIGHT ISOLATE, an invisible format"),
    (
        {"title": "a\u200fb"},
        422,
        "invalid-text",
        "U+200F (RIGHT-TO-LEFT MARK, an invisible format character)",
    ),
    (
        {"title": "a\u061cb"},
        422,
        "invalid-text",
        "U+061C (ARABIC LETTER MARK, an invisible format character)",
    ),
    (
        {"description": "ok\n\tindented\nbad \0"},
        422,
        "invalid-text",
        "description holds U+0000 (NULL, a control character) at line 3, column 5",
    ),
    (
        {"description": "a\r\nb"},
        422,
        "invalid-text",
        "U+000D (CARRIAGE RETURN, a control character) at line 1, column 2; end lines with \\n only",
    ),
    ({"description": "x\n\u202ey"}, 422, "invalid-text", "description holds U+202E (RIGHT-TO-LEFT OVERRIDE"),
    (
        {"description": "x\u2028y"},
        422,
        "invalid-text",
        "description holds U+2028 (LINE SEPARATOR, a line separator) at line 1, column 2",
    ),
    (
        {"train_py": BETTER + "# note\u2028print('pwned')\n"},
        422,
        "invalid-patch",
        "train_py holds U+2028 (LINE SEPARATOR) at line 18, column 7",
    ),
    (
        {"train_py": BETTER + "x = 1\x0cy = 2\n"},
        422,
        "invalid-patch",
        "U+000C (FORM FEED (FF)) at line 18, column 6",
    ),
    (
        {"train_py": BETTER + "x = 1\ry = 2\n"},
        422,
        "invalid-patch",
        "U+000D (CARRIAGE RETURN not followed by a line feed) at line 18",
    ),
    ({"agent": "bad\nname"}, 422, "validation-error", "body.agent"),
    ({"program_version": -1}, 422, "validation-error", "body.program_version"),
    ({"surprise": 1}, 422, "validation-error", "body.surprise: Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("fields", "status", "slug", "detail"), REJECTED)
def test_bad_submissions_are_rejected_and_nothing_is_stored(
    client: TestClient,
    agent: Headers,
    redis_client: "redis.Redis[bytes]",
    fields: dict[str, Any],
    status: int,
    slug: str,
    detail: str,
) -> None:
    before = keys(redis_client)
    # json.dumps escapes non-ASCII, so a lone surrogate travels as `\\ud800` like from any JSON client.
    content = json.dumps(submission(**fields)).encode()
    answer = client.post(
        "/v1/proposals", content=content, headers={**agent, "content-type": "application/json"}
    )
    assert_problem(answer, status, slug, detail)
    assert keys(redis_client) == before
    assert jobs(redis_client) == []


@pytest.mark.parametrize(
    ("content", "headers", "status", "detail"),
    [
        (b"{not json", {"content-type": "application/json"}, 422, "JSON decode error"),
        (
            b'{"title": "\xff\xfe"}',
            {"content-type": "application/json"},
            400,
            "the body is not valid UTF-8: byte 0xFF at offset 11",
        ),
        (b"", {"content-type": "application/json"}, 422, "body: Field required"),
        (b"", {}, 422, "body: Field required"),
    ],
)
def test_malformed_bodies(
    client: TestClient,
    agent: Headers,
    redis_client: "redis.Redis[bytes]",
    content: bytes,
    headers: Headers,
    status: int,
    detail: str,
) -> None:
    before = keys(redis_client)
    answer = client.post("/v1/proposals", content=content, headers={**agent, **headers})
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert detail in answer.json()["detail"]
    assert keys(redis_client) == before


def test_oversized_body_is_refused_before_parsing(
    client: TestClient, agent: Headers, settings: Settings, redis_client: "redis.Redis[bytes]"
) -> None:
    before = keys(redis_client)
    too_big = b"x" * (request_body_limit(settings) + 1)
    declared = client.post(
        "/v1/proposals", content=too_big, headers={**agent, "content-type": "application/json"}
    )
    assert_problem(declared, 413, "content-too-large", "larger than")
    streamed = client.post(
        "/v1/proposals",
        content=iter([too_big[:1000], too_big[1000:]]),
        headers={**agent, "content-type": "application/json"},
    )
    assert "content-length" not in streamed.request.headers
    assert_problem(streamed, 413, "content-too-large", "larger than")
    assert keys(redis_client) == before


def test_submit_before_the_repo_is_initialised_is_503(
    settings: Settings, store: Store, redis_client: "redis.Redis[bytes]"
) -> None:
    with api_client(settings, store) as client:
        before = keys(redis_client)
        answer = client.post("/v1/proposals", json=submission(), headers={"Authorization": f"Bearer {ADMIN}"})
        assert_problem(answer, 503, "not-ready", "research repo has not been initialised")
        assert keys(redis_client) == before


# ---------------------------------------------------------------------------- dedupe and idempotency


def test_same_content_modulo_whitespace_is_one_proposal(
    client: TestClient, agent: Headers, redis_client: "redis.Redis[bytes]"
) -> None:
    first = client.post("/v1/proposals", json=submission(), headers=agent)
    messy = "\r\n".join(line + " \t" for line in BETTER.split("\n"))
    again = client.post("/v1/proposals", json=submission(train_py=messy, title="same idea"), headers=agent)
    as_diff = client.post("/v1/proposals", json=submission(diff=canonical_diff(BASE, BETTER)), headers=agent)
    assert first.status_code == 201
    assert again.status_code == 200 and as_diff.status_code == 200
    assert first.json()["id"] == again.json()["id"] == as_diff.json()["id"]
    assert again.json()["title"] == "double the learning rate"
    assert len(jobs(redis_client)) == 1


def test_same_content_on_another_base_is_another_proposal(
    client: TestClient, agent: Headers, store: Store, redis_client: "redis.Redis[bytes]"
) -> None:
    store.add_commit(OTHER_COMMIT, BASE + "# other\n")
    first = client.post("/v1/proposals", json=submission(), headers=agent)
    second = client.post("/v1/proposals", json=submission(base_commit=OTHER_COMMIT), headers=agent)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    assert len(jobs(redis_client)) == 2


def test_idempotency_key_replays_the_first_answer(
    client: TestClient, agent: Headers, admin: Headers, store: Store, redis_client: "redis.Redis[bytes]"
) -> None:
    key = {"Idempotency-Key": "retry-7f3a"}
    diff = canonical_diff(BASE, BETTER)
    first = client.post("/v1/proposals", json=submission(diff=diff), headers={**agent, **key})
    # The best moves on; the retried diff no longer applies to the default base, yet the retry
    # still gets its first answer.
    store.add_commit(OTHER_COMMIT, BETTER)
    store.set_best(Best(commit=OTHER_COMMIT, val_bpb=1.4))
    retry = client.post("/v1/proposals", json=submission(diff=diff), headers={**agent, **key})
    assert first.status_code == 201 and retry.status_code == 200
    assert retry.json()["id"] == first.json()["id"]
    assert len(jobs(redis_client)) == 1
    # Keys are per token: the same key from another token is a new submission.
    other = client.post("/v1/proposals", json=submission(train_py=with_lr("0.005")), headers={**admin, **key})
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert len(jobs(redis_client)) == 2


def test_malformed_idempotency_key(
    client: TestClient, agent: Headers, redis_client: "redis.Redis[bytes]"
) -> None:
    before = keys(redis_client)
    answer = client.post(
        "/v1/proposals", json=submission(), headers={**agent, "Idempotency-Key": "has space"}
    )
    assert_problem(answer, 422, "validation-error", "header.Idempotency-Key")
    assert keys(redis_client) == before


# ---------------------------------------------------------------------------- reading


def submit_many(client: TestClient, headers: Headers, count: int) -> list[str]:
    ids = []
    for i in range(count):
        answer = client.post(
            "/v1/proposals", json=submission(train_py=with_lr(f"0.00{i + 2}")), headers=headers
        )
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    return ids


def test_pagination_and_state_filter(client: TestClient, agent: Headers, store: Store) -> None:
    ids = submit_many(client, agent, 5)
    for proposal_id in ids[:2]:
        walk(store, proposal_id, State.RUNNING, "picked up")
    page = client.get("/v1/proposals", params={"limit": 2, "offset": 1}, headers=agent).json()
    assert page["total"] == 5 and page["offset"] == 1 and page["limit"] == 2
    assert [row["id"] for row in page["items"]] == ids[::-1][1:3]  # newest first
    assert "train_py" not in page["items"][0]
    running = client.get("/v1/proposals", params={"state": "running"}, headers=agent).json()
    assert {row["id"] for row in running["items"]} == set(ids[:2]) and running["total"] == 2
    bad_state = client.get("/v1/proposals", params={"state": "bogus"}, headers=agent)
    assert_problem(bad_state, 422, "validation-error", "query.state: Input should be 'queued', 'running'")
    too_many = client.get("/v1/proposals", params={"limit": 11}, headers=agent)
    assert_problem(too_many, 422, "invalid-request", "above the maximum page size 10")
    negative = client.get("/v1/proposals", params={"offset": -1}, headers=agent)
    assert_problem(negative, 422, "validation-error", "query.offset")


def test_get_one_with_events_and_not_found(client: TestClient, agent: Headers, store: Store) -> None:
    [proposal_id] = submit_many(client, agent, 1)
    walk(store, proposal_id, State.RUNNING, "worker gpu0")
    body = client.get(f"/v1/proposals/{proposal_id}", headers=agent).json()
    assert body["state"] == "running"
    assert [(e["state"], e["reason"]) for e in body["events"]] == [
        ("queued", "submitted"),
        ("running", "worker gpu0"),
    ]
    assert_problem(client.get("/v1/proposals/p_nope", headers=agent), 404, "not-found", "p_nope")
    assert_problem(
        client.get("/v1/proposals/bad.id", headers=agent), 422, "validation-error", "path.proposal_id"
    )


def test_log_tails(client: TestClient, agent: Headers, store: Store) -> None:
    [proposal_id] = submit_many(client, agent, 1)
    empty = client.get(f"/v1/proposals/{proposal_id}/log", headers=agent)
    assert empty.headers["content-type"].startswith("text/plain")
    assert "no finished runs yet" in empty.text
    result = RunResult(
        run_id="run-1",
        proposal_id=proposal_id,
        seed=42,
        state=State.CRASHED,
        reason="exit 1",
        log_tail="Traceback\nBoom\n",
    )
    walk(store, proposal_id, State.CRASHED, "exit 1", results=[result])
    text = client.get(f"/v1/proposals/{proposal_id}/log", headers=agent).text
    assert text == (  # one section per run: its header, its kept log, and a closing line with the outcome
        "# ---- run run-1 · candidate (screening) · seed 42 · crashed · val_bpb -: exit 1\n"
        "Traceback\nBoom\n"
        "# ---- end of run run-1 (candidate (screening)): crashed, val_bpb -\n"
    )


def test_cancel(client: TestClient, agent: Headers, admin: Headers) -> None:
    [proposal_id] = submit_many(client, agent, 1)
    assert_problem(
        client.post(f"/v1/proposals/{proposal_id}/cancel", headers=agent), 403, "forbidden", "admin"
    )
    done = client.post(f"/v1/proposals/{proposal_id}/cancel", headers=admin)
    assert done.status_code == 200 and done.json()["state"] == "cancelled"
    assert done.json()["events"][-1]["reason"] == "cancelled by admin"
    again = client.post(f"/v1/proposals/{proposal_id}/cancel", headers=admin)
    assert_problem(again, 409, "conflict", "only queued proposals can be cancelled")
    assert_problem(client.post("/v1/proposals/p_nope/cancel", headers=admin), 404, "not-found", "p_nope")


def test_best_and_its_file(client: TestClient, agent: Headers) -> None:
    best = client.get("/v1/best", headers=agent).json()
    assert (best["commit"], best["val_bpb"], best["train_py"]) == (COMMIT, 1.5, BASE)
    file = client.get("/v1/best/train.py", headers=agent)
    assert file.text == BASE and file.headers["x-commit"] == COMMIT
    assert file.headers["content-type"].startswith("text/plain")


def test_best_shows_its_recorded_score_against_its_runs_since(
    client: TestClient, agent: Headers, admin: Headers, store: Store
) -> None:
    """A best merged on a lucky run drifts up as it is re-run (paired halves, its own runs): /v1/best
    shows both, the re-measured one as the mean of the runs the committer's reference reads."""
    assert client.get("/v1/best", headers=agent).json()["remeasured_bpb"] is None  # no fingerprint yet
    store.set_best(Best(commit=COMMIT, val_bpb=1.5, fingerprint_key="f" * 16))
    store.add_calibration_runs("f" * 16, COMMIT, {"r1": 1.50123456, "r2": 1.51, "r3": 1.52})
    store.add_calibration_runs("f" * 16, "other-commit", {"r4": 1.2})  # another commit's runs: not the best's
    seen = client.get("/v1/best", headers=admin).json()
    assert seen["val_bpb"] == 1.5 and seen["best_runs"] == [1.50123456, 1.51, 1.52]
    assert seen["remeasured_bpb"] == pytest.approx((1.50123456 + 1.51 + 1.52) / 3)
    rounded = client.get("/v1/best", headers=agent).json()  # agents see scores to 4 decimals
    assert rounded["best_runs"] == [1.5012, 1.51, 1.52] and rounded["remeasured_bpb"] == 1.5104


def test_leaderboard(client: TestClient, agent: Headers, store: Store) -> None:
    first, second = submit_many(client, agent, 2)
    decision = Decision(
        accepted=True,
        rule="beats-best/1",
        candidate_bpb=1.45,
        best_bpb=1.5,
        best_commit=COMMIT,
        delta_bpb=-0.05,
        reason="ok",
    )
    walk(store, first, State.MERGED, "merged", decision=decision, merged_commit=OTHER_COMMIT)
    store.record_score(first, 1.45)
    store.record_score(second, 1.6)
    rows = client.get("/v1/leaderboard", headers=agent).json()
    assert [r["id"] for r in rows] == [first, second]
    assert rows[0] == {
        "id": first,
        "title": "double the learning rate",
        "agent": "tester",
        "val_bpb": 1.45,
        "state": "merged",
        "merged_commit": OTHER_COMMIT,
        "delta": -0.05,
        "fingerprint": None,  # no score has a fingerprint yet: the overall board
    }


def test_status_counts_queues_and_states(client: TestClient, agent: Headers) -> None:
    submit_many(client, agent, 3)
    status = client.get("/v1/status", headers=agent).json()
    assert status["queues"]["runs"] == 3
    assert status["states"]["queued"] == 3 and status["states"]["running"] == 0
    assert status["best_commit"] == COMMIT and status["best_val_bpb"] == 1.5


# ---------------------------------------------------------------------------- runs of a commit


def test_runs_of_the_best(
    client: TestClient, admin: Headers, store: Store, redis_client: "redis.Redis[bytes]"
) -> None:
    first = client.post("/v1/runs", json={"count": 3}, headers=admin)
    second = client.post("/v1/runs", json={"count": 3}, headers=admin)
    assert first.status_code == second.status_code == 201, first.text
    body = first.json()
    assert body["id"] != second.json()["id"]  # never deduplicated
    assert (body["seeds"], body["base_commit"], body["diff"]) == ([42, 43, 44], COMMIT, "")
    stored = store.get(body["id"])
    assert stored.kind == "run" and stored.train_py == BASE and stored.agent == "admin"
    assert [args for _, args in jobs(redis_client)] == [(body["id"],), (second.json()["id"],)]


def test_runs_with_seeds_and_an_older_commit(client: TestClient, admin: Headers, store: Store) -> None:
    store.add_commit(OTHER_COMMIT, BETTER)
    answer = client.post(
        "/v1/runs", json={"commit": OTHER_COMMIT[:10], "count": 2, "seeds": [7, 9]}, headers=admin
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["seeds"] == [7, 9]
    assert store.get(answer.json()["id"]).train_py == BETTER


@pytest.mark.parametrize(
    ("body", "slug", "detail"),
    [
        ({"count": 2, "seeds": [1]}, "validation-error", "seeds has 1 entries; give exactly count=2"),
        ({"count": 2, "seeds": [1, 1]}, "validation-error", "seeds must be distinct"),
        ({"count": 0}, "validation-error", "body.count"),
        ({"count": 33}, "validation-error", "body.count"),
        ({"commit": "deadbeef"}, "unknown-base", "commit 'deadbeef' is unknown: no commit"),
        (
            {"title": "calibrate\0"},
            "invalid-text",
            "title holds U+0000 (NULL, a control character) at character 10",
        ),
        ({"title": "\u202ecalibrate"}, "invalid-text", "title holds U+202E (RIGHT-TO-LEFT OVERRIDE"),
        (
            {"description": "one\ntwo\x1b[0m"},
            "invalid-text",
            "description holds U+001B (ESCAPE, a control character) at line 2, column 4",
        ),
        ({"count": 1, "extra": True}, "validation-error", "body.extra"),
    ],
)
def test_bad_run_requests(
    client: TestClient,
    admin: Headers,
    redis_client: "redis.Redis[bytes]",
    body: dict[str, Any],
    slug: str,
    detail: str,
) -> None:
    before = keys(redis_client)
    assert_problem(client.post("/v1/runs", json=body, headers=admin), 422, slug, detail)
    assert keys(redis_client) == before


# ---------------------------------------------------------------------------- auth


def test_auth_is_required_and_roles_are_enforced(
    client: TestClient, agent: Headers, redis_client: "redis.Redis[bytes]"
) -> None:
    before = keys(redis_client)
    missing = client.post("/v1/proposals", json=submission())
    assert_problem(missing, 401, "unauthorized", "missing bearer token")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = client.get("/v1/proposals", headers={"Authorization": "Bearer nope"})
    assert_problem(wrong, 401, "unauthorized", "unknown bearer token")
    basic = client.get("/v1/best", headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert_problem(basic, 401, "unauthorized", "missing bearer token")
    assert_problem(client.post("/v1/runs", json={}, headers=agent), 403, "forbidden", "needs an admin token")
    token = client.post("/v1/tokens", json={"name": "sneaky", "role": "admin"}, headers=agent)
    assert_problem(token, 403, "forbidden", "role agent")
    assert keys(redis_client) == before


def test_tokens_are_stored_hashed(client: TestClient, admin: Headers, store: Store) -> None:
    answer = client.post("/v1/tokens", json={"name": "ops", "role": "admin"}, headers=admin)
    token = answer.json()["token"]
    assert answer.json()["role"] == "admin" and token.startswith("ar_")
    assert store.token(hash_token(token)) == {"name": "ops", "role": "admin"}
    assert token.encode() not in b"".join(store.r.hgetall("ar:tokens").values())
    assert client.get("/v1/status", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    bad_role = client.post("/v1/tokens", json={"name": "x", "role": "root"}, headers=admin)
    assert_problem(bad_role, 422, "validation-error", "body.role")


def test_first_admin_token_is_created_and_logged_once(
    redis_url: str, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(redis_url=redis_url)
    with (
        caplog.at_level(logging.WARNING, logger="services.controller.auth"),
        TestClient(create_app(settings, store=store)),
    ):
        pass
    [record] = [r for r in caplog.records if "created admin token" in r.getMessage()]
    token = record.getMessage().split("created admin token ")[1].split()[0]
    assert store.token(hash_token(token)) == {"name": "admin", "role": "admin"}
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING, logger="services.controller.auth"),
        TestClient(create_app(settings, store=store)),
    ):
        pass
    assert not [r for r in caplog.records if "created admin token" in r.getMessage()]


def test_existing_tokens_prevent_a_generated_admin(redis_url: str, store: Store) -> None:
    create_token(store, "someone", Role.AGENT)
    with api_client(Settings(redis_url=redis_url), store):
        pass
    assert len(store.r.hkeys("ar:tokens")) == 1


# ---------------------------------------------------------------------------- health, errors, schema


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "best_commit": COMMIT}


def test_not_ready_without_best(settings: Settings, store: Store) -> None:
    with api_client(settings, store) as client:
        assert_problem(client.get("/readyz"), 503, "not-ready", "no best commit yet")
        assert_problem(
            client.get("/v1/best", headers={"Authorization": f"Bearer {ADMIN}"}), 503, "not-ready", "no best"
        )


def test_redis_down_is_503(settings: Settings) -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    client = TestClient(create_app(settings, redis=dead))  # no lifespan: it would fail to start
    assert_problem(client.get("/readyz"), 503, "store-unavailable", "Redis")
    assert_problem(
        client.get("/v1/status", headers={"Authorization": "Bearer x"}), 503, "store-unavailable", "Redis"
    )


def test_unknown_route_and_method_are_problems(client: TestClient, agent: Headers) -> None:
    assert_problem(client.get("/v1/nothing-here"), 404, "not-found", "no such endpoint")
    assert_problem(client.delete("/v1/best", headers=agent), 405, "method-not-allowed", "not allowed")


def test_openapi_lists_the_api(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {
        "/v1/proposals",
        "/v1/proposals/{proposal_id}",
        "/v1/proposals/{proposal_id}/log",
        "/v1/proposals/{proposal_id}/cancel",
        "/v1/runs",
        "/v1/best",
        "/v1/best/train.py",
        "/v1/leaderboard",
        "/v1/status",
        "/v1/tokens",
        "/healthz",
        "/readyz",
    } <= set(schema["paths"])
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
