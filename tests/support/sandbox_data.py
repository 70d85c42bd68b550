"""Real data folders for tests of the sandbox: a small corpus prepared by prepare.py, readable by
the sandbox's user, and the markers that stand for training and validation data."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from tests.support import REPO

TRAIN_MARKER = "train-data-marker"
VAL_MARKER = "val-data-secret-marker"  # must never be readable in a training container


def prepare_sandbox_data(root: Path, *, test_split: bool = False) -> tuple[Path, Path]:
    """root/source from write_corpus, then root/train and root/val made by prepare.py (vocab 512),
    readable by the sandbox's user (uid 65534); with `test_split`, root/test too (--test-dir)."""
    write_corpus(root / "source")
    train_dir, val_dir, test_dir = root / "train", root / "val", root / "test"
    extra = ["--test-dir", str(test_dir)] if test_split else []
    subprocess.run(
        [sys.executable, str(REPO / "trainer" / "prepare.py"), "--source", str(root / "source"),
         "--train-dir", str(train_dir), "--val-dir", str(val_dir), "--vocab-size", "512", *extra],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    folders = [train_dir, val_dir, *([test_dir] if test_split else [])]
    for path in [*folders, *(p for folder in folders for p in folder.rglob("*"))]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return train_dir, val_dir


def write_corpus(source: Path) -> None:
    """A small source folder as prepare.py reads it: train-*.jsonl books, a val.jsonl and a held-out
    test book in heldout/test.jsonl."""
    rng = random.Random(0)
    syllables = ["ka", "lo", "mi", "ren", "tha", "dor", "vel", "sun", "bri", "ost", "an", "el", "gar", "wyn"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(400)]

    def book() -> str:
        paragraphs = (" ".join(rng.choice(words) for _ in range(rng.randint(20, 80))) for _ in range(60))
        return "\n\n".join(paragraphs)

    source.mkdir()
    for i in range(2):
        lines = [json.dumps({"id": f"t{i}-{j}", "text": book()}) for j in range(4)]
        (source / f"train-{i:02d}.jsonl").write_text("\n".join(lines) + "\n")
    (source / "val.jsonl").write_text(json.dumps({"id": "v0", "text": book()}) + "\n")
    (source / "heldout").mkdir()
    (source / "heldout" / "test.jsonl").write_text(json.dumps({"id": "x0", "text": book()}) + "\n")
