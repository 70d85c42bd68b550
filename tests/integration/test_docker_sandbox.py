"""DockerSandbox against the real Docker daemon, one hostile or ordinary property per test.

Each test writes a small train.py of its own (not the real trainer, so containers live for
seconds) and runs it through the sandbox with small limits. Every run also checks that the
container is gone afterwards.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from docker.client import DockerClient

from services.errors import SandboxUnavailable
from services.settings import KIB, MIB, Settings
from services.worker import reaper
from services.worker.collect import collect_checkpoint, prepare_run_dir, read_result
from services.worker.docker_sandbox import DockerSandbox
from services.worker.sandbox import EvalRequest, RunPaths, StepOutcome, TrainRequest
from tests.support import REPO
from tests.support.sandbox_data import TRAIN_MARKER, VAL_MARKER, prepare_sandbox_data

pytestmark = pytest.mark.docker

CONTRACT_ENV = {
    "AR_WALL_CLOCK_S", "AR_DEADLINE_UNIX", "AR_SEED", "AR_DATA_DIR", "AR_OUT_DIR", "AR_DEVICE", "AR_PRESET",
    "HOME", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR",
}  # fmt: skip
IMAGE_ENV = {"PATH", "LANG", "HOSTNAME"}  # set by the image and by Docker, never from the host
READ_ONLY_TARGETS = [
    "/etc/passwd", "/usr/bin/evil", "/opt/autoresearch/trainer/evaluate.py", "/opt/venv/bin/python",
    "/code/train.py", "/code/new.py", "/data/tokens.bin", "/evil",
]  # fmt: skip


@dataclass
class Ran:
    outcome: StepOutcome
    paths: RunPaths
    run_id: str

    def facts(self) -> dict[str, Any]:
        """The JSON object the train.py printed on its last line."""
        lines = self.outcome.log.strip().splitlines()
        assert lines, f"no output; exit {self.outcome.exit_code}"
        value: dict[str, Any] = json.loads(lines[-1])
        return value


RunTrain = Callable[..., Ran]


@pytest.fixture
def make_settings(
    trainer_image: str, data_dirs: tuple[Path, Path], tmp_path: Path
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "trainer_image": trainer_image,
            "runs_dir": tmp_path / "runs",
            "train_data": str(data_dirs[0]),
            "val_data": str(data_dirs[1]),
            "container_memory_bytes": 512 * MIB,
            "container_pids_limit": 128,
            "tmpfs_bytes": 16 * MIB,
            "max_log_bytes": 64 * KIB,
            "max_output_bytes": 32 * MIB,
            "max_checkpoint_bytes": 16 * MIB,
            **overrides,
        }
        return Settings(**values)

    return make


def containers_of(client: DockerClient, run_id: str) -> list[Any]:
    found: list[Any] = client.containers.list(all=True, filters={"label": f"autoresearch.run={run_id}"})
    return found


@pytest.fixture
def run_train(make_settings: Callable[..., Settings], docker_client: DockerClient) -> RunTrain:
    def run(
        code: str,
        *,
        wall_clock_s: int = 20,
        sandbox_args: dict[str, Any] | None = None,
        run_id: str | None = None,
        **overrides: Any,
    ) -> Ran:
        settings = make_settings(**overrides)
        run_id = run_id or f"t{uuid.uuid4().hex[:12]}"
        paths = prepare_run_dir(settings.sandbox.runs_dir, run_id, textwrap.dedent(code))
        sandbox = DockerSandbox(settings.sandbox, docker_client, **(sandbox_args or {}))
        request = TrainRequest(
            run_id=run_id, proposal_id="p-test", paths=paths, seed=7,
            wall_clock_s=wall_clock_s, preset="tiny", device="cpu",
        )  # fmt: skip
        outcome = sandbox.train(request)
        assert containers_of(docker_client, run_id) == [], "the container outlived its step"
        return Ran(outcome, paths, run_id)

    return run


# ---------------------------------------------------------------------------------------------------
# Ordinary runs


def test_success_writes_outputs_log_and_checkpoint_collects(run_train: RunTrain) -> None:
    ran = run_train(
        """
        import json, os
        out = os.environ["AR_OUT_DIR"]
        open(os.path.join(out, "model.safetensors"), "wb").write(b"weights" * 1000)
        json.dump({"config": {"n_layer": 1}, "steps": 3, "seed": int(os.environ["AR_SEED"])},
                  open(os.path.join(out, "run.json"), "w"))
        print("trained 3 steps")
        """
    )
    assert ran.outcome.exit_code == 0
    assert not ran.outcome.timed_out and not ran.outcome.oom_killed and ran.outcome.killed_reason == ""
    assert "trained 3 steps" in ran.outcome.log and not ran.outcome.log_truncated
    assert ran.paths.train_log.read_text() == ran.outcome.log
    collected = collect_checkpoint(ran.paths, 16 * MIB)  # files written by uid 65534 collect fine
    assert collected.run_json == {"config": {"n_layer": 1}, "steps": 3, "seed": 7}
    assert collected.checkpoint.read_bytes() == b"weights" * 1000


def test_nonzero_exit_is_reported_with_its_log(run_train: RunTrain) -> None:
    ran = run_train(
        """
        import sys
        print("CUDA out of memory (pretend)", file=sys.stderr)
        sys.exit(3)
        """
    )
    assert ran.outcome.exit_code == 3
    assert not ran.outcome.timed_out and not ran.outcome.oom_killed
    assert "CUDA out of memory (pretend)" in ran.outcome.log


def test_environment_holds_only_the_contract_variables(
    run_train: RunTrain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AR_FAKE_SECRET", "hunter2-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2-secret")
    started = time.time()
    ran = run_train("import json, os; print(json.dumps(dict(os.environ)))", wall_clock_s=30)
    env = ran.facts()
    assert set(env) == CONTRACT_ENV | IMAGE_ENV
    configured = run_train(
        "import json, os; print(json.dumps(dict(os.environ)))",
        sandbox_extra_env={"LD_LIBRARY_PATH": "/usr/local/nvidia/lib64", "AR_SEED": "forged"},
    ).facts()
    assert configured["LD_LIBRARY_PATH"] == "/usr/local/nvidia/lib64"  # operator configuration only
    assert configured["AR_SEED"] == "7"  # cannot override the contract
    assert not any("hunter2" in value for value in env.values())
    assert env["AR_WALL_CLOCK_S"] == "30" and env["AR_SEED"] == "7"
    assert env["AR_DATA_DIR"] == "/data" and env["AR_OUT_DIR"] == "/out"
    assert env["AR_DEVICE"] == "cpu" and env["AR_PRESET"] == "tiny"
    assert started + 28 <= int(env["AR_DEADLINE_UNIX"]) <= time.time() + 30


# ---------------------------------------------------------------------------------------------------
# Time and kills


def test_sleeping_past_the_wall_clock_is_killed(run_train: RunTrain) -> None:
    ran = run_train("import time; print('sleeping', flush=True); time.sleep(60)", wall_clock_s=3)
    assert ran.outcome.timed_out
    assert ran.outcome.killed_reason == "wall clock of 3 s exceeded"
    assert ran.outcome.exit_code == 137  # SIGKILL
    assert 1.5 < ran.outcome.duration_s < 6
    assert "sleeping" in ran.outcome.log


def test_ignoring_sigterm_and_detaching_does_not_outlive_the_kill(run_train: RunTrain) -> None:
    ran = run_train(
        """
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if os.fork() == 0:  # a detached child that keeps writing a heartbeat
            os.setsid()
            while True:
                with open("/out/heartbeat", "a") as f:
                    f.write(".")
                time.sleep(0.1)
        print("ignoring SIGTERM", flush=True)
        while True:
            time.sleep(1)
        """,
        wall_clock_s=3,
    )
    assert ran.outcome.timed_out and ran.outcome.exit_code == 137
    heartbeat = ran.paths.out / "heartbeat"
    size = heartbeat.stat().st_size
    time.sleep(0.6)
    assert heartbeat.stat().st_size == size, "a process of the run is still alive"


def test_labels_and_name_while_running(run_train: RunTrain, docker_client: DockerClient) -> None:
    run_id = f"t{uuid.uuid4().hex[:12]}"
    seen: list[Any] = []

    def watch() -> None:
        deadline = time.monotonic() + 15
        while not seen and time.monotonic() < deadline:
            seen.extend(containers_of(docker_client, run_id))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    run_train("import time; time.sleep(2)", run_id=run_id, sandbox_args={"owner": "worker-a"})
    watcher.join()
    assert seen, "the running container was never seen"
    assert seen[0].name == f"ar-{run_id}-train"
    assert seen[0].labels == {
        "autoresearch.managed": "1",
        "autoresearch.proposal": "p-test",
        "autoresearch.run": run_id,
        "autoresearch.step": "train",
        "autoresearch.owner": "worker-a",
    }


WORKER_SCRIPT = """
import sys
from pathlib import Path
from services.settings import Settings
from services.worker.collect import prepare_run_dir
from services.worker.docker_sandbox import DockerSandbox
from services.worker.sandbox import TrainRequest
runs, run_id, image, data = sys.argv[1:5]
settings = Settings(trainer_image=image, train_data=data, val_data=data, kill_grace_s=1,
                    container_memory_bytes=256 * 2**20)
paths = prepare_run_dir(Path(runs), run_id, "import time; time.sleep(120)")
DockerSandbox(settings.sandbox).train(TrainRequest(run_id=run_id, proposal_id="p-test", paths=paths, seed=1,
                                           wall_clock_s=4, preset="tiny", device="cpu"))
"""


def test_a_step_whose_worker_died_still_ends_at_the_deadline(
    docker_client: DockerClient, trainer_image: str, data_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    run_id = f"t{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, str(tmp_path), run_id, trainer_image, str(data_dirs[0])],
        cwd=REPO,
    )
    try:
        while not any(c.status == "running" for c in containers_of(docker_client, run_id)):
            assert time.monotonic() - started < 30 and worker.poll() is None, "the container never started"
            time.sleep(0.1)
        worker.kill()  # SIGKILL: no finally runs, nobody kills the container
        worker.wait(10)
        (stray,) = containers_of(docker_client, run_id)
        stray.wait(timeout=20)  # the in-container backstop: wall clock 4 s + grace 1 s
        assert time.monotonic() - started < 4 + 1 + 10
        stray.reload()
        assert stray.attrs["State"]["ExitCode"] == 137
    finally:
        worker.kill()
        reaper.reap(docker_client, labels={"autoresearch.run": run_id})


def test_remove_strays_takes_only_the_owners_containers(
    make_settings: Callable[..., Settings], docker_client: DockerClient, trainer_image: str
) -> None:
    owner = f"worker-{uuid.uuid4().hex[:8]}"
    mine = docker_client.containers.create(
        trainer_image, ["sleep", "60"], labels={"autoresearch.managed": "1", "autoresearch.owner": owner}
    )
    other = docker_client.containers.create(
        trainer_image,
        ["sleep", "60"],
        labels={"autoresearch.managed": "1", "autoresearch.owner": owner + "x"},
    )
    try:
        assert DockerSandbox(make_settings().sandbox, docker_client, owner=owner).remove_strays() == [
            mine.name
        ]
        assert [c.id for c in docker_client.containers.list(all=True, filters={"id": other.id})] == [other.id]
    finally:
        other.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            mine.remove(force=True)


def test_a_stray_container_with_the_same_name_is_replaced(
    run_train: RunTrain, docker_client: DockerClient, trainer_image: str
) -> None:
    run_id = f"t{uuid.uuid4().hex[:12]}"
    docker_client.containers.create(
        trainer_image, ["sleep", "60"], name=f"ar-{run_id}-train", labels={"autoresearch.managed": "1"}
    )
    ran = run_train("print('second attempt')", run_id=run_id)
    assert ran.outcome.exit_code == 0 and "second attempt" in ran.outcome.log


# ---------------------------------------------------------------------------------------------------
# Isolation


def test_network_is_unreachable(run_train: RunTrain) -> None:
    ran = run_train(
        """
        import errno, json, socket
        interfaces = [line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]]
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed anywhere
            tcp = "connected"
        except OSError as exc:
            tcp = errno.errorcode.get(exc.errno or 0, str(exc))
        try:
            socket.getaddrinfo("pypi.org", 443)
            dns = "resolved"
        except OSError as exc:
            dns = type(exc).__name__
        print(json.dumps({"interfaces": interfaces, "tcp": tcp, "dns": dns}))
        """
    )
    facts = ran.facts()
    assert facts["interfaces"] == ["lo"]
    assert facts["tcp"] == "ENETUNREACH"
    assert facts["dns"] == "gaierror"


def test_filesystem_is_read_only_except_out_cache_and_capped_tmp(run_train: RunTrain) -> None:
    ran = run_train(
        """
        import errno, json, os
        def attempt(path, size=1):
            try:
                with open(path, "ab") as f:
                    f.write(b"x" * size)
                return "written"
            except OSError as exc:
                return errno.errorcode.get(exc.errno or 0, str(exc))
        targets = ["/etc/passwd", "/usr/bin/evil", "/opt/autoresearch/trainer/evaluate.py",
                   "/opt/venv/bin/python", "/code/train.py", "/code/new.py", "/data/tokens.bin", "/evil"]
        facts = {path: attempt(path) for path in targets}
        for path in ["/out/ok", "/cache/ok", "/tmp/ok"]:
            facts[path] = attempt(path)
        facts["tmpfs over cap"] = attempt("/tmp/big", 20 * 1024 * 1024)
        facts["docker socket"] = os.path.exists("/var/run/docker.sock") or os.path.exists("/run/docker.sock")
        print(json.dumps(facts))
        """
    )
    facts = ran.facts()
    for path in READ_ONLY_TARGETS:
        assert facts[path] in ("EROFS", "EACCES"), (path, facts[path])
    assert facts["/out/ok"] == facts["/cache/ok"] == facts["/tmp/ok"] == "written"
    assert facts["tmpfs over cap"] == "ENOSPC"
    assert facts["docker socket"] is False


def test_validation_data_is_absent_from_training(run_train: RunTrain) -> None:
    ran = run_train(
        f"""
        import json, os
        marker = bytes.fromhex("{VAL_MARKER.encode().hex()}")  # the marker is not spelled out here
        mounts = [line.split()[1] for line in open("/proc/self/mounts")]
        found = []
        for top in ["/data", "/val", "/code", "/out", "/cache", "/tmp", "/opt", "/ckpt", "/eval-out"]:
            for folder, _, files in os.walk(top):
                for name in files:
                    try:
                        if marker in open(os.path.join(folder, name), "rb").read(1 << 20):
                            found.append(os.path.join(folder, name))
                    except OSError:
                        pass
        print(json.dumps({{"mounts": mounts, "val": os.listdir("/val"), "found": found,
                          "data": open("/data/tokens.bin").read()}}))
        """
    )
    facts = ran.facts()
    assert "/val" not in facts["mounts"] and "/ckpt" not in facts["mounts"]
    assert facts["val"] == [] and facts["found"] == []
    assert facts["data"] == TRAIN_MARKER


def test_runs_unprivileged_without_capabilities(run_train: RunTrain) -> None:
    ran = run_train(
        """
        import json, os
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        try:
            os.setuid(0)
            setuid = "became root"
        except PermissionError:
            setuid = "refused"
        facts = {key: status[key].split() for key in
                 ["Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"]}
        facts["setuid"] = setuid
        facts["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        print(json.dumps(facts))
        """
    )
    facts = ran.facts()
    assert facts["Uid"] == ["65534"] * 4 and facts["Gid"] == ["65534"] * 4
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]:
        assert int(facts[key][0], 16) == 0, key
    assert facts["NoNewPrivs"] == ["1"] and facts["Seccomp"] == ["2"]
    assert facts["setuid"] == "refused"
    assert facts["pids"][0] == 1 and len(facts["pids"]) <= 3  # tini, python: no host processes


def test_resource_limits_are_set(run_train: RunTrain) -> None:
    ran = run_train(
        """
        import json, resource
        def read(*paths):
            for path in paths:
                try:
                    return open(path).read().strip()
                except OSError:
                    pass
        print(json.dumps({
            "fsize": resource.getrlimit(resource.RLIMIT_FSIZE),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
            "core": resource.getrlimit(resource.RLIMIT_CORE),
            "memory": read("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"),
            "pids": read("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"),
            "cpu": read("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
                        "/sys/fs/cgroup/cpu.max"),
        }))
        """,
        container_cpus=0.5,
        max_output_bytes=32 * MIB,
    )
    facts = ran.facts()
    assert facts["fsize"] == [32 * MIB, 32 * MIB]
    assert facts["core"] == [0, 0]
    assert facts["nofile"][1] <= 16_384
    assert facts["memory"] == str(512 * MIB)
    assert facts["pids"] == "128"
    assert facts["cpu"].split()[0] == "50000"


# ---------------------------------------------------------------------------------------------------
# Resource bombs


def test_memory_bomb_is_oom_killed(run_train: RunTrain) -> None:
    ran = run_train("x = bytearray(300 * 1024 * 1024); print('survived')", container_memory_bytes=64 * MIB)
    assert ran.outcome.oom_killed
    assert ran.outcome.exit_code == 137
    assert "survived" not in ran.outcome.log


def test_fork_bomb_is_contained_by_the_pids_limit(run_train: RunTrain) -> None:
    ran = run_train(
        """
        import os, time
        forked = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                forked += 1
        except OSError as exc:
            print(f"fork refused after {forked}: errno {exc.errno}", flush=True)
        """,
        container_pids_limit=32,
    )
    match = re.search(r"fork refused after (\d+): errno 11", ran.outcome.log)
    assert match, ran.outcome.log[-500:]
    assert int(match.group(1)) < 32
    assert ran.outcome.duration_s < 10  # the sleeping children died with the run


def test_log_flood_keeps_only_the_tail(run_train: RunTrain) -> None:
    ran = run_train(
        """
        import sys
        line = "flood " * 20
        for i in range(40_000):
            print(line)
            print(line, file=sys.stderr)
        print("END-OF-LOG")
        """,
        max_log_bytes=256 * KIB,
    )
    assert ran.outcome.exit_code == 0
    assert ran.outcome.log_truncated
    # stdout and stderr are two pipes that Docker copies apart: their order is loose by a pipe's
    # buffer or so, hence a tail far larger than that here.
    assert "END-OF-LOG" in ran.outcome.log
    assert len(ran.outcome.log.encode()) <= 256 * KIB + 100  # the tail plus a one-line note
    assert ran.outcome.log.startswith("[log cut: ")
    assert ran.paths.train_log.stat().st_size <= 256 * KIB + 100


def test_writing_past_the_output_cap_is_killed(run_train: RunTrain) -> None:
    ran = run_train(
        """
        import itertools, time
        for i in itertools.count():
            with open(f"/out/chunk{i}", "wb") as f:  # each file under the per-file cap
                f.write(b"x" * (1 << 20))
            time.sleep(0.02)
        """,
        max_output_bytes=8 * MIB,
    )
    assert ran.outcome.killed_reason == f"output exceeded {8 * MIB} bytes"
    assert not ran.outcome.timed_out
    assert ran.outcome.exit_code == 137
    assert ran.outcome.duration_s < 10


def test_one_file_past_the_cap_is_refused_by_the_kernel(run_train: RunTrain) -> None:
    ran = run_train(
        """
        import errno
        try:
            with open("/out/big", "wb") as f:
                f.write(b"x" * (9 << 20))
        except OSError as exc:
            print(errno.errorcode[exc.errno])
        """,
        max_output_bytes=8 * MIB,
    )
    assert ran.outcome.log.strip() == "EFBIG"
    assert (ran.paths.out / "big").stat().st_size <= 8 * MIB


def test_scratch_bind_mode_gives_a_writable_tmp(run_train: RunTrain) -> None:
    ran = run_train("open('/tmp/scratch-file', 'w').write('x'); print('ok')", scratch_mode="bind")
    assert ran.outcome.exit_code == 0
    assert (ran.paths.scratch / "scratch-file").read_text() == "x"


# ---------------------------------------------------------------------------------------------------
# Evaluation


PROBE_EVALUATOR = """
import json, os, sys, time
if "--socket" in sys.argv:  # a model container (this file stands in for model_server.py): serves nothing
    sys.exit(0)
def writable(path):
    try:
        open(path, "w").write("x")
        return True
    except OSError:
        return False
facts = {
    "argv": sys.argv[1:],
    "val": sorted(os.listdir("/val")), "ckpt": sorted(os.listdir("/ckpt")), "tmp": sorted(os.listdir("/tmp")),
    "mounts": [line.split()[1] for line in open("/proc/self/mounts")],
    "ckpt writable": writable("/ckpt/x"), "val writable": writable("/val/x"),
}
json.dump({"val_bpb": 1.25, "facts": facts}, open("/eval-out/result.json", "w"))
print("scored", flush=True)
if globals().get("SLEEP_IN_EVALUATION"):
    time.sleep(60)
"""


def evaluate_with(
    make_settings: Callable[..., Settings],
    client: DockerClient,
    ran: Ran,
    timeout_s: int = 20,
    evaluator: str | None = None,
    model_server: str | None = None,
    **overrides: Any,
) -> StepOutcome:
    stand_ins = {"evaluator": evaluator, "model_server": model_server}
    sandbox_args: dict[str, Any] = {name: path for name, path in stand_ins.items() if path is not None}
    sandbox = DockerSandbox(make_settings(**overrides).sandbox, client, **sandbox_args)
    request = EvalRequest(
        run_id=ran.run_id, proposal_id="p-test", paths=ran.paths, seed=11, timeout_s=timeout_s, device="cpu"
    )
    outcome = sandbox.evaluate(request)
    assert containers_of(client, ran.run_id) == []
    return outcome


CHECKPOINT_WRITER = """
import json, os, sys
if "AR_OUT_DIR" in os.environ:  # training; evaluation has no AR_* variables
    open("/out/model.safetensors", "wb").write(b"weights")
    json.dump({"config": {}}, open("/out/run.json", "w"))
    open("/tmp/left-by-training", "w").write("x")
    sys.exit(0)
"""


def test_evaluation_sees_val_and_checkpoint_read_only(
    run_train: RunTrain, make_settings: Callable[..., Settings], docker_client: DockerClient
) -> None:
    # The candidate file doubles as the evaluator and the model server here: its top level writes the
    # checkpoint when trained, and the probe reports what the scorer's container sees.
    ran = run_train(CHECKPOINT_WRITER + PROBE_EVALUATOR, scratch_mode="bind")
    collect_checkpoint(ran.paths, 16 * MIB)
    outcome = evaluate_with(
        make_settings,
        docker_client,
        ran,
        evaluator="/code/train.py",
        model_server="/code/train.py",
        scratch_mode="bind",
    )
    assert outcome.exit_code == 0 and "scored" in outcome.log
    result = read_result(ran.paths)
    facts = result["facts"]
    assert result["val_bpb"] == 1.25
    assert facts["argv"] == [
        "--channel", "/channel", "--connect-timeout", "20", "--reply-timeout", "20",
        "--train-py", "/code/train.py", "--checkpoint", "/ckpt", "--data-dir", "/data", "--val-dir", "/val",
        "--out", "/eval-out/result.json", "--device", "cpu", "--seed", "11",
    ]  # fmt: skip
    assert facts["val"] == ["val.bin"] and facts["ckpt"] == ["model.safetensors", "run.json"]
    assert not facts["ckpt writable"] and not facts["val writable"]
    assert "/out" not in facts["mounts"] and "/cache" not in facts["mounts"]
    assert facts["tmp"] == [], "the training step's /tmp reached evaluation"


def test_evaluation_timeout_kills(
    run_train: RunTrain, make_settings: Callable[..., Settings], docker_client: DockerClient
) -> None:
    ran = run_train(CHECKPOINT_WRITER + "SLEEP_IN_EVALUATION = True\n" + PROBE_EVALUATOR)
    collect_checkpoint(ran.paths, 16 * MIB)
    outcome = evaluate_with(
        make_settings,
        docker_client,
        ran,
        timeout_s=2,
        evaluator="/code/train.py",
        model_server="/code/train.py",
    )
    assert outcome.timed_out and outcome.killed_reason == "evaluation timeout of 2 s exceeded"


def test_the_real_evaluator_accepts_the_sandbox_arguments(
    run_train: RunTrain, make_settings: Callable[..., Settings], docker_client: DockerClient
) -> None:
    ran = run_train(CHECKPOINT_WRITER)
    collect_checkpoint(ran.paths, 16 * MIB)
    outcome = evaluate_with(make_settings, docker_client, ran)  # fails on the fake data, not on its CLI
    assert outcome.exit_code not in (0, None)
    assert "usage:" not in outcome.log and "unrecognized arguments" not in outcome.log, outcome.log[-1000:]


def test_the_real_trainer_and_evaluator_run_in_the_sandbox(
    docker_client: DockerClient, tmp_path: Path
) -> None:
    """The baseline train.py (tiny preset) and the trusted evaluate.py baked into the image, end to
    end through the sandbox: train, collect, evaluate, read the result."""
    train_dir, val_dir = prepare_sandbox_data(tmp_path)
    settings = Settings(
        train_data=str(train_dir), val_data=str(val_dir), runs_dir=tmp_path / "runs",
        container_memory_bytes=4 * 1024 * MIB, max_log_bytes=64 * KIB,
    )  # fmt: skip
    sandbox = DockerSandbox(settings.sandbox, docker_client)
    paths = prepare_run_dir(settings.sandbox.runs_dir, "real", (REPO / "trainer" / "train.py").read_text())
    trained = sandbox.train(
        TrainRequest(
            run_id="real",
            proposal_id="p",
            paths=paths,
            seed=42,
            wall_clock_s=120,
            preset="tiny",
            device="cpu",
        )
    )
    assert trained.exit_code == 0, trained.log[-2000:]
    collected = collect_checkpoint(paths, settings.runs.max_checkpoint_bytes)
    assert collected.run_json["seed"] == 42 and collected.run_json["steps"] > 0
    evaluated = sandbox.evaluate(
        EvalRequest(run_id="real", proposal_id="p", paths=paths, seed=1, timeout_s=120, device="cpu")
    )
    assert evaluated.exit_code == 0, evaluated.log[-2000:]
    result = read_result(paths)
    assert 0 < result["val_bpb"] < 8 and result["seed"] == 1
    assert result["isolation"] == "model container" and result["probes"]["spliced"] > 0


# ---------------------------------------------------------------------------------------------------
# Environment, infrastructure failures, reaper


def test_environment_fingerprint_is_stable_and_not_the_image_id(
    make_settings: Callable[..., Settings], docker_client: DockerClient, trainer_image: str
) -> None:
    first = DockerSandbox(make_settings().sandbox, docker_client).environment()
    second = DockerSandbox(make_settings().sandbox, docker_client).environment()
    assert first == second
    assert (first.gpu, first.driver) == ("cpu", "none")
    assert first.cpu and first.cpu != "unknown"  # the CPU model, read in the trainer image's probe
    assert re.fullmatch(r"[0-9a-f]{64}", first.environment_hash)
    assert first.environment_hash not in docker_client.images.get(trainer_image).id


# docker-py leaks the socket of a failed connect (ResourceWarning when collected): collect it here.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_unreachable_daemon_raises_sandbox_unavailable(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    sandbox = DockerSandbox(settings.sandbox, base_url=f"unix://{tmp_path}/no-such-docker.sock")
    paths = prepare_run_dir(settings.sandbox.runs_dir, "unreachable", "print('never runs')")
    request = TrainRequest(
        run_id="unreachable",
        proposal_id="p",
        paths=paths,
        seed=1,
        wall_clock_s=5,
        preset="tiny",
        device="cpu",
    )
    with pytest.raises(SandboxUnavailable, match="Docker daemon"):
        sandbox.train(request)
    with pytest.raises(SandboxUnavailable):
        sandbox.environment()
    del sandbox
    gc.collect()


def test_missing_image_raises_sandbox_unavailable_naming_it(run_train: RunTrain) -> None:
    with pytest.raises(SandboxUnavailable, match=r"autoresearch/no-such-image:never.*build-images\.sh"):
        run_train("print('never runs')", trainer_image="autoresearch/no-such-image:never")


def test_missing_data_volume_raises_sandbox_unavailable(run_train: RunTrain) -> None:
    with pytest.raises(SandboxUnavailable, match="does not exist"):
        run_train("print('never runs')", train_data=f"autoresearch-test-missing-{uuid.uuid4().hex[:8]}")


def test_reaper_removes_a_stray_container(
    docker_client: DockerClient, trainer_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = f"stray{uuid.uuid4().hex[:10]}"
    stray = docker_client.containers.run(
        trainer_image, ["sleep", "300"], name=f"ar-{run_id}-train", detach=True, network_mode="none",
        labels={"autoresearch.managed": "1", "autoresearch.run": run_id, "autoresearch.step": "train"},
    )  # fmt: skip
    try:
        assert reaper.reap(docker_client, older_than_s=3600, labels={"autoresearch.run": run_id}) == []
        assert reaper.main(["--dry-run"]) == 0
        assert f"would remove ar-{run_id}-train (run {run_id}, step train," in capsys.readouterr().out
        reaped = reaper.reap(docker_client, labels={"autoresearch.run": run_id})
        assert [item.name for item in reaped] == [f"ar-{run_id}-train"]
        assert containers_of(docker_client, run_id) == []
    finally:
        if containers_of(docker_client, run_id):
            stray.remove(force=True)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_reaper_cli_reports_an_unreachable_daemon(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert reaper.main(["--dry-run", "--docker-url", f"unix://{tmp_path}/nothing.sock"]) == 1
    assert "autoresearch-reap:" in capsys.readouterr().err
    gc.collect()
