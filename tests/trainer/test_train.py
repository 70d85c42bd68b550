"""train.py as the worker runs it: outputs, determinism, the wall-clock limit, exit codes."""

from __future__ import annotations

import json
import time

from safetensors.torch import load_file

from tests.support.trainer import TRAINER, patched_train_py, run_train
from trainer import train

SUMMARY_KEYS = ("steps", "tokens", "startup_s", "training_s", "peak_memory_bytes", "num_params", "seed")


def test_tiny_run_writes_the_contract_outputs(tiny_checkpoint):
    run = json.loads((tiny_checkpoint / "run.json").read_text())
    for key in ("config", *SUMMARY_KEYS):
        assert key in run, key
    assert run["steps"] == train.TINY_STEPS
    assert run["tokens"] == train.TINY_STEPS * train.TINY_BATCH_ROWS * train.TINY_SEQ_LEN
    assert run["seed"] == 1 and run["preset"] == "tiny"
    weights = load_file(tiny_checkpoint / "model.safetensors")
    model = train.build_model(run["config"])
    assert set(weights) == set(model.state_dict())  # plain keys, no compile prefix


def test_tiny_run_is_deterministic_given_the_seed(tmp_path, prepared, tiny_checkpoint):
    again = run_train(TRAINER / "train.py", prepared[0], tmp_path / "again")
    assert again.returncode == 0, again.stderr
    weights = (tiny_checkpoint / "model.safetensors").read_bytes()
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == weights
    other_seed = run_train(TRAINER / "train.py", prepared[0], tmp_path / "other", AR_SEED="2")
    assert other_seed.returncode == 0, other_seed.stderr
    assert (tmp_path / "other" / "model.safetensors").read_bytes() != weights
    lines = again.stdout.splitlines()
    summary = lines[lines.index("---") + 1 :]
    assert [line.split(":")[0] for line in summary][:3] == ["steps", "tokens", "epochs"]


def test_stops_and_saves_before_the_wall_clock_limit(tmp_path, prepared):
    """The contract, not a speed: whatever the machine's load, the outputs are written before the
    deadline the trainer computes from its budget (the worker kills it there)."""
    endless = patched_train_py(tmp_path, TINY_STEPS=10**9)
    started = time.time()
    result = run_train(endless, prepared[0], tmp_path / "out", AR_WALL_CLOCK_S="20")
    assert result.returncode == 0, result.stderr
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert 1 <= run["steps"] < 10**9
    for name in ("model.safetensors", "run.json"):
        assert (tmp_path / "out" / name).stat().st_mtime < started + 20


def test_deadline_unix_is_trusted_over_the_wall_clock(tmp_path, prepared):
    endless = patched_train_py(tmp_path, TINY_STEPS=10**9)
    deadline = time.time() + 20
    result = run_train(
        endless, prepared[0], tmp_path / "out", AR_WALL_CLOCK_S="3600", AR_DEADLINE_UNIX=str(deadline)
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "model.safetensors").stat().st_mtime < deadline


def test_full_preset_schedules_by_time_and_accumulates_gradients(tmp_path, prepared):
    small = patched_train_py(tmp_path, DEPTH=2, MODEL_DIM=64, HEAD_DIM=32, VALUE_EMBEDS=1, SEQ_LEN=128,
                             DEVICE_BATCH=4, BATCH_ROWS=8)  # fmt: skip
    started = time.time()
    result = run_train(small, prepared[0], tmp_path / "out", AR_PRESET="full", AR_WALL_CLOCK_S="20")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "model.safetensors").stat().st_mtime < started + 20
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    # How many steps fit depends on the machine's load (4 were seen in 14 s beside other suites): the
    # schedule is by time, so the run stops by the clock, not after a step count.
    assert run["steps"] >= 1 and run["hyperparameters"]["max_steps"] is None
    assert run["training_s"] <= 20 - train.SAVE_RESERVE_S
    assert run["tokens"] == run["steps"] * 8 * 128  # BATCH_ROWS 8 in DEVICE_BATCH 4: two micro-batches
    # The time-based warm-down started (from 1.0); how far it got depends on the last steps' speed.
    assert run["final_lr_multiplier"] < 1.0


def test_non_finite_loss_fails_fast_with_exit_code_4(tmp_path, prepared):
    poisoned = patched_train_py(tmp_path, TINY_LR='float("nan")')
    result = run_train(poisoned, prepared[0], tmp_path / "out")
    assert result.returncode == 4
    assert "non-finite training loss" in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_missing_data_is_explained(tmp_path):
    unset = run_train(TRAINER / "train.py", tmp_path, tmp_path / "out", AR_DATA_DIR="")
    assert unset.returncode not in (0, 3, 4)
    assert "set AR_DATA_DIR" in unset.stderr
    empty = run_train(TRAINER / "train.py", tmp_path / "nowhere", tmp_path / "out")
    assert empty.returncode not in (0, 3, 4)
    assert "run prepare.py" in empty.stderr
