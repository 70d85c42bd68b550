"""The whole service on one GPU host without Docker: Redis, controller, committer and one GPU worker run
as processes, the worker's runs in hardened containers of a carried Docker engine; the script drives
them through the REST API only: the baseline's runs (noise calibration), then proposals (one worse, one
better) and the committer's verdicts. Optionally the same trainer runs bare on the host first, back to
back with the service's first run, to measure what the sandbox costs.

It was written for a GPU host reached by short remote calls: no Docker, no network, no registry, at
most 64 MiB of files sent along with each call (`carry`), files kept only while the host is held, and
$OUT the folder whose files come back. So the work is split into short calls; everything under
/root/e2e and /tmp stays between calls on one held host:

  1. carry [".gpudata/setup"]:   python3 bench/gpu_e2e.py setup --carried .gpudata/setup
     (Docker bundle → dockerd; wheels → /tmp/site; redis-server; the trainer image "autoresearch/
     trainer:host", an almost empty root filesystem holding the fixed trainer files, whose /usr, /etc,
     Python environment and NVIDIA driver are the host's, mounted read-only: a CUDA image cannot be
     carried; data: val.jsonl.xz and tokenizer.json)
  2. carry [".gpudata/shards-a"]: python3 bench/gpu_e2e.py start --carried .gpudata/shards-a --shards 4 \\
       --budget 90 --calibration-runs 5 --confirm-runs 1 [--bare] [--proposals worse,better]
     (stages and tokenizes the data, then detaches the run itself: it outlives the call)
  3. python3 bench/gpu_e2e.py wait --timeout 560 --results $OUT   (again until it says "done")

Locally, to check the same code path without a GPU (tiny preset, the project's CPU image):

    .venv/bin/python bench/gpu_e2e.py local [--bare]

Results: RESULTS/gpu-e2e.json (RESULTS = --results, default bench/results) with the raw logs beside it
(gpu-e2e.log: this driver; gpu-e2e-services.log: the services' logs; gpu-e2e-runs.log: every run's
training and evaluation log).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TRAINER = REPO / "trainer"
SITE = Path("/tmp/site")  # the carried wheels, installed here by `setup`
DOCKER_SOCKET = "/tmp/docker.sock"
HOST_IMAGE = "autoresearch/trainer:host"
TERMINAL = {"merged", "rejected", "crashed", "timed_out", "oom", "voided", "infra_error", "cancelled"}
FIXED_FILES = ("prepare.py", "protocol.py", "channel.py", "evaluate.py", "model_server.py", "train.py")

# The research branch's first train.py and the proposals, as constant overrides of trainer/train.py.
# GPU: the branch starts from the trainer without Muon weight decay, so that a known improvement (the
# shipped setting: -0.05 bpb at a 100 s budget in the trainer's tuning runs) exists to prove the merge
# path on a short budget; "worse" removes the learning-rate warm-down.
GPU_BASELINE = {"MUON_WEIGHT_DECAY": "0.0"}
GPU_PROPOSALS = {
    "worse": ("No learning-rate warm-down", {"MUON_WEIGHT_DECAY": "0.0", "WARMDOWN_FRAC": "0.02"}),
    "better": ("Muon weight decay 0.1", {"MUON_WEIGHT_DECAY": "0.1"}),
}
# CPU (tiny preset): the values the compose end-to-end test uses (docs/trainer.md).
CPU_BASELINE: dict[str, str] = {}
CPU_PROPOSALS = {
    "worse": ("Fewer tiny steps", {"TINY_STEPS": "15"}),
    "better": ("Higher tiny learning rate", {"TINY_LR": "1.0"}),
}


def say(*parts: object) -> None:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S")
    print(f"[{stamp}]", *parts, flush=True)


def patched(overrides: dict[str, str]) -> str:
    """trainer/train.py with UPPER_CASE constants replaced, as a proposal would patch it."""
    text = (TRAINER / "train.py").read_text()
    for name, value in overrides.items():
        text, count = re.subn(rf"^{name} = .*?(  #.*)?$", rf"{name} = {value}\1", text, count=1, flags=re.M)
        if count != 1:
            raise SystemExit(f"no constant {name} in train.py")
    return text


# ---------------------------------------------------------------------------------------------------
# setup (device): Docker engine, wheels, redis-server, the trainer image


def setup(carried: Path, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    found = {
        "git": shutil.which("git"),
        "python": sys.executable,
        "prefix": sys.prefix,
        "ld_library_path": os.environ.get("LD_LIBRARY_PATH", ""),
    }
    for module in ("safetensors", "tiktoken", "numpy", "torch"):
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
        found[module] = probe.returncode == 0
    say("host:", json.dumps(found))
    # The containers import the host's Python environment read-only, so a module without its bytecode
    # is compiled again by every process; pip writes the bytecode when it installs into an image.
    site = Path(torch_site()) if torch_site() else None
    if site is not None:
        missing = [p for p in site.rglob("*.py") if not (p.parent / "__pycache__").is_dir()]
        say(f"host torch: {len(missing)} Python files in folders without bytecode; compiling what is missing")
        started = time.time()
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(site)], capture_output=True)
        say(f"compileall: {time.time() - started:.1f} s")
    dk = Path("/tmp/dk")
    if not (dk / "dockerd").exists():
        dk.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-xJf", str(carried / "docker-bundle.tar.xz"), "-C", str(dk)], check=True)
    env = {**os.environ, "PATH": f"{dk}:{os.environ['PATH']}", "LD_LIBRARY_PATH": f"{dk}/lib"}
    if not Path(DOCKER_SOCKET).exists():
        with open("/tmp/dockerd.log", "ab") as log:
            subprocess.Popen(
                [str(dk / "dockerd"), "--iptables=false", "--ip-masq=false", "--bridge=none",
                 "--data-root", "/tmp/docker-data", "--exec-root", "/tmp/docker-exec",
                 "-H", f"unix://{DOCKER_SOCKET}"],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
    wheels = sorted(str(p) for p in (carried / "wheels").glob("*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
         "--no-cache-dir", "--upgrade", "--target", str(SITE), *wheels],
        check=True,
    )  # fmt: skip
    redis_dir = Path("/tmp/redis")
    shutil.copytree(carried / "redis", redis_dir, dirs_exist_ok=True)
    (redis_dir / "redis-server").chmod(0o755)
    for name in ("val.jsonl.xz", "tokenizer.json"):
        if (carried / name).exists():
            target = work / ("src" if name.endswith(".xz") else "") / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(carried / name, target)
    sys.path.insert(0, str(SITE))
    from docker.client import DockerClient

    client = DockerClient(base_url=f"unix://{DOCKER_SOCKET}")
    for _ in range(60):
        try:
            client.ping()
            break
        except Exception:  # dockerd still starting
            time.sleep(1)
    client.api.import_image_from_data(host_rootfs(), repository=HOST_IMAGE.split(":")[0], tag="host")
    say("docker:", client.version()["Version"], "image:", client.images.get(HOST_IMAGE).id[:19])


def torch_site() -> str:
    """The host's torch package folder ("" if torch is missing)."""
    probe = subprocess.run([sys.executable, "-c", "import torch, os; print(os.path.dirname(torch.__file__))"],
                           capture_output=True, text=True)  # fmt: skip
    return probe.stdout.strip() if probe.returncode == 0 else ""


def host_rootfs() -> bytes:
    """An almost empty root filesystem: mount points, links into the host's read-only /usr, the
    fixed trainer files (root-owned, read-only) and /opt/venv pointing at the host's Python
    environment, so the sandbox's usual interpreter path works."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, kind: bytes, mode: int = 0o755, target: str = "", data: bytes = b"") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = kind, mode, 0, 0
            if kind == tarfile.SYMTYPE:
                info.linkname = target
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        # sbin is a real folder: Docker mounts its init at /sbin/docker-init, which cannot go through
        # a link into the read-only host /usr.
        for name in ("usr", "etc", "opt", "dev", "proc", "sys", "run", "var", "root", "sbin", "code",
                     "data", "out", "cache", "val", "ckpt", "eval-out", "channel", "opt/autoresearch",
                     "opt/autoresearch/trainer", *[p for p in mount_points() if p != "opt"]):  # fmt: skip
            add(name, tarfile.DIRTYPE)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        for link, target in [("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"),
                             ("sbin/ldconfig", "/usr/sbin/ldconfig"),  # Triton runs ldconfig -p
                             ("sbin/ldconfig.real", "/usr/sbin/ldconfig.real"),
                             ("opt/venv", sys.prefix)]:  # fmt: skip
            add(link, tarfile.SYMTYPE, target=target)
        for name in FIXED_FILES:
            add(
                f"opt/autoresearch/trainer/{name}", tarfile.REGTYPE, 0o444, data=(TRAINER / name).read_bytes()
            )
    return buf.getvalue()


def mount_points() -> list[str]:
    """Folders of the image where host folders are mounted (besides /usr and /etc)."""
    parts = Path(sys.prefix).parts[1:]
    points = (
        ["/".join(parts[: i + 1]) for i in range(len(parts))] if parts[:1] not in (("usr",), ("etc",)) else []
    )
    if not safetensors_on_host():
        points.append("opt/site")
    return points


def safetensors_on_host() -> bool:
    return subprocess.run([sys.executable, "-c", "import safetensors"], capture_output=True).returncode == 0


def host_mounts() -> list[str]:
    mounts = ["/usr:/usr", "/etc:/etc"]
    if not sys.prefix.startswith(("/usr/", "/etc/")) and sys.prefix not in ("/usr", "/etc"):
        mounts.append(f"{sys.prefix}:{sys.prefix}")  # the host's Python environment (torch)
    if os.path.isdir("/usr/local/nvidia"):
        mounts.append("/usr/local/nvidia:/usr/local/nvidia")
    if not safetensors_on_host():
        mounts.append(f"{SITE}:/opt/site")
    return mounts


def container_env() -> dict[str, str]:
    env = {"LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH", "")}
    if not safetensors_on_host():
        env["PYTHONPATH"] = "/opt/site"
    libcuda = next(
        (
            d
            for d in ("/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu")
            if os.path.exists(f"{d}/libcuda.so.1")
        ),
        None,
    )
    if libcuda:
        env["TRITON_LIBCUDA_PATH"] = libcuda  # Triton then needs no ldconfig
    return env


# ---------------------------------------------------------------------------------------------------
# data


def stage(carried: Path, work: Path) -> None:
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    for path in sorted(carried.glob("*.jsonl.xz")):
        if not (src / path.name).exists() or (src / path.name).stat().st_size != path.stat().st_size:
            shutil.copy(path, src / path.name)
    if (carried / "tokenizer.json").exists():
        shutil.copy(carried / "tokenizer.json", work / "tokenizer.json")
    say("staged:", sorted(p.name for p in src.iterdir()))


def prepare_gpu_data(work: Path, shards: int) -> tuple[Path, Path]:
    train_dir, val_dir = work / f"train{shards}", work / "val"
    t0 = time.time()
    subprocess.run(
        [sys.executable, str(TRAINER / "prepare.py"), "--source", str(work / "src"), "--train-dir",
         str(train_dir), "--val-dir", str(val_dir), "--max-train-shards", str(shards), "--tokenizer",
         str(work / "tokenizer.json")],
        check=True,
    )  # fmt: skip
    say(f"data prepared in {time.time() - t0:.1f} s")
    return train_dir, val_dir


# ---------------------------------------------------------------------------------------------------
# the run


class Stack:
    """Redis, committer, worker and controller as child processes with one environment."""

    def __init__(self, work: Path, env: dict[str, str], redis_server: str, redis_env: dict[str, str]):
        self.work, self.env = work, env
        self.logs = work / "service-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        port = env["AR_REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
        self._start("redis", [redis_server, "--port", port, "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(work)], redis_env)  # fmt: skip

    def _start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        self.procs[name] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def start_services(self) -> None:
        for name in ("committer", "worker", "controller"):
            self._start(name, [sys.executable, "-m", f"services.{name}.main"], self.env)

    def restart_worker(self, changes: dict[str, str]) -> None:
        """Stop the worker (idle: RQ's warm shutdown) and start it again with changed settings."""
        proc = self.procs.pop("worker")
        proc.terminate()
        proc.wait(60)
        self.env = {**self.env, **changes}
        self._start("worker", [sys.executable, "-m", "services.worker.main"], self.env)

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(stack: Stack, what: str, predicate: Any, timeout_s: float, every_s: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.check()
        try:
            value = predicate()
        except Exception as exc:  # the controller not up yet, a transient error: keep waiting
            value = None
            last_error = repr(exc)
        else:
            last_error = ""
        if value:
            return value
        time.sleep(every_s)
    raise RuntimeError(f"timed out after {timeout_s} s waiting for {what} {last_error}")


def bare_run(label: str, train_py: str, budget: int, seed: int, train_dir: Path, val_dir: Path,
             work: Path, device: str, preset: str) -> dict[str, Any]:  # fmt: skip
    """The trainer and the single-process evaluator as plain host processes, with the trainer
    contract's environment and a cold compile cache (as every service run has)."""
    run_dir = work / "bare" / label
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "out").mkdir(parents=True)
    (run_dir / "train.py").write_text(train_py)
    env = {
        "PATH": os.environ["PATH"], "HOME": str(run_dir), "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH", ""),
        "AR_WALL_CLOCK_S": str(budget), "AR_SEED": str(seed), "AR_DATA_DIR": str(train_dir),
        "AR_OUT_DIR": str(run_dir / "out"), "AR_DEVICE": device, "AR_PRESET": preset,
        "TORCHINDUCTOR_CACHE_DIR": str(run_dir / "cache" / "inductor"),
        "TRITON_CACHE_DIR": str(run_dir / "cache" / "triton"), "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    started = time.time()
    env["AR_DEADLINE_UNIX"] = str(int(started + budget))
    with open(run_dir / "train.log", "w") as log:
        code = subprocess.run(
            [sys.executable, str(run_dir / "train.py")], env=env, stdout=log, stderr=log
        ).returncode
    wall = time.time() - started
    with open(run_dir / "eval.log", "w") as log:
        subprocess.run(
            [sys.executable, str(TRAINER / "evaluate.py"), "--in-process", "--train-py", str(run_dir / "train.py"),
             "--checkpoint", str(run_dir / "out"), "--data-dir", str(train_dir), "--val-dir", str(val_dir), "--out",
             str(run_dir / "result.json"), "--device", device],
            env=env, stdout=log, stderr=log, check=False,
        )  # fmt: skip
    eval_wall = time.time() - started - wall
    run = json.loads((run_dir / "out" / "run.json").read_text()) if code == 0 else {}
    scored = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").exists() else {}
    result = {
        "label": label, "exit_code": code, "seed": seed, "budget_s": budget, "process_wall_s": round(wall, 2),
        "eval_process_s": round(eval_wall, 2), "val_bpb": scored.get("val_bpb"), "eval_s": scored.get("eval_s"),
        **{k: run.get(k) for k in ("steps", "startup_s", "training_s", "steady_tokens_per_s", "mfu_percent",
                                   "peak_memory_bytes", "checkpoint_s")},
        "total_s": trainer_total_s((run_dir / "train.log").read_text(errors="replace")),
    }  # fmt: skip
    say(f"bare {label}:", json.dumps(result))
    return result


def trainer_total_s(log_text: str, key: str = "total_s") -> float | None:
    """A figure of the trainer's closing summary in its log (`total_s: 293.9`)."""
    found = re.findall(rf"^{key}: ([0-9.]+)$", log_text, flags=re.M)
    return float(found[-1]) if found else None


def run(args: argparse.Namespace) -> None:
    work: Path = args.work
    gpu = args.mode == "gpu"
    if gpu:
        sys.path.insert(0, str(SITE))
        train_dir, val_dir = work / f"train{args.shards}", work / "val"
        baseline_overrides, proposals = (GPU_BASELINE if args.baseline == "no-wd" else {}), GPU_PROPOSALS
    else:
        sys.path.insert(0, str(REPO))
        from tests.support.trainer import run_prepare, write_corpus

        train_dir, val_dir = run_prepare(write_corpus(work / "source"), work / "prepared")
        baseline_overrides, proposals = CPU_BASELINE, CPU_PROPOSALS
    import httpx

    device, preset = ("cuda", "full") if gpu else ("cpu", "tiny")
    baseline_py = patched(baseline_overrides)
    (work / "baseline_train.py").write_text(baseline_py)
    started = time.time()
    report: dict[str, Any] = {"mode": args.mode, "budget_s": args.budget, "shards": args.shards if gpu else None,
                              "confirm_runs": args.confirm_runs, "calibration_runs": args.calibration_runs,
                              "baseline_overrides": baseline_overrides}  # fmt: skip

    bare = None
    if args.bare:  # back to back with the service's first run (the baseline's), both cold
        bare = bare_run("baseline", baseline_py, args.budget, 42, train_dir, val_dir, work, device, preset)
        report["bare"] = bare

    token = secrets.token_urlsafe(24)
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(work),
        "PYTHONPATH": os.pathsep.join([*([str(SITE)] if gpu else []), str(REPO)]),
        "PYTHONUNBUFFERED": "1",
        "AR_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "AR_ADMIN_TOKEN": token,
        "AR_HOST": "127.0.0.1",
        "AR_PORT": str(port),
        "AR_PROGRAM_PATH": str(REPO / "program.md"),
        "AR_BASELINE_TRAIN_PY": str(work / "baseline_train.py"),
        "AR_REPO_DIR": str(work / "repo"),
        "AR_RUNS_DIR": str(work / "runs"),
        "AR_TRAIN_DATA": str(train_dir),
        "AR_VAL_DATA": str(val_dir),
        "AR_RUN_WALL_CLOCK_S": str(args.budget),
        "AR_CONFIRM_RUNS": str(args.confirm_runs),
        "AR_PRESET": preset,
        "AR_DEVICE": device,
        "AR_KEEP_CHECKPOINTS": "false",
    }
    redis_server, redis_env = "redis-server", dict(os.environ)
    if gpu:
        env.update({
            "DOCKER_HOST": f"unix://{DOCKER_SOCKET}",
            "AR_TRAINER_IMAGE": HOST_IMAGE,
            "AR_TRAINER_PYTHON": sys.executable,
            "AR_GPU_MODE": "devices",
            "AR_GPU_DEVICE_NODES": json.dumps([p for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm",
                                                         "/dev/nvidia-uvm-tools") if os.path.exists(p)]),
            "AR_GPU_HOST_MOUNTS": json.dumps(host_mounts()),
            "AR_SANDBOX_EXTRA_ENV": json.dumps(container_env()),
            "AR_SCRATCH_MODE": "bind",  # a tmpfs was not writable by the sandbox's user on this machine
            "AR_CONTAINER_MEMORY_BYTES": str(96 * 1024**3),
            "AR_EVAL_TIMEOUT_S": "300",
        })  # fmt: skip
        redis_server, redis_env = "/tmp/redis/redis-server", {**os.environ, "LD_LIBRARY_PATH": "/tmp/redis"}
    else:
        env.update({"AR_CONTAINER_MEMORY_BYTES": str(4 * 1024**3), "AR_EVAL_TIMEOUT_S": "300"})
        if os.environ.get("DOCKER_HOST"):
            env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    (work / "runs").mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    report["settings"] = {k: v for k, v in env.items() if k.startswith("AR_") and k != "AR_ADMIN_TOKEN"}

    stack = Stack(work, env, redis_server, redis_env)
    ids: dict[str, str] = {}
    try:
        time.sleep(0.5)
        stack.start_services()
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                           timeout=30)  # fmt: skip
        wait_for(stack, "the controller", lambda: api.get("/healthz").status_code == 200, 120, 1)
        say("stack up; waiting for the baseline's first run")
        budget_wait = args.budget + 600

        def best_scored() -> dict[str, Any] | None:
            best = api.get("/v1/best").json()
            return best if best.get("val_bpb") is not None else None

        best = wait_for(stack, "the baseline score", best_scored, budget_wait)
        say("baseline scored:", json.dumps({k: v for k, v in best.items() if k != "train_py"}))
        report["baseline_commit"] = best["commit"]
        ids["baseline"] = best["proposal_id"]

        def finished(pid: str) -> dict[str, Any] | None:
            body = api.get(f"/v1/proposals/{pid}").json()
            return body if body["state"] in TERMINAL else None

        if args.calibration_runs > 1:
            seeds = [1000 + i for i in range(args.calibration_runs - 1)]
            response = api.post(
                "/v1/runs", json={"count": len(seeds), "seeds": seeds, "title": "calibration"}
            )
            response.raise_for_status()
            ids["calibration"] = response.json()["id"]
            say("calibration runs requested:", ids["calibration"], seeds)
            wait_for(
                stack, "the calibration runs", lambda: finished(ids["calibration"]), len(seeds) * budget_wait
            )
        report["calibration"] = api.get("/v1/calibration").json()
        say("calibration:", json.dumps(report["calibration"]))
        partial_report(report, api, ids, work, bare, args.results)

        for name in [n for n in args.proposals.split(",") if n]:
            title, overrides = proposals[name]
            response = api.post("/v1/proposals", json={"title": title, "description": f"gpu e2e: {name}",
                                                       "agent": "gpu-e2e", "train_py": patched(overrides)})  # fmt: skip
            response.raise_for_status()
            ids[name] = response.json()["id"]
            say(f"submitted {name}:", ids[name], json.dumps(overrides))
        for name in [n for n in args.proposals.split(",") if n]:
            partial_report(report, api, ids, work, bare, args.results)
            done = wait_for(stack, f"proposal {name}", lambda n=name: finished(ids[n]),
                            (2 * args.confirm_runs + 1) * budget_wait)  # fmt: skip
            say(f"{name}: {done['state']}: {done['reason']}")
        if args.full_budget:  # one run of the best at the full budget: the per-experiment figures
            partial_report(report, api, ids, work, bare, args.results)
            stack.restart_worker({"AR_RUN_WALL_CLOCK_S": str(args.full_budget)})
            body = {"count": 1, "seeds": [7], "title": f"full {args.full_budget} s run"}
            response = api.post("/v1/runs", json=body)
            response.raise_for_status()
            ids["full"] = response.json()["id"]
            say(f"full-budget run requested ({args.full_budget} s):", ids["full"])
            done = wait_for(
                stack, "the full-budget run", lambda: finished(ids["full"]), args.full_budget + 900
            )
            say(f"full: {done['state']}: {done['reason']}")
        report["proposals"] = {name: api.get(f"/v1/proposals/{pid}").json() for name, pid in ids.items()}
        report["best"] = api.get("/v1/best").json()
        report["lineage"] = api.get("/v1/lineage").json()
        report["results_tsv"] = api.get("/v1/results.tsv").text
        report["calibration"] = api.get("/v1/calibration").json()
        report["git"] = git_evidence(work / "repo", report["best"]["commit"])
    finally:
        stack.stop()
    report["wall_s"] = round(time.time() - started, 1)
    report["figures"] = figures(report, work, bare)
    write_report(report, work, args.results)


def partial_report(report: dict[str, Any], api: Any, ids: dict[str, str], work: Path,
                   bare: dict[str, Any] | None, results: Path) -> None:  # fmt: skip
    """Write what is known so far (the GPU host may be taken back before the end)."""
    partial = {**report, "partial": True}
    partial["proposals"] = {name: api.get(f"/v1/proposals/{pid}").json() for name, pid in ids.items()}
    partial["figures"] = figures(partial, work, bare)
    write_report(partial, work, results)


def git_evidence(repo: Path, commit: str) -> dict[str, str]:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True)
        return (
            done.stdout if done.returncode == 0 else f"(git {' '.join(argv)} failed: {done.stderr.strip()})"
        )

    if shutil.which("git") is None:
        return {"error": "no git binary on this machine"}
    return {
        "log": git("log", "--format=%H %s", "research"),
        "head_message": git("log", "-1", "--format=%B", commit),
        "head_note": git("notes", "show", commit),
        "tried_refs": git("for-each-ref", "--format=%(refname) %(objectname)", "refs/autoresearch/tried"),
        "fsck": git("fsck", "--no-progress") or "clean",
    }


def figures(report: dict[str, Any], work: Path, bare: dict[str, Any] | None) -> dict[str, Any]:
    """Per run: where its time went; per experiment (a proposal's screening run): GPU time and
    experiments per GPU-hour; the sandbox's cost against the bare run."""
    rows = []
    for name, proposal in report.get("proposals", {}).items():
        events = proposal.get("events") or []
        for result in [*proposal.get("results", []), *proposal.get("baseline_results", [])]:
            log_path = work / "runs" / result["run_id"] / "train.log"
            log_text = (
                log_path.read_text(errors="replace") if log_path.exists() else result.get("log_tail", "")
            )
            total = trainer_total_s(log_text)
            timings = result.get("timings", {})
            train_c = timings.get("train_container_s", 0.0)
            rows.append({
                "proposal": name, "subject": result.get("subject"), "seed": result["seed"],
                "state": result["state"], "val_bpb": result.get("val_bpb"), "steps": result.get("steps"),
                "prepare_s": timings.get("prepare_s"), "train_container_s": train_c,
                "container_overhead_s": round(train_c - total, 2) if total else None,
                "startup_compile_s": result.get("startup_s"), "training_s": result.get("training_s"),
                "trainer_total_s": total, "checkpoint_s": trainer_total_s(log_text, "checkpoint_s"),
                "collect_s": timings.get("collect_s"),
                "eval_container_s": timings.get("eval_container_s"),
                "gpu_s": round(train_c + (timings.get("eval_container_s") or 0.0), 2),
            })  # fmt: skip
        transitions = [(e["state"], e["at"]) for e in events]
        finished = [
            r["finished_at"] for r in [*proposal.get("results", []), *proposal.get("baseline_results", [])]
        ]
        if transitions:
            first_queued = next((at for s, at in transitions if s == "queued"), None)
            first_running = next((at for s, at in transitions if s == "running"), None)
            proposal["_timing"] = {
                "queue_handoff_s": round(first_running - first_queued, 3)
                if first_queued and first_running else None,
                # from its last run's result to its final state (decision, and the commit if merged)
                "decision_and_commit_s": round(transitions[-1][1] - max(finished), 3) if finished else None,
                "final_state": transitions[-1][0],
            }  # fmt: skip
    out: dict[str, Any] = {"runs": rows}
    handoffs = [p["_timing"] for p in report.get("proposals", {}).values() if "_timing" in p]
    out["per_proposal"] = {n: p.get("_timing") for n, p in report.get("proposals", {}).items()}
    full = [r for r in rows if r["proposal"] == "full" and r["gpu_s"]]
    scored = [r for r in rows if r["gpu_s"] and r["proposal"] != "full"]
    if full:
        run = full[0]
        handoff = (out["per_proposal"].get("full") or {}).get("queue_handoff_s") or 0.0
        out["full_budget_run"] = {**run, "queue_handoff_s": handoff}
        out["experiments_per_gpu_hour_full_budget"] = round(3600 / (run["gpu_s"] + handoff), 2)
        out["eval_share_of_cycle_full_budget"] = round(run["eval_container_s"] / (run["gpu_s"] + handoff), 4)
    if scored:
        gpu_s = statistics.mean(r["gpu_s"] for r in scored)
        handoff = statistics.mean(h["queue_handoff_s"] or 0.0 for h in handoffs) if handoffs else 0.0
        per_run = {k: round(statistics.mean(r[k] for r in scored if r[k] is not None), 2)
                   for k in ("prepare_s", "container_overhead_s", "startup_compile_s", "training_s",
                             "checkpoint_s", "train_container_s", "collect_s", "eval_container_s")
                   if any(r[k] is not None for r in scored)}  # fmt: skip
        out["mean_run"] = {**per_run, "queue_handoff_s": round(handoff, 3), "gpu_s": round(gpu_s, 2)}
        out["experiments_per_gpu_hour"] = round(3600 / (gpu_s + handoff), 2)
        # What a run costs beyond its training budget (container start, evaluation, hand-off) does not
        # depend on the budget: the rate that overhead gives at the standard 300 s.
        overhead = gpu_s + handoff - float(report["budget_s"])
        out["overhead_beyond_budget_s"] = round(overhead, 2)
        out["projected_experiments_per_gpu_hour_at_300s"] = round(3600 / (300 + overhead), 2)
        out["eval_share_of_cycle"] = round(per_run.get("eval_container_s", 0.0) / (gpu_s + handoff), 4)
    if bare and scored:
        first = scored[0]  # the baseline's first run: cold, right after the bare run
        out["sandbox_cost"] = {
            "bare_steps": bare.get("steps"), "container_steps": first["steps"],
            "steps_ratio": round(first["steps"] / bare["steps"], 4) if bare.get("steps") and first["steps"] else None,
            "bare_startup_s": bare.get("startup_s"), "container_startup_s": first["startup_compile_s"],
            "bare_val_bpb": bare.get("val_bpb"), "container_val_bpb": first["val_bpb"],
            "bare_eval_process_s": bare.get("eval_process_s"), "container_eval_s": first["eval_container_s"],
        }  # fmt: skip
    return out


def write_report(report: dict[str, Any], work: Path, results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "logs").mkdir(exist_ok=True)
    document = {
        "benchmark": "gpu-e2e",
        "command": " ".join(["python", "bench/gpu_e2e.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": os.environ.get("AR_BENCH_DEVICE", "nvidia-h100-x1" if report["mode"] == "gpu" else "cpu"),
        "raw_logs": ["logs/gpu-e2e.log", "logs/gpu-e2e-services.log", "logs/gpu-e2e-runs.log"],
        **report,
    }
    (results / "gpu-e2e.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    with open(results / "logs" / "gpu-e2e-services.log", "w") as out:
        for path in sorted((work / "service-logs").glob("*.log")):
            text = path.read_text(errors="replace")
            out.write(f"==> {path.name} ({len(text)} bytes, last 200 kB) <==\n{text[-200_000:]}\n")
    with open(results / "logs" / "gpu-e2e-runs.log", "w") as out:
        for folder in sorted([*(work / "runs").glob("*"), *(work / "bare").glob("*")], key=os.path.getmtime):
            for part in ("train.log", "eval.log", "model-a.log", "model-b.log"):
                if (folder / part).exists():
                    out.write(
                        f"==> {folder.name}/{part} <==\n{(folder / part).read_text(errors='replace')}\n"
                    )
    if (work / "e2e.log").exists():
        shutil.copy(work / "e2e.log", results / "logs" / "gpu-e2e.log")
    say("report written to", results / "gpu-e2e.json")


def evalcheck(work: Path, results: Path, memlock_values: list[int]) -> None:
    """The evaluation containers alone on the GPU: a tiny-preset model (the logits' volume depends on
    the vocabulary and the validation set, not the model) trained in the sandbox, then scored by the
    three-container evaluation once per RLIMIT_MEMLOCK setting, with the scorer's log (page-locked or
    not) and the times. Needs `setup` and data prepared by an earlier `start` (or --shards 1)."""
    sys.path[:0] = [str(SITE), str(REPO)]
    from services.settings import GIB, Settings
    from services.worker.collect import collect_checkpoint, prepare_run_dir
    from services.worker.docker_sandbox import DockerSandbox
    from services.worker.sandbox import EvalRequest, TrainRequest

    train_dir = sorted(work.glob("train*"))[0]
    nodes = [
        p
        for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
        if os.path.exists(p)
    ]
    out: dict[str, Any] = {
        "benchmark": "gpu-evalcheck",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/gpu_e2e.py", *sys.argv[1:]]),
        "runs": [],
    }
    paths = None
    for memlock in memlock_values:
        settings = Settings(trainer_image=HOST_IMAGE, trainer_python=sys.executable, gpu_mode="devices",
                            gpu_device_nodes=nodes, gpu_host_mounts=host_mounts(), device="cuda", preset="tiny",
                            train_data=str(train_dir), val_data=str(work / "val"), runs_dir=work / "evalcheck",
                            container_memory_bytes=96 * GIB, eval_memlock_bytes=memlock, scratch_mode="bind",
                            sandbox_extra_env=container_env())  # fmt: skip
        sandbox = DockerSandbox(settings.sandbox, base_url=f"unix://{DOCKER_SOCKET}")
        if paths is None:
            paths = prepare_run_dir(settings.sandbox.runs_dir, "evalcheck", patched({}))
            t0 = time.monotonic()
            trained = sandbox.train(TrainRequest(run_id="evalcheck", proposal_id="evalcheck", paths=paths, seed=1,
                                                 wall_clock_s=120, preset="tiny", device="cuda"))  # fmt: skip
            say(
                f"tiny training: exit {trained.exit_code} in {time.monotonic() - t0:.1f} s",
                trained.log[-300:],
            )
            collect_checkpoint(paths, settings.runs.max_checkpoint_bytes)
        for stale in paths.eval_out.iterdir():  # the previous setting's result
            stale.unlink()
        t0 = time.monotonic()
        try:
            evaluated = sandbox.evaluate(EvalRequest(run_id="evalcheck", proposal_id="evalcheck", paths=paths, seed=0,
                                                     timeout_s=300, device="cuda"))  # fmt: skip
            row = {"memlock": memlock, "exit": evaluated.exit_code, "container_s": round(time.monotonic() - t0, 2),
                   "log": evaluated.log[-1500:]}  # fmt: skip
        except Exception as exc:  # the engine may refuse the limit
            row = {"memlock": memlock, "error": repr(exc)[:800]}
        for name in ("model-a.log", "model-b.log"):
            if (paths.root / name).exists():
                row[name] = (paths.root / name).read_text(errors="replace")[-600:]
        say("evalcheck:", json.dumps(row))
        out["runs"].append(row)
        results.mkdir(parents=True, exist_ok=True)
        (results / "gpu-evalcheck.json").write_text(json.dumps(out, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------
# entry points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_setup = sub.add_parser("setup")
    p_setup.add_argument("--carried", type=Path, required=True)
    for name in ("start", "run", "local"):
        p = sub.add_parser(name)
        p.add_argument("--carried", type=Path, action="append", default=[])
        p.add_argument("--shards", type=int, default=4)
        p.add_argument("--budget", type=int, default=90, help="AR_RUN_WALL_CLOCK_S of every run")
        p.add_argument(
            "--calibration-runs", type=int, default=5, help="runs of the baseline, its first included"
        )
        p.add_argument("--confirm-runs", type=int, default=1)
        p.add_argument("--proposals", default="worse,better")
        p.add_argument("--bare", action="store_true", help="first run the baseline bare on the host")
        p.add_argument("--full-budget", type=int, default=0, help="then one run of the best at this budget")
        p.add_argument(
            "--baseline", choices=["no-wd", "shipped"], default="no-wd",
            help="the branch's first train.py: without Muon weight decay (so 'better' exists), or as shipped",
        )  # fmt: skip
        p.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    p_check = sub.add_parser("evalcheck")
    p_check.add_argument("--carried", type=Path, action="append", default=[])
    p_check.add_argument("--memlock", type=int, action="append", default=[])
    p_check.add_argument("--results", type=Path, required=True)
    p_wait = sub.add_parser("wait")
    p_wait.add_argument("--timeout", type=float, default=560)
    p_wait.add_argument("--results", type=Path, required=True)
    for p in (p_setup, *sub.choices.values()):
        if not any(a.dest == "work" for a in p._actions):
            p.add_argument("--work", type=Path, default=Path("/root/e2e"))
    args = parser.parse_args()

    if args.command == "setup":
        setup(args.carried, args.work)
    elif args.command == "start":
        args.work.mkdir(parents=True, exist_ok=True)
        for folder in args.carried:
            stage(folder, args.work)
        prepare_gpu_data(args.work, args.shards)
        (args.work / "done").unlink(missing_ok=True)
        argv = drop_option(drop_option([a for a in sys.argv[1:] if a != "start"], "--carried"), "--results")
        argv += ["--results", str(args.work / "results")]
        with open(args.work / "e2e.log", "ab") as log:
            subprocess.Popen([sys.executable, __file__, "run", *argv], stdout=log,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        say("started; follow with: python3 bench/gpu_e2e.py wait --results $OUT")
    elif args.command in ("run", "local"):
        args.mode = "gpu" if args.command == "run" else "cpu"
        if args.command == "local":
            args.work = Path(
                args.work if args.work != Path("/root/e2e") else f"/tmp/gpu-e2e-local-{os.getpid()}"
            )
            args.work.mkdir(parents=True, exist_ok=True)
        try:
            run(args)
        finally:
            (args.work / "done").write_text("done\n")
    elif args.command == "evalcheck":
        for folder in args.carried:
            stage(folder, args.work)
        if args.carried:
            prepare_gpu_data(args.work, 1)
        evalcheck(args.work, args.results, args.memlock or [0])
    elif args.command == "wait":
        return wait(args.work, args.timeout, args.results)
    return 0


def drop_option(argv: list[str], option: str) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == option:
            skip = True
            continue
        if not item.startswith(f"{option}="):
            out.append(item)
    return out


def wait(work: Path, timeout_s: float, results: Path) -> int:
    log = work / "e2e.log"
    shown = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists():
            text = log.read_text(errors="replace")
            print(text[shown:], end="", flush=True)
            shown = len(text)
        if (work / "done").exists():
            break
        time.sleep(5)
    done = (work / "done").exists()
    results.mkdir(parents=True, exist_ok=True)
    for source in (work / "results" / "gpu-e2e.json", log):
        if source.exists():
            shutil.copy(source, results / source.name)
    if done and (work / "results" / "logs").exists():
        for path in (work / "results" / "logs").glob("*.log"):
            shutil.copy(path, results / path.name)
    print("done" if done else "still running", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
