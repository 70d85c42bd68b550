"""The compose stack builds its own images (`up --build`, the way a user starts it). What a fresh
host lacks is made here first: the local base image when no registry serves the public one, torch's
CPU wheel in docker/wheels/ when this machine has one, the host's CA bundle for pip. The images get
test tags (AR_SERVICES_IMAGE / AR_TRAINER_IMAGE override them), never the ones a user runs."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from docker.client import DockerClient

ROOT = Path(__file__).resolve().parents[2]
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
LOCAL_BASE_IMAGE = "autoresearch/base:bookworm"
SETUP_TIMEOUT_S = 900


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor `docker-compose` is installed")


def run_script(*args: str) -> None:
    proc = subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=SETUP_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}", pytrace=False)


@pytest.fixture(scope="session")
def build_env(docker_client: DockerClient) -> dict[str, str]:
    """The environment for compose: build variables and test image tags."""
    run_script("bash", "docker/base-image.sh", LOCAL_BASE_IMAGE)  # no registry on the test machines
    run_script("bash", "docker/local-wheels.sh")
    env = {
        "AR_BASE_IMAGE": LOCAL_BASE_IMAGE,
        "AR_SERVICES_IMAGE": os.environ.get("AR_SERVICES_IMAGE", "autoresearch/services:e2e"),
        "AR_TRAINER_IMAGE": os.environ.get("AR_TRAINER_IMAGE", "autoresearch/trainer:e2e-cpu"),
    }
    if HOST_CA_BUNDLE.is_file():
        bundle = ROOT / "docker" / "certs" / "host.pem"
        if not bundle.is_file() or bundle.read_bytes() != HOST_CA_BUNDLE.read_bytes():
            shutil.copyfile(HOST_CA_BUNDLE, bundle)
        env["AR_CA_BUNDLE"] = "docker/certs/host.pem"
    return env
