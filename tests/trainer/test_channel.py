"""The logits channel between evaluate.py --channel and model_server.py (docs/evaluation.md, "The
channel"), without Docker: the real files as subprocesses, or a hostile model server in a thread."""

from __future__ import annotations

import json
import resource
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tests.support.trainer import TRAINER, run_evaluate
from trainer import channel as channel_module
from trainer import evaluate

VOCAB = 16


def limit_file_size(limit_bytes: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))


def start_model_server(sock: Path, train_py: Path, checkpoint: Path) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        str(TRAINER / "model_server.py"),
        "--socket",
        str(sock),
        "--train-py",
        str(train_py),
    ]
    command += ["--checkpoint", str(checkpoint), "--device", "cpu", "--connect-timeout", "60"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_channel_scores_what_the_in_process_scorer_scores(tmp_path, prepared, tiny_checkpoint):
    """The real model_server.py twice, evaluate.py --channel under a 1 MiB file-size cap (so each
    16 MiB slot is split into 16 memory files): the same score as the model imported in-process."""
    train_dir, val_dir = prepared
    train_py = TRAINER / "train.py"
    inline = run_evaluate(
        train_py, tiny_checkpoint, train_dir, val_dir, tmp_path / "inline.json", "--seed", "3"
    )
    assert inline.returncode == 0, inline.stderr
    channel = tmp_path / "channel"
    servers = [
        start_model_server(channel / name / "model.sock", train_py, tiny_checkpoint) for name in ("a", "b")
    ]
    try:
        scorer = subprocess.run(
            [sys.executable, str(TRAINER / "evaluate.py"), "--channel", str(channel), "--train-py", str(train_py),
             "--checkpoint", str(tiny_checkpoint), "--data-dir", str(train_dir), "--val-dir", str(val_dir),
             "--out", str(tmp_path / "channel.json"), "--device", "cpu", "--seed", "3", "--connect-timeout", "60",
             "--reply-timeout", "60"],
            capture_output=True, text=True, timeout=600, preexec_fn=limit_file_size(1 << 20),
        )  # fmt: skip
    finally:
        outputs = [server.communicate(timeout=300)[0] for server in servers]
    assert scorer.returncode == 0, scorer.stderr + "".join(outputs)
    inline_result = json.loads((tmp_path / "inline.json").read_text())
    channel_result = json.loads((tmp_path / "channel.json").read_text())
    assert channel_result["isolation"] == "model container"
    assert channel_result["evaluator_version"] == evaluate.EVALUATOR_VERSION
    assert channel_result["val_bytes"] == inline_result["val_bytes"]
    assert channel_result["val_bpb"] == pytest.approx(inline_result["val_bpb"], rel=1e-6)
    assert channel_result["probes"]["max_logprob_diff"] <= 1e-5
    assert channel_result["logits_slots"] == "host memory (pageable)"
    timings = channel_result["timings"]
    steps = (
        "startup_s",
        "data_s",
        "hash_s",
        "slots_s",
        "models_ready_s",
        "share_s",
        "passes_s",
        "scored_pass_s",
    )
    assert all(timings[name] >= 0 for name in steps)
    assert timings["scored_pass_s"] + timings["probe_pass_s"] <= timings["passes_s"] + 0.01
    assert timings["scored_wait_s"] + timings["scored_copy_s"] <= timings["scored_pass_s"] + 0.01
    assert "eval_timings: startup_s=" in scorer.stdout


def test_channel_scores_the_test_split_as_the_in_process_scorer_does(
    tmp_path, prepared, prepared_test, tiny_checkpoint
):
    """--test-dir through the channel: the test rows go to the same model server in the same batches
    as the validation rows, and both splits score what the in-process scorer gives them."""
    train_dir, val_dir = prepared
    train_py = TRAINER / "train.py"
    extra = ("--seed", "6", "--batch-size", "2", "--test-dir", str(prepared_test))
    inline = run_evaluate(train_py, tiny_checkpoint, train_dir, val_dir, tmp_path / "inline.json", *extra)
    assert inline.returncode == 0, inline.stderr
    channel = tmp_path / "channel"
    servers = [
        start_model_server(channel / name / "model.sock", train_py, tiny_checkpoint) for name in ("a", "b")
    ]
    try:
        scorer = subprocess.run(
            [sys.executable, str(TRAINER / "evaluate.py"), "--channel", str(channel), "--train-py", str(train_py),
             "--checkpoint", str(tiny_checkpoint), "--data-dir", str(train_dir), "--val-dir", str(val_dir),
             "--out", str(tmp_path / "channel.json"), "--device", "cpu", "--connect-timeout", "60",
             "--reply-timeout", "60", *extra],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        outputs = [server.communicate(timeout=300)[0] for server in servers]
    assert scorer.returncode == 0, scorer.stderr + "".join(outputs)
    inline_result = json.loads((tmp_path / "inline.json").read_text())
    channel_result = json.loads((tmp_path / "channel.json").read_text())
    for split in ("val", "test"):
        assert channel_result[f"{split}_bytes"] == inline_result[f"{split}_bytes"]
        assert channel_result[f"{split}_tokens"] == inline_result[f"{split}_tokens"]
        assert channel_result[f"{split}_bpb"] == pytest.approx(inline_result[f"{split}_bpb"], rel=1e-6)
    assert channel_result["probes"]["max_logprob_diff"] <= 1e-5
    assert "test" not in scorer.stdout + scorer.stderr


def test_a_refused_offer_of_gpu_slots_is_followed_by_host_memory(tmp_path, tiny_checkpoint, capsys) -> None:
    """The real model_server.py on the CPU cannot map GPU slots: it refuses the offer and says why
    (the scorer logs it), accepts the memory files offered next, and its logits arrive through them."""
    sock_path = tmp_path / "c" / "model.sock"
    listener = channel_module.listen(sock_path)
    server = start_model_server(sock_path, TRAINER / "train.py", tiny_checkpoint)
    vocab = json.loads((tiny_checkpoint / "run.json").read_text())["config"]["vocab_size"]
    inputs = torch.randint(0, vocab, (2, 8))
    try:
        channel = channel_module.ModelChannel(channel_module.accept(listener, "a", 60), "a", timeout_s=60)
        channel.wait_ready()
        offered = channel_module.SharedSlots(2 * 8 * vocab * 4, "cpu")
        offered.kind = "cuda"  # what the scorer offers on a GPU; the server's device is the CPU
        slots = channel.open_slots(2 * 8 * vocab * 4, "cpu", offered)  # refused, then host memory
        assert channel.slots is slots and slots.describe() == "host memory (pageable)"
        assert offered.fds == [] and offered.chunks == []  # the refused offer is closed
        assert "refused GPU memory (ValueError('GPU buffers for a model on cpu'))" in capsys.readouterr().out
        logits = channel.forward(inputs, vocab)
        assert logits.shape == (2, 8, vocab) and bool(torch.isfinite(logits).all())
        channel.close()
    finally:
        output = server.communicate(timeout=300)[0]
    assert server.returncode == 0, output


# ---------------------------------------------------------------------------------------------------
# A hostile model server in a thread, speaking the protocol by hand


def send(sock: socket.socket, header: dict) -> None:
    data = json.dumps(header).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "scorer closed the channel"
        data += chunk
    return data


def recv(sock: socket.socket) -> dict:
    (length,) = struct.unpack(">I", recv_exact(sock, 4))
    header = json.loads(recv_exact(sock, length))
    recv_exact(sock, int(header.get("nbytes", 0)))
    return header


class HostileServer:
    """Says ready, maps its slots (one file each here), then answers one forward request with
    `reply(request, slot tensors)`; afterwards `scribble()` overwrites every slot with NaN."""

    def __init__(self, sock: socket.socket, reply: Callable[[dict, list[torch.Tensor]], dict]) -> None:
        self.sock, self.reply = sock, reply
        self.slots: list[torch.Tensor] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import mmap

        send(self.sock, {"ready": True})
        data, fds, _, _ = socket.recv_fds(self.sock, 4, 64)
        (length,) = struct.unpack(">I", data + recv_exact(self.sock, 4 - len(data)))
        layout = json.loads(recv_exact(self.sock, length))["slots"]
        for (size,), fd in zip(layout, fds, strict=True):
            self.slots.append(torch.frombuffer(mmap.mmap(fd, size), dtype=torch.float32))
        send(self.sock, {"buffers": "ok"})
        send(self.sock, self.reply(recv(self.sock), self.slots))

    def scribble(self) -> None:
        for slot in self.slots:
            slot.fill_(float("nan"))


@pytest.fixture
def hostile() -> Iterator[Callable[..., tuple[channel_module.ModelChannel, HostileServer]]]:
    made: list[tuple[channel_module.ModelChannel, HostileServer]] = []

    def make(
        reply: Callable[[dict, list[torch.Tensor]], dict],
    ) -> tuple[channel_module.ModelChannel, HostileServer]:
        ours, theirs = socket.socketpair()
        channel = channel_module.ModelChannel(ours, "x", timeout_s=10)
        server = HostileServer(theirs, reply)
        channel.wait_ready()
        assert channel.share(channel_module.SharedSlots(2 * 3 * VOCAB * 4, "cpu")) is None
        made.append((channel, server))
        return channel, server

    yield make
    for channel, server in made:
        channel.close()
        server.thread.join(5)
        server.sock.close()


def honest(request: dict, slots: list[torch.Tensor]) -> dict:
    shape = [*request["shape"], VOCAB]
    slots[request["slot"]][: 2 * 3 * VOCAB] = torch.arange(2 * 3 * VOCAB, dtype=torch.float32)
    return {"shape": shape, "dtype": "float32", "nbytes": 2 * 3 * VOCAB * 4, "slot": request["slot"]}


def test_the_scorer_reads_its_own_copy_not_the_shared_slot(hostile) -> None:
    """What the model writes into its slot after replying never reaches the scorer's logits."""
    channel, server = hostile(honest)
    logits = channel.forward(torch.zeros(2, 3, dtype=torch.int64), VOCAB)
    server.thread.join(5)
    server.scribble()
    assert bool(torch.isnan(server.slots[0]).all())
    assert logits.dtype == torch.float32 and logits.shape == (2, 3, VOCAB)
    assert torch.equal(logits.flatten(), torch.arange(2 * 3 * VOCAB, dtype=torch.float32))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"slot": 1}, "protocol violation (slot 1; want 0)"),
        ({"nbytes": 1 << 40}, "protocol violation (1099511627776 bytes"),
        ({"shape": [2, 3, VOCAB - 1]}, "logits have shape"),
        ({"dtype": "int8"}, "logits have dtype"),
    ],
)
def test_a_reply_that_does_not_match_the_request_is_voided(hostile, change: dict, reason: str) -> None:
    channel, _ = hostile(lambda request, slots: {**honest(request, slots), **change})
    with pytest.raises(channel_module.Voided, match=reason.replace("(", r"\(").replace(")", r"\)")):
        channel.forward(torch.zeros(2, 3, dtype=torch.int64), VOCAB)


def test_a_server_that_does_not_answer_the_offer_of_slots_is_voided() -> None:
    ours, theirs = socket.socketpair()
    channel = channel_module.ModelChannel(ours, "x", timeout_s=10)
    send(theirs, {"ready": True})
    channel.wait_ready()
    send(theirs, {"shape": [2, 3, VOCAB], "dtype": "float32", "nbytes": 0, "slot": 0})
    slots = channel_module.SharedSlots(2 * 3 * VOCAB * 4, "cpu")
    with pytest.raises(channel_module.Voided, match="protocol violation \\(no answer to the buffers\\)"):
        channel.share(slots)
    slots.close()
    ours.close()
    theirs.close()


def test_slots_are_sealed_memory_files_split_under_the_file_size_cap(tmp_path: Path) -> None:
    """Run in a child process with RLIMIT_FSIZE at 64 KiB: a 200 KiB slot becomes 4 files, each
    sealed against shrinking and growing, so the model cannot truncate a mapping under the scorer."""
    code = f"""
import fcntl, os, sys
sys.path.insert(0, {str(TRAINER.parent)!r})
from trainer import channel as channel_module
slots = channel_module.SharedSlots(200 * 1024, "cpu")
seals = fcntl.fcntl(slots.fds[0], fcntl.F_GET_SEALS)
need = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
try:
    os.ftruncate(slots.fds[0], 4096)
    shrunk = True
except PermissionError:
    shrunk = False
print(slots.layout, len(slots.fds), seals & need == need, shrunk)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit_file_size(64 << 10),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("]]")[1].split() == ["8", "True", "False"]
    assert proc.stdout.startswith("[[65536, 65536, 65536, 8192], [65536, 65536, 65536, 8192]]")
