"""Service logic end to end with a real Redis, real RQ workers (in-process, burst mode) and a real
git repository, behind the fake sandbox: submit → queue → run → score → decide → commit."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services import queue
from services.committer import rules
from services.controller import logic
from services.controller.auth import Principal, Role
from services.controller.schemas import RequestRuns
from services.errors import HeadMoved
from services.models import Proposal
from services.settings import Settings
from services.states import State
from services.worker.sandbox import Environment
from tests.support.service import BASELINE, Service, running_service


@pytest.fixture
def service(tmp_path: Path, redis_client: "redis.Redis[bytes]") -> Iterator[Service]:
    settings = Settings(runs_dir=tmp_path / "runs", repo_dir=tmp_path / "repo", infra_retries=2)
    with running_service(settings, redis_client) as service:
        yield service


def test_bootstrap_scores_the_baseline_once(service: Service) -> None:
    best = service.store.get_best()
    assert best is not None and best.val_bpb == pytest.approx(1.5, abs=2e-4)
    assert best.commit == service.repo.head()
    service.committer.bootstrap(BASELINE)  # a restarted committer asks for no second baseline
    assert queue.queue_depths(service.conn)[queue.RUNS_QUEUE] == 0
    assert service.store.page()[1] == 1


def test_better_proposal_is_merged_with_numbers_in_message_and_note(service: Service) -> None:
    proposal = service.submit(BASELINE.replace("1.5", "1.4"), title="Lower the score")
    service.drain()
    merged = service.store.get(proposal.id)
    assert merged.state == State.MERGED, merged.reason
    assert merged.merged_commit == service.repo.head()
    assert merged.decision is not None and merged.decision.delta_bpb == pytest.approx(-0.1)
    message = service.git("log", "-1", "--format=%B", "research")
    assert "Lower the score" in message and "rule: paired-z/v1" in message
    # at the agents' precision: agents clone the branch (GET /v1/repo.bundle); the note has all digits
    assert merged.decision is not None and f"val_bpb: {merged.decision.candidate_bpb:.4f} (best" in message
    assert f"Proposal-Id: {proposal.id}" in message
    note = json.loads(service.git("notes", "show", "research"))
    assert note["decision"]["candidate_bpb"] == merged.decision.candidate_bpb
    assert (
        note["decision"]["params"]["confirm_runs"] == 3
        and type(note["decision"]["params"]["confirm_runs"]) is int
    )
    assert type(service.store.get(proposal.id).decision.params["confirm_runs"]) is int  # type: ignore[union-attr]
    assert note["results"][0]["val_bpb"] == pytest.approx(1.4, abs=2e-4)
    assert "FAKE_SCORE = 1.4" in service.git("show", "research:trainer/train.py")
    best = service.store.get_best()
    assert (
        best is not None and best.val_bpb == pytest.approx(1.4, abs=2e-4) and best.proposal_id == proposal.id
    )
    assert [e.state for e in service.store.events(proposal.id)] == [
        State.QUEUED,
        State.RUNNING,
        State.EVALUATING,
        State.CONFIRMING,
        State.ACCEPTED,
        State.MERGED,
    ]
    assert len(merged.results) == 1 + service.settings.acceptance.confirm_runs
    assert [r.seed for r in merged.baseline_results] == merged.confirm_seeds
    assert merged.gpu_seconds() > 0
    run_dirs = list(service.settings.sandbox.runs_dir.iterdir())
    assert run_dirs and all((d / "code" / "train.py").exists() and not (d / "out").exists() for d in run_dirs)


def test_worse_proposal_is_rejected_and_kept_as_a_ref(service: Service) -> None:
    head = service.repo.head()
    proposal = service.submit(BASELINE.replace("1.5", "1.6"))
    service.drain()
    rejected = service.store.get(proposal.id)
    assert rejected.state == State.REJECTED
    assert "does not beat" in rejected.reason and "Δ +0.100000" in rejected.reason
    assert service.repo.head() == head
    assert proposal.id in service.repo.tried_refs()
    note = json.loads(service.repo.note(service.repo.tried_refs()[proposal.id]) or "{}")
    assert note["decision"]["delta_bpb"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("directive", "state", "reason"),
    [
        ("FAKE_EXIT = 1", State.CRASHED, "exited with code 1"),
        ("FAKE_EXIT = 4", State.CRASHED, "non-finite loss"),
        ("FAKE_EXIT = 3", State.OOM, "out of memory"),
        ("FAKE_OOM = True", State.OOM, "OOMKilled"),
        ("FAKE_TIMEOUT = True", State.TIMED_OUT, "wall-clock limit"),
        # a fixed-step run (the tiny preset) that the deadline cut short is not scored as evidence
        ("FAKE_STEPS = 40\nFAKE_MAX_STEPS = 60", State.TIMED_OUT, "after 40 of its 60 fixed steps"),
    ],
)
def test_failures_end_in_their_own_state_with_log_tail(
    service: Service, directive: str, state: State, reason: str
) -> None:
    proposal = service.submit(BASELINE + f"{directive}\n")
    service.drain()
    failed = service.store.get(proposal.id)
    assert failed.state == state
    assert reason in failed.reason
    assert "step 1/10" in failed.results[0].log_tail
    assert not service.sandbox.evaluated[1:]  # only the baseline was ever evaluated


def test_infrastructure_failure_is_retried_then_scored(service: Service) -> None:
    proposal = service.submit(BASELINE.replace("1.5", "1.45") + "FAKE_INFRA = 2\n")
    service.drain()
    done = service.store.get(proposal.id)
    assert done.state == State.MERGED
    assert done.attempts == 2
    reasons = [e.reason for e in service.store.events(proposal.id)]
    assert sum("infrastructure failed" in r for r in reasons) == 2


def test_infrastructure_failure_beyond_retries_is_infra_error_not_a_bad_score(service: Service) -> None:
    proposal = service.submit(BASELINE.replace("1.5", "1.0") + "FAKE_INFRA = 9\n")
    service.drain()
    failed = service.store.get(proposal.id)
    assert failed.state == State.INFRA_ERROR
    assert "3 times" in failed.reason
    assert service.store.leaderboard()[0].kind == "run"  # no score recorded for it


def test_winner_on_an_old_base_is_requeued_against_the_new_head(service: Service) -> None:
    first = service.submit(BASELINE.replace("FAKE_SCORE = 1.5", "FAKE_SCORE = 1.4"))
    second = service.submit(BASELINE + "FAKE_DELTA = -0.2\n")  # 1.3 on its base, 1.2 on the new head
    conflicting = service.submit(BASELINE.replace("FAKE_SCORE = 1.5", "FAKE_SCORE = 1.35"))
    service.drain()
    first_done = service.store.get(first.id)
    assert first_done.state == State.MERGED
    second_done = service.store.get(second.id)
    assert second_done.state == State.MERGED, second_done.reason
    assert second_done.base_commit == first_done.merged_commit
    assert second_done.decision is not None and second_done.decision.candidate_bpb == pytest.approx(
        1.2, abs=2e-4
    )
    assert any("re-queued against it" in e.reason for e in service.store.events(second.id))
    assert service.git("show", "research:trainer/train.py").count("FAKE_") == 2  # both changes on the branch
    conflicted = service.store.get(conflicting.id)
    assert conflicted.state == State.REJECTED
    assert "no longer applies" in conflicted.reason


def test_a_job_delivered_twice_runs_once(service: Service) -> None:
    proposal = service.submit(BASELINE.replace("1.5", "1.4"))
    # a second job under another id (queue.enqueue_run refuses a second job of one spell): as RQ
    # re-delivering a job would
    queue.runs_queue(service.conn).enqueue(queue.RUN_JOB, proposal.id, job_id=f"again-{proposal.id}")
    assert queue.queue_depths(service.conn)[queue.RUNS_QUEUE] == 2
    service.drain()
    runs = 1 + 2 * service.settings.acceptance.confirm_runs  # screening, then paired confirmation runs
    assert sum(r.proposal_id == proposal.id for r in service.sandbox.trained) == runs


def test_cancelled_proposal_never_runs(service: Service) -> None:
    proposal = service.submit(BASELINE.replace("1.5", "1.4"))
    service.store.cancel(proposal.id, "cancelled by admin")
    service.drain()
    assert service.store.get(proposal.id).state == State.CANCELLED
    assert all(r.proposal_id != proposal.id for r in service.sandbox.trained)


def test_a_change_to_the_seed_alone_is_never_merged(service: Service) -> None:
    seeded = BASELINE.replace("import os\n", "import os\nSEED_OFFSET = 7  # seed tweak\n")
    proposal = service.submit(seeded.replace("FAKE_SCORE = 1.5", "FAKE_SCORE = 1.5"))
    service.drain()
    rejected = service.store.get(proposal.id)
    assert rejected.state == State.REJECTED
    assert "only touches seeding" in rejected.reason


def test_a_proposal_that_ignores_the_seed_is_rejected_with_that_reason(service: Service) -> None:
    proposal = service.submit(BASELINE.replace("1.5", "1.3") + "FAKE_IGNORES_SEED = True\n")
    service.drain()
    rejected = service.store.get(proposal.id)
    assert rejected.state == State.REJECTED
    assert "ignores AR_SEED" in rejected.reason
    assert service.store.get_best().commit != rejected.merged_commit  # type: ignore[union-attr]


def test_close_call_within_noise_is_confirmed_then_rejected(service: Service) -> None:
    # ~1% of the calibrated σ (the fake's seed wobble, ±1e-4): a pass would need all 4 calibration runs
    # within ~5e-7 of each other
    proposal = service.submit(BASELINE + "FAKE_DELTA = -0.000001\n")
    service.drain()
    done = service.store.get(proposal.id)
    assert done.state == State.REJECTED
    assert done.screening is not None and done.screening.confirm
    assert done.decision is not None and done.decision.stage == "confirm"
    assert done.decision.threshold_bpb is not None and done.decision.threshold_bpb > 0


def test_committer_killed_after_publishing_commits_once(service: Service) -> None:
    class Killed(BaseException):
        """Stands for the committer process dying right after `update-ref`."""

    real_commit = service.repo.commit_on_branch

    def commit_then_die(*args: object, **kwargs: object) -> str:
        real_commit(*args, **kwargs)  # type: ignore[arg-type]
        raise Killed

    proposal = service.submit(BASELINE.replace("1.5", "1.4"))
    service.repo.commit_on_branch = commit_then_die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        for _ in range(10):  # run jobs in-process, without RQ's exception handling, until the kill
            service.drain_one_job()
    service.repo.commit_on_branch = real_commit  # type: ignore[method-assign]
    assert service.store.get(proposal.id).state == State.ACCEPTED  # the store never heard of the commit
    service.committer.recover()  # what a restarted committer does first
    service.drain()
    done = service.store.get(proposal.id)
    assert done.state == State.MERGED
    trailers = service.git("log", "--format=%H", f"--grep=Proposal-Id: {proposal.id}", "research").split()
    assert trailers == [done.merged_commit]
    assert service.git("rev-list", "--count", "research").strip() == "2"  # baseline + this one


def test_a_confirmation_decided_again_after_a_crash_counts_the_bests_runs_once(service: Service) -> None:
    """The committer dies after adding the best's paired runs to the noise calibration but before
    storing its verdict; recovery decides again and must not count those runs a second time."""

    class Killed(BaseException):
        """Stands for the committer process dying between the calibration and the verdict."""

    proposal = service.submit(BASELINE.replace("1.5", "1.4"))
    while not _confirmation_runs_done(service.store.get(proposal.id)):
        service.drain_one_job()
    key = _fingerprint(service)
    base = proposal.base_commit
    before = len(service.store.calibration_runs(key)[base])
    gaps_before = len(service.store.gap_calibration_runs(key).get(base, []))

    real_record_score = service.store.record_score

    def die(*args: object, **kwargs: object) -> None:
        raise Killed

    service.store.record_score = die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        service.drain_one_job()  # the decision job
    service.store.record_score = real_record_score  # type: ignore[method-assign]
    assert service.store.get(proposal.id).state == State.CONFIRMING  # no verdict was stored
    service.committer.recover()  # what a restarted committer does first
    service.drain()
    done = service.store.get(proposal.id)
    assert done.state == State.MERGED, done.reason
    paired = len(done.baseline_results)
    assert paired == service.settings.acceptance.confirm_runs
    assert len(service.store.calibration_runs(key)[base]) == before + paired
    gaps = len(service.store.gap_calibration_runs(key).get(base, []))
    assert gaps == gaps_before + sum(r.test_bpb is not None for r in done.baseline_results)


def _confirmation_runs_done(proposal: Proposal) -> bool:
    return (
        proposal.state == State.CONFIRMING
        and bool(proposal.confirm_seeds)
        and len(proposal.baseline_results) == len(proposal.confirm_seeds)
    )


def _fingerprint(service: Service) -> str:
    best = service.store.get_best()
    assert best is not None and best.fingerprint_key is not None
    return best.fingerprint_key


# ---------------------------------------------------------------------------------------------------
# the opt-in accept rule seq-bayes/v1, through the same pipeline


@pytest.fixture
def seq_bayes_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("AR_ACCEPT_RULE", "seq-bayes/v1")
    settings = Settings(runs_dir=tmp_path / "runs", repo_dir=tmp_path / "repo", infra_retries=2)
    assert settings.acceptance.accept_rule == rules.SEQ_BAYES_RULE
    return settings


def test_seq_bayes_merges_a_clear_gain_with_its_posterior_and_rejects_a_clear_loss(
    seq_bayes_settings: Settings, redis_client: "redis.Redis[bytes]"
) -> None:
    with running_service(seq_bayes_settings, redis_client) as service:
        head = service.repo.head()
        worse = service.submit(BASELINE.replace("1.5", "1.6"), title="Raise the score")
        service.drain()
        rejected = service.store.get(worse.id)
        assert rejected.state == State.REJECTED, rejected.reason
        verdict = rejected.decision
        assert verdict is not None and verdict.rule == rules.SEQ_BAYES_RULE and not verdict.accepted
        assert verdict.stage == "screen" and verdict.stopped == "reject-unlikely"
        assert verdict.posterior["p_better"] < 0.002 and verdict.prior_version == rules.PRIOR_V1.version
        assert len(rejected.results) == 1 and not rejected.baseline_results  # no paired run spent on it
        assert service.repo.head() == head

        better = service.submit(BASELINE.replace("1.5", "1.4"), title="Lower the score")
        service.drain()
        merged = service.store.get(better.id)
        assert merged.state == State.MERGED, merged.reason
        decision = merged.decision
        assert decision is not None and decision.rule == rules.SEQ_BAYES_RULE and decision.accepted
        assert decision.stage == "confirm" and decision.stopped == "accept"
        assert decision.posterior["p_better"] >= seq_bayes_settings.acceptance.seq_p_accept
        assert decision.prior_version == rules.PRIOR_V1.version
        assert merged.confirm_seeds and decision.seeds == merged.confirm_seeds
        assert [r.seed for r in merged.baseline_results] == merged.confirm_seeds
        assert decision.merged_bpb == pytest.approx(1.4, abs=1e-3)
        best = service.store.get_best()
        assert best is not None and best.commit == merged.merged_commit == service.repo.head() != head
        assert best.val_bpb == decision.merged_bpb  # the posterior, not the raw mean of its runs
        assert "rule: seq-bayes/v1" in service.git("log", "-1", "--format=%B", "research")
        noted = json.loads(service.git("notes", "show", "research"))["decision"]
        assert noted["rule"] == rules.SEQ_BAYES_RULE and noted["stopped"] == "accept"
        assert noted["prior_version"] == rules.PRIOR_V1.version and noted["seeds"] == merged.confirm_seeds
        assert noted["posterior"] == pytest.approx(decision.posterior)
        assert noted["merged_bpb"] == pytest.approx(decision.merged_bpb)


def test_seq_bayes_asks_for_paired_runs_step_by_step_until_it_is_convinced(
    seq_bayes_settings: Settings, redis_client: "redis.Redis[bytes]"
) -> None:
    """A gain of 2σ (σ the prior's 0.001 until the runs calibrate it): one paired run at a time is
    worth its cost (AR_SEQ_RUN_COST_BPB 0.0001), and one is not enough. The proposal stays
    `confirming` through each step, keeps its earlier runs, and each of the best's runs joins the
    calibration once."""
    settings = seq_bayes_settings.replace(
        seq_run_cost_bpb=0.0001, new_fingerprint_runs=0, noise_sigma_prior_bpb=0.001
    )
    with running_service(settings, redis_client) as service:
        proposal = service.submit(BASELINE.replace("1.5", "1.498"), title="A small gain")
        service.drain()
        merged = service.store.get(proposal.id)
        assert merged.state == State.MERGED, merged.reason
        steps = [e for e in service.store.events(proposal.id) if e.state == State.CONFIRMING]
        assert len(steps) >= 2 and all("paired run(s) are worth their cost" in e.reason for e in steps)
        seeds = merged.confirm_seeds
        assert len(seeds) >= 2 and len(set(seeds)) == len(seeds) and seeds[0] != settings.runs.first_seed
        assert [r.seed for r in merged.results] == [settings.runs.first_seed, *seeds]
        assert [r.seed for r in merged.baseline_results] == seeds
        decision = merged.decision
        assert decision is not None and decision.stopped == "accept" and decision.seeds == seeds
        assert decision.delta_bpb == pytest.approx(-0.002, abs=1e-6)  # same seed, same wobble: exact
        runs = service.store.calibration_runs(_fingerprint(service))[proposal.base_commit]
        assert len(runs) == 1 + len(seeds)  # the baseline run and the best's halves of the pairs


def test_two_winners_finishing_together_give_one_merge_and_one_requeue(service: Service) -> None:
    a = service.submit(BASELINE.replace("FAKE_SCORE = 1.5", "FAKE_SCORE = 1.4"))
    b = service.submit(BASELINE + "FAKE_DELTA = -0.2\n")
    # both screen and confirm against the baseline before either is decided for merging
    service.drain()
    a_done, b_done = service.store.get(a.id), service.store.get(b.id)
    assert {a_done.state, b_done.state} == {State.MERGED}
    requeued = [
        p for p in (a_done, b_done) if any("re-queued" in e.reason for e in service.store.events(p.id))
    ]
    assert len(requeued) == 1
    assert requeued[0].base_commit != a.base_commit  # it was re-run on the first winner's commit
    assert service.git("rev-list", "--count", "research").strip() == "3"


def test_a_commit_git_refuses_ends_the_proposal_with_gits_reason(service: Service) -> None:
    """Proposals stored before titles were checked at submit (a NUL in the title; the API refuses one
    now): git refuses their commit messages. Before, the decision job failed each time and its retries
    were scheduled for an RQ scheduler that no process runs, so the winner stayed `accepted` for good.
    Now the retries run (at once), and the last one ends the winner `infra_error` with git's reason,
    nothing merged; the loser keeps its verdict, its reason saying the tried ref was not kept."""
    head = service.repo.head()
    best = service.store.get_best()
    winner = service.submit(BASELINE.replace("1.5", "1.4"), title="faster\0")
    loser = service.submit(BASELINE.replace("1.5", "1.6"), title="slower\0")
    service.drain()
    won = service.store.get(winner.id)
    assert won.state == State.INFRA_ERROR, won.reason
    assert "nothing was merged" in won.reason and "NUL byte" in won.reason
    assert won.merged_commit is None and service.repo.find_merged(winner.id) is None
    lost = service.store.get(loser.id)
    assert lost.state == State.REJECTED, lost.reason
    assert "its tried ref could not be kept" in lost.reason and "NUL byte" in lost.reason
    assert service.repo.head() == head and service.store.get_best() == best
    assert queue.queue_depths(service.conn) == {queue.RUNS_QUEUE: 0, queue.COMMITS_QUEUE: 0}


def test_a_merge_whose_branch_moved_leaves_no_merged_record(service: Service) -> None:
    head = service.repo.head()
    first = service.repo.commit_on_branch(head, BASELINE + "A = 1\n", "first", "p_first")
    with pytest.raises(HeadMoved):
        service.repo.commit_on_branch(head, BASELINE + "B = 1\n", "second", "p_second")
    assert service.repo.find_merged("p_second") is None and "p_second" not in service.repo.merged_refs()
    assert service.repo.find_merged("p_first") == first == service.repo.head()


def test_merges_from_before_merged_refs_get_theirs_from_the_committers_notes(service: Service) -> None:
    """A repository whose merges predate merged refs: at start the committer records each from the
    proposal id in its own note on the commit (never from the message)."""
    proposal = service.submit(BASELINE.replace("1.5", "1.4"))
    service.drain()
    merged = service.store.get(proposal.id).merged_commit
    service.git("update-ref", "-d", f"refs/autoresearch/merged/{proposal.id}")
    assert service.repo.find_merged(proposal.id) is None
    service.committer.bootstrap(BASELINE)
    assert service.repo.find_merged(proposal.id) == merged


def test_the_roots_note_holds_every_run_of_the_root(service: Service) -> None:
    root = service.repo.head()
    admin = Principal("ops", Role.ADMIN, "h")
    for count in (2, 1):  # later runs of the root (calibration, re-runs) join the baseline run
        logic.request_runs(service.store, service.settings, admin, RequestRuns(commit=root, count=count))
        service.drain()
    runs = [r for p in service.store.page(limit=100)[0] if p.kind == "run" for r in p.results]
    note = json.loads(service.repo.note(root) or "{}")
    assert len(runs) >= 4
    assert sorted(r["run_id"] for r in note["results"]) == sorted(r.run_id for r in runs)
    best = service.store.get_best()
    assert best is not None and note["val_bpb"] == best.val_bpb  # the mean of the root's runs
    # a decision retried after its note was written (the committer died before the transition)
    service.committer._record_root_runs(root, runs[:2], None)
    again = json.loads(service.repo.note(root) or "{}")
    assert len(again["results"]) == len(runs) and again["val_bpb"] == note["val_bpb"]


def test_every_run_has_a_live_header_and_a_log_section_with_the_candidate_last(service: Service) -> None:
    proposal = service.submit(BASELINE.replace("1.5", "1.4"), title="Lower the score")
    service.drain()
    done = service.store.get(proposal.id)
    assert done.state == State.MERGED
    live = "".join(chunk for _, chunk in service.store.read_live_log(proposal.id))
    headers = [line for line in live.splitlines() if line.startswith("# ---- run ")]
    base = proposal.base_commit[:10]
    assert [h.split(" · ")[1] for h in headers] == [
        "candidate (screening)",
        *["candidate (confirmation)", f"best {base} (paired)"] * 3,
    ]
    assert all(h.endswith(" · started") for h in headers)

    log = logic.proposal_log(service.store, proposal.id)
    sections = [line for line in log.splitlines() if line.startswith("# ---- run ")]
    roles = [line.split(" · ")[1] for line in sections]
    assert roles == [
        "candidate (screening)",
        f"best {base} (paired, confirmation 1/3)", "candidate (confirmation 1/3)",
        f"best {base} (paired, confirmation 2/3)", "candidate (confirmation 2/3)",
        f"best {base} (paired, confirmation 3/3)", "candidate (confirmation 3/3)",
    ]  # fmt: skip
    assert "evaluating" not in log and all(" · scored · val_bpb 1." in line for line in sections)
    last = done.results[-1]
    assert last.val_bpb is not None
    assert log.endswith(
        f"# ---- end of run {last.run_id} (candidate (confirmation 3/3)): scored, val_bpb {last.val_bpb:.6f}\n"
    )
    assert last.outcome == "scored" and log.count("step 1/10") == 7


def test_a_cpu_workers_fingerprint_names_its_cpu_model(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu = Environment(gpu="cpu", driver="none", environment_hash="fake-env", cpu="Test CPU 9000")
    monkeypatch.setattr(service.sandbox, "environment", lambda: cpu)
    baseline = service.store.get_best()
    proposal = service.submit(BASELINE.replace("1.5", "1.6"))
    service.drain()
    result = service.store.get(proposal.id).results[0]
    assert result.fingerprint is not None and result.fingerprint.cpu == "Test CPU 9000"
    assert baseline is not None and baseline.fingerprint_key != result.fingerprint.key()  # compared apart
    assert service.store.fingerprint_fields()[result.fingerprint.key()].cpu == "Test CPU 9000"
    # the best's runs asked for on the new fingerprint calibrate it, as for a new GPU model
    assert service.store.calibration_runs(result.fingerprint.key()).get(baseline.commit)


# ---------------------------------------------------------------------------------------------------
# the opt-in accept rule seq-bayes/v2, through the same pipeline


def test_seq_bayes_v2_merges_a_clear_gain_with_its_record_and_rejects_a_clear_loss_in_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client: "redis.Redis[bytes]"
) -> None:
    monkeypatch.setenv("AR_ACCEPT_RULE", "seq-bayes/v2")
    settings = Settings(runs_dir=tmp_path / "runs", repo_dir=tmp_path / "repo", infra_retries=2)
    with running_service(settings, redis_client) as service:
        worse = service.submit(BASELINE.replace("1.5", "1.6"), title="Raise the score")
        service.drain()
        rejected = service.store.get(worse.id)
        assert rejected.state == State.REJECTED, rejected.reason
        verdict = rejected.decision
        assert verdict is not None and verdict.rule == rules.SEQ_BAYES_V2_RULE and verdict.stage == "screen"
        assert len(rejected.results) == 1 and not rejected.baseline_results  # one run, no pair

        better = service.submit(BASELINE.replace("1.5", "1.4"), title="Lower the score")
        service.drain()
        merged = service.store.get(better.id)
        assert merged.state == State.MERGED, merged.reason
        decision = merged.decision
        assert (
            decision is not None and decision.rule == rules.SEQ_BAYES_V2_RULE and decision.stopped == "accept"
        )
        assert decision.prior_version == rules.PRIOR_V2.version and decision.seeds == merged.confirm_seeds
        assert decision.posterior["p_better"] >= rules.SeqV2Params().p_accept
        best = service.store.get_best()
        assert best is not None and best.val_bpb == decision.merged_bpb
        noted = json.loads(service.git("notes", "show", "research"))["decision"]
        assert noted["rule"] == rules.SEQ_BAYES_V2_RULE and noted["stopped"] == "accept"
        assert (
            noted["posterior"] == pytest.approx(decision.posterior) and noted["seeds"] == merged.confirm_seeds
        )


def test_seq_bayes_v4_records_each_confirmation_s_paired_differences_and_decides_with_them(
    tmp_path: Path, redis_client: "redis.Redis[bytes]"
) -> None:
    """The committer files a confirmation's paired differences (candidate − best per seed) under the
    fingerprint, and seq-bayes/v4's decision says how many degrees of freedom of them it had."""
    settings = Settings(
        runs_dir=tmp_path / "runs",
        repo_dir=tmp_path / "repo",
        infra_retries=2,
        accept_rule=rules.SEQ_BAYES_V4_RULE,
    )
    with running_service(settings, redis_client) as service:
        better = service.submit(BASELINE.replace("1.5", "1.498"), title="A small gain")
        service.drain()
        merged = service.store.get(better.id)
        decision = merged.decision
        assert decision is not None and decision.rule == rules.SEQ_BAYES_V4_RULE, merged.reason
        assert decision.stage == "confirm" and "pair_dof" in decision.posterior
        fingerprint = merged.results[-1].fingerprint
        assert fingerprint is not None
        filed = service.store.pair_calibration_runs(fingerprint.key())
        pairs = list(zip(merged.results[1:], merged.baseline_results, strict=True))
        assert filed == {f"{merged.id}@{merged.base_commit}": [c.val_bpb - b.val_bpb for c, b in pairs]}
