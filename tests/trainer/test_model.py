"""The baseline model: causality, checkpoint round trip, compiled regions, optimizer pieces."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_model, save_model

from tests.trainer.helpers import REPO
from trainer import train

CONFIG = dict(vocab_size=300, depth=4, model_dim=64, head_dim=16, mlp_ratio=4, value_embeds=1,
              logit_softcap=15.0, rope_base=10000.0, rope_max_len=4096)  # fmt: skip


def random_model(seed: int = 0) -> train.GPT:
    """A model whose every weight is random (the real init zeroes some, which would hide leaks)."""
    torch.manual_seed(seed)
    model = train.build_model(CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def test_model_is_causal():
    model = random_model()
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 300, (2, 96), generator=generator)
    with torch.no_grad():
        reference = model(tokens)
        assert reference.shape == (2, 96, 300) and reference.dtype == torch.float32
        for t in (0, 17, 63, 94):
            changed = tokens.clone()
            changed[:, t + 1 :] = torch.randint(0, 300, (2, 95 - t), generator=generator)
            logits = model(changed)
            torch.testing.assert_close(logits[:, : t + 1], reference[:, : t + 1], rtol=0, atol=1e-5)
            assert not torch.allclose(logits[:, t + 1 :], reference[:, t + 1 :])  # later positions do see it


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    model = random_model(seed=2)
    save_model(model, str(tmp_path / "model.safetensors"))
    torch.manual_seed(3)
    restored = train.build_model(CONFIG).eval()
    missing, unexpected = load_model(restored, str(tmp_path / "model.safetensors"), strict=True)
    assert not missing and not unexpected
    tokens = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        assert torch.equal(model(tokens), restored(tokens))


def test_importing_train_py_trains_nothing(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import trainer.train as t; print(callable(t.build_model))"],
        cwd=REPO, capture_output=True, text=True, env={"AR_OUT_DIR": str(tmp_path / "out"), "AR_PRESET": "tiny"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True\n"
    assert not (tmp_path / "out").exists()


# Dynamo itself reads .grad of the non-leaf block inputs while tracing, which warns; harmless here.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_compiled_blocks_share_graphs_and_keep_plain_keys():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = train.build_model(CONFIG)
    for module in (*model.blocks, model.head):  # what compile_regions does, with a quick backend
        module.compile(backend="aot_eager", dynamic=False, fullgraph=True)
    tokens = torch.randint(0, 300, (2, 32))
    for _ in range(2):
        model(tokens, tokens).backward()
    # blocks with and without a value embedding, and the head: three graphs for four blocks
    assert counters["stats"]["unique_graphs"] == 3
    assert "blocks.0.attn.qkv.weight" in model.state_dict()
    torch._dynamo.reset()


def test_orthogonalize_gives_near_orthogonal_updates():
    G = torch.randn(3, 64, 32)
    singular_values = torch.linalg.svdvals(train.orthogonalize(G).float())
    assert singular_values.min() > 0.5 and singular_values.max() < 1.3


def test_muon_treats_qkv_as_three_matrices():
    model = train.build_model(CONFIG)
    qkv = model.blocks[0].attn.qkv.weight
    assert train.Muon.blocks(qkv, qkv).shape == (3, 64, 64)


@pytest.mark.parametrize(
    ("step", "progress", "expected"),
    [(0, 0.0, 0.1), (9, 0.0, 1.0), (50, 0.5, 1.0), (50, 1 - train.WARMDOWN_FRAC / 2, 0.5), (50, 1.0, 0.0)],
)
def test_learning_rate_schedule(step, progress, expected):
    assert train.lr_multiplier(step, progress) == pytest.approx(expected)


def test_out_of_memory_is_recognised_through_wrapping_exceptions():
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("compile failed") from inner
    except RuntimeError as outer:
        assert train.is_out_of_memory(outer)
    assert not train.is_out_of_memory(ValueError("x"))
