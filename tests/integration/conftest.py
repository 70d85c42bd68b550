"""Fixtures of the integration suite: host folders standing in for the data volumes, and a real
controller over the private Redis (the Docker engine and the trainer image come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.settings import Settings
from services.store import Store
from tests.support.live_server import seed, serve, settings_for
from tests.support.sandbox_data import TRAIN_MARKER, VAL_MARKER


@pytest.fixture(scope="session")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Host folders mounted as training data and validation data, each holding a marker file."""
    train = tmp_path_factory.mktemp("train-data")
    val = tmp_path_factory.mktemp("val-data")
    (train / "tokens.bin").write_text(TRAIN_MARKER)
    (val / "val.bin").write_text(VAL_MARKER)
    for folder in (train, val):
        folder.chmod(0o755)
        for file in folder.iterdir():
            file.chmod(0o644)
    return train, val


# A real controller (uvicorn, free port) over the private Redis, for the CLI, MCP and event tests;
# a module that needs other settings defines its own `settings` fixture.
@pytest.fixture
def settings(redis_url: str) -> Settings:
    return settings_for(redis_url)


@pytest.fixture
def url(settings: Settings, store: Store) -> Iterator[str]:
    with serve(settings, seed(store)) as base:
        yield base
