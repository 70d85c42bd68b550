"""Fixtures for the trainer tests: a small synthetic corpus prepared once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.trainer import TRAINER, run_prepare, run_train, write_corpus


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    """(train_dir, val_dir) of the synthetic corpus, prepared once for the whole session; its test
    split is beside them (`prepared_test`)."""
    root = tmp_path_factory.mktemp("corpus")
    out = root / "prepared"
    return run_prepare(write_corpus(root / "source"), out, 512, "--test-dir", str(out / "test"))


@pytest.fixture(scope="session")
def prepared_test(prepared) -> Path:
    """The test dir of the `prepared` corpus (prepare.py --test-dir): its held-out test split."""
    return prepared[0].parent / "test"


@pytest.fixture(scope="session")
def tiny_checkpoint(prepared, tmp_path_factory) -> Path:
    """A checkpoint directory from one tiny baseline run."""
    out = tmp_path_factory.mktemp("tiny_run")
    result = run_train(TRAINER / "train.py", prepared[0], out)
    assert result.returncode == 0, result.stderr
    return out
