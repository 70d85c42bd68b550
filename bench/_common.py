"""Helpers shared by the benchmarks: a private redis-server, result files with their raw log."""

import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server on a free port for the benchmark's lifetime; yields its URL."""
    import redis

    from services.store import connect

    port = free_port()
    folder = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = connect(f"redis://127.0.0.1:{port}/0")
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def machine() -> dict[str, object]:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}


def write_results(name: str, figures: dict[str, object], log_text: str) -> Path:
    """Write bench/results/<name>.json and its raw log in bench/results/logs/<name>.log."""
    (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / "logs" / f"{name}.log"
    log_path.write_text(log_text)
    document = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "raw_log": str(log_path.relative_to(RESULTS.parent.parent)),
        **figures,
    }
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(document, indent=2) + "\n")
    return out
