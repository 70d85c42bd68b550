"""Pretrain a small GPT within a fixed wall-clock budget (the file that research proposals change).

Run:    AR_DATA_DIR=<train dir> AR_OUT_DIR=<out dir> python train.py
Import: `build_model(config)` builds the model that `run.json["config"]` describes; importing trains nothing.

Environment (the trainer contract, docs/architecture.md):
  AR_WALL_CLOCK_S   whole budget in seconds, start-up and compilation included (default 300)
  AR_DEADLINE_UNIX  absolute deadline (epoch seconds); trusted over AR_WALL_CLOCK_S when set
  AR_SEED           seed of every random generator (default 0)
  AR_DATA_DIR       tokenizer.json + tokens_*.npy written by prepare.py (read-only)
  AR_OUT_DIR        where model.safetensors and run.json go
  AR_DEVICE         cuda | cpu (default: cuda when available)
  AR_PRESET         full (one GPU, the budget decides the steps) | tiny (2 CPU threads, fixed steps)
Exit codes: 0 done, 3 out of memory, 4 non-finite loss, anything else a crash.

Recipe: pre-norm transformer with rotary positions, QK-norm, ReLU^2 MLP, value embeddings, a learned mix
of each block's input with the embedding, logit soft-capping; Muon for the block matrices and AdamW for
embeddings, head and scalars; bf16 autocast, torch.compile, flash attention through SDPA; the learning
rate decays over the last part of the *time* budget, so compile time cannot push the decay past the
deadline. Off by default (docs/trainer.md has what each did): a hashed bigram embedding, Polar Express
coefficients, NorMuon row normalisation and cautious weight decay in Muon.
"""

# ruff: noqa: E402  (the clock starts before the imports, which take seconds)
import time

PROCESS_START = time.time()  # startup_s counts from here, before torch is imported

import json
import math
import os
import random
import resource
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------
# Configuration: the `full` preset (one H100 or H200, 300 s all-in)

DEPTH = 6  # transformer blocks
MODEL_DIM = 768  # residual stream width (channels)
HEAD_DIM = 128  # channels per attention head (MODEL_DIM / HEAD_DIM heads)
MLP_RATIO = 4  # MLP hidden width as a multiple of MODEL_DIM
VALUE_EMBEDS = 2  # value-embedding tables; table i feeds block i and block DEPTH-1-i (0: none)
BIGRAM_ROWS = 0  # rows of a hashed (previous token, token) embedding (0: none; 131072 overfit 8 shards)
UNET = False  # blocks of the second half also read the output of their mirror block in the first half
SEQ_LEN = 2048  # input positions per training row (the scorer's rows are 2048 too)
DEVICE_BATCH = 64  # rows per forward/backward pass
BATCH_ROWS = 128  # rows per optimizer step (gradient accumulation when > DEVICE_BATCH): 262,144 tokens
MATRIX_LR = 0.06  # Muon learning rate for the 2-D block matrices
MUON_MOMENTUM = 0.95  # Muon momentum after warm-up
MUON_MOMENTUM_START = 0.85  # ... and at step 0, rising linearly over MUON_MOMENTUM_WARMUP steps
MUON_MOMENTUM_WARMUP = 300  # steps
MUON_WEIGHT_DECAY = 0.1  # decoupled weight decay of the block matrices, scaled by the current lr
CAUTIOUS_WD = False  # decay only the weights whose update already points towards zero
NORMUON_BETA2 = 0.0  # decay rate of NorMuon's per-row second moment of the update (0: off; 0.95 typical)
ORTHOGONALIZER = "quintic"  # Muon's iteration coefficients: "quintic" (Muon's own) or "polar" (Polar Express)
EMBED_LR = 0.6  # AdamW learning rate of the token embedding
HEAD_LR = 0.005  # AdamW learning rate of the output projection
SCALAR_LR = 0.04  # AdamW learning rate of the per-block mixing scalars
ADAM_BETAS = (0.8, 0.95)  # AdamW moment decay rates
WARMUP_STEPS = 10  # steps of linear learning-rate warm-up
WARMDOWN_FRAC = 0.45  # last fraction of the training time over which the lr falls linearly ...
FINAL_LR_FRAC = 0.0  # ... to this fraction of its peak
LOGIT_SOFTCAP = 15.0  # logits = cap * tanh(logits / cap)
ROPE_BASE = 10000.0  # rotary embedding base period
ROPE_MAX_LEN = 4096  # longest sequence the rotary tables cover (scoring uses 2048)
COMPILE = True  # torch.compile the model on CUDA
SAVE_RESERVE_S = 3.5  # seconds kept before the deadline for saving (0.3 s on a GPU) and exiting
STEADY_AFTER_STEPS = 10  # steps excluded from the steady-state throughput (compile, warm-up)
PEAK_FLOPS = 989.5e12  # H100/H200 dense bf16 FLOP/s, for MFU

# The `tiny` preset: a few seconds on 2 CPU threads, a fixed number of steps, deterministic.
TINY_DEPTH = 2  # transformer blocks
TINY_DIM = 64  # residual stream width
TINY_HEAD_DIM = 16  # channels per head
TINY_VALUE_EMBEDS = 1  # value-embedding tables (see VALUE_EMBEDS)
TINY_BIGRAM_ROWS = 0  # bigram-embedding rows (see BIGRAM_ROWS)
TINY_UNET = False  # mirror-block skips (see UNET)
TINY_SEQ_LEN = 256  # input positions per row
TINY_BATCH_ROWS = 8  # rows per step
TINY_STEPS = 60  # optimizer steps
TINY_LR = 0.3  # multiplies every learning rate of the full preset
TINY_THREADS = 2  # torch CPU threads (fixed, so results do not depend on the machine)

# ---------------------------------------------------------------------------------------------------
# Model


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(length: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()  # [length, head_dim / 2]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + D/2) of x [B, T, H, D] by position-dependent angles."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = dim // head_dim, head_dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.qkv.weight.muon_blocks = 3  # Muon orthogonalises q, k and v separately
        self.proj = nn.Linear(dim, dim, bias=False)
        self.value_mix = nn.Parameter(torch.tensor([1.0, 0.5]))  # v = mix[0] * v + mix[1] * value embedding

    def forward(self, x: torch.Tensor, ve: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).unbind(2)
        if ve is not None:  # a per-token value added straight into attention (value embeddings)
            v = self.value_mix[0] * v + self.value_mix[1] * ve.view_as(v).to(v.dtype)
        q = apply_rotary(rms_norm(q), cos, sin).to(v.dtype)  # QK-norm keeps attention logits bounded
        k = apply_rotary(rms_norm(k), cos, sin).to(v.dtype)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.fc = nn.Linear(dim, ratio * dim, bias=False)
        self.proj = nn.Linear(ratio * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, dim: int, head_dim: int, mlp_ratio: int, skip: bool = False):
        super().__init__()
        self.attn = Attention(dim, head_dim)
        self.mlp = MLP(dim, mlp_ratio)
        # The block's input is mix[0] * stream + mix[1] * embedding + mix[2] * bigram embedding: cheap
        # shortcuts to the current token and to the pair (previous token, token); with U-net skips,
        # plus skip_gain * the output of the mirror block.
        self.mix = nn.Parameter(torch.tensor([1.0, 0.0, 0.1]))
        self.skip_gain = nn.Parameter(torch.zeros(1)) if skip else None

    def forward(self, x, x0, xb, skip, ve, cos, sin):
        x = self.mix[0] * x + self.mix[1] * x0
        if xb is not None:
            x = x + self.mix[2] * xb
        if skip is not None:
            x = x + self.skip_gain * skip
        x = x + self.attn(rms_norm(x), ve, cos, sin)
        return x + self.mlp(rms_norm(x))


class Head(nn.Module):
    """Final norm, projection to the vocabulary, soft-capping and (with targets) the loss: the part
    that touches [B, T, V] tensors, compiled as one region so those are read and written few times."""

    def __init__(self, dim: int, vocab_size: int, softcap: float):
        super().__init__()
        self.softcap = softcap
        self.weight = nn.Parameter(torch.empty(vocab_size, dim))

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        logits = F.linear(rms_norm(x), self.weight).float()
        logits = self.softcap * torch.tanh(logits / self.softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def bigram_ids(idx: torch.Tensor, rows: int) -> torch.Tensor:
    """Row of the bigram table for each position of idx [B, T]: a hash of (previous token, token) into
    [0, rows - 1). Position 0, whose previous token is not in the row, gets the reserved row rows - 1."""
    pairs = torch.bitwise_xor(36313 * idx[:, 1:], 27191 * idx[:, :-1]) % (rows - 1)
    return torch.cat((torch.full_like(idx[:, :1], rows - 1), pairs), dim=1)


class GPT(nn.Module):
    def __init__(self, vocab_size, depth, model_dim, head_dim, mlp_ratio, value_embeds, logit_softcap, rope_base,
                 rope_max_len, bigram_rows=0, unet=False):  # fmt: skip
        super().__init__()
        assert model_dim % head_dim == 0 and head_dim % 2 == 0, "model_dim must be whole heads of even size"
        assert 2 * value_embeds <= depth, "each value embedding feeds two distinct blocks"
        self.embed = nn.Embedding(vocab_size, model_dim)
        self.value_embeds = nn.ModuleList(nn.Embedding(vocab_size, model_dim) for _ in range(value_embeds))
        self.bigram = nn.Embedding(bigram_rows, model_dim) if bigram_rows else None
        self.blocks = nn.ModuleList(Block(model_dim, head_dim, mlp_ratio, unet) for _ in range(depth))
        self.unet = unet
        self.head = Head(model_dim, vocab_size, logit_softcap)
        cos, sin = rotary_tables(rope_max_len, head_dim, rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)  # derived, so not in the checkpoint
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        dim = self.embed.embedding_dim
        nn.init.normal_(self.embed.weight, std=1.0)
        for table in self.value_embeds:
            nn.init.normal_(table.weight, std=1.0)
        if self.bigram is not None:
            nn.init.zeros_(self.bigram.weight)  # learned from nothing, like a count table
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=dim**-0.5)
            nn.init.normal_(block.mlp.fc.weight, std=dim**-0.5)
            nn.init.zeros_(block.attn.proj.weight)  # each block starts as the identity
            nn.init.zeros_(block.mlp.proj.weight)
        nn.init.zeros_(self.head.weight)  # first predictions are uniform

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids [B, T] -> float32 logits [B, T, V]; with targets, the mean cross-entropy instead
        (targets of -1 are ignored)."""
        T = idx.size(1)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x0 = rms_norm(self.embed(idx))
        x = x0.clone()  # not an alias of x0, so blocks share compiled graphs
        xb = self.bigram(bigram_ids(idx, self.bigram.num_embeddings)) if self.bigram is not None else None
        tables = [table(idx) for table in self.value_embeds]
        # Blocks between the value-embedded ones get zeros of the same kind (value_mix[1] * 0 adds
        # nothing and its gradient is 0), so all blocks keep one compiled graph.
        middle = [torch.zeros_like(tables[0]).requires_grad_(tables[0].requires_grad)] if tables else [None]
        ves = tables + middle * (len(self.blocks) - 2 * len(tables)) + tables[::-1]
        # U-net: block i also reads the output of block depth-1-i when that is an earlier block and not
        # its own input; the other blocks read a copy of the embedding (not an alias of x0, so every
        # block has the same inputs and one compiled graph).
        twin = x0.clone() if self.unet else None
        outputs: list[torch.Tensor] = []
        for i, (block, ve) in enumerate(zip(self.blocks, ves, strict=True)):
            mirror = len(self.blocks) - 1 - i
            skip = (outputs[mirror] if mirror < i - 1 else twin) if self.unet else None
            x = block(x, x0, xb, skip, ve, cos, sin)
            outputs.append(x)
        return self.head(x, targets)

    def compile_regions(self) -> None:
        """Compile each block and the head in place. The blocks share one compiled graph (same code,
        same input shapes, dtypes and strides), so cold compilation costs about one block instead of
        the whole network; the state dict keeps its plain keys."""
        for module in (*self.blocks, self.head):
            module.compile(dynamic=False, fullgraph=True)


def build_model(config: dict) -> GPT:
    """The model that run.json's config describes (weights freshly initialised)."""
    return GPT(**config)


# ---------------------------------------------------------------------------------------------------
# Optimizer: Muon (orthogonalised momentum) for block matrices


# Five iterations of X <- a X + b (X X^T) X + c (X X^T)^2 X, one (a, b, c) each. "quintic": Muon's fixed
# coefficients, which trade exact convergence for speed (singular values land in roughly [0.7, 1.2]).
# "polar": Polar Express (Amsel et al. 2025), chosen per iteration to bring them close to 1 in bf16.
ORTHOGONALIZERS = {
    "quintic": ((3.4445, -4.7750, 2.0315),) * 5,
    "polar": (
        (8.156554524902461, -22.48329292557795, 15.878769915207462),
        (4.042929935166739, -2.808917465908714, 0.5000178451051316),
        (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
        (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
        (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
    ),
}


def orthogonalize(G: torch.Tensor, scheme: str = "quintic") -> torch.Tensor:
    """Approximately replace each matrix of G [N, rows, cols] by the nearest semi-orthogonal matrix
    (U V^T of its SVD), with a Newton-Schulz-style iteration in bf16."""
    X = G.bfloat16()
    wide = X.size(-2) <= X.size(-1)
    if not wide:
        X = X.mT
    margin = 1.02 if scheme == "polar" else 1.0  # Polar Express wants the spectral norm safely below 1
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * margin + 1e-7)
    for a, b, c in ORTHOGONALIZERS[scheme]:
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a, alpha=1.0)
    return X if wide else X.mT


def normalize_rows(U: torch.Tensor, second: torch.Tensor, beta2: float) -> torch.Tensor:
    """NorMuon (Li et al. 2025): scale each vector of the orthogonalised updates U [N, rows, cols] along
    their longer side (each hidden unit of an MLP) by the inverse RMS of its recent values, kept in
    `second`, then restore each matrix's norm, so that no unit's update dominates."""
    dim = -1 if U.size(-2) >= U.size(-1) else -2
    U = U.float()
    second.lerp_(U.square().mean(dim=dim, keepdim=True), 1 - beta2)
    scaled = U * second.clamp_min(1e-10).rsqrt()
    ratio = U.norm(dim=(-2, -1), keepdim=True) / scaled.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10)
    return scaled * ratio


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum whose update is orthogonalised per matrix. Matrices of one shape
    are orthogonalised together in one batched iteration (a parameter with attribute `muon_blocks`
    is split along its rows into that many matrices first)."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float, beta2: float = 0.0,
                 cautious: bool = False, scheme: str = "quintic"):  # fmt: skip
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, beta2=beta2, cautious=cautious,
                        scheme=scheme)  # fmt: skip
        super().__init__(list(params), defaults)

    @staticmethod
    def blocks(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = getattr(p, "muon_blocks", 1)
        return t.view(n, p.size(0) // n, p.size(1))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                self.state[p].setdefault("momentum", torch.zeros_like(p))
            bufs = [self.state[p]["momentum"] for p in params]
            grads = [p.grad for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
            nesterov = torch._foreach_lerp(grads, bufs, group["momentum"])
            by_shape: dict[tuple, list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault(tuple(self.blocks(p, p).shape[1:]), []).append(i)
            updates: list[torch.Tensor] = [None] * len(params)
            for (rows, cols), indices in by_shape.items():
                stacked = torch.cat([self.blocks(params[i], nesterov[i]) for i in indices])
                ortho = orthogonalize(stacked, group["scheme"])
                if group["beta2"]:  # one running second moment per shape, in the first matrix's state
                    longer = (stacked.size(0), rows, 1) if rows >= cols else (stacked.size(0), 1, cols)
                    second = self.state[params[indices[0]]].setdefault("second", stacked.new_zeros(longer))
                    ortho = normalize_rows(ortho, second, group["beta2"])
                ortho = ortho * max(1.0, rows / cols) ** 0.5
                counts = [getattr(params[i], "muon_blocks", 1) for i in indices]
                for i, chunk in zip(indices, ortho.split(counts), strict=True):
                    updates[i] = chunk.reshape(params[i].shape).to(params[i].dtype)
            self.update_params(params, updates, group)

    @staticmethod
    def update_params(params: list[torch.Tensor], updates: list[torch.Tensor], group: dict) -> None:
        """p <- p - lr * update, after decoupled weight decay (lr * weight_decay); cautious decay only
        shrinks the entries whose update has the sign of the weight (it moves them towards zero too)."""
        decay = group["lr"] * group["weight_decay"]
        if decay and group["cautious"]:
            for p, u in zip(params, updates, strict=True):
                p.mul_(torch.where(u * p >= 0, 1 - decay, 1.0))
        elif decay:
            torch._foreach_mul_(params, 1 - decay)
        torch._foreach_add_(params, updates, alpha=-group["lr"])


def make_optimizers(model: GPT, lr_scale: float, fused: bool) -> list[torch.optim.Optimizer]:
    matrices = [p for block in model.blocks for p in block.parameters() if p.ndim == 2]
    scalars = [p for block in model.blocks for p in block.parameters() if p.ndim < 2]
    muon = Muon(matrices, lr=MATRIX_LR * lr_scale, momentum=MUON_MOMENTUM, weight_decay=MUON_WEIGHT_DECAY,
                beta2=NORMUON_BETA2, cautious=CAUTIOUS_WD, scheme=ORTHOGONALIZER)  # fmt: skip
    embeddings = [model.embed.weight, *model.value_embeds.parameters()]
    if model.bigram is not None:
        embeddings.append(model.bigram.weight)
    adam_groups = [
        dict(params=embeddings, lr=EMBED_LR * lr_scale),
        dict(params=[model.head.weight], lr=HEAD_LR * lr_scale),
        dict(params=scalars, lr=SCALAR_LR * lr_scale),
    ]
    adam = torch.optim.AdamW(adam_groups, betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0, fused=fused)
    for opt in (muon, adam):
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return [muon, adam]


def lr_multiplier(step: int, progress: float) -> float:
    """Linear warm-up over WARMUP_STEPS, then flat, then linear decay over the last WARMDOWN_FRAC of
    progress (the fraction of the training time, or of the steps, that has passed)."""
    warmup = min(1.0, (step + 1) / WARMUP_STEPS)
    if progress < 1 - WARMDOWN_FRAC:
        return warmup
    decay = max(0.0, (1 - progress) / WARMDOWN_FRAC)
    return warmup * (FINAL_LR_FRAC + (1 - FINAL_LR_FRAC) * decay)


# ---------------------------------------------------------------------------------------------------
# Data: the whole token stream sits on the device; a batch is one gather, no per-step host work


class TokenData:
    """Rows of seq_len + 1 tokens, each starting at a document's BOS (as scored rows do), drawn
    without replacement in a seeded order that is reshuffled every epoch."""

    def __init__(self, data_dir: Path, seq_len: int, device: str, seed: int):
        paths = sorted(data_dir.glob("tokens_*.npy"))
        if not paths or not (data_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{data_dir}: no tokenizer.json or tokens_*.npy (run prepare.py)")
        spec = json.loads((data_dir / "tokenizer.json").read_text())
        self.vocab_size, self.bos_id = spec["vocab_size"], spec["bos_id"]
        stream = np.concatenate([np.load(p, mmap_mode="r") for p in paths])
        # Widen uint16 -> int32 on the device (int16 bits, then mask): the host only copies bytes.
        self.tokens = torch.from_numpy(stream.view(np.int16)).to(device).to(torch.int32) & 0xFFFF
        starts = torch.nonzero(self.tokens == self.bos_id).squeeze(1)
        self.starts = starts[starts + seq_len + 1 <= len(stream)]
        if len(self.starts) == 0:
            raise ValueError(f"{data_dir}: fewer than {seq_len + 1} tokens after any BOS")
        self.offsets = torch.arange(seq_len + 1, device=device)
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.position, self.epoch = None, 0, 0
        self.num_tokens = len(stream)

    def next_batch(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs [rows, seq_len] and targets (BOS targets set to -1: the scorer skips them too)."""
        if self.order is None or self.position + rows > len(self.order):
            perm = torch.randperm(len(self.starts), generator=self.generator)
            self.order, self.position = perm.to(self.starts.device), 0
            self.epoch += 1
        index = self.starts[self.order[self.position : self.position + rows]]
        self.position += rows
        chunk = self.tokens[index[:, None] + self.offsets].long()
        inputs, targets = chunk[:, :-1], chunk[:, 1:]
        return inputs, targets.masked_fill(targets == self.bos_id, -1)


# ---------------------------------------------------------------------------------------------------
# Run settings


@dataclass(frozen=True)
class Env:
    deadline: float  # epoch seconds by which outputs must be written
    seed: int
    data_dir: Path
    out_dir: Path
    device: str
    preset: str


@dataclass(frozen=True)
class Preset:
    depth: int
    model_dim: int
    head_dim: int
    value_embeds: int
    bigram_rows: int
    unet: bool
    seq_len: int
    device_batch: int
    batch_rows: int
    lr_scale: float
    max_steps: int | None  # None: as many as the time allows
    compile: bool


def read_env() -> Env:
    wall_clock = float(os.environ.get("AR_WALL_CLOCK_S", "300"))
    deadline = os.environ.get("AR_DEADLINE_UNIX")
    if not os.environ.get("AR_DATA_DIR"):
        sys.exit("train.py: set AR_DATA_DIR to the directory prepare.py wrote (tokenizer.json, tokens_*.npy)")
    preset = os.environ.get("AR_PRESET", "full")
    if preset not in ("full", "tiny"):
        sys.exit(f"train.py: AR_PRESET={preset!r}; want 'full' or 'tiny'")
    return Env(
        deadline=float(deadline) if deadline else PROCESS_START + wall_clock,
        seed=int(os.environ.get("AR_SEED", "0")),
        data_dir=Path(os.environ["AR_DATA_DIR"]),
        out_dir=Path(os.environ.get("AR_OUT_DIR", "out")),
        device=os.environ.get("AR_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"),
        preset=preset,
    )


def preset_for(env: Env) -> Preset:
    if env.preset == "tiny":
        return Preset(TINY_DEPTH, TINY_DIM, TINY_HEAD_DIM, TINY_VALUE_EMBEDS, TINY_BIGRAM_ROWS, TINY_UNET,
                      TINY_SEQ_LEN, TINY_BATCH_ROWS, TINY_BATCH_ROWS, TINY_LR, TINY_STEPS, compile=False)  # fmt: skip
    return Preset(DEPTH, MODEL_DIM, HEAD_DIM, VALUE_EMBEDS, BIGRAM_ROWS, UNET, SEQ_LEN, DEVICE_BATCH, BATCH_ROWS,
                  1.0, None, compile=COMPILE and env.device == "cuda")  # fmt: skip


def setup_runtime(env: Env, preset: Preset) -> None:
    """Seeds, threads and compile caches. HOME may be read-only: caches default to the temp dir. With
    compilation on, its worker processes start now, booting while data loads and the model is built."""
    if env.preset == "tiny":
        torch.set_num_threads(TINY_THREADS)
    cache = os.environ.setdefault(
        "TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"torchinductor_{os.getuid()}")
    )
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(cache, "triton"))
    if preset.compile:
        try:
            from torch._inductor.async_compile import maybe_warm_pool
        except ImportError:  # a torch without it warms the pool at the first compilation instead
            pass
        else:
            maybe_warm_pool()
    random.seed(env.seed)
    np.random.seed(env.seed)
    torch.manual_seed(env.seed)


def model_flops_per_token(model: GPT, config: dict, seq_len: int) -> tuple[int, int]:
    """(FLOPs per token, parameters counted): 6 x all parameters except the token, value and bigram
    embeddings (lookups, not products) and scalar gains, plus 12 x width x context per layer for
    attention (the upstream anchor's formula, bench/README.md)."""
    counted = sum(p.numel() for name, p in model.named_parameters()
                  if p.ndim == 2 and not name.startswith(("embed.", "value_embeds.", "bigram.")))  # fmt: skip
    attention = config["depth"] * 12 * config["model_dim"] * seq_len
    return 6 * counted + attention, counted


# ---------------------------------------------------------------------------------------------------
# Training loop


class NonFiniteLoss(Exception):
    pass


def check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"non-finite training loss {loss} at step {step}")


def train(env: Env, preset: Preset, model: GPT, step_fn, data: TokenData, optimizers) -> dict:
    """Run optimizer steps until the preset's step count or the time budget ends."""
    train_end = env.deadline - SAVE_RESERVE_S
    accum = preset.batch_rows // preset.device_batch
    sync = torch.cuda.synchronize if env.device == "cuda" else (lambda: None)
    step, losses, step_times = 0, [], []
    pending: torch.Tensor | None = None  # last step's loss, read one step late so the GPU never idles
    train_start = steady_start = time.time()
    first_step_done = None
    while True:
        if preset.max_steps is not None:
            progress = step / preset.max_steps
        else:
            progress = (time.time() - train_start) / max(train_end - train_start, 1e-9)
        multiplier = lr_multiplier(step, progress)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * multiplier
        frac = min(step / MUON_MOMENTUM_WARMUP, 1.0)
        optimizers[0].param_groups[0]["momentum"] = (1 - frac) * MUON_MOMENTUM_START + frac * MUON_MOMENTUM
        total = torch.zeros((), device=env.device)
        for _ in range(accum):
            inputs, targets = data.next_batch(preset.device_batch)
            loss = step_fn(inputs, targets) / accum
            loss.backward()
            total += loss.detach()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        if pending is not None:
            losses.append(pending.item())  # waits for the previous step only
            check_finite(losses[-1], step - 1)
        pending = total
        step += 1
        now = time.time()
        if step == 1:
            sync()
            first_step_done = now = time.time()
            print(
                f"step 1 done: startup {first_step_done - PROCESS_START:.1f} s (compile included)", flush=True
            )
        if step == STEADY_AFTER_STEPS:
            sync()
            steady_start = now = time.time()
        step_times.append(now)
        if step % 100 == 0 or (preset.max_steps is not None and step % 10 == 0):
            loss_text = f"{losses[-1]:.4f}" if losses else "-"
            print(
                f"step {step} loss {loss_text} lr x{multiplier:.3f} t {now - PROCESS_START:.1f} s", flush=True
            )
        if preset.max_steps is not None and step >= preset.max_steps:
            break
        window = step_times[-6:]  # ends of the last steps; the first (compiling) step is no interval
        recent = (window[-1] - window[0]) / (len(window) - 1) if len(window) > 1 else 0.0
        if now + 2 * recent > train_end:  # the step in flight plus one more would not fit
            break
    sync()
    losses.append(pending.item())
    check_finite(losses[-1], step)
    end = time.time()
    steady_steps = step - STEADY_AFTER_STEPS
    return {
        "steps": step,
        "max_steps": preset.max_steps,  # a fixed-step run that stops short of it was cut by the deadline
        "tokens": step * preset.batch_rows * preset.seq_len,
        "startup_s": first_step_done - PROCESS_START,
        "training_s": end - train_start,
        "steady_tokens_per_s": (steady_steps * preset.batch_rows * preset.seq_len / (end - steady_start))
        if steady_steps > 0
        else None,
        "epochs": data.epoch,
        "final_lr_multiplier": multiplier,
        "final_loss": losses[-1],
        "losses_every_10": losses[::10],
    }


# ---------------------------------------------------------------------------------------------------
# Checkpoint and summary


def save_outputs(out_dir: Path, model: GPT, run: dict) -> None:
    from safetensors.torch import save_model

    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    save_model(model, str(out_dir / "model.safetensors"))
    run["checkpoint_s"] = time.time() - started
    tmp = out_dir / "run.json.tmp"
    tmp.write_text(json.dumps(run, indent=1) + "\n")
    os.replace(tmp, out_dir / "run.json")


def peak_memory_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def is_out_of_memory(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, torch.OutOfMemoryError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def main() -> int:
    env = read_env()
    preset = preset_for(env)
    setup_runtime(env, preset)
    imported = time.time()
    data = TokenData(env.data_dir, preset.seq_len, env.device, env.seed)
    data_loaded = time.time()
    config = dict(vocab_size=data.vocab_size, depth=preset.depth, model_dim=preset.model_dim,
                  head_dim=preset.head_dim, mlp_ratio=MLP_RATIO, value_embeds=preset.value_embeds,
                  logit_softcap=LOGIT_SOFTCAP, rope_base=ROPE_BASE, rope_max_len=ROPE_MAX_LEN,
                  bigram_rows=preset.bigram_rows, unet=preset.unet)  # fmt: skip
    with torch.device(env.device):
        model = build_model(config)
    model_built = time.time()
    optimizers = make_optimizers(model, preset.lr_scale, fused=env.device == "cuda")
    built = time.time()
    if preset.compile:
        model.compile_regions()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=env.device == "cuda")

    def step_fn(inputs, targets):
        with autocast:
            return model(inputs, targets)

    print(f"preset {env.preset} on {env.device}: {config}, {data.num_tokens:,} training tokens; "
          f"imports {imported - PROCESS_START:.1f} s, data {data_loaded - imported:.1f} s, "
          f"model {model_built - data_loaded:.1f} s, optimizers {built - model_built:.1f} s, "
          f"compile setup {time.time() - built:.1f} s; "
          f"{env.deadline - time.time():.1f} s left", flush=True)  # fmt: skip
    try:
        stats = train(env, preset, model, step_fn, data, optimizers)
    except NonFiniteLoss as exc:
        print(f"train.py: {exc}; stopping (exit code 4)", file=sys.stderr, flush=True)
        return 4
    except Exception as exc:
        if is_out_of_memory(exc):
            print(f"train.py: out of memory: {exc}", file=sys.stderr, flush=True)
            return 3
        raise
    flops_per_token, counted_params = model_flops_per_token(model, config, preset.seq_len)
    tokens_per_s = stats["steady_tokens_per_s"]
    run = {
        "config": config,
        "preset": env.preset,
        "seed": env.seed,
        "device": torch.cuda.get_device_name() if env.device == "cuda" else "cpu",
        "torch": torch.__version__,
        **stats,
        "peak_memory_bytes": peak_memory_bytes(env.device),
        "num_params": sum(p.numel() for p in model.parameters()),
        "flops_per_token": flops_per_token,
        "mfu_params": counted_params,
        "mfu_percent": 100 * tokens_per_s * flops_per_token / PEAK_FLOPS if tokens_per_s else None,
        "hyperparameters": asdict(preset),
    }
    save_outputs(env.out_dir, model, run)
    run["total_s"] = time.time() - PROCESS_START
    print("---")
    for key in ("steps", "tokens", "epochs", "startup_s", "training_s", "checkpoint_s", "total_s",
                "steady_tokens_per_s", "mfu_percent", "peak_memory_bytes", "num_params", "final_loss", "seed"):  # fmt: skip
        value = run[key]
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # outputs are written; skip interpreter teardown (compile workers), which takes seconds
