"""Redis clients' timeouts against the blocking calls made on them (real Redis, real RQ worker).

redis-py 8 gives a client a 5 s socket timeout unless told otherwise, while an idle RQ worker blocks
in BLPOP for `worker_ttl - 15` s. A worker whose client times out first logs a Redis timeout and
backs off (1, 2, 4, ... s) before it listens again, so a proposal enqueued meanwhile waits."""

import logging
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from rq import SimpleWorker

from services import queue
from services.store import REDIS_CONNECT_TIMEOUT_S, STORE_SOCKET_TIMEOUT_S, Store, connect
from tests.support.stack import ThreadWorker

# RQ blocks for worker_ttl - 15 s: 6 s here, one second past redis-py's default socket timeout, so a
# client left at the default times out within the test's one idle period.
IDLE_TTL_S = 21
GIVE_UP_S = 120  # a safety net only: the worker ends by itself after one idle period


class ErrorRecords(logging.Handler):
    """Collects the RQ worker's error records (a Redis timeout is logged at ERROR)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.seen.set()


@pytest.fixture
def rq_errors() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    logger = logging.getLogger("rq.worker")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def test_an_idle_worker_blocks_in_its_dequeue_without_a_redis_timeout(
    redis_url: str, redis_client: "redis.Redis[bytes]", rq_errors: ErrorRecords
) -> None:
    """A real RQ worker (burst=False, on a queue of its own) on the client the services give theirs,
    whose pool already holds connections (as when other threads used the client first), idle for a
    whole blocking dequeue: its BLPOP ends with RQ's own dequeue timeout, never a Redis timeout, and
    the worker stops by itself once `max_idle_time` has passed (RQ counts idle time only across clean
    dequeue timeouts, so a worker whose reads time out never stops)."""
    name = f"idle-{uuid.uuid4().hex[:8]}"
    conn = queue.worker_connection(redis_url, ttl_s=IDLE_TTL_S)
    pool = conn.connection_pool
    early = [pool.get_connection(), pool.get_connection()]  # two at once: RQ's pub/sub takes only one
    for connection in early:
        pool.release(connection)
    worker = queue.rq_worker(name, conn, name, ttl_s=IDLE_TTL_S, worker_class=ThreadWorker)
    # the premise: a client left at redis-py's default would time out within this dequeue
    assert worker.dequeue_timeout > redis.Redis().get_connection_kwargs()["socket_timeout"]
    thread = threading.Thread(
        target=worker.work,
        kwargs={"burst": False, "max_idle_time": worker.dequeue_timeout, "logging_level": "WARNING"},
        name="idle-worker",
        daemon=True,  # on a queue no other test uses: harmless if it outlives a failing test
    )
    thread.start()
    for _ in range(GIVE_UP_S * 10):
        if not thread.is_alive() or rq_errors.seen.is_set():
            break
        thread.join(0.1)
    assert [r.getMessage() for r in rq_errors.records] == []
    assert not thread.is_alive(), "the idle worker never finished a clean dequeue timeout"
    conn.close()


def test_every_service_client_has_explicit_timeouts_longer_than_its_blocking_calls(redis_url: str) -> None:
    """The clients the services make: the store's (controller, worker and committer logic) and the RQ
    workers' (runs and commits queues, RQ's default worker TTL); a worker on a client whose timeout
    is not explicit, or not longer than its TTL, is refused before it starts."""
    store_client = connect(redis_url)
    assert store_client.get_connection_kwargs()["socket_timeout"] == STORE_SOCKET_TIMEOUT_S
    assert store_client.get_connection_kwargs()["socket_connect_timeout"] == REDIS_CONNECT_TIMEOUT_S
    assert Store.from_url(redis_url).r.get_connection_kwargs()["socket_timeout"] == STORE_SOCKET_TIMEOUT_S
    for queue_name in (queue.RUNS_QUEUE, queue.COMMITS_QUEUE):
        conn = queue.worker_connection(redis_url)
        worker: SimpleWorker = queue.rq_worker(queue_name, conn, f"check-{uuid.uuid4().hex[:8]}")
        assert worker.worker_ttl == queue.WORKER_TTL_S
        assert conn.get_connection_kwargs()["socket_timeout"] > worker.dequeue_timeout
        assert conn.get_connection_kwargs()["socket_connect_timeout"] == REDIS_CONNECT_TIMEOUT_S
        conn.close()
    for wrong in (redis.Redis.from_url(redis_url), store_client):
        with pytest.raises(ValueError, match=r"make it with queue\.worker_connection"):
            queue.rq_worker(queue.RUNS_QUEUE, wrong, "refused")
    store_client.close()
