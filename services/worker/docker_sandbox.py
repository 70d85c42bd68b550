"""The real `Sandbox`: one hardened Docker container per run step (the only module, with reaper.py,
that imports `docker`).

Threat model: `train.py` is hostile code written by an agent. What every container gets:

Enforced
  - no network (network mode `none`: loopback only), no Docker socket, no host paths but the run's
    own folders and the read-only data; validation data only in the evaluation's scorer container,
    never where the candidate's code runs (training, and the evaluation's model containers); the
    held-out test split likewise, and only in the scorer of an evaluation that asks for it
  - read-only root filesystem; writable only: the run's output and cache folders (training), the
    evaluation output folder (evaluation), and /tmp (a size-capped tmpfs, or the run's scratch folder)
  - user 65534:65534, all capabilities dropped, no-new-privileges, the default seccomp profile,
    a private PID and IPC namespace, tini as PID 1 (zombies reaped; the whole tree dies with it)
  - memory (swap off), process count, optional CPU quota, open files, size of any one file
    (RLIMIT_FSIZE = max_output_bytes), no core dumps; the OOM killer prefers the container
  - an environment of the trainer contract's variables only, nothing from the host
  - wall clock: SIGKILL at the deadline (a trainer that ignores SIGTERM cannot outlive it); inside
    the container, coreutils `timeout` SIGKILLs the step kill_grace_s later as a backstop for a
    worker that died mid-step (a hostile step can kill that backstop: the worker's kill is the rule)
  - output size: the writable folders are measured about once a second, and once more after the
    container exits, and the step killed (or failed) beyond max_output_bytes, max_output_files
    entries or MAX_OUTPUT_DEPTH levels of nesting; folders.py walks them by file descriptor, so an
    entry counts however deep it is, and one that cannot be examined is a violation
  - log: stdout and stderr are read live from the attach stream (the Docker log driver is off, so
    the daemon writes nothing to the host's disk); the last max_log_bytes are kept; only a training
    container's output is streamed to the proposal's live log: the evaluation's containers (scorer and
    model servers) are logged to the run folder alone, since the candidate's model prints there while
    it holds validation rows
  - every container labelled (`autoresearch.managed=1`, proposal, run, step, and the owner that
    started it) and removed in `finally`; `reaper.py` removes strays

Not enforced (operators take note)
  - GPU side channels and GPU memory left by earlier runs (the driver clears allocations, not caches)
  - kernel or runtime exploits (runc, the NVIDIA container toolkit): the container shares the host
    kernel; use a VM or gVisor for a stronger boundary
  - the output cap is polled, so between two polls a run can write up to ~1 s of disk bandwidth
    more (any single file is still capped by RLIMIT_FSIZE; the check after exit still fails the
    step); use a filesystem quota for a hard cap
  - /dev/shm (64 MiB tmpfs, counted in the memory limit) is writable
  - CPU time and disk I/O bandwidth are shared with other containers unless container_cpus is set
  - timing: the trainer can read the clock and its own speed; only the wall clock is enforced
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import docker.types
from docker.client import DockerClient  # not `DockerClient`: mypy sees ./docker/ as a package

from services.errors import SandboxUnavailable
from services.settings import GIB, MIB, SandboxSettings
from services.worker.folders import MAX_OUTPUT_DEPTH, empty_folder, over_cap, remove_tree
from services.worker.sandbox import (
    CACHE_DIR,
    CKPT_DIR,
    CODE_DIR,
    DATA_DIR,
    EVAL_OUT_DIR,
    OUT_DIR,
    RESULT_FILE,
    TEST_DIR,
    TRAINER_HOME,
    VAL_DIR,
    Environment,
    EvalRequest,
    FixedFiles,
    StepOutcome,
    TrainRequest,
)

log = logging.getLogger(__name__)

LABEL_MANAGED = "autoresearch.managed"
LABEL_PROPOSAL = "autoresearch.proposal"
LABEL_RUN = "autoresearch.run"
LABEL_STEP = "autoresearch.step"
LABEL_OWNER = "autoresearch.owner"  # the worker that started it: it reaps its own strays on start

CHANNEL_DIR = "/channel"  # evaluation: the scorer's sockets (a/, b/); each model container sees its own
MODEL_SERVERS = ("a", "b")  # two model containers per evaluation: scored pass and probe pass, roles drawn
VENV_PYTHON = "/opt/venv/bin/python"  # the trainer image's interpreter (both targets)
SANDBOX_UID = "65534:65534"  # nobody:nogroup
BUILD_HINT = "build it with docker/build-images.sh"

POLL_INTERVAL_S = 1.0  # how often the writable folders are measured while a container runs
STOP_TIMEOUT_S = 30.0  # how long a SIGKILLed container may take to be reported as exited
EVENTS_SLACK_S = 1.0  # the events query starts this long before `start`: the daemon's clock may lag ours
READY_POLL_S = 0.5  # how often `wait_ready` asks the daemon whether it answers again
LOG_DRAIN_TIMEOUT_S = 10.0  # after the container's exit, how long the log stream may send nothing
PROBE_TIMEOUT_S = 120  # the environment probe imports torch; a cold start takes a few seconds
# Both probes import torch (~220 MB resident) and run no candidate code, so a container_memory_bytes
# set low for hostile code (tests) does not starve them.
PROBE_MEMORY_BYTES = 1 * GIB
MAX_OUTPUT_FILES = 100_000  # entries in the writable folders; more is an inode bomb
NOFILE_LIMIT = 16_384  # open file descriptors per process
SHM_BYTES = 64 * MIB  # /dev/shm, Docker's default size, made explicit
OOM_SCORE_ADJ = 1000  # the host's OOM killer picks a sandbox before anything else

# Printed by the probe container as one JSON line: what makes two trainer environments equal.
_PROBE = r"""
import importlib.metadata as md, json, platform, subprocess, sys
info = {"python": sys.version, "platform": platform.platform(terse=True),
        "packages": sorted(f"{d.metadata['Name']}=={d.version}" for d in md.distributions())}
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda"] = torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
except ImportError:
    gpu = None
driver = None
try:
    query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader", "-i", "0"]
    out = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
    if out:
        gpu, driver = (part.strip() for part in out.split(",", 1))
except (OSError, subprocess.SubprocessError):
    pass
if gpu and driver is None:
    try:
        words = open("/proc/driver/nvidia/version").read().split()
        driver = next(w for w in words if w[:1].isdigit() and "." in w)
    except (OSError, StopIteration):
        pass
cpu = ""
try:  # x86: "model name"; ARM: "Model" or "Hardware", else the architecture
    fields = dict(line.split(":", 1) for line in open("/proc/cpuinfo") if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    cpu = next((fields[k] for k in ("model name", "Model", "Hardware", "cpu model") if fields.get(k)), "")
except OSError:
    pass
cpu = " ".join((cpu or platform.processor() or platform.machine()).split())[:200]
print(json.dumps({"info": info, "gpu": gpu, "driver": driver, "cpu": cpu}))
"""

# Run by the fixed-files probe with the scorer's in-container path: the trusted scorer's own hashes
# (`--hash-only`) of the image's fixed files and the data. An image without a scorer there (tests
# that bring their own evaluator) has no fixed files.
_HASH_PROBE = r"""
import json, os, sys
scorer = sys.argv[1]
if not os.path.isfile(scorer):
    print(json.dumps({"evaluator_version": "", "fixed_hashes": {}}))
    sys.exit(0)
os.execv(sys.executable, [sys.executable, scorer, "--hash-only", *sys.argv[2:]])
"""


@dataclass(frozen=True)
class _Step:
    """One container to run: what it is, what it sees, and how long it may take."""

    name: str
    step: str  # label value: train, eval, probe
    command: list[str]
    environment: dict[str, str]
    mounts: list[docker.types.Mount]
    labels: dict[str, str]
    deadline_unix: float  # killed at this time (time.time() clock)
    budget_reason: str  # killed_reason when the deadline kills it
    watched: list[Path] = field(default_factory=list)  # writable host folders under the output cap
    scratch: Path | None = None  # bind-mounted at /tmp when scratch_mode is "bind"
    log_path: Path | None = None
    # A stop sent through the daemon by anyone but this sandbox's supervision (the daemon's own
    # shutdown or restart, `docker stop`) is an infrastructure failure. Off for the evaluation's
    # model containers: the scorer's end kills them on purpose, and a daemon stop shows in the scorer.
    outside_stop_is_infra: bool = True
    memory_bytes: int | None = None  # instead of container_memory_bytes (probes: trusted code only)
    # Streamed to `log_sink` (the proposal's live log, which agents read): training only. What the
    # scorer and the model containers print during evaluation may hold validation data.
    live_log: bool = False


class _LogTail:
    """Reads a container's attach stream on a thread, keeping the last `cap` bytes."""

    def __init__(self, stream: Any, cap: int, sink: Callable[[str], None] | None = None) -> None:
        self._stream = stream
        self._cap = cap
        self._sink = sink
        self._buffer = bytearray()
        self.total_bytes = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="sandbox-log", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for chunk in self._stream:
                if self._sink is not None:
                    self._sink(chunk.decode("utf-8", "replace"))
                self.total_bytes += len(chunk)
                self._buffer += chunk
                if len(self._buffer) > 2 * self._cap:  # trim rarely: amortised O(1) per byte
                    del self._buffer[: len(self._buffer) - self._cap]
        except (OSError, ValueError, docker.errors.DockerException) as exc:
            # the stream torn down under us: the daemon went away, or close() ran while a read was
            # blocked (ValueError: "I/O operation on closed file")
            self.error = exc

    def finish(self, idle_timeout_s: float) -> tuple[str, bool]:
        """Wait for the stream to end, then return (text, truncated). The container has exited, so
        the stream ends once the daemon has sent what it holds: wait as long as bytes keep arriving
        (on a loaded machine reading a flood takes long, and the last bytes are the ones users need),
        and close it only after `idle_timeout_s` with none."""
        seen = -1
        while self._thread.is_alive() and self.total_bytes != seen:
            seen = self.total_bytes
            self._thread.join(idle_timeout_s)
        if self._thread.is_alive():
            self.close()
            self._thread.join(idle_timeout_s)
        kept = bytes(self._buffer[-self._cap :])
        truncated = self.total_bytes > len(kept)
        text = kept.decode("utf-8", "replace")
        if truncated:
            text = f"[log cut: {self.total_bytes - len(kept)} earlier bytes dropped]\n" + text
        return text, truncated

    def close(self) -> None:
        # CancellableStream.close() shuts the socket down but leaves the HTTP response (which owns
        # the socket's file object) open; close that too, or the descriptor lingers until GC.
        with contextlib.suppress(OSError, docker.errors.DockerException):
            self._stream.close()
        response = getattr(self._stream, "_response", None)
        if response is not None:
            with contextlib.suppress(OSError):
                response.close()


class DockerSandbox:
    """Runs training and evaluation steps in hardened containers (see the module docstring), as its
    settings group says (services/settings.py `SandboxSettings`: image, interpreter, data, limits,
    scratch mode, GPU, the operator's extra environment); nothing else configures it.

    `client` is injected in tests; otherwise one is made on first use from `base_url` (e.g.
    "unix:///var/run/docker.sock") or, when that is None, from the environment (DOCKER_HOST).
    `evaluator` and `model_server` are in-container paths of the trusted scorer and of the fixed file
    that serves the candidate's model to it (tests put their own stand-ins there).
    Nothing is taken from the worker's own environment. `log_sink(proposal_id, chunk)` receives a
    training container's output live (the API's log stream); evaluation output never goes there.
    `owner` labels the containers (the worker's name), for `remove_strays`.
    """

    def __init__(
        self,
        settings: SandboxSettings,
        client: DockerClient | None = None,
        *,
        base_url: str | None = None,
        evaluator: str = f"{TRAINER_HOME}/evaluate.py",
        model_server: str = f"{TRAINER_HOME}/model_server.py",
        poll_interval_s: float = POLL_INTERVAL_S,
        max_output_files: int = MAX_OUTPUT_FILES,
        eval_batch_size: int | None = None,
        owner: str = "",
        log_sink: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._client = client
        self._owns_client = client is None
        self._base_url = base_url
        self.scratch_mode = settings.scratch_mode
        self.python = settings.trainer_python
        self.evaluator = evaluator
        self.model_server = model_server
        self.poll_interval_s = poll_interval_s
        self.max_output_files = max_output_files
        self.eval_max_docs = settings.eval_max_docs
        self.eval_batch_size = eval_batch_size
        self.owner = owner
        self.extra_env = dict(settings.sandbox_extra_env)
        self.log_sink = log_sink  # (proposal_id, text chunk), called live from the log thread
        self._environments: dict[str, Environment] = {}
        self._fixed_files: dict[str, FixedFiles] = {}

    # ---------------------------------------------------------------------------------------------
    # The protocol

    def train(self, request: TrainRequest) -> StepOutcome:
        paths = request.paths
        deadline = float(int(time.time() + request.wall_clock_s))  # whole seconds: any parser reads it
        environment = {
            "AR_WALL_CLOCK_S": str(request.wall_clock_s),
            "AR_DEADLINE_UNIX": str(int(deadline)),
            "AR_SEED": str(request.seed),
            "AR_DATA_DIR": DATA_DIR,
            "AR_OUT_DIR": OUT_DIR,
            "AR_DEVICE": request.device,
            "AR_PRESET": request.preset,
            "TORCHINDUCTOR_CACHE_DIR": f"{CACHE_DIR}/inductor",
            "TRITON_CACHE_DIR": f"{CACHE_DIR}/triton",
            **_BASE_ENVIRONMENT,
        }
        mounts = [
            _bind(paths.code, CODE_DIR, read_only=True),
            self._data_mount(self.settings.train_data, DATA_DIR),
            _bind(paths.out, OUT_DIR, read_only=False),
            _bind(paths.cache, CACHE_DIR, read_only=False),
        ]
        step = _Step(
            name=f"ar-{request.run_id}-train",
            step="train",
            command=[self.python, f"{CODE_DIR}/train.py"],
            environment=environment,
            mounts=mounts,
            labels=_labels(request.proposal_id, request.run_id, "train"),
            deadline_unix=deadline,
            budget_reason=f"wall clock of {request.wall_clock_s} s exceeded",
            watched=[paths.out, paths.cache],
            scratch=paths.scratch,
            log_path=paths.train_log,
            live_log=True,
        )
        return self._run(step)

    def evaluate(self, request: EvalRequest) -> StepOutcome:
        """The scorer in one container and the candidate's model in two others (docs/evaluation.md):
        the scorer's outcome is the step's outcome; the model containers' logs go to model-*.log."""
        paths = request.paths
        deadline = time.time() + request.timeout_s
        channel = paths.root / "channel"
        _fresh_folder(channel)
        if self.scratch_mode == "bind":  # nothing the training step left in /tmp reaches evaluation
            _empty_folder(paths.scratch)
        command = self._scorer_command(
            request, "--channel", CHANNEL_DIR, "--connect-timeout", str(request.timeout_s),
            "--reply-timeout", str(request.timeout_s),
        )  # fmt: skip
        scorer = _Step(
            name=f"ar-{request.run_id}-eval",
            step="eval",
            command=command,
            environment=dict(_BASE_ENVIRONMENT),  # the candidate's code never runs here
            mounts=[
                *self._scorer_mounts(request),
                _bind(channel, CHANNEL_DIR, read_only=False),
            ],  # the code is hashed, never imported
            labels=_labels(request.proposal_id, request.run_id, "eval"),
            deadline_unix=deadline,
            budget_reason=f"evaluation timeout of {request.timeout_s} s exceeded",
            watched=[paths.eval_out],
            scratch=paths.scratch,
            log_path=paths.eval_log,
        )
        models = [self._model_step(request, name, channel, deadline) for name in MODEL_SERVERS]
        return self._run_with_models(scorer, models)

    def _model_step(self, request: EvalRequest, name: str, channel: Path, deadline: float) -> _Step:
        """A model container: the candidate's build_model and weights behind model_server.py, with
        what training sees (code, training data, AR_DATA_DIR, AR_DEVICE) plus the checkpoint and its
        own socket folder; no validation data, nothing writable but its own /tmp. Both are alike."""
        paths = request.paths
        _fresh_folder(channel / name)  # the scorer creates the socket; the model's mount is read-only
        scratch = paths.root / f"scratch-{name}"
        _fresh_folder(scratch)
        return _Step(
            name=f"ar-{request.run_id}-model-{name}",
            step="model",
            command=[
                self.python,
                self.model_server,
                "--socket",
                f"{CHANNEL_DIR}/model.sock",
                "--train-py",
                f"{CODE_DIR}/train.py",
                "--checkpoint",
                CKPT_DIR,
                "--device",
                request.device,
                "--connect-timeout",
                str(request.timeout_s),
            ],
            environment={
                "AR_DATA_DIR": DATA_DIR,
                "AR_DEVICE": request.device,
                "TORCHINDUCTOR_CACHE_DIR": "/tmp/inductor",
                "TRITON_CACHE_DIR": "/tmp/triton",
                **_BASE_ENVIRONMENT,
            },
            mounts=[
                _bind(paths.code, CODE_DIR, read_only=True),
                self._data_mount(self.settings.train_data, DATA_DIR),
                _bind(paths.checkpoint, CKPT_DIR, read_only=True),
                _bind(channel / name, CHANNEL_DIR, read_only=True),
            ],
            labels=_labels(request.proposal_id, request.run_id, "model"),
            deadline_unix=deadline,
            budget_reason=f"evaluation timeout of {request.timeout_s} s exceeded",
            watched=[],
            scratch=scratch,
            log_path=paths.root / f"model-{name}.log",
            outside_stop_is_infra=False,
        )

    def _run_with_models(self, scorer: _Step, models: list[_Step]) -> StepOutcome:
        """Run the model containers in threads beside the scorer; when the scorer ends, kill any
        model container still running and wait for its thread (each removes its container)."""
        errors: list[BaseException] = []

        def run(step: _Step) -> None:
            try:
                self._run(step)
            except BaseException as exc:  # re-raised below, after the scorer
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(m,), name=m.name, daemon=True) for m in models]
        for thread in threads:
            thread.start()
        try:
            outcome = self._run(scorer)
        finally:
            for step, thread in zip(models, threads, strict=True):
                give_up = time.monotonic() + STOP_TIMEOUT_S
                while thread.is_alive() and time.monotonic() < give_up:
                    with contextlib.suppress(docker.errors.DockerException, OSError):
                        self._docker().containers.get(step.name).kill()
                    thread.join(1.0)
        if errors:
            raise errors[0]
        return outcome

    def _scorer_command(self, request: EvalRequest, *extra: str) -> list[str]:
        """evaluate.py's command line (`extra` first: the channel's folder and timeouts)."""
        command = [
            self.python, self.evaluator, *extra,
            "--train-py", f"{CODE_DIR}/train.py",
            "--checkpoint", CKPT_DIR,
            "--data-dir", DATA_DIR,
            "--val-dir", VAL_DIR,
            "--out", f"{EVAL_OUT_DIR}/{RESULT_FILE}",
            "--device", request.device,
            "--seed", str(request.seed),
        ]  # fmt: skip
        if request.score_test:
            command += ["--test-dir", TEST_DIR]
        if self.eval_max_docs is not None:
            command += ["--max-docs", str(self.eval_max_docs)]
        if self.eval_batch_size is not None:
            command += ["--batch-size", str(self.eval_batch_size)]
        return command

    def _scorer_mounts(self, request: EvalRequest) -> list[docker.types.Mount]:
        """What the scorer sees: code, training and validation data, the held-out test split when the
        request asks for it, the checkpoint (read-only), and its output folder."""
        paths = request.paths
        mounts = [
            _bind(paths.code, CODE_DIR, read_only=True),
            self._data_mount(self.settings.train_data, DATA_DIR),
            self._data_mount(self.settings.val_data, VAL_DIR),
            _bind(paths.checkpoint, CKPT_DIR, read_only=True),
            _bind(paths.eval_out, EVAL_OUT_DIR, read_only=False),
        ]
        if request.score_test:
            if not self.settings.test_data:
                raise SandboxUnavailable(
                    "asked to score the held-out test split, but no test_data is configured"
                )
            mounts.append(self._data_mount(self.settings.test_data, TEST_DIR))
        return mounts

    def environment(self) -> Environment:
        """GPU model, driver and a hash of the trainer image's software (Python, torch, CUDA,
        packages), measured once per image id by a short probe container. The hash is of the
        content, so the same build on two hosts gives the same hash although image ids differ."""
        image_id = self._image_id()
        cached = self._environments.get(image_id)
        if cached is None:
            cached = self._probe_environment()
            self._environments[image_id] = cached
        return cached

    def fixed_files(self) -> FixedFiles:
        """The trusted scorer's hashes of the image's fixed files and the data (`evaluate.py
        --hash-only`), in a probe container that mounts the data read-only and nothing of any run:
        no candidate code is near it. Measured once per image id, like the environment."""
        image_id = self._image_id()
        cached = self._fixed_files.get(image_id)
        if cached is None:
            cached = self._probe_fixed_files()
            self._fixed_files[image_id] = cached
        return cached

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until the Docker daemon answers a ping on a new connection, at most `timeout_s`;
        True if it does. Kept-alive connections are dropped first: a daemon that is shutting down
        has closed its socket to new connections but still answers on open ones."""
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(READY_POLL_S, max(0.0, deadline - time.monotonic())))
        return True

    def _answers(self) -> bool:
        try:
            client = self._docker()
            client.api.close()  # a requests session stays usable: the next call connects anew
            return bool(client.ping())
        except (SandboxUnavailable, docker.errors.DockerException, OSError):
            return False

    def remove_strays(self) -> list[str]:
        """Force-remove every container labelled with this sandbox's `owner` (left by an earlier
        life of the same worker that died mid-step); returns their names. Call it on start."""
        if not self.owner:
            raise ValueError("remove_strays needs an owner: DockerSandbox(..., owner=<worker name>)")
        removed: list[str] = []
        with _translated("docker failed removing stray containers"):
            selectors = [f"{LABEL_MANAGED}=1", f"{LABEL_OWNER}={self.owner}"]
            for stray in self._docker().containers.list(all=True, filters={"label": selectors}):
                _remove(stray)
                removed.append(str(stray.name))
        return removed

    def close(self) -> None:
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None

    def __enter__(self) -> DockerSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------
    # One container: create, start, supervise, collect the outcome, remove

    def _run(self, step: _Step) -> StepOutcome:
        with _translated(f"docker failed running {step.name}"):
            t0 = time.monotonic()
            container = self._create(step)
            t1 = time.monotonic()
            try:
                outcome = self._start_and_supervise(container, step)
            finally:
                t2 = time.monotonic()
                _remove(container)
                log.info(
                    "container %s: created in %.2f s, start to exit and logs %.2f s, removed in %.2f s",
                    step.name, t1 - t0, t2 - t1, time.monotonic() - t2,
                )  # fmt: skip
            return outcome

    def _start_and_supervise(self, container: Any, step: _Step) -> StepOutcome:
        stream = container.attach(stdout=True, stderr=True, stream=True, logs=False)
        sink = None
        proposal_id = step.labels.get(LABEL_PROPOSAL)
        if self.log_sink is not None and proposal_id and step.live_log:
            sink = functools.partial(self.log_sink, proposal_id)
        logs = _LogTail(stream, self.settings.max_log_bytes, sink)
        try:
            started_unix = time.time()
            container.start()
            started = time.monotonic()
            exited = self._waiter(container)
            timed_out, killed_reason = self._supervise(container, step, exited)
            if not exited.wait(STOP_TIMEOUT_S):
                raise SandboxUnavailable(f"{step.name} did not stop within {STOP_TIMEOUT_S} s of SIGKILL")
            duration_s = time.monotonic() - started
            state = container.client.api.inspect_container(container.id)["State"]
            if state.get("Running"):  # the wait call broke, not the container: the daemon went away
                raise SandboxUnavailable(f"lost the wait on {step.name} while it still ran (daemon restart?)")
            outside = ""
            if step.outside_stop_is_infra and not timed_out and not killed_reason:
                outside = _signals_from_outside(container, started_unix - EVENTS_SLACK_S)
            text, truncated = logs.finish(LOG_DRAIN_TIMEOUT_S)
        finally:
            logs.close()
        if step.log_path is not None:
            step.log_path.write_text(text, encoding="utf-8")
        if outside:
            raise SandboxUnavailable(
                f"{step.name} was stopped from outside the sandbox (signal {outside} through the Docker "
                "daemon: its shutdown or restart, or docker stop/kill); not the proposal's doing"
            )
        return StepOutcome(
            exit_code=state.get("ExitCode"),
            timed_out=timed_out,
            oom_killed=bool(state.get("OOMKilled")),
            log=text,
            log_truncated=truncated,
            duration_s=round(duration_s, 3),
            killed_reason=killed_reason,
        )

    def _supervise(self, container: Any, step: _Step, exited: threading.Event) -> tuple[bool, str]:
        """Wait for the container to exit, killing it at the deadline or when its writable folders
        outgrow the cap; once it has exited by itself, measure them once more (a tree written after
        the last poll must not escape). Returns (timed_out, killed_reason)."""
        while True:
            remaining_s = step.deadline_unix - time.time()
            if remaining_s <= 0:
                if _kill(container):
                    return True, step.budget_reason
                return False, self._over_output_cap(self._watched(step))  # it exited just before
            if exited.wait(min(self.poll_interval_s, remaining_s)):
                return False, self._over_output_cap(self._watched(step))
            over = self._over_output_cap(self._watched(step))
            if over:
                _kill(container)  # False if it exited meanwhile: over the cap all the same
                return False, over

    def _waiter(self, container: Any) -> threading.Event:
        """An event set when the container exits (or the wait call fails: inspect tells which)."""
        exited = threading.Event()
        api = container.client.api

        def wait() -> None:
            try:
                api.wait(container.id)
            except (OSError, docker.errors.DockerException):
                log.warning("waiting for container %s failed", container.name, exc_info=True)
            finally:
                exited.set()

        threading.Thread(target=wait, name="sandbox-wait", daemon=True).start()
        return exited

    def _watched(self, step: _Step) -> list[Path]:
        """The host folders the step can write: the output cap covers them all."""
        if self.scratch_mode == "bind" and step.scratch is not None:
            return [*step.watched, step.scratch]
        return step.watched

    def _over_output_cap(self, watched: Sequence[Path]) -> str:
        """Why the step's writable folders are over the cap ("" if they are not): folders.py walks
        them by descriptor, so every entry counts however deep, and one it cannot examine counts
        as a violation."""
        return over_cap(
            watched,
            max_bytes=self.settings.max_output_bytes,
            max_entries=self.max_output_files,
            max_depth=MAX_OUTPUT_DEPTH,
        )

    # ---------------------------------------------------------------------------------------------
    # Container configuration

    def _create(self, step: _Step) -> Any:
        kwargs = self._container_kwargs(step)
        containers = self._docker().containers
        try:
            return containers.create(**kwargs)
        except docker.errors.ImageNotFound as exc:
            raise _image_missing(self.settings.trainer_image) from exc
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: a container of that name is left over from a crash
                raise
        _remove_stray(containers, step.name)
        return containers.create(**kwargs)

    def _container_kwargs(self, step: _Step) -> dict[str, Any]:
        settings = self.settings
        backstop_s = math.ceil(step.deadline_unix - time.time() + settings.kill_grace_s)
        labels = {**step.labels, LABEL_OWNER: self.owner} if self.owner else step.labels
        tmpfs: dict[str, str] = {}
        mounts = list(step.mounts)
        if self.scratch_mode == "bind" and step.scratch is not None:
            mounts.append(_bind(step.scratch, "/tmp", read_only=False))
        else:
            tmpfs["/tmp"] = f"rw,exec,nosuid,nodev,size={settings.tmpfs_bytes},mode=1777"
        file_cap = settings.max_output_bytes  # RLIMIT_FSIZE, in bytes
        kwargs: dict[str, Any] = {
            "image": settings.trainer_image,
            "command": ["timeout", "--signal=KILL", f"{max(backstop_s, 1)}s", *step.command],
            "name": step.name,
            "labels": labels,
            "environment": {**self.extra_env, **step.environment},
            "user": SANDBOX_UID,
            "working_dir": "/tmp",
            "hostname": "sandbox",
            "network_mode": "none",
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "init": True,
            "ipc_mode": "private",
            "pids_limit": settings.container_pids_limit,
            "mem_limit": step.memory_bytes or settings.container_memory_bytes,
            "memswap_limit": step.memory_bytes or settings.container_memory_bytes,
            "oom_score_adj": OOM_SCORE_ADJ,
            "shm_size": SHM_BYTES,
            "tmpfs": tmpfs,
            "mounts": mounts,
            "ulimits": [
                docker.types.Ulimit(name="nofile", soft=NOFILE_LIMIT, hard=NOFILE_LIMIT),
                docker.types.Ulimit(name="fsize", soft=file_cap, hard=file_cap),
                docker.types.Ulimit(name="core", soft=0, hard=0),
            ],
            "log_config": docker.types.LogConfig(type="none"),
            "stdin_open": False,
            "tty": False,
        }
        if settings.container_cpus > 0:
            kwargs["nano_cpus"] = int(settings.container_cpus * 1e9)
        if step.step in ("eval", "model") and settings.eval_memlock_bytes > 0:  # page-locked logits slots
            memlock = settings.eval_memlock_bytes
            kwargs["ulimits"].append(docker.types.Ulimit(name="memlock", soft=memlock, hard=memlock))
        kwargs.update(self._gpu_kwargs(mounts))
        kwargs["mounts"] = [_on_host(mount, self.settings) for mount in mounts]
        return kwargs

    def _gpu_kwargs(self, mounts: list[docker.types.Mount]) -> dict[str, Any]:
        settings = self.settings
        if settings.gpu_mode == "nvidia":
            request = docker.types.DeviceRequest(device_ids=[settings.gpu_id], capabilities=[["gpu"]])
            return {"device_requests": [request]}
        if settings.gpu_mode == "devices":
            for spec in settings.gpu_host_mounts:
                host, _, target = spec.partition(":")
                mounts.append(_bind(Path(host), target or host, read_only=True))
            return {"devices": [f"{node}:{node}:rwm" for node in settings.gpu_device_nodes]}
        return {}

    def _data_mount(self, source: str, target: str) -> docker.types.Mount:
        """A read-only mount of a named volume or an absolute host path. A missing volume would be
        created empty by Docker; refuse instead, so a run never trains or scores on nothing."""
        if os.path.isabs(source):
            return _bind(Path(source), target, read_only=True)
        with _translated(f"docker failed looking up volume {source!r}"):
            try:
                self._docker().volumes.get(source)
            except docker.errors.NotFound as exc:
                raise SandboxUnavailable(
                    f"data volume {source!r} does not exist: run the prepare service first"
                ) from exc
        return docker.types.Mount(target=target, source=source, type="volume", read_only=True)

    def _docker(self) -> DockerClient:
        if self._client is None:
            with _translated("cannot reach the Docker daemon"):
                if self._base_url is None:
                    self._client = DockerClient.from_env()
                else:
                    self._client = DockerClient(base_url=self._base_url)
        return self._client

    # ---------------------------------------------------------------------------------------------
    # The environment fingerprint

    def _image_id(self) -> str:
        with _translated("docker failed inspecting the trainer image"):
            try:
                return str(self._docker().images.get(self.settings.trainer_image).id)
            except docker.errors.ImageNotFound as exc:
                raise _image_missing(self.settings.trainer_image) from exc

    def _probe_environment(self) -> Environment:
        probe = self._run_probe("environment probe", [self.python, "-c", _PROBE], [])
        digest = hashlib.sha256(json.dumps(probe["info"], sort_keys=True).encode()).hexdigest()
        if self.settings.gpu_mode == "none":
            cpu = str(probe.get("cpu") or "unknown")
            return Environment(gpu="cpu", driver="none", environment_hash=digest, cpu=cpu)
        if not probe.get("gpu"):
            raise SandboxUnavailable(f"no GPU visible in the sandbox (gpu_mode={self.settings.gpu_mode})")
        driver = str(probe.get("driver") or "unknown")
        return Environment(gpu=str(probe["gpu"]), driver=driver, environment_hash=digest)

    def _probe_fixed_files(self) -> FixedFiles:
        arguments = [self.evaluator, "--data-dir", DATA_DIR, "--val-dir", VAL_DIR]
        mounts = [
            self._data_mount(self.settings.train_data, DATA_DIR),
            self._data_mount(self.settings.val_data, VAL_DIR),
        ]
        if self.settings.test_data:  # hashed too: the runs that score it are compared with them
            arguments += ["--test-dir", TEST_DIR]
            mounts.append(self._data_mount(self.settings.test_data, TEST_DIR))
        probe = self._run_probe("fixed-files probe", [self.python, "-c", _HASH_PROBE, *arguments], mounts)
        if not isinstance(probe.get("fixed_hashes"), dict):
            raise SandboxUnavailable(f"fixed-files probe failed (no fixed_hashes in {str(probe)[:500]})")
        hashes = {str(k): str(v) for k, v in probe["fixed_hashes"].items()}
        return FixedFiles(evaluator_version=str(probe.get("evaluator_version", "")), hashes=hashes)

    def _run_probe(self, what: str, command: list[str], mounts: list[docker.types.Mount]) -> dict[str, Any]:
        """Run trusted code in a short container; its last output line is a JSON object."""
        step = _Step(
            name=f"ar-probe-{os.getpid()}-{time.time_ns()}",
            step="probe",
            command=command,
            environment=dict(_BASE_ENVIRONMENT),
            mounts=mounts,
            labels={LABEL_MANAGED: "1", LABEL_STEP: "probe"},
            deadline_unix=time.time() + PROBE_TIMEOUT_S,
            budget_reason=f"{what} exceeded {PROBE_TIMEOUT_S} s",
            memory_bytes=max(self.settings.container_memory_bytes, PROBE_MEMORY_BYTES),
        )
        outcome = self._run(step)
        lines = outcome.log.strip().splitlines()
        try:
            probe = json.loads(lines[-1]) if outcome.exit_code == 0 and lines else None
        except json.JSONDecodeError:
            probe = None
        if not isinstance(probe, dict):
            raise SandboxUnavailable(f"{what} failed (exit {outcome.exit_code}: {outcome.log[-500:]})")
        return probe


# -------------------------------------------------------------------------------------------------
# Helpers

_BASE_ENVIRONMENT = {"HOME": "/tmp", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _labels(proposal_id: str, run_id: str, step: str) -> dict[str, str]:
    return {LABEL_MANAGED: "1", LABEL_PROPOSAL: proposal_id, LABEL_RUN: run_id, LABEL_STEP: step}


def _bind(source: Path, target: str, *, read_only: bool) -> docker.types.Mount:
    return docker.types.Mount(target=target, source=str(source), type="bind", read_only=read_only)


def _image_missing(image: str) -> SandboxUnavailable:
    return SandboxUnavailable(f"trainer image {image!r} is missing: {BUILD_HINT} --trainer-only")


def _kill(container: Any) -> bool:
    """SIGKILL the container; False if it had already exited (Docker answers 409)."""
    try:
        container.kill()
    except docker.errors.APIError as exc:
        if exc.status_code in (404, 409):
            return False
        raise
    return True


def _signals_from_outside(container: Any, since_unix: float) -> str:
    """The signals the daemon sent the container since `since_unix` ("15, 9"), "" if none. Any kill
    through the daemon is recorded as a `kill` event before the container's exit is (the daemon holds
    the container's lock from signalling to recording), so one that ran to its end has none; a
    process inside the container that kills itself or tini sends no such event. Called only when
    this sandbox did not kill the container itself. Assumes the daemon shares the worker's clock
    (the daemon is local: one worker per GPU on the GPU's host)."""
    events = container.client.api.events(
        since=f"{since_unix:.9f}", until=f"{time.time():.9f}", decode=True,
        filters={"container": container.id, "event": "kill"},
    )  # fmt: skip
    signals = [str(e.get("Actor", {}).get("Attributes", {}).get("signal", "?")) for e in events]
    return ", ".join(signals)


def _remove(container: Any) -> None:
    """Remove a container whatever state it is in. A failure here is logged, not raised, so that it
    never hides the step's own outcome or error; the reaper removes what is left."""
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except (OSError, docker.errors.DockerException):
        log.warning("could not remove container %s; the reaper will", container.name, exc_info=True)


def _remove_stray(containers: Any, name: str) -> None:
    """Remove a managed container that holds `name` (left by a worker that died mid-run)."""
    try:
        stray = containers.get(name)
    except docker.errors.NotFound:
        return
    if stray.labels.get(LABEL_MANAGED) != "1":
        raise SandboxUnavailable(f"container name {name!r} is taken by a container not managed here")
    log.warning("removing stray container %s", name)
    stray.remove(force=True)


def _fresh_folder(folder: Path) -> None:
    """An empty folder writable by the sandbox user (whatever an earlier attempt left is removed,
    by descriptor, without following links)."""
    failed = remove_tree(folder)
    if failed:
        raise SandboxUnavailable(f"cannot make a fresh {folder.name} folder: {failed}")
    folder.mkdir()
    os.chmod(folder, 0o777)


def _empty_folder(folder: Path) -> None:
    """Delete what is inside `folder`, by descriptor, without following links."""
    failed = empty_folder(folder)
    if failed:
        raise SandboxUnavailable(f"cannot empty the {folder.name} folder: {failed}")


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """The one boundary where Docker's exceptions (and the connection errors of requests, which
    are OSErrors) become `SandboxUnavailable`."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise SandboxUnavailable(f"{what}: image missing ({exc}); {BUILD_HINT}") from exc
    except (docker.errors.DockerException, OSError) as exc:
        raise SandboxUnavailable(f"{what}: {exc}") from exc


# -------------------------------------------------------------------------------------------------
# A worker in a container (compose): its settings as the host's engine sees them

COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_VOLUME_LABEL = "com.docker.compose.volume"
DATA_VOLUME_SETTINGS = ("train_data", "val_data", "test_data")  # settings that may name a compose volume key
_CONTAINER_ID_IN_MOUNTINFO = re.compile(r"/containers/([0-9a-f]{64})/")


def resolve_for_host(
    settings: SandboxSettings, client: DockerClient | None = None, container_id: str | None = None
) -> SandboxSettings:
    """Settings of a worker running in a container (`container_id`, else its own, found from
    /proc/self/mountinfo), translated to what the host's engine sees: `runs_host_dir` is where the
    container's mount at `runs_dir` lies on the host (a named volume's mountpoint), and a data
    setting naming a volume key of the container's compose project ("train-data") becomes that
    project's volume, so stacks on one host never share one. Outside a container: unchanged."""
    container_id = container_id or _own_container_id()
    if container_id is None:
        return settings
    if client is None:
        with _translated("cannot reach the Docker daemon"):
            client = DockerClient.from_env()
        with contextlib.closing(client):
            return resolve_for_host(settings, client, container_id)
    with _translated("docker failed inspecting the worker's own container"):
        try:
            attrs = client.api.inspect_container(container_id)
        except docker.errors.NotFound:  # a container of another engine (the host is one itself)
            return settings
    update: dict[str, Any] = {}
    runs_source = _mount_source(attrs, settings.runs_dir)
    if runs_source is not None and runs_source != settings.runs_dir:
        update["runs_host_dir"] = runs_source
    project = str((attrs.get("Config", {}).get("Labels") or {}).get(COMPOSE_PROJECT_LABEL) or "")
    for name in DATA_VOLUME_SETTINGS if project else ():
        volume = _compose_volume(client, project, getattr(settings, name))
        if volume is not None:
            update[name] = volume
    return settings.model_copy(update=update) if update else settings


def _own_container_id() -> str | None:
    try:  # Docker bind-mounts /etc/hostname and friends from /var/lib/docker/containers/<id>/
        found = _CONTAINER_ID_IN_MOUNTINFO.search(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return None
    return found.group(1) if found else None


def _mount_source(attrs: Mapping[str, Any], destination: Path) -> Path | None:
    for mount in attrs.get("Mounts") or []:
        if Path(mount.get("Destination", "")) == destination and mount.get("Source"):
            return Path(mount["Source"])
    return None


def _compose_volume(client: DockerClient, project: str, key: str) -> str | None:
    labels = [f"{COMPOSE_PROJECT_LABEL}={project}", f"{COMPOSE_VOLUME_LABEL}={key}"]
    with _translated("docker failed listing the compose project's volumes"):
        volumes = client.volumes.list(filters={"label": labels})
    return str(volumes[0].name) if len(volumes) == 1 else None


def _on_host(mount: docker.types.Mount, settings: SandboxSettings) -> docker.types.Mount:
    """A bind mount of a run folder, its source moved from the worker's runs_dir to the host's."""
    if settings.runs_host_dir is None or mount.get("Type") != "bind":
        return mount
    source = Path(mount["Source"])
    if not source.is_relative_to(settings.runs_dir):
        return mount
    host_source = settings.runs_host_dir / source.relative_to(settings.runs_dir)
    return _bind(host_source, mount["Target"], read_only=bool(mount.get("ReadOnly")))
