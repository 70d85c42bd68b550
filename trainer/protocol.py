"""The evaluation protocol (a fixed file): documents, rows, bits per byte, and how a failure is named.

What the score means, in the order the scorer applies it (docs/architecture.md, "Evaluation
protocol"); the tests pin each step:

  * documents: books in file order, never joined. `text.split("\\n\\n")` gives paragraphs, each cut
    into 6,000-character pieces; pieces are joined with "\\n\\n" into a document while it stays at
    most 6,000 characters (`load_documents`, using prepare.py's `book_documents`: training
    documents are split the same way). Each document becomes [BOS] + encode(document). Pinned: the
    Gutenberg validation file gives 2,091 documents and 11,590,992 target bytes, whatever the
    tokenizer.
  * rows of 2,049 tokens (2,048 input positions): a document goes whole into the current row if it
    fits, else into a new row; a document longer than a row fills rows of its own, row k holding its
    tokens [2048k, 2048k + 2049). Unfilled positions are masked; BOS targets count nowhere
    (`pack_rows`). Test rows are packed apart from validation rows (`join_rows`).
  * order: a row that continues a document goes in a later batch than the row before it; the order
    is otherwise shuffled per run (`batch_order`).
  * bits per byte: the scorer takes log_softmax of the candidate's logits in float32
    (`target_logprobs`) and sums in float64, per split (`SplitSums`):
    val_bpb = sum(nats over targets) / (ln 2 * sum(UTF-8 bytes of those targets)).

A failure leaves the evaluation as one word of `FAILURE_CODES` (result.json's "failure"); the
message beside it names what the candidate's code chose, so it goes to the scorer's own log alone.
"""

from __future__ import annotations

import base64
import json
import lzma
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import prepare

ROW_TOKENS = 2049  # 2,048 input positions + 1
MAX_DOC_CHARS = prepare.MAX_DOC_CHARS
book_documents = prepare.book_documents  # one copy of the splitting, shared with training


# ---------------------------------------------------------------------------------------------------
# Failures


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
        opener: Any = lzma.open if path.name.endswith(".xz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    documents.extend(book_documents(json.loads(line)["text"]))
                if max_docs is not None and len(documents) >= max_docs:
                    return documents[:max_docs]
    return documents


def load_tokenizer(path: Path) -> tuple[Any, int, np.ndarray]:
    """(tiktoken.Encoding, BOS id, each token's UTF-8 byte length) from prepare.py's tokenizer.json."""
    spec = json.loads(Path(path).read_text())
    byte_lengths = np.zeros(spec["vocab_size"], dtype=np.int64)
    byte_lengths[: len(spec["mergeable_ranks"])] = [len(base64.b64decode(t)) for t in spec["mergeable_ranks"]]
    return prepare.load_tokenizer(path), int(spec["bos_id"]), byte_lengths  # special tokens keep 0 bytes


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
# Bits per byte


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, device: str) -> torch.Tensor:
    """log_softmax in float32 by the scorer, gathered at the targets; checks finiteness."""
    logprobs = torch.log_softmax(logits.to(device).float(), dim=-1)
    if not bool(torch.isfinite(logprobs).all()):
        raise Voided("non-finite logits", "non_finite")
    return logprobs.gather(-1, targets.to(device).unsqueeze(-1)).squeeze(-1)


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


def split_scores(sums: list[SplitSums], rows: Rows) -> dict[str, Any]:
    """The scores' fields: val_* always, test_* when there are test rows."""
    val = sums[VAL]
    scores: dict[str, Any] = {
        "nats": val.nats, "val_tokens": val.targets, "val_bytes": val.num_bytes, "val_bpb": val.bpb(),
    }  # fmt: skip
    if bool((rows.split_ids() == TEST).any()):
        test = sums[TEST]
        scores |= {"test_nats": test.nats, "test_tokens": test.targets, "test_bytes": test.num_bytes,
                   "test_bpb": test.bpb()}  # fmt: skip
    return scores
