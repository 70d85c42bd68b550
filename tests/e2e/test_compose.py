"""The whole stack from compose (CPU variant, tiny trainer): a proposal that improves the tiny run is
merged on the research branch with its numbers, one that makes it worse is rejected with its numbers.
Real Docker, real Redis, real git, real trainer and evaluator; driven through the REST API only."""

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.trainer.conftest import write_corpus

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"merged", "rejected", "crashed", "timed_out", "oom", "voided", "infra_error", "cancelled"}

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.slow]


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor `docker-compose` is installed")


@dataclass
class Stack:
    url: str
    token: str
    compose: list[str]
    env: dict[str, str]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.compose, *args],
            cwd=ROOT,
            env=self.env,
            check=check,
            capture_output=True,
            text=True,
            timeout=600,
        )


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 1.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except httpx.HTTPError as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, docker_images: None) -> Iterator[Stack]:
    compose = compose_command()
    work = tmp_path_factory.mktemp("e2e")
    source = write_corpus(work / "source", seed=1)
    runs = work / "runs"
    runs.mkdir()
    project = f"ar-e2e-{secrets.token_hex(3)}"
    token = secrets.token_urlsafe(24)
    port = free_port()
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": project,
        "AR_VOLUME_PREFIX": project,
        "AR_ADMIN_TOKEN": token,
        "AR_PORT": str(port),
        "AR_SOURCE_DIR": str(source),
        "AR_RUNS_DIR": str(runs),
        "AR_RUN_WALL_CLOCK_S": "120",
    }
    stack = Stack(
        f"http://127.0.0.1:{port}", token, [*compose, "-f", "compose.yaml", "-f", "compose.cpu.yaml"], env
    )
    try:
        stack.run("up", "-d")
        yield stack
    finally:
        logs = stack.run("logs", "--no-color", check=False).stdout
        (ROOT / "test-output").mkdir(exist_ok=True)
        (ROOT / "test-output" / "e2e-compose.log").write_text(logs)
        stack.run("down", "-v", "--remove-orphans", check=False)


def test_better_proposal_merged_worse_rejected(stack: Stack) -> None:
    with stack.client() as api:
        wait_until(lambda: api.get("/healthz").status_code == 200, 120, "the controller to answer")
        best = wait_until(
            lambda: (
                (b := api.get("/v1/best")).status_code == 200 and b.json()["val_bpb"] is not None and b.json()
            ),
            600,
            "the baseline score",
        )
        baseline_bpb = best["val_bpb"]
        base_py = api.get("/v1/best/train.py").text
        better_py = base_py.replace("TINY_LR = 0.3 ", "TINY_LR = 1.0 ", 1)  # docs/trainer.md: clearly better
        worse_py = base_py.replace("TINY_STEPS = 60 ", "TINY_STEPS = 15 ", 1)  # clearly worse
        assert better_py != base_py and worse_py != base_py, "the tiny preset's constants moved"
        ids = {}
        for name, text in (("better", better_py), ("worse", worse_py)):
            response = api.post(
                "/v1/proposals",
                json={"title": f"{name} tiny run", "description": name, "agent": "e2e", "train_py": text},
            )
            assert response.status_code == 201, response.text
            ids[name] = response.json()["id"]

        def finished() -> dict[str, dict[str, object]] | None:
            found = {name: api.get(f"/v1/proposals/{pid}").json() for name, pid in ids.items()}
            return found if all(p["state"] in TERMINAL for p in found.values()) else None

        done = wait_until(finished, 900, "both proposals to finish", interval_s=2)
        better, worse = done["better"], done["worse"]
        assert better["state"] == "merged", better["reason"]
        assert worse["state"] == "rejected", worse["reason"]
        assert better["decision"]["candidate_bpb"] < baseline_bpb
        assert worse["decision"]["candidate_bpb"] > baseline_bpb
        assert "does not beat" in worse["reason"]
        scored = better["results"][0]  # the trusted scorer's own split of its evaluation, on the CPU
        assert scored["logits_slots"] == "host memory (pageable)"
        assert {"data_s", "models_ready_s", "scored_pass_s", "probe_pass_s"} <= set(scored["scorer_timings"])
        new_best = api.get("/v1/best").json()
        assert new_best["commit"] == better["merged_commit"]

    message = stack.run(
        "exec",
        "-T",
        "committer",
        "git",
        "-C",
        "/var/lib/autoresearch/repo",
        "log",
        "-1",
        "--format=%B",
        "research",
    ).stdout
    assert f"Proposal-Id: {ids['better']}" in message
    assert f"val_bpb: {better['decision']['candidate_bpb']:.6f}" in message
    note = stack.run(
        "exec", "-T", "committer", "git", "-C", "/var/lib/autoresearch/repo", "notes", "show", "research"
    ).stdout
    assert json.loads(note)["decision"]["accepted"] is True
