"""The held-out test tripwire through the service (real Redis, RQ, git; the fake sandbox): which runs
score the test split, a memoriser's val gain blocked, an honest gain merged, no test figure where an
agent can read it (reasons, events, git messages and notes, results.tsv), and runs of the best asked
for once on a new fingerprint. The real-Docker path: tests/hostile/test_memoriser.py."""

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.committer import rules
from services.controller import research
from services.models import Proposal
from services.settings import Settings
from services.states import State
from services.store import keys
from services.worker.sandbox import FixedFiles
from tests.support.service import BASELINE, Service, running_service

# The fake's honest test_bpb is its val_bpb + 0.01; a memoriser's val_bpb drops, its test_bpb stays.
MEMORISER = BASELINE.replace("FAKE_SCORE = 1.5", "FAKE_SCORE = 0.9") + "FAKE_TEST_SCORE = 1.5237\n"
HONEST = BASELINE.replace("FAKE_SCORE = 1.5", "FAKE_SCORE = 1.4")


@pytest.fixture
def service(tmp_path: Path, redis_client: "redis.Redis[bytes]") -> Iterator[Service]:
    settings = Settings(runs_dir=tmp_path / "runs", repo_dir=tmp_path / "repo", test_data="test-data")
    with running_service(settings, redis_client) as service:
        yield service


def figures(proposal: Proposal) -> list[str]:
    """The proposal's test figures as text shows them (6 decimals), those distinct enough to find."""
    decision = proposal.decision
    assert decision is not None
    values = [r.test_bpb for r in [*proposal.results, *proposal.baseline_results] if r.test_bpb is not None]
    values += [*decision.test_gaps, decision.test_gap_bpb or 0.0, decision.test_threshold_bpb or 0.0]
    values += [decision.test_cumulative_gap_bpb or 0.0, decision.test_cumulative_threshold_bpb or 0.0]
    return [f"{v:.6f}" for v in values if abs(v) >= 0.001]


def assert_no_test_figures(service: Service, proposal: Proposal, ref: str) -> None:
    texts = [proposal.reason, *(e.reason for e in service.store.events(proposal.id))]
    texts += [service.git("log", "-1", "--format=%B", ref), research.results_tsv(service.store)]
    note = service.git("notes", "show", ref)
    texts.append(note)
    for figure in figures(proposal):
        assert all(figure not in text for text in texts), figure
    assert not re.search(r'"test_', note), "a test field in the git note"


def test_a_memoriser_is_rejected_by_the_tripwire_with_its_numbers_in_the_decision(service: Service) -> None:
    head = service.repo.head()
    proposal = service.submit(MEMORISER, title="Remember the validation text")
    service.drain()
    done = service.store.get(proposal.id)
    assert done.state == State.REJECTED, done.reason
    assert done.reason.startswith(rules.TRIPWIRE_BLOCKED)
    decision = done.decision
    assert decision is not None and not decision.accepted and decision.tripwire == "blocked"
    assert decision.delta_bpb == pytest.approx(-0.6, abs=1e-3)  # the val rule alone would accept it
    assert decision.test_gap_bpb == pytest.approx(0.6137, abs=1e-3)  # 0.6 of val gain, 0.0137 lost on test
    assert decision.test_threshold_bpb is not None and decision.test_gap_bpb > decision.test_threshold_bpb
    assert decision.test_n == service.settings.acceptance.confirm_runs == len(decision.test_candidate_runs)
    assert decision.test_candidate_runs == pytest.approx([1.5237] * 3, abs=1e-3)
    assert decision.test_best_runs == pytest.approx([1.51] * 3, abs=1e-3)
    assert service.repo.head() == head
    assert_no_test_figures(service, done, service.repo.tried_refs()[proposal.id])


def test_an_honest_gain_is_merged_and_only_the_runs_that_can_decide_score_test(service: Service) -> None:
    proposal = service.submit(HONEST, title="A real gain")
    service.drain()
    done = service.store.get(proposal.id)
    assert done.state == State.MERGED, done.reason
    assert done.decision is not None and done.decision.tripwire == "passed"
    assert done.decision.test_gap_bpb == pytest.approx(0.0, abs=2e-4)
    screening, *confirmation = done.results
    assert screening.test_bpb is None  # screening runs never see the test split
    assert all(r.test_bpb is not None for r in [*confirmation, *done.baseline_results])
    assert [e.score_test for e in service.sandbox.evaluated] == [True, False] + [True] * 6  # baseline first
    lineage = service.store.lineage_entry(service.repo.head())
    assert lineage is not None and lineage.decision is not None
    assert lineage.decision.test_gap_bpb == done.decision.test_gap_bpb  # kept for the cumulative check
    assert_no_test_figures(service, done, "research")


def test_the_baseline_run_scores_test_and_calibrates_the_gap(service: Service) -> None:
    baseline = next(p for p in service.store.page(limit=10)[0] if p.kind == "run")
    assert baseline.results[0].test_bpb == pytest.approx(1.51, abs=1e-3)
    best = service.store.get_best()
    assert best is not None and best.fingerprint_key is not None
    gaps = service.store.gap_calibration_runs(best.fingerprint_key)[best.commit]
    assert gaps == pytest.approx([0.01], abs=2e-4)


def test_the_cumulative_check_sums_the_steps_since_the_root(service: Service) -> None:
    for score in ("1.4", "1.3", "1.2"):
        proposal = service.submit(BASELINE.replace("FAKE_SCORE = 1.5", f"FAKE_SCORE = {score}"))
        service.drain()
    done = service.store.get(proposal.id)
    assert done.state == State.MERGED, done.reason
    assert done.decision is not None and done.decision.test_cumulative_steps == 3
    steps = [e.decision for e in service.store.lineage() if e.decision is not None]
    assert done.decision.test_cumulative_gap_bpb == pytest.approx(sum(d.test_gap_bpb or 0.0 for d in steps))


def test_without_a_test_split_the_tripwire_does_not_run(
    tmp_path: Path, redis_client: "redis.Redis[bytes]"
) -> None:
    settings = Settings(runs_dir=tmp_path / "runs", repo_dir=tmp_path / "repo")
    with running_service(settings, redis_client) as service:
        proposal = service.submit(MEMORISER)
        service.drain()
        done = service.store.get(proposal.id)
        assert not any(e.score_test for e in service.sandbox.evaluated)
    assert done.state == State.MERGED  # what the tripwire is for
    assert done.decision is not None and done.decision.tripwire == "not-run"
    assert done.decision.test_gap_bpb is None


def test_the_best_is_run_again_once_on_a_new_fingerprint(service: Service) -> None:
    """A new evaluator version (or image, GPU, data) gives a new fingerprint: the committer asks once
    for runs of the best there, as POST /v1/runs would; they give it a score and a calibration there."""
    before = service.store.get_best()
    assert before is not None
    service.sandbox.fixed = FixedFiles("fake/2", dict(service.sandbox.fixed.hashes))
    first = service.submit(BASELINE.replace("FAKE_SCORE = 1.5", "FAKE_SCORE = 1.6"), title="worse")
    service.drain()
    second = service.submit(BASELINE.replace("FAKE_SCORE = 1.5", "FAKE_SCORE = 1.61"), title="worse too")
    service.drain()
    runs = [p for p in service.store.page(limit=50)[0] if p.kind == "run" and "new fingerprint" in p.title]
    assert len(runs) == 1
    rerun = runs[0]
    assert rerun.state == State.MERGED and rerun.base_commit == before.commit
    assert rerun.seeds == [
        service.settings.runs.first_seed + i for i in range(service.settings.acceptance.new_fingerprint_runs)
    ]
    assert all(r.test_bpb is not None for r in rerun.results)
    key = rerun.results[0].fingerprint.key() if rerun.results[0].fingerprint else None
    assert key is not None and key != before.fingerprint_key
    assert service.conn.get(keys.NEW_FINGERPRINT_RUNS.of(key)) == before.commit.encode()
    after = service.store.get_best()
    assert after is not None and after.fingerprint_key == key and after.commit == before.commit
    assert (
        len(service.store.calibration_runs(key)[before.commit])
        == service.settings.acceptance.new_fingerprint_runs
    )
    assert (
        len(service.store.gap_calibration_runs(key)[before.commit])
        == service.settings.acceptance.new_fingerprint_runs
    )
    for proposal in (first, second):
        assert service.store.get(proposal.id).state == State.REJECTED


def test_a_blocked_decision_is_kept_as_a_tried_ref_whose_note_has_no_test_figures(service: Service) -> None:
    proposal = service.submit(MEMORISER)
    service.drain()
    note = json.loads(service.repo.note(service.repo.tried_refs()[proposal.id]) or "{}")
    assert note["decision"]["tripwire"] == "blocked"
    assert not [k for k in note["decision"] if k.startswith("test_")]
    assert not [k for r in note["results"] for k in r if k.startswith("test_")]
