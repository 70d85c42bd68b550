"""Accept rules: pure functions from run scores to verdicts, so that the committer and the acceptance
simulation (bench/acceptance.py) run exactly the same code. `decide(evidence, policy)` is the one
entry the committer calls on every screen and confirmation step (bench/campaign.py calls it too); the
setting `accept_rule` picks the rule: `paired-z/v1` (the default) or the opt-in `seq-bayes/v4`,
`seq-bayes/v3`, `seq-bayes/v2` and `seq-bayes/v1` (each described at its section below).

Rule `paired-z/v1` (the default), in two stages:

1. **Screen.** One run of the candidate with the harness's first seed. If it is worse than the
   best's mean by more than `screen_margin_sigma` σ, reject: confirming it would waste GPU time.
   Otherwise confirm.
2. **Confirm.** `confirm_runs` fresh seeds, each run for the candidate and for the best (its base)
   back to back on the same worker, so drift in the machine and the seed's own effect cancel in the
   paired differences d_i = candidate_i − best_i. The screening run is *not* reused: it was selected
   for being lucky. Accept when the upper one-sided confidence bound of the mean difference is below
   zero:  mean(d) + z · σ_d / √n < 0,  with σ_d = max(sd(d), √2 · σ), σ the calibrated run-to-run
   noise of this fingerprint. The floor keeps a lucky small sample spread from passing a chance gain.
   Candidates whose runs with different seeds score identically ignore the seed: rejected.

z = 2.33 would give 1% false accepts with a known σ; σ is estimated from a few runs, and at 2.33
the simulation measured 1.0% under Gaussian noise, so the default is z = 2.6 (measured ≤ 0.7%
under Gaussian, Student-t(3), resampled-real and drifting noise with outliers: bench/acceptance.py).

Rule `test-gap/v1`, the held-out test tripwire, runs on a confirmation that paired-z accepted, on the
same checkpoints: each confirmation run was scored on the validation books and, in the same pass, on
the held-out test books, which no agent ever sees. A gain that exists only on the validation books
(a model that memorised them, through whatever channel) shows up as a gap:

    g_i = (test_cand_i − test_best_i) − (val_cand_i − val_best_i)     per paired seed i
    block when  mean(g) > z · σ_g / √n + slack · G,   G = −mean(val_cand − val_best) > 0

σ_g = √2 · σ_gap, σ_gap the run-to-run σ of one run's (test_bpb − val_bpb), pooled over the runs of
branch commits on the fingerprint like the val σ (each commit's own mean removed), or a prior until
they give 3 degrees of freedom. The slack is the share of a val gain that may go unmatched on test:
an honest change does not gain exactly as much on other books, a memoriser gains nothing there.

The **cumulative** check catches a gap spread over many merges, each under its own bound: the gaps of
the branch's merged steps since the root (those measured by this rule) and the candidate's add up,
their noise only as the root of the summed variances:

    block when  Σ_k mean(g_k) > z · √(Σ_k σ_g,k² / n_k) + slack · Σ_k G_k

The reason of a blocked decision says only that the tripwire blocked it; every test figure is in the
decision's `test_*` fields, which agents never see.
"""

import functools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from services.models import Decision
from services.settings import AcceptanceSettings

PAIRED_Z_RULE = "paired-z/v1"
TRIPWIRE_RULE = "test-gap/v1"
TRIPWIRE_BLOCKED = (
    "blocked by the held-out test tripwire: its validation gain was not matched on the held-out test split"
)
TRIPWIRE_BLOCKED_CUMULATIVE = (
    "blocked by the held-out test tripwire: with it, the branch's validation gain since the root would not "
    "be matched on the held-out test split"
)


@dataclass(frozen=True)
class RuleParams:
    """paired-z/v1's parameters (their defaults and meanings: services/settings.py, `params_from`)."""

    confirm_runs: int  # paired confirmation runs (candidate + best each)
    screen_margin_sigma: float  # screening runs up to this many σ worse than the best get confirmed
    accept_z: float  # one-sided bound; 2.33 would be 1% with a known σ, σ is estimated
    sigma_prior_bpb: float  # run-to-run σ used until calibration has enough runs


@dataclass(frozen=True)
class Noise:
    sigma_bpb: float
    source: Literal["calibrated", "prior"]
    runs: int  # how many runs the calibration saw


@dataclass(frozen=True)
class TripwireParams:
    """test-gap/v1's parameters (their defaults: services/settings.py, `tripwire_params_from`)."""

    z: float  # one-sided z of the gap's noise bound
    sigma_prior_bpb: float  # σ of one run's (test − val) until calibration has 3 dof
    gain_slack: float  # share of the val gain that may go unmatched on test


@dataclass(frozen=True)
class GapStep:
    """One merged step of the branch as the tripwire measured it."""

    gap_bpb: float  # mean(g)
    se_bpb: float  # σ_g / √n
    val_gain_bpb: float  # −mean(val_cand − val_best)


@dataclass(frozen=True)
class PairedScores:
    """The paired confirmation runs' scores, index i for seed i: val and test, candidate and best."""

    val_candidate: list[float]
    val_best: list[float]
    test_candidate: list[float]
    test_best: list[float]


def tripwire_params_from(acceptance: AcceptanceSettings) -> TripwireParams:
    return TripwireParams(
        z=acceptance.tripwire_z,
        sigma_prior_bpb=acceptance.tripwire_sigma_prior_bpb,
        gain_slack=acceptance.tripwire_gain_slack,
    )


def params_from(acceptance: AcceptanceSettings) -> RuleParams:
    """paired-z/v1's parameters as the operator set them (the committer and the API use the same)."""
    return RuleParams(
        confirm_runs=acceptance.confirm_runs, screen_margin_sigma=acceptance.screen_margin_sigma,
        accept_z=acceptance.accept_z, sigma_prior_bpb=acceptance.noise_sigma_prior_bpb,
    )  # fmt: skip


def seq_params_from(acceptance: AcceptanceSettings) -> "SeqParams":
    return SeqParams(
        p_accept=acceptance.seq_p_accept, run_cost_bpb=acceptance.seq_run_cost_bpb,
        max_pairs=acceptance.seq_max_pairs, screen_extra_sigma=acceptance.seq_screen_extra_sigma,
    )  # fmt: skip


def policy_from(acceptance: AcceptanceSettings) -> "Policy":
    """The rule the operator chose, with the parameters of each (the committer and the API use it).
    `AcceptanceSettings.defaults()` gives the rules as shipped, whatever the environment says."""
    return Policy(
        rule=acceptance.accept_rule, paired=params_from(acceptance), seq=seq_params_from(acceptance)
    )


def degrees_of_freedom(runs_by_commit: dict[str, list[float]]) -> int:
    """What the pooled σ of `calibrate` rests on: Σ (runs of a commit − 1)."""
    return sum(len(runs) - 1 for runs in runs_by_commit.values() if len(runs) > 1)


def screen(
    candidate_bpb: float, best_bpb: float, best_commit: str, noise: Noise, params: RuleParams
) -> Decision:
    """Reject outright, or send to confirmation (`accepted=False, stage="screen", confirm=True`)."""
    delta = candidate_bpb - best_bpb
    limit = params.screen_margin_sigma * noise.sigma_bpb
    confirm = delta < limit
    return Decision(
        accepted=False, rule=PAIRED_Z_RULE, stage="screen", confirm=confirm, candidate_bpb=candidate_bpb,
        best_bpb=best_bpb, best_commit=best_commit, delta_bpb=delta, sigma_bpb=noise.sigma_bpb,
        sigma_source=noise.source, threshold_bpb=limit, reason=_screen_reason(candidate_bpb, best_bpb, noise, params),
        params=_params(params),
    )  # fmt: skip


def _screen_reason(candidate_bpb: float, best_bpb: float, noise: Noise, params: RuleParams) -> str:
    """What the screening run did: beat the best (by how much, in σ), came within the margin, or lost."""
    delta = candidate_bpb - best_bpb
    limit = params.screen_margin_sigma * noise.sigma_bpb
    sigma = f"σ {noise.sigma_bpb:.6f} {noise.source}"
    confirming = f"confirming with {params.confirm_runs} paired runs"
    if delta < 0:
        size = f"{-delta / noise.sigma_bpb:.1f} σ; " if noise.sigma_bpb > 0 else ""
        return (
            f"screening run {candidate_bpb:.6f} beats the best {best_bpb:.6f} by {-delta:.6f} "
            f"({size}{sigma}); {confirming}"
        )
    if delta < limit:
        return (
            f"screening run {candidate_bpb:.6f} is {delta:.6f} worse than the best {best_bpb:.6f}, within the "
            f"margin of {params.screen_margin_sigma:g} σ = {limit:.6f} ({sigma}); {confirming}"
        )
    return (
        f"val_bpb {candidate_bpb:.6f} does not beat the best {best_bpb:.6f} (Δ {delta:+.6f} > "
        f"{params.screen_margin_sigma:g} σ = {limit:.6f}; {sigma})"
    )


def confirm(
    candidate_runs: list[float], best_runs: list[float], seeds: list[int], best_commit: str, noise: Noise,
    params: RuleParams,
) -> Decision:  # fmt: skip
    """The final verdict from paired runs (candidate_runs[i] and best_runs[i] used seeds[i])."""
    if len(candidate_runs) != len(best_runs) or not candidate_runs:
        raise ValueError("confirmation needs the same positive number of candidate and best runs")
    n = len(candidate_runs)
    diffs = [c - b for c, b in zip(candidate_runs, best_runs, strict=True)]
    mean_diff = statistics.fmean(diffs)
    sample_sd = statistics.stdev(diffs) if n > 1 else 0.0
    sigma_d = max(sample_sd, math.sqrt(2) * noise.sigma_bpb)
    bound = mean_diff + params.accept_z * sigma_d / math.sqrt(n)
    candidate_mean = statistics.fmean(candidate_runs)
    best_mean = statistics.fmean(best_runs)
    if n > 1 and len(set(candidate_runs)) == 1 and len(set(seeds)) == n:
        accepted, reason = (
            False,
            (
                f"the candidate scored {candidate_runs[0]:.6f} with every one of {n} different harness seeds: "
                "it ignores AR_SEED, so its score cannot be told from luck"
            ),
        )
    else:
        accepted = bound < 0
        verdict = "beats" if accepted else "does not beat"
        reason = (
            f"paired runs: candidate {candidate_mean:.6f} {verdict} the best {best_mean:.6f} "
            f"(mean Δ {mean_diff:+.6f}, upper bound {bound:+.6f} at z={params.accept_z:g}, "
            f"σ_d {sigma_d:.6f}, n {n})"
        )
    return Decision(
        accepted=accepted, rule=PAIRED_Z_RULE, stage="confirm", candidate_bpb=candidate_mean,
        best_bpb=best_mean, best_commit=best_commit, delta_bpb=mean_diff, sigma_bpb=noise.sigma_bpb,
        sigma_source=noise.source, threshold_bpb=bound, candidate_runs=candidate_runs, best_runs=best_runs,
        seeds=seeds, reason=reason, params=_params(params),
    )  # fmt: skip


def calibrate(runs_by_commit: dict[str, list[float]], params: RuleParams, min_dof: int = 3) -> Noise:
    """Pooled run-to-run σ over commits (each commit's own mean removed); the prior until the runs
    give at least `min_dof` degrees of freedom."""
    return pooled_noise(runs_by_commit, params.sigma_prior_bpb, min_dof)


def calibrate_gap(gaps_by_commit: dict[str, list[float]], params: TripwireParams, min_dof: int = 3) -> Noise:
    """σ of one run's (test_bpb − val_bpb), pooled like `calibrate` over the branch commits' runs."""
    return pooled_noise(gaps_by_commit, params.sigma_prior_bpb, min_dof)


def pooled_noise(runs_by_commit: dict[str, list[float]], prior_bpb: float, min_dof: int = 3) -> Noise:
    groups = [runs for runs in runs_by_commit.values() if len(runs) > 1]
    dof = degrees_of_freedom(runs_by_commit)
    total = sum(len(runs) for runs in runs_by_commit.values())
    if dof < min_dof:
        return Noise(prior_bpb, "prior", total)
    squares = sum(_sum_of_squares(runs) for runs in groups)
    return Noise(math.sqrt(squares / dof), "calibrated", total)


def _sum_of_squares(runs: list[float]) -> float:
    mean = statistics.fmean(runs)
    return sum((x - mean) ** 2 for x in runs)


def tripwire(
    decision: Decision, scores: PairedScores, gap_noise: Noise, history: list[GapStep], params: TripwireParams
) -> Decision:
    """The held-out test tripwire on a confirmation that the val rule accepted: the same decision,
    `tripwire="passed"` with its figures, or not accepted with `tripwire="blocked"`. `history` holds
    the branch's earlier steps since the root (the cumulative check)."""
    n = len(scores.val_candidate)
    columns = (scores.val_best, scores.test_candidate, scores.test_best)
    if n == 0 or any(len(column) != n for column in columns):
        raise ValueError("the tripwire needs val and test scores of every paired run, candidate and best")
    gaps = [
        (tc - tb) - (vc - vb)
        for vc, vb, tc, tb in zip(scores.val_candidate, scores.val_best, scores.test_candidate, scores.test_best,
                                  strict=True)
    ]  # fmt: skip
    step = GapStep(
        gap_bpb=statistics.fmean(gaps),
        se_bpb=math.sqrt(2) * gap_noise.sigma_bpb / math.sqrt(n),
        val_gain_bpb=statistics.fmean(scores.val_best) - statistics.fmean(scores.val_candidate),
    )
    threshold = params.z * step.se_bpb + params.gain_slack * max(0.0, step.val_gain_bpb)
    steps = [*history, step]
    cumulative = sum(s.gap_bpb for s in steps)
    cumulative_threshold = params.z * math.sqrt(sum(s.se_bpb**2 for s in steps)) + params.gain_slack * max(
        0.0, sum(s.val_gain_bpb for s in steps)
    )
    reason = ""
    if step.gap_bpb > threshold:
        reason = TRIPWIRE_BLOCKED
    elif cumulative > cumulative_threshold:
        reason = TRIPWIRE_BLOCKED_CUMULATIVE
    figures = {
        "tripwire": "blocked" if reason else "passed", "test_candidate_runs": scores.test_candidate,
        "test_best_runs": scores.test_best, "test_gaps": gaps, "test_gap_bpb": step.gap_bpb,
        "test_gap_sigma_bpb": math.sqrt(2) * gap_noise.sigma_bpb, "test_gap_sigma_source": gap_noise.source,
        "test_n": n, "test_val_gain_bpb": step.val_gain_bpb, "test_threshold_bpb": threshold,
        "test_cumulative_gap_bpb": cumulative, "test_cumulative_threshold_bpb": cumulative_threshold,
        "test_cumulative_steps": len(steps), "test_params": _tripwire_params(params),
    }  # fmt: skip
    if reason:  # no test figure in the reason: agents read it
        figures |= {"accepted": False, "reason": f"{reason} (on validation, {decision.reason})"}
    return decision.model_copy(update=figures)


def gap_step(decision: Decision) -> GapStep | None:
    """A merged step's figures for the cumulative check; None where the tripwire did not measure it."""
    if decision.test_gap_bpb is None or decision.test_gap_sigma_bpb is None or not decision.test_n:
        return None
    gain = decision.test_val_gain_bpb
    if gain is None:
        gain = -(decision.delta_bpb or 0.0)
    return GapStep(decision.test_gap_bpb, decision.test_gap_sigma_bpb / math.sqrt(decision.test_n), gain)


def _tripwire_params(params: TripwireParams) -> dict[str, int | float]:
    return {"z": params.z, "sigma_prior_bpb": params.sigma_prior_bpb, "gain_slack": params.gain_slack}


def _params(params: RuleParams) -> dict[str, int | float]:
    return {
        "confirm_runs": params.confirm_runs,
        "screen_margin_sigma": params.screen_margin_sigma,
        "accept_z": params.accept_z,
        "sigma_prior_bpb": params.sigma_prior_bpb,
    }


# ---------------------------------------------------------------------------------------------------
# Rule seq-bayes/v1: a sequential Bayesian confirmation (opt-in: AR_ACCEPT_RULE=seq-bayes/v1)
#
# Not the default: in the campaign simulation (bench/campaign.py, docs/evaluation.md) it misses its
# goals (0.77x greedy's and 1.27x paired-z/v1's gain per GPU-hour, median over scenarios; false merges
# up to 14% of greedy's under Student-t noise; behind paired-z/v1 at σ ≥ 0.005).
#
# A posterior over the candidate's true effect Δ (candidate − best, bits per byte; negative is better),
# from a prior fitted to what proposals do (PRIOR_V1) and Gaussian evidence: the screening run against
# the best's reference score, and the paired confirmation runs (candidate − best on the same seed). The
# prior is a mixture of three parts, each conjugate to a Gaussian likelihood, so the posterior is exact
# and closed-form (no grid): clearly worse changes (Δ > 0, half-normal), near-zero changes (normal) and
# real gains (Δ < 0, exponential). Selection does not bias it: conditioning on a lucky screening run is
# what the prior's near-zero mass is for.
#
# After each step the rule accepts when P(Δ < 0) ≥ p_accept (after at least `min_pairs` paired runs,
# so that a candidate that ignores AR_SEED shows itself and machine drift cancels); otherwise it asks
# for more paired runs while the expected gain of deciding after them, minus their cost, is positive
# (a look-ahead over 1 or 3 more pairs); else it rejects. The branch records a merged candidate's
# score as the best's reference plus the posterior mean of Δ, which shrinks the winner's curse.

SEQ_BAYES_RULE = "seq-bayes/v1"
_SQRT2 = math.sqrt(2.0)
_LOOKAHEAD_PAIRS = (1, 3)  # the numbers of further pairs the look-ahead weighs
_LOOKAHEAD_NODES = 12  # quadrature points of the predictive of the next pairs' mean


@dataclass(frozen=True)
class Prior:
    """The prior over Δ: weights of the three parts and their scales, in bits per byte."""

    version: str
    worse_weight: float  # Δ = +|N(0, worse_sd)|
    worse_sd_bpb: float
    zero_weight: float  # Δ = N(0, zero_sd)
    zero_sd_bpb: float
    gain_weight: float  # Δ = −Exp(gain_mean)
    gain_mean_bpb: float
    large_gain_weight: float = 0.0  # a second part of real gains, Δ = −Exp(large_gain_mean) (v2's prior)
    large_gain_mean_bpb: float = 0.006


# The proposal mixture of an agent campaign (bench/campaign.py's default stream, crashes left out):
# 55% clearly worse, 25% near zero, 15% real gains of 0.0015 on average.
PRIOR_V1 = Prior("mixture/v1", 0.55 / 0.95, 0.01, 0.25 / 0.95, 0.0005, 0.15 / 0.95, 0.0015)


@dataclass(frozen=True)
class SeqParams:
    """seq-bayes/v1's parameters; the first four are settings (services/settings.py, `seq_params_from`)."""

    p_accept: float  # accept when P(Δ < 0) reaches this
    run_cost_bpb: float  # what one GPU run must buy in expected gain to be worth running
    max_pairs: int  # paired runs after which a candidate still unconvincing is rejected
    screen_extra_sigma: float  # extra σ on the screening comparison: drift, the first seed's luck
    min_pairs: int = 1  # paired runs before any accept (seed-ignoring candidates, drift)
    p_give_up: float = 0.002  # reject at once below this P(Δ < 0): no run could be worth it
    pair_rho: float = 0.0  # assumed same-seed correlation of paired runs (0: no credit for pairing)
    prior: Prior = PRIOR_V1


@dataclass(frozen=True)
class Posterior:
    p_better: float  # P(Δ < 0)
    mean_bpb: float
    sd_bpb: float
    gain_bpb: float  # E[−Δ] = −mean: the expected gain of merging


def _log_ndtr(z: float) -> float:
    """log Φ(z), stable far into the left tail."""
    if z > -20.0:
        return math.log(max(0.5 * math.erfc(-z / _SQRT2), 1e-300))
    return -0.5 * z * z - math.log(-z) - 0.5 * math.log(2 * math.pi)


def _mills(a: float) -> float:
    """φ(a) / (1 − Φ(a)), the mean shift of a normal truncated below at a (in sd units)."""
    return math.exp(-0.5 * a * a - 0.5 * math.log(2 * math.pi) - _log_ndtr(-a))


def _log_normal(x: float, var: float) -> float:
    return -0.5 * (x * x / var + math.log(2 * math.pi * var))


def _parts(y: float, v: float, prior: Prior) -> list[tuple[float, float, float, float]]:
    """The posterior's three parts for a Gaussian likelihood N(y; Δ, v): (log evidence, P(Δ<0), mean,
    second moment) of each."""
    parts = []
    # clearly worse: half-normal on Δ > 0; the posterior part is a normal truncated to Δ > 0
    s2 = prior.worse_sd_bpb**2
    v1 = 1 / (1 / s2 + 1 / v)
    m1, sd1 = v1 * y / v, math.sqrt(v1)
    log_z1 = math.log(2 * prior.worse_weight) + _log_normal(y, s2 + v) + _log_ndtr(m1 / sd1)
    mean1 = m1 + sd1 * _mills(-m1 / sd1)
    parts.append((log_z1, 0.0, mean1, v1 + m1 * mean1))  # E[X²] = v + m·E[X] when cut at 0
    # near zero: normal
    z2 = prior.zero_sd_bpb**2
    v2 = 1 / (1 / z2 + 1 / v)
    m2 = v2 * y / v
    log_z2 = math.log(prior.zero_weight) + _log_normal(y, z2 + v)
    parts.append((log_z2, math.exp(_log_ndtr(-m2 / math.sqrt(v2))), m2, v2 + m2 * m2))
    # real gains, Δ = −Exp(μ): exp(Δ/μ)·N(y; Δ, v) = exp(y/μ + v/2μ²)·N(Δ; y + v/μ, v), cut to Δ < 0
    parts.append(_gain_part(y, v, prior.gain_weight, prior.gain_mean_bpb))
    if prior.large_gain_weight > 0:
        parts.append(_gain_part(y, v, prior.large_gain_weight, prior.large_gain_mean_bpb))
    return parts


def _gain_part(y: float, v: float, weight: float, mu: float) -> tuple[float, float, float, float]:
    m3, sd3 = y + v / mu, math.sqrt(v)
    log_z3 = math.log(weight / mu) + y / mu + v / (2 * mu * mu) + _log_ndtr(-m3 / sd3)
    mean3 = m3 - sd3 * _mills(m3 / sd3)
    return (log_z3, 1.0, mean3, v + m3 * mean3)


def _posterior_of(y: float, v: float, prior: Prior) -> tuple[Posterior, float]:
    """The posterior for the pooled likelihood N(y; Δ, v), and its log evidence."""
    parts = _parts(y, v, prior)
    top = max(part[0] for part in parts)
    weights = [math.exp(part[0] - top) for part in parts]
    total = sum(weights)
    p_better = sum(w * part[1] for w, part in zip(weights, parts, strict=True)) / total
    mean = sum(w * part[2] for w, part in zip(weights, parts, strict=True)) / total
    second = sum(w * part[3] for w, part in zip(weights, parts, strict=True)) / total
    sd = math.sqrt(max(second - mean * mean, 0.0))
    return Posterior(min(max(p_better, 0.0), 1.0), mean, sd, -mean), top + math.log(total)


def _pool(terms: list[tuple[float, float]]) -> tuple[float, float]:
    """Gaussian likelihood terms (y, variance) pooled into one."""
    precision = sum(1 / var for _, var in terms)
    return sum(y / var for y, var in terms) / precision, 1 / precision


def _value(post: Posterior, pairs: int, params: SeqParams) -> float:
    """The value of stopping now: the expected gain of merging where the rule may accept, else 0."""
    if pairs >= params.min_pairs and post.p_better >= params.p_accept:
        return max(post.gain_bpb, 0.0)
    return 0.0


def _lookahead(y: float, v: float, pairs: int, pair_var: float, params: SeqParams) -> tuple[float, int]:
    """The best (expected value of deciding after n more pairs − their cost, n) over n in 1, 2, 4."""
    best = (-math.inf, 0)
    post, log_z = _posterior_of(y, v, params.prior)
    for n in _LOOKAHEAD_PAIRS:
        if pairs + n > params.max_pairs:
            break
        v_n = pair_var / n
        spread = math.sqrt(post.sd_bpb**2 + v_n)
        nodes = [
            post.mean_bpb + spread * (-3.5 + 7.0 * k / (_LOOKAHEAD_NODES - 1))
            for k in range(_LOOKAHEAD_NODES)
        ]
        weights, values = [], []
        for node in nodes:
            v2 = 1 / (1 / v + 1 / v_n)
            y2 = v2 * (y / v + node / v_n)
            post2, log_z2 = _posterior_of(y2, v2, params.prior)
            # predictive density of the next mean: Z(data + node) / Z(data)
            weights.append(math.exp(log_z2 + _log_normal(y - node, v + v_n) - log_z))
            values.append(_value(post2, pairs + n, params))
        total = sum(weights)
        expected = sum(w * x for w, x in zip(weights, values, strict=True)) / total if total > 0 else 0.0
        gain = expected - 2 * n * params.run_cost_bpb
        if gain > best[0]:
            best = (gain, n)
    return best


@dataclass(frozen=True)
class PairSpread:
    """The spread of paired differences (candidate − best on one seed) of earlier confirmations on the
    fingerprint, each confirmation's own mean removed: what the same-seed correlation is estimated
    from (seq-bayes/v4)."""

    sum_squares_bpb2: float = 0.0
    dof: int = 0  # Σ (pairs of a confirmation − 1)


def add_pairs(spread: PairSpread, diffs: list[float]) -> PairSpread:
    """`spread` with one more confirmation's paired differences."""
    if len(diffs) < 2:
        return spread
    return PairSpread(spread.sum_squares_bpb2 + _sum_of_squares(diffs), spread.dof + len(diffs) - 1)


def pair_spread(diffs_by_confirmation: dict[str, list[float]]) -> PairSpread:
    """The spread of the paired differences of confirmations (by proposal)."""
    spread = PairSpread()
    for diffs in diffs_by_confirmation.values():
        spread = add_pairs(spread, diffs)
    return spread


@dataclass(frozen=True)
class Evidence:
    """Everything a verdict rests on, as the committer's bookkeeping holds it. Without paired runs the
    verdict is a screen; with them, a confirmation step."""

    best_commit: str
    best_bpb: float  # the best's reference score
    best_sd_bpb: float  # the uncertainty of that reference
    noise: Noise  # σ of one run on this fingerprint
    screen_runs: list[float]  # the candidate's screening run(s)
    screen_seeds: list[int]
    candidate_runs: list[float] = ()  # type: ignore[assignment]  # paired confirmation runs, seed i ...
    best_runs: list[float] = ()  # type: ignore[assignment]  # ... and the best's
    seeds: list[int] = ()  # type: ignore[assignment]
    seed_only_change: bool = False  # the diff touches nothing but seeding
    test: "TripwireEvidence | None" = None  # the paired runs' test scores (None: no test split)
    pair_spread: PairSpread = PairSpread()  # earlier confirmations' paired differences (seq-bayes/v4)


@dataclass(frozen=True)
class TripwireEvidence:
    scores: PairedScores
    gap_noise: Noise
    history: list[GapStep]
    params: TripwireParams


@dataclass(frozen=True)
class Policy:
    """Which rule decides, with the parameters of each (by default the settings' defaults)."""

    rule: str = PAIRED_Z_RULE
    paired: RuleParams = field(default_factory=lambda: params_from(AcceptanceSettings.defaults()))
    seq: "SeqParams" = field(default_factory=lambda: seq_params_from(AcceptanceSettings.defaults()))
    seq2: "SeqV2Params" = field(default_factory=lambda: SeqV2Params())
    seq3: "SeqV3Params" = field(default_factory=lambda: SeqV3Params())
    seq4: "SeqV4Params" = field(default_factory=lambda: SeqV4Params())


SEED_ONLY = "the change only touches seeding; the harness chooses seeds, so it cannot improve"


def decide(evidence: Evidence, policy: Policy) -> Decision:
    """The verdict on a candidate from its evidence: the one pure function the committer runs (and
    bench/campaign.py with it). `accepted` → merge; `confirm` → `more_runs` more paired runs, then
    decide again; neither → reject. The held-out test tripwire is part of an accepting verdict."""
    if policy.rule == PAIRED_Z_RULE:
        decision = _decide_paired_z(evidence, policy.paired)
    elif policy.rule == SEQ_BAYES_RULE:
        decision = _decide_seq_bayes(evidence, policy.seq)
    elif policy.rule == SEQ_BAYES_V2_RULE:
        decision = _decide_seq_bayes_v2(evidence, policy.seq2)
    elif policy.rule == SEQ_BAYES_V3_RULE:
        decision = _decide_seq_bayes_v3(evidence, policy.seq3)
    elif policy.rule == SEQ_BAYES_V4_RULE:
        decision = _decide_seq_bayes_v4(evidence, policy.seq4)
    else:
        raise ValueError(f"unknown rule {policy.rule!r}; known: {', '.join(RULES)}")
    if evidence.seed_only_change:  # whatever the scores say: seeds are the harness's to choose
        decision = decision.model_copy(
            update={"accepted": False, "confirm": False, "more_runs": 0, "reason": SEED_ONLY}
        )
    if decision.accepted and evidence.test is not None:
        test = evidence.test
        decision = tripwire(decision, test.scores, test.gap_noise, test.history, test.params)
    return decision


def _decide_paired_z(evidence: Evidence, params: RuleParams) -> Decision:
    if not evidence.candidate_runs:
        screened = screen(
            statistics.fmean(evidence.screen_runs), evidence.best_bpb, evidence.best_commit, evidence.noise,
            params,
        )  # fmt: skip
        return screened.model_copy(update={"more_runs": params.confirm_runs if screened.confirm else 0})
    return confirm(
        list(evidence.candidate_runs), list(evidence.best_runs), list(evidence.seeds), evidence.best_commit,
        evidence.noise, params,
    )  # fmt: skip


def _ignores_seed(evidence: Evidence) -> bool:
    runs = [*evidence.screen_runs, *evidence.candidate_runs]
    seeds = [*evidence.screen_seeds, *evidence.seeds]
    return len(runs) > 1 and len(set(runs)) == 1 and len(set(seeds)) == len(seeds)


def _decide_seq_bayes(evidence: Evidence, params: SeqParams) -> Decision:
    sigma = evidence.noise.sigma_bpb
    screen_mean = statistics.fmean(evidence.screen_runs)
    screen_var = (
        sigma**2 / len(evidence.screen_runs)
        + evidence.best_sd_bpb**2
        + (params.screen_extra_sigma * sigma) ** 2
    )
    terms = [(screen_mean - evidence.best_bpb, screen_var)]
    pairs = len(evidence.candidate_runs)
    pair_var = 2 * (1 - params.pair_rho) * sigma**2
    diffs = [c - b for c, b in zip(evidence.candidate_runs, evidence.best_runs, strict=True)]
    if pairs:
        spread = statistics.variance(diffs) if pairs >= 3 else 0.0
        terms.append((statistics.fmean(diffs), max(spread, pair_var) / pairs))
    y, v = _pool(terms)
    post, _ = _posterior_of(y, v, params.prior)
    candidate_bpb = statistics.fmean(evidence.candidate_runs) if pairs else screen_mean
    more, stopped = 0, ""
    if _ignores_seed(evidence):
        accepted, stopped = False, "reject-ignores-seed"
    elif pairs >= params.min_pairs and post.p_better >= params.p_accept:
        accepted, stopped = True, "accept"
    elif post.p_better < params.p_give_up:
        accepted, stopped = False, "reject-unlikely"
    else:
        accepted = False
        worth, n = _lookahead(y, v, pairs, pair_var, params) if pairs < params.max_pairs else (-1.0, 0)
        if pairs >= params.max_pairs:
            stopped = "reject-max-runs"
        elif worth > 0:
            more, stopped = n, "more-runs"
        else:
            stopped = "reject-not-worth"
    summary = {
        "p_better": post.p_better, "mean_bpb": post.mean_bpb, "sd_bpb": post.sd_bpb,
        "lo_bpb": post.mean_bpb - 1.645 * post.sd_bpb, "hi_bpb": post.mean_bpb + 1.645 * post.sd_bpb,
        "evidence_delta_bpb": y, "evidence_sd_bpb": math.sqrt(v), "reference_sd_bpb": evidence.best_sd_bpb,
    }  # fmt: skip
    return Decision(
        accepted=accepted, rule=SEQ_BAYES_RULE, stage="confirm" if pairs else "screen", confirm=more > 0,
        more_runs=more, candidate_bpb=candidate_bpb, best_bpb=evidence.best_bpb,
        best_commit=evidence.best_commit, delta_bpb=candidate_bpb - evidence.best_bpb if not pairs
        else statistics.fmean(diffs), sigma_bpb=sigma, sigma_source=evidence.noise.source,
        threshold_bpb=params.p_accept, candidate_runs=list(evidence.candidate_runs),
        best_runs=list(evidence.best_runs), seeds=list(evidence.seeds), params=_seq_params(params),
        posterior=summary, prior_version=params.prior.version, stopped=stopped,
        merged_bpb=evidence.best_bpb + post.mean_bpb if accepted else None,
        reason=_seq_reason(stopped, post, pairs, more, params, evidence),
    )  # fmt: skip


def _seq_reason(
    stopped: str, post: Posterior, pairs: int, more: int, params: SeqParams, evidence: Evidence
) -> str:
    runs = f"{len(evidence.screen_runs)} screening run(s) and {pairs} paired run(s)"
    belief = (
        f"P(better) {post.p_better:.2f}, Δ {post.mean_bpb:+.6f} ± {post.sd_bpb:.6f} "
        f"(σ {evidence.noise.sigma_bpb:.6f} {evidence.noise.source}, prior {params.prior.version})"
    )
    if stopped == "reject-ignores-seed":
        return (
            f"the candidate scored {evidence.screen_runs[0]:.6f} with every one of its different harness seeds: "
            "it ignores AR_SEED, so its score cannot be told from luck"
        )
    if stopped == "accept":
        return f"after {runs}: {belief} reaches {params.p_accept:g}; accepted"
    if stopped == "more-runs":
        return f"after {runs}: {belief}; another {more} paired run(s) are worth their cost"
    if stopped == "reject-unlikely":
        return f"after {runs}: {belief}; too unlikely to be better to be worth another run, rejected"
    if stopped == "reject-max-runs":
        return f"after {runs}: {belief} is still below {params.p_accept:g} at the limit of {params.max_pairs} pairs"
    return f"after {runs}: {belief}; more runs are not worth their cost, rejected"


def _seq_params(params: SeqParams) -> dict[str, float]:
    return {
        "p_accept": params.p_accept, "run_cost_bpb": params.run_cost_bpb, "min_pairs": params.min_pairs,
        "max_pairs": params.max_pairs, "p_give_up": params.p_give_up, "screen_extra_sigma": params.screen_extra_sigma,
        "pair_rho": params.pair_rho,
    }  # fmt: skip


REFERENCE_RUNS = 8  # the best's latest runs that make its reference score for seq-bayes/v1 (drift)


def reference(
    rule: str, recorded_bpb: float, recorded_sd_bpb: float | None, best_runs: list[float], noise: Noise
) -> tuple[float, float]:
    """The best's score a candidate is compared with, and its uncertainty. paired-z/v1: the recorded
    score. seq-bayes/v1: the mean of the best's latest runs on the fingerprint (its own, and its halves of
    paired runs: re-scoring shared by every candidate), else the recorded score (a posterior when a
    seq-bayes decision merged it)."""
    sigma = noise.sigma_bpb
    if rule in (SEQ_BAYES_RULE, SEQ_BAYES_V2_RULE, SEQ_BAYES_V3_RULE, SEQ_BAYES_V4_RULE) and best_runs:
        latest = best_runs[-REFERENCE_RUNS:]
        return statistics.fmean(latest), sigma / math.sqrt(len(latest))
    return recorded_bpb, sigma if recorded_sd_bpb is None else recorded_sd_bpb


# ---------------------------------------------------------------------------------------------------
# Rule seq-bayes/v2: one paired run at a time, against the best's shared reference, while a run is
# worth what it would buy screening a fresh proposal (opt-in: AR_ACCEPT_RULE=seq-bayes/v2)
#
# Not the default: in the campaign simulation it reaches 1.30x paired-z/v1's and 0.78x greedy's gain
# per GPU-hour (median over scenarios), short of the 2x asked of a new default, and its false merges
# exceed 10% of greedy's in four Student-t(3) scenarios (docs/evaluation.md).
#
# The same closed-form posterior as seq-bayes/v1, with three changes, each measured in the campaign
# simulation (bench/campaign.py, docs/evaluation.md):
#
# 1. **The evidence is the candidate's mean against the best's mean**, not the mean of paired
#    differences. The candidate's level pools its screening run (with `screen_extra_sigma`: the
#    screening seed is the same for every proposal, so with a same-seed correlation it carries a
#    shared offset) and its confirmation runs; the best's level pools its shared reference (its latest
#    runs on the fingerprint, re-scored by every candidate's paired halves, `reference`) and this
#    candidate's paired halves. Var(candidate − best) = σ²/n + σ²/m instead of 2σ²/n: with m ≥ 4
#    shared runs a pair buys almost twice the evidence. Same-seed correlation of paired runs only
#    shrinks the true variance, so ignoring it keeps the bound conservative.
# 2. **One pair at a time.** It asks for one more pair whenever the look-ahead (1, 2 or 4 more pairs)
#    finds deciding after them worth their runs, so a clear candidate stops after one pair.
# 3. **A run's cost is what it would buy elsewhere**: `cost_share` × the expected gain of spending it on
#    screening a fresh proposal under the prior at this σ (`screen_value`). At low noise a run buys a
#    lot, so borderline candidates are dropped early; at high noise confirmation is where gains are.
#
# The prior (PRIOR_V2) pools the two proposal mixtures the service was measured with: the default agent
# stream and the one fitted to upstream's published log of 83 experiments (larger gains: a second
# exponential part).
# Accepting needs at least one paired run with a fresh seed (a candidate that ignores AR_SEED scores the
# same twice: rejected) and P(Δ < 0) ≥ p_accept on the pooled evidence, and the confirmation runs alone
# must not contradict the screen (P(Δ < 0 | confirmation runs only) ≥ p_confirm_alone): a heavy-tailed
# lucky screening run cannot carry a merge on its own.

SEQ_BAYES_V2_RULE = "seq-bayes/v2"
_LOOKAHEAD_PAIRS_V2 = (1, 2, 4)
_SCREEN_VALUE_NODES = 241  # grid points of the screening run's marginal in `screen_value`

# The default stream (crashes left out) and the upstream-fit stream, half each.
PRIOR_V2 = Prior(
    "mixture/v2", worse_weight=0.5 * (0.55 / 0.95 + 0.45), worse_sd_bpb=0.0125,
    zero_weight=0.5 * (0.25 / 0.95 + 0.40), zero_sd_bpb=0.0005,
    gain_weight=0.5 * 0.15 / 0.95, gain_mean_bpb=0.0015, large_gain_weight=0.5 * 0.15, large_gain_mean_bpb=0.006,
)  # fmt: skip


@dataclass(frozen=True)
class SeqV2Params:
    p_accept: float = 0.97  # accept when P(Δ < 0) reaches this
    p_confirm_alone: float = 0.85  # ... and the confirmation runs alone give at least this
    cost_share: float = 0.1  # a run costs this share of what it buys screening a fresh proposal
    min_pairs: int = 1  # paired runs before any accept (seed-ignoring candidates, drift)
    p_give_up: float = 0.002  # reject at once below this P(Δ < 0)
    max_pairs: int = 8  # paired runs after which a candidate still unconvincing is rejected
    screen_extra_sigma: float = 0.7  # extra σ on the screening run: the shared screening seed's offset
    prior: Prior = PRIOR_V2


@dataclass(frozen=True)
class _Levels:
    """The evidence of seq-bayes/v2: the candidate's and the best's levels with their variances."""

    candidate: float
    candidate_var: float
    best: float
    best_var: float

    @property
    def delta(self) -> float:
        return self.candidate - self.best

    @property
    def var(self) -> float:
        return self.candidate_var + self.best_var


def _levels(evidence: Evidence, params: SeqV2Params) -> _Levels:
    sigma2 = max(evidence.noise.sigma_bpb, 1e-9) ** 2
    screen_var = sigma2 * (1 + params.screen_extra_sigma**2) / len(evidence.screen_runs)
    cand = [
        (statistics.fmean(evidence.screen_runs), screen_var),
        *((x, sigma2) for x in evidence.candidate_runs),
    ]
    ref_var = max(evidence.best_sd_bpb, 1e-9) ** 2
    best = [(evidence.best_bpb, ref_var), *((x, sigma2) for x in evidence.best_runs)]
    (c, cv), (b, bv) = _pool(cand), _pool(best)
    return _Levels(c, cv, b, bv)


def _after_pairs(levels: _Levels, n: int, sigma2: float) -> float:
    """The variance of Δ's evidence after n more pairs."""
    return 1 / (1 / levels.candidate_var + n / sigma2) + 1 / (1 / levels.best_var + n / sigma2)


def _value_v2(post: Posterior, pairs: int, params: SeqV2Params) -> float:
    if pairs >= params.min_pairs and post.p_better >= params.p_accept:
        return max(post.gain_bpb, 0.0)
    return 0.0


def _lookahead_v2(levels: _Levels, pairs: int, sigma2: float, run_cost: float, params: SeqV2Params) -> float:
    """The best expected value of deciding after 1, 2 or 4 more pairs, less their runs' cost."""
    y, v = levels.delta, levels.var
    post, log_z = _posterior_of(y, v, params.prior)
    best = -math.inf
    for n in _LOOKAHEAD_PAIRS_V2:
        if pairs + n > params.max_pairs:
            break
        v2 = _after_pairs(levels, n, sigma2)
        v_n = 1 / max(1 / v2 - 1 / v, 1e-30)  # the new pairs as one measurement of Δ
        spread = math.sqrt(post.sd_bpb**2 + v_n)
        weights, values = [], []
        for k in range(_LOOKAHEAD_NODES):
            node = post.mean_bpb + spread * (-3.5 + 7.0 * k / (_LOOKAHEAD_NODES - 1))
            y2 = v2 * (y / v + node / v_n)
            post2, log_z2 = _posterior_of(y2, v2, params.prior)
            weights.append(math.exp(log_z2 + _log_normal(y - node, v + v_n) - log_z))
            values.append(_value_v2(post2, pairs + n, params))
        total = sum(weights)
        expected = sum(w * x for w, x in zip(weights, values, strict=True)) / total if total > 0 else 0.0
        best = max(best, expected - 2 * n * run_cost)
    return best


@functools.lru_cache(maxsize=256)
def screen_value(sigma_bpb: float, screen_extra_sigma: float, prior: Prior) -> float:
    """What one run buys screening a fresh proposal: E over its screening score y of max(0, E[−Δ | y]),
    the gain of merging exactly when the posterior expects a gain (an upper bound: it assumes the
    merge needs no further run). At low σ it tends to E[max(0, −Δ)], at high σ to ~0."""
    v = sigma_bpb**2 * (1 + screen_extra_sigma**2)
    lo, hi = -8 * prior.large_gain_mean_bpb - 6 * math.sqrt(v), 6 * math.sqrt(v) + 4 * prior.zero_sd_bpb
    step = (hi - lo) / (_SCREEN_VALUE_NODES - 1)
    total = 0.0
    for k in range(_SCREEN_VALUE_NODES):
        y = lo + k * step
        post, log_z = _posterior_of(y, v, prior)
        total += math.exp(log_z) * max(0.0, post.gain_bpb) * step
    return total


def _decide_seq_bayes_v2(evidence: Evidence, params: SeqV2Params) -> Decision:
    sigma = evidence.noise.sigma_bpb
    sigma2 = max(sigma, 1e-9) ** 2
    levels = _levels(evidence, params)
    post, _ = _posterior_of(levels.delta, levels.var, params.prior)
    pairs = len(evidence.candidate_runs)
    alone = _confirmation_alone(evidence, levels, sigma2, params)
    run_cost = params.cost_share * screen_value(round(sigma, 7), params.screen_extra_sigma, params.prior)
    more, accepted, stopped = 0, False, _verdict(evidence, post, pairs, alone, params)
    if stopped is not None:
        accepted = stopped == "accept"
    else:
        # E[max(−Δ, 0)] ≤ √(P(Δ < 0)·E[Δ²]) (Cauchy-Schwarz) bounds what any look-ahead can find
        ceiling = math.sqrt(post.p_better * (post.sd_bpb**2 + post.mean_bpb**2))
        if ceiling > 2 * run_cost and _lookahead_v2(levels, pairs, sigma2, run_cost, params) > 0:
            more, stopped = 1, "more-runs"
        else:
            stopped = "reject-not-worth"
    return _sequential_decision(
        SEQ_BAYES_V2_RULE, evidence, levels, post, alone, accepted, more, stopped, run_cost,
        params=_seq_v2_params(params), threshold=params.p_accept, prior_version=params.prior.version,
        reason=_seq_v2_reason(stopped, post, alone, pairs, params, evidence),
    )  # fmt: skip


def _verdict(
    evidence: Evidence, post: Posterior, pairs: int, alone: float, params: "SeqV2Params | SeqV3Params"
) -> str | None:
    """How a sequential rule stops, when the evidence settles it without a look-ahead (None: it does
    not, and the look-ahead decides between another run and `reject-not-worth`)."""
    if _ignores_seed(evidence):
        return "reject-ignores-seed"
    if pairs >= params.min_pairs and post.p_better >= params.p_accept and alone >= params.p_confirm_alone:
        return "accept"
    if post.p_better < params.p_give_up:
        return "reject-unlikely"
    if pairs >= params.max_pairs:
        return "reject-max-runs"
    return None


def _sequential_decision(
    rule: str, evidence: Evidence, levels: "_Levels | _PairedLevels", post: Posterior, alone: float, accepted: bool,
    more: int, stopped: str, run_cost: float, *, params: dict[str, float], threshold: float,
    prior_version: str, reason: str, extra: dict[str, float] | None = None,
) -> Decision:  # fmt: skip
    """The record of a seq-bayes/v2, v3 or v4 verdict: the runs, the posterior's summary (with `extra`), the
    pooled levels it compared, and why it stopped."""
    pairs = len(evidence.candidate_runs)
    candidate_bpb = (
        statistics.fmean(evidence.candidate_runs) if pairs else statistics.fmean(evidence.screen_runs)
    )
    diffs = [c - b for c, b in zip(evidence.candidate_runs, evidence.best_runs, strict=True)]
    summary = {
        "p_better": post.p_better, "mean_bpb": post.mean_bpb, "sd_bpb": post.sd_bpb,
        "lo_bpb": post.mean_bpb - 1.645 * post.sd_bpb, "hi_bpb": post.mean_bpb + 1.645 * post.sd_bpb,
        **(extra or {}), "evidence_delta_bpb": levels.delta, "evidence_sd_bpb": math.sqrt(levels.var),
        "candidate_level_bpb": levels.candidate, "best_level_bpb": levels.best,
        "reference_sd_bpb": evidence.best_sd_bpb, "p_better_confirmation_alone": alone,
        "run_cost_bpb": run_cost,
    }  # fmt: skip
    return Decision(
        accepted=accepted, rule=rule, stage="confirm" if pairs else "screen", confirm=more > 0,
        more_runs=more, candidate_bpb=candidate_bpb, best_bpb=evidence.best_bpb,
        best_commit=evidence.best_commit, delta_bpb=statistics.fmean(diffs) if pairs
        else candidate_bpb - evidence.best_bpb, sigma_bpb=evidence.noise.sigma_bpb,
        sigma_source=evidence.noise.source, threshold_bpb=threshold, candidate_runs=list(evidence.candidate_runs),
        best_runs=list(evidence.best_runs), seeds=list(evidence.seeds), params=params,
        posterior=summary, prior_version=prior_version, stopped=stopped,
        merged_bpb=levels.best + post.mean_bpb if accepted else None, reason=reason,
    )  # fmt: skip


def _confirmation_alone(evidence: Evidence, levels: _Levels, sigma2: float, params: SeqV2Params) -> float:
    """P(Δ < 0) from the confirmation runs alone against the best's level (1.0 before any)."""
    if not evidence.candidate_runs:
        return 1.0
    n = len(evidence.candidate_runs)
    y = statistics.fmean(evidence.candidate_runs) - levels.best
    post, _ = _posterior_of(y, sigma2 / n + levels.best_var, params.prior)
    return post.p_better


def _seq_v2_reason(
    stopped: str, post: Posterior, alone: float, pairs: int, params: SeqV2Params, evidence: Evidence
) -> str:
    if stopped == "reject-ignores-seed":
        return _seq_reason(stopped, post, pairs, 0, seq_params_from(AcceptanceSettings.defaults()), evidence)
    runs = f"{len(evidence.screen_runs)} screening run(s) and {pairs} paired run(s)"
    belief = (
        f"P(better) {post.p_better:.2f}, Δ {post.mean_bpb:+.6f} ± {post.sd_bpb:.6f} "
        f"(σ {evidence.noise.sigma_bpb:.6f} {evidence.noise.source}, prior {params.prior.version})"
    )
    if stopped == "accept":
        return f"after {runs}: {belief} reaches {params.p_accept:g}; accepted"
    if stopped == "more-runs":
        return f"after {runs}: {belief}; another paired run is worth its cost"
    if stopped == "reject-unlikely":
        return f"after {runs}: {belief}; too unlikely to be better to be worth another run, rejected"
    if stopped == "reject-max-runs":
        return f"after {runs}: {belief} is still below {params.p_accept:g} at the limit of {params.max_pairs} pairs"
    if pairs and post.p_better >= params.p_accept and alone < params.p_confirm_alone:
        return (
            f"after {runs}: {belief}, but the paired runs alone give P(better) {alone:.2f} "
            f"< {params.p_confirm_alone:g}: the screening run's luck carries it, rejected"
        )
    return f"after {runs}: {belief}; more runs are not worth their cost, rejected"


def _seq_v2_params(params: SeqV2Params) -> dict[str, float]:
    return {
        "p_accept": params.p_accept, "p_confirm_alone": params.p_confirm_alone, "cost_share": params.cost_share,
        "min_pairs": params.min_pairs, "max_pairs": params.max_pairs, "p_give_up": params.p_give_up,
        "screen_extra_sigma": params.screen_extra_sigma,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Rule seq-bayes/v3: seq-bayes/v2's evidence and look-ahead, guarded against one heavy-tailed run and
# cheap enough to simulate at scale (opt-in: AR_ACCEPT_RULE=seq-bayes/v3)
#
# Not the default: in the campaign simulation (200 campaigns per cell) it reaches 1.47x paired-z/v1's and
# 0.89x greedy's gain per GPU-hour (median over scenarios), short of the 2x asked of a new default (the
# upstream-fit scenarios stay at 0.98-1.48x); its false merges are at most 7.3% of greedy's in every
# scenario (docs/evaluation.md).
#
# Changes from v2, each measured in the campaign simulation (bench/campaign.py, docs/evaluation.md):
#
# 1. **One run may be an outlier.** The evidence is read both as v2 reads it and, for each run in it
#    (the screening run, each paired run of either side), with that run alone `tail_scale` times
#    noisier (prior share `tail_weight`): a scale mixture of normals, so the posterior stays closed
#    form, and each reading is weighted by how well it makes the runs agree. Under Student-t(3) noise
#    v2's false merges were single lucky runs (the screen, or one paired run, often with the pooled σ
#    of a few heavy-tailed runs well below the true σ); this reading no longer lets one of them carry an
#    accept, and costs nothing where runs agree.
# 2. **The paired runs alone must agree** with a higher bar (`p_confirm_alone` 0.9).
# 3. **A run costs half as much** (`cost_share` 0.05): with the guard above, confirming more borderline
#    candidates pays.
# 4. **Exact pruning.** The value of any look-ahead is bounded by E[max(−Δ, 0)] (the posterior's expected
#    gain where Δ < 0), in closed form; only candidates above twice a run's cost pay for the look-ahead,
#    which tries 1, 2 then 4 more pairs and stops at the first worth its runs.
# 5. **One screening threshold per noise level.** On a screen the look-ahead's verdict is monotone in
#    the screen's Δ, so `screen_threshold_v3` finds its boundary once per σ and reference uncertainty
#    (two significant digits each); a run's cost likewise uses σ to two significant digits.

SEQ_BAYES_V3_RULE = "seq-bayes/v3"
_LOOKAHEAD_NODES_V3 = 9  # quadrature points of the next pairs' predictive mean (±3.5 sd)


@dataclass(frozen=True)
class SeqV3Params:
    p_accept: float = 0.97  # accept when P(Δ < 0) reaches this
    p_confirm_alone: float = 0.9  # ... and the paired runs alone give at least this
    cost_share: float = 0.05  # a run costs this share of what it buys screening a fresh proposal
    min_pairs: int = 1  # paired runs before any accept (seed-ignoring candidates, drift)
    p_give_up: float = 0.002  # reject at once below this P(Δ < 0)
    max_pairs: int = 8  # paired runs after which a candidate still unconvincing is rejected
    screen_extra_sigma: float = 0.7  # extra σ on the screening run: the shared screening seed's offset
    tail_weight: float = 0.1  # prior share of an outlier reading per run
    tail_scale: float = 3.0  # an outlier run's σ, in σ
    prior: Prior = PRIOR_V2


@dataclass(frozen=True)
class _Belief:
    """A posterior of seq-bayes/v3 with its log evidence and E[max(−Δ, 0)]."""

    p_better: float
    mean_bpb: float
    sd_bpb: float
    log_z: float
    upside_bpb: float

    def posterior(self) -> Posterior:
        return Posterior(self.p_better, self.mean_bpb, self.sd_bpb, -self.mean_bpb)


_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _belief(y: float, v: float, prior: Prior) -> _Belief:
    """The mixture prior's posterior for the likelihood N(y; Δ, v): the closed forms of `_parts`
    written out flat (this runs in every look-ahead), with each part's expected gain on Δ < 0."""
    # clearly worse: a normal cut to Δ > 0 (no upside)
    s2 = prior.worse_sd_bpb**2
    v1 = 1 / (1 / s2 + 1 / v)
    sd1 = math.sqrt(v1)
    m1 = v1 * y / v
    a = m1 / sd1
    log_cdf = _log_ndtr(a)
    mean1 = m1 + sd1 * math.exp(-0.5 * a * a - _LOG_SQRT_2PI - log_cdf)
    log_z1 = math.log(2 * prior.worse_weight) - 0.5 * (y * y / (s2 + v) + math.log(s2 + v)) + log_cdf
    # near zero: a normal; its upside is E[−Δ; Δ < 0]
    z2 = prior.zero_sd_bpb**2
    v2 = 1 / (1 / z2 + 1 / v)
    sd2 = math.sqrt(v2)
    m2 = v2 * y / v
    b = m2 / sd2
    below = 0.5 * math.erfc(b / _SQRT2)
    log_z2 = math.log(prior.zero_weight) - 0.5 * (y * y / (z2 + v) + math.log(z2 + v))
    # real gains, Δ = −Exp(μ): normals cut to Δ < 0, all upside (the log evidences here leave out the
    # common −½·log 2π, as do the two above)
    sd3 = math.sqrt(v)
    mu, mu4 = prior.gain_mean_bpb, prior.large_gain_mean_bpb
    m3, m4 = y + v / mu, y + v / mu4
    c3, c4 = m3 / sd3, m4 / sd3
    log_tail3, log_tail4 = _log_ndtr(-c3), _log_ndtr(-c4)
    mean3 = m3 - sd3 * math.exp(-0.5 * c3 * c3 - _LOG_SQRT_2PI - log_tail3)
    mean4 = m4 - sd3 * math.exp(-0.5 * c4 * c4 - _LOG_SQRT_2PI - log_tail4)
    log_z3 = math.log(prior.gain_weight / mu) + y / mu + v / (2 * mu * mu) + log_tail3 + _LOG_SQRT_2PI
    log_z4 = (
        math.log(prior.large_gain_weight / mu4) + y / mu4 + v / (2 * mu4 * mu4) + log_tail4 + _LOG_SQRT_2PI
        if prior.large_gain_weight > 0
        else -math.inf
    )
    top = max(log_z1, log_z2, log_z3, log_z4)
    w1, w2, w3 = math.exp(log_z1 - top), math.exp(log_z2 - top), math.exp(log_z3 - top)
    w4 = math.exp(log_z4 - top) if prior.large_gain_weight > 0 else 0.0
    total = w1 + w2 + w3 + w4
    p_better = (w2 * below + w3 + w4) / total
    mean = (w1 * mean1 + w2 * m2 + w3 * mean3 + w4 * mean4) / total
    second = (
        w1 * (v1 + m1 * mean1) + w2 * (v2 + m2 * m2) + w3 * (v + m3 * mean3) + w4 * (v + m4 * mean4)
    ) / total
    upside2 = sd2 * math.exp(-0.5 * b * b - _LOG_SQRT_2PI) - m2 * below
    upside = (w2 * upside2 - w3 * mean3 - w4 * mean4) / total
    return _Belief(
        min(max(p_better, 0.0), 1.0),
        mean,
        math.sqrt(max(second - mean * mean, 0.0)),
        top + math.log(total) - _LOG_SQRT_2PI,
        upside,
    )


def _mix(beliefs: list[tuple[float, _Belief]]) -> _Belief:
    """A mixture of posteriors, each with a log weight (its log evidence already included)."""
    top = max(log_w for log_w, _ in beliefs)
    weights = [math.exp(log_w - top) for log_w, _ in beliefs]
    total = sum(weights)
    p_better = sum(w * b.p_better for w, (_, b) in zip(weights, beliefs, strict=True)) / total
    mean = sum(w * b.mean_bpb for w, (_, b) in zip(weights, beliefs, strict=True)) / total
    second = (
        sum(w * (b.sd_bpb**2 + b.mean_bpb**2) for w, (_, b) in zip(weights, beliefs, strict=True)) / total
    )
    upside = sum(w * b.upside_bpb for w, (_, b) in zip(weights, beliefs, strict=True)) / total
    return _Belief(p_better, mean, math.sqrt(max(second - mean * mean, 0.0)), top + math.log(total), upside)


def _consistent(terms: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Gaussian measurements (x, variance) of one level pooled: (mean, variance, log of how well they
    agree), the factor their joint likelihood keeps once the level is integrated out."""
    mean, var = _pool(terms)
    log_c = 0.5 * math.log(var) - sum(0.5 * ((x - mean) ** 2 / s + math.log(s)) for x, s in terms)
    return mean, var, log_c


def _outlier_parts(evidence: Evidence, params: SeqV3Params) -> list[tuple[float, _Levels]]:
    """The evidence under "no run is an outlier" and under "run k alone is one" (its variance
    `tail_scale`² times larger), for the screening run and every paired run of either side: (log weight,
    levels) of each, the weight with how well that reading makes the runs agree. The first part is
    the one without an outlier."""
    sigma2 = max(evidence.noise.sigma_bpb, 1e-9) ** 2
    screen_var = sigma2 * (1 + params.screen_extra_sigma**2) / len(evidence.screen_runs)
    cand = [
        (statistics.fmean(evidence.screen_runs), screen_var),
        *((x, sigma2) for x in evidence.candidate_runs),
    ]
    ref = (evidence.best_bpb, max(evidence.best_sd_bpb, 1e-9) ** 2)
    best = [(x, sigma2) for x in evidence.best_runs]
    wide = params.tail_scale**2
    log_tail, log_body = math.log(params.tail_weight), math.log(1 - params.tail_weight)
    readings = [(log_body, -1, -1)]
    readings += [(log_tail, k, -1) for k in range(len(cand))]
    readings += [(log_tail, -1, k) for k in range(len(best))]
    out = []
    for log_prior, k_cand, k_best in readings:
        c_terms = [(x, s * wide if k == k_cand else s) for k, (x, s) in enumerate(cand)]
        b_terms = [ref, *((x, s * wide if k == k_best else s) for k, (x, s) in enumerate(best))]
        c, cv, log_cc = _consistent(c_terms)
        b, bv, log_cb = _consistent(b_terms)
        out.append((log_prior + log_cc + log_cb, _Levels(c, cv, b, bv)))
    return out


def _belief_v3(parts: Sequence[tuple[float, "_Levels | _PairedLevels"]], prior: Prior) -> _Belief:
    beliefs = [(log_w, _belief(levels.delta, levels.var, prior)) for log_w, levels in parts]
    return _mix([(log_w + b.log_z, b) for log_w, b in beliefs])


def _lookahead_v3(
    parts: Sequence[tuple[float, "_Levels | _PairedLevels"]],
    post: _Belief,
    pairs: int,
    sigma2: float,
    run_cost: float,
    params: SeqV3Params,
) -> bool:
    """Whether deciding after 1, 2 or 4 more pairs (the first that is) is worth their runs, in
    expectation over the predictive of the new pairs' mean (taken on the narrow part's levels)."""
    _, levels = parts[0]
    y, v = levels.delta, levels.var
    for n in _LOOKAHEAD_PAIRS_V2:
        if pairs + n > params.max_pairs:
            break
        if post.upside_bpb <= 2 * n * run_cost:
            break
        v2 = levels.after(n) if isinstance(levels, _PairedLevels) else _after_pairs(levels, n, sigma2)
        v_n = 1 / max(1 / v2 - 1 / v, 1e-30)
        spread = math.sqrt(post.sd_bpb**2 + v_n)
        log_weights, values = [], []
        for k in range(_LOOKAHEAD_NODES_V3):
            node = post.mean_bpb + spread * (-3.5 + 7.0 * k / (_LOOKAHEAD_NODES_V3 - 1))
            after = _belief(v2 * (y / v + node / v_n), v2, params.prior)
            # the predictive density of the new pairs' mean, up to a constant: Z(data + node)·N(y − node)
            log_weights.append(after.log_z + _log_normal(y - node, v + v_n))
            accept = pairs + n >= params.min_pairs and after.p_better >= params.p_accept
            values.append(max(-after.mean_bpb, 0.0) if accept else 0.0)
        top = max(log_weights)
        weights = [math.exp(x - top) for x in log_weights]
        if sum(w * x for w, x in zip(weights, values, strict=True)) / sum(weights) > 2 * n * run_cost:
            return True
    return False


def _two_digits(x: float) -> float:
    return float(f"{max(x, 1e-9):.2g}")


@functools.lru_cache(maxsize=4096)
def screen_threshold_v3(sigma_bpb: float, reference_sd_bpb: float, params: SeqV3Params) -> float:
    """The screening run's Δ (screen − the best's reference) below which seq-bayes/v3 confirms: the
    boundary of the look-ahead's verdict on a screen, found by bisection at this σ and reference
    uncertainty (both rounded to two significant digits by the caller). The verdict is monotone in
    the screen's Δ (a better screen is more likely better, with more to gain), so one number per
    noise level replaces a look-ahead per proposal."""
    run_cost = run_cost_v3(sigma_bpb, params)
    return _screen_threshold(
        lambda y, screen_var: _Levels(y, screen_var, 0.0, reference_sd_bpb**2), sigma_bpb**2, reference_sd_bpb,
        run_cost, params,
    )  # fmt: skip


def _screen_threshold(
    levels_of: Callable[[float, float], "_Levels | _PairedLevels"],
    sigma2: float,
    reference_sd_bpb: float,
    run_cost: float,
    params: SeqV3Params,
) -> float:
    """The boundary of the look-ahead's verdict on a screen (v3 and v4): `levels_of(Δ, screen
    variance)` reads one screen under each outlier reading; bisection over [−12, 6] spans to 18 spans
    / 2^14, far below a run's σ."""
    span = math.sqrt(sigma2 * (1 + params.screen_extra_sigma**2) + reference_sd_bpb**2)

    def worth(y: float) -> bool:
        parts = []
        for weight, scale in ((1 - params.tail_weight, 1.0), (params.tail_weight, params.tail_scale**2)):
            parts.append(
                (math.log(weight), levels_of(y, scale * sigma2 * (1 + params.screen_extra_sigma**2)))
            )
        belief = _belief_v3(parts, params.prior)
        if belief.p_better < params.p_give_up:
            return False
        return _lookahead_v3(parts, belief, 0, sigma2, run_cost, params)

    lo, hi = -12 * span, 6 * span
    if not worth(lo):
        return -math.inf
    if worth(hi):
        return hi
    for _ in range(14):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if worth(mid) else (lo, mid)
    return lo


def run_cost_v3(sigma_bpb: float, params: SeqV3Params) -> float:
    """What one run of seq-bayes/v3 costs, in expected bpb: `cost_share` × `screen_value` at σ rounded
    to two significant digits."""
    return params.cost_share * screen_value(_two_digits(sigma_bpb), params.screen_extra_sigma, params.prior)


def _decide_seq_bayes_v3(evidence: Evidence, params: SeqV3Params) -> Decision:
    sigma = evidence.noise.sigma_bpb
    sigma2 = max(sigma, 1e-9) ** 2
    parts = _outlier_parts(evidence, params)
    belief = _belief_v3(parts, params.prior)
    post = belief.posterior()
    pairs = len(evidence.candidate_runs)
    alone = _confirmation_alone_v3(evidence, parts[0][1], sigma2, params)
    run_cost = run_cost_v3(sigma, params)
    more, accepted, stopped = 0, False, _verdict(evidence, post, pairs, alone, params)
    if stopped is not None:
        accepted = stopped == "accept"
    else:
        if pairs == 0:
            threshold = screen_threshold_v3(_two_digits(sigma), _two_digits(evidence.best_sd_bpb), params)
            worth = parts[0][1].delta < threshold
        else:
            worth = _lookahead_v3(parts, belief, pairs, sigma2, run_cost, params)
        if worth:
            more, stopped = 1, "more-runs"
        else:
            stopped = "reject-not-worth"
    return _sequential_decision(
        SEQ_BAYES_V3_RULE, evidence, parts[0][1], post, alone, accepted, more, stopped, run_cost,
        params=_seq_v3_params(params), threshold=params.p_accept, prior_version=params.prior.version,
        reason=_seq_v3_reason(stopped, post, alone, pairs, params, evidence),
        extra={"expected_gain_bpb": belief.upside_bpb},
    )  # fmt: skip


def _confirmation_alone_v3(evidence: Evidence, levels: _Levels, sigma2: float, params: SeqV3Params) -> float:
    """P(Δ < 0) from the paired runs alone against the best's level (1.0 before any)."""
    if not evidence.candidate_runs:
        return 1.0
    n = len(evidence.candidate_runs)
    y = statistics.fmean(evidence.candidate_runs) - levels.best
    return _belief(y, sigma2 / n + levels.best_var, params.prior).p_better


def _seq_v3_reason(
    stopped: str, post: Posterior, alone: float, pairs: int, params: SeqV3Params, evidence: Evidence
) -> str:
    v2 = SeqV2Params(p_accept=params.p_accept, p_confirm_alone=params.p_confirm_alone, max_pairs=params.max_pairs,
                     prior=params.prior)  # fmt: skip
    return _seq_v2_reason(stopped, post, alone, pairs, v2, evidence)


def _seq_v3_params(params: SeqV3Params) -> dict[str, float]:
    return {
        "p_accept": params.p_accept, "p_confirm_alone": params.p_confirm_alone, "cost_share": params.cost_share,
        "min_pairs": params.min_pairs, "max_pairs": params.max_pairs, "p_give_up": params.p_give_up,
        "screen_extra_sigma": params.screen_extra_sigma, "tail_weight": params.tail_weight,
        "tail_scale": params.tail_scale,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Rule seq-bayes/v4: seq-bayes/v3 with credit for the same-seed correlation of paired runs, as far as
# the confirmations on the fingerprint show it (opt-in: AR_ACCEPT_RULE=seq-bayes/v4)
#
# Not the default: at the measured same-seed correlation (ρ 0.98, 200 campaigns per cell) it reaches 2.03x
# paired-z/v1's gain per GPU-hour (median over the resolved scenarios, min 1.10x; v3 1.53x) with false
# merges at most 0.93% of greedy's, but it has not been run on the whole grid, and at ρ 0.98 greedy,
# whose screen is a same-seed comparison, gains ~1.8x as much (docs/evaluation.md).
#
# A candidate's paired run and the best's run on the same seed share the seed's effect: with a
# same-seed correlation ρ their difference has variance 2σ²(1 − ρ), not 2σ². On an H100 at 300 s the
# trainer's ρ was about 0.98 (bench/results/gpu-noise-h100-ve3.json), so a pair measures Δ ~5x more
# precisely than v3 (which counts ρ as 0) credits it with. v4 is v3 (the same prior, outlier readings,
# look-ahead, guards and costs) with one change: within each pair the candidate's and the best's runs
# are correlated, covariance ρ̂σ², so the candidate's and the best's levels are estimated jointly (a
# 2 x 2 generalised least squares: the screening run, the best's reference and the pairs, each pair a
# correlated block). At ρ̂ = 0 it is v3's evidence exactly.
#
# ρ̂ comes from the paired differences the committer holds: the spread of each confirmation's
# differences about its own mean (earlier confirmations on the fingerprint and this one, `PairSpread`)
# estimates the pair variance 2σ²(1 − ρ) whatever each candidate's Δ, and drift cancels within a pair
# run back to back. The rule takes the one-sided upper `rho_confidence_z` bound of that variance (a
# chi-square bound on `dof` degrees of freedom, Wilson-Hilferty), so ρ̂ = 1 − bound / 2σ² shrinks
# toward 0 when the differences are few; it is 0 below `rho_min_dof` degrees of freedom or while σ is
# the prior, and at most `rho_max`. 1 − ρ̂ is rounded up to two significant digits (one screening
# threshold per noise level, as v3). Every decision records ρ̂, the pair variance it used and its
# degrees of freedom (`posterior`: pair_rho, pair_var_bpb2, pair_dof).

SEQ_BAYES_V4_RULE = "seq-bayes/v4"
RULES = (PAIRED_Z_RULE, SEQ_BAYES_RULE, SEQ_BAYES_V2_RULE, SEQ_BAYES_V3_RULE, SEQ_BAYES_V4_RULE)


@dataclass(frozen=True)
class SeqV4Params(SeqV3Params):
    rho_min_dof: int = 4  # degrees of freedom of paired differences before any credit for ρ
    rho_confidence_z: float = 1.645  # one-sided upper bound of the pair variance (5%)
    rho_max: float = 0.99  # the most same-seed correlation credited


@dataclass(frozen=True)
class PairNoise:
    """The same-seed correlation a seq-bayes/v4 decision used, and what it rests on."""

    rho: float  # ρ̂
    var_bpb2: float  # 2σ²(1 − ρ̂): the variance of one paired difference
    dof: int  # degrees of freedom of the paired differences
    bound_bpb2: float  # the upper bound of the pair variance (∞ below `rho_min_dof`)


def _chi2_lower(dof: int, z: float) -> float:
    """The lower z-quantile (z > 0: the 1 − Φ(z) one) of χ² with `dof` degrees of freedom, Wilson-Hilferty."""
    k = float(dof)
    return k * max(1 - 2 / (9 * k) - z * math.sqrt(2 / (9 * k)), 0.0) ** 3


def _ceil_two_digits(x: float) -> float:
    if x <= 0:
        return 0.0
    scale = 10.0 ** (math.floor(math.log10(x)) - 1)
    return math.ceil(round(x / scale, 9)) * scale


def pair_noise(evidence: Evidence, params: SeqV4Params) -> PairNoise:
    """ρ̂ from the paired differences' spread (earlier confirmations and this one's), conservatively:
    the upper bound of their variance read against σ, 1 − ρ̂ rounded up to two significant digits."""
    sigma2 = max(evidence.noise.sigma_bpb, 1e-9) ** 2
    diffs = [c - b for c, b in zip(evidence.candidate_runs, evidence.best_runs, strict=True)]
    spread = add_pairs(evidence.pair_spread, diffs)
    quantile = _chi2_lower(spread.dof, params.rho_confidence_z) if spread.dof >= params.rho_min_dof else 0.0
    if evidence.noise.source != "calibrated" or quantile <= 0:
        return PairNoise(0.0, 2 * sigma2, spread.dof, math.inf)
    bound = spread.sum_squares_bpb2 / quantile
    rho = min(max(1 - bound / (2 * sigma2), 0.0), params.rho_max)
    rho = 1 - min(_ceil_two_digits(1 - rho), 1.0)
    return PairNoise(rho, 2 * sigma2 * (1 - rho), spread.dof, bound)


@dataclass(frozen=True)
class _PairedLevels:
    """The candidate's and the best's levels estimated jointly (their information matrix J), with the
    information one more pair adds (P): what seq-bayes/v4 compares."""

    candidate: float
    best: float
    var: float  # of Δ's evidence
    best_var: float
    j11: float
    j12: float
    j22: float
    p11: float
    p12: float
    p22: float

    @property
    def delta(self) -> float:
        return self.candidate - self.best

    def after(self, n: int) -> float:
        """The variance of Δ's evidence after n more pairs."""
        j11, j12, j22 = self.j11 + n * self.p11, self.j12 + n * self.p12, self.j22 + n * self.p22
        return (j11 + j22 + 2 * j12) / (j11 * j22 - j12 * j12)


def _pair_precision(vc: float, vb: float, cov: float) -> tuple[float, float, float]:
    det = vc * vb - cov * cov
    return vb / det, -cov / det, vc / det


def _paired_levels(
    screen: tuple[float, float] | None, ref: tuple[float, float], pairs: list[tuple[float, float, float, float]],
    cov: float, sigma2: float,
) -> tuple[float, _PairedLevels]:  # fmt: skip
    """The levels from the screening run (x, variance; None: left out), the best's reference and the
    pairs (candidate, its variance, best, its variance; covariance `cov` within a pair), with the log
    of how well they agree once both levels are integrated out (v3's `_consistent` of both levels
    where cov = 0)."""
    j11 = j12 = j22 = h1 = h2 = log_det = 0.0
    if screen is not None:
        j11, h1, log_det = 1 / screen[1], screen[0] / screen[1], math.log(screen[1])
    j22 += 1 / ref[1]
    h2 += ref[0] / ref[1]
    log_det += math.log(ref[1])
    blocks = []
    for c, vc, b, vb in pairs:
        p11, p12, p22 = _pair_precision(vc, vb, cov)
        j11, j12, j22 = j11 + p11, j12 + p12, j22 + p22
        h1, h2 = h1 + p11 * c + p12 * b, h2 + p12 * c + p22 * b
        log_det += math.log(vc * vb - cov * cov)
        blocks.append((c, b, p11, p12, p22))
    det_j = j11 * j22 - j12 * j12
    mc, mb = (j22 * h1 - j12 * h2) / det_j, (j11 * h2 - j12 * h1) / det_j
    q = (ref[0] - mb) ** 2 / ref[1]
    if screen is not None:
        q += (screen[0] - mc) ** 2 / screen[1]
    for c, b, p11, p12, p22 in blocks:
        ec, eb = c - mc, b - mb
        q += p11 * ec * ec + 2 * p12 * ec * eb + p22 * eb * eb
    p11, p12, p22 = _pair_precision(sigma2, sigma2, cov)
    levels = _PairedLevels(mc, mb, (j11 + j22 + 2 * j12) / det_j, j11 / det_j, j11, j12, j22, p11, p12, p22)
    return -0.5 * (q + log_det + math.log(det_j)), levels


def _outlier_parts_v4(
    evidence: Evidence, rho: float, params: SeqV4Params
) -> list[tuple[float, _PairedLevels]]:
    """v3's readings (none an outlier; each run alone `tail_scale` times noisier), with the pairs'
    same-seed covariance ρ̂σ² (an outlier's own noise is what grows: the covariance stays)."""
    sigma2 = max(evidence.noise.sigma_bpb, 1e-9) ** 2
    cov = rho * sigma2
    screen = (
        statistics.fmean(evidence.screen_runs),
        sigma2 * (1 + params.screen_extra_sigma**2) / len(evidence.screen_runs),
    )
    ref = (evidence.best_bpb, max(evidence.best_sd_bpb, 1e-9) ** 2)
    pairs = list(zip(evidence.candidate_runs, evidence.best_runs, strict=True))
    wide = params.tail_scale**2
    log_tail, log_body = math.log(params.tail_weight), math.log(1 - params.tail_weight)
    readings = [(log_body, -1, -1)]
    readings += [(log_tail, k, -1) for k in range(1 + len(pairs))]
    readings += [(log_tail, -1, k) for k in range(len(pairs))]
    out = []
    for log_prior, k_cand, k_best in readings:
        x, v = screen
        terms = [
            (c, sigma2 * wide if k + 1 == k_cand else sigma2, b, sigma2 * wide if k == k_best else sigma2)
            for k, (c, b) in enumerate(pairs)
        ]
        log_c, levels = _paired_levels((x, v * wide if k_cand == 0 else v), ref, terms, cov, sigma2)
        out.append((log_prior + log_c, levels))
    return out


@functools.lru_cache(maxsize=4096)
def screen_threshold_v4(sigma_bpb: float, reference_sd_bpb: float, rho: float, params: SeqV4Params) -> float:
    """`screen_threshold_v3` with the pairs to come correlated at ρ̂ (then confirming is cheaper)."""
    run_cost, sigma2 = run_cost_v3(sigma_bpb, params), sigma_bpb**2

    def levels_of(y: float, screen_var: float) -> _PairedLevels:
        return _paired_levels((y, screen_var), (0.0, reference_sd_bpb**2), [], rho * sigma2, sigma2)[1]

    return _screen_threshold(levels_of, sigma2, reference_sd_bpb, run_cost, params)


def _decide_seq_bayes_v4(evidence: Evidence, params: SeqV4Params) -> Decision:
    sigma = evidence.noise.sigma_bpb
    sigma2 = max(sigma, 1e-9) ** 2
    pair = pair_noise(evidence, params)
    parts = _outlier_parts_v4(evidence, pair.rho, params)
    belief = _belief_v3(parts, params.prior)
    post = belief.posterior()
    pairs = len(evidence.candidate_runs)
    alone = _confirmation_alone_v4(evidence, pair.rho, sigma2, params)
    run_cost = run_cost_v3(sigma, params)
    more, accepted, stopped = 0, False, _verdict(evidence, post, pairs, alone, params)
    if stopped is not None:
        accepted = stopped == "accept"
    else:
        if pairs == 0:
            threshold = screen_threshold_v4(
                _two_digits(sigma), _two_digits(evidence.best_sd_bpb), pair.rho, params
            )
            worth = parts[0][1].delta < threshold
        else:
            worth = _lookahead_v3(parts, belief, pairs, sigma2, run_cost, params)
        if worth:
            more, stopped = 1, "more-runs"
        else:
            stopped = "reject-not-worth"
    reason = _seq_v3_reason(stopped, post, alone, pairs, params, evidence)
    if stopped != "reject-ignores-seed":
        reason += f" (same-seed ρ̂ {pair.rho:.2f} from {pair.dof} dof of paired differences)"
    return _sequential_decision(
        SEQ_BAYES_V4_RULE, evidence, parts[0][1], post, alone, accepted, more, stopped, run_cost,
        params=_seq_v4_params(params), threshold=params.p_accept, prior_version=params.prior.version,
        reason=reason, extra={"expected_gain_bpb": belief.upside_bpb, "pair_rho": pair.rho,
                              "pair_var_bpb2": pair.var_bpb2, "pair_dof": float(pair.dof)},
    )  # fmt: skip


def _confirmation_alone_v4(evidence: Evidence, rho: float, sigma2: float, params: SeqV4Params) -> float:
    """P(Δ < 0) from the paired runs and the best's reference, without the screening run (1.0 before
    any pair)."""
    if not evidence.candidate_runs:
        return 1.0
    ref = (evidence.best_bpb, max(evidence.best_sd_bpb, 1e-9) ** 2)
    pairs = [(c, sigma2, b, sigma2) for c, b in zip(evidence.candidate_runs, evidence.best_runs, strict=True)]
    _, levels = _paired_levels(None, ref, pairs, rho * sigma2, sigma2)
    return _belief(levels.delta, levels.var, params.prior).p_better


def _seq_v4_params(params: SeqV4Params) -> dict[str, float]:
    return {
        **_seq_v3_params(params), "rho_min_dof": params.rho_min_dof, "rho_confidence_z": params.rho_confidence_z,
        "rho_max": params.rho_max,
    }  # fmt: skip
