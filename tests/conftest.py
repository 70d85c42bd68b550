"""Shared fixtures: a private redis-server per test session (never the machine's own on 6379),
flushed before and after each test that uses it; the Docker engine (skip with a reason when none
answers) and the trainer image (built once per session by docker/build-images.sh, which is idempotent
and takes seconds when nothing changed)."""

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from docker.client import DockerClient
from docker.errors import DockerException

from services.store import Store, connect
from tests.support import REPO
from tests.support.net import free_port, wait_for

# build-images.sh reads the same variable: a checkout can test its own trainer image beside another's
TRAINER_IMAGE = os.environ.get("TRAINER_IMAGE", "autoresearch/trainer:cpu")
# TRAINER_TARGET=cuda: the image's cuda target (docker/cuda-smoke.sh runs the sandbox tests on it)
TARGET_FLAGS = ["--cuda"] if os.environ.get("TRAINER_TARGET") == "cuda" else []
BUILD_TIMEOUT_S = 1800  # a cold build (base image, torch wheel, pip installs) takes a few minutes


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    folder: Path = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = connect(f"redis://127.0.0.1:{port}/0")

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(up, 10, "redis-server to answer")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator["redis.Redis[bytes]"]:
    client = connect(redis_url)
    client.flushdb()
    Store(client).open_schema()  # as every service does at start
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def store(redis_client: "redis.Redis[bytes]") -> Store:
    return Store(redis_client)


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
