"""The hostile-proposal harness: the real path (API submit → RQ → Worker → DockerSandbox → collect →
evaluation container → committer) with small limits, and the checks that an attack changed nothing
it must not reach."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from docker.client import DockerClient
from fastapi.testclient import TestClient
from rq import SimpleWorker

from services import queue
from services.committer.repo import GitResearchRepo
from services.settings import KIB, MIB, Settings
from services.store import Store
from services.worker.docker_sandbox import LABEL_PROPOSAL

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
            .replace("@RUNS@", str(self.settings.sandbox.runs_dir))
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
        path = self.settings.sandbox.runs_dir / runs[0]["run_id"] / "train.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def assert_outputs_removed(self, ran: Ran) -> None:
        """Nothing the proposal's containers wrote is left under the runs folder: beside the victim,
        only its runs' folders, each holding its train.py, logs and an empty evaluation folder."""
        run_ids = [str(result["run_id"]) for result in ran.detail["results"]]
        runs = self.settings.sandbox.runs_dir
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
