"""The model side of trusted evaluation (a fixed file, baked into the trainer image next to evaluate.py).

    python model_server.py --socket /channel/model.sock --train-py /code/train.py --checkpoint /ckpt
                           [--device cpu|cuda]

Runs in the *model container*, the only place where the candidate's code runs during evaluation:
no validation data, no result folder, nothing writable but /tmp. It connects to the scorer's Unix
socket, imports the candidate `train.py`, builds `build_model(run.json["config"])`, loads the
safetensors weights (never pickle), says it is ready, maps the logits slots the scorer offers, then
answers forward requests until told to stop. The messages and the slots are channel.py's. Everything
this process sends or writes is untrusted: the candidate's code runs in it and may replace any of it;
evaluate.py copies the logits out of the slot and then checks them (shape, dtype, size, finite values).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import sys
import threading
import time
import types
from pathlib import Path

MODULE_START = time.perf_counter()  # before torch is imported

if not __package__:  # run as a script (the image): the fixed files beside it form one package
    __package__ = "autoresearch_fixed"
    folder = types.ModuleType(__package__)
    folder.__path__ = [str(Path(__file__).resolve().parent)]
    sys.modules.setdefault(__package__, folder)

import torch  # noqa: E402

from . import channel  # noqa: E402

CONNECT_TIMEOUT_S = 600.0
ROW_INPUTS = 2048  # input positions of a scored row (protocol.ROW_TOKENS - 1)


def accept_buffers(sock: socket.socket, device: str) -> channel.MappedSlots | None:
    """Map the scorer's offers until one works (None when the scorer says stop instead): a refusal
    tells the scorer why, and it offers host memory next."""
    while True:
        header, fds = channel.recv_with_files(sock)
        if header.get("op") != "buffers":
            for fd in fds:
                os.close(fd)
            return None
        try:
            slots = channel.MappedSlots(header["slots"], fds, device, str(header.get("kind", "host")))
        except Exception as exc:  # the driver or the mapping refused: say so, take the next offer
            channel.send(sock, {"buffers": "refused", "reason": f"{exc!r}"[:500]})
            continue
        channel.send(sock, {"buffers": "ok"})
        return slots


def load_model(train_py: Path, checkpoint: Path, device: str) -> torch.nn.Module:
    from safetensors.torch import load_model as load_weights

    config = json.loads((checkpoint / "run.json").read_text())["config"]
    spec = importlib.util.spec_from_file_location("candidate_train", train_py)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {train_py}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model: torch.nn.Module = module.build_model(config)
    load_weights(model, str(checkpoint / "model.safetensors"), strict=True, device="cpu")
    return model.to(device).eval()


def warm_up(model: torch.nn.Module, device: str, rows: int, tokens: int) -> None:
    """One forward pass of an ordinary batch's shape before saying ready, on CUDA: the first pass's
    one-off costs (GPU library handles, kernel loading, algorithm choice; ~1.5 s for the baseline
    model on an H100) then overlap the scorer's own start instead of delaying its first batch."""
    if not device.startswith("cuda") or rows <= 0:
        return
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(torch.zeros((rows, tokens), dtype=torch.int64, device=device))
    torch.cuda.synchronize()


def logits_bytes(logits: torch.Tensor) -> tuple[str, torch.Tensor]:
    """The wire dtype (the model's own float dtype, float32 for any other) and the logits as flat
    bytes on the model's device: no cast to a wider type, no copy when already contiguous."""
    logits = logits.detach()
    if logits.dtype not in channel.WIRE_NAMES:
        logits = logits.float()
    return channel.WIRE_NAMES[logits.dtype], logits.contiguous().view(-1).view(torch.uint8)


def serve(sock: socket.socket, model: torch.nn.Module, slots: channel.MappedSlots, device: str) -> None:
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    while True:
        header, payload = channel.recv(sock)
        if header.get("op") != "forward":
            return
        tokens = torch.frombuffer(payload, dtype=torch.int64).reshape(header["shape"]).to(device)
        with torch.inference_mode(), autocast:
            logits = model(tokens)
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            channel.send(
                sock, {"error": f"model returned {type(logits).__name__} {getattr(logits, 'dtype', '')}"}
            )
            return
        wire, data = logits_bytes(logits)
        slot = int(header["slot"])
        if data.numel() <= slots.capacity(slot):  # else the scorer refuses the shape
            slots.write(slot, data)
        channel.send(sock, {"shape": list(logits.shape), "dtype": wire, "nbytes": data.numel(), "slot": slot})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--train-py", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda where there is one)")
    parser.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S)
    parser.add_argument(
        "--warmup-rows", type=int, default=32,
        help="rows of the warm-up batch on CUDA (the scorer's batch size there); 0: none",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda"):  # the driver starts while the candidate is imported and built
        threading.Thread(target=torch.cuda.init, name="cuda-init", daemon=True).start()
    started = time.perf_counter()
    sock = channel.connect(args.socket, args.connect_timeout)
    try:
        model = load_model(args.train_py, args.checkpoint, args.device)
    except BaseException as exc:  # the candidate's import or constructor failed: tell the scorer why
        channel.send(sock, {"error": f"cannot build the model: {exc!r}"[:2000]})
        return 2
    built = time.perf_counter()
    try:
        warm_up(model, args.device, args.warmup_rows, ROW_INPUTS)
    except BaseException as exc:  # it would fail on the first real batch as well
        channel.send(sock, {"error": f"the model failed on a warm-up batch: {exc!r}"[:2000]})
        return 2
    channel.send(sock, {"ready": True})
    print(
        f"model_server: ready {time.perf_counter() - MODULE_START:.2f} s after start (imports "
        f"{started - MODULE_START:.2f} s, connect and model {built - started:.2f} s, warm-up "
        f"{time.perf_counter() - built:.2f} s)",
        flush=True,
    )
    try:
        slots = accept_buffers(sock, args.device)
        if slots is not None:
            serve(sock, model, slots, args.device)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return 0
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # nothing left to tidy: skip the interpreter's and torch's teardown
