"""The built-in agents end to end: a live controller, the worker and committer in-process behind the
fake sandbox (tests/support/stack.py), and, for the LLM agent, a small fake LLM server speaking the OpenAI
chat-completions API whose diffs lower the fake score (`FAKE_SCORE = x` is the candidate's val_bpb)."""

import difflib
import json
import random
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from docker.client import DockerClient
from pydantic import SecretStr

from services.agent.llm import ChatClient, LlmError
from services.agent.llm_agent import LlmAgent
from services.agent.loop import NOT_SUBMITTED, Clock
from services.agent.search import RandomSearch
from services.cli.client import ApiClient
from services.settings import MIB, AgentSettings, Settings
from services.worker.docker_sandbox import DockerSandbox
from tests.support import REPO
from tests.support.sandbox_data import prepare_sandbox_data
from tests.support.stack import Stack, running_stack

LLM_KEY = "sk-test-key"
STEP_BPB = 0.05  # each good idea of the fake LLM lowers the fake score by this much
REAL_CHANGE = ("TINY_LR = 0.3", "TINY_LR = 0.6")  # lowers the tiny preset's val_bpb on the test corpus
PROGRAM_V2 = "# Research program, version 2\n\nLower val_bpb. Prefer small, safe steps.\n"


@dataclass
class FakeLlm:
    """Answers each chat completion from a script: "improve" (a diff lowering FAKE_SCORE of the best
    train.py in the prompt, with a wrong path and wrong line numbers, as models write them),
    "real" (REAL_CHANGE to the real trainer's tiny preset), "chat" (no diff
    at all) or "error" (HTTP 500)."""

    script: list[str]
    prompts: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.prompts.append(body)
            action = (
                self.script[len(self.prompts) - 1] if len(self.prompts) <= len(self.script) else "improve"
            )
        if action == "error":
            return 500, {"error": {"message": "the model is overloaded"}}
        content = "I think the model is fine as it is." if action == "chat" else improvement(body, action)
        return 200, {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
        }


def improvement(body: dict[str, Any], action: str) -> str:
    user = body["messages"][-1]["content"]
    best = re.search(r"```python\n(.*?)```", user, re.DOTALL)
    assert best is not None, "the prompt shows the best train.py"
    base = best.group(1)
    if action == "real":
        new = base.replace(*REAL_CHANGE)
        title = f"{REAL_CHANGE[0].split(' = ')[0]}: {REAL_CHANGE[1]}"
    else:
        score = float(re.search(r"^FAKE_SCORE = (\S+)$", base, re.MULTILINE).group(1))  # type: ignore[union-attr]
        new = base.replace(f"FAKE_SCORE = {score}", f"FAKE_SCORE = {round(score - STEP_BPB, 6)}")
        title = f"lower FAKE_SCORE to {score - STEP_BPB:.2f}"
    assert new != base
    diff = "".join(
        difflib.unified_diff(base.splitlines(True), new.splitlines(True), "a/train.py", "b/train.py")
    )
    diff = re.sub(r"^@@ -\d+", "@@ -1", diff, flags=re.MULTILINE)  # off by a few lines
    return f"TITLE: {title}\nWHY: it should help.\n\n```diff\n{diff}```\n"


@pytest.fixture
def stack(tmp_path: Path, redis_client: "redis.Redis[bytes]", redis_url: str) -> Iterator[Stack]:
    with running_stack(tmp_path, redis_url) as running:
        yield running


@pytest.fixture
def fake_llm(request: pytest.FixtureRequest) -> Iterator[tuple[str, FakeLlm]]:
    llm = FakeLlm(script=getattr(request, "param", ["improve", "chat", "improve", "error", "improve"]))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/v1/chat/completions" or self.headers["Authorization"] != f"Bearer {LLM_KEY}":
                self.send_error(401 if self.path == "/v1/chat/completions" else 404)
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, answer = llm.answer(body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="fake-llm", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", llm
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def agent_settings(**fields: Any) -> AgentSettings:
    values: dict[str, Any] = {"agent_poll_s": 0.02, "agent_outcome_timeout_s": 60, **fields}
    return AgentSettings(**values)


def test_llm_agent_learns_from_outcomes_and_its_merges_count_for_its_program_version(
    stack: Stack, fake_llm: tuple[str, FakeLlm]
) -> None:
    url, llm = fake_llm
    with ApiClient(stack.url, stack.admin) as admin:
        _, status = admin.put("/v1/program", {"text": PROGRAM_V2, "message": "ask for small steps"})
        assert status == 201
    settings = agent_settings(
        agent_name="gpt-fake",
        agent_max_iterations=5,
        agent_llm_base_url=url,
        agent_llm_model="fake-model",
        agent_llm_api_key=SecretStr(LLM_KEY),
    )
    chat = ChatClient(url, "fake-model", LLM_KEY, temperature=0.7, max_tokens=None, timeout_s=10)
    with ApiClient(stack.url, stack.token("gpt-fake")) as client, chat:
        outcomes = LlmAgent(client, chat, settings).run()

    assert [o.state for o in outcomes] == ["merged", NOT_SUBMITTED, "merged", NOT_SUBMITTED, "merged"]
    assert "no unified diff" in outcomes[1].reason and "500" in outcomes[3].reason
    assert all(o.delta_bpb == pytest.approx(-STEP_BPB, abs=5e-4) for o in outcomes if o.merged)
    # Each prompt told the model what became of its earlier ideas.
    second, third = (p["messages"][-1]["content"] for p in llm.prompts[1:3])
    assert "1. lower FAKE_SCORE to 1.45: merged" in second and "version 2" in second and PROGRAM_V2 in second
    assert "2. (no proposal): not-submitted" in third and "FAKE_SCORE = 1.45" in third
    assert llm.prompts[0]["model"] == "fake-model"

    with ApiClient(stack.url, stack.admin) as reader:
        best = reader.get("/v1/best")
        assert best["val_bpb"] == pytest.approx(1.5 - 3 * STEP_BPB, abs=5e-4)
        assert best["proposal_id"] == outcomes[-1].proposal_id
        merged = reader.get(f"/v1/proposals/{outcomes[-1].proposal_id}")
        assert merged["agent"] == "gpt-fake" and merged["program_version"] == 2
        stats = {row["version"]: row for row in reader.get("/v1/program/stats")}
    assert stats[2]["proposals"] == 3 and stats[2]["merged"] == 3 and stats[2]["win_rate"] == 1.0
    assert stats[2]["mean_delta_bpb"] == pytest.approx(-STEP_BPB, abs=5e-4)


def test_search_arm_submits_one_constant_at_a_time_and_climbs(stack: Stack) -> None:
    settings = agent_settings(
        agent_max_iterations=6,
        agent_search_step=0.05,
        agent_search_exclude=["LEARNING_RATE", "DEPTH", "WARMUP_STEPS"],  # FAKE_SCORE alone is searched
    )
    with ApiClient(stack.url, stack.token("search")) as client:
        outcomes = RandomSearch(client, settings, random.Random(11), Clock()).run()
        proposals = [client.get(f"/v1/proposals/{o.proposal_id}") for o in outcomes]
        best = client.get("/v1/best")

    assert len(outcomes) == 6 and all(o.state in ("merged", "rejected") for o in outcomes)
    for proposal in proposals:
        assert proposal["agent"] == "random-search" and proposal["program_version"] is None
        changed = [
            line
            for line in proposal["diff"].splitlines()
            if line[:1] in "+-" and line[:3] not in ("+++", "---")
        ]
        assert len(changed) == 2 and all(line[1:].startswith("FAKE_SCORE = ") for line in changed)
    merged = [o for o in outcomes if o.merged]
    assert merged, "with this seed some steps go down"
    assert all(o.delta_bpb is not None and o.delta_bpb < 0 for o in merged)
    assert best["val_bpb"] == pytest.approx(min(o.val_bpb for o in merged if o.val_bpb is not None))


def test_chat_client_translates_an_unreachable_endpoint() -> None:
    with (
        ChatClient("http://127.0.0.1:9", "m", None, temperature=0, max_tokens=5, timeout_s=2) as chat,
        pytest.raises(LlmError),
    ):
        chat.complete([])


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("fake_llm", [["real"]], indirect=True)
def test_llm_agent_with_the_real_tiny_trainer_in_docker(
    tmp_path: Path,
    redis_client: "redis.Redis[bytes]",
    redis_url: str,
    docker_client: DockerClient,
    trainer_image: str,
    fake_llm: tuple[str, FakeLlm],
) -> None:
    """One idea of the fake LLM, trained and scored for real: the baseline trainer/train.py (tiny
    preset, CPU) and the trusted evaluator through DockerSandbox, screened and confirmed."""
    train_dir, val_dir = prepare_sandbox_data(tmp_path)
    real: dict[str, Any] = {
        "trainer_image": trainer_image,
        "train_data": str(train_dir),
        "val_data": str(val_dir),
        "runs_dir": tmp_path / "runs",
        "preset": "tiny",
        "device": "cpu",
        "run_wall_clock_s": 240,
        "container_memory_bytes": 4 * 1024 * MIB,
    }
    sandbox = DockerSandbox(Settings(**real).sandbox, docker_client)
    url, _ = fake_llm
    baseline = (REPO / "trainer" / "train.py").read_text()
    with running_stack(tmp_path, redis_url, baseline, sandbox, **real) as stack:
        settings = agent_settings(agent_max_iterations=1, agent_poll_s=0.5, agent_outcome_timeout_s=1500)
        chat = ChatClient(url, "fake-model", LLM_KEY, temperature=0.7, max_tokens=None, timeout_s=10)
        with ApiClient(stack.url, stack.token("gpt-fake")) as client, chat:
            (outcome,) = LlmAgent(client, chat, settings).run()
            stats = {row["version"]: row for row in client.get("/v1/program/stats")}
    assert outcome.state == "merged", outcome.reason
    assert outcome.delta_bpb is not None and outcome.delta_bpb < 0
    assert stats[1]["merged"] == 1 and stats[1]["mean_delta_bpb"] == pytest.approx(outcome.delta_bpb)
