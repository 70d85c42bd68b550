"""The accept rule seq-bayes/v2 (opt-in): its decision record, and its trust in whole simulated campaigns
(bench/campaign.py drives the same `rules.decide` the committer runs): pure noise merged at most 1% of
the time at every σ, a change that ignores AR_SEED never merged."""

import sys
from pathlib import Path

import numpy as np
import pytest

from services.committer import rules

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import itertools

from bench import campaign
from tests.support.evidence import NOISE, evidence

POLICY = rules.Policy(rule=rules.SEQ_BAYES_V2_RULE)


def test_a_clearly_worse_screen_costs_one_run_and_records_why() -> None:
    decision = rules.decide(evidence(1.3200), POLICY)
    assert not decision.accepted and not decision.confirm and decision.more_runs == 0
    assert decision.stopped == "reject-unlikely" and decision.stage == "screen"
    assert decision.rule == rules.SEQ_BAYES_V2_RULE and decision.prior_version == rules.PRIOR_V2.version
    assert decision.posterior["p_better"] < 0.002 and "P(better)" in decision.reason


def test_a_promising_screen_asks_for_one_paired_run_and_never_accepts_alone() -> None:
    decision = rules.decide(evidence(1.2950), POLICY)
    assert not decision.accepted and decision.confirm and decision.more_runs == 1
    assert decision.stopped == "more-runs" and decision.posterior["p_better"] > 0.9


def test_an_accepting_decision_records_posterior_runs_seeds_prior_and_why_it_stopped() -> None:
    decision = rules.decide(evidence(1.2950, (1.2948, 1.2953), (1.3001, 1.2999), (7, 8)), POLICY)
    assert decision.accepted and decision.stopped == "accept" and decision.stage == "confirm"
    assert decision.candidate_runs == [1.2948, 1.2953] and decision.best_runs == [1.3001, 1.2999]
    assert decision.seeds == [7, 8] and decision.prior_version == "mixture/v2"
    post = decision.posterior
    assert post["p_better"] >= POLICY.seq2.p_accept
    assert post["p_better_confirmation_alone"] >= POLICY.seq2.p_confirm_alone
    assert post["lo_bpb"] < post["mean_bpb"] < post["hi_bpb"] < 0
    assert post["best_level_bpb"] == pytest.approx(1.3000, abs=2e-4) and post["run_cost_bpb"] > 0
    assert decision.params["p_accept"] == POLICY.seq2.p_accept
    # the recorded score is the best's level plus the posterior mean: shrunk towards the best
    assert decision.merged_bpb is not None and 1.2950 < decision.merged_bpb < 1.3000
    assert "accepted" in decision.reason and "mixture/v2" in decision.reason


def test_a_lucky_screen_that_the_paired_runs_do_not_back_is_rejected() -> None:
    decision = rules.decide(evidence(1.2900, (1.3004,), (1.3001,), (7,)), POLICY)
    assert not decision.accepted
    assert decision.posterior["p_better_confirmation_alone"] < POLICY.seq2.p_confirm_alone


def test_a_candidate_that_ignores_the_seed_is_rejected() -> None:
    decision = rules.decide(evidence(1.2000, (1.2000, 1.2000), (1.3001, 1.2999), (7, 8)), POLICY)
    assert not decision.accepted and decision.stopped == "reject-ignores-seed"
    assert "ignores AR_SEED" in decision.reason


def test_a_seed_only_change_is_never_confirmed() -> None:
    seed_only = rules.Evidence(
        best_commit="c", best_bpb=1.3, best_sd_bpb=0.0005, noise=NOISE, screen_runs=[1.29], screen_seeds=[42],
        seed_only_change=True,
    )  # fmt: skip
    decision = rules.decide(seed_only, POLICY)
    assert not decision.confirm and decision.reason == rules.SEED_ONLY


def test_a_run_costs_less_where_screening_buys_less() -> None:
    values = [rules.screen_value(s, 0.7, rules.PRIOR_V2) for s in campaign.SIGMAS]
    assert all(a > b > 0 for a, b in itertools.pairwise(values))


def test_the_two_part_gain_prior_matches_a_numerical_integration() -> None:
    prior = rules.PRIOR_V2
    grid = np.linspace(-0.12, 0.12, 400_001)
    density = np.where(grid > 0, prior.worse_weight * 2 * _normal(grid, prior.worse_sd_bpb), 0.0)
    density += prior.zero_weight * _normal(grid, prior.zero_sd_bpb)
    for weight, mean in [
        (prior.gain_weight, prior.gain_mean_bpb),
        (prior.large_gain_weight, prior.large_gain_mean_bpb),
    ]:
        density += np.where(grid < 0, weight / mean * np.exp(grid / mean), 0)
    for y, sd in [(0.0, 0.0005), (-0.004, 0.002), (0.003, 0.002), (-0.01, 0.009)]:
        weights = density * np.exp(-((grid - y) ** 2) / (2 * sd * sd))
        weights /= weights.sum()
        post, _ = rules._posterior_of(y, sd * sd, prior)
        assert post.p_better == pytest.approx(weights[grid < 0].sum(), abs=1e-3)
        assert post.mean_bpb == pytest.approx((weights * grid).sum(), abs=1e-6)


def _normal(x: np.ndarray, sd: float) -> np.ndarray:
    return np.exp(-(x**2) / (2 * sd * sd)) / (sd * np.sqrt(2 * np.pi))
