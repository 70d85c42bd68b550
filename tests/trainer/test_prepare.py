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

from tests.support.trainer import TRAINER, make_books, run_prepare, write_corpus
from trainer import evaluate, prepare, protocol


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
    _, _, from_evaluate = protocol.load_tokenizer(prepared[0] / "tokenizer.json")
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
    assert protocol.book_documents(text) == documents


def test_long_books_split_into_documents_of_at_most_6000_characters():
    for book in make_books(seed=5, count=3, paragraphs=400):
        long_paragraphs = book.replace("\n\n", " ", 50)  # some paragraphs longer than 6,000 characters
        for text in (book, long_paragraphs):
            docs = prepare.book_documents(text)
            assert all(len(d) <= 6000 for d in docs)


def test_the_protocol_uses_prepares_document_splitting():
    """One copy of the protocol's splitting: protocol.py takes it from the prepare.py beside it."""
    assert protocol.book_documents.__code__.co_filename == str(TRAINER / "prepare.py")
    assert all("def book_documents" not in (TRAINER / name).read_text() for name in evaluate.FIXED_FILES[1:])


def test_evaluate_runs_from_a_folder_of_the_fixed_files(tmp_path):
    """As in the image (/opt/autoresearch/trainer): the fixed files in one folder, started from elsewhere."""
    home = tmp_path / "opt"
    home.mkdir()
    for name in evaluate.FIXED_FILES:
        shutil.copy(TRAINER / name, home / name)
    for script in ("evaluate.py", "model_server.py"):
        result = subprocess.run(
            [sys.executable, str(home / script), "--help"],
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
    """(base URL, served dir, request log): two training shards, a validation shard and a test shard
    (also at the default dataset's pinned shard numbers), SHA256SUMS."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    served = tmp_path / "served"
    served.mkdir()
    books = make_books(seed=6, count=16, paragraphs=120)
    for index, rows in enumerate((books[:6], books[6:12])):
        pq.write_table(pa.table({"text": rows}), served / f"shard_{index:05d}.parquet")
    pq.write_table(pa.table({"text": books[12:14]}), served / "val.parquet")
    pq.write_table(pa.table({"text": books[14:]}), served / "test.parquet")
    pq.write_table(
        pa.table({"text": books[12:14]}), served / f"shard_{prepare.DEFAULT_REMOTE_VAL_SHARD:05d}.parquet"
    )
    pq.write_table(
        pa.table({"text": books[14:]}), served / f"shard_{prepare.DEFAULT_REMOTE_TEST_SHARD:05d}.parquet"
    )
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


def test_remote_test_split_is_the_pinned_shard_and_never_a_training_one(tmp_path, parquet_server):
    """Without --val-source and --test-source, validation is the dataset's last shard and the test split
    the one before it, each downloaded into its own directory; the test rows reach only the test dir."""
    import pyarrow.parquet as pq

    base, served, requests = parquet_server
    dirs = {name: tmp_path / name for name in ("train", "val", "test")}
    code = prepare.main(["--source", base, "--train-dir", str(dirs["train"]), "--val-dir", str(dirs["val"]),
                         "--test-dir", str(dirs["test"]), "--max-train-shards", "2",
                         "--vocab-size", "512"])  # fmt: skip
    assert code == 0
    test_shard = f"shard_{prepare.DEFAULT_REMOTE_TEST_SHARD:05d}.parquet"
    assert (dirs["test"] / ".download" / test_shard).is_file()
    assert not (dirs["train"] / ".download" / test_shard).exists()
    rows = [json.loads(line)["text"] for line in (dirs["test"] / "test.jsonl").read_text().splitlines()]
    assert rows == pq.read_table(served / test_shard).column("text").to_pylist()
    manifest = json.loads((dirs["test"] / "manifest.json").read_text())
    assert manifest["kind"] == "test" and set(manifest["files"]) == {"test.jsonl"}
    training_requests = [path for path, _ in requests if path.startswith("/shard_0000")]
    assert sorted(set(training_requests)) == ["/shard_00000.parquet", "/shard_00001.parquet"]


def test_remote_test_source_must_differ_from_validation(tmp_path, parquet_server, capsys):
    base, _, _ = parquet_server
    code = prepare.main(["--source", base, "--train-dir", str(tmp_path / "t"), "--val-dir", str(tmp_path / "v"),
                         "--test-dir", str(tmp_path / "x"), "--val-source", f"{base}/val.parquet",
                         "--test-source", f"{base}/val.parquet", "--vocab-size", "512"])  # fmt: skip
    assert code == 2
    assert "must differ" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# The held-out test split of a local source


def prepare_dirs(source: Path, out: Path, *extra: str) -> int:
    return prepare.main(["--source", str(source), "--train-dir", str(out / "train"), "--val-dir", str(out / "val"),
                         "--vocab-size", "512", *extra])  # fmt: skip


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("where", ["heldout/test.jsonl", "test-books.jsonl"])
def test_the_test_split_is_never_trained_on(tmp_path, where):
    """A test file (in heldout/, or beside the training files) changes no byte of the tokenizer or the
    training shards: prepared with and without it, the training and validation outputs are identical;
    its books go to --test-dir alone."""
    source = write_corpus(tmp_path / "source", seed=3)
    books = (source / "heldout" / "test.jsonl").read_text()
    (source / "heldout" / "test.jsonl").unlink()
    assert prepare_dirs(source, tmp_path / "without") == 0
    (source / where).write_text(books)
    assert prepare_dirs(source, tmp_path / "with", "--test-dir", str(tmp_path / "with" / "test")) == 0
    for split in ("train", "val"):
        assert folder_bytes(tmp_path / "with" / split) == folder_bytes(tmp_path / "without" / split)
    test_dir = tmp_path / "with" / "test"
    assert sorted(p.name for p in test_dir.iterdir()) == ["manifest.json", "test.jsonl"]
    written = [json.loads(line)["text"] for line in (test_dir / "test.jsonl").read_text().splitlines()]
    assert written == [json.loads(line)["text"] for line in books.splitlines()]
    assert json.loads((test_dir / "manifest.json").read_text())["books"] == 2


def test_a_test_file_is_left_out_of_training_even_without_a_test_dir(tmp_path):
    source = write_corpus(tmp_path / "source", seed=3)
    assert prepare_dirs(source, tmp_path / "a") == 0
    (source / "test.jsonl").write_text((source / "train-00.jsonl").read_text())  # would change the shards
    (source / "heldout" / "test.jsonl").unlink()
    assert prepare_dirs(source, tmp_path / "b") == 0
    assert folder_bytes(tmp_path / "a" / "train") == folder_bytes(tmp_path / "b" / "train")


def test_adding_the_test_split_to_prepared_data_rebuilds_nothing_else(tmp_path):
    source = write_corpus(tmp_path / "source", seed=4)
    out = tmp_path / "out"
    assert prepare_dirs(source, out) == 0
    mtimes = {p: p.stat().st_mtime_ns for d in ("train", "val") for p in (out / d).iterdir()}
    assert prepare_dirs(source, out, "--test-dir", str(out / "test")) == 0
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    written = folder_bytes(out / "test")
    test_mtime = (out / "test" / "test.jsonl").stat().st_mtime_ns
    assert prepare_dirs(source, out, "--test-dir", str(out / "test")) == 0  # up to date: nothing changes
    assert (out / "test" / "test.jsonl").stat().st_mtime_ns == test_mtime and folder_bytes(
        out / "test"
    ) == written


@pytest.mark.parametrize(
    ("change", "extra", "message"),
    [
        ("drop", ["--test-dir", "{out}/test"], "no test split for --test-dir"),
        ("second", ["--test-dir", "{out}/test"], "want at most one test file named test*"),
        (None, ["--test-dir", "{out}/val"], "--val-dir and --test-dir must differ"),
        (None, ["--test-source", "{source}/heldout/test.jsonl"], "--test-source needs --test-dir"),
        (None, ["--test-dir", "{out}/test", "--test-source", "{source}/val.jsonl"], "must differ"),
    ],
)
def test_bad_test_split_options_are_refused_with_a_reason(tmp_path, capsys, change, extra, message):
    source = write_corpus(tmp_path / "source", seed=5)
    if change == "drop":
        (source / "heldout" / "test.jsonl").unlink()
    if change == "second":
        (source / "test-more.jsonl").write_text((source / "heldout" / "test.jsonl").read_text())
    out = tmp_path / "out"
    args = [a.format(out=out, source=source) for a in extra]
    assert prepare_dirs(source, out, *args) == 2
    assert message in capsys.readouterr().err
    assert not (out / "train" / "manifest.json").exists()
