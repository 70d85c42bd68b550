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
"""

import math
import statistics
from dataclasses import dataclass
from typing import Literal

from services.models import Decision
from services.settings import Settings

PAIRED_Z_RULE = "paired-z/v1"


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
    verdict = (
        f"screening run {candidate_bpb:.6f} is within {params.screen_margin_sigma:g} σ of the best "
        f"{best_bpb:.6f} (Δ {delta:+.6f}, σ {noise.sigma_bpb:.6f} {noise.source}); confirming with "
        f"{params.confirm_runs} paired runs"
        if confirm
        else f"val_bpb {candidate_bpb:.6f} does not beat the best {best_bpb:.6f} (Δ {delta:+.6f} > "
        f"{params.screen_margin_sigma:g} σ = {limit:.6f}; σ {noise.sigma_bpb:.6f} {noise.source})"
    )
    return Decision(
        accepted=False, rule=PAIRED_Z_RULE, stage="screen", confirm=confirm, candidate_bpb=candidate_bpb,
        best_bpb=best_bpb, best_commit=best_commit, delta_bpb=delta, sigma_bpb=noise.sigma_bpb,
        sigma_source=noise.source, threshold_bpb=limit, reason=verdict, params=_params(params),
    )  # fmt: skip


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
    groups = [runs for runs in runs_by_commit.values() if len(runs) > 1]
    dof = degrees_of_freedom(runs_by_commit)
    total = sum(len(runs) for runs in runs_by_commit.values())
    if dof < min_dof:
        return Noise(params.sigma_prior_bpb, "prior", total)
    squares = sum(sum((x - statistics.fmean(runs)) ** 2 for x in runs) for runs in groups)
    return Noise(math.sqrt(squares / dof), "calibrated", total)


def _params(params: RuleParams) -> dict[str, float]:
    return {
        "confirm_runs": params.confirm_runs,
        "screen_margin_sigma": params.screen_margin_sigma,
        "accept_z": params.accept_z,
        "sigma_prior_bpb": params.sigma_prior_bpb,
    }
