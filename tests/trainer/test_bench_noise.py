"""bench/trainer_gpu.py's noise mode: planned runs saved one by one, the comment-only edit, and the
sigma / paired-difference summary that --merge writes."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math

import pytest

from tests.support.trainer import REPO

spec = importlib.util.spec_from_file_location("trainer_gpu", REPO / "bench" / "trainer_gpu.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

# arm A over three seeds (sd 0.1), arm B on seeds 0 and 1, 0.01 either side of A
SCORES = {("A", 0): 1.0, ("A", 1): 1.2, ("A", 2): 1.1, ("B", 0): 1.01, ("B", 1): 1.19}


def scored_run(label: str, seed: int) -> dict:
    return {"label": label, "overrides": {}, "seed": seed, "val_bpb": SCORES[(label, seed)], "budget_s": 300.0,
            "startup_s": 30.0 + seed, "mfu_percent": 47.0 + seed, "tokens_per_s": 1.1e6, "num_steps": 1100 + seed,
            "wall_s": 294.0, "within_deadline": True, "gpu": "NVIDIA H200", "device": "nvidia-h200",
            "noop_edit": label == "B", "train_py_sha256": label * 64, "commit": "abc123",
            "command": "python bench/trainer_gpu.py --plan ...", "date": f"2026-12-07T00:0{seed}:00+00:00"}  # fmt: skip


def test_the_noop_edit_changes_the_hash_and_not_the_code(tmp_path):
    original = (REPO / "trainer" / "train.py").read_text()
    edited = bench.patched_train_py({}, tmp_path / "train.py", "B").read_text()
    assert edited != original
    assert ast.dump(ast.parse(edited)) == ast.dump(ast.parse(original))
    assert edited.splitlines()[: len(original.splitlines())] == original.splitlines()  # line numbers kept


def test_plan_runs_in_order_and_saves_each_run(tmp_path):
    calls: list = []

    def run(label, budget, overrides, seed, run_name):
        calls.append(run_name)
        saved = sorted(p.name for p in (tmp_path / "runs").iterdir())
        assert len(saved) == len(calls) - 1  # every earlier run is already on disk
        return scored_run(label, seed)

    args = argparse.Namespace(plan="A:0,B:0,A:1", results=tmp_path, name="trainer-h200")
    bench.run_plan(args, [("A", 300.0, {}), ("B", 300.0, {})], run)
    assert calls == ["A-seed0", "B-seed0", "A-seed1"]
    saved = json.loads((tmp_path / "runs" / "trainer-h200-B-seed0.json").read_text())
    assert saved["label"] == "B" and saved["val_bpb"] == 1.01


@pytest.mark.parametrize("plan", ["C:0", "A:x", "A", "A:0,,B:1"])
def test_plan_rejects_unknown_labels_and_bad_seeds(plan):
    with pytest.raises(SystemExit, match="want LABEL:SEED"):
        bench.parse_plan(plan, ["A", "B"])


CHI2_TABLE = [(0.975, 2, -2 * math.log(0.025)), (0.025, 2, -2 * math.log(0.975)), (0.975, 1, 5.0239),
              (0.025, 1, 0.000982), (0.975, 3, 9.3484)]  # fmt: skip


@pytest.mark.parametrize(("p", "dof", "quantile"), CHI2_TABLE)
def test_chi2_quantiles_match_the_tables(p, dof, quantile):
    assert bench.chi2_quantile(p, dof) == pytest.approx(quantile, rel=1e-3)


def test_noise_summary_compares_pair_differences_with_sqrt2_sigma():
    arm_a = [scored_run("A", seed) for seed in (0, 1, 2)]
    arm_b = [scored_run("B", seed) for seed in (0, 1)] + [{"label": "B", "seed": 2, "train_exit_code": 1}]
    summary = bench.noise_summary(arm_a, arm_b)
    assert summary["sigma_bpb"] == pytest.approx(0.1) and summary["sigma_dof"] == 2
    low, high = summary["sigma_ci95_bpb"]
    assert low == pytest.approx(0.1 * math.sqrt(2 / (-2 * math.log(0.025))), rel=1e-6) and high > 0.6
    assert [p["seed"] for p in summary["pairs"]] == [0, 1]  # seed 2 of B was not scored
    assert [p["diff_bpb"] for p in summary["pairs"]] == pytest.approx([-0.01, 0.01])
    assert summary["diff_rms_bpb"] == pytest.approx(0.01) and summary["diff_rms_dof"] == 2
    assert summary["paired_over_unpaired"] == pytest.approx(0.01 / (math.sqrt(2) * 0.1))
    assert summary["correlation_estimate"] == pytest.approx(1 - 0.01**2 / (2 * 0.1**2))
    assert summary["sigma_pooled_bpb"] == pytest.approx(math.sqrt((0.02 + 2 * 0.09**2) / 3))


def test_noise_summary_needs_two_scored_runs_of_a():
    with pytest.raises(SystemExit, match="at least 2"):
        bench.noise_summary([scored_run("A", 0)], [scored_run("B", 0)])


def test_merge_writes_the_headline_and_the_noise_file(tmp_path):
    (tmp_path / "runs").mkdir()
    for label, seed in SCORES:
        path = tmp_path / "runs" / f"trainer-h200-{label}-seed{seed}.json"
        path.write_text(json.dumps(scored_run(label, seed)))
    bench.merge_noise(tmp_path, "trainer-h200", "A", "B", "python bench/trainer_gpu.py --merge A,B")
    headline = json.loads((tmp_path / "trainer-h200.json").read_text())
    assert headline["val_bpb_seeds"] == [1.0, 1.2, 1.1] and headline["val_bpb_mean"] == pytest.approx(1.1)
    assert headline["startup_s_max"] == 32.0 and headline["mfu_percent"] == pytest.approx(48.0)
    assert headline["gpu"] == "NVIDIA H200" and headline["commit"] == "abc123" and len(headline["runs"]) == 3
    noise = json.loads((tmp_path / "gpu-noise.json").read_text())
    assert noise["arms"]["B"]["noop_edit"] and noise["arms"]["B"]["seeds"] == [0, 1]
    assert noise["arms"]["A"]["train_py_sha256"] != noise["arms"]["B"]["train_py_sha256"]
    assert noise["sigma_bpb"] == pytest.approx(0.1) and len(noise["pairs"]) == 2
    assert noise["commands"] == [
        "python bench/trainer_gpu.py --plan ...",
        "python bench/trainer_gpu.py --merge A,B",
    ]


def test_merge_of_one_label_writes_the_headline_and_leaves_the_noise_file(tmp_path):
    (tmp_path / "runs").mkdir()
    for seed in (0, 1, 2):
        path = tmp_path / "runs" / f"trainer-h200-A-seed{seed}.json"
        path.write_text(json.dumps(scored_run("A", seed)))
    (tmp_path / "gpu-noise.json").write_text("{}\n")
    bench.merge_noise(tmp_path, "trainer-h200", "A", None, "python bench/trainer_gpu.py --merge A")
    headline = json.loads((tmp_path / "trainer-h200.json").read_text())
    assert headline["val_bpb_seeds"] == [1.0, 1.2, 1.1] and headline["startup_s_max"] == 32.0
    assert (tmp_path / "gpu-noise.json").read_text() == "{}\n"
