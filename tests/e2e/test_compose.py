"""The whole stack from compose (CPU variant, tiny trainer), built by compose itself: a proposal that
improves the tiny run is merged on the research branch with its numbers, one that makes it worse is
rejected with its numbers, and `down -v` leaves nothing of the stack behind (containers, networks,
volumes, run folders). A corpus without a validation file stops `up` with prepare's message.
Real Docker, real Redis, real git, real trainer and evaluator; driven through the REST API only."""

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from docker.client import DockerClient

from tests.e2e.conftest import compose_command
from tests.support.net import free_port
from tests.support.trainer import write_corpus

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"merged", "rejected", "crashed", "timed_out", "oom", "voided", "infra_error", "cancelled"}
PROJECT_LABEL = "com.docker.compose.project"
CPU_FILES = ["-f", "compose.yaml", "-f", "compose.cpu.yaml"]

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.slow]


@dataclass
class Stack:
    url: str
    token: str
    project: str
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
            timeout=1200,
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


def make_stack(work: Path, build_env: dict[str, str], source: Path) -> Stack:
    project = f"ar-e2e-{secrets.token_hex(3)}"
    token = secrets.token_urlsafe(24)
    port = free_port()
    env = {
        **os.environ,
        **build_env,
        "COMPOSE_PROJECT_NAME": project,
        "AR_ADMIN_TOKEN": token,
        "AR_PORT": str(port),
        "AR_SOURCE_DIR": str(source),
        # The tiny preset runs a fixed number of steps unless the deadline stops it early; on a busy
        # machine 120 s did (noisy scores), so the budget is far above its idle ~10 s.
        "AR_RUN_WALL_CLOCK_S": "600",
    }
    return Stack(f"http://127.0.0.1:{port}", token, project, [*compose_command(), *CPU_FILES], env)


def save_logs(stack: Stack, name: str) -> None:
    logs = stack.run("logs", "--no-color", check=False).stdout
    (ROOT / "test-output").mkdir(exist_ok=True)
    (ROOT / "test-output" / name).write_text(logs)


def leftovers(client: DockerClient, project: str) -> dict[str, list[str]]:
    labelled = {"label": f"{PROJECT_LABEL}={project}"}
    return {
        "containers": [c.name for c in client.containers.list(all=True, filters=labelled)],
        "networks": [n.name for n in client.networks.list(filters=labelled)],
        "volumes": [v.name for v in client.volumes.list(filters=labelled)],
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, build_env: dict[str, str]) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("e2e")
    stack = make_stack(work, build_env, write_corpus(work / "source", seed=1))
    try:
        stack.run("up", "-d", "--build")
        yield stack
    finally:
        save_logs(stack, "e2e-compose.log")
        stack.run("down", "-v", "--remove-orphans", check=False)


def test_a_corpus_without_validation_file_stops_up_with_prepares_message(
    tmp_path: Path, build_env: dict[str, str], docker_client: DockerClient
) -> None:
    source = write_corpus(tmp_path / "source", seed=2)
    (source / "val.jsonl").rename(source / "holdout.jsonl")
    stack = make_stack(tmp_path, build_env, source)
    try:
        proc = subprocess.run(
            ["make", "up-cpu", f"COMPOSE={' '.join(compose_command())}"],
            cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
        assert proc.returncode != 0
        assert "want exactly one validation file named val*, found 0" in proc.stdout + proc.stderr
        assert not [c for c in leftovers(docker_client, stack.project)["containers"] if "worker" in c]
    finally:
        stack.run("down", "-v", "--remove-orphans", check=False)
    assert leftovers(docker_client, stack.project) == {"containers": [], "networks": [], "volumes": []}


# A liveness bound, not a speed claim: about ten tiny runs, each 20 s on an idle 2-core machine and
# over 2 minutes on a busy one.
@pytest.mark.timeout(3600)
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

        done = wait_until(finished, 2400, "both proposals to finish", interval_s=2)
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
    assert f"val_bpb: {better['decision']['candidate_bpb']:.4f} (best" in message  # the agents' precision
    note = stack.run(
        "exec", "-T", "committer", "git", "-C", "/var/lib/autoresearch/repo", "notes", "show", "research"
    ).stdout
    assert json.loads(note)["decision"]["accepted"] is True


def test_down_v_leaves_nothing_behind(stack: Stack, docker_client: DockerClient) -> None:
    """After the runs above: their folders live in the project's runs volume, and `down -v` removes
    them with every container, network and volume of the project, and no run container is left."""
    [runs] = docker_client.volumes.list(
        filters={"label": [f"{PROJECT_LABEL}={stack.project}", "com.docker.compose.volume=runs"]}
    )
    runs_folder = Path(runs.attrs["Mountpoint"])
    assert any(runs_folder.iterdir()), "the runs left no folders in the runs volume"
    [worker] = docker_client.containers.list(
        all=True,
        filters={"label": [f"{PROJECT_LABEL}={stack.project}", "com.docker.compose.service=cpu-worker"]},
    )
    assert leftovers(docker_client, stack.project)["volumes"]
    save_logs(stack, "e2e-compose.log")
    stack.run("down", "-v", "--remove-orphans")
    assert leftovers(docker_client, stack.project) == {"containers": [], "networks": [], "volumes": []}
    assert not runs_folder.exists()
    assert not docker_client.containers.list(
        all=True, filters={"label": f"autoresearch.owner={worker.id[:12]}"}
    )
