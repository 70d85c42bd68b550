"""The compose stack needs both images (trainer cpu target, services) built on this engine."""

import subprocess
from pathlib import Path

import pytest
from docker.client import DockerClient
from docker.errors import DockerException

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def docker_images() -> None:
    try:
        client = DockerClient.from_env()
        client.ping()
        client.close()
    except (DockerException, OSError) as exc:
        pytest.skip(f"no Docker engine answers: {exc}")
    proc = subprocess.run(
        ["bash", "docker/build-images.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"docker/build-images.sh failed:\n{(proc.stdout + proc.stderr)[-4000:]}", pytrace=False)
