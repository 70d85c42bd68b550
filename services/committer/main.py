"""`autoresearch-committer`: the one process that writes the research repo."""

import logging
import socket

from services import queue
from services.committer import jobs
from services.committer.build import build_committer, research_repo
from services.logs import configure_logging
from services.settings import Settings
from services.store import Store, connect

log = logging.getLogger(__name__)


def main() -> None:
    configure_logging()
    settings = Settings()
    store = Store(connect(settings.redis_url))
    store.open_schema()  # an older layout is refused, naming the migration command
    repo = research_repo(settings)
    committer = build_committer(settings, store=store, repo=repo)
    head = committer.bootstrap(settings.repo.baseline_train_py.read_text(encoding="utf-8"))
    log.info(
        "research branch %s at %s; %d verdicts resumed",
        settings.repo.research_branch,
        head,
        committer.recover(),
    )
    jobs.configure(committer)
    try:
        rq_name = queue.worker_name(f"{socket.gethostname()}-{queue.COMMITS_QUEUE}")
        rq_conn = queue.worker_connection(settings.redis_url)
        queue.rq_worker(queue.COMMITS_QUEUE, rq_conn, rq_name).work(logging_level="WARNING")
    finally:
        repo.close()


if __name__ == "__main__":
    main()
