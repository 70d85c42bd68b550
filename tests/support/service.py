"""The service in one test process behind the fake sandbox: a worker and a committer (real git) on the
real Redis, wired into in-process RQ jobs; `Service.drain` runs both queues until nothing is left."""

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from rq import SimpleWorker

from services import queue
from services.committer import jobs as committer_jobs
from services.committer.build import build_committer, research_repo
from services.committer.committer import Committer
from services.committer.repo import GitResearchRepo
from services.models import Proposal, new_id
from services.patches import build_candidate
from services.settings import Settings
from services.store import Store
from services.worker import jobs as worker_jobs
from services.worker.build import build_worker
from tests.support.fakes import FakeSandbox

BASELINE = "import os\nFAKE_SCORE = 1.5\n" + "".join(f"LAYER_{i} = {i}\n" for i in range(8))


@dataclass
class Service:
    settings: Settings
    store: Store
    conn: "redis.Redis[bytes]"
    repo: GitResearchRepo
    sandbox: FakeSandbox
    committer: Committer

    def submit(self, train_py: str, title: str = "idea") -> Proposal:
        best = self.store.get_best()
        assert best is not None
        base_py = self.store.commit_train_py(best.commit) or ""
        candidate = build_candidate(
            base_py,
            base_commit=best.commit,
            train_py=train_py,
            diff=None,
            max_bytes=self.settings.controller.max_patch_bytes,
        )
        proposal = Proposal(
            id=new_id("p"),
            title=title,
            agent="test-agent",
            description="a test idea",
            base_commit=best.commit,
            base_train_py=base_py,
            train_py=candidate.train_py,
            diff=candidate.diff,
            content_hash=candidate.content_hash,
            seeds=[self.settings.runs.first_seed],
        )
        stored, _ = self.store.create(proposal)
        queue.enqueue_run(self.conn, stored.id, 60)
        return stored

    def drain(self) -> None:
        """Run both queues until nothing is left (runs can enqueue decisions and vice versa)."""
        while queue.queue_depths(self.conn) != {queue.RUNS_QUEUE: 0, queue.COMMITS_QUEUE: 0}:
            for q in (queue.runs_queue(self.conn), queue.commits_queue(self.conn)):
                SimpleWorker([q], connection=self.conn).work(burst=True, logging_level="WARNING")

    def drain_one_job(self) -> None:
        """Perform the next job of either queue directly, letting any exception out."""
        for q in (queue.runs_queue(self.conn), queue.commits_queue(self.conn)):
            job = q.dequeue_any([q], None, connection=self.conn) if len(q) else None
            if job is not None:
                job[0].perform()
                return

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(self.repo.path), *args], check=True, capture_output=True, text=True
        ).stdout


@contextmanager
def running_service(settings: Settings, redis_client: "redis.Redis[bytes]") -> Iterator[Service]:
    """A worker (fake sandbox) and a committer (real git) on the real Redis, wired into in-process RQ
    jobs, the baseline bootstrapped and scored."""
    store = Store(redis_client)
    sandbox = FakeSandbox()
    repo = research_repo(settings)
    committer = build_committer(settings, store=store, repo=repo)
    worker_jobs.configure(build_worker(settings, store=store, sandbox=sandbox, name="w1"))
    committer_jobs.configure(committer)
    committer.bootstrap(BASELINE)
    service = Service(settings, store, redis_client, repo, sandbox, committer)
    service.drain()
    try:
        yield service
    finally:
        worker_jobs.configure(None)
        committer_jobs.configure(None)
        repo.close()
