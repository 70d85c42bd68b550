"""A worker process behind the FakeSandbox, for fault-injection tests: settings from the environment
(AR_*), one sweep at start (as `autoresearch-worker` does: orphaned leases, then queued proposals
without a run job), then the runs queue in burst mode.
Usage: python -m tests.support.fault_worker <worker name>"""

import sys
import uuid

from services import queue
from services.settings import Settings
from services.store import Store, connect
from services.worker import jobs
from services.worker.build import build_worker
from tests.support.fakes import FakeSandbox


def main() -> None:
    name = sys.argv[1]
    settings = Settings()
    conn = connect(settings.redis_url)
    worker = build_worker(settings, store=Store(conn), sandbox=FakeSandbox(), name=name)
    jobs.configure(worker)
    worker.sweep()
    rq_name = f"{name}-{uuid.uuid4().hex[:8]}"
    rq_conn = queue.worker_connection(settings.redis_url)
    queue.rq_worker(queue.RUNS_QUEUE, rq_conn, rq_name).work(burst=True, logging_level="ERROR")


if __name__ == "__main__":
    main()
