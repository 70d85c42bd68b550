"""The hostile-proposal harness: the real path (API submit → RQ → Worker → DockerSandbox →
collect → evaluation container → committer), in-process like tests/integration/test_failures_docker.py,
with small limits so that each attack ends in seconds.

Around every attack the host holds things the attack must not reach or change: a sentinel file, a
victim run's folder (another run's artifacts) under the same runs folder, a fake secret in the
worker's environment, the best score and the research branch. `Harness.assert_untouched` checks
them all after the run, and that no container or process of the run is left.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from docker.client import DockerClient
from fastapi.testclient import TestClient
from pydantic import SecretStr
from rq import SimpleWorker

from services import queue
from services.committer import jobs as committer_jobs
from services.committer.committer import Committer
from services.committer.repo import GitResearchRepo
from services.controller.app import create_app
from services.models import Best
from services.settings import KIB, MIB, Settings
from services.store import Store
from services.worker import jobs as worker_jobs
from services.worker.docker_sandbox import LABEL_PROPOSAL, DockerSandbox
from services.worker.worker import Worker
from tests.integration.conftest import docker_client, trainer_image
from tests.integration.test_docker_sandbox import prepare_sandbox_data

__all__ = ["docker_client", "trainer_image"]  # the integration suite's fixtures, shared here

ADMIN = "admin-token-for-hostile-tests"
SECRET = "hunter2-worker-secret-4f1c9a"  # in the worker's environment; must never reach a container
BEST_BPB = 1.5  # the best score the attacks try to beat or change
WALL_CLOCK_S = (
    60  # torch imports in seconds on an idle machine; 30 s ran out for PyPI's CUDA build on a loaded one
)
PIDS_LIMIT = 64
# PyPI's torch (the CUDA build a host without PyTorch's CPU index gets) takes ~500 MiB to import.
MEMORY_BYTES = 1024 * MIB
TMPFS_BYTES = 8 * MIB
MAX_OUTPUT_BYTES = 4 * MIB
MAX_CHECKPOINT_BYTES = 2 * MIB  # the bigram model's weights are 1 MiB
MAX_LOG_BYTES = 16 * KIB
LOG_TAIL_BYTES = 4 * KIB

# An honest tiny model: a bigram table, untrained, saved as safetensors. The evaluator scores it for
# real (about log2(vocab) bits per token), which is far worse than BEST_BPB.
MODEL_TRAIN_PY = """\
import json
import os

import numpy as np
import torch
from safetensors.torch import save_model


def build_model(config):
    return torch.nn.Embedding(config["vocab_size"], config["vocab_size"])


def main():
    seed = int(os.environ["AR_SEED"])
    torch.manual_seed(seed)
    out = os.environ["AR_OUT_DIR"]
    vocab = len(np.load(os.path.join(os.environ["AR_DATA_DIR"], "token_bytes.npy")))
    model = build_model({"vocab_size": vocab})
    save_model(model, os.path.join(out, "model.safetensors"))
    run = {"config": {"vocab_size": vocab}, "steps": 1, "tokens": 0, "startup_s": 0.0,
           "training_s": 0.0, "peak_memory_bytes": 0, "seed": seed}
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump(run, f)
    print("done", flush=True)


if __name__ == "__main__":
    main()
"""


@dataclass(frozen=True)
class Ran:
    """A finished proposal as the API shows it, and its training log."""

    id: str
    detail: dict[str, Any]
    log: str

    @property
    def state(self) -> str:
        return str(self.detail["state"])

    @property
    def reason(self) -> str:
        return str(self.detail["reason"])


@dataclass
class Harness:
    settings: Settings
    store: Store
    conn: redis.Redis[bytes]
    api: TestClient
    docker: DockerClient
    repo: GitResearchRepo
    head: str
    sentinel: Path
    victim: Path
    val_marker: str
    data_dirs: tuple[Path, Path]
    _snapshot: dict[str, str]

    def substitute(self, train_py: str) -> str:
        """Fill the attack's placeholders with the host paths and values it goes after."""
        return (
            train_py.replace("@SENTINEL@", str(self.sentinel))
            .replace("@VICTIM@", str(self.victim))
            .replace("@RUNS@", str(self.settings.runs_dir))
            .replace("@SECRET@", SECRET)
            .replace("@VAL_MARKER_REVERSED@", self.val_marker[::-1])
        )

    def submit(self, train_py: str, title: str = "attack") -> str:
        body = {"title": title, "agent": "hostile", "train_py": self.substitute(train_py)}
        response = self.api.post("/v1/proposals", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def drain(self) -> None:
        """Run both queues in this process until nothing is left."""
        while queue.queue_depths(self.conn) != {queue.RUNS_QUEUE: 0, queue.COMMITS_QUEUE: 0}:
            for q in (queue.runs_queue(self.conn), queue.commits_queue(self.conn)):
                SimpleWorker([q], connection=self.conn).work(burst=True, logging_level="ERROR")

    def run(self, train_py: str, title: str = "attack") -> Ran:
        proposal_id = self.submit(train_py, title)
        self.drain()
        detail = self.api.get(f"/v1/proposals/{proposal_id}").json()
        return Ran(proposal_id, detail, self.train_log(detail))

    def train_log(self, detail: dict[str, Any]) -> str:
        """The whole kept training log of the proposal's first run (the API keeps only a tail)."""
        runs = detail["results"]
        if not runs:
            return ""
        path = self.settings.runs_dir / runs[0]["run_id"] / "train.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def assert_outputs_removed(self, ran: Ran) -> None:
        """Nothing the proposal's containers wrote is left under the runs folder: beside the victim,
        only its runs' folders, each holding its train.py, logs and an empty evaluation folder."""
        run_ids = [str(result["run_id"]) for result in ran.detail["results"]]
        runs = self.settings.runs_dir
        assert sorted(path.name for path in runs.iterdir()) == sorted([self.victim.name, *run_ids])
        for run_id in run_ids:
            left = sorted(path.name for path in (runs / run_id).iterdir())
            assert set(left) <= {"code", "eval", "train.log", "eval.log"}, left
            assert [path.name for path in (runs / run_id / "code").iterdir()] == ["train.py"]
            assert list((runs / run_id / "eval").iterdir()) == []

    def proposal_count(self) -> int:
        return int(self.api.get("/v1/proposals").json()["total"])

    def assert_untouched(self, proposal_id: str) -> None:
        """Nothing outside the run changed, and nothing of the run is left running."""
        assert self._state() == self._snapshot, "the host, the best or the branch changed"
        left = self.docker.containers.list(all=True, filters={"label": f"{LABEL_PROPOSAL}={proposal_id}"})
        assert left == [], f"containers left behind: {[c.name for c in left]}"
        assert queue.queue_depths(self.conn) == {queue.RUNS_QUEUE: 0, queue.COMMITS_QUEUE: 0}

    def _state(self) -> dict[str, str]:
        state = {"best": self.store.get_best().model_dump_json() if self.store.get_best() else "none"}
        state["head"] = self.repo.head()
        watched = [self.sentinel, *sorted(self.victim.rglob("*"))]
        for folder in self.data_dirs:  # the fixed tokenizer and the data
            watched += [folder, *sorted(folder.rglob("*"))]
        for path in watched:
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            state[str(path)] = f"{digest} {oct(info.st_mode)} {info.st_mtime_ns} {info.st_nlink}"
        return state


def host_processes_with(token: str) -> list[str]:
    """Command lines of host processes that mention `token` (a container's processes show on the
    host's /proc too, so a process that outlived its container would be found here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if token in cmdline and str(os.getpid()) != entry.name:
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Real training and validation folders made by prepare.py from a small corpus (vocab 512),
    readable by the sandbox user; returns (train, val, a string found only in the validation text)."""
    train, val = prepare_sandbox_data(tmp_path_factory.mktemp("hostile-data"))
    line = (val / "val.jsonl").read_text().splitlines()[0]
    marker = line[line.index('"text"') + 9 :][:48]  # 48 characters of the validation book
    assert marker not in "".join(p.read_text(errors="replace") for p in train.glob("*.json"))
    return train, val, marker


@pytest.fixture
def hostile(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_url: str,
    store: Store,
    redis_client: redis.Redis[bytes],
    trainer_image: str,
    docker_client: DockerClient,
    prepared_data: tuple[Path, Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Harness]:
    train, val, val_marker = prepared_data
    # indirect parametrization: {"settings": {...}, "sandbox": {...}} changes the defaults below
    options: dict[str, dict[str, Any]] = getattr(request, "param", {})
    monkeypatch.setenv("AR_WORKER_SECRET", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    values: dict[str, Any] = dict(
        redis_url=redis_url, admin_token=SecretStr(ADMIN), runs_dir=tmp_path / "runs",
        repo_dir=tmp_path / "repo", trainer_image=trainer_image, train_data=str(train),
        val_data=str(val), run_wall_clock_s=WALL_CLOCK_S, eval_timeout_s=60, kill_grace_s=2,
        container_memory_bytes=MEMORY_BYTES, container_pids_limit=PIDS_LIMIT, tmpfs_bytes=TMPFS_BYTES,
        max_output_bytes=MAX_OUTPUT_BYTES, max_checkpoint_bytes=MAX_CHECKPOINT_BYTES,
        max_log_bytes=MAX_LOG_BYTES, log_tail_bytes=LOG_TAIL_BYTES, infra_retries=0, preset="tiny",
        device="cpu", new_fingerprint_runs=0,  # the best keeps its seeded score: attacks must not move it
    )  # fmt: skip
    settings = Settings(**{**values, **options.get("settings", {})})
    repo = GitResearchRepo(settings.repo_dir, settings.research_branch, settings.git_author)
    head = repo.ensure(MODEL_TRAIN_PY)
    store.add_commit(head, MODEL_TRAIN_PY)
    store.set_best(Best(commit=head, val_bpb=BEST_BPB))
    sentinel = tmp_path / "host-sentinel.txt"
    sentinel.write_text("host secret: the sandbox must neither read nor change this\n")
    victim = settings.runs_dir / "run-victim"
    (victim / "out").mkdir(parents=True)
    (victim / "out" / "model.safetensors").write_bytes(b"another run's weights")
    (victim / "train.log").write_text("another run's log\n")
    for path in (tmp_path, settings.runs_dir, victim, victim / "out"):
        path.chmod(0o755)  # readable by uid 65534, as a careless host would leave them
    sandbox = DockerSandbox(  # the live log as in production
        settings, docker_client, eval_max_docs=8, log_sink=store.append_live_log, **options.get("sandbox", {})
    )
    worker_jobs.configure(
        Worker(settings=settings, store=store, sandbox=sandbox, conn=redis_client, name="hw")
    )
    committer = Committer(settings=settings, store=store, repo=repo, conn=redis_client)
    committer.publish_bundle()  # GET /v1/repo.bundle, as a started committer leaves it
    committer_jobs.configure(committer)
    try:
        with TestClient(create_app(settings, store=store)) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN}"
            harness = Harness(
                settings, store, redis_client, client, docker_client, repo, head, sentinel, victim,
                val_marker, (train, val), {},
            )  # fmt: skip
            harness._snapshot = harness._state()
            yield harness
    finally:
        worker_jobs.configure(None)
        committer_jobs.configure(None)
        sandbox.close()
