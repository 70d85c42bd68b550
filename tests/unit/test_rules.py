"""The accept rule paired-z/v1 on hand-made numbers."""

import pytest

from services.committer import rules
from services.committer.committer import only_seed_changed
from services.models import Decision

PARAMS = rules.RuleParams(confirm_runs=3, screen_margin_sigma=0.5, accept_z=2.33, sigma_prior_bpb=0.001)
NOISE = rules.Noise(0.001, "calibrated", 10)


def test_screen_rejects_clearly_worse_and_confirms_close_calls() -> None:
    worse = rules.screen(1.3020, 1.3000, "c", NOISE, PARAMS)
    assert not worse.confirm and not worse.accepted
    assert "does not beat" in worse.reason
    close = rules.screen(1.3004, 1.3000, "c", NOISE, PARAMS)  # 0.4 σ worse: within the margin
    assert close.confirm and not close.accepted
    better = rules.screen(1.2950, 1.3000, "c", NOISE, PARAMS)
    assert better.confirm
    assert better.threshold_bpb == pytest.approx(0.0005)


def test_screen_reason_says_what_the_screening_run_did() -> None:
    far_better = rules.screen(1.0560, 1.3000, "c", NOISE, PARAMS)  # 244 σ better
    assert far_better.reason.startswith(
        "screening run 1.056000 beats the best 1.300000 by 0.244000 (244.0 σ;"
    )
    assert "within" not in far_better.reason and far_better.reason.endswith("confirming with 3 paired runs")
    close = rules.screen(1.3004, 1.3000, "c", NOISE, PARAMS)
    assert "is 0.000400 worse than the best 1.300000, within the margin of 0.5 σ = 0.000500" in close.reason
    assert "beats" not in close.reason
    assert "by 0.000000" not in rules.screen(1.3, 1.3, "c", NOISE, PARAMS).reason  # a tie beats nothing
    zero = rules.Noise(0.0, "calibrated", 4)  # runs that all scored alike: no σ to count in
    assert (
        "beats the best 1.300000 by 0.001000 (σ 0.000000 calibrated)"
        in rules.screen(1.299, 1.3, "c", zero, PARAMS).reason
    )


def test_rule_parameters_keep_integers_through_storage() -> None:
    decision = rules.screen(1.2950, 1.3000, "c", NOISE, PARAMS)
    stored = Decision.model_validate_json(decision.model_dump_json())
    assert stored.params["confirm_runs"] == 3 and type(stored.params["confirm_runs"]) is int
    assert '"confirm_runs":3,' in decision.model_dump_json()
    assert type(stored.params["screen_margin_sigma"]) is float


def test_confirm_accepts_a_clear_gain_with_its_numbers() -> None:
    decision = rules.confirm(
        [1.2950, 1.2948, 1.2953], [1.3001, 1.2999, 1.3003], [1, 2, 3], "c", NOISE, PARAMS
    )
    assert decision.accepted
    assert decision.stage == "confirm"
    assert decision.delta_bpb == pytest.approx(-0.005067, abs=1e-6)
    # σ_d is floored at √2·σ: 0.0014142; bound = Δ + 2.33·σ_d/√3
    assert decision.threshold_bpb == pytest.approx(-0.005067 + 2.33 * 0.0014142 / 3**0.5, abs=1e-6)
    assert decision.candidate_runs == [1.2950, 1.2948, 1.2953] and decision.seeds == [1, 2, 3]


def test_confirm_rejects_a_gain_inside_the_noise() -> None:
    decision = rules.confirm(
        [1.2995, 1.3001, 1.2998], [1.3000, 1.3002, 1.2999], [1, 2, 3], "c", NOISE, PARAMS
    )
    assert not decision.accepted
    assert decision.threshold_bpb is not None and decision.threshold_bpb > 0


def test_confirm_rejects_a_candidate_that_ignores_the_seed() -> None:
    decision = rules.confirm([1.20, 1.20, 1.20], [1.30, 1.31, 1.29], [5, 6, 7], "c", NOISE, PARAMS)
    assert not decision.accepted
    assert "ignores AR_SEED" in decision.reason


def test_an_outlier_in_the_best_run_does_not_buy_an_accept() -> None:
    # one best run 10 σ bad: the sample spread of the differences widens the bound
    decision = rules.confirm(
        [1.3000, 1.3001, 1.2999], [1.3000, 1.3100, 1.3000], [1, 2, 3], "c", NOISE, PARAMS
    )
    assert not decision.accepted


def test_calibration_pools_commits_and_falls_back_to_the_prior() -> None:
    assert rules.calibrate({"a": [1.0]}, PARAMS) == rules.Noise(0.001, "prior", 1)
    noise = rules.calibrate({"a": [1.0, 1.002], "b": [2.0, 2.004, 2.002]}, PARAMS)
    # squares: a 2·0.001² = 2e-6; b 0.002²+0.002²+0 = 8e-6 → 1e-5 over 3 dof
    assert noise.source == "calibrated" and noise.runs == 5
    assert noise.sigma_bpb == pytest.approx((1e-5 / 3) ** 0.5)


@pytest.mark.parametrize(
    ("diff", "expected"),
    [
        ("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-SEED = 1\n+SEED = 2\n", True),
        ("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-torch.manual_seed(s)\n+torch.manual_seed(s + 1)\n", True),
        ("--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n-SEED = 1\n-LR = 0.1\n+SEED = 2\n+LR = 0.2\n", False),
        ("", False),
    ],
)
def test_seed_only_changes_are_recognised(diff: str, expected: bool) -> None:
    assert only_seed_changed(diff) is expected


# ---------------------------------------------------------------------------------------------------
# The held-out test tripwire (rule test-gap/v1)

TRIPWIRE = rules.TripwireParams(z=3.0, sigma_prior_bpb=0.001, gain_slack=0.5)
GAP_NOISE = rules.Noise(0.0004, "calibrated", 12)  # σ of one run's (test − val)
SEEDS = [11, 12, 13]


def accepted(val_candidate: list[float], val_best: list[float]) -> Decision:
    decision = rules.confirm(val_candidate, val_best, SEEDS, "c", NOISE, PARAMS)
    assert decision.accepted, decision.reason
    return decision


def scores(
    val_c: list[float], val_b: list[float], test_c: list[float], test_b: list[float]
) -> rules.PairedScores:
    return rules.PairedScores(val_candidate=val_c, val_best=val_b, test_candidate=test_c, test_best=test_b)


def test_tripwire_passes_an_honest_gain_that_test_matches() -> None:
    val_c, val_b = [1.2950, 1.2948, 1.2953], [1.3001, 1.2999, 1.3003]
    test_c = [v + 0.0100 + e for v, e in zip(val_c, [0.0003, -0.0002, 0.0001], strict=True)]
    test_b = [v + 0.0100 + e for v, e in zip(val_b, [-0.0001, 0.0002, 0.0000], strict=True)]
    decision = rules.tripwire(
        accepted(val_c, val_b), scores(val_c, val_b, test_c, test_b), GAP_NOISE, [], TRIPWIRE
    )
    assert decision.accepted and decision.tripwire == "passed"
    assert decision.test_gaps == pytest.approx([0.0004, -0.0004, 0.0001])
    assert decision.test_gap_bpb == pytest.approx(0.0001 / 3)
    assert decision.test_gap_sigma_bpb == pytest.approx(2**0.5 * 0.0004)  # a paired gap: √2 σ
    gain = (1.3001 + 1.2999 + 1.3003 - 1.2950 - 1.2948 - 1.2953) / 3
    assert decision.test_val_gain_bpb == pytest.approx(gain)
    assert decision.test_threshold_bpb == pytest.approx(3.0 * 2**0.5 * 0.0004 / 3**0.5 + 0.5 * gain)
    assert decision.test_n == 3 and decision.test_cumulative_steps == 1
    assert decision.test_best_runs == test_b and decision.test_candidate_runs == test_c


@pytest.mark.parametrize("share", [0.7, 1.3])
def test_tripwire_passes_an_honest_small_gain_that_test_matches_only_in_part(share: float) -> None:
    """A small real gain of 0.002 that test shows at 70% (or 130%) of its size: not blocked."""
    val_b = [1.3000, 1.3002, 1.2998]
    val_c = [v - 0.0020 for v in val_b]
    test_b = [v + 0.01 for v in val_b]
    test_c = [t - share * 0.0020 for t in test_b]
    decision = rules.tripwire(
        accepted(val_c, val_b), scores(val_c, val_b, test_c, test_b), GAP_NOISE, [], TRIPWIRE
    )
    assert decision.accepted and decision.tripwire == "passed"


def test_tripwire_blocks_a_gain_that_only_validation_shows_without_a_test_figure_in_the_reason() -> None:
    """The memoriser: val_bpb far below the best's, test_bpb where the best's is (or worse)."""
    val_b, val_c = [0.7090, 0.7094, 0.7088], [0.0035, 0.0036, 0.0034]
    test_b = [0.7210, 0.7208, 0.7213]
    test_c = [0.7222, 0.7219, 0.7230]
    decision = rules.tripwire(
        accepted(val_c, val_b), scores(val_c, val_b, test_c, test_b), GAP_NOISE, [], TRIPWIRE
    )
    assert not decision.accepted and decision.tripwire == "blocked"
    assert decision.reason.startswith(rules.TRIPWIRE_BLOCKED)
    assert decision.test_gap_bpb is not None and decision.test_threshold_bpb is not None
    assert decision.test_gap_bpb > decision.test_threshold_bpb
    assert decision.test_gap_bpb == pytest.approx(0.7056 + 0.0013, abs=1e-4)  # val gain + test loss
    for figure in [*test_b, *test_c, decision.test_gap_bpb, decision.test_threshold_bpb]:
        assert f"{figure:.6f}" not in decision.reason and f"{figure:.4f}" not in decision.reason


def test_tripwire_blocks_a_partial_memoriser() -> None:
    """An honest 0.004 gain plus 0.012 that only validation shows: the unmatched share is 75%."""
    val_b = [1.3000, 1.3002, 1.2998]
    val_c = [v - 0.016 for v in val_b]
    test_b = [v + 0.01 for v in val_b]
    test_c = [t - 0.004 for t in test_b]
    decision = rules.tripwire(
        accepted(val_c, val_b), scores(val_c, val_b, test_c, test_b), GAP_NOISE, [], TRIPWIRE
    )
    assert decision.tripwire == "blocked" and not decision.accepted


def test_tripwire_noise_is_the_prior_until_the_best_runs_give_three_degrees_of_freedom() -> None:
    assert rules.calibrate_gap({"a": [0.010, 0.012], "b": [0.011]}, TRIPWIRE) == rules.Noise(
        0.001, "prior", 3
    )
    noise = rules.calibrate_gap({"a": [0.010, 0.012], "b": [0.011, 0.013, 0.012]}, TRIPWIRE)
    assert noise.source == "calibrated"
    assert noise.sigma_bpb == pytest.approx(((2 * 0.001**2 + 2 * 0.001**2) / 3) ** 0.5)
    val_b = [1.3000, 1.3002, 1.2998]
    val_c = [v - 0.005 for v in val_b]
    prior = rules.calibrate_gap({}, TRIPWIRE)
    decision = rules.tripwire(
        accepted(val_c, val_b), scores(val_c, val_b, val_c, val_b), prior, [], TRIPWIRE
    )  # fmt: skip
    assert decision.test_gap_sigma_source == "prior"
    assert decision.test_gap_sigma_bpb == pytest.approx(2**0.5 * 0.001)


def test_cumulative_check_blocks_a_gap_spread_over_many_merges() -> None:
    """Five steps, each with a gap at 90% of its own bound: each would pass alone, but their sum is
    far beyond the noise of the sum (which grows as √steps, the sum as steps)."""
    val_b = [1.3000, 1.3002, 1.2998]
    val_c = [v - 0.002 for v in val_b]
    se = 2**0.5 * GAP_NOISE.sigma_bpb / 3**0.5
    step_gap = 0.9 * (3.0 * se + 0.5 * 0.002)
    history = [rules.GapStep(gap_bpb=step_gap, se_bpb=se, val_gain_bpb=0.002) for _ in range(4)]
    test_b = [v + 0.01 for v in val_b]
    test_c = [t - 0.002 + step_gap for t in test_b]
    alone = rules.tripwire(
        accepted(val_c, val_b), scores(val_c, val_b, test_c, test_b), GAP_NOISE, [], TRIPWIRE
    )
    assert alone.tripwire == "passed"
    decision = rules.tripwire(
        accepted(val_c, val_b), scores(val_c, val_b, test_c, test_b), GAP_NOISE, history, TRIPWIRE
    )  # fmt: skip
    assert decision.tripwire == "blocked" and not decision.accepted
    assert decision.reason.startswith(rules.TRIPWIRE_BLOCKED_CUMULATIVE)
    assert decision.test_cumulative_steps == 5
    assert decision.test_cumulative_gap_bpb == pytest.approx(5 * step_gap)
    assert decision.test_cumulative_threshold_bpb == pytest.approx(3.0 * se * 5**0.5 + 0.5 * 5 * 0.002)


def test_cumulative_check_passes_an_honest_history() -> None:
    val_b = [1.3000, 1.3002, 1.2998]
    val_c = [v - 0.003 for v in val_b]
    se = 2**0.5 * GAP_NOISE.sigma_bpb / 3**0.5
    history = [
        rules.GapStep(gap_bpb=g, se_bpb=se, val_gain_bpb=0.003) for g in (0.0004, -0.0003, 0.0002, 0.0)
    ]
    test_b = [v + 0.01 for v in val_b]
    test_c = [t - 0.003 for t in test_b]
    decision = rules.tripwire(
        accepted(val_c, val_b), scores(val_c, val_b, test_c, test_b), GAP_NOISE, history, TRIPWIRE
    )  # fmt: skip
    assert decision.tripwire == "passed" and decision.accepted


def test_a_merged_decision_gives_its_step_and_one_without_figures_none() -> None:
    val_b = [1.3000, 1.3002, 1.2998]
    val_c = [v - 0.003 for v in val_b]
    decision = rules.tripwire(
        accepted(val_c, val_b), scores(val_c, val_b, val_c, val_b), GAP_NOISE, [], TRIPWIRE
    )  # fmt: skip
    step = rules.gap_step(decision)
    assert step is not None
    assert step.gap_bpb == pytest.approx(0.0) and step.val_gain_bpb == pytest.approx(0.003)
    assert step.se_bpb == pytest.approx(2**0.5 * 0.0004 / 3**0.5)
    assert rules.gap_step(accepted(val_c, val_b)) is None
