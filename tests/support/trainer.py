"""Helpers for the trainer tests: a small synthetic corpus, and runners for the trainer's scripts
the way the worker uses them (subprocesses with the contract's environment)."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAINER = REPO / "trainer"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `from trainer import train, prepare, evaluate`

NOUNS = [
    "cat",
    "dog",
    "bird",
    "river",
    "town",
    "king",
    "queen",
    "ship",
    "road",
    "house",
    "garden",
    "child",
    "letter",
    "sword",
    "horse",
    "tree",
]
ADJECTIVES = ["old", "small", "quiet", "bright", "dark", "green", "cold", "proud", "little", "silver"]
VERBS = ["sees", "finds", "follows", "takes", "keeps", "loves", "leaves", "helps", "watches", "carries"]
PLACES = ["by the river", "in the town", "under the tree", "near the road", "at the house"]
SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ren",
    "tha",
    "dor",
    "vel",
    "sun",
    "bri",
    "ost",
    "an",
    "el",
    "gar",
    "wyn",
    "fe",
]


def sentence(rng: random.Random, names: list[str]) -> str:
    """A sentence with learnable structure: fixed phrase order, recurring names, a few years."""
    if rng.random() < 0.5:
        words = [rng.choice(names), rng.choice(VERBS), "the", rng.choice(ADJECTIVES), rng.choice(NOUNS)]
    else:
        words = ["The", rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(VERBS), rng.choice(names)]
    if rng.random() < 0.5:
        words.append(rng.choice(PLACES))
    if rng.random() < 0.1:
        words += ["in", str(rng.randint(1800, 1899))]
    return " ".join(words) + "."


def make_books(seed: int, count: int, paragraphs: int) -> list[str]:
    rng = random.Random(seed)
    names = sorted({"".join(rng.sample(SYLLABLES, rng.randint(2, 3))).capitalize() for _ in range(60)})
    return [
        "\n\n".join(
            " ".join(sentence(rng, names) for _ in range(rng.randint(2, 12))) for _ in range(paragraphs)
        )
        for _ in range(count)
    ]


def write_corpus(root: Path, seed: int = 0, train_files: int = 2, books_per_file: int = 6) -> Path:
    """A source directory as prepare.py reads it: train-*.jsonl books, a val.jsonl and the held-out
    test split in heldout/test.jsonl (two books each, from the same distribution as training)."""
    count = train_files * books_per_file
    books = make_books(seed, count + 4, 120)  # the first count + 2 are those of a corpus without a test split
    root.mkdir(parents=True, exist_ok=True)
    for i in range(train_files):
        with open(root / f"train-{i:02d}.jsonl", "w") as f:
            for j in range(books_per_file):
                f.write(json.dumps({"id": f"t{i}-{j}", "text": books[i * books_per_file + j]}) + "\n")
    with open(root / "val.jsonl", "w") as f:
        for j in (count, count + 1):
            f.write(json.dumps({"id": f"v{j - count - 2}", "text": books[j][:20_000]}) + "\n")
    (root / "heldout").mkdir(exist_ok=True)
    with open(root / "heldout" / "test.jsonl", "w") as f:
        for j in (count + 2, count + 3):
            f.write(json.dumps({"id": f"x{j}", "text": books[j][:20_000]}) + "\n")
    return root


def run_prepare(source: Path, out: Path, vocab_size: int = 512, *extra: str) -> tuple[Path, Path]:
    """prepare.py into out/train and out/val; with "--test-dir", out/test too (pass it in `extra`)."""
    train_dir, val_dir = out / "train", out / "val"
    subprocess.run(
        [sys.executable, str(TRAINER / "prepare.py"), "--source", str(source), "--train-dir", str(train_dir),
         "--val-dir", str(val_dir), "--vocab-size", str(vocab_size), *extra],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return train_dir, val_dir


def patched_train_py(dest_dir: Path, **constants: object) -> Path:
    """A copy of train.py with UPPER_CASE constants replaced, as a proposal would patch it."""
    text = (TRAINER / "train.py").read_text()
    for name, value in constants.items():
        text, count = re.subn(rf"^{name} = [^#\n]*", f"{name} = {value}  ", text, count=1, flags=re.M)
        assert count == 1, f"no constant {name} in train.py"
    dest_dir.mkdir(parents=True, exist_ok=True)
    (dest_dir / "train.py").write_text(text)
    return dest_dir / "train.py"


def run_train(train_py: Path, data_dir: Path, out_dir: Path, timeout: float = 600, **env: str):
    """Run train.py in a subprocess with the contract's environment (tiny preset on the CPU unless
    overridden); returns the CompletedProcess."""
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "AR_DATA_DIR": str(data_dir),
        "AR_OUT_DIR": str(out_dir),
        "AR_DEVICE": "cpu",
        "AR_PRESET": "tiny",
        "AR_SEED": "1",
        **env,
    }
    return subprocess.run(
        [sys.executable, str(train_py)], env=environment, capture_output=True, text=True, timeout=timeout
    )


def run_evaluate(train_py: Path, checkpoint: Path, data_dir: Path, val_dir: Path, out: Path, *extra: str):
    return subprocess.run(
        [sys.executable, str(TRAINER / "evaluate.py"), "--in-process", "--train-py", str(train_py),
         "--checkpoint", str(checkpoint), "--data-dir", str(data_dir), "--val-dir", str(val_dir),
         "--out", str(out), "--device", "cpu", *extra],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
