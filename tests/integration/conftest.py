"""Fixtures for tests against the real Docker daemon: the engine (skip with a reason when none
answers), the trainer image (built once per session by docker/build-images.sh, which is idempotent
and takes seconds when nothing changed), and host folders standing in for the data volumes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker.client import DockerClient
from docker.errors import DockerException

from services.settings import Settings
from services.store import Store
from tests.integration.live_server import seed, serve, settings_for

REPO = Path(__file__).resolve().parents[2]
# build-images.sh reads the same variable: a checkout can test its own trainer image beside another's
TRAINER_IMAGE = os.environ.get("TRAINER_IMAGE", "autoresearch/trainer:cpu")
# TRAINER_TARGET=cuda: the image's cuda target (docker/cuda-smoke.sh runs the sandbox tests on it)
TARGET_FLAGS = ["--cuda"] if os.environ.get("TRAINER_TARGET") == "cuda" else []
BUILD_TIMEOUT_S = 1800  # a cold build (base image, torch wheel, pip installs) takes a few minutes
TRAIN_MARKER = "train-data-marker"
VAL_MARKER = "val-data-secret-marker"  # must never be readable in a training container


@pytest.fixture(scope="session")
def docker_client() -> Iterator[DockerClient]:
    try:
        client = DockerClient.from_env()
        client.ping()
    except (DockerException, OSError) as exc:
        pytest.skip(f"no Docker engine answers: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def trainer_image(docker_client: DockerClient) -> str:
    """The trainer image's cpu target, built (or found up to date) once per session."""
    proc = subprocess.run(
        ["bash", str(REPO / "docker" / "build-images.sh"), "--trainer-only", *TARGET_FLAGS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"docker/build-images.sh failed:\n{(proc.stdout + proc.stderr)[-4000:]}", pytrace=False)
    return TRAINER_IMAGE


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
