"""How a container asks for the GPU, checked against the real Docker engine (no GPU here): the
engine stores what the sandbox sends, so the request's shape is what a GPU host would get.

- gpu_mode "nvidia": one DeviceRequest naming the worker's GPU id with the `gpu` capability (what
  the NVIDIA container toolkit serves); the container is created, never started (no toolkit here).
- gpu_mode "devices" (hosts without the toolkit): the device nodes as devices, the runtime's host
  folders as read-only binds; shown working on the H100 by bench/gpu_e2e.py (bench/gpu-service.md).
- `eval_memlock_bytes` raises RLIMIT_MEMLOCK of evaluation containers only (off by default).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from docker.client import DockerClient

from services.settings import GIB, Settings
from services.worker.docker_sandbox import VENV_PYTHON, DockerSandbox, _Step

pytestmark = pytest.mark.docker


def step(kind: str, command: list[str] | None = None) -> _Step:
    return _Step(
        name=f"ar-gpu-request-{kind}-{time.monotonic_ns()}",
        step=kind,
        command=command or [VENV_PYTHON, "-c", "pass"],
        environment={},
        mounts=[],
        labels={"autoresearch.managed": "1", "autoresearch.proposal": "gpu-request"},
        deadline_unix=time.time() + 60,
        budget_reason="test",
    )


def host_config(client: DockerClient, sandbox: DockerSandbox, kind: str) -> dict[str, Any]:
    container = client.containers.create(**sandbox._container_kwargs(step(kind)))
    try:
        return dict(container.attrs["HostConfig"])
    finally:
        container.remove(force=True)


def test_nvidia_mode_asks_for_the_workers_gpu_by_id(docker_client: DockerClient, trainer_image: str) -> None:
    settings = Settings(trainer_image=trainer_image, gpu_mode="nvidia", gpu_id="3", device="cuda")
    config = host_config(docker_client, DockerSandbox(settings.sandbox, docker_client), "train")
    requests = config["DeviceRequests"]
    assert len(requests) == 1, requests
    assert requests[0]["DeviceIDs"] == ["3"]
    assert requests[0]["Capabilities"] == [["gpu"]]
    assert requests[0]["Count"] == 0  # the named id only, never "all"
    assert not config.get("Devices")


def test_devices_mode_passes_nodes_and_read_only_runtime_mounts(
    docker_client: DockerClient, trainer_image: str, tmp_path: Path
) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    settings = Settings(
        trainer_image=trainer_image,
        gpu_mode="devices",
        gpu_device_nodes=["/dev/null", "/dev/zero"],  # stand-ins for /dev/nvidia*: they exist here
        gpu_host_mounts=[f"{runtime}:/opt/host-runtime"],
        device="cuda",
    )
    config = host_config(docker_client, DockerSandbox(settings.sandbox, docker_client), "train")
    devices = {(d["PathOnHost"], d["PathInContainer"], d["CgroupPermissions"]) for d in config["Devices"]}
    assert devices == {("/dev/null", "/dev/null", "rwm"), ("/dev/zero", "/dev/zero", "rwm")}
    mounts = {m["Target"]: m for m in config["Mounts"]}
    assert mounts["/opt/host-runtime"]["Source"] == str(runtime)
    assert mounts["/opt/host-runtime"]["ReadOnly"] is True
    assert not config.get("DeviceRequests")
    assert config["CapDrop"] == ["ALL"] and config["ReadonlyRootfs"] is True


def test_evaluation_containers_may_lock_memory_and_training_containers_may_not(
    docker_client: DockerClient, trainer_image: str
) -> None:
    """Only the request: whether the engine may raise RLIMIT_MEMLOCK depends on the host (this one's
    runtime refuses to start such a container, so the setting is off by default)."""
    settings = Settings(trainer_image=trainer_image, eval_memlock_bytes=2 * GIB)
    sandbox = DockerSandbox(settings.sandbox, docker_client)
    for kind in ("eval", "model", "train"):
        limits = {u["Name"]: u for u in host_config(docker_client, sandbox, kind)["Ulimits"]}
        if kind == "train":
            assert "memlock" not in limits
        else:
            assert limits["memlock"]["Soft"] == limits["memlock"]["Hard"] == 2 * GIB


def test_memlock_is_left_to_the_engine_by_default(docker_client: DockerClient, trainer_image: str) -> None:
    settings = Settings(trainer_image=trainer_image)
    limits = host_config(docker_client, DockerSandbox(settings.sandbox, docker_client), "eval")["Ulimits"]
    assert "memlock" not in {u["Name"] for u in limits}
