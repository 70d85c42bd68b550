"""Service overhead per experiment: the tiny CPU trainer run through the whole service path
(enqueue → RQ worker → training container → collection → evaluation container → result) next to a
bare process running the same trainer and evaluator on the host, back to back, as a ratio.

    .venv/bin/python bench/cycle.py [--repeats 3]

Needs a Docker engine and the images (`make images`). Writes bench/results/cycle.json and its raw
log. The tiny preset trains a fixed number of steps with fixed thread counts, so both paths do the
same work; the difference is what the service adds.
"""

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import redis
from rq import SimpleWorker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import private_redis, write_results  # noqa: E402
from services import queue  # noqa: E402
from services.models import Proposal, new_id  # noqa: E402
from services.settings import GIB, Settings  # noqa: E402
from services.store import Store, connect  # noqa: E402
from services.worker import jobs  # noqa: E402
from services.worker.build import build_worker  # noqa: E402
from services.worker.docker_sandbox import DockerSandbox  # noqa: E402
from services.worker.worker import Worker  # noqa: E402
from tests.support.trainer import run_prepare, write_corpus  # noqa: E402

TRAINER = ROOT / "trainer"


def bare_cycle(train_dir: Path, val_dir: Path, work: Path, seed: int) -> dict[str, float]:
    out = work / f"bare-{seed}-{time.monotonic_ns()}"
    out.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(work),
        "AR_WALL_CLOCK_S": "300",
        "AR_DEADLINE_UNIX": str(time.time() + 300),
        "AR_SEED": str(seed),
        "AR_DATA_DIR": str(train_dir),
        "AR_OUT_DIR": str(out),
        "AR_DEVICE": "cpu",
        "AR_PRESET": "tiny",
    }
    t0 = time.monotonic()
    subprocess.run([sys.executable, str(TRAINER / "train.py")], env=env, check=True, capture_output=True)
    t1 = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            str(TRAINER / "evaluate.py"),
            "--in-process",
            "--train-py",
            str(TRAINER / "train.py"),
            "--checkpoint",
            str(out),
            "--data-dir",
            str(train_dir),
            "--val-dir",
            str(val_dir),
            "--out",
            str(out / "result.json"),
            "--device",
            "cpu",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    t2 = time.monotonic()
    return {"train_s": t1 - t0, "eval_s": t2 - t1, "total_s": t2 - t0}


def service_cycle(worker: Worker, conn: "redis.Redis[bytes]", train_py: str, seed: int) -> dict[str, float]:
    proposal = Proposal(
        id=new_id("bench"),
        kind="run",
        title="bench",
        agent="bench",
        base_commit="0" * 40,
        base_train_py=train_py,
        train_py=train_py,
        diff="",
        content_hash="",
        seeds=[seed],
    )
    worker.store.create(proposal, dedupe=False)
    t0 = time.monotonic()
    queue.enqueue_run(conn, proposal.id, 600)
    job = queue.runs_queue(conn).jobs[0]
    SimpleWorker([queue.runs_queue(conn)], connection=conn).work(burst=True, logging_level="ERROR")
    total = time.monotonic() - t0
    job.refresh()
    done = worker.store.get(proposal.id)
    result = done.results[0]
    if result.val_bpb is None:
        raise RuntimeError(f"service run failed: {done.state} {done.reason}\n{result.log_tail}")
    handoff = (
        (job.started_at - job.enqueued_at).total_seconds() if job.started_at and job.enqueued_at else 0.0
    )
    conn.delete(*conn.keys("rq:queue:commits"))  # the committer is not part of this benchmark
    return {
        "total_s": total,
        "queue_handoff_s": handoff,
        "prepare_s": result.timings.prepare_s,
        "train_container_s": result.timings.train_container_s,
        "collect_s": result.timings.collect_s,
        "eval_container_s": result.timings.eval_container_s,
        "trainer_startup_s": result.startup_s or 0.0,
        "trainer_training_s": result.training_s or 0.0,
        "val_bpb": result.val_bpb,
    }


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    log = io.StringIO()
    with (
        tempfile.TemporaryDirectory(prefix="bench-cycle-") as tmp,
        private_redis() as url,
        redirect_stdout(log),
    ):
        work = Path(tmp)
        os.chmod(work, 0o755)
        train_dir, val_dir = run_prepare(write_corpus(work / "source"), work / "prepared")
        settings = Settings(
            redis_url=url,
            runs_dir=work / "runs",
            train_data=str(train_dir),
            val_data=str(val_dir),
            preset="tiny",
            device="cpu",
            container_memory_bytes=4 * GIB,
        )
        conn = connect(url)
        worker = build_worker(
            settings, store=Store(conn), sandbox=DockerSandbox(settings.sandbox), name="bench"
        )
        jobs.configure(worker)
        train_py = (TRAINER / "train.py").read_text()
        bare_rows, service_rows = [], []
        for i in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            bare_rows.append(bare_cycle(train_dir, val_dir, work, 42 + i))
            print("bare", bare_rows[-1], flush=True)
            service_rows.append(service_cycle(worker, conn, train_py, 42 + i))
            print("service", service_rows[-1], flush=True)
    bare_total = median(bare_rows, "total_s")
    service_total = median(service_rows, "total_s")
    figures = {
        "device": "cpu (2 cores, shared with other jobs), tiny preset",
        "repeats": args.repeats,
        "bare_train_s": round(median(bare_rows, "train_s"), 3),
        "bare_eval_s": round(median(bare_rows, "eval_s"), 3),
        "bare_total_s": round(bare_total, 3),
        "service_total_s": round(service_total, 3),
        "service_overhead_s": round(service_total - bare_total, 3),
        "service_to_bare_ratio": round(service_total / bare_total, 3),
        # What the containers add over the bare processes (start, mounts, teardown), per step.
        "train_container_overhead_s": round(
            median(service_rows, "train_container_s") - median(bare_rows, "train_s"), 3
        ),
        "eval_container_overhead_s": round(
            median(service_rows, "eval_container_s") - median(bare_rows, "eval_s"), 3
        ),
        "breakdown_median_s": {
            key: round(median(service_rows, key), 3)
            for key in (
                "queue_handoff_s",
                "prepare_s",
                "train_container_s",
                "collect_s",
                "eval_container_s",
                "trainer_startup_s",
                "trainer_training_s",
            )
        },
        "runs": {"bare": bare_rows, "service": service_rows},
    }
    path = write_results("cycle", figures, log.getvalue())
    print(log.getvalue())
    ratio = service_total / bare_total
    print(f"bare {bare_total:.2f} s, service {service_total:.2f} s, ratio {ratio:.3f} -> {path}")


if __name__ == "__main__":
    main()
