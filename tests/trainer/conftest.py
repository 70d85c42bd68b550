"""Fixtures for the trainer tests: a small synthetic corpus prepared once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.helpers import TRAINER, run_prepare, run_train, write_corpus


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    """(train_dir, val_dir) of the synthetic corpus, prepared once for the whole session."""
    root = tmp_path_factory.mktemp("corpus")
    return run_prepare(write_corpus(root / "source"), root / "prepared")


@pytest.fixture(scope="session")
def tiny_checkpoint(prepared, tmp_path_factory) -> Path:
    """A checkpoint directory from one tiny baseline run."""
    out = tmp_path_factory.mktemp("tiny_run")
    result = run_train(TRAINER / "train.py", prepared[0], out)
    assert result.returncode == 0, result.stderr
    return out
