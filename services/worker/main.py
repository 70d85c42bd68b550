"""`autoresearch-worker`: one process per GPU, taking proposals off the `runs` queue."""

import logging

from services import queue
from services.errors import InfraError, WorkerNameTaken
from services.logs import configure_logging
from services.settings import Settings
from services.store import Store, connect
from services.worker import jobs, recovery
from services.worker.build import build_sandbox, build_worker, worker_name
from services.worker.docker_sandbox import resolve_for_host

log = logging.getLogger(__name__)


def main() -> None:
    configure_logging()
    # In a compose stack: its own project's volumes, and where its runs folder lies on the host.
    settings = Settings()
    settings = settings.model_copy(update={"sandbox": resolve_for_host(settings.sandbox)})
    log.info(
        "runs in %s (on the host: %s)",
        settings.sandbox.runs_dir,
        settings.sandbox.runs_host_dir or settings.sandbox.runs_dir,
    )
    store = Store(connect(settings.redis_url))
    store.open_schema()  # an older layout is refused, naming the migration command
    name = worker_name(settings)
    try:  # before anything is removed as a stray: no other live worker may hold this name
        recovery.claim_name(store.r, name, settings.runs.worker_lease_ttl_s)
    except WorkerNameTaken as exc:
        log.error("%s", exc)
        raise SystemExit(2) from exc
    sandbox = build_sandbox(settings, store, name)
    removed = sandbox.remove_strays()  # containers a previous life of this worker left behind
    if removed:
        log.warning("removed %d stray containers: %s", len(removed), ", ".join(removed))
    worker = build_worker(settings, store=store, sandbox=sandbox, name=name)
    try:  # the fixed files' expected hashes, from the image and data, before any candidate runs
        worker.check_fixed_files()
    except InfraError as exc:
        log.warning("cannot pin the fixed files' hashes yet (%s); each run tries again first", exc)
    jobs.configure(worker)
    # Proposals whose worker died mid-run (lease expired), and queued proposals without a run job
    # (the process that stored them died before enqueueing): recovered now and every lease period.
    recovery.sweep_forever(worker.sweep, settings.runs.worker_lease_ttl_s)
    log.info(
        "worker %s ready (device %s, gpu mode %s)", name, settings.runs.device, settings.sandbox.gpu_mode
    )
    # SimpleWorker runs jobs in this process: the sandbox's containers are the isolation, and one
    # process per GPU keeps the Docker client and Redis connections alive between runs.
    rq_name = queue.worker_name(f"{name}-{queue.RUNS_QUEUE}")
    rq_conn = queue.worker_connection(settings.redis_url)
    queue.rq_worker(queue.RUNS_QUEUE, rq_conn, rq_name).work(with_scheduler=False, logging_level="WARNING")


if __name__ == "__main__":
    main()
