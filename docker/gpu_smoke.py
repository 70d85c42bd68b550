"""GPU smoke test of DockerSandbox on a GPU host without the NVIDIA container toolkit (gpu_mode=devices,
host /usr /etc /opt mounted read-only, an almost empty imported root filesystem; docs/gpu.md).
Prints JSON lines; writes $OUT/smoke.json (copied to bench/results/gpu-smoke.json). Ran on the H100 on
2026-11-24: GPU in a hardened container, tmpfs and bind scratch, warm compile cache, wall-clock kill.

Prepare on a machine with network (git-ignored folder docker/build/device/): a Docker engine bundle,
docker-bundle.tar.xz, holding dockerd, containerd, runc, docker-init and the libraries they need
under lib/ (for example unpacked from Debian's docker.io, containerd and runc packages), then:
    .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d docker/build/device/wheels \
        docker requests urllib3 idna certifi charset_normalizer pydantic pydantic-core pydantic-settings \
        python-dotenv typing-extensions typing-inspection annotated-types
Run on the GPU host, with docker/build/device/ copied there and /opt/torch/.venv its Python with torch:
    mkdir -p /tmp/dk && tar -xJf docker/build/device/docker-bundle.tar.xz -C /tmp/dk
    (PATH=/tmp/dk:$PATH LD_LIBRARY_PATH=/tmp/dk/lib setsid dockerd --iptables=false --ip-masq=false \
        --bridge=none --data-root /tmp/docker-data --exec-root /tmp/docker-exec \
        -H unix:///tmp/docker.sock >/tmp/dockerd.log 2>&1 </dev/null &)
    /opt/torch/.venv/bin/python -m pip install -q --no-index --find-links docker/build/device/wheels \
        --target /tmp/pylib docker pydantic-settings
    /opt/torch/.venv/bin/python docker/gpu_smoke.py
"""

import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path

sys.path[:0] = ["/tmp/pylib", os.getcwd()]

from docker.client import DockerClient  # noqa: E402

from services.settings import GIB, Settings  # noqa: E402
from services.worker.collect import collect_checkpoint, copy_cache, prepare_run_dir  # noqa: E402
from services.worker.docker_sandbox import DockerSandbox  # noqa: E402
from services.worker.sandbox import TrainRequest  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp/out"))
report: dict[str, object] = {}


def note(key: str, value: object) -> None:
    report[key] = value
    print(json.dumps({key: value}), flush=True)
    (OUT / "smoke.json").write_text(json.dumps(report, indent=1))


def rootfs_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        # sbin is a real folder: Docker mounts its init at /sbin/docker-init, which cannot go through a
        # symlink into the read-only host /usr.
        folders = ["usr", "etc", "opt", "dev", "proc", "sys", "tmp", "run", "var", "root", "sbin"]
        folders += ["code", "data", "out", "cache", "val", "ckpt", "eval-out"]
        for name in folders:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        for link, target in [
            ("bin", "usr/bin"),
            ("sbin/ldconfig", "/usr/sbin/ldconfig"),  # Triton runs /sbin/ldconfig -p to find libcuda
            ("sbin/ldconfig.real", "/usr/sbin/ldconfig.real"),  # Ubuntu's ldconfig is a wrapper script
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ]:
            info = tarfile.TarInfo(link)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


TRAIN_PY = r"""
import json, os, time, torch
t0 = time.time()
assert torch.cuda.is_available()
x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
torch.cuda.synchronize()
t = time.time()
for _ in range(20):
    y = x @ x
torch.cuda.synchronize()
tflops = 20 * 2 * 8192**3 / (time.time() - t) / 1e12
model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 512)).cuda()
compiled = torch.compile(model)
inp = torch.randn(64, 512, device="cuda")
t = time.time()
compiled(inp).sum().backward()
torch.cuda.synchronize()
compile_s = time.time() - t
open("/out/model.safetensors", "wb").write(b"x" * 100)
json.dump({"config": {}, "steps": 1}, open("/out/run.json", "w"))
print(json.dumps({"gpu": torch.cuda.get_device_name(0), "tflops": round(tflops, 1),
                  "compile_s": round(compile_s, 2), "total_s": round(time.time() - t0, 2),
                  "uid": os.getuid(), "deadline": os.environ["AR_DEADLINE_UNIX"]}))
"""


def main() -> None:
    client = DockerClient(base_url="unix:///tmp/docker.sock")
    for _ in range(60):
        try:
            client.ping()
            break
        except Exception:  # waiting for dockerd to come up
            time.sleep(1)
    client.api.import_image_from_data(rootfs_tar(), repository="hostbase", tag="1")
    python = "/opt/torch/.venv/bin/python"
    nodes = [
        p
        for p in ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
        if os.path.exists(p)
    ]
    mounts = ["/usr:/usr", "/etc:/etc", "/opt:/opt"]
    if os.path.isdir("/usr/local/nvidia"):
        mounts.append("/usr/local/nvidia:/usr/local/nvidia")
    data = Path("/tmp/smoke-data")
    data.mkdir(exist_ok=True)
    settings = Settings(
        trainer_image="hostbase:1",
        gpu_mode="devices",
        gpu_device_nodes=nodes,
        gpu_host_mounts=mounts,
        train_data=str(data),
        val_data=str(data),
        runs_dir=Path("/tmp/smoke-runs"),
        device="cuda",
        container_memory_bytes=64 * GIB,
        tmpfs_bytes=16 * GIB,
    )
    note(
        "devices",
        {"nodes": nodes, "mounts": mounts, "ld_library_path": os.environ.get("LD_LIBRARY_PATH", "")},
    )
    extra = {"LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH", "")}
    libcuda = next(
        (
            d
            for d in ("/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu")
            if os.path.exists(f"{d}/libcuda.so.1")
        ),
        None,
    )
    if libcuda:
        extra["TRITON_LIBCUDA_PATH"] = libcuda  # Triton then needs no ldconfig
    for mode in ("tmpfs", "bind"):
        group = settings.sandbox.model_copy(
            update={"scratch_mode": mode, "trainer_python": python, "sandbox_extra_env": extra}
        )
        sandbox = DockerSandbox(group, client)
        if mode == "bind":
            t = time.time()
            env = sandbox.environment()
            note(
                "environment",
                {
                    "gpu": env.gpu,
                    "driver": env.driver,
                    "hash": env.environment_hash[:16],
                    "probe_s": round(time.time() - t, 2),
                },
            )
        runs = []
        for i in range(2):
            paths = prepare_run_dir(settings.sandbox.runs_dir, f"{mode}{i}", TRAIN_PY)
            if i == 1:
                copy_cache(runs[0], paths)
            t = time.time()
            outcome = sandbox.train(
                TrainRequest(
                    run_id=f"{mode}{i}",
                    proposal_id="smoke",
                    paths=paths,
                    seed=1,
                    wall_clock_s=240,
                    preset="full",
                    device="cuda",
                )
            )
            wall = round(time.time() - t, 2)
            runs.append(paths)
            tail = outcome.log[-1500:]
            note(
                f"{mode} run {i} ({'warm cache' if i else 'cold'})",
                {
                    "exit": outcome.exit_code,
                    "timed_out": outcome.timed_out,
                    "oom": outcome.oom_killed,
                    "killed": outcome.killed_reason,
                    "step_s": outcome.duration_s,
                    "wall_s": wall,
                    "log": tail,
                },
            )
            if outcome.exit_code == 0:
                collect_checkpoint(paths, settings.runs.max_checkpoint_bytes)
            else:
                break
    t = time.time()
    bound = settings.sandbox.model_copy(
        update={"scratch_mode": "bind", "trainer_python": python, "sandbox_extra_env": extra}
    )
    outcome = DockerSandbox(bound, client).train(
        TrainRequest(
            run_id="sleeper",
            proposal_id="smoke",
            seed=1,
            wall_clock_s=5,
            preset="full",
            device="cuda",
            paths=prepare_run_dir(
                settings.sandbox.runs_dir,
                "sleeper",
                "import torch, time; torch.zeros(1, device='cuda'); time.sleep(60)",
            ),
        )
    )
    note(
        "gpu sleeper past 5 s",
        {
            "timed_out": outcome.timed_out,
            "exit": outcome.exit_code,
            "wall_s": round(time.time() - t, 2),
            "left": len(client.containers.list(all=True)),
        },
    )


if __name__ == "__main__":
    main()
