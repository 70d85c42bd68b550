"""Which fused attention kernel should the trainer use on this GPU? Times PyTorch's flash and cuDNN
attention on the trainer's shape (forward + backward, bf16, causal, q/k/v laid out as train.py makes
them), checks that cuDNN agrees with flash eagerly and inside torch.compile (with flash and
memory-efficient attention switched off globally, the way a trainer would select cuDNN), and prints
`SDPA_BACKEND=cudnn` when that is at least MIN_GAIN faster and agrees, else `SDPA_BACKEND=default`.
On the H200 with torch 2.11 (2026-12-02) cuDNN was 1.67x faster eagerly and agreed, but the compiled
result did not agree (docs/trainer.md).

    python bench/sdpa_backends.py            # on a CUDA machine; about 30 s
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BATCH, HEADS, SEQ, HEAD_DIM = 64, 6, 2048, 128  # train.py's DEVICE_BATCH, heads, SEQ_LEN, HEAD_DIM
MIN_GAIN = 0.05  # cuDNN must take at most 95% of flash's time
MAX_REL_ERR = 2e-2  # bf16 kernels with different blockings land near 1e-3..5e-3


def inputs(seed: int) -> tuple[torch.Tensor, ...]:
    """q, k, v as views [B, H, T, D] of [B, T, H, D] tensors (the trainer's transpose), and dout."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shape = (BATCH, SEQ, HEADS, HEAD_DIM)
    leaves = [torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3)]
    dout = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen).transpose(1, 2)
    return (*(t.requires_grad_() for t in leaves), dout)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
    )


def forward_backward(fn, q, k, v, dout) -> list[torch.Tensor]:
    for t in (q, k, v):
        t.grad = None
    out = fn(q, k, v)
    out.backward(dout)
    return [out.detach(), q.grad, k.grad, v.grad]


def median_ms(fn, args, reps: int = 15) -> float:
    for _ in range(3):
        forward_backward(fn, *args)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        forward_backward(fn, *args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x.float() - y.float()).norm() / y.float().norm()).item() for x, y in zip(a, b, strict=True))


def main() -> None:
    args = inputs(seed=1)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        reference = forward_backward(attention, *args)
        flash_ms = median_ms(attention, args)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn_err = rel_err(forward_backward(attention, *args), reference)
        cudnn_ms = median_ms(attention, args)
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    compiled = torch.compile(attention, fullgraph=True, dynamic=False)
    compiled_err = rel_err(forward_backward(compiled, *args), reference)
    compiled_ms = median_ms(compiled, args)
    flops = 4 * BATCH * HEADS * SEQ * SEQ * HEAD_DIM * 3.5 / 2  # fwd 2 products, bwd 5, causal half
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}"
    )
    print(f"shape B={BATCH} H={HEADS} T={SEQ} D={HEAD_DIM} bf16 causal, forward + backward:")
    for name, ms, err in (("flash", flash_ms, 0.0), ("cudnn", cudnn_ms, cudnn_err),
                          ("cudnn, compiled", compiled_ms, compiled_err)):  # fmt: skip
        print(f"  {name:16s} {ms:7.2f} ms  {flops / ms / 1e9:6.0f} TFLOP/s  rel. err vs flash {err:.1e}")
    agrees = max(cudnn_err, compiled_err) < MAX_REL_ERR
    faster = max(cudnn_ms, compiled_ms) <= (1 - MIN_GAIN) * flash_ms
    print(f"SDPA_BACKEND={'cudnn' if agrees and faster else 'default'}")


if __name__ == "__main__":
    main()
