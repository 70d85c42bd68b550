"""The baseline model: causality, checkpoint round trip, compiled regions, optimizer pieces."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_model, save_model

from tests.support.trainer import REPO
from trainer import train

CONFIG = dict(vocab_size=300, depth=4, model_dim=64, head_dim=16, mlp_ratio=4, value_embeds=1,
              logit_softcap=15.0, rope_base=10000.0, rope_max_len=4096)  # fmt: skip


BIGRAM_CONFIG = {**CONFIG, "bigram_rows": 97}
UNET_CONFIG = {**CONFIG, "depth": 6, "value_embeds": 3, "unet": True}


def random_model(seed: int = 0, config: dict = CONFIG) -> train.GPT:
    """A model whose every weight is random (the real init zeroes some, which would hide leaks)."""
    torch.manual_seed(seed)
    model = train.build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("config", [CONFIG, BIGRAM_CONFIG, UNET_CONFIG], ids=["plain", "bigram", "unet"])
def test_model_is_causal(config):
    model = random_model(config=config)
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
    model = random_model()  # not the zero-initialised projections, so every path has a gradient
    for module in (*model.blocks, model.head):  # what compile_regions does, with a quick backend
        module.compile(backend="aot_eager", dynamic=False, fullgraph=True)
    tokens = torch.randint(0, 300, (2, 32))
    for _ in range(2):
        model(tokens, tokens).backward()
    # the middle blocks get zeros for a value embedding, so the four blocks are one graph, the head another
    assert counters["stats"]["unique_graphs"] == 2
    mixes = [block.attn.value_mix.grad for block in model.blocks]
    assert mixes[0][1] != 0 and mixes[-1][1] != 0  # the outer blocks learn their value-embedding weight
    assert all(mix[1] == 0 for mix in mixes[1:-1])  # the zeros add nothing and teach nothing
    assert "blocks.0.attn.qkv.weight" in model.state_dict()
    torch._dynamo.reset()


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_value_embeddings_in_every_block_and_a_bigram_table_give_one_block_graph():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = random_model(config={**BIGRAM_CONFIG, "value_embeds": 2}).train()  # tables feed blocks 0/3, 1/2
    for module in (*model.blocks, model.head):
        module.compile(backend="aot_eager", dynamic=False, fullgraph=True)
    tokens = torch.randint(0, 300, (2, 32))
    model(tokens, tokens).backward()
    assert counters["stats"]["unique_graphs"] == 2  # one for the four blocks, one for the head
    assert model.bigram.weight.grad is not None and model.bigram.weight.grad.abs().sum() > 0
    torch._dynamo.reset()


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_unet_skips_keep_one_block_graph_and_learn_their_gains():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = random_model(config=UNET_CONFIG).train()  # every block has a value embedding
    for module in (*model.blocks, model.head):
        module.compile(backend="aot_eager", dynamic=False, fullgraph=True)
    tokens = torch.randint(0, 300, (2, 32))
    model(tokens, tokens).backward()
    assert counters["stats"]["unique_graphs"] == 2  # one for the six blocks, one for the head
    assert all(block.skip_gain.grad.abs().sum() > 0 for block in model.blocks)
    assert "blocks.5.skip_gain" in model.state_dict() and "blocks.0.skip_gain" in model.state_dict()
    torch._dynamo.reset()


def test_unet_pairs_each_second_half_block_with_its_mirror():
    model = random_model(config=UNET_CONFIG)
    seen = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda module, args, out, i=i: seen.append((i, args[3], out)))
    with torch.no_grad():
        model(torch.randint(0, 300, (1, 16)))
    outputs = {i: out for i, _, out in seen}
    skips = {i: skip for i, skip, _ in seen}
    assert skips[5] is outputs[0] and skips[4] is outputs[1]  # mirrors 0/5 and 1/4
    # the others read the embedding's copy (block 3's mirror output is its own input)
    assert all(torch.equal(skips[i], skips[0]) for i in (1, 2, 3))


def test_bigram_ids_hash_each_pair_and_reserve_a_row_for_the_first_position():
    tokens = torch.tensor([[5, 7, 5, 7, 9], [1, 5, 7, 2, 2]])
    ids = train.bigram_ids(tokens, 97)
    assert ids[:, 0].tolist() == [96, 96]  # no previous token in the row
    assert ((ids[:, 1:] >= 0) & (ids[:, 1:] < 96)).all()
    assert ids[0, 1] == ids[0, 3] == ids[1, 2]  # the pair (5, 7) wherever it occurs
    assert ids[0, 1] != ids[0, 2]  # (5, 7) and (7, 5) differ


@pytest.mark.parametrize(("scheme", "low", "high"), [("quintic", 0.5, 1.3), ("polar", 0.85, 1.15)])
def test_orthogonalize_gives_near_orthogonal_updates(scheme, low, high):
    G = torch.randn(3, 64, 32)
    singular_values = torch.linalg.svdvals(train.orthogonalize(G, scheme).float())
    assert singular_values.min() > low and singular_values.max() < high


@pytest.mark.parametrize("shape", [(2, 48, 16), (2, 16, 48)], ids=["tall", "wide"])
def test_normalize_rows_evens_out_units_and_keeps_each_matrix_norm(shape):
    U = torch.randn(shape)
    longer = -2 if shape[1] >= shape[2] else -1  # the units are indexed along the longer side
    U = U * torch.linspace(0.1, 3.0, max(shape[1:])).unsqueeze(-1 if longer == -2 else 0)
    second = torch.zeros(U.shape[0], *(n if i == longer else 1 for i, n in ((-2, shape[1]), (-1, shape[2]))))
    for _ in range(200):  # the running second moment converges to this U's
        out = train.normalize_rows(U, second, beta2=0.9)
    torch.testing.assert_close(out.norm(dim=(-2, -1)), U.norm(dim=(-2, -1)))
    unit_rms = out.square().mean(dim=-1 if longer == -2 else -2).sqrt()
    assert (unit_rms.amax(dim=-1) / unit_rms.amin(dim=-1)).max() < 1.01  # within each matrix


def test_cautious_weight_decay_only_shrinks_weights_the_update_moves_towards_zero():
    p = torch.tensor([1.0, 1.0, -1.0, -1.0])
    u = torch.tensor([0.5, -0.5, -0.5, 0.5])  # p <- p - lr * u
    group = dict(lr=0.1, weight_decay=0.5, cautious=True)
    train.Muon.update_params([p], [u], group)
    # decayed by 1 - 0.05 where u and p agree in sign (entries 0 and 2), untouched elsewhere
    torch.testing.assert_close(p, torch.tensor([0.95 - 0.05, 1.0 + 0.05, -0.95 + 0.05, -1.0 - 0.05]))
    plain = torch.tensor([1.0, 1.0, -1.0, -1.0])
    train.Muon.update_params([plain], [u], {**group, "cautious": False})
    torch.testing.assert_close(plain, torch.tensor([0.95 - 0.05, 0.95 + 0.05, -0.95 + 0.05, -0.95 - 0.05]))


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
