"""Throughput of the evaluation's logits channel (docs/evaluation.md, "The channel"): how fast the
candidate's logits [B, T, V] get from a model server to the scorer, and what that means for a
full evaluation of the validation set.

    .venv/bin/python bench/eval_channel.py [--label NAME] [--device cpu|cuda] [--batch-size 4]
                                           [--rows 48] [--vocab 8192] [--dtypes float32,bfloat16]

No Docker: the real trainer/model_server.py runs as subprocesses (as in the model containers) with
a stand-in candidate whose model is a lookup table (logits[b, t] = table[token[b, t]]: causal,
deterministic, about one memory copy of work per batch), and this process is the scorer, using
evaluate.py's own channel code. Three figures per wire dtype:

  socket_ceiling   raw bytes through one Unix socket between two processes (one batch's size per
                   message, sendall / recv_into a preallocated buffer): the most any socket design
                   gets on this machine
  transport        ModelChannel.forward alone, one batch after another: logits checked and
                   received, ready for the scorer's math
  scored_pass      evaluate.score_remote on synthetic rows: the scored pass and the probe pass on
                   two model servers, log_softmax, finiteness, gathers and the probe comparison
                   (what the worker's evaluation does, minus tokenizing)

GB/s counts logits bytes in the wire dtype (10^9 bytes per second). `full_set_s` projects the
scored pass to the full validation set (FULL_SET_TOKENS target tokens plus ~4% probe rows). Results
go to bench/results/eval-channel.json under `runs.<label>` (other labels already there are kept,
so a before/after pair lives in one file) with the raw log in bench/results/logs/.

The `*-before` runs measured evaluator 2 (logits through the socket), the trainer files of commit
eff643a, taken out with `git show eff643a:trainer/<name>.py > <dir>/<name>.py` for evaluate.py,
model_server.py and prepare.py and passed as `--trainer <dir>`; the `*-after` runs evaluator 3;
`h100-gpu-slots` evaluator 4 as the scorer runs it (GPU memory slots on CUDA) and `h100-host-slots-v4`
the same code with `--slots host` (memory files, as evaluator 3). On the H100: `--device cuda
--batch-size 32 --rows 192 --dtypes float32` (the scorer's batch size on CUDA).
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import RESULTS, machine  # noqa: E402

evaluate: Any = None  # evaluate.py of --trainer, loaded by main()

NAME = "eval-channel"
FULL_SET_TOKENS = 2_900_000  # target tokens of val.jsonl.xz under the protocol (vocab 8192)
PROBE_SHARE = 1 / 25  # the probe pass's rows per scored row (evaluate.make_probes)
SERVER_START_S = 120.0

CANDIDATE = """
import torch

class Table(torch.nn.Module):
    \"\"\"logits[b, t] = table[token[b, t]]: causal, deterministic, one gather per batch.\"\"\"

    def __init__(self, vocab_size, dtype):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))
        generator = torch.Generator().manual_seed(0)
        table = torch.randn(vocab_size, vocab_size, generator=generator) * 3
        self.register_buffer("table", table.to(getattr(torch, dtype)), persistent=False)

    def forward(self, idx):
        return self.table[idx]

def build_model(config):
    return Table(config["vocab_size"], config["dtype"])
"""

LOG: list[str] = []
SETUP: dict[str, float] = {}  # the last model_servers' share() and its first batch, in seconds
SLOTS = {"want": "auto", "got": ""}  # --slots, and where the last model_servers' slots are


def say(line: str) -> None:
    print(line, flush=True)
    LOG.append(line)


# ---------------------------------------------------------------------------------------------------
# The pieces: a candidate checkpoint, model servers, the raw socket


def write_candidate(folder: Path, vocab: int, dtype: str) -> tuple[Path, Path]:
    from safetensors.torch import save_model

    train_py = folder / "train.py"
    train_py.write_text(CANDIDATE)
    checkpoint = folder / "ckpt"
    checkpoint.mkdir()
    module = torch.nn.Module()
    module.unused = torch.nn.Parameter(torch.zeros(()))
    save_model(module, str(checkpoint / "model.safetensors"))
    (checkpoint / "run.json").write_text(json.dumps({"config": {"vocab_size": vocab, "dtype": dtype}}))
    return train_py, checkpoint


def load_evaluate(trainer: Path) -> Any:
    spec = importlib.util.spec_from_file_location("bench_evaluate", trainer / "evaluate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    for part in ("channel", "protocol"):  # evaluator 6 on: the other two fixed files, one namespace
        for name, value in vars(getattr(module, part, object)).items():
            if not name.startswith("_") and not hasattr(module, name):
                setattr(module, name, value)
    return module


def start_server(sock: Path, train_py: Path, checkpoint: Path, device: str) -> "subprocess.Popen[str]":
    command = [sys.executable, str(Path(evaluate.__file__).parent / "model_server.py"), "--socket", str(sock)]
    command += ["--train-py", str(train_py), "--checkpoint", str(checkpoint), "--device", device]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@contextmanager
def model_servers(
    folder: Path, names: list[str], train_py: Path, checkpoint: Path, device: str, slot_bytes: int
) -> Iterator[list[Any]]:
    """The real model_server.py, one subprocess per name, each connected to its own socket."""
    listeners = {name: evaluate.listen(folder / name / "model.sock") for name in names}
    procs = [start_server(folder / name / "model.sock", train_py, checkpoint, device) for name in names]
    channels = []
    try:
        for name, listener in listeners.items():
            conn = evaluate.accept(listener, name, SERVER_START_S)
            channels.append(evaluate.ModelChannel(conn, name, SERVER_START_S))
        for channel in channels:
            channel.wait_ready()
        started = time.perf_counter()
        if hasattr(evaluate, "DeviceSlots") and SLOTS["want"] == "auto":  # evaluator 4: GPU memory on CUDA
            SLOTS["got"] = " and ".join(
                sorted({c.open_slots(slot_bytes, device).describe() for c in channels})
            )
        elif hasattr(evaluate, "SharedSlots"):  # evaluator 3: logits through shared memory slots
            for channel in channels:
                slots = evaluate.SharedSlots(slot_bytes, device)
                channel.share(slots)
                SLOTS["got"] = slots.describe() if hasattr(slots, "describe") else "host memory"
        else:
            SLOTS["got"] = "socket"
        SETUP["share_s"] = time.perf_counter() - started
        yield channels
    finally:
        for channel in channels:
            channel.close()
        for proc in procs:
            try:
                output, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
            if output.strip():
                say(f"  model server output: {output.strip()[-500:]}")


def socket_ceiling(nbytes: int, repeats: int) -> float:
    """GB/s of `repeats` messages of `nbytes` through a Unix socket pair, sender in a child process."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the sender: one buffer, sent whole each time
        parent.close()
        payload = memoryview(bytearray(os.urandom(1 << 20)) * (nbytes >> 20))
        for _ in range(repeats + 1):
            child.sendall(payload)
        child.close()
        os._exit(0)
    child.close()
    buffer = bytearray((nbytes >> 20) << 20)
    view = memoryview(buffer)

    def receive() -> None:
        got = 0
        while got < len(buffer):
            got += parent.recv_into(view[got:], len(buffer) - got)

    receive()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        receive()
    elapsed = time.perf_counter() - started
    os.waitpid(pid, 0)
    parent.close()
    return len(buffer) * repeats / elapsed / 1e9


# ---------------------------------------------------------------------------------------------------
# Measurements


def synthetic_rows(count: int, vocab: int, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab - 1, size=(count, evaluate.ROW_TOKENS), dtype=np.int64)
    tokens[:, 0] = vocab - 1  # BOS
    mask = np.ones((count, evaluate.ROW_TOKENS - 1), dtype=bool)
    return evaluate.Rows(tokens, mask, np.zeros(count, dtype=np.int64))


def transport(channel: Any, rows: Any, batch_size: int, vocab: int, device: str) -> float:
    """Seconds for the logits of all rows to reach the scorer's own memory on `device`, batch by
    batch as the scored pass asks for them (after one warm-up batch); no scoring."""
    tokens = torch.from_numpy(rows.tokens[:, :-1])
    batches = [tokens[start : start + batch_size] for start in range(0, len(tokens), batch_size)]
    started = time.perf_counter()
    channel.forward(batches[0], vocab, *([device] if hasattr(channel, "stream") else []))
    SETUP["first_batch_s"] = time.perf_counter() - started
    started = time.perf_counter()
    if hasattr(channel, "stream"):
        for logits in channel.stream(batches, vocab, device):
            del logits
    else:  # evaluator 2: float32 on the CPU, moved to the device by the scorer's math
        for batch in batches:
            channel.forward(batch, vocab).to(device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def scored_pass(
    channels: list[Any], rows: Any, batch_size: int, vocab: int, device: str
) -> tuple[float, dict[str, object]]:
    byte_lengths = np.ones(vocab, dtype=np.int64)
    byte_lengths[-1] = 0
    started = time.perf_counter()
    scored = evaluate.score_remote(channels, rows, byte_lengths, batch_size, device, seed=1, tolerance=1e-3)
    return time.perf_counter() - started, scored


def measure(dtype: str, args: argparse.Namespace, work: Path) -> dict[str, object]:
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    batch_bytes = args.batch_size * (evaluate.ROW_TOKENS - 1) * args.vocab * itemsize
    folder = work / dtype
    folder.mkdir()
    train_py, checkpoint = write_candidate(folder, args.vocab, dtype)
    rows = synthetic_rows(args.rows, args.vocab, seed=0)
    probe_rows = max(2 * args.batch_size, -(-args.rows // 25 // args.batch_size) * args.batch_size)
    row_bytes = (evaluate.ROW_TOKENS - 1) * args.vocab * itemsize
    figures: dict[str, object] = {"wire_dtype": dtype, "batch_bytes": batch_bytes}

    ceiling = socket_ceiling(batch_bytes, args.repeats)
    figures["socket_ceiling_gbps"] = round(ceiling, 2)
    say(f"{dtype}: socket ceiling {ceiling:.2f} GB/s ({batch_bytes / 1e6:.0f} MB messages)")

    slot_bytes = args.batch_size * (evaluate.ROW_TOKENS - 1) * args.vocab * 4
    with model_servers(folder / "t", ["a"], train_py, checkpoint, args.device, slot_bytes) as (channel,):
        seconds = transport(channel, rows, args.batch_size, args.vocab, args.device)
    gbps = args.rows * row_bytes / seconds / 1e9
    figures["transport_gbps"] = round(gbps, 2)
    figures["slots"] = SLOTS["got"]
    figures["setup_s"] = {name: round(value, 3) for name, value in SETUP.items()}
    say(f"{dtype}: transport {gbps:.2f} GB/s ({args.rows} rows in {seconds:.2f} s, slots in {SLOTS['got']})")
    say(f"{dtype}: slots created, pinned and handed over in {SETUP['share_s']:.2f} s (one server), first batch "
        f"(the server pins its side) {SETUP['first_batch_s']:.2f} s")  # fmt: skip

    with model_servers(folder / "s", ["a", "b"], train_py, checkpoint, args.device, slot_bytes) as channels:
        seconds, scored = scored_pass(channels, rows, args.batch_size, args.vocab, args.device)
    total_rows = args.rows + probe_rows
    gbps = total_rows * row_bytes / seconds / 1e9
    full_bytes = FULL_SET_TOKENS * (1 + PROBE_SHARE) * args.vocab * itemsize
    figures.update(
        scored_pass_gbps=round(gbps, 2),
        scored_pass_s=round(seconds, 3),
        scored_rows=args.rows,
        probe_rows=probe_rows,
        full_set_gb=round(full_bytes / 1e9, 1),
        full_set_s=round(full_bytes / (gbps * 1e9), 1),
        max_probe_logprob_diff=scored["probes"]["max_logprob_diff"],  # type: ignore[index]
    )
    say(
        f"{dtype}: scored pass {gbps:.2f} GB/s ({total_rows} rows incl. {probe_rows} probe rows in "
        f"{seconds:.2f} s) -> full set {full_bytes / 1e9:.0f} GB in ~{full_bytes / (gbps * 1e9):.0f} s"
    )
    return figures


def git_commit() -> str:
    """HEAD, and whether trainer/ differs from it ("unknown" outside a git checkout)."""
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "trainer"], cwd=ROOT).returncode
    return proc.stdout.strip() + ("+dirty trainer/" if dirty else "")


def write_results(label: str, run: dict[str, object]) -> Path:
    """bench/results/eval-channel.json keeps one entry per label; this run replaces its label's."""
    out = RESULTS / f"{NAME}.json"
    document = json.loads(out.read_text()) if out.exists() else {"benchmark": NAME, "runs": {}}
    (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / "logs" / f"{NAME}-{label}.log"
    log_path.write_text("\n".join(LOG) + "\n")
    document["runs"][label] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "processor": platform.processor() or platform.machine()},
        "raw_log": str(log_path.relative_to(ROOT)),
        **run,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="latest", help="key of this run in the results file")
    parser.add_argument("--device", default="cpu", help="where the model servers and the scorer's math run")
    parser.add_argument(
        "--batch-size", type=int, default=4, help="rows per batch (the scorer's default: 4 cpu, 32 cuda)"
    )
    parser.add_argument("--rows", type=int, default=48, help="scored rows per pass")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--dtypes", default="float32,bfloat16", help="wire dtypes (the model's output dtype)")
    parser.add_argument("--repeats", type=int, default=8, help="messages for the socket ceiling")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--slots", choices=["auto", "host"], default="auto",
        help="auto: what the scorer does (GPU memory on CUDA where it can); host: memory files always",
    )  # fmt: skip
    parser.add_argument(
        "--trainer",
        type=Path,
        default=ROOT / "trainer",
        help="folder of the evaluate.py and model_server.py to measure",
    )
    args = parser.parse_args()
    global evaluate
    evaluate = load_evaluate(args.trainer.resolve())
    SLOTS["want"] = args.slots
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
    say(f"eval-channel: {args.label}, commit {git_commit()}, device {gpu or args.device}, batch {args.batch_size}, "
        f"rows {args.rows}, vocab {args.vocab}, evaluator {evaluate.EVALUATOR_VERSION}")  # fmt: skip
    say(f"machine: {json.dumps(machine())}")
    with tempfile.TemporaryDirectory(prefix="eval-channel-") as tmp:
        per_dtype = {dtype: measure(dtype, args, Path(tmp)) for dtype in args.dtypes.split(",")}
    run = {
        "commit": git_commit(),
        "trainer": os.path.relpath(args.trainer, ROOT),
        "evaluator_version": evaluate.EVALUATOR_VERSION,
        "device": gpu or args.device,
        "batch_size": args.batch_size,
        "seq_len": evaluate.ROW_TOKENS - 1,
        "vocab": args.vocab,
        "full_set_tokens": FULL_SET_TOKENS,
        "results": per_dtype,
    }
    if not args.no_write:
        say(f"wrote {write_results(args.label, run)}")


if __name__ == "__main__":
    main()
