"""No byte of evaluation reaches an agent: the property, not one attack.

Each test submits, with one agent token, a model whose code, while it is handed validation rows in
the evaluation, decodes them to text and sends that text (behind a marker that appears nowhere in
its source) out through one channel: stdout and stderr, every file it can reach, the error of a
forward pass, its logits' shape or dtype, its exit, or its timing. A second agent token then reads
every GET route the API has (the live log and event streams included; the repository bundle cloned
and searched commit by commit, note by note), every read-only MCP tool and resource at /mcp, and every
key in Redis and
every ref and note in the research repository is searched too. Neither the marker nor a piece of the
validation text may be found. Admins still see the full-precision score and the scorer's timings.
"""

import json
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import mcp_wire
from tests.support.hostile import MODEL_TRAIN_PY, Harness

pytestmark = pytest.mark.docker

MARKER = "CAN" + "ARY<"  # never written whole in a train.py below

LEAKY_MODEL = """

import importlib.util as _ilu
import math as _math
import sys as _sys
import time as _time

import torch as _torch

CHANNEL = "@CHANNEL@"
_spec = _ilu.spec_from_file_location("scorer_copy", "/opt/autoresearch/trainer/evaluate.py")
_scorer = _ilu.module_from_spec(_spec)
_sys.modules["scorer_copy"] = _scorer  # its dataclasses look their module up there
_spec.loader.exec_module(_scorer)
_ENCODING, _BOS, _ = _scorer.protocol.load_tokenizer("/data/tokenizer.json")


def _rows_text(idx):
    return "".join(_ENCODING.decode([t for t in row if t != _BOS]) for row in idx.tolist())


class Leaky(_torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.table = _torch.nn.Embedding(vocab, vocab)

    def forward(self, idx):
        text = _rows_text(idx)
        canary = "CAN" + "ARY<" + text + ">"
        logits = self.table(idx)
        if CHANNEL == "print":
            print(canary, flush=True)
            print(canary, file=_sys.stderr, flush=True)
            for path in ("/tmp/leak.txt", "/dev/shm/leak.txt", "leak.txt", "/out/leak.txt", "/eval-out/leak.txt",
                         "/channel/leak.txt", "/ckpt/leak.txt", "/code/leak.txt", "/data/leak.txt"):
                try:
                    with open(path, "a") as f:
                        f.write(canary)
                except OSError:
                    pass
        elif CHANNEL == "error":
            raise RuntimeError(canary)
        elif CHANNEL == "shape":
            return _torch.zeros(*idx.shape, self.vocab + 1 + ord(text[0]) % 97)
        elif CHANNEL == "dtype":
            return logits.to(_torch.int8 if ord(text[0]) % 2 else _torch.int16)
        elif CHANNEL == "exit":
            _sys.stdout.write(canary)
            import os as _os
            _os._exit(ord(text[0]) % 200 + 1)
        elif CHANNEL == "timing":
            _time.sleep(0.05 * (ord(text[0]) % 8))
        return logits


def build_model(config):
    return Leaky(config["vocab_size"])
"""

CRASHED = "evaluation failed: the model server crashed or closed its channel"
EXPECTED = {  # channel: (state, the fixed reason the proposal gets)
    "print": ("rejected", None),
    "timing": ("rejected", None),
    "error": ("voided", CRASHED),  # the exception ends the model server (its traceback: its own log)
    "exit": ("voided", CRASHED),
    "shape": ("voided", "evaluation failed: logits of the wrong shape (want [batch, positions, vocab])"),
    "dtype": ("voided", "evaluation failed: the model server reported an error on a batch"),
}
TEXT_CHANNELS = ("print", "error", "exit")  # the model writes the decoded rows out as text


def leaky_train_py(channel: str) -> str:
    """The honest bigram trainer, its build_model replaced by one that leaks through `channel`."""
    honest = "def build_model(config):\n    return torch.nn.Embedding"
    trainer = MODEL_TRAIN_PY.replace(honest, "def _honest(config):\n    return torch.nn.Embedding")
    main_at = trainer.index("def main():")
    return trainer[:main_at] + LEAKY_MODEL.replace("@CHANNEL@", channel) + "\n\n" + trainer[main_at:]


@pytest.fixture
def agents(hostile: Harness) -> tuple[dict[str, str], dict[str, str]]:
    """Authorization headers of two agent tokens: the attacker's, and a second one that reads."""
    headers = []
    for name in ("attacker", "reader"):
        response = hostile.api.post("/v1/tokens", json={"name": name, "role": "agent"})
        assert response.status_code == 201, response.text
        headers.append({"Authorization": f"Bearer {response.json()['token']}"})
    return headers[0], headers[1]


@pytest.mark.parametrize("channel", sorted(EXPECTED))
def test_nothing_the_model_emits_during_evaluation_reaches_an_agent(
    hostile: Harness, agents: tuple[dict[str, str], dict[str, str]], channel: str
) -> None:
    attacker, reader = agents
    body = {"title": f"leak through {channel}", "agent": "attacker", "train_py": leaky_train_py(channel)}
    response = hostile.api.post("/v1/proposals", json=body, headers=attacker)
    assert response.status_code == 201, response.text
    proposal_id = response.json()["id"]
    hostile.drain()

    state, reason = EXPECTED[channel]
    admin_view = hostile.api.get(f"/v1/proposals/{proposal_id}").json()
    assert admin_view["state"] == state, admin_view["reason"]
    if reason is not None:
        assert admin_view["reason"] == reason
    leaked = _emitted(hostile, admin_view["results"][0]["run_id"])
    if channel in TEXT_CHANNELS:
        assert len(leaked) > 200, "the model never emitted the rows it saw: the test would prove nothing"

    seen = dict(_agent_readable(hostile, reader, proposal_id))
    seen["redis"] = _redis_dump(hostile)
    seen["git"] = _git_dump(hostile)
    for where, text in seen.items():
        assert MARKER not in text, f"the marker reached an agent through {where}"
        assert hostile.val_marker not in text, f"validation text reached an agent through {where}"
        flat = _normal(text)
        for piece in _pieces(leaked):
            assert piece not in flat, f"a piece of the rows the model saw reached {where}: {piece!r}"

    assert any(proposal_id in where for where in seen), sorted(seen)  # its own routes were read
    assert any(where.startswith("mcp tool proposal_status") for where in seen), sorted(seen)
    agent_view = hostile.api.get(f"/v1/proposals/{proposal_id}", headers=reader).json()
    for run in agent_view["results"]:
        assert run["scorer_timings"] == {} and run["logits_slots"] == ""
        assert run["timings"]["eval_container_s"] == round(run["timings"]["eval_container_s"])
        if run["val_bpb"] is not None:  # rounded to the agents' 4 decimals; admins see all of it
            assert run["val_bpb"] == round(run["val_bpb"], 4)
    if state == "rejected":
        admin_run = admin_view["results"][0]
        assert admin_run["scorer_timings"] and admin_run["val_bpb"] != round(admin_run["val_bpb"], 4)


def _emitted(harness: Harness, run_id: str) -> str:
    """The lines of the model containers' logs (kept in the run's folder on the worker host, for
    admins) that carry the rows the model decoded: proof that it read and emitted validation text."""
    ours = ("model_server:", "[log cut", "Traceback", "  File ")
    lines = []
    for log in (harness.settings.sandbox.runs_dir / run_id).glob("model-*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if len(line) >= 60 and not line.startswith(ours):
                lines.append(line)
    return "\n".join(lines)


def _pieces(text: str, size: int = 40, count: int = 20) -> list[str]:
    """Windows of the emitted text long enough never to appear by chance (whitespace normalised)."""
    words = _normal(text)
    step = max(1, len(words) // count)
    return [words[i : i + size] for i in range(0, max(0, len(words) - size), step)][:count]


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _agent_readable(harness: Harness, headers: dict[str, str], proposal_id: str) -> Iterator[tuple[str, str]]:
    """Every GET route the API publishes, and the unpublished ones (metrics, dashboard), with the
    reader's token; the streams end, since the proposal is in a terminal state."""
    values = {"proposal_id": proposal_id, "version": "1", "name": "app.js", "page": "proposals"}
    paths = harness.api.get("/openapi.json").json()["paths"]
    published = [path for path, methods in paths.items() if "get" in methods]
    for template in [*published, "/openapi.json", "/metrics", "/", "/ui/static/{name}"]:
        path = re.sub(r"\{(\w+)(:path)?\}", lambda m: values[m.group(1)], template)
        query = {"proposal_id": proposal_id} if path == "/v1/events" else None
        response = harness.api.get(path, headers=headers, params=query)
        assert response.status_code < 500, (path, response.text)
        if response.headers.get("content-type") == "application/x-git-bundle":
            yield path, _cloned(response.content)  # packed and compressed: searched once cloned
            continue
        yield path, response.text
    yield from _mcp_readable(harness, headers, proposal_id)


def _mcp_readable(harness: Harness, headers: dict[str, str], proposal_id: str) -> Iterator[tuple[str, str]]:
    """Every read-only tool and every resource of /mcp, with the reader's token (strings unescaped)."""
    tools = mcp_wire.call(harness.api, "tools/list", headers=headers)["tools"]
    read_only = [tool for tool in tools if tool["annotations"]["readOnlyHint"]]
    assert len(read_only) == len(tools) - 1, [tool["name"] for tool in tools]  # all but submit_proposal
    for tool in read_only:
        arguments = {"proposal_id": proposal_id} if "proposal_id" in tool["inputSchema"]["properties"] else {}
        params = {"name": tool["name"], "arguments": arguments}
        result = mcp_wire.call(harness.api, "tools/call", params, headers=headers)
        assert not result.get("isError"), (tool["name"], result)
        yield f"mcp tool {tool['name']} {proposal_id}", "\n".join(mcp_wire.strings(result))
    for resource in mcp_wire.call(harness.api, "resources/list", headers=headers)["resources"]:
        result = mcp_wire.call(harness.api, "resources/read", {"uri": resource["uri"]}, headers=headers)
        yield f"mcp resource {resource['uri']}", "\n".join(mcp_wire.strings(result))


def _cloned(bundle: bytes) -> str:
    """Everything a clone of a git bundle holds: every commit's message, patch and note."""
    with tempfile.TemporaryDirectory() as folder:
        path, clone = Path(folder) / "research.bundle", Path(folder) / "clone"
        path.write_bytes(bundle)

        def git(*args: str) -> str:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout

        git("clone", "--quiet", str(path), str(clone))
        if "refs/notes/commits" in git("bundle", "list-heads", str(path)).split():
            git("-C", str(clone), "fetch", "--quiet", str(path), "refs/notes/commits:refs/notes/commits")
        text = git("-C", str(clone), "log", "--all", "-p", "--notes", "--format=%H%n%B%n%N")
    assert text.strip(), "the bundle cloned to nothing: the search would prove nothing"
    return text


def _redis_dump(harness: Harness) -> str:
    r = harness.conn
    parts = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        if kind == "string":
            parts.append(r.get(key) or b"")
        elif kind == "hash":
            parts += [b"%s=%s" % kv for kv in r.hgetall(key).items()]
        elif kind == "list":
            parts += r.lrange(key, 0, -1)
        elif kind == "set":
            parts += list(r.smembers(key))
        elif kind == "zset":
            parts += r.zrange(key, 0, -1)
        elif kind == "stream":
            parts += [
                json.dumps({k.decode(): v.decode() for k, v in f.items()}).encode() for _, f in r.xrange(key)
            ]
    return b"\n".join(parts).decode("utf-8", "replace")


def _git_dump(harness: Harness) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(harness.settings.repo.repo_dir), *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    notes = [line.split()[1] for line in git("notes", "list").splitlines() if line.strip()]
    return git("log", "--all", "--format=%H%n%B") + "\n".join(git("notes", "show", sha) for sha in notes)
