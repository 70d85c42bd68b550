"""A worker's name labels its containers, and a starting worker removes the containers of its name
that it did not start. Two live workers with one name (two CPU workers on one host, each defaulting
to the host's name) would so remove each other's runs: the name is claimed in Redis
(`recovery.claim_name`), and a second live claimant refuses to start, naming AR_WORKER_NAME."""

import os
import subprocess
import sys
import time

import pytest
import redis
from pydantic import ValidationError

from services.errors import WorkerNameTaken
from services.settings import Settings
from services.store import keys
from services.worker import recovery
from services.worker.build import worker_name
from tests.support import REPO


def test_a_second_live_worker_with_the_same_name_is_refused(redis_client: "redis.Redis[bytes]") -> None:
    first = recovery.claim_name(redis_client, "host-a", ttl_s=60)
    try:
        with pytest.raises(WorkerNameTaken, match=r"'host-a' is held by a live worker .*AR_WORKER_NAME"):
            recovery.claim_name(redis_client, "host-a", ttl_s=60, wait_s=0)
        other = recovery.claim_name(redis_client, "host-b", ttl_s=60, wait_s=0)  # another name is free
        other.set()
    finally:
        first.set()


def test_a_live_claim_is_refreshed_and_a_dead_one_expires(redis_client: "redis.Redis[bytes]") -> None:
    alive = recovery.claim_name(redis_client, "host-c", ttl_s=6)  # refreshed every 2 s
    time.sleep(7)  # past one TTL: only the refreshes keep it
    with pytest.raises(WorkerNameTaken):
        recovery.claim_name(redis_client, "host-c", ttl_s=6, wait_s=0)
    alive.set()  # the process "dies": no more refreshes
    # A restarted worker waits for the dead claim to expire, then holds the name itself.
    again = recovery.claim_name(redis_client, "host-c", ttl_s=6, wait_s=60)
    holder = redis_client.get(keys.WORKER_NAME.of("host-c"))
    assert holder is not None and f"pid {os.getpid()}" in holder.decode()
    again.set()


def test_the_worker_process_exits_naming_the_setting_when_its_name_is_taken(
    redis_url: str, redis_client: "redis.Redis[bytes]"
) -> None:
    redis_client.set(keys.WORKER_NAME.of("twin"), "otherhost pid 1 (abcd1234)", ex=120)
    env = {
        **os.environ, "AR_REDIS_URL": redis_url, "AR_WORKER_NAME": "twin", "AR_WORKER_LEASE_TTL_S": "1",
        "DOCKER_HOST": "unix:///nonexistent.sock",  # it must stop before it touches Docker
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "services.worker.main"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = done.stdout + done.stderr  # the JSON log goes to standard output
    assert done.returncode == 2, said[-2000:]
    assert "'twin' is held by a live worker (otherhost pid 1" in said and "AR_WORKER_NAME" in said
    assert redis_client.get(keys.WORKER_NAME.of("twin")) == b"otherhost pid 1 (abcd1234)"  # left alone


def test_the_name_is_the_setting_or_the_host_with_its_gpu() -> None:
    assert worker_name(Settings(worker_name="cpu-2")) == "cpu-2"
    assert worker_name(Settings(gpu_mode="nvidia", gpu_id="3")).endswith("-gpu3")
    with pytest.raises(ValidationError, match="worker_name"):
        Settings(worker_name="a b")
