"""The accept rule paired-z/v1 on hand-made numbers."""

import pytest

from services.committer import rules
from services.committer.committer import only_seed_changed

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
