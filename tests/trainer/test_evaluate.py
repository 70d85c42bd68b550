"""evaluate.py: bits per byte of a model, its command line, the test split, and bad checkpoints."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.trainer import TRAINER, run_evaluate
from trainer import evaluate, protocol


class FixedLogits(torch.nn.Module):
    """Every position predicts probabilities (0.1, 0.2, 0.3, 0.4) over a 4-token vocabulary."""

    def forward(self, idx):
        return torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0])).expand(*idx.shape, 4)


def test_bits_per_byte_matches_hand_computation():
    bos = 3
    byte_lengths = np.array([1, 2, 3, 0])
    rows = protocol.pack_rows([[bos, 0, 1, 2], [bos, 1]], bos, row_tokens=8)
    scored = evaluate.score_rows(FixedLogits(), rows, byte_lengths, batch_size=2, device="cpu", seed=0)
    # targets 0, 1, 2 (first document) and 1 (second); the second BOS and the padding do not count
    nats = -(math.log(0.1) + math.log(0.2) + math.log(0.3) + math.log(0.2))
    assert scored["val_tokens"] == 4
    assert scored["val_bytes"] == 1 + 2 + 3 + 2
    # log_softmax runs in float32 (the protocol), so agreement is to float32 precision
    assert scored["nats"] == pytest.approx(nats, rel=1e-6)
    assert scored["val_bpb"] == pytest.approx(nats / (math.log(2) * 8), rel=1e-6)
    assert scored["val_bpb"] == pytest.approx(1.212843, abs=1e-6)  # by hand: 6.725434 / 5.545177


def test_test_rows_are_packed_apart_and_summed_apart_in_mixed_batches():
    """Validation and test documents never share a row; their rows share batches (shuffled together),
    and each split's sums are its own: the same as scoring each split alone."""
    bos = 3
    byte_lengths = np.array([1, 2, 3, 0])
    val = protocol.pack_rows([[bos, 0, 1, 2], [bos, 1]], bos, row_tokens=8)
    test = protocol.pack_rows([[bos, 2, 2], [bos, 0, 0, 0, 0, 0, 0]], bos, row_tokens=8)
    rows = protocol.join_rows(val, test)
    assert rows.split.tolist() == [0, 1, 1]  # [2, 2] and the 7-token document do not share a row
    assert rows.tokens[1].tolist() == [bos, 2, 2, bos, bos, bos, bos, bos]  # the rest of the row is padding
    batches = protocol.batch_order(rows.level, batch_size=2, seed=0)
    assert any(len(set(rows.split[b].tolist())) == 2 for b in batches)  # a batch holds both splits
    both = evaluate.score_rows(FixedLogits(), rows, byte_lengths, batch_size=2, device="cpu", seed=0)
    alone = evaluate.score_rows(FixedLogits(), test, byte_lengths, batch_size=2, device="cpu", seed=0)
    val_alone = evaluate.score_rows(FixedLogits(), val, byte_lengths, batch_size=2, device="cpu", seed=0)
    assert (both["test_tokens"], both["test_bytes"]) == (alone["val_tokens"], alone["val_bytes"]) == (8, 12)
    assert both["test_nats"] == pytest.approx(alone["nats"], rel=1e-12)
    assert both["test_bpb"] == pytest.approx(alone["val_bpb"], rel=1e-12)
    assert (both["nats"], both["val_bpb"]) == (val_alone["nats"], val_alone["val_bpb"])
    assert "test_bpb" not in val_alone  # no test rows: no test fields


FAKE_TRAIN_PY = """
import torch

class Fake(torch.nn.Module):
    def __init__(self, vocab_size, mode):
        super().__init__()
        self.vocab_size, self.mode = vocab_size, mode
        self.scale = torch.nn.Parameter(torch.zeros(()))

    def forward(self, idx):
        logits = self.scale * torch.ones(*idx.shape, self.vocab_size)  # zeros: a uniform prediction
        if self.mode == "nan":
            logits = logits + float("nan")
        if self.mode == "short":
            logits = logits[..., :-1]
        return logits

def build_model(config):
    return Fake(config["vocab_size"], config.get("mode", "uniform"))
"""


def fake_checkpoint(tmp_path: Path, mode: str = "uniform", vocab_size: int = 512) -> tuple[Path, Path]:
    from safetensors.torch import save_model

    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN_PY)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    save_model(torch.nn.Module(), str(checkpoint / "empty.safetensors"))  # unused; proves nothing leaks
    module = torch.nn.Module()
    module.scale = torch.nn.Parameter(torch.zeros(()))
    save_model(module, str(checkpoint / "model.safetensors"))
    (checkpoint / "run.json").write_text(json.dumps({"config": {"vocab_size": vocab_size, "mode": mode}}))
    return tmp_path / "fake_train.py", checkpoint


def test_uniform_model_scores_log2_vocab_per_token(tmp_path, prepared):
    train_py, checkpoint = fake_checkpoint(tmp_path)
    result = run_evaluate(train_py, checkpoint, *prepared, tmp_path / "result.json", "--seed", "7")
    assert result.returncode == 0, result.stderr
    scored = json.loads((tmp_path / "result.json").read_text())
    documents = protocol.load_documents(protocol.val_files(prepared[1]))
    assert scored["num_documents"] == len(documents)
    assert scored["val_bytes"] == sum(len(d.encode("utf-8")) for d in documents)
    assert scored["val_bpb"] == pytest.approx(
        scored["val_tokens"] * math.log2(512) / scored["val_bytes"], rel=1e-6
    )
    assert scored["evaluator_version"] == evaluate.EVALUATOR_VERSION
    assert set(scored["fixed_hashes"]) >= {"prepare.py", "evaluate.py", "tokenizer.json", "token_bytes.npy",
                                           "val/val.jsonl"}  # fmt: skip
    assert scored["eval_s"] >= 0 and scored["seed"] == 7


def test_hash_only_prints_what_a_scored_run_records(tmp_path, prepared):
    """`--hash-only` (what the worker pins at start, with no candidate anywhere) gives the very
    hashes and evaluator version that a scored run writes into result.json."""
    train_py, checkpoint = fake_checkpoint(tmp_path)
    scored = run_evaluate(train_py, checkpoint, *prepared, tmp_path / "result.json", "--max-docs", "1")
    assert scored.returncode == 0, scored.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    probe = subprocess.run(
        [sys.executable, str(TRAINER / "evaluate.py"), "--hash-only", "--data-dir", str(prepared[0]),
         "--val-dir", str(prepared[1])], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    pinned = json.loads(probe.stdout.strip().splitlines()[-1])
    assert pinned == {
        "evaluator_version": result["evaluator_version"],
        "fixed_hashes": result["fixed_hashes"],
    }
    assert {*evaluate.FIXED_FILES, "tokenizer.json", "val/val.jsonl"} <= set(pinned["fixed_hashes"])


def test_test_split_scores_equal_a_separate_scoring_of_the_test_books(
    tmp_path, prepared, prepared_test, tiny_checkpoint
):
    """--test-dir: the test books scored in the pass that scores validation give what scoring them
    alone as a validation set gives; val_bpb is that of a run without them; the test files are hashed
    (and --hash-only with --test-dir gives the same hashes); nothing about the test split is printed."""
    train_dir, val_dir = prepared
    as_val = tmp_path / "test-as-val"
    as_val.mkdir()
    for name in ("test.jsonl", "manifest.json"):
        (as_val / name).write_bytes((prepared_test / name).read_bytes())
    runs = {
        "both": (val_dir, "--test-dir", str(prepared_test)),
        "val": (val_dir,),
        "test_alone": (as_val,),
    }
    results = {}
    for name, (folder, *extra) in runs.items():
        done = run_evaluate(
            TRAINER / "train.py", tiny_checkpoint, train_dir, folder, tmp_path / f"{name}.json", "--seed", "4",
            "--batch-size", "2", *extra,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        results[name] = (json.loads((tmp_path / f"{name}.json").read_text()), done.stdout)
    (both, stdout), (val, _), (alone, _) = results["both"], results["val"], results["test_alone"]
    assert both["test_tokens"] == alone["val_tokens"] and both["test_bytes"] == alone["val_bytes"]
    assert both["test_bpb"] == pytest.approx(alone["val_bpb"], rel=1e-6)
    assert both["test_documents"] == alone["num_documents"]
    assert both["val_bpb"] == pytest.approx(val["val_bpb"], rel=1e-6)
    assert (both["val_tokens"], both["val_bytes"]) == (val["val_tokens"], val["val_bytes"])
    assert both["test_bpb"] != both["val_bpb"]
    assert "test_bpb" not in val
    hashes = both["fixed_hashes"]
    assert hashes["test/test.jsonl"] == alone["fixed_hashes"]["val/test.jsonl"]
    assert hashes["test/manifest.json"] == alone["fixed_hashes"]["val/manifest.json"]
    assert {k: v for k, v in hashes.items() if not k.startswith("test/")} == val["fixed_hashes"]
    probe = subprocess.run(
        [sys.executable, str(TRAINER / "evaluate.py"), "--hash-only", "--data-dir", str(train_dir),
         "--val-dir", str(val_dir), "--test-dir", str(prepared_test)], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert json.loads(probe.stdout.strip().splitlines()[-1])["fixed_hashes"] == hashes
    assert "test" not in stdout and f"{both['test_bpb']:.6f}" not in stdout


def test_max_docs_scores_a_prefix(tmp_path, prepared, tiny_checkpoint):
    result = run_evaluate(
        TRAINER / "train.py", tiny_checkpoint, *prepared, tmp_path / "r.json", "--max-docs", "2"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["num_documents"] == 2


def bad_checkpoint_message(tmp_path, prepared, capsys, train_py, checkpoint, failure: str) -> str:
    """The scorer's log line; result.json holds no score, only the failure's fixed code."""
    code = evaluate.main(["--in-process", "--train-py", str(train_py), "--checkpoint", str(checkpoint), "--data-dir",
                          str(prepared[0]), "--val-dir", str(prepared[1]), "--out", str(tmp_path / "r.json"),
                          "--device", "cpu", "--max-docs", "2"])  # fmt: skip
    assert code == 2
    result = json.loads((tmp_path / "r.json").read_text())
    assert result == {"evaluator_version": evaluate.EVALUATOR_VERSION, "failure": failure}
    err = capsys.readouterr().err
    assert f"[{failure}]" in err
    return err


def test_missing_weights_are_a_bad_checkpoint(tmp_path, prepared, capsys):
    train_py, checkpoint = fake_checkpoint(tmp_path)
    (checkpoint / "model.safetensors").unlink()
    assert "missing" in bad_checkpoint_message(tmp_path, prepared, capsys, train_py, checkpoint, "checkpoint")


def test_weights_of_the_wrong_shape_are_a_bad_checkpoint(tmp_path, prepared, capsys, tiny_checkpoint):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes((tiny_checkpoint / "model.safetensors").read_bytes())
    run = json.loads((tiny_checkpoint / "run.json").read_text())
    run["config"]["model_dim"] *= 2
    (checkpoint / "run.json").write_text(json.dumps(run))
    message = bad_checkpoint_message(
        tmp_path, prepared, capsys, TRAINER / "train.py", checkpoint, "model_build"
    )
    assert "does not fit" in message


def test_non_finite_logits_are_a_bad_checkpoint(tmp_path, prepared, capsys):
    train_py, checkpoint = fake_checkpoint(tmp_path, mode="nan")
    assert "non-finite" in bad_checkpoint_message(
        tmp_path, prepared, capsys, train_py, checkpoint, "non_finite"
    )


def test_logits_of_the_wrong_shape_are_a_bad_checkpoint(tmp_path, prepared, capsys):
    train_py, checkpoint = fake_checkpoint(tmp_path, mode="short")
    assert "shape" in bad_checkpoint_message(tmp_path, prepared, capsys, train_py, checkpoint, "logits_shape")
