"""The controller as several processes (AR_CONTROLLER_WORKERS=2) against one real Redis: what one
process writes, the other reads, and the answers agree whichever process gives them.

Connections are pinned to a process: each is a keep-alive connection whose server side is found in
/proc (the socket's inode among the worker process's open files), so a test can send one request to
each process on purpose instead of hoping the kernel spreads them.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.patches import canonical_diff
from services.store import Store, connect
from tests.support.live_server import BASE, REPO_PROGRAM, seed, with_lr
from tests.support.net import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
ADMIN = "admin-token-for-two-processes-0123456789"
WORKERS = 2
START_TIMEOUT_S = 60  # for the processes to start and each to serve a connection (a loaded CI box)


class Connection:
    """A keep-alive HTTP/1.1 connection to the controller (plain sockets: its server-side process is
    what the test needs to know, which no HTTP client says)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.port = port
        self.buffer = b""

    def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if token is not None:
            head += f"Authorization: Bearer {token}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + payload)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        header, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = header.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = int(fields["content-length"])
        while len(self.buffer) < length:
            self.buffer += self._recv()
        content, self.buffer = self.buffer[:length], self.buffer[length:]
        is_json = "json" in fields.get("content-type", "")
        return int(status_line.split(" ")[1]), json.loads(content) if is_json else content.decode()

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the controller closed the connection")
        return chunk

    def server_side_inode(self) -> int | None:
        """The inode of the controller's end of this connection, from /proc/net/tcp."""
        local_port = self.sock.getsockname()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.split(":")[1], 16) == self.port and int(remote.split(":")[1], 16) == local_port:
                return int(fields[9])
        return None

    def close(self) -> None:
        self.sock.close()


def worker_processes(pid: int) -> list[int]:
    """uvicorn's worker processes under `pid` (started through multiprocessing's spawn, beside which
    multiprocessing may run a resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            is_child = int(stat.rsplit(")", 1)[1].split()[1]) == pid
            if is_child and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


@pytest.fixture
def controller(redis_url: str, redis_client: Any, tmp_path: Path) -> Iterator[tuple[int, list[int]]]:
    """(port, the worker processes' pids) of `python -m services.controller.main` with two workers."""
    seed(Store(redis_client))
    port = free_port()
    env = {
        **os.environ,
        "AR_REDIS_URL": redis_url,
        "AR_ADMIN_TOKEN": ADMIN,
        "AR_HOST": "127.0.0.1",
        "AR_PORT": str(port),
        "AR_PROGRAM_PATH": str(REPO_PROGRAM),
        "AR_CONTROLLER_WORKERS": str(WORKERS),
    }
    log = tmp_path / "controller.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.controller.main"], cwd=REPO, env=env, stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def ready() -> list[int] | None:
            assert proc.poll() is None, log.read_text()
            workers = worker_processes(proc.pid)
            if len(workers) < WORKERS:
                return None
            try:
                probe = Connection(port)
            except OSError:
                return None
            try:
                return workers if probe.request("GET", "/readyz")[0] == 200 else None
            finally:
                probe.close()

        workers = wait_for(ready, START_TIMEOUT_S, "the controller's two processes to answer")
        yield port, workers
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def connection_to_each(port: int, workers: list[int]) -> dict[int, Connection]:
    """One open connection served by each worker process ({pid: connection}). A process still
    starting accepts nothing yet, so connections are opened (and those of a process already held
    closed again) until every process has served one."""
    pinned: dict[int, Connection] = {}

    def one_more() -> bool:
        conn = Connection(port)
        assert conn.request("GET", "/healthz")[0] == 200  # accepted and served: its process holds it
        inode = conn.server_side_inode()
        owner = next((pid for pid in workers if inode is not None and inode in socket_inodes(pid)), None)
        if owner is not None and owner not in pinned:
            pinned[owner] = conn
        else:
            conn.close()
        return len(pinned) == len(workers)

    try:
        wait_for(one_more, START_TIMEOUT_S, "a connection served by each controller process", interval_s=0.01)
    except AssertionError:
        for conn in pinned.values():
            conn.close()
        raise
    return pinned


def submission(train_py: str, title: str) -> dict[str, Any]:
    return {
        "title": title,
        "description": "two processes",
        "agent": "test",
        "diff": canonical_diff(BASE, train_py),
    }


def test_two_processes_agree_on_what_either_wrote(controller: tuple[int, list[int]], redis_url: str) -> None:
    port, workers = controller
    pinned = connection_to_each(port, workers)
    first, second = (pinned[pid] for pid in workers)
    try:
        # the first admin token is the environment's, in both processes
        for conn in (first, second):
            assert conn.request("GET", "/v1/status", ADMIN)[0] == 200

        # a token made through one process authenticates in the other
        status, made = first.request("POST", "/v1/tokens", ADMIN, {"name": "agent-a", "role": "agent"})
        assert status == 201
        agent = made["token"]
        assert second.request("GET", "/v1/status", agent)[0] == 200

        # a submit through one process is read, listed and counted the same through both
        status, created = first.request(
            "POST", "/v1/proposals", agent, submission(with_lr("0.002"), "lr 0.002")
        )
        assert status == 201
        for conn in (first, second):
            status, read = conn.request("GET", f"/v1/proposals/{created['id']}", agent)
            assert status == 200
            assert {k: read[k] for k in ("id", "state", "content_hash", "diff", "train_py")} == {
                k: created[k] for k in ("id", "state", "content_hash", "diff", "train_py")
            }

        # the same change through the other process is a duplicate of it, not a second proposal
        status, again = second.request("POST", "/v1/proposals", agent, submission(with_lr("0.002"), "again"))
        assert (status, again["id"]) == (200, created["id"])

        # a retried submit (same Idempotency-Key) answered by the other process gets the first answer
        keyed = submission(with_lr("0.003"), "lr 0.003")
        retry = {"Idempotency-Key": "retry-1"}
        answers = [conn.request("POST", "/v1/proposals", agent, keyed, retry) for conn in (second, first)]
        assert [status for status, _ in answers] == [201, 200]
        assert answers[0][1]["id"] == answers[1][1]["id"]

        # a cancel through one process is seen through the other; the counters agree
        status, cancelled = second.request("POST", f"/v1/proposals/{created['id']}/cancel", ADMIN)
        assert (status, cancelled["state"]) == (200, "cancelled")
        assert first.request("GET", f"/v1/proposals/{created['id']}", agent)[1]["state"] == "cancelled"
        views = [conn.request("GET", "/v1/status", ADMIN)[1] for conn in (first, second)]
        assert views[0] == views[1]
        assert views[0]["states"]["cancelled"] == 1 and views[0]["states"]["queued"] == 1
        assert views[0]["queues"]["runs"] == 2  # one run job per proposal, whichever process enqueued it

        listings = [conn.request("GET", "/v1/proposals", agent)[1] for conn in (first, second)]
        assert listings[0] == listings[1]
        assert listings[0]["total"] == 2
    finally:
        for conn in pinned.values():
            conn.close()
    conn_check = connect(redis_url)
    try:
        assert Store(conn_check).count_by_state()["queued"] == 1
    finally:
        conn_check.close()
