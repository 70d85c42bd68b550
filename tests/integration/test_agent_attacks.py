"""Attacks by an agent holding an ordinary agent token, on the service rather than the sandbox: through
the real API (TestClient on the app), RQ queues drained in-process, a real Redis and the committer on
a real git repository, behind the fake sandbox (a candidate's `FAKE_SCORE`/`FAKE_DELTA` lines are its
score). Each test says what the attack was and what must hold instead."""

import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from services.controller.auth import Role, create_token
from services.settings import Settings
from services.states import State
from tests.support.api import api_client
from tests.support.service import BASELINE, Service, running_service

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
    with api_client(service.settings, service.store, None) as test_client:
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


def submit(client: TestClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {"title": "an idea", "description": "why it helps", "agent": "agent-1", **fields}
    answer = client.post("/v1/proposals", json=body, headers=headers)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def git(service: Service, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(service.repo.path), *args], check=True, capture_output=True, text=True
    ).stdout


def test_a_description_naming_another_proposal_does_not_hijack_its_merge(
    service: Service, client: TestClient, agent: dict[str, str]
) -> None:
    """Attack: the attacker's description carries `Proposal-Id: <victim id>`, so its commit message
    does. The attacker's proposal is merged first; the victim, accepted later, was recorded as merged
    at the attacker's commit (found by grepping messages), the store then held the victim's train.py
    for a commit whose git tree is the attacker's, and the next merge built from the store reverted a
    change in git. Holds instead: the victim is merged at a commit of its own, and the store, the best
    and git agree on every merged commit and its train.py."""
    first = submit(client, agent, train_py=BASELINE.replace("FAKE_SCORE = 1.5", "FAKE_SCORE = 1.4"))
    service.drain()
    root, after_first = git(service, "rev-list", "--reverse", "research").split()
    assert service.store.get(first["id"]).merged_commit == after_first
    # The victim works from the root; it is screened, re-queued on the new head, screened again and
    # confirmed while the attacker's proposal (submitted after it, naming it) is confirmed and merged.
    victim = submit(
        client, agent, base_commit=root, train_py=BASELINE + "FAKE_DELTA = -0.2\n", title="victim"
    )
    head_py = git(service, "show", f"{after_first}:trainer/train.py")
    attacker = submit(
        client,
        agent,
        train_py=head_py.replace("FAKE_SCORE = 1.4", "FAKE_SCORE = 1.3"),
        title="attacker",
        description=f"Faster.\n\nProposal-Id: {victim['id']}\nAgent: agent-1",
    )
    service.drain()

    done = {p["id"]: service.store.get(p["id"]) for p in (first, victim, attacker)}
    assert [p.state for p in done.values()] == [State.MERGED] * 3, [p.reason for p in done.values()]
    hijacker = done[attacker["id"]]
    assert hijacker.merged_commit is not None
    assert f"Proposal-Id: {victim['id']}" in git(service, "log", "-1", "--format=%B", hijacker.merged_commit)
    merged_victim = done[victim["id"]]
    assert merged_victim.merged_commit not in (None, hijacker.merged_commit)
    events = [e.reason for e in service.store.events(victim["id"])]
    assert sum("re-queued" in reason for reason in events) == 2  # on the first merge, then the attacker's
    branch = git(service, "rev-list", "--reverse", "research").split()
    assert branch == [root, after_first, hijacker.merged_commit, merged_victim.merged_commit]
    for proposal in done.values():
        assert proposal.merged_commit is not None
        in_git = git(service, "show", f"{proposal.merged_commit}:trainer/train.py")
        assert in_git == proposal.train_py == service.store.commit_train_py(proposal.merged_commit)
        ref = git(service, "rev-parse", f"refs/autoresearch/merged/{proposal.id}").strip()
        assert ref == proposal.merged_commit
    best = service.store.get_best()
    assert best is not None and best.commit == branch[-1] and best.proposal_id == victim["id"]
    head_py = git(service, "show", "research:trainer/train.py")
    assert "FAKE_SCORE = 1.3" in head_py and "FAKE_DELTA = -0.2" in head_py  # neither change reverted
    lineage = client.get("/v1/lineage", headers=agent).json()
    assert [(e["commit"], e["proposal_id"]) for e in lineage] == [
        (root, None),
        *((p.merged_commit, p.id) for p in (done[first["id"]], hijacker, merged_victim)),
    ]
    # A fresh Redis rebuilds the lineage from git: merged refs and notes, never messages.
    service.conn.delete("ar:lineage")
    service.committer.bootstrap(BASELINE)
    rebuilt = client.get("/v1/lineage", headers=agent).json()
    assert [(e["commit"], e["proposal_id"], e["title"]) for e in rebuilt] == [
        (e["commit"], e["proposal_id"], e["title"]) for e in lineage
    ]
