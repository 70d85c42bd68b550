"""Fault injection on the Docker daemon itself, with a PRIVATE dockerd (its own --data-root,
--exec-root, pidfile, config file and unix socket in a temporary folder; no bridge, no iptables),
never the daemon other tests use. A real worker pipeline (RQ, Redis, `Worker` + `DockerSandbox`
pointed at the private socket) runs a proposal whose train.py waits on a hold file; the daemon is
restarted or killed under it. A restart is never the proposal's fault: the run is an infrastructure
failure (never crashed, timed_out or scored), retried at most `infra_retries` times, and never two of
the proposal's containers run at once.

The image is the local base image (Debian + python3, what `docker/base-image.sh` builds), loaded
into the private daemon once per module (~6 s); the train.py doubles as the evaluator and the model
server, so the pipeline runs to a score without the trainer image.
"""

import contextlib
import gc
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import redis
from docker.client import DockerClient
from rq import SimpleWorker

from services import queue
from services.errors import SandboxUnavailable
from services.models import Proposal, new_id
from services.settings import MIB, Settings
from services.states import State
from services.store import Store
from services.worker import jobs
from services.worker.build import build_worker
from services.worker.collect import prepare_run_dir
from services.worker.docker_sandbox import LABEL_PROPOSAL, DockerSandbox
from services.worker.sandbox import TrainRequest
from services.worker.worker import Worker
from tests.support import REPO
from tests.support.net import wait_for

# docker-py leaks the socket of each connection attempt that fails (the daemon is down on purpose
# here); the garbage collector closes them, with a ResourceWarning that is no fault of the test.
pytestmark = [
    pytest.mark.docker,
    pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"),
]

IMAGE = "autoresearch/base:bookworm"
PYTHON = "/usr/bin/python3"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60  # a SIGTERMed dockerd stops its containers (up to 10 s each) before it exits
API_VERSION = "1.41"  # Docker 20.10's
HOLD = "hold"  # training waits while this file exists in the (read-only) data folder

TRAIN_PY = """\
import json, os, sys, time
if "--socket" in sys.argv:  # a model container: this file stands in for model_server.py, serving nothing
    sys.exit(0)
if "--out" in sys.argv:  # the scorer's container: this file stands in for evaluate.py
    result = {"val_bpb": 1.25, "val_tokens": 10, "val_bytes": 40, "evaluator_version": "test/1"}
    json.dump(result, open(sys.argv[sys.argv.index("--out") + 1], "w"))
    sys.exit(0)
print("training", flush=True)
while os.path.exists(os.path.join(os.environ["AR_DATA_DIR"], "hold")):
    time.sleep(0.1)
out = os.environ["AR_OUT_DIR"]
open(os.path.join(out, "model.safetensors"), "wb").write(b"weights")
run = {"config": {}, "steps": 1, "tokens": 1, "seed": int(os.environ["AR_SEED"])}
json.dump(run, open(os.path.join(out, "run.json"), "w"))
"""


class PrivateDockerd:
    """A dockerd of the test's own, restartable on the same folders (containers and images kept)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / "docker.sock"
        self.url = f"unix://{self.socket}"
        (folder / "daemon.json").write_text("{}")  # not /etc/docker/daemon.json: nothing shared
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            "dockerd", "--data-root", str(self.folder / "data"), "--exec-root", str(self.folder / "exec"),
            "--pidfile", str(self.folder / "dockerd.pid"), "--host", self.url,
            "--config-file", str(self.folder / "daemon.json"), "--iptables=false", "--bridge=none",
            "--cgroup-parent=autoresearch-test-dockerd", "--log-level=warn",
        ]  # fmt: skip
        with (self.folder / "dockerd.log").open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.answers, START_TIMEOUT_S, "the private dockerd to answer")

    def client(self, timeout_s: int = 10) -> DockerClient:
        """A client that does not ask the daemon for its API version when made (it may be down)."""
        return DockerClient(base_url=self.url, version=API_VERSION, timeout=timeout_s)

    def listening(self) -> bool:
        """Whether the socket takes connections (asked directly: docker-py leaks the socket of a
        connection that fails)."""
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def answers(self) -> bool:
        if not self.listening():
            return False
        client = self.client(2)
        try:
            return bool(client.ping())
        except (docker.errors.DockerException, OSError):
            return False
        finally:
            client.close()

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to dockerd and wait for it to exit."""
        assert self.proc is not None and self.proc.poll() is None, "the private dockerd is not running"
        self.proc.send_signal(sig)
        self.proc.wait(STOP_TIMEOUT_S)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self) -> str:
        return (self.folder / "dockerd.log").read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def private_dockerd(docker_client: DockerClient) -> Iterator[PrivateDockerd]:
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed")
    if os.geteuid() != 0:
        pytest.skip("a private dockerd needs root")
    base = subprocess.run(
        ["bash", str(REPO / "docker" / "base-image.sh"), IMAGE], capture_output=True, text=True
    )
    if base.returncode != 0:
        pytest.fail(f"docker/base-image.sh failed:\n{(base.stdout + base.stderr)[-3000:]}", pytrace=False)
    # unix sockets (ours and containerd's, under --exec-root) need a short path: not pytest's tmp_path
    folder = Path(tempfile.mkdtemp(prefix="ar-dockerd-", dir="/tmp"))
    daemon = PrivateDockerd(folder)
    try:
        daemon.start()
        with contextlib.closing(daemon.client(120)) as private:
            private.images.load(docker_client.images.get(IMAGE).save(named=True))
        yield daemon
    finally:
        if not daemon.running():  # restart it so that it stops what it restores (kill -9 leaves shims)
            daemon.start()
        daemon.signal(signal.SIGTERM)
        unmount_under(folder)  # dockerd leaves its data root bind-mounted on itself
        shutil.rmtree(folder)
        gc.collect()  # the leaked sockets' warnings, while this module's filter holds


def unmount_under(folder: Path) -> None:
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{folder}/")), key=len, reverse=True):
        subprocess.run(["umount", point], check=True)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    folder.chmod(0o755)
    return folder


@pytest.fixture
def make_settings(tmp_path: Path, data_dir: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "trainer_image": IMAGE, "runs_dir": tmp_path / "runs", "train_data": str(data_dir),
            "val_data": str(data_dir), "run_wall_clock_s": 120, "eval_timeout_s": 60,
            "container_memory_bytes": 1024 * MIB, "container_pids_limit": 64, "tmpfs_bytes": 16 * MIB,
            "infra_retries": 2, "trainer_python": PYTHON, **overrides,
        }  # fmt: skip
        return Settings(**values)

    return make


def sandbox_for(settings: Settings, daemon: PrivateDockerd) -> DockerSandbox:
    return DockerSandbox(
        settings.sandbox, base_url=daemon.url, evaluator="/code/train.py", model_server="/code/train.py",
        owner="w-dockerd",
    )  # fmt: skip


def new_proposal(store: Store) -> Proposal:
    proposal = Proposal(
        id=new_id("p"), title="sleepy", agent="t", description="", base_commit="a" * 40,
        base_train_py="", train_py=TRAIN_PY, diff="", content_hash=new_id("h"), seeds=[42],
    )  # fmt: skip
    stored, _ = store.create(proposal)
    return stored


@dataclass
class Watch:
    """Samples the private daemon every 0.1 s: the most of the proposal's containers of one step seen
    running at once, the model containers aside (an evaluation runs two of them beside its scorer by
    design); the daemon is unreachable while it is down, and those samples are skipped. On a busy host
    a sample can take seconds, so one may miss a short-lived container: `samples` counts the answered
    ones, and the test asserts the bound (at most one at once), not that a given container was seen."""

    daemon: PrivateDockerd
    proposal_id: str
    most_running: int = 0
    samples: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        filters = {"label": f"{LABEL_PROPOSAL}={self.proposal_id}", "status": "running"}
        while not self.stop.wait(0.1):
            if not self.daemon.listening():
                continue
            client = self.daemon.client()
            try:
                steps = Counter(
                    c.labels.get("autoresearch.step") for c in client.containers.list(filters=filters)
                )
                steps.pop("model", None)
                self.most_running = max(self.most_running, *steps.values(), 0)
                self.samples += 1
            except (docker.errors.DockerException, OSError):
                continue  # down, or restarting
            finally:
                client.close()


def running_train(daemon: PrivateDockerd, proposal_id: str) -> str:
    """Wait until the proposal's training container runs train.py; its name."""
    with contextlib.closing(daemon.client()) as client:
        filters = {
            "label": [f"{LABEL_PROPOSAL}={proposal_id}", "autoresearch.step=train"],
            "status": "running",
        }

        def training() -> str:
            found = client.containers.list(filters=filters)
            try:
                processes = found[0].top()["Processes"] if found else []
            except docker.errors.NotFound:  # gone between the two calls
                return ""
            return str(found[0].name) if any("train.py" in " ".join(p) for p in processes) else ""

        return str(wait_for(training, 60, "the training container to run train.py", interval_s=0.1))


@pytest.fixture
def rig(
    private_dockerd: PrivateDockerd, make_settings: Callable[..., Settings], store: Store,
    redis_client: "redis.Redis[bytes]",
) -> Iterator[Callable[..., Worker]]:  # fmt: skip
    """Makes the worker RQ's jobs run (settings overridden as given), over the private daemon."""
    made: list[DockerSandbox] = []

    def make(**overrides: Any) -> Worker:
        settings = make_settings(**overrides)
        sandbox = sandbox_for(settings, private_dockerd)
        made.append(sandbox)
        worker = build_worker(settings, store=store, sandbox=sandbox, name="w-dockerd")
        jobs.configure(worker)
        return worker

    try:
        yield make
    finally:
        jobs.configure(None)
        for sandbox in made:
            sandbox.close()
        if not private_dockerd.running():
            private_dockerd.start()
        gc.collect()  # the leaked sockets' warnings, while this module's filter holds


def work_runs_queue(conn: "redis.Redis[bytes]") -> None:
    SimpleWorker([queue.runs_queue(conn)], connection=conn, name=f"w-{uuid.uuid4().hex[:8]}").work(
        burst=True, logging_level="ERROR"
    )


def in_thread(target: Callable[[], None], errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            target()
        except BaseException as exc:  # handed to the test's thread, which asserts on it
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def reasons(store: Store, proposal_id: str) -> list[str]:
    return [f"{e.state}: {e.reason}" for e in store.events(proposal_id)]


def test_dockerd_restarted_mid_training_is_an_infra_retry_that_then_scores(
    private_dockerd: PrivateDockerd, rig: Callable[..., Worker], store: Store, redis_client: "redis.Redis[bytes]",
    data_dir: Path, tmp_path: Path,
) -> None:  # fmt: skip
    """Kills: the private dockerd with SIGTERM (what `systemctl restart docker` sends; the daemon
    stops the container, exit 143, before it exits) while the proposal's container trains, then
    starts it again. Verifies: the run is an infrastructure failure (retry 1 of 2, never crashed:
    before the fix it was `crashed`, exit 143), the worker waits for the daemon and the retry scores
    1.25, two training runs in all, never two of its containers running at once."""
    (data_dir / HOLD).touch()
    rig(sandbox_ready_wait_s=60)
    proposal = new_proposal(store)
    queue.enqueue_run(redis_client, proposal.id, 60)
    watch = Watch(private_dockerd, proposal.id)
    errors: list[BaseException] = []

    def restart_mid_training() -> None:
        running_train(private_dockerd, proposal.id)
        private_dockerd.signal(signal.SIGTERM)
        (data_dir / HOLD).unlink()  # the retry trains to the end
        private_dockerd.start()

    threads = [in_thread(watch.run, errors), in_thread(restart_mid_training, errors)]
    work_runs_queue(redis_client)
    watch.stop.set()
    for thread in threads:
        thread.join(STOP_TIMEOUT_S)
    assert errors == [], (errors, reasons(store, proposal.id), store.get(proposal.id).results)
    done = store.get(proposal.id)
    history = reasons(store, proposal.id)
    assert done.state == State.EVALUATING and done.attempts == 1, (history, private_dockerd.log_tail())
    assert [r.val_bpb for r in done.results] == [1.25]
    assert [e.state for e in store.events(proposal.id)] == [
        State.QUEUED, State.RUNNING, State.QUEUED, State.RUNNING, State.EVALUATING,
    ]  # fmt: skip
    assert "infrastructure failed" in history[2] and "retry 1 of 2" in history[2], history
    assert len(list((tmp_path / "runs").iterdir())) == 2  # the killed run and the retry
    assert watch.samples > 0 and watch.most_running <= 1, (watch.samples, watch.most_running)
    assert queue.queue_depths(redis_client) == {queue.RUNS_QUEUE: 0, queue.COMMITS_QUEUE: 1}
    print(f"killed: dockerd (SIGTERM + restart) mid-training; verified: {history[2]!r}, then scored 1.25")


def test_dockerd_killed_and_left_down_ends_infra_error_after_bounded_retries(
    private_dockerd: PrivateDockerd, rig: Callable[..., Worker], store: Store, redis_client: "redis.Redis[bytes]",
    data_dir: Path,
) -> None:  # fmt: skip
    """Kills: the private dockerd with SIGKILL while the proposal's container trains, and leaves it
    down. Verifies: 1 + infra_retries attempts, each an infrastructure failure with the daemon's
    error, then `infra_error` with a reason naming the count and the cause; after the daemon is
    started again it has stopped the orphaned container (no live-restore) and none of the
    proposal's containers runs."""
    (data_dir / HOLD).touch()
    rig(sandbox_ready_wait_s=1)
    proposal = new_proposal(store)
    queue.enqueue_run(redis_client, proposal.id, 60)
    errors: list[BaseException] = []

    def kill_mid_training() -> None:
        running_train(private_dockerd, proposal.id)
        private_dockerd.signal(signal.SIGKILL)

    killer = in_thread(kill_mid_training, errors)
    work_runs_queue(redis_client)
    killer.join(STOP_TIMEOUT_S)
    assert errors == [], errors
    done = store.get(proposal.id)
    history = reasons(store, proposal.id)
    assert done.state == State.INFRA_ERROR and done.attempts == 3, history
    assert done.reason.startswith("infrastructure failed 3 times; last: docker failed"), done.reason
    assert [e.state for e in store.events(proposal.id)] == [
        State.QUEUED, State.RUNNING, State.QUEUED, State.RUNNING, State.QUEUED, State.RUNNING, State.INFRA_ERROR,
    ]  # fmt: skip
    assert not any(s in h for h in history for s in ("crashed", "timed_out", "evaluating")), history
    assert done.results == []
    private_dockerd.start()
    with contextlib.closing(private_dockerd.client()) as client:
        filters = {"label": f"{LABEL_PROPOSAL}={proposal.id}", "status": "running"}
        assert client.containers.list(filters=filters) == []
    (data_dir / HOLD).unlink()
    print(f"killed: dockerd (SIGKILL, left down) mid-training; verified: {done.reason!r}")


def test_a_stop_from_outside_is_infra_but_a_self_inflicted_sigterm_is_a_crash(
    private_dockerd: PrivateDockerd, make_settings: Callable[..., Settings], data_dir: Path
) -> None:
    """Kills: the training container with `docker stop` (SIGTERM through the daemon, as an operator
    or a daemon shutdown does). Verifies: the sandbox raises SandboxUnavailable naming the signal;
    a train.py that SIGTERMs itself (exit 143 too, but no daemon kill event) stays a crash, so a
    proposal cannot pass its own failure off as the infrastructure's."""
    settings = make_settings()
    (data_dir / HOLD).touch()
    errors: list[BaseException] = []
    with sandbox_for(settings, private_dockerd) as sandbox:
        request = train_request(settings, "p-stop", TRAIN_PY)

        def stop_it() -> None:
            name = running_train(private_dockerd, "p-stop")
            with contextlib.closing(private_dockerd.client(30)) as client:
                client.containers.get(name).stop(timeout=5)

        stopper = in_thread(stop_it, errors)
        with pytest.raises(SandboxUnavailable, match=r"stopped from outside the sandbox \(signal 15"):
            sandbox.train(request)
        stopper.join(30)
        assert errors == [], errors
        (data_dir / HOLD).unlink()
        suicide = "import os, signal\nprint('bye', flush=True)\nos.kill(os.getpid(), signal.SIGTERM)\n"
        outcome = sandbox.train(train_request(settings, "p-self", suicide))
    assert outcome.exit_code == 143 and not outcome.timed_out and outcome.killed_reason == ""
    print(
        "killed: the training container (docker stop); verified: SandboxUnavailable; a self-SIGTERM: exit 143"
    )


def train_request(settings: Settings, proposal_id: str, train_py: str) -> TrainRequest:
    run_id = f"t{uuid.uuid4().hex[:12]}"
    paths = prepare_run_dir(settings.sandbox.runs_dir, run_id, train_py)
    return TrainRequest(
        run_id=run_id, proposal_id=proposal_id, paths=paths, seed=1, wall_clock_s=60, preset="tiny",
        device="cpu",
    )  # fmt: skip
