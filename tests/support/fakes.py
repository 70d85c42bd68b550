"""A fake sandbox behind the `Sandbox` protocol, for testing service logic without Docker.

It never executes the candidate. It reads directives from the candidate's text instead:
    FAKE_SCORE = 1.23     the evaluation's val_bpb (plus FAKE_DELTA, if given), plus a small
                          seed-dependent wobble (±0.0001) unless FAKE_IGNORES_SEED = True
    FAKE_EXIT = 1         the training exit code (3 = CUDA OOM, 4 = non-finite loss)
    FAKE_TIMEOUT = True   training hits the wall clock
    FAKE_OOM = True       the container is OOM-killed
    FAKE_INFRA = N        the first N training attempts fail as infrastructure (daemon down)
    FAKE_HOLD = /a/path   training blocks while that file exists (at most 60 s): a run in flight
    FAKE_FIXED = {...}    the fixed_hashes its result.json reports (JSON), as a forging candidate's
                          would; otherwise the sandbox's own `fixed` ones (`test/...` only when the
                          request scores the held-out test split)
    FAKE_TEST_SCORE = 1.5 the test_bpb of an evaluation that scores the test split (plus a seed wobble
                          of its own); otherwise the val score + TEST_OFFSET: an honest model gains
                          on test what it gains on validation, a memoriser does not
and writes outputs with the same file names the real trainer and evaluator write.
"""

import json
import os
import re
import time
from dataclasses import dataclass, field

from services.errors import SandboxUnavailable
from services.worker.sandbox import (
    CHECKPOINT_FILE,
    RESULT_FILE,
    RUN_JSON_FILE,
    Environment,
    EvalRequest,
    FixedFiles,
    StepOutcome,
    TrainRequest,
)

HOLD_MAX_S = 60
TEST_OFFSET = 0.01  # an honest model's test_bpb − val_bpb (the test books are a little harder)


def directive(text: str, name: str, default: str | None = None) -> str | None:
    match = re.search(rf"^{name}\s*=\s*(.+?)\s*$", text, re.MULTILINE)
    return match.group(1) if match else default


def seed_wobble(seed: int) -> float:
    """A deterministic, seed-dependent offset in [-0.0001, 0.0001]."""
    return ((seed * 2654435761) % 2001 - 1000) * 1e-7


def test_wobble(seed: int) -> float:
    """The test split's own seed-dependent offset in [-0.00005, 0.00005] (not the val wobble's)."""
    return ((seed * 40503 + 17) % 1001 - 500) * 1e-7


@dataclass
class FakeSandbox:
    trained: list[TrainRequest] = field(default_factory=list)
    evaluated: list[EvalRequest] = field(default_factory=list)
    infra_failures: dict[str, int] = field(default_factory=dict)
    # What its trusted probe finds in its image and data (and its honest evaluations report).
    fixed: FixedFiles = field(default_factory=lambda: FixedFiles("fake/1", {"evaluate.py": "e" * 64}))

    def train(self, request: TrainRequest) -> StepOutcome:
        text = (request.paths.code / "train.py").read_text()
        self.trained.append(request)
        failures = self.infra_failures.get(request.proposal_id, 0)
        if failures < int(directive(text, "FAKE_INFRA", "0") or 0):
            self.infra_failures[request.proposal_id] = failures + 1
            raise SandboxUnavailable("fake: Docker daemon is not answering")
        log = f"step 1/10 loss 4.2\nseed {request.seed}\n"
        hold = directive(text, "FAKE_HOLD")
        deadline = time.monotonic() + HOLD_MAX_S
        while hold and os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.05)
        if directive(text, "FAKE_TIMEOUT"):
            return StepOutcome(None, True, False, log + "still training...\n", False, request.wall_clock_s)
        if directive(text, "FAKE_OOM"):
            return StepOutcome(137, False, True, log, False, 1.0)
        exit_code = int(directive(text, "FAKE_EXIT", "0") or 0)
        if exit_code:
            return StepOutcome(exit_code, False, False, log + f"fake failure {exit_code}\n", False, 1.0)
        (request.paths.out / CHECKPOINT_FILE).write_bytes(b"fake-weights")
        run = {
            "config": {},
            "steps": int(directive(text, "FAKE_STEPS", "10") or 10),
            "max_steps": json.loads(directive(text, "FAKE_MAX_STEPS", "null") or "null"),
            "tokens": 1000,
            "startup_s": 0.1,
            "training_s": 1.0,
            "peak_memory_bytes": 10**9,
            "seed": request.seed,
        }
        (request.paths.out / RUN_JSON_FILE).write_text(json.dumps(run))
        return StepOutcome(0, False, False, log + "done\n", False, 1.0)

    def evaluate(self, request: EvalRequest) -> StepOutcome:
        text = (request.paths.code / "train.py").read_text()
        self.evaluated.append(request)
        score = float(directive(text, "FAKE_SCORE", "1.5") or 1.5)
        score += float(directive(text, "FAKE_DELTA", "0") or 0)
        test = float(directive(text, "FAKE_TEST_SCORE", str(score + TEST_OFFSET)) or 0)
        if not directive(text, "FAKE_IGNORES_SEED"):
            score += seed_wobble(request.seed)
            test += seed_wobble(request.seed) + test_wobble(request.seed)
        honest = {
            k: v for k, v in self.fixed.hashes.items() if request.score_test or not k.startswith("test/")
        }
        result: dict[str, object] = {
            "val_bpb": score,
            "val_tokens": 100,
            "val_bytes": 400,
            "evaluator_version": self.fixed.evaluator_version,
            "fixed_hashes": json.loads(directive(text, "FAKE_FIXED") or json.dumps(honest)),
        }
        if request.score_test:
            result |= {"test_bpb": test, "test_tokens": 110, "test_bytes": 420}
        (request.paths.eval_out / RESULT_FILE).write_text(json.dumps(result))
        return StepOutcome(0, False, False, f"val_bpb: {score:.6f}\n", False, 0.5)

    def environment(self) -> Environment:
        return Environment(gpu="cpu", driver="none", environment_hash="fake-env")

    def fixed_files(self) -> FixedFiles:
        return self.fixed

    def wait_ready(self, timeout_s: float) -> bool:
        return True
