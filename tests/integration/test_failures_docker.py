"""Trainer crash, wall-clock timeout and out-of-memory through the real path: API submit → RQ →
worker → Docker sandbox; each ends in its own state with the log tail readable through the API."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr
from rq import SimpleWorker

from services import queue
from services.models import Best
from services.settings import MIB, Settings
from services.store import Store
from services.worker import jobs
from services.worker.build import build_worker
from services.worker.docker_sandbox import DockerSandbox
from tests.support.api import api_client

pytestmark = pytest.mark.docker

ADMIN = "admin-token-for-failure-tests"
COMMIT = "f" * 40
BASE = "print('baseline')\n"

CRASH = "import sys\nprint('loading data', flush=True)\nraise SystemExit('boom: the model exploded')\n"
TIMEOUT = "import time\nprint('training forever', flush=True)\ntime.sleep(600)\n"
OOM = "print('allocating', flush=True)\nhog = bytearray(1024 * 1024 * 1024)\n"


@pytest.fixture
def api(
    tmp_path: Path,
    redis_url: str,
    store: Store,
    redis_client: "redis.Redis[bytes]",
    trainer_image: str,
    data_dirs: tuple[Path, Path],
) -> Iterator[TestClient]:
    train, val = data_dirs
    settings = Settings(
        redis_url=redis_url,
        admin_token=SecretStr(ADMIN),
        runs_dir=tmp_path / "runs",
        trainer_image=trainer_image,
        train_data=str(train),
        val_data=str(val),
        run_wall_clock_s=4,
        eval_timeout_s=30,
        container_memory_bytes=128 * MIB,
        preset="tiny",
        device="cpu",
    )
    store.add_commit(COMMIT, BASE)
    store.set_best(Best(commit=COMMIT, val_bpb=1.5))
    sandbox = DockerSandbox(settings.sandbox, log_sink=store.append_live_log)  # as the worker's main wires it
    jobs.configure(build_worker(settings, store=store, sandbox=sandbox, name="docker-w"))
    try:
        with api_client(settings, store) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN}"
            yield client
    finally:
        jobs.configure(None)
        sandbox.close()


@pytest.mark.parametrize(
    ("train_py", "state", "reason", "log_line"),
    [
        (CRASH, "crashed", "exited with code 1", "boom: the model exploded"),
        (TIMEOUT, "timed_out", "4 s wall-clock limit", "training forever"),
        (OOM, "oom", "out of memory", "allocating"),
    ],
    ids=["crash", "timeout", "oom"],
)
def test_failure_has_its_own_state_and_log_tail_in_the_api(
    api: TestClient,
    store: Store,
    redis_client: "redis.Redis[bytes]",
    train_py: str,
    state: str,
    reason: str,
    log_line: str,
) -> None:
    submitted = api.post("/v1/proposals", json={"title": state, "agent": "t", "train_py": train_py})
    assert submitted.status_code == 201, submitted.text
    proposal_id = submitted.json()["id"]
    SimpleWorker([queue.runs_queue(redis_client)], connection=redis_client).work(
        burst=True, logging_level="ERROR"
    )
    proposal = api.get(f"/v1/proposals/{proposal_id}").json()
    assert proposal["state"] == state
    assert reason in proposal["reason"]
    log = api.get(f"/v1/proposals/{proposal_id}/log")
    assert log.status_code == 200
    assert log_line in log.text
    live = "".join(chunk for _, chunk in store.read_live_log(proposal_id))
    assert log_line in live  # streamed while it ran
    assert queue.queue_depths(redis_client)[queue.COMMITS_QUEUE] == 0  # never sent for a decision


def test_environment_probe_runs_with_a_live_log_sink(
    tmp_path: Path, store: Store, trainer_image: str
) -> None:
    """The probe container belongs to no proposal; the live log sink must not trip over it."""
    settings = Settings(runs_dir=tmp_path / "runs", trainer_image=trainer_image, preset="tiny", device="cpu")
    with DockerSandbox(settings.sandbox, log_sink=store.append_live_log) as sandbox:
        environment = sandbox.environment()
    assert environment.gpu and environment.environment_hash
