"""The one module that knows queue names and enqueue options (RQ).

runs     GPU work: one job = one training + evaluation of one proposal (all its seeds)
commits  the committer's serial queue: decide on a scored proposal, merge winners

A run job's id is the proposal's id and its transition count when it entered the state the job
serves (`run_job_id`), and run jobs are enqueued only if that id is new: whoever enqueues a spell
(the controller, a worker's infrastructure retry, the committer, a worker's sweep for proposals
left `queued` without a job), it gets exactly one job.

A Redis error in an enqueue or a depth read is raised as StoreUnavailable (`store.translate_errors`).
"""

import uuid

import redis
from rq import Queue, Retry, SimpleWorker, get_current_job
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus

from services.store import connect, keys, translate_errors

RUNS_QUEUE = "runs"
COMMITS_QUEUE = "commits"

RUN_JOB = "services.worker.jobs.execute_proposal"
DECIDE_JOB = "services.committer.jobs.decide_and_commit"

# A run's job must outlive the whole run: training budget + evaluation + start-up slack.
JOB_SLACK_S = 600
# Results of finished jobs are kept an hour for debugging; the proposal in the store is the record.
RESULT_TTL_S = 3600
# A run job in one of these states will never run: it died before it moved its proposal on.
DEAD_JOB_STATES = (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
REPLACE_LOCK_S = 60  # one sweeper at a time replaces a dead run job
# RQ's default: a worker not heard from for this long counts as dead. An idle RQ worker blocks in
# BLPOP for its dequeue timeout, RQ's `worker_ttl - 15` s (405 s).
WORKER_TTL_S = 420
# The RQ worker's Redis client waits for a reply this much longer than the worker's TTL, so longer
# than any BLPOP it makes. With a shorter socket timeout (redis-py 8's default is 5 s) an idle
# worker's BLPOP fails with a timeout, RQ logs it and backs off (1, 2, 4, ... 60 s) before it
# listens again, and a job enqueued meanwhile waits for nothing.
DEQUEUE_REPLY_MARGIN_S = 30
# A decision job that raised is enqueued again at once, this many times. Not later: RQ schedules a
# retry with an interval for its scheduler, which no process here runs, so it would never run.
DECISION_RETRIES = 3


def runs_queue(conn: "redis.Redis[bytes]") -> Queue:
    return Queue(RUNS_QUEUE, connection=conn)


def commits_queue(conn: "redis.Redis[bytes]") -> Queue:
    return Queue(COMMITS_QUEUE, connection=conn)


def run_job_id(proposal_id: str, transitions: int) -> str:
    """The run job of the proposal's spell in `queued` (or `confirming`) that began with its
    `transitions`-th state change (0: just stored)."""
    return f"run-{proposal_id}-{transitions}"


@translate_errors
def enqueue_run(conn: "redis.Redis[bytes]", proposal_id: str, budget_s: int, transitions: int = 0) -> bool:
    """Enqueue the run job of the proposal's current spell (`transitions`: the proposal's count when
    it entered the state the job serves); False if that job exists already. RQ's unique enqueue is
    one Lua script, so of any number of processes enqueueing the same spell, exactly one does."""
    try:
        runs_queue(conn).enqueue(
            RUN_JOB,
            proposal_id,
            job_id=run_job_id(proposal_id, transitions),
            unique=True,
            job_timeout=budget_s + JOB_SLACK_S,
            result_ttl=RESULT_TTL_S,
            failure_ttl=7 * 24 * 3600,
            description=f"run proposal {proposal_id}",
        )
    except DuplicateJobError:
        return False
    return True


@translate_errors
def ensure_run(conn: "redis.Redis[bytes]", proposal_id: str, budget_s: int, transitions: int) -> bool:
    """Make sure the proposal's current spell has a run job that can still run: enqueue it if it is
    missing (the process that stored or re-queued the proposal died before enqueueing), or replace
    it if it died without moving the proposal on (failed, stopped or cancelled; e.g. a worker killed
    between taking the job and starting the run, once RQ gives up on it). True if it enqueued."""
    if enqueue_run(conn, proposal_id, budget_s, transitions):
        return True
    job_id = run_job_id(proposal_id, transitions)
    try:
        if Job.fetch(job_id, connection=conn).get_status() not in DEAD_JOB_STATES:
            return False
    except NoSuchJobError:  # expired since: enqueue it
        return enqueue_run(conn, proposal_id, budget_s, transitions)
    if not conn.set(keys.REPLACING.of(job_id), "1", nx=True, ex=REPLACE_LOCK_S):
        return False  # another sweeper replaces it
    Job.fetch(job_id, connection=conn).delete()
    return enqueue_run(conn, proposal_id, budget_s, transitions)


@translate_errors
def enqueue_decision(conn: "redis.Redis[bytes]", proposal_id: str) -> None:
    commits_queue(conn).enqueue(
        DECIDE_JOB,
        proposal_id,
        job_timeout=300,
        result_ttl=RESULT_TTL_S,
        failure_ttl=7 * 24 * 3600,
        retry=Retry(max=DECISION_RETRIES),
        description=f"decide proposal {proposal_id}",
    )


def last_attempt() -> bool:
    """False while the running RQ job will be tried again if it raises (True outside a job)."""
    job = get_current_job()
    return job is None or not job.retries_left


def worker_connection(redis_url: str, ttl_s: int = WORKER_TTL_S) -> "redis.Redis[bytes]":
    """The Redis client an RQ worker of TTL `ttl_s` listens on: its socket timeout outlasts the
    worker's blocking dequeue (`DEQUEUE_REPLY_MARGIN_S`). The service's other Redis work uses a store
    client (`store.connect`), whose shorter timeout notices a silent Redis sooner."""
    return connect(redis_url, socket_timeout_s=ttl_s + DEQUEUE_REPLY_MARGIN_S)


def rq_worker(
    queue_name: str,
    conn: "redis.Redis[bytes]",
    name: str,
    *,
    ttl_s: int = WORKER_TTL_S,
    worker_class: type[SimpleWorker] = SimpleWorker,
) -> SimpleWorker:
    """An in-process RQ worker on one queue, listening on `conn` (from `worker_connection` with the
    same `ttl_s`). A client whose socket timeout is not explicit and longer than the TTL is refused:
    RQ raises the timeout of its connection pool, but only for connections made after, so one
    pooled before (by another thread using the client) would still time out in BLPOP."""
    socket_timeout = conn.connection_pool.connection_kwargs.get("socket_timeout")
    if socket_timeout is None or socket_timeout <= ttl_s:
        raise ValueError(
            f"the RQ worker's Redis client has socket timeout {socket_timeout}, not longer than the "
            f"worker's {ttl_s} s TTL (its blocking dequeue): make it with queue.worker_connection"
        )
    return worker_class([Queue(queue_name, connection=conn)], connection=conn, name=name, worker_ttl=ttl_s)


def worker_name(base: str) -> str:
    """An RQ worker name unique to this process. RQ refuses to start a worker under a name that is
    registered and not marked dead, and a process killed with SIGKILL stays registered until its
    key's TTL runs out (RQ's worker TTL, 420 s), so a restarted process must not reuse the name."""
    return f"{base}-{uuid.uuid4().hex[:8]}"


def queue_keys() -> dict[str, str]:
    """Each queue's name → the Redis list RQ keeps its waiting jobs in (RQ's key, not the store's): for
    reading the depths in one round trip with other reads (`Store.status`)."""
    return {name: Queue.redis_queue_namespace_prefix + name for name in (RUNS_QUEUE, COMMITS_QUEUE)}


@translate_errors
def queue_depths(conn: "redis.Redis[bytes]") -> dict[str, int]:
    return {RUNS_QUEUE: len(runs_queue(conn)), COMMITS_QUEUE: len(commits_queue(conn))}
