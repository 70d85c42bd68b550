"""Accept rules: pure functions from run scores to verdicts, so that the committer and the acceptance
simulation (bench/acceptance.py) run exactly the same code.

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

import math
import statistics
from dataclasses import dataclass
from typing import Literal

from services.models import Decision
from services.settings import Settings

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
    confirm_runs: int = 3  # paired confirmation runs (candidate + best each)
    screen_margin_sigma: float = 0.5  # screening runs up to this many σ worse than the best get confirmed
    accept_z: float = 2.6  # one-sided bound; 2.33 would be 1% with a known σ, σ is estimated
    sigma_prior_bpb: float = 0.001  # run-to-run σ used until calibration has enough runs


@dataclass(frozen=True)
class Noise:
    sigma_bpb: float
    source: Literal["calibrated", "prior"]
    runs: int  # how many runs the calibration saw


@dataclass(frozen=True)
class TripwireParams:
    z: float = 3.0  # one-sided z of the gap's noise bound
    sigma_prior_bpb: float = 0.001  # σ of one run's (test − val) until calibration has 3 dof
    gain_slack: float = 0.5  # share of the val gain that may go unmatched on test


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


def tripwire_params_from(settings: Settings) -> TripwireParams:
    return TripwireParams(
        z=settings.tripwire_z,
        sigma_prior_bpb=settings.tripwire_sigma_prior_bpb,
        gain_slack=settings.tripwire_gain_slack,
    )


def params_from(settings: Settings) -> RuleParams:
    """The rule's parameters as the operator set them (the committer and the API use the same)."""
    return RuleParams(
        confirm_runs=settings.confirm_runs, screen_margin_sigma=settings.screen_margin_sigma,
        accept_z=settings.accept_z, sigma_prior_bpb=settings.noise_sigma_prior_bpb,
    )  # fmt: skip


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
    squares = sum(sum((x - statistics.fmean(runs)) ** 2 for x in runs) for runs in groups)
    return Noise(math.sqrt(squares / dof), "calibrated", total)


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
