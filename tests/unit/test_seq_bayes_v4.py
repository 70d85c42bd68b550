"""The accept rule seq-bayes/v4 (opt-in): seq-bayes/v3 crediting the same-seed correlation of paired
runs that the confirmations on the fingerprint show. Without that evidence it decides as v3; with it,
ρ̂ is a conservative bound, recorded in the decision, and a pair weighs more."""

import dataclasses
import sys
from pathlib import Path

import pytest

from services.committer import rules

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.evidence import SIGMA, evidence

V3 = rules.Policy(rule=rules.SEQ_BAYES_V3_RULE)
POLICY = rules.Policy(rule=rules.SEQ_BAYES_V4_RULE)
CASES = [
    evidence(1.3200),
    evidence(1.2950),
    evidence(1.2950, (1.2948, 1.2953), (1.3001, 1.2999), (7, 8)),
    evidence(1.2995, (1.2940,), (1.3000,), (7,)),
    evidence(1.2995, (1.2940, 1.2975, 1.2978), (1.3000, 1.3001, 1.2999), (7, 8, 9)),
]


def spread(rho: float, dof: int) -> rules.PairSpread:
    """Paired differences whose spread is exactly what a same-seed correlation `rho` gives."""
    return rules.PairSpread(sum_squares_bpb2=dof * 2 * SIGMA**2 * (1 - rho), dof=dof)


def with_pairs(e: rules.Evidence, rho: float, dof: int) -> rules.Evidence:
    return dataclasses.replace(e, pair_spread=spread(rho, dof))


@pytest.mark.parametrize("case", CASES)
def test_without_paired_differences_to_go_on_it_decides_as_v3(case: rules.Evidence) -> None:
    v3, v4 = rules.decide(case, V3), rules.decide(case, POLICY)
    assert (v4.accepted, v4.confirm, v4.more_runs, v4.stopped) == (
        v3.accepted,
        v3.confirm,
        v3.more_runs,
        v3.stopped,
    )
    for key, value in v3.posterior.items():
        assert v4.posterior[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert v4.posterior["pair_rho"] == 0.0 and v4.posterior["pair_var_bpb2"] == pytest.approx(2 * SIGMA**2)
    assert rules.screen_threshold_v4(SIGMA, SIGMA / 2, 0.0, POLICY.seq4) == rules.screen_threshold_v3(
        SIGMA, SIGMA / 2, V3.seq3
    )


def test_rho_is_an_upper_bound_that_shrinks_toward_zero_with_few_degrees_of_freedom() -> None:
    case = CASES[3]
    rhos = [rules.pair_noise(with_pairs(case, 0.98, dof), POLICY.seq4).rho for dof in (2, 4, 10, 40, 400)]
    assert rhos[0] == 0.0  # below rho_min_dof, with this candidate's one pair adding none
    assert rhos == sorted(rhos) and all(r < 0.98 for r in rhos) and rhos[-1] > 0.95
    # paired differences as spread as independent runs give no credit
    assert rules.pair_noise(with_pairs(case, 0.0, 400), POLICY.seq4).rho == 0.0
    # nor does σ while it is the prior
    prior = dataclasses.replace(with_pairs(case, 0.98, 400), noise=rules.Noise(SIGMA, "prior", 0))
    assert rules.pair_noise(prior, POLICY.seq4).rho == 0.0


def test_the_decision_records_rho_and_the_pair_variance_it_used() -> None:
    decision = rules.decide(with_pairs(CASES[3], 0.98, 40), POLICY)
    pair = rules.pair_noise(with_pairs(CASES[3], 0.98, 40), POLICY.seq4)
    assert decision.rule == rules.SEQ_BAYES_V4_RULE
    assert decision.posterior["pair_rho"] == pair.rho > 0.9
    assert decision.posterior["pair_var_bpb2"] == pytest.approx(2 * SIGMA**2 * (1 - pair.rho))
    assert decision.posterior["pair_dof"] == 40
    assert decision.params["rho_min_dof"] == POLICY.seq4.rho_min_dof
    assert "same-seed ρ̂ 0.9" in decision.reason


def test_with_a_high_same_seed_correlation_a_pair_weighs_more() -> None:
    """After a middling screen, one pair 0.8 σ better on its seed: v3 (ρ counted as 0) gives up, v4 with
    paired differences that show ρ ≈ 0.98 accepts. One 0.5 σ better: v4 asks for another pair, and
    accepts once it agrees."""
    clear = with_pairs(evidence(1.2995, (1.2990,), (1.2998,), (7,)), 0.98, 40)
    assert rules.decide(clear, V3).stopped == "reject-not-worth"
    decision = rules.decide(clear, POLICY)
    assert decision.accepted and decision.posterior["sd_bpb"] < rules.decide(clear, V3).posterior["sd_bpb"]
    assert not rules.decide(dataclasses.replace(clear, pair_spread=rules.PairSpread()), POLICY).accepted
    borderline = with_pairs(evidence(1.2995, (1.2993,), (1.2998,), (7,)), 0.98, 40)
    assert rules.decide(borderline, V3).stopped == "reject-not-worth"
    assert rules.decide(borderline, POLICY).confirm
    agreeing = with_pairs(evidence(1.2995, (1.2993, 1.3006), (1.2998, 1.3011), (7, 8)), 0.98, 40)
    assert rules.decide(agreeing, POLICY).accepted and not rules.decide(agreeing, V3).accepted


def test_with_a_high_same_seed_correlation_the_screen_confirms_more() -> None:
    rho = rules.pair_noise(with_pairs(CASES[1], 0.98, 40), POLICY.seq4).rho
    assert rules.screen_threshold_v4(SIGMA, SIGMA / 2, rho, POLICY.seq4) > rules.screen_threshold_v3(
        SIGMA, SIGMA / 2, V3.seq3
    )


def test_paired_differences_that_disagree_with_the_correlation_are_not_accepted() -> None:
    """Pairs whose own spread is wide (the candidate's effect varies by seed) count toward the spread:
    the rule does not accept on one lucky pair."""
    wild = with_pairs(evidence(1.2995, (1.2980, 1.3010), (1.3000, 1.2990), (7, 8)), 0.98, 4)
    assert not rules.decide(wild, POLICY).accepted


def test_a_change_that_ignores_the_seed_is_rejected_whatever_rho() -> None:
    seedless = with_pairs(evidence(1.2990, (1.2990, 1.2990), (1.3000, 1.3005), (7, 8)), 0.98, 400)
    decision = rules.decide(seedless, POLICY)
    assert not decision.accepted and decision.stopped == "reject-ignores-seed"


def test_the_chi_square_bound_is_close_to_the_exact_quantile() -> None:
    # the 5% quantiles of χ² with 4, 10, 40 degrees of freedom: 0.711, 3.940, 26.509
    for dof, exact in ((4, 0.711), (10, 3.940), (40, 26.509)):
        assert rules._chi2_lower(dof, 1.645) == pytest.approx(exact, rel=0.04)
