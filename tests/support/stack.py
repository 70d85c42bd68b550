"""The whole service in one test process, for client-side end-to-end tests (dashboard, agents): a real
controller under uvicorn (tests/support/live_server.py), a real git research repo, real Redis and
RQ, and the worker and committer draining both queues in a background thread behind the fake
sandbox (tests/support/fakes.py: a candidate's `FAKE_SCORE = x` line is its score)."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from pydantic import SecretStr
from rq import SimpleWorker
from rq.timeouts import TimerDeathPenalty

from services import queue
from services.committer import jobs as committer_jobs
from services.committer.build import build_committer, research_repo
from services.controller.auth import Role, create_token
from services.settings import Settings
from services.store import Store, connect
from services.worker import jobs as worker_jobs
from services.worker.build import build_worker
from services.worker.sandbox import Sandbox
from tests.support.fakes import FakeSandbox
from tests.support.live_server import ADMIN, serve

BASELINE = """\
import os

# ---------------------------------------------------------------------------- hyperparameters
FAKE_SCORE = 1.5
LEARNING_RATE = 0.001  # per step
DEPTH = 4  # blocks
WARMUP_STEPS = 10  # steps


def main():
    print("seed", os.environ.get("AR_SEED"), LEARNING_RATE, DEPTH, WARMUP_STEPS)


if __name__ == "__main__":
    main()
"""
IDLE_S = 0.05  # the drain thread's pause when both queues are empty


class ThreadWorker(SimpleWorker):  # type: ignore[misc]
    """RQ's in-process worker, runnable off the main thread: signals belong to the main thread, so
    no signal handlers and a timer instead of SIGALRM for job timeouts."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


@dataclass
class Stack:
    url: str
    admin: str
    settings: Settings
    store: Store
    conn: "redis.Redis[bytes]"
    sandbox: Sandbox
    unpaused: threading.Event

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No job starts inside the block (one already running finishes)."""
        self.unpaused.clear()
        try:
            yield
        finally:
            self.unpaused.set()

    def token(self, name: str = "agent-1") -> str:
        return create_token(self.store, name, Role.AGENT)


def drain_once(conn: "redis.Redis[bytes]") -> None:
    for q in (queue.runs_queue(conn), queue.commits_queue(conn)):
        ThreadWorker([q], connection=conn).work(burst=True, logging_level="WARNING")


def _drain_until(conn: "redis.Redis[bytes]", stop: threading.Event, unpaused: threading.Event) -> None:
    while not stop.is_set():
        if unpaused.is_set() and any(queue.queue_depths(conn).values()):
            drain_once(conn)
        else:
            stop.wait(IDLE_S)


@contextmanager
def running_stack(
    tmp_path: Path,
    redis_url: str,
    baseline: str = BASELINE,
    sandbox: Sandbox | None = None,
    **settings: Any,
) -> Iterator[Stack]:
    """Yield the running service; the Redis database must be empty (the redis_client fixture).
    `sandbox`: default the fake one; `settings`: overrides of the service's Settings."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "admin_token": SecretStr(ADMIN),
        "runs_dir": tmp_path / "runs",
        "repo_dir": tmp_path / "repo",
        "page_size_max": 200,
        **settings,
    }
    service_settings = Settings(**values)
    conn = connect(redis_url)
    store = Store(conn)
    sandbox = sandbox or FakeSandbox()
    repo = research_repo(service_settings)
    committer = build_committer(service_settings, store=store, repo=repo)
    worker_jobs.configure(build_worker(service_settings, store=store, sandbox=sandbox, name="w1"))
    committer_jobs.configure(committer)
    stop, unpaused = threading.Event(), threading.Event()
    unpaused.set()
    drainer = threading.Thread(target=_drain_until, args=(conn, stop, unpaused), name="drain", daemon=True)
    try:
        committer.bootstrap(baseline)
        while any(queue.queue_depths(conn).values()):
            drain_once(conn)
        drainer.start()
        with serve(service_settings, store) as url:
            yield Stack(url, ADMIN, service_settings, store, conn, sandbox, unpaused)
    finally:
        stop.set()
        if drainer.is_alive():
            drainer.join(30)
        worker_jobs.configure(None)
        committer_jobs.configure(None)
        repo.close()
        conn.close()
