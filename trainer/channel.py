"""The channel between the scorer and a model server (a fixed file): the wire format and the logits
slots, both ends of it.

The scorer (evaluate.py --channel) listens on a Unix socket per model server; the model server
(model_server.py, in the model container, the only place the candidate's code runs) connects. Every
message is a 4-byte big-endian header length, a JSON header, then `nbytes` raw bytes, except the
logits: they go into slot s of the shared buffers that the scorer created, written (and, on the
GPU, finished) before the reply.

    model  -> scorer  {"ready": true}
    scorer -> model   {"op": "buffers", "kind": "cuda"|"host", "slots": [[bytes, ...], ...]} + fds (SCM_RIGHTS)
    model  -> scorer  {"buffers": "ok"}  or  {"buffers": "refused", "reason": "..."} (then another offer)
    scorer -> model   {"op": "forward", "shape": [B, T], "dtype": "int64", "nbytes": N, "slot": s} + N bytes
    model  -> scorer  {"shape": [B, T, V], "dtype": "float32"|"bfloat16"|"float16", "nbytes": M, "slot": s}
    scorer -> model   {"op": "exit"}

Errors go back as {"error": "..."}. Everything the model server sends or writes is untrusted: the
candidate's code runs in it and may replace any of it. The scorer's end (`ModelChannel`) checks each
header before it copies the logits out of the slot, and reads only its own copy.

The slots. "host" slots are memory files (`SharedSlots`: one per chunk of a slot, the slot's bytes in
order); "cuda" slots are GPU memory (`DeviceSlots`: one exported allocation per slot, shared by file
descriptor through the CUDA driver, `SharedGpuBuffer`). The model server maps either (`MappedSlots`).

Sections: the wire (both ends), the scorer's end, the model server's end, GPU memory by file
descriptor.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import math
import mmap
import os
import resource
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from .protocol import BadCheckpoint, Voided

MAX_HEADER_BYTES = 1 << 16
WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WIRE_NAMES = {dtype: name for name, dtype in WIRE_DTYPES.items()}
MAX_WIRE_ITEMSIZE = 4  # bytes per logit in the widest wire dtype (float32): what a slot is sized for
LOGIT_SLOTS = 2  # the model fills one slot while the scorer copies the other out
MAX_BUFFER_FILES = 64  # memory files per model server (slots x chunks; SCM_RIGHTS carries <= 253)
MAX_RECEIVED_FILES = 256  # the most memory files one SCM_RIGHTS message carries (SCM_MAX_FD 253)
PAGE_BYTES = 4096


# ---------------------------------------------------------------------------------------------------
# The wire (both ends)


def send(
    sock: socket.socket,
    header: dict[str, Any],
    payload: bytes | memoryview = b"",
    fds: list[int] | None = None,
) -> None:
    """One message: the header (with `fds` attached, SCM_RIGHTS), then the payload's bytes."""
    data = json.dumps(header).encode()
    message = struct.pack(">I", len(data)) + data
    if fds:
        socket.send_fds(sock, [message], fds)
    else:
        sock.sendall(message)
    if len(payload):
        sock.sendall(payload)


def recv_exact(sock: socket.socket, n: int) -> bytearray:
    """`n` bytes; EOFError when the other end closed the socket first."""
    buffer = bytearray(n)
    view = memoryview(buffer)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("the other end closed the channel")
        got += k
    return buffer


def listen(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o777)
    server.listen(1)
    return server


def accept(server: socket.socket, name: str, timeout_s: float) -> socket.socket:
    server.settimeout(timeout_s)
    try:
        conn, _ = server.accept()
    except TimeoutError as exc:
        raise Voided(
            f"model server {name} did not connect within {timeout_s:.0f} s", "model_timeout"
        ) from exc
    finally:
        server.close()  # one connection per socket: one container, one model instance
    conn.setblocking(True)
    return conn


def connect(path: str, timeout_s: float) -> socket.socket:
    """The model server's end: connect to the scorer's socket, retrying until `timeout_s`."""
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


def recv(sock: socket.socket) -> tuple[dict[str, Any], bytearray]:
    """The model server's end: one message from the scorer, its header and payload."""
    (length,) = struct.unpack(">I", recv_exact(sock, 4))
    if length > MAX_HEADER_BYTES:
        raise ValueError("header too long")
    header = json.loads(recv_exact(sock, length))
    return header, recv_exact(sock, int(header.get("nbytes", 0)))


def recv_with_files(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The model server's end: a header message that carries file descriptors (the slots)."""
    data, fds, _, _ = socket.recv_fds(sock, 4, MAX_RECEIVED_FILES)
    if not data:
        raise EOFError("scorer closed the channel")
    prefix = bytearray(data) + recv_exact(sock, 4 - len(data))
    (length,) = struct.unpack(">I", prefix)
    if length > MAX_HEADER_BYTES:
        raise ValueError("header too long")
    return json.loads(recv_exact(sock, length)), fds


# ---------------------------------------------------------------------------------------------------
# The scorer's end: slots it owns, and the channel to one model server


def pin(data: torch.Tensor) -> bool:
    """Page-lock a mapped buffer for the GPU's copy engines (~50 GB/s instead of ~7 on an H100
    host); False where the driver refuses, and copies then go through pageable memory."""
    return int(torch.cuda.cudart().cudaHostRegister(data.data_ptr(), data.numel(), 0)) == 0  # type: ignore[no-untyped-call]


class SharedSlots:
    """The logits buffers of one model server: LOGIT_SLOTS slots of `slot_bytes` each (a batch of
    float32 logits), in memory files that the scorer creates and passes to that server alone.

    Why shared memory: the logits of the full validation set are ~95 GB in float32. Through a Unix
    socket (~5 GB/s on an H100 host, two copies through the kernel) that is ~20 s; the GPU's copy
    engines move page-locked memory at ~50 GB/s each way, with no socket in between.

    What the model can do with them: write any bytes at any time, which is no more than choosing
    its logits. Each memory file is sealed against shrinking and growing before the model sees it,
    so it cannot truncate a mapping under the scorer. The scorer copies a batch out of the slot
    into its own memory (`copy_out`) before it reads any value; every check and all arithmetic use
    that copy, never the shared bytes, so writing during or after the copy changes nothing that was
    checked. Each model server has its own files: the probe pass never sees the scored pass's
    logits. A slot is split into files of at most RLIMIT_FSIZE bytes (the sandbox's file-size cap
    applies to memory files too)."""

    def __init__(self, slot_bytes: int, device: str, slots: int = LOGIT_SLOTS) -> None:
        limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        chunk = slot_bytes if limit == resource.RLIM_INFINITY else max(PAGE_BYTES, limit - limit % PAGE_BYTES)
        sizes = [min(chunk, slot_bytes - start) for start in range(0, slot_bytes, chunk)]
        if slots * len(sizes) > MAX_BUFFER_FILES:
            raise ValueError(
                f"a logits slot of {slot_bytes} bytes needs {len(sizes)} files under the file-size limit of "
                f"{limit} bytes (at most {MAX_BUFFER_FILES // slots}); raise the limit (max_output_bytes)"
            )
        self.layout = [sizes] * slots
        self.fds: list[int] = []
        self.chunks: list[list[torch.Tensor]] = []
        self.pinned = device.startswith("cuda")
        try:
            for _ in range(slots):
                self.chunks.append([self._create(size) for size in sizes])
        except BaseException:
            self.close()
            raise
        if self.pinned:
            self.pinned = all(pin(chunk) for chunks in self.chunks for chunk in chunks)
        self.kind = "host"  # what the model server maps: memory files

    def describe(self) -> str:
        return f"host memory ({'page-locked' if self.pinned else 'pageable'})"

    def _create(self, size: int) -> torch.Tensor:
        fd = os.memfd_create("autoresearch-logits", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        self.fds.append(fd)
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        return torch.frombuffer(mmap.mmap(fd, size), dtype=torch.uint8)

    def copy_out(self, slot: int, out: torch.Tensor) -> None:
        """Copy the slot's first `out.numel()` bytes into `out` (flat uint8, the scorer's own memory on
        its device); when this returns the copy is complete."""
        offset = 0
        for chunk in self.chunks[slot]:
            n = min(chunk.numel(), out.numel() - offset)
            if n <= 0:
                break
            out[offset : offset + n].copy_(chunk[:n])
            offset += n
        if out.is_cuda:
            torch.cuda.current_stream(out.device).synchronize()

    def close(self) -> None:
        """Close the files (the model server has its own descriptors by now, or never will); the
        mappings go with the last reference to the chunks."""
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []
        if self.pinned:
            for chunk in (c for chunks in self.chunks for c in chunks):
                torch.cuda.cudart().cudaHostUnregister(chunk.data_ptr())  # type: ignore[no-untyped-call]
            self.pinned = False
        self.chunks = []


class DeviceSlots(SharedSlots):
    """The same slots in GPU memory (`SharedGpuBuffer`, below): each slot one allocation on the scorer's GPU,
    passed to the model server as a file descriptor that it maps; the model copies its logits into
    it on the GPU and the scorer copies them out on the GPU (~1 ms per batch instead of two trips
    through host memory). The rules are those of SharedSlots: the model may write any bytes at any
    time; the scorer reads only its own copy, made before it reads any value. Raises
    CudaShareError where the driver refuses (the caller then uses host memory)."""

    def __init__(self, slot_bytes: int, device: str, slots: int = LOGIT_SLOTS) -> None:
        self.buffers = []
        try:
            for _ in range(slots):
                self.buffers.append(SharedGpuBuffer.create(slot_bytes, device))
        except BaseException:
            for buffer in self.buffers:
                buffer.close()
            raise
        self.layout = [[buffer.size] for buffer in self.buffers]
        self.fds = [
            buffer.fd for buffer in self.buffers if buffer.fd is not None
        ]  # create() keeps each one's
        self.chunks = [[buffer.tensor] for buffer in self.buffers]
        self.pinned = False
        self.kind = "cuda"

    def describe(self) -> str:
        return "GPU memory"

    def close(self) -> None:
        self.chunks, self.fds = [], []
        for buffer in self.buffers:
            buffer.close()
        self.buffers = []


def gpu_slots(slot_bytes: int, device: str) -> tuple[DeviceSlots | None, str]:
    """Slots in GPU memory, or None and why the driver refused them."""
    try:
        return DeviceSlots(slot_bytes, device), ""
    except CudaShareError as exc:
        return None, f"the scorer cannot share GPU memory: {exc}"


class ModelChannel:
    """One model server's connection: sends token rows, receives and checks the logits' header
    before it copies their bytes out of its shared slot; anything unexpected raises Voided."""

    def __init__(self, conn: socket.socket, name: str, timeout_s: float) -> None:
        self.conn, self.name = conn, name
        self.slots: SharedSlots | None = None
        self.timings = {"wait_s": 0.0, "copy_s": 0.0}  # blocked on replies; copying logits out
        self.ready = False  # an error before "ready" is the model's build; after, a forward pass
        conn.settimeout(timeout_s)

    def _recv_exact(self, n: int) -> bytearray:
        try:
            return recv_exact(self.conn, n)
        except TimeoutError as exc:
            raise Voided(f"model server {self.name}: no reply in time", "model_timeout") from exc
        except EOFError as exc:
            raise Voided(
                f"model server {self.name} closed the channel (crashed or exited)", "model_crashed"
            ) from exc
        except OSError as exc:
            raise Voided(f"model server {self.name}: channel error {exc}", "model_crashed") from exc

    def _header(self) -> dict[str, Any]:
        (length,) = struct.unpack(">I", self._recv_exact(4))
        if length > MAX_HEADER_BYTES:
            raise Voided(f"model server {self.name}: protocol violation (header of {length} bytes)")
        try:
            header = json.loads(self._recv_exact(length))
        except ValueError as exc:
            raise Voided(f"model server {self.name}: protocol violation (header not JSON)") from exc
        if not isinstance(header, dict):
            raise Voided(f"model server {self.name}: protocol violation (header not an object)")
        if "error" in header:
            code = "model_forward" if self.ready else "model_build"
            raise BadCheckpoint(f"model server {self.name}: {str(header['error'])[:500]}", code)
        return header

    def _send(
        self, header: dict[str, Any], payload: memoryview | bytes = b"", fds: list[int] | None = None
    ) -> None:
        try:
            send(self.conn, header, payload, fds)
        except OSError as exc:
            raise Voided(f"model server {self.name}: channel error {exc}", "model_crashed") from exc

    def wait_ready(self) -> None:
        if self._header() != {"ready": True}:
            raise Voided(f"model server {self.name}: protocol violation (no ready message)")
        self.ready = True

    def share(self, slots: SharedSlots) -> str | None:
        """Offer the model server its logits slots (after it is ready): None when it mapped them
        (they are this channel's from now on), else the reason it gave for refusing them."""
        self._send({"op": "buffers", "kind": slots.kind, "slots": slots.layout}, fds=slots.fds)
        header = self._header()
        if header == {"buffers": "ok"}:
            self.slots = slots
            return None
        if header.get("buffers") == "refused" and set(header) <= {"buffers", "reason"}:
            return str(header.get("reason", ""))[:500]
        raise Voided(f"model server {self.name}: protocol violation (no answer to the buffers)")

    def open_slots(self, slot_bytes: int, device: str, offer: SharedSlots | None = None) -> SharedSlots:
        """This server's own slots: `offer` (GPU memory from `gpu_slots`) if the server maps it,
        else memory files (what a refusal costs is time, never a score)."""
        if offer is not None:
            refused = self.share(offer)
            if refused is None:
                return offer
            offer.close()
            print(
                f"evaluate: model server {self.name} refused GPU memory ({refused}); host memory instead",
                flush=True,
            )
        slots = SharedSlots(slot_bytes, device)
        refused = self.share(slots)
        if refused is not None:
            slots.close()
            raise Voided(f"model server {self.name} refused its logits slots: {refused}")
        return slots

    def _request(self, inputs: torch.Tensor, slot: int) -> None:
        payload = inputs.contiguous().numpy().data.cast("B")
        header = {
            "op": "forward",
            "shape": list(inputs.shape),
            "dtype": "int64",
            "nbytes": len(payload),
            "slot": slot,
        }
        self._send(header, payload)

    def _reply(self, inputs: torch.Tensor, vocab: int, slot: int) -> tuple[list[int], torch.dtype]:
        """The reply's header, checked: shape exactly [B, T, V], a float wire dtype, the byte count
        that shape and dtype need, the slot asked for."""
        header = self._header()
        want = [*inputs.shape, vocab]
        if header.get("shape") != want:
            raise Voided(f"logits have shape {header.get('shape')}; want {want}", "logits_shape")
        dtype = WIRE_DTYPES.get(str(header.get("dtype")))
        if dtype is None:
            raise Voided(
                f"logits have dtype {header.get('dtype')!r}; want float32, bfloat16 or float16",
                "logits_dtype",
            )
        nbytes = math.prod(want) * dtype.itemsize
        if header.get("nbytes") != nbytes:
            raise Voided(
                f"model server {self.name}: protocol violation ({header.get('nbytes')} bytes; want {nbytes})"
            )
        if header.get("slot") != slot:
            raise Voided(
                f"model server {self.name}: protocol violation (slot {header.get('slot')!r}; want {slot})"
            )
        return want, dtype

    def _copy_out(self, shape: list[int], dtype: torch.dtype, slot: int, device: str) -> torch.Tensor:
        if self.slots is None:
            raise RuntimeError("share() the slots before asking for logits")
        logits = torch.empty(shape, dtype=dtype, device=device)
        self.slots.copy_out(slot, logits.view(-1).view(torch.uint8))
        return logits

    def stream(self, batches: Iterable[torch.Tensor], vocab: int, device: str) -> Iterator[torch.Tensor]:
        """Logits [B, T, V] in the wire dtype on `device` (the scorer's own copy) for each int64
        batch [B, T], in order. The next batch's request goes out before this one's bytes are copied,
        so the model computes it (into the other slot) while the scorer copies and scores this one."""
        pending = iter(batches)
        current = next(pending, None)
        if current is not None:
            self._request(current, 0)
        k = 0
        while current is not None:
            slot = k % LOGIT_SLOTS
            started = time.perf_counter()
            shape, dtype = self._reply(current, vocab, slot)
            self.timings["wait_s"] += time.perf_counter() - started
            following = next(pending, None)
            if following is not None:  # its slot was copied out in the step before
                self._request(following, (k + 1) % LOGIT_SLOTS)
            started = time.perf_counter()
            logits = self._copy_out(shape, dtype, slot, device)
            self.timings["copy_s"] += time.perf_counter() - started
            yield logits
            current, k = following, k + 1

    def forward(self, inputs: torch.Tensor, vocab: int, device: str = "cpu") -> torch.Tensor:
        """One batch's logits (wire dtype, on `device`)."""
        return next(iter(self.stream([inputs], vocab, device)))

    def close(self) -> None:
        with contextlib.suppress(OSError, Voided):
            self._send({"op": "exit"})
        self.conn.close()
        if self.slots is not None:
            self.slots.close()


# ---------------------------------------------------------------------------------------------------
# The model server's end: the scorer's slots as it maps them


class MappedSlots:
    """The scorer's slots as the model server maps them: slot s is a list of byte tensors, one per
    memory file or GPU allocation, together holding the slot's bytes in order."""

    def __init__(self, layout: list[list[int]], fds: list[int], device: str, kind: str = "host") -> None:
        self.kind = kind
        self.gpu_buffers: list[SharedGpuBuffer] = []
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
        buffer = SharedGpuBuffer.open(fd, size, device)
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


# ---------------------------------------------------------------------------------------------------
# GPU memory shared between two processes by file descriptor
#
# The scorer and a model server run in different containers on the same GPU. Through host memory the
# logits travel GPU -> host -> GPU (~100 GB per evaluation, bound by the host's copy engines); here the
# scorer allocates the slots in GPU memory and the model server writes them directly, a
# device-to-device copy.
#
# How: the CUDA driver's virtual memory management. The owner creates an allocation that can be
# exported as a POSIX file descriptor (`cuMemCreate` with CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
# `cuMemExportToShareableHandle`), sends the descriptor over the Unix socket (SCM_RIGHTS), and the
# other process imports it (`cuMemImportFromShareableHandle`) and maps it into its own address space.
# The descriptor is the only capability: no shared IPC or PID namespace, no host memory, nothing else
# of either process is reachable through it. Each side sees the allocation as a flat uint8 tensor.
# Only the driver API is used (ctypes over libcuda.so.1, which torch has already loaded); any failure
# raises CudaShareError, and the callers fall back to host memory slots.

CU_MEM_ALLOCATION_TYPE_PINNED = 1
CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 1
CU_MEM_LOCATION_TYPE_DEVICE = 1
CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 3
CU_MEM_ALLOC_GRANULARITY_RECOMMENDED = 1


class CudaShareError(RuntimeError):
    """The driver refused a step of sharing GPU memory (the message names the step and the error)."""


class _Location(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class _AllocFlags(ctypes.Structure):
    _fields_ = [
        ("compressionType", ctypes.c_ubyte),
        ("gpuDirectRDMACapable", ctypes.c_ubyte),
        ("usage", ctypes.c_ushort),
        ("reserved", ctypes.c_ubyte * 4),
    ]


class _AllocationProp(ctypes.Structure):  # CUmemAllocationProp
    _fields_ = [
        ("type", ctypes.c_int),
        ("requestedHandleTypes", ctypes.c_int),
        ("location", _Location),
        ("win32HandleMetaData", ctypes.c_void_p),
        ("allocFlags", _AllocFlags),
    ]


class _AccessDesc(ctypes.Structure):  # CUmemAccessDesc
    _fields_ = [("location", _Location), ("flags", ctypes.c_int)]


_u64, _size, _p = ctypes.c_ulonglong, ctypes.c_size_t, ctypes.POINTER
_SIGNATURES: dict[str, list[Any]] = {
    "cuGetErrorName": [ctypes.c_int, _p(ctypes.c_char_p)],
    "cuMemGetAllocationGranularity": [_p(_size), _p(_AllocationProp), ctypes.c_int],
    "cuMemCreate": [_p(_u64), _size, _p(_AllocationProp), _u64],
    "cuMemExportToShareableHandle": [ctypes.c_void_p, _u64, ctypes.c_int, _u64],
    "cuMemImportFromShareableHandle": [_p(_u64), ctypes.c_void_p, ctypes.c_int],
    "cuMemAddressReserve": [_p(_u64), _size, _size, _u64, _u64],
    "cuMemMap": [_u64, _size, _size, _u64, _u64],
    "cuMemSetAccess": [_u64, _size, _p(_AccessDesc), _size],
    "cuMemUnmap": [_u64, _size],
    "cuMemAddressFree": [_u64, _size],
    "cuMemRelease": [_u64],
}
_driver: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _driver
    if _driver is None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise CudaShareError(f"no CUDA driver library: {exc}") from exc
        for name, argtypes in _SIGNATURES.items():
            function = getattr(lib, name, None)
            if function is None:
                raise CudaShareError(f"the CUDA driver has no {name}")
            function.argtypes, function.restype = argtypes, ctypes.c_int
        _driver = lib
    return _driver


def _call(name: str, *args: Any) -> None:
    lib = _lib()
    code = getattr(lib, name)(*args)
    if code != 0:
        text = ctypes.c_char_p()
        lib.cuGetErrorName(code, ctypes.byref(text))
        raise CudaShareError(f"{name} failed: {(text.value or b'').decode() or code}")


def _device_index(device: str | torch.device) -> int:
    device = torch.device(device)
    if device.type != "cuda":
        raise CudaShareError(f"GPU memory sharing needs a CUDA device, not {device}")
    index = torch.cuda.current_device() if device.index is None else device.index
    torch.cuda.set_device(index)
    torch.empty(1, device=f"cuda:{index}")  # the primary context exists and is current on this thread
    return index


def _location(index: int) -> _Location:
    return _Location(CU_MEM_LOCATION_TYPE_DEVICE, index)


class _DeviceArray:
    """A device pointer as torch sees foreign GPU memory (the CUDA array interface)."""

    def __init__(self, pointer: int, size: int) -> None:
        self.__cuda_array_interface__ = {
            "shape": (size,),
            "typestr": "|u1",
            "data": (pointer, False),
            "strides": None,
            "version": 2,
        }


class SharedGpuBuffer:
    """One allocation of GPU memory mapped into this process as `tensor` (flat uint8, `size` bytes).

    `create` makes a new one and keeps an exportable file descriptor (`fd`) for another process;
    `open` maps one that another process created, from the descriptor it sent (and closes it).
    `close` unmaps it; the memory is freed when no process maps it any more."""

    def __init__(self, handle: int, size: int, index: int, fd: int | None) -> None:
        self.handle, self.size, self.index, self.fd = handle, size, index, fd
        self.pointer = 0
        try:
            reserved = _u64()
            _call("cuMemAddressReserve", ctypes.byref(reserved), size, 0, 0, 0)
            self.pointer = reserved.value
            _call("cuMemMap", self.pointer, size, 0, handle, 0)
            access = _AccessDesc(_location(index), CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
            _call("cuMemSetAccess", self.pointer, size, ctypes.byref(access), 1)
            try:
                self.tensor = torch.as_tensor(_DeviceArray(self.pointer, size), device=f"cuda:{index}")
            except (RuntimeError, TypeError, ValueError) as exc:
                raise CudaShareError(f"torch cannot view the mapping: {exc}") from exc
        except BaseException:
            self.close()
            raise

    @staticmethod
    def granularity(device: str | torch.device) -> int:
        prop = _AllocationProp(
            CU_MEM_ALLOCATION_TYPE_PINNED,
            CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            _location(_device_index(device)),
        )
        value = _size()
        _call(
            "cuMemGetAllocationGranularity",
            ctypes.byref(value),
            ctypes.byref(prop),
            CU_MEM_ALLOC_GRANULARITY_RECOMMENDED,
        )
        return int(value.value)

    @classmethod
    def create(cls, size: int, device: str | torch.device) -> SharedGpuBuffer:
        """A new allocation of at least `size` bytes (rounded up to the driver's granularity)."""
        index = _device_index(device)
        step = cls.granularity(device)
        size = -(-size // step) * step
        prop = _AllocationProp(
            CU_MEM_ALLOCATION_TYPE_PINNED, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, _location(index)
        )
        handle = _u64()
        _call("cuMemCreate", ctypes.byref(handle), size, ctypes.byref(prop), 0)
        fd = ctypes.c_int(-1)
        try:
            _call(
                "cuMemExportToShareableHandle",
                ctypes.byref(fd),
                handle.value,
                CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                0,
            )
        except BaseException:
            _call("cuMemRelease", handle.value)
            raise
        return cls(handle.value, size, index, fd.value)

    @classmethod
    def open(cls, fd: int, size: int, device: str | torch.device) -> SharedGpuBuffer:
        """Map the allocation behind `fd` (from another process's `create`); `fd` is closed."""
        try:
            index = _device_index(device)
            handle = _u64()
            _call(
                "cuMemImportFromShareableHandle", ctypes.byref(handle), ctypes.c_void_p(fd),
                CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            )  # fmt: skip
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        return cls(handle.value, size, index, None)

    def close(self) -> None:
        """Unmap and release (after the GPU is done with it: the device is synchronised first)."""
        self.__dict__.pop("tensor", None)
        if self.pointer:
            with contextlib.suppress(Exception):
                torch.cuda.synchronize(self.index)
            with contextlib.suppress(CudaShareError):
                _call("cuMemUnmap", self.pointer, self.size)
            with contextlib.suppress(CudaShareError):
                _call("cuMemAddressFree", self.pointer, self.size)
            self.pointer = 0
        if self.handle:
            with contextlib.suppress(CudaShareError):
                _call("cuMemRelease", self.handle)
            self.handle = 0
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
