"""The held-out test tripwire through the real path (API submit → RQ → Worker → DockerSandbox: the real
tiny trainer, the trusted scorer with its model containers → the committer's confirmation and decision
→ git), on CPU data made by prepare.py with a test split.

The memoriser is handed the validation rows directly (as a leak would give them to it, whatever the
channel): its train.py trains the baseline GPT unchanged and, beside it, builds a causal lookup of the
validation token stream that boosts the next token after any context it has seen. The causality probes
cannot see it (it looks only backwards), its val_bpb falls far below the best's, its test_bpb stays where
the best's is: the held-out test tripwire blocks it. An honest improvement of the tiny trainer (a
better learning rate) lowers both and merges."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from docker.client import DockerClient
from fastapi.testclient import TestClient
from pydantic import SecretStr
from rq import SimpleWorker

from services import queue
from services.committer import jobs as committer_jobs
from services.committer import rules
from services.committer.build import build_committer, research_repo
from services.committer.repo import GitResearchRepo
from services.models import Proposal
from services.settings import GIB, MIB, Settings
from services.states import State
from services.store import Store
from services.worker import jobs as worker_jobs
from services.worker.build import build_worker
from services.worker.docker_sandbox import DockerSandbox
from tests.support import REPO
from tests.support.api import api_client
from tests.support.sandbox_data import prepare_sandbox_data
from trainer import prepare

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]  # 11 runs of the real trainer

ADMIN = "admin-token-for-tripwire-tests"
TRAIN_PY = (REPO / "trainer" / "train.py").read_text()
CONTEXT_TOKENS = 6  # the lookup's context: long enough to be specific to the validation text
# An honest change that lowers val_bpb and test_bpb alike on this corpus (measured: docs/evaluation.md,
# val 1.337 → 1.251, test 1.340 → 1.254 with seed 1)
HONEST_PY = TRAIN_PY.replace("TINY_LR = 0.3 ", "TINY_LR = 1.0 ", 1)

# Appended to the baseline train.py. Training runs the file as a script, and main() ends the process
# (os._exit) before this is reached: the checkpoint is the baseline's. The model servers import the
# file: their build_model wraps the trained GPT's forward with the lookup.
MEMORISER = """

_VAL_TOKENS = @VAL_TOKENS@
_CONTEXT = @CONTEXT@
_NEXT = {}
for _i in range(len(_VAL_TOKENS) - _CONTEXT):
    _NEXT.setdefault(tuple(_VAL_TOKENS[_i : _i + _CONTEXT]), _VAL_TOKENS[_i + _CONTEXT])


def _remember(logits, idx):
    logits = logits.float().clone()
    for b, row in enumerate(idx.tolist()):
        for t in range(_CONTEXT - 1, len(row)):  # only tokens up to t: causal, the probes pass
            following = _NEXT.get(tuple(row[t - _CONTEXT + 1 : t + 1]))
            if following is not None:
                logits[b, t, following] += 30.0
    return logits


_honest_build_model = build_model


def build_model(config):
    model = _honest_build_model(config)
    honest = model.forward

    def forward(idx, targets=None):
        return honest(idx, targets) if targets is not None else _remember(honest(idx), idx)

    model.forward = forward
    return model
"""


@dataclass
class Pipeline:
    settings: Settings
    store: Store
    conn: redis.Redis[bytes]
    api: TestClient
    repo: GitResearchRepo
    val_tokens: list[int]

    def drain(self) -> None:
        while queue.queue_depths(self.conn) != {queue.RUNS_QUEUE: 0, queue.COMMITS_QUEUE: 0}:
            for q in (queue.runs_queue(self.conn), queue.commits_queue(self.conn)):
                SimpleWorker([q], connection=self.conn).work(burst=True, logging_level="ERROR")

    def run(self, train_py: str, title: str) -> tuple[Proposal, dict[str, Any]]:
        """Submit through the API, run everything, return the stored proposal and what the API shows."""
        response = self.api.post(
            "/v1/proposals", json={"title": title, "agent": "tester", "train_py": train_py}
        )
        assert response.status_code == 201, response.text
        proposal_id = response.json()["id"]
        self.drain()
        return self.store.get(proposal_id), self.api.get(f"/v1/proposals/{proposal_id}").json()


def validation_tokens(train: Path, val: Path) -> list[int]:
    """The validation rows' token stream as the scorer builds it: [BOS] + tokens of each document."""
    encoding = prepare.load_tokenizer(train / "tokenizer.json")
    bos = encoding.n_vocab - 1
    tokens: list[int] = []
    for line in (val / "val.jsonl").read_text().splitlines():
        for document in prepare.book_documents(json.loads(line)["text"]):
            tokens += [bos, *encoding.encode_ordinary(document)]
    return tokens


@pytest.fixture(scope="module")
def pipeline(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, trainer_image: str, docker_client: DockerClient
) -> Iterator[Pipeline]:
    """The whole path on one Redis for the module, the baseline (the real tiny trainer) scored first."""
    root = tmp_path_factory.mktemp("tripwire")
    (root / "data").mkdir()
    train, val = prepare_sandbox_data(root / "data", test_split=True)
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    settings = Settings(
        redis_url=redis_url, admin_token=SecretStr(ADMIN), runs_dir=root / "runs", repo_dir=root / "repo",
        trainer_image=trainer_image, train_data=str(train), val_data=str(val), test_data=str(root / "data" / "test"),
        run_wall_clock_s=300, eval_timeout_s=300, container_memory_bytes=3 * GIB, tmpfs_bytes=256 * MIB,
        max_output_bytes=512 * MIB, max_checkpoint_bytes=64 * MIB, infra_retries=0, preset="tiny", device="cpu",
        confirm_runs=2, new_fingerprint_runs=0,
    )  # fmt: skip
    settings.sandbox.runs_dir.mkdir()
    store = Store(conn)
    store.open_schema()  # as every service does at start (the flush removed the stamp)
    repo = research_repo(settings)
    sandbox = DockerSandbox(settings.sandbox, docker_client)
    committer = build_committer(settings, store=store, repo=repo)
    worker_jobs.configure(build_worker(settings, store=store, sandbox=sandbox, name="tw"))
    committer_jobs.configure(committer)
    try:
        committer.bootstrap(TRAIN_PY)
        with api_client(settings, store) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN}"
            pipeline = Pipeline(settings, store, conn, client, repo, validation_tokens(train, val))
            pipeline.drain()
            best = store.get_best()
            assert best is not None and best.val_bpb is not None, "the baseline was not scored"
            yield pipeline
    finally:
        worker_jobs.configure(None)
        committer_jobs.configure(None)
        sandbox.close()
        repo.close()
        conn.flushdb()
        conn.close()


def test_a_model_that_memorised_the_validation_text_is_blocked_by_the_tripwire(pipeline: Pipeline) -> None:
    head = pipeline.repo.head()
    memoriser = TRAIN_PY + MEMORISER.replace("@VAL_TOKENS@", json.dumps(pipeline.val_tokens)).replace(
        "@CONTEXT@", str(CONTEXT_TOKENS)
    )
    done, shown = pipeline.run(memoriser, "Remember the validation rows")
    assert done.state == State.REJECTED, done.reason
    assert shown["state"] == "rejected" and shown["reason"].startswith(rules.TRIPWIRE_BLOCKED)
    decision = done.decision
    assert decision is not None and decision.tripwire == "blocked" and not decision.accepted
    # the val rule alone would have merged it: its val_bpb is far below the best's in every pair ...
    assert all(c < b - 0.5 for c, b in zip(decision.candidate_runs, decision.best_runs, strict=True))
    # ... and on the test split it gained nothing: the gap is the whole val gain
    assert all(
        abs(c - b) < 0.1 for c, b in zip(decision.test_candidate_runs, decision.test_best_runs, strict=True)
    )
    assert decision.test_gap_bpb is not None and decision.test_threshold_bpb is not None
    assert decision.test_gap_bpb > decision.test_threshold_bpb
    assert decision.test_val_gain_bpb is not None and decision.test_gap_bpb > 0.9 * decision.test_val_gain_bpb
    assert pipeline.repo.head() == head
    figures = [*decision.test_candidate_runs, *decision.test_best_runs, decision.test_gap_bpb]
    texts = [done.reason, *(e.reason for e in pipeline.store.events(done.id))]
    assert not [f for f in figures for text in texts if f"{f:.6f}" in text or f"{f:.4f}" in text]
    # admins see the numbers; an agent sees only that the tripwire blocked it
    assert shown["decision"]["test_gap_bpb"] == decision.test_gap_bpb
    token = pipeline.api.post("/v1/tokens", json={"name": "memoriser-author", "role": "agent"}).json()[
        "token"
    ]
    as_agent = pipeline.api.get(
        f"/v1/proposals/{done.id}", headers={"Authorization": f"Bearer {token}"}
    ).json()
    assert as_agent["decision"]["tripwire"] == "blocked" and as_agent["state"] == "rejected"
    hidden = {k: v for k, v in as_agent["decision"].items() if k.startswith("test_")}
    assert all(v in (None, [], {}, "") for v in hidden.values()), hidden
    assert all(run["test_bpb"] is None for run in as_agent["results"])


def test_an_honest_improvement_still_merges(pipeline: Pipeline) -> None:
    best = pipeline.store.get_best()
    assert best is not None
    done, shown = pipeline.run(HONEST_PY, "A better learning rate for the tiny preset")
    assert done.state == State.MERGED, done.reason
    assert shown["state"] == "merged"
    decision = done.decision
    assert decision is not None and decision.tripwire == "passed"
    assert all(c < b for c, b in zip(decision.candidate_runs, decision.best_runs, strict=True))
    assert all(c < b for c, b in zip(decision.test_candidate_runs, decision.test_best_runs, strict=True))
    assert pipeline.repo.head() == done.merged_commit != best.commit
