"""A worker inside a compose stack finds its own project's resources: the data volumes named by their
compose keys and where its runs folder (a project volume) lies on the host. Two projects on one
engine resolve to disjoint volumes. Real Docker: volumes and (never started) containers labelled
as compose labels them."""

import secrets
from collections.abc import Iterator
from pathlib import Path

import docker.types
import pytest
from docker.client import DockerClient

from services.settings import Settings
from services.worker.docker_sandbox import COMPOSE_PROJECT_LABEL, COMPOSE_VOLUME_LABEL, resolve_for_host

pytestmark = pytest.mark.docker

RUNS_DIR = Path("/var/lib/autoresearch/runs")
KEYS = ("train-data", "val-data", "runs")


@pytest.fixture
def projects(docker_client: DockerClient, trainer_image: str) -> Iterator[dict[str, str]]:
    """Two compose-like projects, each a worker container (created, not started) and its volumes."""
    containers, volumes = [], []
    found: dict[str, str] = {}
    try:
        for _ in range(2):
            project = f"h4test{secrets.token_hex(3)}"
            for key in KEYS:
                labels = {COMPOSE_PROJECT_LABEL: project, COMPOSE_VOLUME_LABEL: key}
                volumes.append(docker_client.volumes.create(f"{project}_{key}", labels=labels))
            runs = docker.types.Mount(str(RUNS_DIR), f"{project}_runs", type="volume")
            container = docker_client.containers.create(
                trainer_image, ["true"], labels={COMPOSE_PROJECT_LABEL: project}, mounts=[runs]
            )
            containers.append(container)
            found[project] = container.id
        yield found
    finally:
        for container in containers:
            container.remove(force=True)
        for volume in volumes:
            volume.remove(force=True)


def test_each_project_resolves_to_its_own_volumes_and_runs_folder(
    docker_client: DockerClient, projects: dict[str, str]
) -> None:
    settings = Settings(train_data="train-data", val_data="val-data", runs_dir=RUNS_DIR)
    seen = []
    for project, container_id in projects.items():
        resolved = resolve_for_host(settings.sandbox, docker_client, container_id=container_id)
        mountpoint = docker_client.volumes.get(f"{project}_runs").attrs["Mountpoint"]
        assert resolved.train_data == f"{project}_train-data"
        assert resolved.val_data == f"{project}_val-data"
        assert resolved.runs_host_dir == Path(mountpoint)
        assert resolved.runs_dir == RUNS_DIR
        seen.append({resolved.train_data, resolved.val_data, str(resolved.runs_host_dir)})
    assert not seen[0] & seen[1]


def test_plain_volume_names_and_a_worker_outside_compose_are_left_alone(
    docker_client: DockerClient, projects: dict[str, str]
) -> None:
    settings = Settings(train_data="some-volume", val_data="/srv/val", runs_dir=Path("/elsewhere"))
    container_id = next(iter(projects.values()))
    assert resolve_for_host(settings.sandbox, docker_client, container_id=container_id) == settings.sandbox
    assert resolve_for_host(settings.sandbox, docker_client, container_id="0" * 64) == settings.sandbox
