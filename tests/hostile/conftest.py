"""The hostile-proposal harness: the real path (API submit → RQ → Worker → DockerSandbox →
collect → evaluation container → committer), in-process like tests/integration/test_failures_docker.py,
with small limits so that each attack ends in seconds.

Around every attack the host holds things the attack must not reach or change: a sentinel file, a
victim run's folder (another run's artifacts) under the same runs folder, a fake secret in the
worker's environment, the best score and the research branch. `Harness.assert_untouched` checks
them all after the run, and that no container or process of the run is left.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from docker.client import DockerClient
from pydantic import SecretStr

from services.committer import jobs as committer_jobs
from services.committer.build import build_committer, research_repo
from services.models import Best
from services.settings import Settings
from services.store import Store
from services.worker import jobs as worker_jobs
from services.worker.build import build_worker
from services.worker.docker_sandbox import DockerSandbox
from tests.support.api import api_client
from tests.support.hostile import (
    ADMIN,
    BEST_BPB,
    LOG_TAIL_BYTES,
    MAX_CHECKPOINT_BYTES,
    MAX_LOG_BYTES,
    MAX_OUTPUT_BYTES,
    MEMORY_BYTES,
    MODEL_TRAIN_PY,
    PIDS_LIMIT,
    SECRET,
    TMPFS_BYTES,
    WALL_CLOCK_S,
    Harness,
)
from tests.support.sandbox_data import prepare_sandbox_data


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Real training and validation folders made by prepare.py from a small corpus (vocab 512),
    readable by the sandbox user; returns (train, val, a string found only in the validation text)."""
    train, val = prepare_sandbox_data(tmp_path_factory.mktemp("hostile-data"))
    line = (val / "val.jsonl").read_text().splitlines()[0]
    marker = line[line.index('"text"') + 9 :][:48]  # 48 characters of the validation book
    assert marker not in "".join(p.read_text(errors="replace") for p in train.glob("*.json"))
    return train, val, marker


@pytest.fixture
def hostile(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_url: str,
    store: Store,
    redis_client: redis.Redis[bytes],
    trainer_image: str,
    docker_client: DockerClient,
    prepared_data: tuple[Path, Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Harness]:
    train, val, val_marker = prepared_data
    # indirect parametrization: {"settings": {...}, "sandbox": {...}} changes the defaults below
    options: dict[str, dict[str, Any]] = getattr(request, "param", {})
    monkeypatch.setenv("AR_WORKER_SECRET", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    values: dict[str, Any] = dict(
        redis_url=redis_url, admin_token=SecretStr(ADMIN), runs_dir=tmp_path / "runs",
        repo_dir=tmp_path / "repo", trainer_image=trainer_image, train_data=str(train),
        val_data=str(val), run_wall_clock_s=WALL_CLOCK_S, eval_timeout_s=60, kill_grace_s=2,
        container_memory_bytes=MEMORY_BYTES, container_pids_limit=PIDS_LIMIT, tmpfs_bytes=TMPFS_BYTES,
        max_output_bytes=MAX_OUTPUT_BYTES, max_checkpoint_bytes=MAX_CHECKPOINT_BYTES,
        max_log_bytes=MAX_LOG_BYTES, log_tail_bytes=LOG_TAIL_BYTES, infra_retries=0, preset="tiny",
        device="cpu", eval_max_docs=8,
        new_fingerprint_runs=0,  # the best keeps its seeded score: attacks must not move it
    )  # fmt: skip
    settings = Settings(**{**values, **options.get("settings", {})})
    repo = research_repo(settings)
    head = repo.ensure(MODEL_TRAIN_PY)
    store.add_commit(head, MODEL_TRAIN_PY)
    store.set_best(Best(commit=head, val_bpb=BEST_BPB))
    sentinel = tmp_path / "host-sentinel.txt"
    sentinel.write_text("host secret: the sandbox must neither read nor change this\n")
    victim = settings.sandbox.runs_dir / "run-victim"
    (victim / "out").mkdir(parents=True)
    (victim / "out" / "model.safetensors").write_bytes(b"another run's weights")
    (victim / "train.log").write_text("another run's log\n")
    for path in (tmp_path, settings.sandbox.runs_dir, victim, victim / "out"):
        path.chmod(0o755)  # readable by uid 65534, as a careless host would leave them
    sandbox = DockerSandbox(  # the live log as in production
        settings.sandbox, docker_client, log_sink=store.append_live_log, **options.get("sandbox", {})
    )
    worker_jobs.configure(build_worker(settings, store=store, sandbox=sandbox, name="hw"))
    committer = build_committer(settings, store=store, repo=repo)
    committer.publish_bundle()  # GET /v1/repo.bundle, as a started committer leaves it
    committer_jobs.configure(committer)
    try:
        with api_client(settings, store) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN}"
            harness = Harness(
                settings, store, redis_client, client, docker_client, repo, head, sentinel, victim,
                val_marker, (train, val), {},
            )  # fmt: skip
            harness._snapshot = harness._state()
            yield harness
    finally:
        worker_jobs.configure(None)
        committer_jobs.configure(None)
        sandbox.close()
