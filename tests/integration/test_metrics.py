"""GET /metrics (Prometheus text, no auth) computed from what the store holds, and the controller's
JSON log lines carrying proposal ids."""

import json
import logging
import time
import warnings
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from services.logs import JsonFormatter
from services.models import Decision, RunResult, StepTimings
from services.settings import Settings
from services.states import State
from services.store import Store
from tests.support.api import api_client
from tests.support.live_server import (
    ADMIN,
    REPO_PROGRAM,
    agent_token,
    seed,
    settings_for,
    stored_proposal,
    with_lr,
)
from tests.support.walk import walk


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return settings_for(redis_url)


@pytest.fixture
def client(settings: Settings, store: Store) -> Iterator[TestClient]:
    with api_client(settings, seed(store), REPO_PROGRAM) as test_client:
        yield test_client


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = client.get("/metrics")  # no Authorization header: /metrics needs none
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(answer.text):
        sample: Sample
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def run(proposal_id: str, state: State, train_s: float, eval_s: float, finished_at: float) -> RunResult:
    return RunResult(
        run_id=f"run-{proposal_id}",
        proposal_id=proposal_id,
        seed=42,
        state=state,
        val_bpb=1.4 if state == State.EVALUATING else None,
        timings=StepTimings(prepare_s=1.0, train_container_s=train_s, collect_s=1.0, eval_container_s=eval_s),
        finished_at=finished_at,
    )


def test_metrics_from_the_store(client: TestClient, store: Store) -> None:
    t0 = time.time()
    empty = samples(client)
    assert empty[("autoresearch_gpu_busy_share", ())] == 0.0
    assert empty[("autoresearch_accepts_total", ())] == 0.0
    assert empty[("autoresearch_program_version", ())] == 1.0
    assert empty[("autoresearch_best_val_bpb", ())] == 1.5

    merged = stored_proposal(store, "0.01").id
    walk(store, merged, State.RUNNING, "go")
    decision = Decision(
        accepted=True,
        rule="t",
        candidate_bpb=1.4,
        best_bpb=1.5,
        best_commit="0" * 40,
        delta_bpb=-0.1,
        reason="r",
    )
    walk(
        store,
        merged,
        State.MERGED,
        "merged",
        results=[run(merged, State.EVALUATING, 300.0, 20.0, t0)],
        decision=decision,
    )
    crashed = stored_proposal(store, "0.02").id
    walk(store, crashed, State.CRASHED, "boom", results=[run(crashed, State.CRASHED, 50.0, 0.0, t0)])
    running = stored_proposal(store, "0.03").id
    walk(store, running, State.RUNNING, "go")
    client.post(
        "/v1/proposals",
        json={"title": "t", "agent": "a", "train_py": with_lr("0.04")},
        headers={"Authorization": f"Bearer {agent_token(store)}"},
    )
    found = samples(client)
    assert found[("autoresearch_queue_depth", (("queue", "runs"),))] == 1.0
    assert found[("autoresearch_queue_depth", (("queue", "commits"),))] == 0.0
    assert found[("autoresearch_proposals", (("state", "merged"),))] == 1.0
    assert found[("autoresearch_proposals", (("state", "queued"),))] == 1.0
    assert found[("autoresearch_proposals", (("state", "oom"),))] == 0.0
    assert found[("autoresearch_runs_total", (("outcome", "scored"),))] == 1.0
    assert found[("autoresearch_runs_total", (("outcome", "crashed"),))] == 1.0
    assert found[("autoresearch_accepts_total", ())] == 1.0
    train = ("autoresearch_run_duration_seconds_bucket", (("le", "300.0"), ("step", "train")))
    assert found[train] == 2.0
    assert found[("autoresearch_run_duration_seconds_bucket", (("le", "60.0"), ("step", "train")))] == 1.0
    assert found[("autoresearch_run_duration_seconds_count", (("step", "total"),))] == 2.0
    assert found[("autoresearch_run_duration_seconds_sum", (("step", "total"),))] == pytest.approx(374.0)
    assert found[("autoresearch_gpu_busy_seconds_total", ())] == pytest.approx(370.0)
    # busy 370 s over the wall time since the first run started (t0 - 322 s) until the scrape
    share = found[("autoresearch_gpu_busy_share", ())]
    assert 370.0 / (time.time() - t0 + 322.0) <= share <= 370.0 / 322.0


def test_counters_follow_transitions(client: TestClient, store: Store) -> None:
    proposal = stored_proposal(store).id
    assert samples(client)[("autoresearch_runs_total", (("outcome", "crashed"),))] == 0.0
    walk(store, proposal, State.CRASHED, "x", results=[run(proposal, State.CRASHED, 5.0, 0.0, time.time())])
    assert samples(client)[("autoresearch_runs_total", (("outcome", "crashed"),))] == 1.0
    assert samples(client)[("autoresearch_proposals", (("state", "crashed"),))] == 1.0
    assert samples(client)[("autoresearch_proposals", (("state", "queued"),))] == 0.0


def test_submit_and_cancel_log_their_proposal_id(
    client: TestClient, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="services.controller.logic"):
        answer = client.post(
            "/v1/proposals",
            json={"title": "t", "agent": "a", "train_py": with_lr("0.05")},
            headers={"Authorization": f"Bearer {agent_token(store)}"},
        )
        proposal_id = answer.json()["id"]
        client.post(f"/v1/proposals/{proposal_id}/cancel", headers={"Authorization": f"Bearer {ADMIN}"})
    records = [r for r in caplog.records if getattr(r, "proposal_id", None) == proposal_id]
    assert [r.getMessage().split()[0:3] for r in records] == [
        ["proposal", proposal_id, "from"],
        ["proposal", proposal_id, "cancelled"],
    ]
    line = json.loads(JsonFormatter().format(records[0]))
    assert (line["proposal_id"], line["agent"], line["level"]) == (proposal_id, "a", "info")
