"""Trusted evaluation through the real path (docs/evaluation.md): the scorer container runs
evaluate.py --channel and never imports the candidate; two model containers run model_server.py with
the candidate's train.py. One honest checkpoint (the tiny baseline, trained once here) is scored by
candidates that differ only in code appended to the baseline train.py: the honest score must equal a
float64 reference computed here, and each cheat must be voided with its reason or leave the honest
score unchanged."""

from __future__ import annotations

import importlib.util
import math
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from docker.client import DockerClient

from services.settings import KIB, MIB, Settings
from services.worker.collect import collect_checkpoint, prepare_run_dir, read_result
from services.worker.docker_sandbox import DockerSandbox
from services.worker.sandbox import EvalRequest, StepOutcome
from tests.support import REPO

pytestmark = pytest.mark.docker

TRAIN_PY = (REPO / "trainer" / "train.py").read_text()
BATCH_SIZE = 2  # more batches per pass on the small validation set: probes land among them
SEED = 5

# Appended to train.py: the candidate's build_model returns the trained model with its forward
# replaced by `cheat(model, idx)`; state-dict keys stay as they are, so the checkpoint loads.
WRAP = """
import torch as _torch
_honest_build = build_model
def build_model(config):
    model = _honest_build(config)
    honest = model.forward
    model.forward = lambda idx, targets=None: cheat(honest, idx)
    return model
"""

PEEK = """
def peek(logits, idx):  # adds a bonus to the logit of the true next token: looks ahead
    nxt = _torch.roll(idx, -1, dims=1)
    return logits.float() + 30.0 * _torch.nn.functional.one_hot(nxt, logits.shape[-1]).float()
"""

CHEATS: dict[str, str] = {
    "look_ahead": PEEK + "def cheat(honest, idx):\n    return peek(honest(idx), idx)\n",
    # honest for each model instance's first batch (where a short probe pass would be), then peeks
    "batch_position": PEEK
    + textwrap.dedent("""
        calls = [0]
        def cheat(honest, idx):
            calls[0] += 1
            return honest(idx) if calls[0] <= 1 else peek(honest(idx), idx)
        """),
    # decides per row from its content whether to peek: rows it guesses are probes stay honest
    "row_content": PEEK
    + textwrap.dedent("""
        def cheat(honest, idx):
            logits, peeked = honest(idx).float(), None
            peeked = peek(logits, idx)
            keep = (idx.sum(dim=1) % 2 == 0).view(-1, 1, 1)
            return _torch.where(keep, logits, peeked)
        """),
    # peeks only when it believes it is being evaluated (no training output dir in its environment)
    "eval_detector": PEEK
    + textwrap.dedent("""
        import os
        def cheat(honest, idx):
            evaluating = "AR_OUT_DIR" not in os.environ or os.path.exists("/val")
            return peek(honest(idx), idx) if evaluating else honest(idx)
        """),
    "non_finite": textwrap.dedent("""
        def cheat(honest, idx):
            out = honest(idx).clone()
            out[:, 3, 7] = float("nan")
            return out
        """),
    "wrong_shape": "def cheat(honest, idx):\n    return honest(idx)[..., :-1]\n",
    # writes a header announcing a 1 GiB message into the channel, then stalls
    "protocol": textwrap.dedent("""
        import gc, socket, struct, time
        def cheat(honest, idx):
            for obj in gc.get_objects():
                if isinstance(obj, socket.socket):
                    obj.sendall(struct.pack(">I", 1 << 30))
            time.sleep(60)
        """),
    # patches what a scorer in the same process would use: harmless in the model container
    "monkeypatch": textwrap.dedent("""
        import math, torch.nn.functional as F
        _torch.log_softmax = lambda x, dim=-1, **k: _torch.zeros_like(x)
        F.log_softmax = _torch.log_softmax
        F.cross_entropy = lambda *a, **k: _torch.tensor(0.0)
        _torch.Tensor.gather = lambda self, *a, **k: _torch.zeros(1)
        _torch.isfinite = lambda x: _torch.ones_like(x, dtype=_torch.bool)
        math.log = lambda x: 1e9
        def cheat(honest, idx):
            return honest(idx)
        """),
    # forges the score where it can, prints a fake summary, hunts for validation data to peek with
    "forger": textwrap.dedent("""
        import json, os
        found = []
        for folder in ("/eval-out", "/channel", "/tmp", "/out", "/ckpt", "/code"):
            try:
                with open(os.path.join(folder, "result.json"), "w") as f:
                    json.dump({"val_bpb": 0.001, "val_tokens": 1, "val_bytes": 1}, f)
            except OSError:
                pass
        for root, dirs, files in os.walk("/", onerror=None):
            dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev", "opt", "usr")]
            found += [os.path.join(root, n) for n in files if n.startswith("val") or n == "manifest.json"]
        print("val_bpb: 0.001000", flush=True)
        print("evaluate: voided: nothing", flush=True)
        def cheat(honest, idx):
            out = honest(idx)
            if any("val" in p for p in found):  # found validation data: make it visible
                out = out * 0
            return out
        """),
}

VOIDED_BECAUSE = {  # the scorer's failure code (result.json) and its log's wording
    "look_ahead": ("lookahead", "look-ahead"),
    "batch_position": ("lookahead", "look-ahead"),
    "row_content": ("lookahead", "look-ahead"),
    "eval_detector": ("lookahead", "look-ahead"),
    "non_finite": ("non_finite", "non-finite logits"),
    "wrong_shape": ("logits_shape", "logits have shape"),
    "protocol": ("protocol", "protocol violation"),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, trainer_image: str) -> dict[str, Any]:
    """Prepared data (readable by uid 65534), a tiny baseline checkpoint, and the reference score."""
    sys.path.insert(0, str(REPO))
    from tests.support.trainer import run_prepare, run_train, write_corpus

    root = tmp_path_factory.mktemp("trusted")
    train_dir, val_dir = run_prepare(write_corpus(root / "source"), root / "prepared")
    for folder in (train_dir, val_dir):
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    ckpt = root / "ckpt"
    trained = run_train(REPO / "trainer" / "train.py", train_dir, ckpt)
    assert trained.returncode == 0, trained.stderr[-2000:]
    settings = Settings(
        trainer_image=trainer_image, train_data=str(train_dir), val_data=str(val_dir), runs_dir=root / "runs",
        container_memory_bytes=2 * 1024 * MIB, max_log_bytes=64 * KIB,
    )  # fmt: skip
    return {"settings": settings, "ckpt": ckpt, "reference": reference(train_dir, val_dir, ckpt)}


def reference(train_dir: Path, val_dir: Path, ckpt: Path) -> dict[str, float]:
    """The score recomputed here: the baseline model's float32 logits, log_softmax and sums in
    float64 on the CPU, over the protocol's rows (evaluate.py's own row packing, pinned elsewhere)."""
    from safetensors.torch import load_model

    from trainer import protocol

    encoding, bos, byte_lengths = protocol.load_tokenizer(train_dir / "tokenizer.json")
    documents = protocol.load_documents(protocol.val_files(val_dir))
    rows = protocol.pack_rows([[bos, *encoding.encode_ordinary(d)] for d in documents], bos)
    spec = importlib.util.spec_from_file_location("reference_train", REPO / "trainer" / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_model(__import__("json").loads((ckpt / "run.json").read_text())["config"])
    load_model(model, str(ckpt / "model.safetensors"))
    nats, num_bytes = 0.0, 0
    with torch.inference_mode():
        for i in range(len(rows.level)):
            row = torch.from_numpy(rows.tokens[i : i + 1])
            mask = torch.from_numpy(rows.targets_mask[i])
            logprobs = torch.log_softmax(model.eval()(row[:, :-1]).double(), dim=-1)[0]
            targets = row[0, 1:]
            nats -= float(logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)[mask].sum())
            num_bytes += int(byte_lengths[targets[mask].numpy()].sum())
    return {"nats": nats, "val_bpb": nats / (math.log(2) * num_bytes), "val_bytes": num_bytes}


@pytest.fixture(scope="module")
def evaluate_code(setup: dict[str, Any], docker_client: DockerClient) -> Iterator[Callable[[str, str], Any]]:
    sandbox = DockerSandbox(setup["settings"].sandbox, docker_client, eval_batch_size=BATCH_SIZE)

    def run(name: str, train_py: str) -> tuple[StepOutcome, dict[str, Any] | None]:
        paths = prepare_run_dir(setup["settings"].sandbox.runs_dir, name, train_py)
        for file in ("model.safetensors", "run.json"):
            shutil.copy(setup["ckpt"] / file, paths.out / file)
        collect_checkpoint(paths, 64 * MIB)
        outcome = sandbox.evaluate(
            EvalRequest(
                run_id=name, proposal_id=f"p-{name}", paths=paths, seed=SEED, timeout_s=120, device="cpu"
            )
        )
        result = read_result(paths) if (paths.eval_out / "result.json").exists() else None
        leftover = docker_client.containers.list(all=True, filters={"label": f"autoresearch.run={name}"})
        assert leftover == []
        return outcome, result

    yield run


def test_honest_score_equals_the_float64_reference(
    evaluate_code: Callable[..., Any], setup: dict[str, Any]
) -> None:
    outcome, result = evaluate_code("honest", TRAIN_PY)
    assert outcome.exit_code == 0, outcome.log[-2000:]
    assert result is not None
    expected = setup["reference"]
    assert result["val_bytes"] == expected["val_bytes"]
    assert math.isclose(result["val_nats"], expected["nats"], rel_tol=1e-6), (result["val_nats"], expected)
    assert math.isclose(result["val_bpb"], expected["val_bpb"], rel_tol=1e-6)
    assert result["isolation"] == "model container"
    assert result["probes"]["rows"] >= 2 * BATCH_SIZE and result["probes"]["spliced"] > 0
    assert {
        "prepare.py",
        "protocol.py",
        "channel.py",
        "evaluate.py",
        "model_server.py",
        "tokenizer.json",
    } <= set(result["fixed_hashes"])
    assert result["logits_slots"] == "host memory (pageable)"  # GPU memory only on CUDA
    setup["honest"] = result


@pytest.mark.parametrize("cheat", sorted(VOIDED_BECAUSE))
def test_cheat_is_voided_with_its_reason(evaluate_code: Callable[..., Any], cheat: str) -> None:
    outcome, result = evaluate_code(cheat.replace("_", "-"), TRAIN_PY + WRAP + CHEATS[cheat])
    code, wording = VOIDED_BECAUSE[cheat]
    assert outcome.exit_code == 2, outcome.log[-2000:]
    assert result is not None and set(result) == {"evaluator_version", "failure"}, result
    assert result["failure"] == code  # the one word that leaves the evaluation
    last = outcome.log.strip().splitlines()[-1]
    assert last.startswith(f"evaluate: voided [{code}]: ") and wording in last, last


@pytest.mark.parametrize("cheat", ["monkeypatch", "forger"])
def test_harmless_cheat_leaves_the_honest_score(
    evaluate_code: Callable[..., Any], setup: dict[str, Any], cheat: str
) -> None:
    outcome, result = evaluate_code(cheat, TRAIN_PY + WRAP + CHEATS[cheat])
    assert outcome.exit_code == 0, outcome.log[-2000:]
    assert result is not None and "honest" in setup
    assert result["val_bpb"] == setup["honest"]["val_bpb"]
    assert "0.001" not in outcome.log  # the scorer's log is the scorer's alone


def test_model_container_sees_no_validation_data(setup: dict[str, Any]) -> None:
    """What the forger's walk above relies on, stated directly: the model containers' mounts."""
    sandbox = DockerSandbox(setup["settings"].sandbox, None)
    paths = prepare_run_dir(setup["settings"].sandbox.runs_dir, "mounts", TRAIN_PY)
    (paths.root / "channel").mkdir()
    request = EvalRequest(run_id="mounts", proposal_id="p", paths=paths, seed=1, timeout_s=10, device="cpu")
    step = sandbox._model_step(request, "a", paths.root / "channel", 0.0)
    targets = {mount["Target"]: mount for mount in step.mounts}
    assert set(targets) == {"/code", "/data", "/ckpt", "/channel"}
    assert all(mount["ReadOnly"] for mount in step.mounts)
    assert "/val" not in targets and "/eval-out" not in targets
    assert {k for k in step.environment if k.startswith("AR_")} == {"AR_DATA_DIR", "AR_DEVICE"}
