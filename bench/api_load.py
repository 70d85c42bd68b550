"""API load: requests per second and latency percentiles of the controller over real HTTP.

    .venv/bin/python bench/api_load.py [--clients 16] [--seconds 20] [--workers 1] [--client raw]

Starts its own redis-server on a free port and the real entry point (`python -m
services.controller.main`, access log on, as deployed; `--workers` sets AR_CONTROLLER_WORKERS, the
number of uvicorn processes) against it, seeds a best
commit holding trainer/train.py, then runs one phase per endpoint for `--seconds` each, with
`--clients` concurrent keep-alive connections from one asyncio client in this process (`--client`:
a minimal HTTP/1.1 client by default, or httpx, which costs this process more CPU per request):

    submit        POST /v1/proposals, every request a distinct diff (appends a line to train.py), so each
                  one is validated, applied, compiled, stored and enqueued (none is a duplicate)
    status        GET /v1/status (queue depths and counts per state)
    get_proposal  GET /v1/proposals/{id} of proposals made in the submit phase

Client, server and Redis share the machine's cores, as they would on a small box; the figures are
the whole system's, not the server's alone. Beside them, each phase reports the CPU time the
controller's processes spent per request (`<phase>_server_cpu_ms_per_request`: user + system time of
the process tree from /proc, divided by the phase's requests) and this process's
(`<phase>_client_cpu_ms_per_request`). On a shared box CPU time per request grows with the machine's
load too (the load average at the start and end is in the results). Writes
bench/results/api_load.json and the raw log bench/results/logs/api_load.log (with `--workers N`
above 1: api_load_workersN.json and .log).
"""

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import free_port, private_redis, write_results  # noqa: E402
from services.models import Best  # noqa: E402
from services.queue import RUNS_QUEUE, queue_depths  # noqa: E402
from services.store import Store  # noqa: E402

RESULTS = ROOT / "bench" / "results"
NAME = "api_load"
BASE_COMMIT = "b" * 40
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
START_TIMEOUT_S = 30
REQUEST_TIMEOUT_S = 30
MACHINE = "2-core CI box"


# ---------------------------------------------------------------------------- processes


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")


CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """`root` and its descendants, read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the process ended meanwhile
                continue
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    """User + system CPU time of `root` and its live descendants."""
    total = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime and stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS_PER_S


@dataclass
class Controller:
    url: str
    pid: int


@contextmanager
def controller(redis_url: str, log_path: Path, workers: int) -> Iterator[Controller]:
    port = free_port()
    env = {
        **os.environ,
        "AR_REDIS_URL": redis_url,
        "AR_HOST": "127.0.0.1",
        "AR_PORT": str(port),
        "AR_ADMIN_TOKEN": ADMIN_TOKEN,
        "AR_CONTROLLER_WORKERS": str(workers),
        # The benchmark measures throughput; the per-token quotas would answer 429 after 30 submits.
        "AR_MAX_QUEUED_PER_TOKEN": str(10**9),
        "AR_SUBMITS_PER_MINUTE": str(10**9),
    }
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.controller.main"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the controller exited with {proc.returncode}; see {log_path}")
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_until(healthy, START_TIMEOUT_S, "the controller")
            yield Controller(url, proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)


# ---------------------------------------------------------------------------- load


@dataclass
class Phase:
    name: str
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    def record(self, status: int, latency_s: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies_s.append(latency_s)

    def figures(self) -> dict[str, float | int]:
        ordered = sorted(self.latencies_s)
        ok = sum(n for status, n in self.statuses.items() if 200 <= status < 300)

        def pct(q: float) -> float:
            return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

        return {
            f"{self.name}_requests": len(ordered),
            f"{self.name}_errors": len(ordered) - ok,
            f"{self.name}_req_per_s": round(len(ordered) / self.elapsed_s, 1),
            f"{self.name}_mean_ms": round(1000 * statistics.fmean(ordered), 2),
            f"{self.name}_p50_ms": pct(0.50),
            f"{self.name}_p90_ms": pct(0.90),
            f"{self.name}_p99_ms": pct(0.99),
            f"{self.name}_max_ms": round(1000 * ordered[-1], 2),
            f"{self.name}_server_cpu_ms_per_request": round(1000 * self.server_cpu_s / len(ordered), 2),
            f"{self.name}_client_cpu_ms_per_request": round(1000 * self.client_cpu_s / len(ordered), 2),
        }


class Answer:
    """The part of an HTTP answer the phases read."""

    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code = status_code
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class RawConnection:
    """One keep-alive HTTP/1.1 connection, written and read with asyncio streams: a client that costs
    the machine far less CPU per request than httpx, so that on a small box, where client and server
    share the cores, the figures say more about the server. It reads answers with a Content-Length
    (what the controller sends for these routes) and nothing else."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in {"Host": self.host, **headers}.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> Answer:
        return await self.request("GET", path, b"")

    async def post(self, path: str, json: Any) -> Answer:
        return await self.request("POST", path, _json_bytes(json))

    async def request(self, method: str, path: str, body: bytes) -> Answer:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\n{self.headers}"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line, *lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        length = next(
            int(v) for k, _, v in (line.partition(":") for line in lines) if k.lower() == "content-length"
        )
        return Answer(int(status_line.split(" ", 2)[1]), await self.reader.readexactly(length))

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):  # the server may reset a connection being closed
                await self.writer.wait_closed()


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


Client = httpx.AsyncClient | RawConnection
Request = Callable[[Any, int], Any]


async def drive(
    phase: Phase, clients: int, url: str, token: str, make_request: Request, client_kind: str
) -> Phase:
    """`clients` tasks, each sending its next request as soon as the last one answered (over its own
    connection with the raw client; from one pool of as many connections with httpx)."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {token}"}
    counter = iter(range(10**9))
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=REQUEST_TIMEOUT_S
    ) as pool:
        deadline = time.perf_counter() + phase.seconds

        async def one_client() -> None:
            client: Client = pool if client_kind == "httpx" else RawConnection(url, headers)
            try:
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    answer = await asyncio.wait_for(make_request(client, next(counter)), REQUEST_TIMEOUT_S)
                    phase.record(answer.status_code, time.perf_counter() - started)
            finally:
                if isinstance(client, RawConnection):
                    await client.aclose()

        started = time.perf_counter()
        cpu_started = time.process_time()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        phase.elapsed_s = time.perf_counter() - started
        phase.client_cpu_s = time.process_time() - cpu_started
    return phase


def variant_diff(base_lines: list[str], variant: int) -> str:
    """A diff appending `_BENCH_VARIANT = <n>` after the last line (valid Python, distinct content)."""
    tail = base_lines[-3:]
    start = len(base_lines) - len(tail) + 1
    context = "".join(f" {line}\n" for line in tail)
    return (
        "--- a/trainer/train.py\n+++ b/trainer/train.py\n"
        f"@@ -{start},{len(tail)} +{start},{len(tail) + 1} @@\n{context}+_BENCH_VARIANT = {variant}\n"
    )


def run_phases(
    server: Controller, clients: int, seconds: float, base: str, client_kind: str, say: Callable[[str], None]
) -> list[Phase]:
    url = server.url
    admin = httpx.post(
        f"{url}/v1/tokens",
        json={"name": "bench", "role": "agent"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    admin.raise_for_status()
    token = admin.json()["token"]
    base_lines = base.rstrip("\n").split("\n")
    created: list[str] = []

    async def submit(client: Client, n: int) -> Any:
        body = {
            "title": f"bench variant {n}",
            "description": "load test",
            "agent": "bench",
            "diff": variant_diff(base_lines, n),
        }
        answer = await client.post("/v1/proposals", json=body)
        if answer.status_code == 201:
            created.append(answer.json()["id"])
        return answer

    async def status(client: Client, n: int) -> Any:
        return await client.get("/v1/status")

    picker = random.Random(0)

    async def get_proposal(client: Client, n: int) -> Any:
        return await client.get(f"/v1/proposals/{picker.choice(created)}")

    phases = []
    asyncio.run(drive(Phase("warmup", 2.0), clients, url, token, status, client_kind))
    for name, request in (("submit", submit), ("status", status), ("get_proposal", get_proposal)):
        cpu_before = cpu_seconds(server.pid)
        phase = asyncio.run(drive(Phase(name, seconds), clients, url, token, request, client_kind))
        phase.server_cpu_s = cpu_seconds(server.pid) - cpu_before
        say(f"{name}: {json.dumps(phase.figures())} statuses={phase.statuses}")
        phases.append(phase)
    return phases


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--workers", type=int, default=1, help="controller processes (AR_CONTROLLER_WORKERS)")
    parser.add_argument(
        "--client", choices=["raw", "httpx"], default="raw",
        help="raw: a minimal asyncio HTTP/1.1 client (default); httpx: httpx.AsyncClient (costs more CPU)",
    )  # fmt: skip
    args = parser.parse_args()

    lines: list[str] = []

    def say(line: str) -> None:
        stamped = f"{datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')} {line}"
        print(stamped, flush=True)
        lines.append(stamped)

    base = (ROOT / "trainer" / "train.py").read_text()
    load_start = round(os.getloadavg()[0], 2)
    say(
        f"api_load: {args.clients} {args.client} clients, {args.seconds} s per phase, {args.workers} controller "
        f"process(es), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start"
    )
    say(f"platform: {platform.platform()}, Python {platform.python_version()}")
    say(f"base train.py: {len(base.splitlines())} lines, {len(base.encode())} bytes")
    with tempfile.TemporaryDirectory(prefix="api-load-") as folder, private_redis() as redis_url:
        store = Store.from_url(redis_url)
        store.add_commit(BASE_COMMIT, base)
        store.set_best(Best(commit=BASE_COMMIT, val_bpb=1.0))
        controller_log = Path(folder) / "controller.log"
        with controller(redis_url, controller_log, args.workers) as server:
            phases = run_phases(server, args.clients, args.seconds, base, args.client, say)
        submitted = sum(n for status, n in phases[0].statuses.items() if status == 201)
        enqueued = queue_depths(store.r)[RUNS_QUEUE]
        say(f"check: {submitted} proposals created (201), {enqueued} jobs in the runs queue")
        store.r.close()
        server_lines = controller_log.read_text().splitlines()
    say(f"controller log: {len(server_lines)} lines; first and last 10 follow")
    lines.extend("    " + line for line in [*server_lines[:10], "...", *server_lines[-10:]])

    figures: dict[str, Any] = {}
    for phase in phases:
        figures.update(phase.figures())
    write_results(
        NAME if args.workers == 1 else f"{NAME}_workers{args.workers}",
        {
            "machine_kind": MACHINE,
            "clients": args.clients,
            "seconds_per_phase": args.seconds,
            "controller_workers": args.workers,
            "client": args.client,
            "server": f"{args.workers} uvicorn process(es) (python -m services.controller.main, "
            f"AR_CONTROLLER_WORKERS={args.workers}), access log on, sync routes",
            "load_average_1min_start": load_start,
            "load_average_1min_end": round(os.getloadavg()[0], 2),
            "base_train_py_lines": len(base.splitlines()),
            "submits_created": submitted,
            "runs_jobs_enqueued": enqueued,
            **figures,
        },
        "\n".join(lines) + "\n",
    )


if __name__ == "__main__":
    main()
