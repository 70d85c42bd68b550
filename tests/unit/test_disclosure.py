"""What agents see of the record (services/controller/disclosure.py): rounded scores and numbers in
reasons, no held-out test figures, no scorer timings; admins see everything unchanged."""

import math

from services.committer import rules
from services.controller.auth import Principal, Role
from services.controller.disclosure import Disclosure
from services.models import Decision, RunResult, StepTimings
from services.settings import Settings
from services.states import State

AGENT = Disclosure(admin=False, decimals=4)
ADMIN = Disclosure(admin=True, decimals=4)


def run() -> RunResult:
    return RunResult(
        run_id="r", proposal_id="p", seed=1, state=State.EVALUATING, val_bpb=1.234567891,
        timings=StepTimings(train_container_s=300.123, eval_container_s=12.3456),
        scorer_timings={"scored_wait_s": 0.271}, logits_slots="GPU memory",
    )  # fmt: skip


def test_agents_see_rounded_scores_and_no_finer_timings() -> None:
    shown = AGENT.model(run())
    assert shown.val_bpb == 1.2346
    assert shown.timings.eval_container_s == 12.0
    assert shown.timings.train_container_s == 300.123  # training is not an evaluation channel
    assert shown.scorer_timings == {} and shown.logits_slots == ""


def test_admins_see_everything() -> None:
    original = run()
    assert ADMIN.model(original) == original


def test_decision_numbers_and_reason_text_are_rounded() -> None:
    decision = Decision(
        accepted=False, rule="paired-z/v1", candidate_bpb=1.4155231, best_bpb=1.4315689, best_commit="abc",
        delta_bpb=-0.0160458, sigma_bpb=0.000567891, candidate_runs=[1.41552311, 1.41600001],
        reason="paired runs: candidate 1.415523 does not beat the best 1.431569 (mean Δ -0.016046, z=2.6)",
    )  # fmt: skip
    shown = AGENT.model(decision)
    assert (shown.candidate_bpb, shown.best_bpb, shown.delta_bpb) == (1.4155, 1.4316, -0.016)
    assert shown.candidate_runs == [1.4155, 1.416]
    assert shown.sigma_bpb == 0.00057  # two significant digits
    assert (
        shown.reason == "paired runs: candidate 1.4155 does not beat the best 1.4316 (mean Δ -0.0160, z=2.6)"
    )


def test_a_seq_bayes_decision_shows_agents_its_posterior_rounded() -> None:
    """seq-bayes/v1 (opt-in) adds a merged score and a posterior over the effect: scores to the agents'
    decimals, spreads to two significant digits, P(better) to two decimals."""
    noise = rules.Noise(0.000567891, "calibrated", 9)
    evidence = rules.Evidence(
        best_commit="abc", best_bpb=1.4315689, best_sd_bpb=0.000312345, noise=noise, screen_runs=[1.4301234],
        screen_seeds=[42], candidate_runs=[1.4299871, 1.4302113], best_runs=[1.4316012, 1.4314987], seeds=[7, 8],
    )  # fmt: skip
    decision = rules.decide(evidence, rules.Policy(rule=rules.SEQ_BAYES_RULE))
    assert decision.accepted and decision.merged_bpb is not None
    shown = AGENT.model(decision)
    assert shown.merged_bpb == round(decision.merged_bpb, 4)
    for key in ("mean_bpb", "lo_bpb", "hi_bpb", "evidence_delta_bpb"):
        assert shown.posterior[key] == round(decision.posterior[key], 4), key
    for key in ("sd_bpb", "evidence_sd_bpb", "reference_sd_bpb"):
        value = decision.posterior[key]
        assert shown.posterior[key] == round(value, 1 - math.floor(math.log10(value))), key
    p_better = decision.posterior["p_better"]
    assert shown.posterior["p_better"] == round(p_better, 2) != p_better
    assert f"P(better) {decision.posterior['p_better']:.2f}," in shown.reason
    assert ADMIN.model(decision) == decision


def test_a_seq_bayes_v2_decision_shows_agents_its_levels_and_probabilities_rounded() -> None:
    noise = rules.Noise(0.000567891, "calibrated", 9)
    evidence = rules.Evidence(
        best_commit="abc", best_bpb=1.4315689, best_sd_bpb=0.000312345, noise=noise, screen_runs=[1.4301234],
        screen_seeds=[42], candidate_runs=[1.4299871, 1.4302113], best_runs=[1.4316012, 1.4314987], seeds=[7, 8],
    )  # fmt: skip
    decision = rules.decide(evidence, rules.Policy(rule=rules.SEQ_BAYES_V2_RULE))
    assert decision.accepted
    shown = AGENT.model(decision)
    for key in ("candidate_level_bpb", "best_level_bpb", "mean_bpb", "run_cost_bpb"):
        assert shown.posterior[key] == round(decision.posterior[key], 4), key
    for key in ("p_better", "p_better_confirmation_alone"):
        assert shown.posterior[key] == round(decision.posterior[key], 2), key
    assert f"P(better) {decision.posterior['p_better']:.2f}," in shown.reason


def test_a_seq_bayes_v3_decision_rounds_its_expected_gain_like_a_score() -> None:
    noise = rules.Noise(0.000567891, "calibrated", 9)
    evidence = rules.Evidence(
        best_commit="abc", best_bpb=1.4315689, best_sd_bpb=0.000312345, noise=noise, screen_runs=[1.4301234],
        screen_seeds=[42], candidate_runs=[1.4299871, 1.4302113], best_runs=[1.4316012, 1.4314987], seeds=[7, 8],
    )  # fmt: skip
    decision = rules.decide(evidence, rules.Policy(rule=rules.SEQ_BAYES_V3_RULE))
    shown = AGENT.model(decision)
    for key in ("expected_gain_bpb", "candidate_level_bpb", "best_level_bpb", "mean_bpb", "run_cost_bpb"):
        assert shown.posterior[key] == round(decision.posterior[key], 4), key
    for key in ("p_better", "p_better_confirmation_alone"):
        assert shown.posterior[key] == round(decision.posterior[key], 2), key


def test_test_split_fields_are_hidden_at_any_depth() -> None:
    data = {
        "results": [{"val_bpb": 1.0, "test_bpb": 1.1, "nested": {"test_gap_bpb": 0.3}}],
        "tripwire": "blocked",
    }
    assert AGENT.data(data) == {"results": [{"val_bpb": 1.0, "nested": {}}], "tripwire": "blocked"}


def test_text_keeps_short_numbers_versions_and_ids() -> None:
    text = "run of 3f2a1b0c9d scored 1.5 on 2.11.0 with seed 42, σ 0.0005; val 0.123456789."
    assert AGENT.text(text) == "run of 3f2a1b0c9d scored 1.5 on 2.11.0 with seed 42, σ 0.0005; val 0.1235."


def test_the_caller_role_decides() -> None:
    settings = Settings(agent_score_decimals=3)
    agent = Principal(name="a", role=Role.AGENT, token_hash="h")
    admin = Principal(name="b", role=Role.ADMIN, token_hash="h")
    assert Disclosure.of(agent, settings) == Disclosure(admin=False, decimals=3)
    assert Disclosure.of(admin, settings).admin
    assert not Disclosure.of(None, settings).admin  # /metrics: no token, shown what agents see
