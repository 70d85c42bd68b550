"""bench/trainer_gpu.py --seeds: every variant with the first seed, the best with the rest, one summary."""

from __future__ import annotations

import argparse
import importlib.util
import json

import pytest

from tests.support.trainer import REPO

spec = importlib.util.spec_from_file_location("trainer_gpu", REPO / "bench" / "trainer_gpu.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

# What a scored run looks like to the summary (run_variant's keys); val_bpb depends on label and seed.
SCORES = {("a", 0): 1.30, ("b", 0): 1.25, ("b", 1): 1.26, ("b", 2): 1.24}


def fake_run(calls: list):
    def run(label, budget, overrides, seed, run_name):
        calls.append((label, seed, run_name))
        if label == "broken":
            return {"label": label, "overrides": overrides, "seed": seed, "wall_s": 10.0,
                    "within_deadline": True, "train_exit_code": 1}  # fmt: skip
        return {"label": label, "overrides": overrides, "seed": seed, "val_bpb": SCORES[(label, seed)],
                "startup_s": 20.0 + seed, "mfu_percent": 50.0 + seed, "tokens_per_s": 1e6, "num_steps": 1000,
                "wall_s": 290.0, "within_deadline": True, "gpu": "NVIDIA H200"}  # fmt: skip

    return run


def test_seeds_run_the_best_variant_again_and_summarize_it(tmp_path):
    calls: list = []
    args = argparse.Namespace(seeds="0,1,2", results=tmp_path, name="trainer-h200")
    variants = [("a", 300.0, {}), ("broken", 300.0, {"X": "1"}), ("b", 300.0, {"Y": "2"})]
    bench.run_seeds(args, variants, fake_run(calls))
    assert calls == [("a", 0, "a-seed0"), ("broken", 0, "broken-seed0"), ("b", 0, "b-seed0"),
                     ("b", 1, "b-seed1"), ("b", 2, "b-seed2")]  # fmt: skip
    summary = json.loads((tmp_path / "trainer-h200.json").read_text())
    assert summary["label"] == "b" and summary["overrides"] == {"Y": "2"}
    assert summary["val_bpb_seeds"] == [1.25, 1.26, 1.24]
    assert abs(summary["val_bpb_mean"] - 1.25) < 1e-12 and abs(summary["val_bpb_std"] - 0.01) < 1e-12
    assert summary["startup_s_max"] == 22.0 and summary["mfu_percent"] == 51.0
    assert summary["gpu"] == "NVIDIA H200" and len(summary["runs"]) == 3
    screen = json.loads((tmp_path / "trainer-h200-screen.json").read_text())
    assert [r["label"] for r in screen] == ["a", "broken", "b"]


def test_seeds_stop_when_no_variant_was_scored(tmp_path):
    args = argparse.Namespace(seeds="0,1", results=tmp_path, name="trainer-h200")
    with pytest.raises(SystemExit, match="no variant was scored"):
        bench.run_seeds(args, [("broken", 300.0, {})], fake_run([]))
    assert not (tmp_path / "trainer-h200.json").exists()
