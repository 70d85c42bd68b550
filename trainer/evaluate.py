"""The trusted scorer (a fixed file): bits per byte of a checkpoint on the validation books, and on
the held-out test books when asked.

    python evaluate.py --train-py <candidate train.py> --checkpoint <dir> --data-dir <train dir>
                       --val-dir <val dir> [--test-dir <test dir>] --out <result.json>
                       [--device cpu|cuda] [--max-docs N] [--batch-size B] [--seed S]
    python evaluate.py --channel <dir> --data-dir <train dir> --val-dir <val dir> --out <result.json> ...
    python evaluate.py --hash-only --data-dir <train dir> --val-dir <val dir> [--test-dir <test dir>]

With --test-dir the test books are scored in the same pass as the validation books, by the same
protocol: their documents are packed into rows of their own (no row mixes the two splits), those rows
join the validation rows in the same shuffled batches through the same channel (nothing tells the
model which rows are which), and each split has its own float64 sums; result.json gets `test_bpb`,
`test_tokens` and `test_bytes`, and the test files are hashed with the other fixed files. Nothing
about the test split is printed: the log may reach the proposal's author, result.json does not.

With --channel (what the worker runs; docs/evaluation.md) the candidate never enters this process:
two model containers, each running model_server.py on its own socket `<dir>/a/model.sock` and
`<dir>/b/model.sock`, return logits for the rows sent to them (written into shared memory slots
that this process creates, copied out before any value is read); one answers the scored pass, the
other (a fresh model instance) the probe pass, the roles and their order drawn at random. Probe
rows are real rows whose tokens after a random position come from another real row; their logits
before the splice must match the scored pass's. Anything wrong voids the run (exit 2, the reason on
stderr as "evaluate: voided: ..."). Without --channel the candidate is imported in-process (local
use and tests only). --hash-only prints the fixed files' hashes and the evaluator version as one
JSON line (what the worker pins before any run) and scores nothing.

Protocol (docs/architecture.md, "Evaluation protocol"; tests pin it):
  * books in file order, never joined: `text.split("\\n\\n")` gives paragraphs, each cut into
    6,000-character pieces; pieces are joined with "\\n\\n" into a document while it stays at most
    6,000 characters. Each document becomes [BOS] + encode(document).
  * rows of 2,049 tokens (2,048 input positions): a document goes whole into the current row if it
    fits, else into a new row; a document longer than a row fills rows of its own, row k holding its
    tokens [2048k, 2048k + 2049). Unfilled positions are masked; BOS targets count nowhere.
  * the scorer takes log_softmax of the candidate's logits in float32 and sums in float64:
    val_bpb = sum(nats over targets) / (ln 2 * sum(UTF-8 bytes of those targets)).
  * a row that continues a document goes in a later batch than the row before it; the order is
    otherwise shuffled per run (--seed).

The candidate's `build_model(run.json["config"])` builds the model; weights load with safetensors
(never pickle). On CUDA the model runs under bf16 autocast, as it trained. Exit codes: 0 scored;
2 bad checkpoint or bad model output (the reason on stderr); 1 anything else.

"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import lzma
import math
import mmap
import os
import random
import resource
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

EVALUATOR_VERSION = "5"  # 2: model in its own container (--channel), causality probes; 3: logits
# through shared memory slots instead of the socket; 4: slots in GPU memory on CUDA (cuda_ipc.py), the
# model server accepts or refuses each set of slots (the score is unchanged by both); 5: --test-dir,
# the held-out test split scored in the same pass (val_bpb unchanged)
ROW_TOKENS = 2049  # 2,048 input positions + 1
DEFAULT_SEED = 0
HASH_CHUNK_BYTES = 1 << 22


# Why a run could not be scored, as one fixed word: the only thing about a failure that leaves the
# evaluation (result.json's "failure"). The message beside it names shapes, values or text that the
# candidate's code chose, so it goes to the scorer's own log alone, which agents never see.
FAILURE_CODES = (
    "checkpoint",  # model.safetensors or run.json missing or unreadable
    "model_build",  # the candidate's model could not be built or loaded, or failed its warm-up
    "model_forward",  # the model server reported an error for a batch
    "model_crashed",  # the model server closed the channel, or the channel broke
    "model_timeout",  # the model server did not connect, get ready or answer in time
    "protocol",  # the model server sent something the protocol does not allow
    "logits_shape",  # logits not [B, T, V]
    "logits_dtype",  # logits not of a float dtype
    "non_finite",  # logits with NaN or infinity
    "lookahead",  # the causality probes differ from the scored pass
)


class BadCheckpoint(Exception):
    """The checkpoint or the model it builds cannot be scored (exit code 2). `code` is one of
    FAILURE_CODES; the message is for the scorer's log only."""

    default_code = "checkpoint"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        assert self.code in FAILURE_CODES, self.code


class Voided(BadCheckpoint):
    """The model broke the protocol or cheated (exit code 2, "evaluate: voided [code]: <reason>")."""

    default_code = "protocol"


# ---------------------------------------------------------------------------------------------------
# Documents and tokens


def _fixed_sibling(name: str):  # -> module
    """The fixed file `<name>.py` beside this one, loaded by its path: the very copy that
    `fixed_hashes` hashes, whether this file runs as a script (the scorer container, bench), is
    imported as `trainer.evaluate` (tests) or is loaded by path; never a module of that name found
    elsewhere on sys.path."""
    path = Path(__file__).resolve().parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"autoresearch_fixed_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The document splitting of the protocol has one copy, in prepare.py (training documents are split
# the same way as scored ones).
_prepare = _fixed_sibling("prepare")
_cuda_ipc = _fixed_sibling("cuda_ipc")  # the logits slots in GPU memory
MAX_DOC_CHARS = _prepare.MAX_DOC_CHARS
book_documents = _prepare.book_documents


def split_files(directory: Path, what: str) -> list[Path]:
    """The .jsonl and .jsonl.xz files of a held-out split's directory, in name order."""
    files = sorted(p for p in Path(directory).iterdir() if p.name.endswith((".jsonl", ".jsonl.xz")))
    if not files:
        raise FileNotFoundError(f"{directory}: no {what} .jsonl or .jsonl.xz file")
    return files


def val_files(val_dir: Path) -> list[Path]:
    return split_files(val_dir, "validation")


def test_files(test_dir: Path) -> list[Path]:
    return split_files(test_dir, "test")


def load_documents(paths: list[Path], max_docs: int | None = None) -> list[str]:
    """All documents of a split in protocol order (files, books, documents), the first `max_docs`."""
    documents: list[str] = []
    for path in paths:
        opener = lzma.open if path.name.endswith(".xz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    documents.extend(book_documents(json.loads(line)["text"]))
                if max_docs is not None and len(documents) >= max_docs:
                    return documents[:max_docs]
    return documents


def load_tokenizer(path: Path):  # -> (tiktoken.Encoding, bos_id, token byte lengths)
    import tiktoken

    spec = json.loads(Path(path).read_text())
    tokens = [base64.b64decode(t) for t in spec["mergeable_ranks"]]
    encoding = tiktoken.Encoding(
        name="autoresearch-bpe",
        pat_str=spec["pattern"],
        mergeable_ranks={t: i for i, t in enumerate(tokens)},
        special_tokens={spec["bos_token"]: spec["bos_id"]},
    )
    byte_lengths = np.zeros(spec["vocab_size"], dtype=np.int64)
    byte_lengths[: len(tokens)] = [len(t) for t in tokens]  # special tokens keep 0
    return encoding, spec["bos_id"], byte_lengths


# ---------------------------------------------------------------------------------------------------
# Rows


VAL, TEST = 0, 1  # a row's split


@dataclass
class Rows:
    tokens: np.ndarray  # int64 [R, 2049]; unfilled positions hold BOS
    targets_mask: np.ndarray  # bool [R, 2048]: position t scores tokens[:, t + 1]
    level: np.ndarray  # int64 [R]: 0 for a row that starts a document, k for its k-th continuation
    split: np.ndarray | None = None  # int64 [R]: VAL or TEST (None: every row is a validation row)

    def split_ids(self) -> np.ndarray:
        return np.full(len(self.level), VAL, dtype=np.int64) if self.split is None else self.split


def join_rows(val: Rows, test: Rows) -> Rows:
    """Validation rows and test rows, each packed on its own (no row holds both), as one set of rows
    whose batches mix the two at random like any other rows."""
    split = np.concatenate([np.full(len(val.level), VAL), np.full(len(test.level), TEST)]).astype(np.int64)
    return Rows(
        np.concatenate([val.tokens, test.tokens]),
        np.concatenate([val.targets_mask, test.targets_mask]),
        np.concatenate([val.level, test.level]),
        split,
    )


@dataclass
class SplitSums:
    """One split's float64 sum of nats, and its targets' UTF-8 bytes and count."""

    nats: float = 0.0
    num_bytes: int = 0
    targets: int = 0

    def add(
        self, logprobs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, byte_table: torch.Tensor
    ) -> None:
        self.nats -= float(logprobs[mask].double().sum())
        self.num_bytes += int(byte_table[targets[mask]].sum())
        self.targets += int(mask.sum())

    def bpb(self) -> float:
        return self.nats / (math.log(2) * self.num_bytes) if self.num_bytes else float("nan")


def add_batch(
    sums: list[SplitSums], logprobs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
    split: np.ndarray, byte_table: torch.Tensor,
) -> None:  # fmt: skip
    """Add one batch's target log-probs [B, T] to the sums of the split each row belongs to."""
    for index, total in enumerate(sums):
        rows = torch.from_numpy(split == index).to(logprobs.device)
        if bool(rows.all()):
            total.add(logprobs, targets, mask, byte_table)
        elif bool(rows.any()):
            total.add(logprobs[rows], targets[rows], mask[rows], byte_table)


def split_scores(sums: list[SplitSums], rows: Rows) -> dict:
    """The scores' fields: val_* always, test_* when there are test rows."""
    val = sums[VAL]
    scores = {"nats": val.nats, "val_tokens": val.targets, "val_bytes": val.num_bytes, "val_bpb": val.bpb()}
    if bool((rows.split_ids() == TEST).any()):
        test = sums[TEST]
        scores |= {"test_nats": test.nats, "test_tokens": test.targets, "test_bytes": test.num_bytes,
                   "test_bpb": test.bpb()}  # fmt: skip
    return scores


def pack_rows(docs: list[list[int]], bos_id: int, row_tokens: int = ROW_TOKENS) -> Rows:
    """Place documents (each [BOS] + tokens) into rows as the protocol says."""
    step = row_tokens - 1
    rows: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    levels: list[int] = []
    current: list[int] = []

    def emit(row: list[int], level: int) -> None:
        padded = np.full(row_tokens, bos_id, dtype=np.int64)
        padded[: len(row)] = row
        target = padded[1:]
        mask = (np.arange(1, row_tokens) < len(row)) & (target != bos_id)
        rows.append(padded)
        masks.append(mask)
        levels.append(level)

    for doc in docs:
        if len(doc) <= row_tokens - len(current):
            current.extend(doc)
            continue
        if current:
            emit(current, 0)
            current = []
        if len(doc) <= row_tokens:
            current = list(doc)
            continue
        for k, start in enumerate(range(0, len(doc) - 1, step)):
            emit(doc[start : start + row_tokens], k)
    if current:
        emit(current, 0)
    return Rows(np.stack(rows), np.stack(masks), np.array(levels, dtype=np.int64))


def batch_order(levels: np.ndarray, batch_size: int, seed: int) -> list[np.ndarray]:
    """Batches of row indices: shuffled, level by level, so a continuation row always comes in a
    later batch than the row it continues (a batch never mixes levels)."""
    rng = random.Random(seed)
    batches = []
    for level in range(int(levels.max()) + 1 if len(levels) else 0):
        indices = [int(i) for i in np.flatnonzero(levels == level)]
        rng.shuffle(indices)
        batches += [np.array(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]
    return batches


# ---------------------------------------------------------------------------------------------------
# Candidate model


def load_candidate(train_py: Path, checkpoint: Path, device: str) -> tuple[torch.nn.Module, dict]:
    from safetensors.torch import load_model

    weights, run_json = checkpoint / "model.safetensors", checkpoint / "run.json"
    for path in (weights, run_json):
        if not path.is_file():
            raise BadCheckpoint(f"missing {path}")
    try:
        config = json.loads(run_json.read_text())["config"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadCheckpoint(f"{run_json}: no JSON object with a 'config' field ({exc})") from exc
    spec = importlib.util.spec_from_file_location("candidate_train", train_py)
    if spec is None or spec.loader is None:
        raise BadCheckpoint(f"cannot import {train_py}", "model_build")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "build_model", None)):
        raise BadCheckpoint(f"{train_py} defines no build_model(config)", "model_build")
    try:
        model = module.build_model(config)
    except Exception as exc:  # any failure of the candidate's constructor is the checkpoint's fault
        raise BadCheckpoint(f"build_model(run.json config) failed: {exc!r}", "model_build") from exc
    try:
        load_model(model, str(weights), strict=True, device="cpu")
    except Exception as exc:  # safetensors reports shape and key mismatches as RuntimeError or others
        raise BadCheckpoint(f"{weights} does not fit build_model(config): {exc}", "model_build") from exc
    return model.to(device).eval(), config


def score_rows(model, rows: Rows, byte_lengths: np.ndarray, batch_size: int, device: str, seed: int) -> dict:
    """Sum nats and bytes over all targets, per split; checks every batch's logits (shape, dtype,
    finite)."""
    vocab = len(byte_lengths)
    tokens = torch.from_numpy(rows.tokens)
    masks = torch.from_numpy(rows.targets_mask)
    byte_table = torch.from_numpy(byte_lengths).to(device)
    split = rows.split_ids()
    sums = [SplitSums(), SplitSums()]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    with torch.inference_mode(), autocast:
        for batch in batch_order(rows.level, batch_size, seed):
            row = tokens[batch].to(device)
            inputs, targets = row[:, :-1], row[:, 1:]
            mask = masks[batch].to(device)
            logits = model(inputs)
            if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (*inputs.shape, vocab):
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise BadCheckpoint(f"logits have shape {shape}; want {(*inputs.shape, vocab)}", "logits_shape")
            if not logits.is_floating_point():
                raise BadCheckpoint(f"logits have dtype {logits.dtype}; want a float dtype", "logits_dtype")
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            if not bool(torch.isfinite(logprobs).all()):
                raise BadCheckpoint("non-finite logits", "non_finite")
            target_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            add_batch(sums, target_logprobs, targets, mask, split[batch], byte_table)
    return split_scores(sums, rows)


# ---------------------------------------------------------------------------------------------------
# The candidate in another container (--channel)

MAX_HEADER_BYTES = 1 << 16
WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_WIRE_ITEMSIZE = 4  # bytes per logit in the widest wire dtype (float32): what a slot is sized for
MIN_SPLICE = 8  # a probe keeps at least this many of its row's tokens before the splice
PROBE_TOLERANCE = {"cpu": 1e-3, "cuda": 5e-2}  # max |Δ log-prob| of a target: float32 vs bf16 autocast
LOGIT_SLOTS = 2  # the model fills one slot while the scorer copies the other out
MAX_BUFFER_FILES = 64  # memory files per model server (slots x chunks; SCM_RIGHTS carries <= 253)
PAGE_BYTES = 4096


def pin(data: torch.Tensor) -> bool:
    """Page-lock a mapped buffer for the GPU's copy engines (~50 GB/s instead of ~7 on an H100
    host); False where the driver refuses, and copies then go through pageable memory."""
    return int(torch.cuda.cudart().cudaHostRegister(data.data_ptr(), data.numel(), 0)) == 0


class SharedSlots:
    """The logits buffers of one model server: LOGIT_SLOTS slots of `slot_bytes` each (a batch of
    float32 logits), in memory files that this process creates and passes to that server alone.

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
                torch.cuda.cudart().cudaHostUnregister(chunk.data_ptr())
            self.pinned = False
        self.chunks = []


class DeviceSlots(SharedSlots):
    """The same slots in GPU memory (cuda_ipc.py): each slot one allocation on the scorer's GPU,
    passed to the model server as a file descriptor that it maps; the model copies its logits into
    it on the GPU and the scorer copies them out on the GPU (~1 ms per batch instead of two trips
    through host memory). The rules are those of SharedSlots: the model may write any bytes at any
    time; the scorer reads only its own copy, made before it reads any value. Raises
    cuda_ipc.CudaShareError where the driver refuses (the caller then uses host memory)."""

    def __init__(self, slot_bytes: int, device: str, slots: int = LOGIT_SLOTS) -> None:
        self.buffers = []
        try:
            for _ in range(slots):
                self.buffers.append(_cuda_ipc.SharedGpuBuffer.create(slot_bytes, device))
        except BaseException:
            for buffer in self.buffers:
                buffer.close()
            raise
        self.layout = [[buffer.size] for buffer in self.buffers]
        self.fds = [buffer.fd for buffer in self.buffers]
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
    except _cuda_ipc.CudaShareError as exc:
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
        buffer = bytearray(n)
        view = memoryview(buffer)
        got = 0
        while got < n:
            try:
                k = self.conn.recv_into(view[got:], n - got)
            except TimeoutError as exc:
                raise Voided(f"model server {self.name}: no reply in time", "model_timeout") from exc
            except OSError as exc:
                raise Voided(f"model server {self.name}: channel error {exc}", "model_crashed") from exc
            if k == 0:
                raise Voided(f"model server {self.name} closed the channel (crashed or exited)", "model_crashed")
            got += k
        return buffer

    def _header(self) -> dict:
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

    def _send(self, header: dict, payload: memoryview | bytes = b"", fds: list[int] | None = None) -> None:
        data = json.dumps(header).encode()
        message = struct.pack(">I", len(data)) + data
        try:
            if fds:
                socket.send_fds(self.conn, [message], fds)
            else:
                self.conn.sendall(message)
            if len(payload):
                self.conn.sendall(payload)
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
            print(f"evaluate: model server {self.name} refused GPU memory ({refused}); host memory instead", flush=True)
        slots = SharedSlots(slot_bytes, device)
        refused = self.share(slots)
        if refused is not None:
            slots.close()
            raise Voided(f"model server {self.name} refused its logits slots: {refused}")
        return slots

    def _request(self, inputs: torch.Tensor, slot: int) -> None:
        payload = memoryview(inputs.contiguous().numpy()).cast("B")
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
                f"logits have dtype {header.get('dtype')!r}; want float32, bfloat16 or float16", "logits_dtype"
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
        raise Voided(f"model server {name} did not connect within {timeout_s:.0f} s", "model_timeout") from exc
    finally:
        server.close()  # one connection per socket: one container, one model instance
    conn.setblocking(True)
    return conn


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, device: str) -> torch.Tensor:
    """log_softmax in float32 by the scorer, gathered at the targets; checks finiteness."""
    logprobs = torch.log_softmax(logits.to(device).float(), dim=-1)
    if not bool(torch.isfinite(logprobs).all()):
        raise Voided("non-finite logits", "non_finite")
    return logprobs.gather(-1, targets.to(device).unsqueeze(-1)).squeeze(-1)


@dataclass
class ProbeSet:
    rows: np.ndarray  # int64 [P, 2049]: spliced rows (probes) and unmodified rows (decoys)
    source: np.ndarray  # int64 [P]: the row each one comes from
    splice: np.ndarray  # int64 [P]: input positions < splice are compared; a decoy's splice is the row end


def make_probes(rows: Rows, batch_size: int, rng: random.Random) -> ProbeSet:
    """About 4% of the rows (at least two batches), half spliced probes, half untouched decoys, in
    full batches, so the probe pass looks like a piece of an ordinary one. Sources are drawn from
    all rows, so a model that cheats on a fraction f of the scored pass's rows (by batch position,
    content, or anything else) escapes with probability about (1 - f) ** len(probes)."""
    count = len(rows.level)
    lengths = rows.targets_mask.shape[1] - np.argmax(rows.targets_mask[:, ::-1], axis=1)
    lengths[~rows.targets_mask.any(axis=1)] = 0
    eligible = [i for i in range(count) if lengths[i] > 2 * MIN_SPLICE]
    if len(eligible) < 2:
        raise ValueError("too few validation rows for causality probes")
    size = max(2 * batch_size, -(-count // 25 // batch_size) * batch_size)
    chosen = [rng.choice(eligible) for _ in range(size)]
    tokens, source, splice = [], [], []
    for k, i in enumerate(chosen):
        row = rows.tokens[i].copy()
        cut = rows.tokens.shape[1]
        if k % 2 == 0:  # a probe: another real row's tokens after a random position
            donor = rng.choice([j for j in eligible if j != i])
            cut = rng.randint(MIN_SPLICE, int(lengths[i]) - MIN_SPLICE)
            row[cut:] = rows.tokens[donor][cut:]
        tokens.append(row)
        source.append(i)
        splice.append(cut)
    order = list(range(size))
    rng.shuffle(order)
    return ProbeSet(np.stack(tokens)[order], np.array(source)[order], np.array(splice)[order])


def score_remote(
    channels: list[ModelChannel],
    rows: Rows,
    byte_lengths: np.ndarray,
    batch_size: int,
    device: str,
    seed: int,
    tolerance: float,
) -> dict:
    """The scored pass on one model server and the probe pass on the other (a fresh instance), in
    an order drawn from the seed; then every probe and decoy is compared with the scored pass.
    Validation and test rows (`rows.split`) go through the same batches; each split has its sums."""
    rng = random.Random(f"probes-{seed}")
    vocab = len(byte_lengths)
    probes = make_probes(rows, batch_size, rng)
    scored_channel, probe_channel = rng.sample(channels, 2)
    probe_first = rng.random() < 0.5
    tokens = torch.from_numpy(rows.tokens)
    masks = torch.from_numpy(rows.targets_mask)
    byte_table = torch.from_numpy(byte_lengths)
    split = rows.split_ids()
    row_logprobs = torch.zeros(rows.targets_mask.shape, dtype=torch.float32)
    probe_logprobs = torch.zeros((len(probes.source), rows.targets_mask.shape[1]), dtype=torch.float32)

    def probe_pass() -> None:
        probe_tokens = torch.from_numpy(probes.rows)
        source_targets = tokens[torch.from_numpy(probes.source)][:, 1:]  # gathered at the source's targets
        starts = range(0, len(probes.source), batch_size)
        inputs = (probe_tokens[start : start + batch_size, :-1] for start in starts)
        for start, logits in zip(starts, probe_channel.stream(inputs, vocab, device), strict=True):
            targets = source_targets[start : start + batch_size]
            probe_logprobs[start : start + batch_size] = target_logprobs(logits, targets, device).cpu()

    sums = [SplitSums(), SplitSums()]  # validation, test
    timings: dict[str, float] = {}
    with torch.inference_mode():
        if probe_first:
            started = time.perf_counter()
            probe_pass()
            timings["probe_pass_s"] = time.perf_counter() - started
        started = time.perf_counter()
        batches = batch_order(rows.level, batch_size, seed)
        inputs = (tokens[batch][:, :-1] for batch in batches)
        for batch, logits in zip(batches, scored_channel.stream(inputs, vocab, device), strict=True):
            targets, mask = tokens[batch][:, 1:], masks[batch]
            logprobs = target_logprobs(logits, targets, device).cpu()
            row_logprobs[batch] = logprobs
            add_batch(sums, logprobs, targets, mask, split[batch], byte_table)
        timings["scored_pass_s"] = time.perf_counter() - started
        if not probe_first:
            started = time.perf_counter()
            probe_pass()
            timings["probe_pass_s"] = time.perf_counter() - started
    for role, channel in (("scored", scored_channel), ("probe", probe_channel)):
        for name, seconds in channel.timings.items():
            timings[f"{role}_{name}"] = seconds
    worst = 0.0
    for k, (i, cut) in enumerate(zip(probes.source, probes.splice, strict=True)):
        compared = masks[i].clone()
        compared[int(cut) :] = False  # positions up to cut - 1 see only tokens before the splice
        diff = float((probe_logprobs[k] - row_logprobs[i])[compared].abs().max()) if compared.any() else 0.0
        worst = max(worst, diff)
        if not diff <= tolerance:
            what = f"a probe spliced at {int(cut)}" if cut < rows.tokens.shape[1] else "a repeated row"
            raise Voided(
                f"look-ahead or inconsistent logits: {what} changed log-probs before its splice by "
                f"{diff:.3g} (tolerance {tolerance:g})",
                "lookahead",
            )
    return {
        **split_scores(sums, rows),
        "probes": {
            "rows": len(probes.source),
            "spliced": int((probes.splice < rows.tokens.shape[1]).sum()),
            "max_logprob_diff": worst,
            "tolerance": tolerance,
            "probe_pass_first": probe_first,
        },
        "timings": timings,
    }


# ---------------------------------------------------------------------------------------------------
# Main


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fixed_hashes(
    data_dir: Path, val_dir: Path, val_paths: list[Path], test_dir: Path | None = None,
    test_paths: list[Path] | None = None,
) -> dict[str, str]:  # fmt: skip
    """The fixed files' hashes; the test split's (`test/...`) only when a test directory is given."""
    here = Path(__file__).resolve().parent
    paths = {
        "prepare.py": here / "prepare.py",
        "evaluate.py": here / "evaluate.py",
        "tokenizer.json": data_dir / "tokenizer.json",
        "token_bytes.npy": data_dir / "token_bytes.npy",
        **{f"val/{p.name}": p for p in val_paths},
        "val/manifest.json": val_dir / "manifest.json",
        "model_server.py": here / "model_server.py",
        "cuda_ipc.py": here / "cuda_ipc.py",
    }
    if test_dir is not None:
        paths |= {f"test/{p.name}": p for p in test_paths or []}
        paths["test/manifest.json"] = test_dir / "manifest.json"
    return {name: sha256_file(path) for name, path in paths.items() if path.is_file()}


def process_age_s() -> float:
    """Seconds since this process started (interpreter, imports, CUDA); 0.0 where /proc cannot say."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime_s - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def evaluate(args: argparse.Namespace) -> dict:
    started = time.time()
    clock = time.perf_counter()
    timings: dict[str, float] = {"startup_s": process_age_s()}  # before evaluate(): Python, torch

    def lap(name: str) -> None:  # seconds since the previous lap (or the start)
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    torch.manual_seed(args.seed)
    encoding, bos_id, byte_lengths = load_tokenizer(args.data_dir / "tokenizer.json")
    table_path = args.data_dir / "token_bytes.npy"
    if table_path.is_file() and not np.array_equal(np.load(table_path), byte_lengths):
        raise ValueError(f"{table_path} disagrees with tokenizer.json")
    servers = {}
    if args.channel is not None:  # listen first: the model containers start alongside this one
        servers = {name: listen(args.channel / name / "model.sock") for name in ("a", "b")}
    paths = val_files(args.val_dir)
    documents = load_documents(paths, args.max_docs)
    test_paths = test_files(args.test_dir) if args.test_dir is not None else []
    test_documents = load_documents(test_paths, args.max_docs) if test_paths else []
    if test_paths and not test_documents:
        raise ValueError(f"{args.test_dir}: the test split holds no documents")
    encoded = encoding.encode_ordinary_batch(documents + test_documents, num_threads=os.cpu_count() or 1)
    rows = val_rows = pack_rows([[bos_id, *ids] for ids in encoded[: len(documents)]], bos_id)
    if test_documents:
        test_rows = pack_rows([[bos_id, *ids] for ids in encoded[len(documents) :]], bos_id)
        rows = join_rows(val_rows, test_rows)
    doc_bytes = sum(len(d.encode("utf-8")) for d in documents)
    test_doc_bytes = sum(len(d.encode("utf-8")) for d in test_documents)
    lap("data_s")
    weights = args.checkpoint / "model.safetensors"
    if not weights.is_file():
        raise BadCheckpoint(f"missing {weights}")
    hashes = {  # while the model servers start
        "checkpoint_sha256": sha256_file(weights),
        "train_py_sha256": sha256_file(args.train_py),
        "fixed_hashes": fixed_hashes(args.data_dir, args.val_dir, paths, args.test_dir, test_paths),
    }
    lap("hash_s")
    slots_in = "in-process"
    if servers:
        channels = []
        slot_bytes = args.batch_size * (ROW_TOKENS - 1) * len(byte_lengths) * MAX_WIRE_ITEMSIZE
        offers: list[SharedSlots | None] = [None] * len(servers)
        try:
            if args.device.startswith("cuda"):  # each server its own slots: neither sees the other's logits
                made = [gpu_slots(slot_bytes, args.device) for _ in servers]
                offers = [offer for offer, _ in made]
                for reason in sorted({reason for _, reason in made if reason}):
                    print(f"evaluate: logits slots in host memory ({reason})", flush=True)
            lap("slots_s")
            for name, server in servers.items():
                channels.append(
                    ModelChannel(accept(server, name, args.connect_timeout), name, args.reply_timeout)
                )
            for channel in channels:
                channel.wait_ready()
            lap("models_ready_s")
            slots = []
            for i, channel in enumerate(channels):
                slots.append(channel.open_slots(slot_bytes, args.device, offers[i]))
                offers[i] = None  # the channel's now (closed with it), or closed on refusal
            slots_in = " and ".join(sorted({s.describe() for s in slots}))
            print(f"evaluate: logits slots of {slot_bytes:,} bytes in {slots_in}", flush=True)
            lap("share_s")
            tolerance = args.probe_tolerance
            if tolerance is None:
                tolerance = PROBE_TOLERANCE["cuda" if args.device.startswith("cuda") else "cpu"]
            scored = score_remote(
                channels, rows, byte_lengths, args.batch_size, args.device, args.seed, tolerance
            )
        finally:
            for channel in channels:
                channel.close()
            for offer in offers:  # made but never handed over
                if offer is not None:
                    offer.close()
            for server in servers.values():
                server.close()
    else:
        model, _ = load_candidate(args.train_py, args.checkpoint, args.device)
        scored = score_rows(model, rows, byte_lengths, args.batch_size, args.device, args.seed)
    lap("passes_s")
    if scored["val_bytes"] != doc_bytes or scored.get("test_bytes", 0) != test_doc_bytes:
        raise ValueError(
            f"target bytes {scored['val_bytes']} != document bytes {doc_bytes}, or the test split's differ "
            "(tokenizer broken?)"
        )
    timings.update(scored.get("timings", {}))
    test_fields = {}
    if test_documents:
        test_fields = {
            "test_bpb": scored["test_bpb"],
            "test_tokens": scored["test_tokens"],
            "test_bytes": scored["test_bytes"],
            "test_nats": scored["test_nats"],
            "test_documents": len(test_documents),
            "test_rows": len(test_rows.level),
        }
    return {
        "val_bpb": scored["val_bpb"],
        "val_tokens": scored["val_tokens"],
        "val_bytes": scored["val_bytes"],
        "val_nats": scored["nats"],
        "num_documents": len(documents),
        "num_rows": len(val_rows.level),
        **test_fields,
        "evaluator_version": EVALUATOR_VERSION,
        "eval_s": round(time.time() - started, 3),
        "device": args.device,
        "seed": args.seed,
        "max_docs": args.max_docs,
        **hashes,
        "isolation": "model container" if servers else "in-process",
        "logits_slots": slots_in,
        "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
        **({"probes": scored["probes"]} if "probes" in scored else {}),
    }


def write_result(path: Path, result: dict) -> None:
    """result.json, whole or not at all (written beside it, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-py", type=Path, help="hashed only, with --channel")
    parser.add_argument("--checkpoint", type=Path, help="dir with model.safetensors and run.json")
    parser.add_argument("--data-dir", type=Path, required=True, help="training data dir (for the tokenizer)")
    parser.add_argument("--val-dir", type=Path, required=True)
    parser.add_argument(
        "--test-dir", type=Path, default=None, help="the held-out test split, scored in the same pass"
    )
    parser.add_argument("--out", type=Path, help="result.json path")
    parser.add_argument(
        "--hash-only", action="store_true",
        help="print the fixed files' hashes and the evaluator version as one JSON line, score nothing",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda where there is one)")
    parser.add_argument("--max-docs", type=int, default=None, help="score only the first N documents")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="rows per batch (default 32 cuda, 4 cpu)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the row order")
    parser.add_argument(
        "--channel",
        type=Path,
        default=None,
        help="dir of the model servers' sockets (a/, b/): never import the candidate",
    )
    parser.add_argument(
        "--connect-timeout", type=float, default=600.0, help="seconds for a model server to be ready"
    )
    parser.add_argument("--reply-timeout", type=float, default=600.0, help="seconds for one batch's logits")
    parser.add_argument(
        "--probe-tolerance", type=float, default=None, help="max |Δ log-prob| before a splice"
    )
    args = parser.parse_args(argv)
    if args.hash_only:  # what the worker pins at start-up: no candidate, no checkpoint involved
        paths, test_paths = [], []
        with contextlib.suppress(FileNotFoundError):  # hashed as absent; the scorer would fail on it anyway
            paths = val_files(args.val_dir)
        with contextlib.suppress(FileNotFoundError):
            test_paths = test_files(args.test_dir) if args.test_dir is not None else []
        hashes = fixed_hashes(args.data_dir, args.val_dir, paths, args.test_dir, test_paths)
        print(json.dumps({"evaluator_version": EVALUATOR_VERSION, "fixed_hashes": hashes}, sort_keys=True))
        return 0
    missing = [
        f"--{name.replace('_', '-')}"
        for name in ("train_py", "checkpoint", "out")
        if getattr(args, name) is None
    ]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda"):  # the driver starts while the documents are read and tokenized
        threading.Thread(target=torch.cuda.init, name="cuda-init", daemon=True).start()
    if args.batch_size is None:
        args.batch_size = 32 if args.device.startswith("cuda") else 4
    if args.device == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    try:
        result = evaluate(args)
    except BadCheckpoint as exc:
        kind = "voided" if isinstance(exc, Voided) else "bad checkpoint"
        print(f"evaluate: {kind} [{exc.code}]: {exc}", file=sys.stderr)
        write_result(args.out, {"evaluator_version": EVALUATOR_VERSION, "failure": exc.code})
        return 2
    write_result(args.out, result)
    print(f"val_bpb: {result['val_bpb']:.6f}")
    print(f"val_tokens: {result['val_tokens']}")
    print(f"val_bytes: {result['val_bytes']}")
    print(f"num_documents: {result['num_documents']}")
    print(f"eval_s: {result['eval_s']:.1f}")
    print("eval_timings: " + " ".join(f"{name}={seconds:.2f}" for name, seconds in result["timings"].items()))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # result.json is written: skip the interpreter's and torch's teardown
