"""The record at scale: Redis memory per proposal and the latency of what agents and the dashboard poll,
at 1,000 and at 100,000 stored proposals.

    .venv/bin/python bench/history.py [--sizes 1000 100000] [--requests 200] [--submits 300]

Starts its own redis-server on a free port, seeds proposals of realistic shape through the store's own
code (`Store.put_many`, not the HTTP API, to save time): each a unique candidate train.py (trainer/train.py
with one line changed), its diff, and the runs its state implies (one screening run with a 4 KiB log
tail; a merged one also three paired confirmation runs), in a mix of states (70% rejected with a
decision, 12% crashed / timed out / out of memory, 5% voided, 1% merged, the rest queued). Then, in
this process through the app (`create_app` behind Starlette's TestClient, so routing, validation and
JSON are counted, the network is not), it times `--requests` calls each of GET /v1/status, the first
page of GET /v1/proposals, GET /v1/proposals/{id} of random proposals and GET /v1/leaderboard,
`--tsv-requests` of GET /v1/results.tsv (its answer grows with the record), and `--submits` unique
submits (a distinct one-line change each), whose CPU time is this process's (client and server).

Redis memory per proposal is Redis' `used_memory` growth over the seeding, less what the unique
train.py bodies take (`MEMORY USAGE` of their keys, where the layout keeps them apart), divided by the
number of proposals. Writes bench/results/history.json and the raw log bench/results/logs/history.log.
"""

import argparse
import hashlib
import logging
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from bench._common import private_redis, write_results  # noqa: E402
from services.controller.app import create_app  # noqa: E402
from services.models import (  # noqa: E402
    Best,
    Decision,
    Fingerprint,
    LineageEntry,
    Proposal,
    RunResult,
    StepTimings,
)
from services.patches import content_hash  # noqa: E402
from services.settings import Settings  # noqa: E402
from services.states import State  # noqa: E402
from services.store import Store, connect  # noqa: E402

NAME = "history"
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
BASE_COMMIT = "b" * 40
BATCH = 500  # proposals per put_many
LOG_TAIL_BYTES = 4096  # the kept log tail of a run in the seeded record
FP = Fingerprint(
    gpu="NVIDIA H100 80GB HBM3", driver="570.86", environment_hash="e" * 16, fixed_hash="f" * 16,
    wall_clock_s=300, evaluator_version="protocol-v1",
)  # fmt: skip
BASE = (ROOT / "trainer" / "train.py").read_text(encoding="utf-8")
LINES = BASE.splitlines(keepends=True)
EDIT_AT = next(
    i for i, line in enumerate(LINES) if line.strip() and not line.startswith(("#", '"""', "import"))
)


def log_tail(rng: random.Random) -> str:
    lines, size, step = [], 0, rng.randrange(1000)
    while size < LOG_TAIL_BYTES:
        line = (
            f"step {step:05d} | loss {rng.uniform(2.5, 4.0):.6f} | lr {rng.uniform(1e-4, 1e-3):.6f} | "
            f"dt {rng.uniform(80, 140):.1f}ms | tok/s {rng.randrange(400_000, 600_000)} | "
            f"mfu {rng.uniform(40, 50):.2f}%\n"
        )
        lines.append(line)
        size += len(line)
        step += 1
    return "".join(lines)[-LOG_TAIL_BYTES:]


def run(rng: random.Random, pid: str, seed: int, state: State, subject: str = "candidate") -> RunResult:
    scored = state == State.EVALUATING
    return RunResult(
        run_id=f"{pid}-{seed}-{subject}", proposal_id=pid, seed=seed, subject=subject, state=state,  # type: ignore[arg-type]
        reason="" if scored else "exit code 1", val_bpb=rng.uniform(1.25, 1.3) if scored else None,
        val_tokens=4_000_000 if scored else None, val_bytes=11_590_992 if scored else None,
        steps=2400, tokens=600_000_000, startup_s=31.0, training_s=268.0, peak_memory_bytes=40 * 10**9,
        fingerprint=FP if scored else None, fixed_hashes={"prepare.py": "1" * 64, "evaluate.py": "2" * 64},
        timings=StepTimings(prepare_s=1.2, train_container_s=301.0, collect_s=2.1, eval_container_s=9.5),
        scorer_timings={"load_s": 1.0, "score_s": 7.0}, log_tail=log_tail(rng),
    )  # fmt: skip


def decision(rng: random.Random, accepted: bool) -> Decision:
    delta = rng.uniform(-0.01, -0.001) if accepted else rng.uniform(-0.001, 0.02)
    return Decision(
        accepted=accepted, rule="seq-bayes/v1", candidate_bpb=1.257 + delta, best_bpb=1.257,
        best_commit=BASE_COMMIT, delta_bpb=delta, sigma_bpb=0.0005, sigma_source="calibrated",
        threshold_bpb=0.001, candidate_runs=[1.257 + delta], best_runs=[1.257], seeds=[42],
        params={"z": 1.64, "confirm_runs": 3},
        reason="the candidate is not better than the best by more than the noise",
    )  # fmt: skip


def proposal(i: int, rng: random.Random) -> Proposal:
    pid = f"p_{i:016x}"
    lines = list(LINES)
    lines.insert(EDIT_AT, f"EXPERIMENT_{i} = {rng.random()!r}  # a tried idea\n")
    text = "".join(lines)
    diff = (
        f"--- a/trainer/train.py\n+++ b/trainer/train.py\n@@ -{EDIT_AT},0 +{EDIT_AT + 1} @@\n"
        f"+EXPERIMENT_{i} = ...  # a tried idea\n"
    )
    roll = rng.random()
    fields: dict[str, Any] = {}
    if roll < 0.70:
        fields = {
            "state": State.REJECTED,
            "results": [run(rng, pid, 42, State.EVALUATING)],
            "decision": decision(rng, False),
        }
    elif roll < 0.82:
        failure = rng.choice([State.CRASHED, State.TIMED_OUT, State.OOM])
        fields = {"state": failure, "results": [run(rng, pid, 42, failure)]}
    elif roll < 0.87:
        fields = {"state": State.VOIDED, "results": [run(rng, pid, 42, State.VOIDED)]}
    elif roll < 0.88:
        seeds = [7, 8, 9]
        fields = {
            "state": State.MERGED, "confirm_seeds": seeds, "decision": decision(rng, True),
            "results": [run(rng, pid, s, State.EVALUATING) for s in (42, *seeds)],
            "baseline_results": [run(rng, pid, s, State.EVALUATING, "best") for s in seeds],
            "merged_commit": hashlib.sha1(pid.encode()).hexdigest(),
        }  # fmt: skip
    return Proposal(
        id=pid, title=f"try experiment {i}", description="A change to the learning-rate schedule. " * 4,
        agent=f"agent-{i % 8}", program_version=1, base_commit=BASE_COMMIT, base_train_py=BASE, train_py=text,
        diff=diff, content_hash=content_hash(BASE_COMMIT, text), seeds=[42], transitions=4,
        tried_ref=hashlib.sha1(pid.encode()).hexdigest(), created_at=1.8e9 + i, updated_at=1.8e9 + i + 600,
        **fields,
    )  # fmt: skip


def seed(store: Store, start: int, stop: int, log: Callable[[str], None]) -> None:
    rng = random.Random(start)
    t0 = time.monotonic()
    for first in range(start, stop, BATCH):
        store.put_many([proposal(i, rng) for i in range(first, min(first + BATCH, stop))], FP.key())
        if (first - start) % (20 * BATCH) == 0:
            log(f"seeded {first:,} proposals ({time.monotonic() - t0:.0f} s)")


def body_bytes(store: Store) -> int:
    """What the unique train.py bodies take where the layout keeps them in keys of their own."""
    total = 0
    for keys in _batches(store.r.scan_iter("ar:body:*", count=1000), 1000):
        pipe = store.r.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        total += sum(int(n or 0) for n in pipe.execute())
    return total


def _batches(it: Any, n: int) -> Any:
    batch = []
    for item in it:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] if len(samples) > 1 else samples[0]


def timed(call: Callable[[], Any], n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = call()
        samples.append((time.perf_counter() - t0) * 1000)
        assert response.status_code < 300, response.text[:300]
    return {"p50_ms": statistics.median(samples), "p99_ms": p99(samples)}


def latencies(
    client: TestClient, n: int, tsv_requests: int, size: int, rng: random.Random
) -> dict[str, dict[str, float]]:
    ids = [f"p_{rng.randrange(size):016x}" for _ in range(n)]
    pick = iter(ids)
    return {
        "status": timed(lambda: client.get("/v1/status"), n),
        "list": timed(lambda: client.get("/v1/proposals"), n),
        "get": timed(lambda: client.get(f"/v1/proposals/{next(pick)}"), n),
        "leaderboard": timed(lambda: client.get("/v1/leaderboard"), n),
        "results_tsv": timed(lambda: client.get("/v1/results.tsv"), tsv_requests),
    }


def submits(client: TestClient, n: int, size: int) -> dict[str, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        text = BASE + f"\nSUBMIT_{size}_{i} = {i}\n"
        answer = client.post(
            "/v1/proposals", json={"title": f"submit {i}", "agent": "bench", "train_py": text}
        )
        assert answer.status_code == 201, answer.text[:300]
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"per_s": n / wall, "cpu_ms_per_submit": 1000 * cpu / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--submits", type=int, default=300)
    parser.add_argument("--tsv-requests", type=int, default=5, help="results.tsv grows with the record")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the app logs each request; the figures are the output
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    figures: dict[str, Any] = {
        "sizes": args.sizes,
        "requests": args.requests,
        "log_tail_bytes": LOG_TAIL_BYTES,
    }
    rng = random.Random(0)
    with private_redis() as url:
        client_redis = connect(url)
        store = Store(client_redis)
        store.open_schema()
        store.add_commit(BASE_COMMIT, BASE)
        store.add_lineage(
            LineageEntry(commit=BASE_COMMIT, parent=None, position=0, title="baseline", val_bpb=1.257)
        )
        store.set_best(Best(commit=BASE_COMMIT, val_bpb=1.257, fingerprint_key=store.add_fingerprint(FP)))
        store.add_program_version("# Research program\n", "repo", "seeded")
        settings = Settings(
            admin_token=ADMIN_TOKEN, redis_url=url, submits_per_minute=10**6, max_queued_per_token=10**6
        )
        app = create_app(settings, store, client_redis, program_path=None)
        with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
            seeded = 0
            memory0 = int(client_redis.info("memory")["used_memory"])
            for size in args.sizes:
                seed(store, seeded, size, log)
                seeded = size
                used = int(client_redis.info("memory")["used_memory"]) - memory0
                bodies = body_bytes(store)
                stored = store.page(limit=1)[1]
                per = (used - bodies) / stored
                label = f"{size // 1000}k"
                found = latencies(client, args.requests, args.tsv_requests, size, rng)
                sub = submits(client, args.submits, size)
                log(f"{stored:,} proposals: Redis {used / 2**20:.1f} MiB, bodies {bodies / 2**20:.1f} MiB, "
                    f"{per:,.0f} B per proposal beyond its bodies")  # fmt: skip
                for route, figs in found.items():
                    log(f"  {route:12s} p50 {figs['p50_ms']:7.2f} ms  p99 {figs['p99_ms']:7.2f} ms")
                    figures[f"{route}_p99_ms_{label}"] = round(figs["p99_ms"], 3)
                    figures[f"{route}_p50_ms_{label}"] = round(figs["p50_ms"], 3)
                log(
                    f"  submit       {sub['per_s']:.1f}/s one client, {sub['cpu_ms_per_submit']:.2f} ms CPU each"
                )
                figures[f"redis_bytes_per_proposal_{label}"] = round(per)
                figures[f"load_average_1m_{label}"] = round(os.getloadavg()[0], 2)  # other work on the box
                figures[f"redis_body_bytes_{label}"] = bodies
                figures[f"submit_per_s_{label}"] = round(sub["per_s"], 1)
                figures[f"submit_cpu_ms_{label}"] = round(sub["cpu_ms_per_submit"], 2)
                seeded += args.submits  # the submits are stored too; later seeds start after them
        figures["redis_bytes_per_proposal"] = figures[f"redis_bytes_per_proposal_{args.sizes[-1] // 1000}k"]
        client_redis.close()
    out = write_results(NAME, figures, "\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
