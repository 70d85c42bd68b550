"""bench/campaign.py's `RULE@true-shrink` experiment: the rule decides with its prior scaled by the
upstream-fit stream's true shrink factor; on the default stream, where nothing shrinks, it is the rule."""

import sys
from pathlib import Path

import numpy as np

from services.committer import rules

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import campaign

V4 = rules.SEQ_BAYES_V4_RULE
SHRUNK = f"{V4}@{campaign.TRUE_SHRINK}"


def test_the_prior_scales_by_the_shrink_factor_in_quarter_octaves() -> None:
    policy = campaign.policy_for(SHRUNK)
    assert policy.rule == V4  # the experiment runs the rule's own code
    half = campaign.shrunk_prior_policy(policy, 0.003)  # 1 / (1 + 0.003 / 0.003) = 1/2
    for before, after in [(policy.seq3.prior, half.seq3.prior), (policy.seq4.prior, half.seq4.prior)]:
        assert after.worse_sd_bpb == before.worse_sd_bpb / 2
        assert after.zero_sd_bpb == before.zero_sd_bpb / 2
        assert after.gain_mean_bpb == before.gain_mean_bpb / 2
        assert after.large_gain_mean_bpb == before.large_gain_mean_bpb / 2
        assert after.worse_weight == before.worse_weight and after.version != before.version
    near = campaign.shrunk_prior_policy(policy, 0.0031)  # rounds to the same quarter-octave step
    assert near.seq4.prior == half.seq4.prior


def run(rule: str, mixture: str) -> campaign.Tally:
    runs = 200
    stream = campaign.proposal_stream(mixture, np.random.default_rng((3, 1)), runs)
    machine = campaign.Machine(0.002, "gaussian", 0.0, (3, 2), runs)
    return campaign.campaign(rule, mixture, machine, stream, campaign.policy_for(rule))


def test_on_the_default_stream_the_experiment_decides_as_the_rule() -> None:
    assert run(SHRUNK, "default") == run(V4, "default")


def test_on_the_upstream_stream_it_decides_with_the_shrunk_prior() -> None:
    plain, shrunk = run(V4, "upstream"), run(SHRUNK, "upstream")
    assert plain.merges > 0  # the branch improved, so the prior shrank for the later decisions
    assert (shrunk.decisions, shrunk.stops) != (plain.decisions, plain.stops)
