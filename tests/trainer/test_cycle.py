"""The full tiny cycle on the CPU (prepare -> train -> evaluate), as the service's CPU stack runs it,
with the one-line proposals docs/trainer.md names: one clearly better, one clearly worse."""

from __future__ import annotations

import json
import time

from tests.support.trainer import patched_train_py, run_evaluate, run_prepare, run_train, write_corpus

IMPROVEMENT = {"TINY_LR": 1.0}  # the baseline's learning rates are too low for 60 steps
REGRESSION = {"TINY_STEPS": 15}  # far too few steps


def score(tmp_path, train_dir, val_dir, name: str, **constants) -> tuple[float, float]:
    train_py = patched_train_py(tmp_path / name, **constants)
    started = time.time()
    trained = run_train(train_py, train_dir, tmp_path / name / "out")
    train_s = time.time() - started
    assert trained.returncode == 0, trained.stderr
    scored = run_evaluate(
        train_py, tmp_path / name / "out", train_dir, val_dir, tmp_path / name / "result.json"
    )
    assert scored.returncode == 0, scored.stderr
    return json.loads((tmp_path / name / "result.json").read_text())["val_bpb"], train_s


def test_tiny_cycle_ranks_a_better_and_a_worse_proposal(tmp_path):
    train_dir, val_dir = run_prepare(write_corpus(tmp_path / "source", seed=11), tmp_path / "prepared")
    baseline, baseline_s = score(tmp_path, train_dir, val_dir, "baseline")
    better, _ = score(tmp_path, train_dir, val_dir, "better", **IMPROVEMENT)
    worse, _ = score(tmp_path, train_dir, val_dir, "worse", **REGRESSION)
    assert better < baseline - 0.1, (better, baseline)
    assert worse > baseline + 0.1, (worse, baseline)
    print(f"tiny baseline trained in {baseline_s:.1f} s")  # speed is for bench/, not an assertion
