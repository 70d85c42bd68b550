"""The accept rule seq-bayes/v3 (opt-in): its decision record, its guard against one outlier run, the
closed forms it shares with v2, and its trust in whole simulated campaigns (bench/campaign.py drives
the same `rules.decide` the committer runs)."""

import sys
from pathlib import Path

import pytest

from services.committer import rules

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.evidence import SIGMA, evidence

POLICY = rules.Policy(rule=rules.SEQ_BAYES_V3_RULE)


def test_a_clearly_worse_screen_costs_one_run_and_records_why() -> None:
    decision = rules.decide(evidence(1.3200), POLICY)
    assert not decision.accepted and not decision.confirm and decision.more_runs == 0
    assert decision.stopped == "reject-unlikely" and decision.stage == "screen"
    assert decision.rule == rules.SEQ_BAYES_V3_RULE and decision.prior_version == rules.PRIOR_V2.version


def test_a_promising_screen_asks_for_one_paired_run_and_never_accepts_alone() -> None:
    decision = rules.decide(evidence(1.2950), POLICY)
    assert not decision.accepted and decision.confirm and decision.more_runs == 1
    assert decision.stopped == "more-runs"


def test_an_accepting_decision_records_posterior_runs_seeds_prior_and_why_it_stopped() -> None:
    decision = rules.decide(evidence(1.2950, (1.2948, 1.2953), (1.3001, 1.2999), (7, 8)), POLICY)
    assert decision.accepted and decision.stopped == "accept" and decision.stage == "confirm"
    assert decision.candidate_runs == [1.2948, 1.2953] and decision.seeds == [7, 8]
    post = decision.posterior
    assert post["p_better"] >= POLICY.seq3.p_accept
    assert post["p_better_confirmation_alone"] >= POLICY.seq3.p_confirm_alone
    assert post["lo_bpb"] < post["mean_bpb"] < post["hi_bpb"] < 0 < post["expected_gain_bpb"]
    assert decision.params["tail_weight"] == POLICY.seq3.tail_weight
    assert decision.merged_bpb is not None and 1.2950 < decision.merged_bpb < 1.3000
    assert "accepted" in decision.reason and "mixture/v2" in decision.reason


def test_one_outlier_paired_run_does_not_carry_an_accept() -> None:
    """A middling screen and one paired run 6 σ better than everything else: v2 accepts, v3 asks for
    more evidence, and accepts once the next pairs agree."""
    lucky = evidence(1.2995, (1.2940,), (1.3000,), (7,))
    assert rules.decide(lucky, rules.Policy(rule=rules.SEQ_BAYES_V2_RULE)).accepted
    decision = rules.decide(lucky, POLICY)
    assert not decision.accepted and decision.confirm
    agreeing = evidence(1.2995, (1.2940, 1.2975, 1.2978), (1.3000, 1.3001, 1.2999), (7, 8, 9))
    assert rules.decide(agreeing, POLICY).accepted


def test_the_flat_posterior_is_the_closed_form_one() -> None:
    for y, sd in [(0.0, 0.0005), (-0.004, 0.002), (0.003, 0.002), (-0.01, 0.009), (0.05, 0.0001)]:
        post, log_z = rules._posterior_of(y, sd * sd, rules.PRIOR_V2)
        belief = rules._belief(y, sd * sd, rules.PRIOR_V2)
        assert belief.p_better == pytest.approx(post.p_better, abs=1e-12)
        assert belief.mean_bpb == pytest.approx(post.mean_bpb, rel=1e-9, abs=1e-15)
        assert belief.sd_bpb == pytest.approx(post.sd_bpb, rel=1e-9)
        assert belief.log_z == pytest.approx(log_z, abs=1e-9)
        assert 0.0 <= belief.upside_bpb <= max(-post.mean_bpb, 0.0) + 3 * post.sd_bpb


def test_the_screening_threshold_is_where_the_look_ahead_changes_its_verdict() -> None:
    threshold = rules.screen_threshold_v3(SIGMA, SIGMA / 2, POLICY.seq3)
    assert -5 * SIGMA < threshold < SIGMA
    assert rules.decide(evidence(1.3000 + threshold - 1e-5), POLICY).confirm
    assert not rules.decide(evidence(1.3000 + threshold + 1e-5), POLICY).confirm
