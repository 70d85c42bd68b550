"""The accept rule seq-bayes/v1 and the campaign simulator's trust checks (bench/campaign.py drives the
same `rules.decide` the committer runs)."""

import sys
from pathlib import Path

import numpy as np
import pytest

from services.committer import rules
from services.settings import AcceptanceSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

NOISE = rules.Noise(0.001, "calibrated", 10)
POLICY = rules.Policy(rule=rules.SEQ_BAYES_RULE)


def evidence(
    screen: float, cand: tuple[float, ...] = (), best: tuple[float, ...] = (), seeds: tuple[int, ...] = ()
) -> rules.Evidence:
    return rules.Evidence(
        best_commit="c", best_bpb=1.3000, best_sd_bpb=0.0005, noise=NOISE, screen_runs=[screen],
        screen_seeds=[42], candidate_runs=list(cand), best_runs=list(best), seeds=list(seeds),
    )  # fmt: skip


def test_a_clearly_worse_screen_is_rejected_at_once_with_its_posterior() -> None:
    decision = rules.decide(evidence(1.3200), POLICY)
    assert not decision.accepted and not decision.confirm
    assert decision.stopped == "reject-unlikely" and decision.stage == "screen"
    assert decision.posterior["p_better"] < 0.002
    assert decision.prior_version == rules.PRIOR_V1.version and decision.rule == rules.SEQ_BAYES_RULE


def test_a_promising_screen_asks_for_paired_runs_and_never_accepts_alone() -> None:
    decision = rules.decide(evidence(1.2950), POLICY)
    assert not decision.accepted and decision.confirm and decision.more_runs >= 1
    assert decision.stopped == "more-runs" and decision.posterior["p_better"] > 0.9


def test_paired_runs_that_agree_with_the_screen_accept_with_a_shrunk_score() -> None:
    decision = rules.decide(evidence(1.2950, (1.2948, 1.2951), (1.3001, 1.2999), (7, 8)), POLICY)
    assert decision.accepted and decision.stopped == "accept" and decision.stage == "confirm"
    assert decision.posterior["p_better"] >= POLICY.seq.p_accept
    assert decision.seeds == [7, 8] and decision.candidate_runs == [1.2948, 1.2951]
    # the recorded score is the reference plus the posterior mean: pulled towards the best
    assert decision.merged_bpb is not None and 1.2950 < decision.merged_bpb < 1.3000


def test_paired_runs_that_contradict_a_lucky_screen_reject_it() -> None:
    screened = rules.decide(evidence(1.2985), POLICY)
    decision = rules.decide(
        evidence(1.2985, (1.3013, 1.3011, 1.3014), (1.3000, 1.3001, 1.2999), (7, 8, 9)), POLICY
    )
    assert not decision.accepted
    assert decision.posterior["p_better"] < 0.5 < screened.posterior["p_better"]


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


def test_the_tripwire_is_part_of_an_accepting_verdict() -> None:
    val_c, val_b = [0.70, 0.70], [1.30, 1.30]
    memoriser = rules.Evidence(
        best_commit="c", best_bpb=1.3, best_sd_bpb=0.0005, noise=NOISE, screen_runs=[0.70], screen_seeds=[42],
        candidate_runs=[0.7001, 0.6999], best_runs=val_b, seeds=[7, 8],
        test=rules.TripwireEvidence(
            rules.PairedScores(val_c, val_b, [1.31, 1.31], [1.31, 1.31]), rules.Noise(0.0004, "calibrated", 9),
            [], rules.tripwire_params_from(AcceptanceSettings.defaults()),
        ),
    )  # fmt: skip
    decision = rules.decide(memoriser, POLICY)
    assert not decision.accepted and decision.tripwire == "blocked"


def test_posterior_matches_a_numerical_integration_of_the_prior() -> None:
    prior = rules.PRIOR_V1
    grid = np.linspace(-0.08, 0.08, 200_001)
    density = np.where(grid > 0, prior.worse_weight * 2 * _normal(grid, prior.worse_sd_bpb), 0.0)
    density += prior.zero_weight * _normal(grid, prior.zero_sd_bpb)
    density += np.where(
        grid < 0, prior.gain_weight / prior.gain_mean_bpb * np.exp(grid / prior.gain_mean_bpb), 0
    )
    for y, sd in [(0.0, 0.0005), (-0.002, 0.0007), (0.003, 0.002), (-0.01, 0.009)]:
        weights = density * np.exp(-((grid - y) ** 2) / (2 * sd * sd))
        weights /= weights.sum()
        post, _ = rules._posterior_of(y, sd * sd, prior)
        assert post.p_better == pytest.approx(weights[grid < 0].sum(), abs=1e-3)
        assert post.mean_bpb == pytest.approx((weights * grid).sum(), abs=1e-6)


def _normal(x: np.ndarray, sd: float) -> np.ndarray:
    return np.exp(-(x**2) / (2 * sd * sd)) / (sd * np.sqrt(2 * np.pi))
