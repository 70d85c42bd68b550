"""prepare.py: tokenizer, byte-length table, token shards, idempotence, remote parquet downloads."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from tests.trainer.helpers import TRAINER, make_books, run_prepare, write_corpus
from trainer import evaluate, prepare


def test_tokenizer_round_trip(prepared):
    encoding = prepare.load_tokenizer(prepared[0] / "tokenizer.json")
    for text in ["The old king sees Kalo.", "Café naïve — 日本語 🙂\n\n  two  spaces\ttab", "", "1899 1900"]:
        assert encoding.decode(encoding.encode_ordinary(text)) == text
    assert encoding.n_vocab == 512
    assert encoding.encode("<|bos|>", allowed_special="all") == [511]
    assert 511 not in encoding.encode_ordinary("<|bos|>")  # the special token never comes from text


def test_token_bytes_table(prepared):
    encoding = prepare.load_tokenizer(prepared[0] / "tokenizer.json")
    table = np.load(prepared[0] / "token_bytes.npy")
    assert table.shape == (512,)
    assert table[511] == 0  # BOS has no bytes
    for token in range(511):
        assert table[token] == len(encoding.decode_single_token_bytes(token))
    text = "Ostwyn watches the small bird — naïvely 🙂."
    assert table[encoding.encode_ordinary(text)].sum() == len(text.encode("utf-8"))
    _, _, from_evaluate = evaluate.load_tokenizer(prepared[0] / "tokenizer.json")
    assert np.array_equal(from_evaluate, table)


def test_token_shards_hold_the_training_documents(tmp_path):
    source = write_corpus(tmp_path / "source", seed=3)
    train_dir, val_dir = run_prepare(source, tmp_path / "out")
    encoding = prepare.load_tokenizer(train_dir / "tokenizer.json")
    stream = np.concatenate([np.load(p) for p in sorted(train_dir.glob("tokens_*.npy"))])
    assert stream.dtype == np.uint16
    bos_positions = np.flatnonzero(stream == 511)
    assert bos_positions[0] == 0
    decoded = [encoding.decode(list(part[1:])) for part in np.split(stream, bos_positions[1:])]
    expected = [
        doc
        for path in sorted(source.glob("train-*.jsonl"))
        for line in path.read_text().splitlines()
        for doc in prepare.book_documents(json.loads(line)["text"])
    ]
    assert decoded == expected
    # validation stays apart: the val dir holds only the val books, the train dir no val file
    assert sorted(p.name for p in val_dir.iterdir()) == ["manifest.json", "val.jsonl"]
    assert sorted(p.name for p in train_dir.iterdir()) == [
        "manifest.json", "token_bytes.npy", "tokenizer.json", "tokens_00000.npy", "tokens_00001.npy"
    ]  # fmt: skip
    val_books = [json.loads(line)["text"] for line in (val_dir / "val.jsonl").read_text().splitlines()]
    assert val_books == [json.loads(line)["text"] for line in (source / "val.jsonl").read_text().splitlines()]


def test_prepare_is_idempotent_and_reproducible(tmp_path):
    source = write_corpus(tmp_path / "source", seed=4)
    train_dir, val_dir = run_prepare(source, tmp_path / "a")
    mtimes = {p: p.stat().st_mtime_ns for d in (train_dir, val_dir) for p in d.iterdir()}
    args = [
        "--source",
        str(source),
        "--train-dir",
        str(train_dir),
        "--val-dir",
        str(val_dir),
        "--vocab-size",
        "512",
    ]
    assert prepare.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # the second run changed nothing
    other_train, other_val = run_prepare(source, tmp_path / "b")
    for mine, theirs in ((train_dir, other_train), (val_dir, other_val)):
        assert (mine / "manifest.json").read_bytes() == (theirs / "manifest.json").read_bytes()
    manifest = json.loads((train_dir / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((train_dir / name).read_bytes()).hexdigest() == entry["sha256"]
    (train_dir / "tokens_00000.npy").write_bytes(b"damaged")
    assert prepare.main(args) == 0  # a damaged output no longer matches its manifest: rebuilt
    assert (train_dir / "manifest.json").read_bytes() == (other_train / "manifest.json").read_bytes()


@pytest.mark.parametrize(
    ("text", "documents"),
    [
        ("", [""]),
        ("x\n\n\n\ny", ["x\n\n\n\ny"]),
        ("a" * 6001 + "\n\nb", ["a" * 6000, "a\n\nb"]),
        ("a" * 2996 + "\n\n" + "b" * 2999 + "\n\nc", ["a" * 2996 + "\n\n" + "b" * 2999 + "\n\nc"]),  # 6,000
        ("a" * 2997 + "\n\n" + "b" * 2999 + "\n\nc", ["a" * 2997 + "\n\n" + "b" * 2999, "c"]),  # 6,001
        ("\n\n" + "a" * 5998, ["\n\n" + "a" * 5998]),  # an empty first paragraph is a piece too
        ("\n\n" + "a" * 5999, ["", "a" * 5999]),
    ],
)
def test_documents_follow_the_protocol(text, documents):
    assert prepare.book_documents(text) == documents
    assert evaluate.book_documents(text) == documents


def test_long_books_split_into_documents_of_at_most_6000_characters():
    for book in make_books(seed=5, count=3, paragraphs=400):
        long_paragraphs = book.replace("\n\n", " ", 50)  # some paragraphs longer than 6,000 characters
        for text in (book, long_paragraphs):
            docs = prepare.book_documents(text)
            assert all(len(d) <= 6000 for d in docs)


def test_evaluate_uses_prepares_document_splitting():
    """One copy of the protocol's splitting: evaluate.py loads it from the prepare.py beside it."""
    assert evaluate.book_documents.__code__.co_filename == str(TRAINER / "prepare.py")
    assert "def book_documents" not in (TRAINER / "evaluate.py").read_text()


def test_evaluate_runs_from_a_folder_of_the_fixed_files(tmp_path):
    """As in the image (/opt/autoresearch/trainer): the fixed files in one folder, started from elsewhere."""
    home = tmp_path / "opt"
    home.mkdir()
    for name in ("evaluate.py", "prepare.py", "model_server.py", "cuda_ipc.py"):
        shutil.copy(TRAINER / name, home / name)
    result = subprocess.run(
        [sys.executable, str(home / "evaluate.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------------
# Remote source: hub-style parquet shards over HTTP, served from tmp_path


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with single-range `bytes=N-` support, recording each request's Range header."""

    requests: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self):
        self.requests.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        range_header = self.headers.get("Range")
        if not range_header or not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        start = int(range_header.removeprefix("bytes=").split("-")[0])
        if start >= len(data):
            self.send_response(416)
            self.end_headers()
            return None
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])
        return None

    def log_message(self, format, *args):  # keep test output quiet
        pass


@pytest.fixture
def parquet_server(tmp_path):
    """(base URL, served dir, request log): two training shards, a validation shard, SHA256SUMS."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    served = tmp_path / "served"
    served.mkdir()
    books = make_books(seed=6, count=14, paragraphs=120)
    for index, rows in enumerate((books[:6], books[6:12])):
        pq.write_table(pa.table({"text": rows}), served / f"shard_{index:05d}.parquet")
    pq.write_table(pa.table({"text": books[12:]}), served / "val.parquet")
    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(served.iterdir())]
    (served / "SHA256SUMS").write_text("\n".join(sums) + "\n")

    RangeHandler.requests = []
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: RangeHandler(*a, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served, RangeHandler.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_remote_parquet_download_resumes_and_checks(tmp_path, parquet_server, capsys):
    base, served, requests = parquet_server
    train_dir, val_dir = tmp_path / "train", tmp_path / "val"
    partial = train_dir / ".download" / "shard_00000.parquet.part"
    partial.parent.mkdir(parents=True)
    whole = (served / "shard_00000.parquet").read_bytes()
    partial.write_bytes(whole[: len(whole) // 2])  # an interrupted earlier download

    code = prepare.main(["--source", base, "--train-dir", str(train_dir), "--val-dir", str(val_dir),
                         "--max-train-shards", "2", "--val-source", f"{base}/val.parquet",
                         "--vocab-size", "512"])  # fmt: skip
    assert code == 0
    assert ("/shard_00000.parquet", f"bytes={len(whole) // 2}-") in requests  # resumed, not restarted
    assert (train_dir / ".download" / "shard_00000.parquet").read_bytes() == whole
    assert "shard_00000.parquet: done" in capsys.readouterr().out
    assert sorted(p.name for p in train_dir.glob("tokens_*.npy")) == ["tokens_00000.npy", "tokens_00001.npy"]
    val_rows = (val_dir / "val.jsonl").read_text().splitlines()
    assert len(val_rows) == 2
    assert not list(val_dir.glob("tokens_*")) and not list(train_dir.glob("val*"))


def test_remote_checksum_mismatch_is_refused(tmp_path, parquet_server, capsys):
    base, served, _ = parquet_server
    (served / "SHA256SUMS").write_text("0" * 64 + "  shard_00000.parquet\n")
    code = prepare.main(["--source", base, "--train-dir", str(tmp_path / "t"), "--val-dir", str(tmp_path / "v"),
                         "--max-train-shards", "1", "--val-source", f"{base}/val.parquet",
                         "--vocab-size", "512"])  # fmt: skip
    assert code == 2
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "t" / "manifest.json").exists()
    assert not (tmp_path / "t" / ".download" / "shard_00000.parquet").exists()
