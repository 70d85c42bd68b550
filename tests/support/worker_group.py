"""A worker group for tests/integration/test_many_workers.py: one process running an RQ SimpleWorker on
the `runs` queue with the fake sandbox, its own run folder, and nothing shared with other groups but
Redis. Every training request is appended to `--log` as `proposal_id <TAB> seed <TAB> sha256(train.py)`,
so the test can count what ran where.

    python -m tests.support.worker_group --redis-url URL --runs-dir DIR --log FILE --name NAME
"""

import argparse
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from services import queue
from services.settings import Settings
from services.store import Store, connect
from services.worker import jobs
from services.worker.build import build_worker
from services.worker.sandbox import StepOutcome, TrainRequest
from tests.support.fakes import FakeSandbox

TRAIN_DELAY_S = 0.05  # long enough that one group cannot drain the queue before the other dequeues


@dataclass
class LoggingFakeSandbox(FakeSandbox):
    log_path: Path = Path("trained.log")

    def train(self, request: TrainRequest) -> StepOutcome:
        code = hashlib.sha256((request.paths.code / "train.py").read_bytes()).hexdigest()[:16]
        with self.log_path.open("a") as log:
            log.write(f"{request.proposal_id}\t{request.seed}\t{code}\n")
        time.sleep(TRAIN_DELAY_S)
        return super().train(request)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--runs-dir", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    settings = Settings(redis_url=args.redis_url, runs_dir=args.runs_dir, repo_dir=args.runs_dir / "no-repo")
    conn = connect(settings.redis_url)
    sandbox = LoggingFakeSandbox(log_path=args.log)
    jobs.configure(build_worker(settings, store=Store(conn), sandbox=sandbox, name=args.name))
    rq_conn = queue.worker_connection(settings.redis_url)
    queue.rq_worker(queue.RUNS_QUEUE, rq_conn, args.name).work(with_scheduler=False, logging_level="WARNING")


if __name__ == "__main__":
    main()
