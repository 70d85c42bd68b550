"""The model side of trusted evaluation (a fixed file, baked into the trainer image next to evaluate.py).

    python model_server.py --socket /channel/model.sock --train-py /code/train.py --checkpoint /ckpt
                           [--device cpu|cuda]

Runs in the *model container*, the only place where the candidate's code runs during evaluation:
no validation data, no result folder, nothing writable but /tmp. It connects to the scorer's Unix
socket, imports the candidate `train.py`, builds `build_model(run.json["config"])`, loads the
safetensors weights (never pickle), says it is ready, then answers requests until told to stop:

    model  -> scorer  {"ready": true}
    scorer -> model   {"op": "buffers", "kind": "cuda"|"host", "slots": [[bytes, ...], ...]} + fds (SCM_RIGHTS)
    model  -> scorer  {"buffers": "ok"}  or  {"buffers": "refused", "reason": "..."} (then another offer)
    scorer -> model   {"op": "forward", "shape": [B, T], "dtype": "int64", "nbytes": N, "slot": s} + N bytes
    model  -> scorer  {"shape": [B, T, V], "dtype": "float32"|"bfloat16"|"float16", "nbytes": M, "slot": s}
    scorer -> model   {"op": "exit"}

Every message is a 4-byte big-endian header length, a JSON header, then `nbytes` raw bytes, except
the logits: they go into slot s of the shared buffers that the scorer created, written (and, on the
GPU, finished) before the reply. "cuda" buffers are GPU memory (one exported allocation per slot,
cuda_ipc.py); "host" buffers are memory files (one per chunk of a slot, the slot's bytes in order).
Errors go back as {"error": "..."}. Everything this process sends or writes is untrusted: the candidate's code runs
in it and may replace any of it; evaluate.py copies the logits out of the slot and then checks them
(shape, dtype, size, finite values).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import mmap
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

MODULE_START = time.perf_counter()  # before torch is imported

import torch  # noqa: E402

MAX_HEADER_BYTES = 1 << 16
MAX_BUFFER_FILES = 256  # the most memory files one SCM_RIGHTS message carries (SCM_MAX_FD 253)
CONNECT_TIMEOUT_S = 600.0
WIRE_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
ROW_INPUTS = 2048  # input positions of a scored row (evaluate.ROW_TOKENS - 1)


def send(sock: socket.socket, header: dict, payload: bytes | memoryview = b"") -> None:
    data = json.dumps(header).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)
    if len(payload):
        sock.sendall(payload)


def recv_exact(sock: socket.socket, n: int) -> bytearray:
    buffer = bytearray(n)
    view = memoryview(buffer)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("scorer closed the channel")
        got += k
    return buffer


def recv(sock: socket.socket) -> tuple[dict, bytearray]:
    (length,) = struct.unpack(">I", recv_exact(sock, 4))
    if length > MAX_HEADER_BYTES:
        raise ValueError("header too long")
    header = json.loads(recv_exact(sock, length))
    return header, recv_exact(sock, int(header.get("nbytes", 0)))


def recv_with_files(sock: socket.socket) -> tuple[dict, list[int]]:
    """A header message that carries file descriptors (the shared buffers)."""
    data, fds, _, _ = socket.recv_fds(sock, 4, MAX_BUFFER_FILES)
    if not data:
        raise EOFError("scorer closed the channel")
    prefix = bytearray(data) + recv_exact(sock, 4 - len(data))
    (length,) = struct.unpack(">I", prefix)
    if length > MAX_HEADER_BYTES:
        raise ValueError("header too long")
    return json.loads(recv_exact(sock, length)), fds


def connect(path: str, timeout_s: float) -> socket.socket:
    deadline = time.monotonic() + timeout_s
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------
# The shared logits buffers


def pin(data: torch.Tensor) -> bool:
    """Page-lock a mapped buffer for the GPU's copy engines (~50 GB/s instead of ~10 on an H100
    host); False where the driver refuses, and copies then go through pageable memory."""
    return int(torch.cuda.cudart().cudaHostRegister(data.data_ptr(), data.numel(), 0)) == 0


class Slots:
    """The scorer's buffers as this process maps them: slot s is a list of byte tensors, one per
    memory file or GPU allocation, together holding the slot's bytes in order."""

    def __init__(self, layout: list[list[int]], fds: list[int], device: str, kind: str = "host") -> None:
        self.kind, self.gpu_buffers = kind, []
        if sum(len(sizes) for sizes in layout) != len(fds):
            for fd in fds:
                os.close(fd)
            raise ValueError(f"{len(fds)} buffer files for a layout of {layout}")
        mapper = {"host": self._map, "cuda": self._map_gpu}.get(kind)
        if mapper is None:
            for fd in fds:
                os.close(fd)
            raise ValueError(f"unknown kind of buffers {kind!r}")
        files = iter(fds)
        try:
            self.chunks = [[mapper(next(files), int(size), device) for size in sizes] for sizes in layout]
        except BaseException:
            for fd in files:  # the ones not mapped yet
                os.close(fd)
            self.close()
            raise

    def _map_gpu(self, fd: int, size: int, device: str) -> torch.Tensor:
        if not device.startswith("cuda"):
            os.close(fd)
            raise ValueError(f"GPU buffers for a model on {device}")
        buffer = _cuda_ipc().SharedGpuBuffer.open(fd, size, device)
        self.gpu_buffers.append(buffer)
        return buffer.tensor

    def close(self) -> None:
        self.chunks = []
        for buffer in self.gpu_buffers:
            buffer.close()
        self.gpu_buffers = []

    @staticmethod
    def _map(fd: int, size: int, device: str) -> torch.Tensor:
        try:
            data = torch.frombuffer(mmap.mmap(fd, size), dtype=torch.uint8)
        finally:
            os.close(fd)  # the mapping stays
        if device.startswith("cuda") and not pin(data):
            print(f"model_server: could not page-lock a logits slot of {size} bytes", flush=True)
        return data

    def capacity(self, slot: int) -> int:
        return sum(chunk.numel() for chunk in self.chunks[slot])

    def write(self, slot: int, data: torch.Tensor) -> None:
        """Copy flat bytes `data` (on any device) into the slot, chunk by chunk."""
        offset = 0
        for chunk in self.chunks[slot]:
            n = min(chunk.numel(), data.numel() - offset)
            if n <= 0:
                return
            chunk[:n].copy_(data[offset : offset + n])
            offset += n
        if data.is_cuda:  # the bytes are in the slot before the reply says so
            torch.cuda.current_stream(data.device).synchronize()


def _cuda_ipc():  # -> module
    """The fixed cuda_ipc.py beside this file, loaded by its path."""
    path = Path(__file__).resolve().parent / "cuda_ipc.py"
    spec = importlib.util.spec_from_file_location("autoresearch_fixed_cuda_ipc", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[spec.name] = module
    return module


def accept_buffers(sock: socket.socket, device: str) -> Slots | None:
    """Map the scorer's offers until one works (None when the scorer says stop instead): a refusal
    tells the scorer why, and it offers host memory next."""
    while True:
        header, fds = recv_with_files(sock)
        if header.get("op") != "buffers":
            for fd in fds:
                os.close(fd)
            return None
        try:
            slots = Slots(header["slots"], fds, device, str(header.get("kind", "host")))
        except Exception as exc:  # the driver or the mapping refused: say so, take the next offer
            send(sock, {"buffers": "refused", "reason": f"{exc!r}"[:500]})
            continue
        send(sock, {"buffers": "ok"})
        return slots


def load_model(train_py: Path, checkpoint: Path, device: str) -> torch.nn.Module:
    from safetensors.torch import load_model as load_weights

    config = json.loads((checkpoint / "run.json").read_text())["config"]
    spec = importlib.util.spec_from_file_location("candidate_train", train_py)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {train_py}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_model(config)
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
    if logits.dtype not in WIRE_DTYPES:
        logits = logits.float()
    return WIRE_DTYPES[logits.dtype], logits.contiguous().view(-1).view(torch.uint8)


def serve(sock: socket.socket, model: torch.nn.Module, slots: Slots, device: str) -> None:
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    while True:
        header, payload = recv(sock)
        if header.get("op") != "forward":
            return
        tokens = torch.frombuffer(payload, dtype=torch.int64).reshape(header["shape"]).to(device)
        with torch.inference_mode(), autocast:
            logits = model(tokens)
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            send(sock, {"error": f"model returned {type(logits).__name__} {getattr(logits, 'dtype', '')}"})
            return
        wire, data = logits_bytes(logits)
        slot = int(header["slot"])
        if data.numel() <= slots.capacity(slot):  # else the scorer refuses the shape
            slots.write(slot, data)
        send(sock, {"shape": list(logits.shape), "dtype": wire, "nbytes": data.numel(), "slot": slot})


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
    sock = connect(args.socket, args.connect_timeout)
    try:
        model = load_model(args.train_py, args.checkpoint, args.device)
    except BaseException as exc:  # the candidate's import or constructor failed: tell the scorer why
        send(sock, {"error": f"cannot build the model: {exc!r}"[:2000]})
        return 2
    built = time.perf_counter()
    try:
        warm_up(model, args.device, args.warmup_rows, ROW_INPUTS)
    except BaseException as exc:  # it would fail on the first real batch as well
        send(sock, {"error": f"the model failed on a warm-up batch: {exc!r}"[:2000]})
        return 2
    send(sock, {"ready": True})
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
