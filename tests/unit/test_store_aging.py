"""Aging (services/store, "Aging"): a finished proposal's run log tails are replaced once it finished
longer ago than the retention; nothing a decision cites (its runs' numbers, the decision, scores,
counters, results.tsv rows, events) changes, and active or recent proposals keep their logs."""

import pytest

from services.models import Decision, RunResult, StepTimings
from services.states import State
from services.store import AGED_LOG_TAIL, LOG_AGING_KEY, Store
from tests.support.walk import path_to
from tests.unit.test_store import make_proposal

DAY_S = 24 * 3600
RETENTION_S = 30 * DAY_S


def run(run_id: str, seed: int, val_bpb: float, subject: str = "candidate") -> RunResult:
    return RunResult(
        run_id=run_id, proposal_id="p", seed=seed, subject=subject, state=State.EVALUATING, val_bpb=val_bpb,  # type: ignore[arg-type]
        test_bpb=val_bpb + 0.01, log_tail=f"step 100 loss 2.3\nval_bpb {val_bpb}\n",
        timings=StepTimings(prepare_s=1.0, train_container_s=300.0, collect_s=1.0, eval_container_s=9.0),
    )  # fmt: skip


def decided(store: Store, text: str, final: State) -> str:
    """A proposal walked to `final` with screening and paired confirmation runs and a decision."""
    proposal, _ = store.create(make_proposal(text))
    results = [run("r1", 1, 1.20), run("r2", 2, 1.19)]
    baseline = [run("b2", 2, 1.21, "best")]
    decision = Decision(
        accepted=final == State.MERGED, rule="paired-z/v1", stage="confirm", candidate_bpb=1.195,
        best_bpb=1.21, best_commit="c0ffee1", delta_bpb=-0.015, candidate_runs=[1.20, 1.19],
        best_runs=[1.21], seeds=[1, 2], reason="the numbers",
    )  # fmt: skip
    steps = path_to(State.QUEUED)[final][1:]
    for step in steps:
        changes: dict[str, object] = {}
        if step == steps[0]:
            changes.update(results=results, baseline_results=baseline)
        if step == final:
            changes["decision"] = decision
        store.transition(proposal.id, step, f"to {step}", **changes)
    return proposal.id


def evidence(store: Store, proposal_id: str) -> object:
    """Everything about a proposal and the record around it but its runs' log tails."""
    p = store.get(proposal_id)
    runs = [r.model_dump(exclude={"log_tail"}) for r in (*p.results, *p.baseline_results)]
    return (
        p.model_dump(exclude={"results", "baseline_results"}),
        runs,
        store.events(proposal_id),
        store.stats()[0],
        store.results_rows(),
        store.r.zrange("ar:scores", 0, -1, withscores=True),
    )


def log_tails(store: Store, proposal_id: str) -> list[str]:
    p = store.get(proposal_id)
    return [r.log_tail for r in (*p.results, *p.baseline_results)]


@pytest.mark.parametrize("final", [State.REJECTED, State.MERGED, State.CRASHED])
def test_old_finished_proposals_lose_log_tails_and_keep_their_evidence(store: Store, final: State) -> None:
    proposal_id = decided(store, "x = 1\n", final)
    finished_at = store.get(proposal_id).updated_at
    before = evidence(store, proposal_id)

    assert store.age_run_logs(RETENTION_S, now_s=finished_at + RETENTION_S - 1) == 0
    assert AGED_LOG_TAIL not in log_tails(store, proposal_id)

    assert store.age_run_logs(RETENTION_S, now_s=finished_at + RETENTION_S + 1) == 1
    assert log_tails(store, proposal_id) == [AGED_LOG_TAIL] * 3
    assert evidence(store, proposal_id) == before
    assert store.r.zcard(LOG_AGING_KEY) == 0  # aged once: the next sweep reads nothing
    assert store.age_run_logs(RETENTION_S, now_s=finished_at + 2 * RETENTION_S) == 0


def test_active_proposals_keep_their_logs_however_old(store: Store) -> None:
    active = decided(store, "x = 2\n", State.CONFIRMING)
    store.age_run_logs(RETENTION_S, now_s=store.get(active).updated_at + 10 * RETENTION_S)
    assert AGED_LOG_TAIL not in log_tails(store, active)


def test_the_migration_indexes_proposals_finished_before_aging_existed(store: Store) -> None:
    proposal_id = decided(store, "x = 3\n", State.REJECTED)
    store.r.delete(LOG_AGING_KEY)  # as a store written before the index
    store.rewrite_all(batch=10)
    finished_at = store.get(proposal_id).updated_at
    assert store.age_run_logs(RETENTION_S, now_s=finished_at + RETENTION_S + 1) == 1
    assert log_tails(store, proposal_id) == [AGED_LOG_TAIL] * 3
