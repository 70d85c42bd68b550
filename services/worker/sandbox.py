"""The sandbox protocol: how the worker runs one training step and one evaluation step.

`DockerSandbox` (docker_sandbox.py) is the real implementation; tests of service logic use a fake
that satisfies the same protocol. A run's files live in one host folder (`RunPaths`) with fixed
names; the sandbox mounts its parts at fixed in-container paths so compile caches written by one run
hit in another run of the same code.

In-container layout (the same for every run):

    /code/train.py   candidate trainer, read-only             (training and evaluation)
    /data            training shards + tokenizer, read-only   (training and evaluation)
    /out             AR_OUT_DIR, writable                     (training only)
    /cache           compile caches, writable                 (training only)
    /tmp             scratch: size-capped tmpfs, or the run's scratch folder
    /val             validation data, read-only               (evaluation only, never training)
    /test            the held-out test split, read-only       (the scorer only, and only when asked)
    /ckpt            collected checkpoint, read-only          (evaluation only)
    /eval-out        result.json, writable                    (evaluation only)
    /channel         the scorer's sockets                     (evaluation: scorer rw, each model container
                                                               its own socket folder ro; docs/evaluation.md)

Evaluation runs the scorer (val, eval-out; test when the request asks) and two model containers (code,
data, ckpt; the candidate's model behind trainer/model_server.py); /code, /data and /ckpt are read-only
in all three.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

CODE_DIR = "/code"
DATA_DIR = "/data"
OUT_DIR = "/out"
CACHE_DIR = "/cache"
VAL_DIR = "/val"
TEST_DIR = "/test"
CKPT_DIR = "/ckpt"
EVAL_OUT_DIR = "/eval-out"
TRAINER_HOME = "/opt/autoresearch/trainer"  # fixed files baked into the trainer image

CHECKPOINT_FILE = "model.safetensors"
RUN_JSON_FILE = "run.json"
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class RunPaths:
    """The host folder of one run and its fixed sub-folders."""

    root: Path

    @property
    def code(self) -> Path:
        return self.root / "code"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    @property
    def eval_out(self) -> Path:
        return self.root / "eval"

    @property
    def train_log(self) -> Path:
        return self.root / "train.log"

    @property
    def eval_log(self) -> Path:
        return self.root / "eval.log"


@dataclass(frozen=True)
class TrainRequest:
    run_id: str
    proposal_id: str
    paths: RunPaths
    seed: int
    wall_clock_s: int
    preset: Literal["full", "tiny"]
    device: Literal["cpu", "cuda"]


@dataclass(frozen=True)
class EvalRequest:
    run_id: str
    proposal_id: str
    paths: RunPaths
    seed: int  # shuffles the batch order of the evaluation
    timeout_s: int
    device: Literal["cpu", "cuda"]
    # Score the held-out test split in the same pass (the runs that can decide a merge): the sandbox
    # mounts it into the scorer's container only, never where the candidate's code runs.
    score_test: bool = False


@dataclass(frozen=True)
class StepOutcome:
    """How one container ended. `log` is capped at the configured size; `killed_reason` says why the
    sandbox stopped it early (wall clock, output cap), empty if it ended by itself."""

    exit_code: int | None
    timed_out: bool
    oom_killed: bool
    log: str
    log_truncated: bool
    duration_s: float
    killed_reason: str = ""


@dataclass(frozen=True)
class Environment:
    """What the sandbox knows about where runs execute (part of the result's fingerprint)."""

    gpu: str
    driver: str
    environment_hash: str
    cpu: str = ""  # the CPU model, where runs execute on the CPU (gpu "cpu")


@dataclass(frozen=True)
class FixedFiles:
    """The evaluation's fixed files as the trusted scorer hashes them where no candidate runs (the
    trainer image and the data alone): what the worker pins (services/worker/fixed_files.py)."""

    evaluator_version: str
    hashes: Mapping[str, str] = field(default_factory=dict)


class Sandbox(Protocol):
    def train(self, request: TrainRequest) -> StepOutcome: ...

    def evaluate(self, request: EvalRequest) -> StepOutcome: ...

    def environment(self) -> Environment: ...

    def fixed_files(self) -> FixedFiles:
        """The fixed files' hashes and the evaluator version from the trainer image and the data,
        computed with no candidate code anywhere near (the worker pins them before its first run)."""
        ...

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until the sandbox can run steps again (its daemon answers), at most `timeout_s`;
        True if it can. The worker calls it after an infrastructure failure, before more work."""
        ...
