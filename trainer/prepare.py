"""Data preparation (a fixed file): tokenizer, per-token byte lengths, training tokens, validation
text, and the held-out test text.

    python prepare.py --source <dir or https URL> --train-dir <dir> --val-dir <dir> [--test-dir <dir>]
                      [--vocab-size 8192] [--max-train-shards N] [--val-source <file or URL>]
                      [--test-source <file or URL>] [--tokenizer <tokenizer.json>]

Sources
  * a local directory of `.txt`, `.jsonl`, `.jsonl.xz` or `.parquet` files. A `.txt` file is one
    book; a JSON Lines or parquet file holds one book per line/row in its "text" field. Files whose
    name starts with "val" are validation, files whose name starts with "test" (in the directory or
    in its `heldout/` subfolder) are the test split; all other files of the directory are training,
    in name order.
  * an https URL of a hub-style parquet dataset: `<URL>/shard_00000.parquet`, `shard_00001`, ...
    (a "text" column). Downloads resume with HTTP Range requests, are checked against published
    SHA-256 sums (`<URL>/SHA256SUMS`, else a 64-hex ETag, as Hugging Face sends for LFS files) and
    print progress lines. Validation comes from `--val-source` (default: the last shard of the
    default dataset), the test split from `--test-source` (default: the shard before it).

The test split is never training data: it is neither tokenized into the training shards nor read by
the tokenizer's training, whether or not `--test-dir` is given. It is written only with `--test-dir`,
and then a test source is required.

Outputs (the directories never share data)
  train-dir/tokenizer.json    BPE tokenizer that tiktoken loads (see `load_tokenizer`): regex pattern,
                              mergeable ranks (base64 bytes, index = rank), BOS special token = last id
  train-dir/token_bytes.npy   int32 [vocab]: UTF-8 byte length of each token, 0 for special tokens
  train-dir/tokens_NNNNN.npy  uint16 token stream of one source file: each document is [BOS] + tokens
  val-dir/val.jsonl           the validation books, one {"text": ...} a line (evaluate.py tokenizes them)
  test-dir/test.jsonl         the test books, the same way (only the trusted scorer ever mounts them)
  */manifest.json             sha256 and size of every file, plus a hash of the inputs; written last

Books are split exactly as the evaluation protocol splits them (paragraphs, documents of at most
6,000 characters), so training documents look like scored documents and no text is dropped.
Re-running with the same inputs finds matching manifests and does nothing; the outputs depend only
on the inputs (no timestamps), so two runs produce identical bytes. The test directory has its own
inputs hash (the test file alone), so adding a test split to prepared data rebuilds nothing else.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import lzma
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

PREPARE_VERSION = 1
MAX_DOC_CHARS = 6000  # documents are at most this many characters (the evaluation protocol's limit)
BOS_TOKEN = "<|bos|>"
# GPT-4-style split pattern (what rustbpe uses by default), spelled out so the tokenizer file is explicit.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s+"""
)
TOKENIZER_MAX_CHARS = 2_000_000_000  # tokenizer training reads at most this many characters
DEFAULT_REMOTE_SOURCE = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
DEFAULT_REMOTE_VAL_SHARD = 6542  # that dataset's last shard, kept for validation
DEFAULT_REMOTE_TEST_SHARD = 6541  # the shard before it, held out as the test split
HELDOUT_DIR = "heldout"  # a local source's subfolder for the test split (out of a trainer's sight)
DEFAULT_REMOTE_TRAIN_SHARDS = 8
DOWNLOAD_CHUNK_BYTES = 1 << 20
DOWNLOAD_RETRIES = 4
PROGRESS_EVERY_S = 2.0
HASH_CHUNK_BYTES = 1 << 22


class PrepareError(Exception):
    """Bad input or a failed download; printed as one line and exit code 2."""


# ---------------------------------------------------------------------------------------------------
# The document protocol (its one copy: evaluate.py loads it from this file)


def book_documents(text: str, max_chars: int = MAX_DOC_CHARS) -> list[str]:
    """Split a book at paragraph boundaries into documents of at most `max_chars` characters."""
    documents: list[str] = []
    pieces: list[str] = []
    length = 0
    for paragraph in text.split("\n\n"):
        for start in range(0, max(len(paragraph), 1), max_chars):
            piece = paragraph[start : start + max_chars]
            if pieces and length + 2 + len(piece) <= max_chars:
                pieces.append(piece)
                length += 2 + len(piece)
            else:
                if pieces:
                    documents.append("\n\n".join(pieces))
                pieces, length = [piece], len(piece)
    if pieces:
        documents.append("\n\n".join(pieces))
    return documents


# ---------------------------------------------------------------------------------------------------
# Reading books


def read_books(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the books of one source file as dicts with at least "text"."""
    name = path.name
    if name.endswith(".txt"):
        yield {"id": path.stem, "text": path.read_text(encoding="utf-8")}
    elif name.endswith(".jsonl") or name.endswith(".jsonl.xz"):
        opener = lzma.open if name.endswith(".xz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    book = json.loads(line)
                    if not isinstance(book.get("text"), str):
                        raise PrepareError(f"{path}:{number}: no string field 'text'")
                    yield book
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["text"])
        for text in table.column("text").to_pylist():
            if text is not None:
                yield {"text": text}
    else:
        raise PrepareError(f"unsupported source file {path} (want .txt, .jsonl, .jsonl.xz or .parquet)")


SOURCE_SUFFIXES = (".txt", ".jsonl", ".jsonl.xz", ".parquet")


def _source_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(SOURCE_SUFFIXES))


def _same_file(a: Path, b: Path | None) -> bool:
    return b is not None and a.resolve() == b.resolve()


def local_sources(
    source: Path, val_source: str | None, max_train: int | None, test_source: str | None = None
) -> tuple[list[Path], Path, Path | None]:
    """(training files, validation file, test file or None). Files named val* and test* are never
    training, and neither is a file named by --val-source or --test-source."""
    files = _source_files(source)
    val_files = [p for p in files if p.name.startswith("val")]
    test_files = [p for p in [*files, *_source_files(source / HELDOUT_DIR)] if p.name.startswith("test")]
    train = [p for p in files if not p.name.startswith(("val", "test"))]
    if val_source:
        val = Path(val_source)
    elif len(val_files) == 1:
        val = val_files[0]
    else:
        raise PrepareError(f"{source}: want exactly one validation file named val*, found {len(val_files)}")
    test: Path | None = None
    if test_source:
        test = Path(test_source)
    elif len(test_files) == 1:
        test = test_files[0]
    elif len(test_files) > 1:
        names = ", ".join(str(p.relative_to(source)) for p in test_files)
        raise PrepareError(
            f"{source}: want at most one test file named test* (here or in {HELDOUT_DIR}/), found {names}"
        )
    train = [p for p in train if not _same_file(p, val) and not _same_file(p, test)]
    if max_train is not None:
        train = train[:max_train]
    if not train:
        raise PrepareError(f"{source}: no training files")
    return train, val, test


# ---------------------------------------------------------------------------------------------------
# Downloads (hub-style parquet over HTTPS): resumable, checksummed, with progress


def _http_get(url: str, start: int = 0) -> urllib.response.addinfourl:
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    response: urllib.response.addinfourl = urllib.request.urlopen(request, timeout=60)
    return response


def published_checksums(base_url: str) -> dict[str, str]:
    """`name -> sha256` from `<base>/SHA256SUMS` (sha256sum format), or {} when there is none."""
    try:
        with _http_get(f"{base_url}/SHA256SUMS") as response:
            lines = response.read().decode().splitlines()
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 404:
            return {}
        raise PrepareError(f"{base_url}/SHA256SUMS: HTTP {exc.code}") from exc
    sums = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            sums[parts[1].lstrip("*")] = parts[0]
    return sums


def download(url: str, dest: Path, expected_sha256: str | None) -> Path:
    """Download `url` to `dest`, resuming a partial `dest.part`; verify the checksum when one is known."""
    if dest.exists():
        return dest
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, DOWNLOAD_RETRIES + 1):
        have = part.stat().st_size if part.exists() else 0
        try:
            with _http_get(url, have) as response:
                if have and response.status != 206:  # server ignored the Range header: start over
                    have = 0
                total = have + int(response.headers.get("Content-Length", 0))
                etag = (response.headers.get("X-Linked-ETag") or response.headers.get("ETag") or "").strip(
                    '"'
                )
                if expected_sha256 is None and re.fullmatch(r"[0-9a-f]{64}", etag):
                    expected_sha256 = etag
                with open(part, "ab" if have else "wb") as f:
                    last = time.monotonic()
                    while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                        f.write(chunk)
                        have += len(chunk)
                        if time.monotonic() - last > PROGRESS_EVERY_S:
                            print(f"download {dest.name}: {have / 1e6:.1f}/{total / 1e6:.1f} MB", flush=True)
                            last = time.monotonic()
            break
        except (urllib.error.URLError, OSError) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()
                if exc.code == 416:  # the partial file is already whole
                    break
            if attempt == DOWNLOAD_RETRIES:
                raise PrepareError(f"download {url} failed after {attempt} attempts: {exc}") from exc
            print(f"download {dest.name}: attempt {attempt} failed ({exc}); retrying", flush=True)
            time.sleep(2**attempt)
    digest = sha256_file(part)
    if expected_sha256 is None:
        print(f"download {dest.name}: no published checksum; sha256 {digest}", flush=True)
    elif digest != expected_sha256:
        part.unlink()
        raise PrepareError(f"download {url}: sha256 {digest} != published {expected_sha256}")
    part.rename(dest)
    print(f"download {dest.name}: done, {dest.stat().st_size / 1e6:.1f} MB, sha256 ok", flush=True)
    return dest


def remote_sources(
    base_url: str, train_dir: Path, val_dir: Path, val_source: str | None, max_train: int | None,
    test_dir: Path | None = None, test_source: str | None = None,
) -> tuple[list[Path], Path, Path | None]:  # fmt: skip
    """(training shards, validation file, test file or None): the test split only with a test_dir."""
    base_url = base_url.rstrip("/")
    sums = published_checksums(base_url)
    count = DEFAULT_REMOTE_TRAIN_SHARDS if max_train is None else max_train
    names = [f"shard_{i:05d}.parquet" for i in range(count)]
    val_url = val_source or f"{base_url}/shard_{DEFAULT_REMOTE_VAL_SHARD:05d}.parquet"
    test_url = None
    if test_dir is not None:
        test_url = test_source or f"{base_url}/shard_{DEFAULT_REMOTE_TEST_SHARD:05d}.parquet"
        if test_url == val_url:
            raise PrepareError(f"the test source {test_url} is the validation source: they must differ")
    for url in (val_url, test_url):
        if url is not None and url.rsplit("/", 1)[-1] in names and url.startswith(base_url + "/"):
            raise PrepareError(f"{url} is one of the {count} training shards; lower --max-train-shards")
    train = [download(f"{base_url}/{n}", train_dir / ".download" / n, sums.get(n)) for n in names]
    val = _fetch_split(val_url, val_dir, sums)
    test = None if test_url is None or test_dir is None else _fetch_split(test_url, test_dir, sums)
    return train, val, test


def _fetch_split(url: str, directory: Path, sums: dict[str, str]) -> Path:
    """A held-out file named by URL (downloaded into the split's own directory) or by local path."""
    if not url.startswith(("http://", "https://")):
        return Path(url)
    name = url.rsplit("/", 1)[-1]
    return download(url, directory / ".download" / name, sums.get(name))


# ---------------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(files: list[Path], vocab_size: int) -> tuple[str, list[bytes]]:
    """Train BPE with rustbpe on the training documents; returns (pattern, tokens in rank order)."""
    import rustbpe

    def texts() -> Iterator[str]:
        budget = TOKENIZER_MAX_CHARS
        for path in files:
            for book in read_books(path):
                for document in book_documents(book["text"]):
                    if budget <= 0:
                        return
                    budget -= len(document)
                    yield document

    tokenizer = rustbpe.Tokenizer()
    tokenizer.train_from_iterator(texts(), vocab_size - 1, pattern=SPLIT_PATTERN)  # last id is BOS
    ranks = sorted(
        ((bytes(token), rank) for token, rank in tokenizer.get_mergeable_ranks()), key=lambda x: x[1]
    )
    if [rank for _, rank in ranks] != list(range(len(ranks))):
        raise PrepareError("rustbpe returned non-contiguous ranks")
    if len(ranks) != vocab_size - 1:
        raise PrepareError(f"the training text yields only {len(ranks) + 1} tokens; lower --vocab-size")
    return tokenizer.get_pattern(), [token for token, _ in ranks]


def tokenizer_json(pattern: str, tokens: list[bytes]) -> str:
    return json.dumps(
        {
            "format": "autoresearch-bpe-1",
            "pattern": pattern,
            "vocab_size": len(tokens) + 1,
            "bos_token": BOS_TOKEN,
            "bos_id": len(tokens),
            "mergeable_ranks": [base64.b64encode(t).decode("ascii") for t in tokens],
        },
        indent=0,
    )


def load_tokenizer(path: Path) -> Any:  # tiktoken.Encoding (the scorer's too: protocol.load_tokenizer)
    import tiktoken

    spec = json.loads(Path(path).read_text())
    ranks = {base64.b64decode(t): i for i, t in enumerate(spec["mergeable_ranks"])}
    return tiktoken.Encoding(
        name="autoresearch-bpe",
        pat_str=spec["pattern"],
        mergeable_ranks=ranks,
        special_tokens={spec["bos_token"]: spec["bos_id"]},
    )


def token_byte_lengths(tokenizer_path: Path) -> np.ndarray:
    spec = json.loads(Path(tokenizer_path).read_text())
    lengths = [len(base64.b64decode(t)) for t in spec["mergeable_ranks"]]
    return np.array([*lengths, 0], dtype=np.int32)  # BOS (the last id) has no bytes


# ---------------------------------------------------------------------------------------------------
# Tokenizing


def tokenize_file(path: Path, encoding: Any, bos_id: int) -> np.ndarray:
    """One source file -> uint16 stream of [BOS] + tokens for each document, in order."""
    documents = [doc for book in read_books(path) for doc in book_documents(book["text"])]
    pieces = []
    for ids in encoding.encode_ordinary_batch(documents, num_threads=os.cpu_count() or 1):
        pieces.append(np.array([bos_id, *ids], dtype=np.uint16))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)


def write_books(source: Path, out: Path) -> int:
    """Copy a held-out file's books (validation or test) as plain JSON Lines; returns their number."""
    count = 0
    with open(out, "w", encoding="utf-8") as f:
        for book in read_books(source):
            f.write(json.dumps({"text": book["text"]}, ensure_ascii=False) + "\n")
            count += 1
    return count


# ---------------------------------------------------------------------------------------------------
# Manifests, idempotence


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def inputs_hash(train: list[Path], val: Path, vocab_size: int, tokenizer: Path | None) -> str:
    parts = [f"prepare-v{PREPARE_VERSION}", f"vocab={vocab_size}", f"pattern={SPLIT_PATTERN}"]
    parts += [f"train:{p.name}:{sha256_file(p)}" for p in train]
    parts += [f"val:{val.name}:{sha256_file(val)}"]
    if tokenizer is not None:
        parts.append(f"tokenizer:{sha256_file(tokenizer)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def test_inputs_hash(test: Path) -> str:
    """The test directory's inputs: the test file alone (it is text; no tokenizer is involved)."""
    parts = [f"prepare-v{PREPARE_VERSION}", f"test:{test.name}:{sha256_file(test)}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def write_manifest(directory: Path, inputs: str, extra: dict[str, Any]) -> None:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != "manifest.json")
    manifest = {
        "prepare_version": PREPARE_VERSION,
        "inputs_sha256": inputs,
        "files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files},
        **extra,
    }
    atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def manifest_matches(directory: Path, inputs: str) -> bool:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("inputs_sha256") != inputs:
        return False
    present = {p.name for p in directory.iterdir() if p.is_file() and p.name != "manifest.json"}
    if present != set(manifest["files"]):
        return False
    return all(sha256_file(directory / name) == entry["sha256"] for name, entry in manifest["files"].items())


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def clear_outputs(directory: Path) -> None:
    for p in directory.iterdir():
        if p.is_file():
            p.unlink()


# ---------------------------------------------------------------------------------------------------
# Main


def prepare(
    source: str,
    train_dir: Path,
    val_dir: Path,
    vocab_size: int = 8192,
    max_train_shards: int | None = None,
    val_source: str | None = None,
    tokenizer: Path | None = None,
    test_dir: Path | None = None,
    test_source: str | None = None,
) -> None:
    if not 257 <= vocab_size <= 65536:
        raise PrepareError(
            f"--vocab-size {vocab_size}: want 257..65536 (uint16 tokens, 256 byte tokens + BOS)"
        )
    if test_source and test_dir is None:
        raise PrepareError("--test-source needs --test-dir: the test split is written only there")
    _check_directories(train_dir, val_dir, test_dir)
    started = time.time()
    if source.startswith(("http://", "https://")):
        train, val, test = remote_sources(
            source, train_dir, val_dir, val_source, max_train_shards, test_dir, test_source
        )
    else:
        train, val, test = local_sources(Path(source), val_source, max_train_shards, test_source)
    if test_dir is not None and test is None:
        raise PrepareError(
            f"{source}: no test split for --test-dir (want one file named test*, in the source folder or "
            f"its {HELDOUT_DIR}/ subfolder, or --test-source)"
        )
    if test is not None and test.resolve() == val.resolve():
        raise PrepareError(f"{test} is both the test and the validation source: they must differ")
    inputs = inputs_hash(train, val, vocab_size, tokenizer)
    if manifest_matches(train_dir, inputs) and manifest_matches(val_dir, inputs):
        print(f"prepare: {train_dir} and {val_dir} are up to date (inputs {inputs[:12]}); nothing to do")
    else:
        prepare_train_and_val(train, val, train_dir, val_dir, inputs, vocab_size, tokenizer, started)
    if test_dir is not None and test is not None:
        prepare_test(test, test_dir)


def _check_directories(train_dir: Path, val_dir: Path, test_dir: Path | None) -> None:
    named = {"--train-dir": train_dir, "--val-dir": val_dir, **({"--test-dir": test_dir} if test_dir else {})}
    for directory in named.values():
        directory.mkdir(parents=True, exist_ok=True)
    seen: dict[Path, str] = {}
    for option, directory in named.items():
        if directory.resolve() in seen:
            raise PrepareError(
                f"{seen[directory.resolve()]} and {option} must differ: each split has its own directory "
                "(validation and test data never go with training data, nor with each other)"
            )
        seen[directory.resolve()] = option


def prepare_train_and_val(
    train: list[Path], val: Path, train_dir: Path, val_dir: Path, inputs: str, vocab_size: int,
    tokenizer: Path | None, started: float,
) -> None:  # fmt: skip
    print(f"prepare: {len(train)} training files, validation {val.name}, vocab {vocab_size}", flush=True)
    clear_outputs(train_dir)
    clear_outputs(val_dir)

    if tokenizer is None:
        pattern, tokens = train_tokenizer(train, vocab_size)
        atomic_write_text(train_dir / "tokenizer.json", tokenizer_json(pattern, tokens))
        print(f"prepare: tokenizer trained ({time.time() - started:.1f} s)", flush=True)
    else:
        spec = json.loads(tokenizer.read_text())
        if spec["vocab_size"] != vocab_size:
            raise PrepareError(f"{tokenizer}: vocab {spec['vocab_size']} != --vocab-size {vocab_size}")
        atomic_write_text(train_dir / "tokenizer.json", tokenizer.read_text())
    encoding = load_tokenizer(train_dir / "tokenizer.json")
    bos_id = vocab_size - 1
    atomic_save_npy(train_dir / "token_bytes.npy", token_byte_lengths(train_dir / "tokenizer.json"))

    total = 0
    for index, path in enumerate(train):
        stream = tokenize_file(path, encoding, bos_id)
        atomic_save_npy(train_dir / f"tokens_{index:05d}.npy", stream)
        total += len(stream)
        print(f"prepare: {path.name} -> tokens_{index:05d}.npy, {len(stream):,} tokens", flush=True)
    books = write_books(val, val_dir / "val.jsonl")
    write_manifest(train_dir, inputs, {"kind": "train", "tokens": total, "vocab_size": vocab_size})
    write_manifest(val_dir, inputs, {"kind": "val", "books": books})
    print(
        f"prepare: done, {total:,} training tokens, {books} validation books ({time.time() - started:.1f} s)"
    )


def prepare_test(test: Path, test_dir: Path) -> None:
    """The test split's directory: its books as text and a manifest of their own."""
    inputs = test_inputs_hash(test)
    if manifest_matches(test_dir, inputs):
        print(f"prepare: {test_dir} is up to date (test inputs {inputs[:12]}); nothing to do")
        return
    clear_outputs(test_dir)
    books = write_books(test, test_dir / "test.jsonl")
    write_manifest(test_dir, inputs, {"kind": "test", "books": books})
    print(f"prepare: test split {test.name}: {books} books", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=DEFAULT_REMOTE_SOURCE, help="local directory or https URL")
    parser.add_argument("--train-dir", type=Path, required=True)
    parser.add_argument("--val-dir", type=Path, required=True)
    parser.add_argument(
        "--test-dir", type=Path, default=None,
        help="where the held-out test split goes (only the trusted scorer mounts it)",
    )  # fmt: skip
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--max-train-shards", type=int, default=None)
    parser.add_argument(
        "--val-source", default=None, help="validation file or URL (default: val* / last shard)"
    )
    parser.add_argument(
        "--test-source", default=None,
        help="test file or URL (default: test* or heldout/test* / the shard before the last)",
    )  # fmt: skip
    parser.add_argument(
        "--tokenizer", type=Path, default=None, help="use this tokenizer.json instead of training"
    )
    args = parser.parse_args(argv)
    try:
        prepare(
            args.source,
            args.train_dir,
            args.val_dir,
            args.vocab_size,
            args.max_train_shards,
            args.val_source,
            args.tokenizer,
            args.test_dir,
            args.test_source,
        )
    except PrepareError as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
