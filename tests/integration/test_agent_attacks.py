"""Attacks by an agent holding an ordinary agent token, on the service rather than the sandbox: through
the real API (TestClient on the app), RQ queues drained in-process, a real Redis and the committer on
a real git repository, behind the fake sandbox (a candidate's `FAKE_SCORE`/`FAKE_DELTA` lines are its
score). Each test says what the attack was and what must hold instead."""

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from services.auth import Role, create_token
from services.controller.app import create_app
from services.settings import Settings
from tests.integration.test_pipeline import BASELINE, Service, running_service

ADMIN = "admin-token-for-attack-tests-0123"


@pytest.fixture
def service(tmp_path: Path, redis_url: str, redis_client: "redis.Redis[bytes]") -> Iterator[Service]:
    settings = Settings(
        redis_url=redis_url,
        admin_token=SecretStr(ADMIN),
        runs_dir=tmp_path / "runs",
        repo_dir=tmp_path / "repo",
    )
    with running_service(settings, redis_client) as service:
        yield service


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(create_app(service.settings, store=service.store, program_path=None)) as test_client:
        yield test_client


@pytest.fixture
def agent(service: Service) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_token(service.store, 'agent-1', Role.AGENT)}"}


def test_a_line_separator_in_a_comment_is_refused_at_submit(
    service: Service, client: TestClient, agent: dict[str, str], redis_client: "redis.Redis[bytes]"
) -> None:
    """Attack: `# note<U+2028>print(...)` is a comment to Python, but the canonical diff was made with
    `str.splitlines` (which breaks at U+2028) and re-applied splitting at `\\n` only, so when the
    proposal was re-queued on a new head the comment's tail became a live line of code. Holds instead:
    the file and the diff are refused with a 422 naming the character, line and column; nothing is
    stored or queued."""
    before = set(redis_client.keys("*"))
    payload = BASELINE + "# note\u2028print('pwned')\n"
    answer = client.post(
        "/v1/proposals",
        json={"title": "comment", "description": "", "agent": "agent-1", "train_py": payload},
        headers=agent,
    )
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["type"] == "urn:autoresearch:problem:invalid-patch"
    assert "train_py holds U+2028 (LINE SEPARATOR) at line 11, column 7" in answer.json()["detail"]
    diff = "--- a/trainer/train.py\n+++ b/trainer/train.py\n@@ -10,0 +11,1 @@\n+# note\u2028print('pwned')\n"
    answer = client.post(
        "/v1/proposals",
        json={"title": "comment", "description": "", "agent": "agent-1", "diff": diff},
        headers=agent,
    )
    assert answer.status_code == 422, answer.text
    assert "diff holds U+2028 (LINE SEPARATOR) at line 4, column 8" in answer.json()["detail"]
    assert set(redis_client.keys("*")) == before


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"title": "speed\0up"}, "title holds U+0000 (NULL, a control character) at character 6"),
        ({"title": "harmless \u202etxt.exe"}, "title holds U+202E (RIGHT-TO-LEFT OVERRIDE"),
        ({"title": "\x1b]0;pwned\x07 ok"}, "title holds U+001B (ESCAPE, a control character) at character 1"),
        (
            {"description": "fine\n\nProposal-Id: x\0"},
            "description holds U+0000 (NULL, a control character) at line 3",
        ),
    ],
)
def test_text_git_cannot_store_or_that_hides_itself_is_refused_at_submit(
    service: Service,
    client: TestClient,
    agent: dict[str, str],
    redis_client: "redis.Redis[bytes]",
    fields: dict[str, str],
    detail: str,
) -> None:
    """Attack: a NUL in a title or description was accepted, then `git commit-tree` refused the
    message and the proposal stayed `evaluating` forever; bidi overrides and ANSI escapes in titles
    disguise what a reader of `git log`, a terminal or the dashboard sees. Holds instead: 422
    `invalid-text` naming the character and where it is; nothing stored or queued."""
    before = set(redis_client.keys("*"))
    body = {"title": "t", "description": "d", "agent": "agent-1", "train_py": BASELINE + "X = 1\n", **fields}
    answer = client.post("/v1/proposals", json=body, headers=agent)
    assert answer.status_code == 422, answer.text
    assert answer.json()["type"] == "urn:autoresearch:problem:invalid-text"
    assert detail in answer.json()["detail"]
    assert set(redis_client.keys("*")) == before
