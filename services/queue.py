"""The one module that knows queue names and enqueue options (RQ).

runs     GPU work: one job = one training + evaluation of one proposal (all its seeds)
commits  the committer's serial queue: decide on a scored proposal, merge winners
"""

import redis
from rq import Queue, Retry

RUNS_QUEUE = "runs"
COMMITS_QUEUE = "commits"

RUN_JOB = "services.worker.jobs.execute_proposal"
DECIDE_JOB = "services.committer.jobs.decide_and_commit"

# A run's job must outlive the whole run: training budget + evaluation + start-up slack.
JOB_SLACK_S = 600
# Results of finished jobs are kept an hour for debugging; the proposal in the store is the record.
RESULT_TTL_S = 3600


def runs_queue(conn: "redis.Redis[bytes]") -> Queue:
    return Queue(RUNS_QUEUE, connection=conn)


def commits_queue(conn: "redis.Redis[bytes]") -> Queue:
    return Queue(COMMITS_QUEUE, connection=conn)


def enqueue_run(conn: "redis.Redis[bytes]", proposal_id: str, budget_s: int) -> None:
    runs_queue(conn).enqueue(
        RUN_JOB,
        proposal_id,
        job_id=f"run-{proposal_id}-{_attempt_suffix()}",
        job_timeout=budget_s + JOB_SLACK_S,
        result_ttl=RESULT_TTL_S,
        failure_ttl=7 * 24 * 3600,
        description=f"run proposal {proposal_id}",
    )


def enqueue_decision(conn: "redis.Redis[bytes]", proposal_id: str) -> None:
    commits_queue(conn).enqueue(
        DECIDE_JOB,
        proposal_id,
        job_timeout=300,
        result_ttl=RESULT_TTL_S,
        failure_ttl=7 * 24 * 3600,
        retry=Retry(max=3, interval=[1, 5, 15]),
        description=f"decide proposal {proposal_id}",
    )


def worker_name(base: str) -> str:
    """An RQ worker name unique to this process. RQ refuses to start a worker under a name that is
    registered and not marked dead, and a process killed with SIGKILL stays registered until its
    key's TTL runs out (RQ's worker TTL, 420 s), so a restarted process must not reuse the name."""
    return f"{base}-{_attempt_suffix()}"


def queue_depths(conn: "redis.Redis[bytes]") -> dict[str, int]:
    return {RUNS_QUEUE: len(runs_queue(conn)), COMMITS_QUEUE: len(commits_queue(conn))}


def _attempt_suffix() -> str:
    import uuid

    return uuid.uuid4().hex[:8]
