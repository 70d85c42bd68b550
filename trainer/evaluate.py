"""The trusted scorer (a fixed file): bits per byte of a checkpoint on the validation books, and on
the held-out test books when asked.

    python evaluate.py --channel <dir> --train-py <candidate train.py> --checkpoint <dir>
                       --data-dir <train dir> --val-dir <val dir> [--test-dir <test dir>] --out <result.json>
                       [--device cpu|cuda] [--max-docs N] [--batch-size B] [--seed S]
    python evaluate.py --in-process ...         (the same, the candidate imported here: local use only)
    python evaluate.py --hash-only --data-dir <train dir> --val-dir <val dir> [--test-dir <test dir>]

Three fixed files make the scorer: protocol.py (documents, rows, bits per byte: what the score
means), channel.py (the wire and the logits slots between this process and a model server) and this
file (the command line and its steps). `evaluate` runs the steps in order, each timed:

    read_tokenizer   the tokenizer and each token's byte length (checked against token_bytes.npy)
    listen_for_models  with --channel, a socket per model server (they start alongside this process)
    read_split       the documents and rows of the validation split, and of the test split if asked
    hash_inputs      the checkpoint, the candidate's train.py and the fixed files (fixed_hashes)
    score            with --channel: the scored pass on one model server and the causality probes on
                     the other (`score_through_channel`); with --in-process: `score_in_process`
    check_bytes      the target bytes equal the documents' UTF-8 bytes
    result_fields    result.json's fields

With --channel (what the worker runs; docs/evaluation.md) the candidate never enters this process:
two model containers, each running model_server.py on its own socket `<dir>/a/model.sock` and
`<dir>/b/model.sock`, return logits for the rows sent to them (written into shared memory slots
that this process creates, copied out before any value is read); one answers the scored pass, the
other (a fresh model instance) the probe pass, the roles and their order drawn at random. Probe
rows are real rows whose tokens after a random position come from another real row; their logits
before the splice must match the scored pass's. Anything wrong voids the run (exit 2, the reason on
stderr as "evaluate: voided: ..."). --in-process imports the candidate here instead (local use,
benchmarks and tests; the worker never does). --hash-only prints the fixed files' hashes and the
evaluator version as one JSON line (what the worker pins before any run) and scores nothing.

With --test-dir the test books are scored in the same pass as the validation books, by the same
protocol: their documents are packed into rows of their own (no row mixes the two splits), those rows
join the validation rows in the same shuffled batches through the same channel (nothing tells the
model which rows are which), and each split has its own float64 sums; result.json gets `test_bpb`,
`test_tokens` and `test_bytes`, and the test files are hashed with the other fixed files. Nothing
about the test split is printed: the log may reach the proposal's author, result.json does not.

The candidate's `build_model(run.json["config"])` builds the model; weights load with safetensors
(never pickle). On CUDA the model runs under bf16 autocast, as it trained. Exit codes: 0 scored;
2 bad checkpoint or bad model output (the reason on stderr); 1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import socket
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as a script (the image): the fixed files beside it form one package
    __package__ = "autoresearch_fixed"
    folder = types.ModuleType(__package__)
    folder.__path__ = [str(Path(__file__).resolve().parent)]
    sys.modules.setdefault(__package__, folder)

import numpy as np
import torch

from . import channel, prepare, protocol
from .channel import ModelChannel, SharedSlots
from .protocol import BadCheckpoint, Rows, SplitSums, Voided

EVALUATOR_VERSION = "6"  # 2: model in its own container (--channel), causality probes; 3: logits
# through shared memory slots instead of the socket; 4: slots in GPU memory on CUDA, the model server
# accepts or refuses each set of slots (the score is unchanged by both); 5: --test-dir, the held-out
# test split scored in the same pass (val_bpb unchanged); 6: the scorer in three fixed files
# (protocol.py, channel.py, evaluate.py; cuda_ipc.py merged into channel.py), --in-process explicit
# (scores unchanged)
DEFAULT_SEED = 0
MIN_SPLICE = 8  # a probe keeps at least this many of its row's tokens before the splice
PROBE_TOLERANCE = {"cpu": 1e-3, "cuda": 5e-2}  # max |Δ log-prob| of a target: float32 vs bf16 autocast
MODEL_SERVERS = ("a", "b")  # one answers the scored pass, the other the probe pass
# The scorer's own files, hashed into every result beside the tokenizer and the data.
FIXED_FILES = ("prepare.py", "protocol.py", "channel.py", "evaluate.py", "model_server.py")


# ---------------------------------------------------------------------------------------------------
# Causality probes


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


# ---------------------------------------------------------------------------------------------------
# Scoring through the channel (the model in two other containers)


@dataclass
class Passes:
    """What the scored pass and the probe pass write: each row's target log-probs, each probe's,
    the sums per split, and the seconds each pass took."""

    rows: Rows
    probes: ProbeSet
    byte_table: torch.Tensor
    row_logprobs: torch.Tensor = field(init=False)
    probe_logprobs: torch.Tensor = field(init=False)
    sums: list[SplitSums] = field(default_factory=lambda: [SplitSums(), SplitSums()])  # validation, test
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        width = self.rows.targets_mask.shape[1]
        self.row_logprobs = torch.zeros(self.rows.targets_mask.shape, dtype=torch.float32)
        self.probe_logprobs = torch.zeros((len(self.probes.source), width), dtype=torch.float32)

    def timed(self, name: str, run: Callable[[], None]) -> None:
        started = time.perf_counter()
        run()
        self.timings[name] = time.perf_counter() - started


def scored_pass(
    passes: Passes, model: ModelChannel, vocab: int, batch_size: int, device: str, seed: int
) -> None:
    """Every row once, in the protocol's batch order: the sums, and each row's log-probs (for the probes)."""
    rows = passes.rows
    tokens, masks, split = (
        torch.from_numpy(rows.tokens),
        torch.from_numpy(rows.targets_mask),
        rows.split_ids(),
    )
    batches = protocol.batch_order(rows.level, batch_size, seed)
    inputs = (tokens[batch][:, :-1] for batch in batches)
    for batch, logits in zip(batches, model.stream(inputs, vocab, device), strict=True):
        targets, mask = tokens[batch][:, 1:], masks[batch]
        logprobs = protocol.target_logprobs(logits, targets, device).cpu()
        passes.row_logprobs[batch] = logprobs
        protocol.add_batch(passes.sums, logprobs, targets, mask, split[batch], passes.byte_table)


def probe_pass(passes: Passes, model: ModelChannel, vocab: int, batch_size: int, device: str) -> None:
    """The probes and decoys, in full batches, each gathered at its source row's targets."""
    probes = passes.probes
    probe_tokens = torch.from_numpy(probes.rows)
    source_targets = torch.from_numpy(passes.rows.tokens)[torch.from_numpy(probes.source)][:, 1:]
    starts = range(0, len(probes.source), batch_size)
    inputs = (probe_tokens[start : start + batch_size, :-1] for start in starts)
    for start, logits in zip(starts, model.stream(inputs, vocab, device), strict=True):
        targets = source_targets[start : start + batch_size]
        passes.probe_logprobs[start : start + batch_size] = protocol.target_logprobs(
            logits, targets, device
        ).cpu()


def check_probes(passes: Passes, tolerance: float) -> float:
    """The largest difference between a probe's log-probs before its splice and the scored pass's;
    Voided ("lookahead") beyond `tolerance`."""
    rows, probes = passes.rows, passes.probes
    masks = torch.from_numpy(rows.targets_mask)
    worst = 0.0
    for k, (i, cut) in enumerate(zip(probes.source, probes.splice, strict=True)):
        compared = masks[i].clone()
        compared[int(cut) :] = False  # positions up to cut - 1 see only tokens before the splice
        diff = (passes.probe_logprobs[k] - passes.row_logprobs[i])[compared]
        largest = float(diff.abs().max()) if compared.any() else 0.0
        worst = max(worst, largest)
        if not largest <= tolerance:
            what = f"a probe spliced at {int(cut)}" if cut < rows.tokens.shape[1] else "a repeated row"
            raise Voided(
                f"look-ahead or inconsistent logits: {what} changed log-probs before its splice by "
                f"{largest:.3g} (tolerance {tolerance:g})",
                "lookahead",
            )
    return worst


def score_remote(
    channels: list[ModelChannel],
    rows: Rows,
    byte_lengths: np.ndarray,
    batch_size: int,
    device: str,
    seed: int,
    tolerance: float,
) -> dict[str, Any]:
    """The scored pass on one model server and the probe pass on the other (a fresh instance), in
    an order drawn from the seed; then every probe and decoy is compared with the scored pass.
    Validation and test rows (`rows.split`) go through the same batches; each split has its sums."""
    rng = random.Random(f"probes-{seed}")
    vocab = len(byte_lengths)
    probes = make_probes(rows, batch_size, rng)
    scored_model, probe_model = rng.sample(channels, 2)
    probe_first = rng.random() < 0.5
    passes = Passes(rows, probes, torch.from_numpy(byte_lengths))
    order = [
        ("scored_pass_s", lambda: scored_pass(passes, scored_model, vocab, batch_size, device, seed)),
        ("probe_pass_s", lambda: probe_pass(passes, probe_model, vocab, batch_size, device)),
    ]
    with torch.inference_mode():
        for name, run in reversed(order) if probe_first else order:
            passes.timed(name, run)
    for role, model in (("scored", scored_model), ("probe", probe_model)):
        for name, seconds in model.timings.items():
            passes.timings[f"{role}_{name}"] = seconds
    worst = check_probes(passes, tolerance)
    return {
        **protocol.split_scores(passes.sums, rows),
        "probes": {
            "rows": len(probes.source),
            "spliced": int((probes.splice < rows.tokens.shape[1]).sum()),
            "max_logprob_diff": worst,
            "tolerance": tolerance,
            "probe_pass_first": probe_first,
        },
        "timings": passes.timings,
    }


def offer_gpu_slots(device: str, slot_bytes: int, count: int) -> list[SharedSlots | None]:
    """On CUDA, GPU memory slots for each model server (neither sees the other's logits); None where
    the driver refused them (host memory then) and everywhere on the CPU."""
    if not device.startswith("cuda"):
        return [None] * count
    made = [channel.gpu_slots(slot_bytes, device) for _ in range(count)]
    for reason in sorted({reason for _, reason in made if reason}):
        print(f"evaluate: logits slots in host memory ({reason})", flush=True)
    return [offer for offer, _ in made]


def close_unclaimed(offers: list[SharedSlots | None]) -> None:
    """Close the slots made for a model server but never handed over."""
    for offer in offers:
        if offer is not None:
            offer.close()


def score_through_channel(
    args: argparse.Namespace, servers: dict[str, socket.socket], rows: Rows, byte_lengths: np.ndarray,
    lap: Callable[[str], None],
) -> tuple[dict[str, Any], str]:  # fmt: skip
    """Slots offered, both model servers connected and ready, the slots shared, then both passes.
    Returns the scores and where the slots were."""
    slot_bytes = args.batch_size * (protocol.ROW_TOKENS - 1) * len(byte_lengths) * channel.MAX_WIRE_ITEMSIZE
    with contextlib.ExitStack() as cleanup:  # channels first, then unclaimed offers, then the sockets
        for server in servers.values():
            cleanup.callback(server.close)
        offers = offer_gpu_slots(args.device, slot_bytes, len(servers))
        cleanup.callback(close_unclaimed, offers)
        lap("slots_s")
        channels = []
        for name, server in servers.items():
            channels.append(
                ModelChannel(channel.accept(server, name, args.connect_timeout), name, args.reply_timeout)
            )
            cleanup.callback(channels[-1].close)
        for model in channels:
            model.wait_ready()
        lap("models_ready_s")
        slots = []
        for i, model in enumerate(channels):
            slots.append(model.open_slots(slot_bytes, args.device, offers[i]))
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
    return scored, slots_in


# ---------------------------------------------------------------------------------------------------
# Scoring in this process (--in-process: local use, benchmarks and tests; never the worker)


def load_candidate(train_py: Path, checkpoint: Path, device: str) -> tuple[torch.nn.Module, dict[str, Any]]:
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


def score_rows(
    model: torch.nn.Module, rows: Rows, byte_lengths: np.ndarray, batch_size: int, device: str, seed: int
) -> dict[str, Any]:
    """Sum nats and bytes over all targets, per split; checks every batch's logits (shape, dtype,
    finite)."""
    vocab = len(byte_lengths)
    tokens = torch.from_numpy(rows.tokens)
    masks = torch.from_numpy(rows.targets_mask)
    byte_table = torch.from_numpy(byte_lengths).to(device)
    split = rows.split_ids()
    sums = [SplitSums(), SplitSums()]  # validation, test
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    with torch.inference_mode(), autocast:
        for batch in protocol.batch_order(rows.level, batch_size, seed):
            row = tokens[batch].to(device)
            inputs, targets = row[:, :-1], row[:, 1:]
            mask = masks[batch].to(device)
            logits = model(inputs)
            if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (*inputs.shape, vocab):
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise BadCheckpoint(
                    f"logits have shape {shape}; want {(*inputs.shape, vocab)}", "logits_shape"
                )
            if not logits.is_floating_point():
                raise BadCheckpoint(f"logits have dtype {logits.dtype}; want a float dtype", "logits_dtype")
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            if not bool(torch.isfinite(logprobs).all()):
                raise BadCheckpoint("non-finite logits", "non_finite")
            target_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            protocol.add_batch(sums, target_logprobs, targets, mask, split[batch], byte_table)
    return protocol.split_scores(sums, rows)


def score_in_process(args: argparse.Namespace, rows: Rows, byte_lengths: np.ndarray) -> dict[str, Any]:
    model, _ = load_candidate(args.train_py, args.checkpoint, args.device)
    return score_rows(model, rows, byte_lengths, args.batch_size, args.device, args.seed)


# ---------------------------------------------------------------------------------------------------
# Hashing


def fixed_hashes(
    data_dir: Path, val_dir: Path, val_paths: list[Path], test_dir: Path | None = None,
    test_paths: list[Path] | None = None,
) -> dict[str, str]:  # fmt: skip
    """The fixed files' hashes: the scorer's own files, the tokenizer and the validation data; the
    test split's (`test/...`) only when a test directory is given. A file that is absent is left out
    (and then differs from the pin)."""
    here = Path(__file__).resolve().parent
    paths = {
        **{name: here / name for name in FIXED_FILES},
        "tokenizer.json": data_dir / "tokenizer.json",
        "token_bytes.npy": data_dir / "token_bytes.npy",
        **{f"val/{p.name}": p for p in val_paths},
        "val/manifest.json": val_dir / "manifest.json",
    }
    if test_dir is not None:
        paths |= {f"test/{p.name}": p for p in test_paths or []}
        paths["test/manifest.json"] = test_dir / "manifest.json"
    return {name: prepare.sha256_file(path) for name, path in paths.items() if path.is_file()}


def hash_only(args: argparse.Namespace) -> dict[str, Any]:
    """What the worker pins at start-up: no candidate, no checkpoint involved. A split folder
    without files is hashed as absent; the scorer would fail on it anyway."""
    paths: list[Path] = []
    test_paths: list[Path] = []
    with contextlib.suppress(FileNotFoundError):
        paths = protocol.val_files(args.val_dir)
    with contextlib.suppress(FileNotFoundError):
        test_paths = protocol.test_files(args.test_dir) if args.test_dir is not None else []
    hashes = fixed_hashes(args.data_dir, args.val_dir, paths, args.test_dir, test_paths)
    return {"evaluator_version": EVALUATOR_VERSION, "fixed_hashes": hashes}


# ---------------------------------------------------------------------------------------------------
# The steps


class Laps:
    """Seconds per step: each `lap(name)` records the time since the previous lap (or the start)."""

    def __init__(self, **before: float) -> None:
        self.timings: dict[str, float] = dict(before)
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = now - self._clock
        self._clock = now


@dataclass
class Split:
    """The documents and rows of the validation split, and of the test split when asked."""

    val_paths: list[Path]
    test_paths: list[Path]
    documents: list[str]
    test_documents: list[str]
    val_rows: Rows
    test_rows: Rows | None

    @property
    def rows(self) -> Rows:
        """Every row scored: the validation rows, then the test rows (`protocol.join_rows`)."""
        return self.val_rows if self.test_rows is None else protocol.join_rows(self.val_rows, self.test_rows)


def process_age_s() -> float:
    """Seconds since this process started (interpreter, imports, CUDA); 0.0 where /proc cannot say."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime_s - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def read_tokenizer(data_dir: Path) -> tuple[Any, int, np.ndarray]:
    """The tokenizer, its BOS id and each token's UTF-8 byte length, checked against token_bytes.npy."""
    encoding, bos_id, byte_lengths = protocol.load_tokenizer(data_dir / "tokenizer.json")
    table_path = data_dir / "token_bytes.npy"
    if table_path.is_file() and not np.array_equal(np.load(table_path), byte_lengths):
        raise ValueError(f"{table_path} disagrees with tokenizer.json")
    return encoding, bos_id, byte_lengths


def listen_for_models(channel_dir: Path | None) -> dict[str, socket.socket]:
    """With --channel, a listening socket per model server; listen first: the model containers
    start alongside this one."""
    if channel_dir is None:
        return {}
    return {name: channel.listen(channel_dir / name / "model.sock") for name in MODEL_SERVERS}


def read_split(args: argparse.Namespace, encoding: Any, bos_id: int) -> Split:
    """The documents of each split in protocol order, tokenized together and packed apart."""
    val_paths = protocol.val_files(args.val_dir)
    documents = protocol.load_documents(val_paths, args.max_docs)
    test_paths = protocol.test_files(args.test_dir) if args.test_dir is not None else []
    test_documents = protocol.load_documents(test_paths, args.max_docs) if test_paths else []
    if test_paths and not test_documents:
        raise ValueError(f"{args.test_dir}: the test split holds no documents")
    encoded = encoding.encode_ordinary_batch(documents + test_documents, num_threads=os.cpu_count() or 1)
    val_rows = protocol.pack_rows([[bos_id, *ids] for ids in encoded[: len(documents)]], bos_id)
    test_rows = None
    if test_documents:
        test_rows = protocol.pack_rows([[bos_id, *ids] for ids in encoded[len(documents) :]], bos_id)
    return Split(val_paths, test_paths, documents, test_documents, val_rows, test_rows)


def hash_inputs(args: argparse.Namespace, split: Split) -> dict[str, Any]:
    """The checkpoint's weights, the candidate's train.py and the fixed files (while the model
    servers start)."""
    weights = args.checkpoint / "model.safetensors"
    if not weights.is_file():
        raise BadCheckpoint(f"missing {weights}")
    return {
        "checkpoint_sha256": prepare.sha256_file(weights),
        "train_py_sha256": prepare.sha256_file(args.train_py),
        "fixed_hashes": fixed_hashes(
            args.data_dir, args.val_dir, split.val_paths, args.test_dir, split.test_paths
        ),
    }


def check_bytes(scored: dict[str, Any], split: Split) -> None:
    """Every target byte counted once: the sums' bytes are the documents' UTF-8 bytes, per split."""
    doc_bytes = sum(len(d.encode("utf-8")) for d in split.documents)
    test_doc_bytes = sum(len(d.encode("utf-8")) for d in split.test_documents)
    if scored["val_bytes"] != doc_bytes or scored.get("test_bytes", 0) != test_doc_bytes:
        raise ValueError(
            f"target bytes {scored['val_bytes']} != document bytes {doc_bytes}, or the test split's differ "
            "(tokenizer broken?)"
        )


def result_fields(
    args: argparse.Namespace, split: Split, scored: dict[str, Any], hashes: dict[str, Any], slots_in: str,
    timings: dict[str, float], eval_s: float,
) -> dict[str, Any]:  # fmt: skip
    """result.json: the scores, what was scored, how, and the hashes."""
    test_fields = {}
    if split.test_rows is not None:
        test_fields = {
            "test_bpb": scored["test_bpb"],
            "test_tokens": scored["test_tokens"],
            "test_bytes": scored["test_bytes"],
            "test_nats": scored["test_nats"],
            "test_documents": len(split.test_documents),
            "test_rows": len(split.test_rows.level),
        }
    return {
        "val_bpb": scored["val_bpb"],
        "val_tokens": scored["val_tokens"],
        "val_bytes": scored["val_bytes"],
        "val_nats": scored["nats"],
        "num_documents": len(split.documents),
        "num_rows": len(split.val_rows.level),
        **test_fields,
        "evaluator_version": EVALUATOR_VERSION,
        "eval_s": round(eval_s, 3),
        "device": args.device,
        "seed": args.seed,
        "max_docs": args.max_docs,
        **hashes,
        "isolation": "model container" if args.channel is not None else "in-process",
        "logits_slots": slots_in,
        "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
        **({"probes": scored["probes"]} if "probes" in scored else {}),
    }


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """The steps, in order (this file's docstring names them); result.json's fields."""
    started = time.time()
    laps = Laps(startup_s=process_age_s())  # before evaluate(): Python, torch
    torch.manual_seed(args.seed)
    encoding, bos_id, byte_lengths = read_tokenizer(args.data_dir)
    servers = listen_for_models(args.channel)
    split = read_split(args, encoding, bos_id)
    laps.lap("data_s")
    hashes = hash_inputs(args, split)
    laps.lap("hash_s")
    if servers:
        scored, slots_in = score_through_channel(args, servers, split.rows, byte_lengths, laps.lap)
    else:
        scored, slots_in = score_in_process(args, split.rows, byte_lengths), "in-process"
    laps.lap("passes_s")
    check_bytes(scored, split)
    laps.timings.update(scored.get("timings", {}))
    return result_fields(args, split, scored, hashes, slots_in, laps.timings, time.time() - started)


# ---------------------------------------------------------------------------------------------------
# The command line


def write_result(path: Path, result: dict[str, Any]) -> None:
    """result.json, whole or not at all (written beside it, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--train-py", type=Path, help="the candidate (with --channel: hashed only)")
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
        "--in-process", action="store_true",
        help="import the candidate into this process (local use, benchmarks, tests; never the worker)",
    )  # fmt: skip
    parser.add_argument(
        "--connect-timeout", type=float, default=600.0, help="seconds for a model server to be ready"
    )
    parser.add_argument("--reply-timeout", type=float, default=600.0, help="seconds for one batch's logits")
    parser.add_argument(
        "--probe-tolerance", type=float, default=None, help="max |Δ log-prob| before a splice"
    )
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What scoring needs beyond --hash-only's arguments; the device's defaults filled in."""
    if (args.channel is None) == (not args.in_process):
        parser.error("give one of --channel (the model in model servers) and --in-process (local use)")
    missing = [
        f"--{name.replace('_', '-')}"
        for name in ("train_py", "checkpoint", "out")
        if getattr(args, name) is None
    ]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.batch_size is None:
        args.batch_size = 32 if args.device.startswith("cuda") else 4


def start_device(device: str) -> None:
    """On CUDA the driver starts while the documents are read and tokenized; on the CPU, at most
    one thread per core."""
    if device.startswith("cuda"):
        threading.Thread(target=torch.cuda.init, name="cuda-init", daemon=True).start()
    if device == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))


def print_summary(result: dict[str, Any]) -> None:
    """The validation figures on stdout, `key: value` a line (nothing about the test split)."""
    print(f"val_bpb: {result['val_bpb']:.6f}")
    print(f"val_tokens: {result['val_tokens']}")
    print(f"val_bytes: {result['val_bytes']}")
    print(f"num_documents: {result['num_documents']}")
    print(f"eval_s: {result['eval_s']:.1f}")
    print("eval_timings: " + " ".join(f"{name}={seconds:.2f}" for name, seconds in result["timings"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser()
    args = parser.parse_args(argv)
    if args.hash_only:
        print(json.dumps(hash_only(args), sort_keys=True))
        return 0
    check_arguments(parser, args)
    start_device(args.device)
    try:
        result = evaluate(args)
    except BadCheckpoint as exc:
        kind = "voided" if isinstance(exc, Voided) else "bad checkpoint"
        print(f"evaluate: {kind} [{exc.code}]: {exc}", file=sys.stderr)
        write_result(args.out, {"evaluator_version": EVALUATOR_VERSION, "failure": exc.code})
        return 2
    write_result(args.out, result)
    print_summary(result)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # result.json is written: skip the interpreter's and torch's teardown
