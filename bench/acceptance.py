"""Acceptance-rule simulation: the production rule code (services/committer/rules.py: calibrate,
screen, confirm) deciding on simulated proposals whose run scores come from a noise model.

    .venv/bin/python bench/acceptance.py [--proposals 10000] [--seed 0]

For each of four noise models: the false-accept rate with no true effect (goal ≤ 1%), the accept
rate as a function of the true effect in σ units (a power curve), and the GPU runs spent per
decision. Writes bench/results/acceptance.json (top-level `false_accept_rate`: the worst model)
and its raw log. The simulated machine follows the committer: the best's score is the mean of its
calibration runs, σ comes from those runs, a screen decides whether to confirm, confirmation pairs
each candidate run with a fresh run of the best on the same seed, back to back.
"""

import argparse
import io
import math
import random
import statistics
import sys
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import write_results  # noqa: E402
from services.committer import rules  # noqa: E402
from services.settings import AcceptanceSettings  # noqa: E402

SIGMA_BPB = 0.0008  # the upstream trainer's seed-to-seed σ on the H100 (bench/README.md)
BASE_BPB = 1.3166  # its score under the evaluation protocol
CALIBRATION_RUNS = 8  # runs of the best behind its score and σ
EFFECTS_SIGMA = [0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0]  # true Δ in σ units (negative is better)
# Upstream's seed runs under the evaluation protocol (bench/README.md): 1.3166, 1.3177, 1.3181 with seeds 42, 1, 2,
# and ~0.0002 re-running one seed. Their residuals, scaled to unit variance, are resampled.
REAL_RUNS = [1.3166, 1.3177, 1.3181]


class Noise:
    """A noise model: unit-variance draws, with state for drift."""

    def __init__(self, name: str, rng: random.Random) -> None:
        self.name = name
        self.rng = rng
        self.drift = 0.0
        mean = statistics.fmean(REAL_RUNS)
        sd = statistics.pstdev(REAL_RUNS)
        self.real = [(x - mean) / sd for x in REAL_RUNS]

    def draw(self) -> float:
        rng = self.rng
        if self.name == "gaussian":
            return rng.gauss(0, 1)
        if self.name == "student_t3":
            chi2 = sum(rng.gauss(0, 1) ** 2 for _ in range(3))
            return rng.gauss(0, 1) / math.sqrt(chi2 / 3) / math.sqrt(3)  # t(3) has variance 3
        if self.name == "resampled_real":
            same_seed = rng.gauss(0, 0.0002 / SIGMA_BPB)
            return rng.choice(self.real) + same_seed
        if self.name == "drift_outliers":
            self.drift += rng.gauss(0, 0.05)  # the machine wanders a little with every run
            outlier = 8.0 if rng.random() < 0.01 else 0.0  # a rare run that goes badly
            return self.drift + rng.gauss(0, 1) + outlier
        raise ValueError(self.name)


def run(noise: Noise, effect_sigma: float) -> float:
    return BASE_BPB + SIGMA_BPB * (effect_sigma + noise.draw())


def decide(noise: Noise, effect_sigma: float, params: rules.RuleParams) -> tuple[bool, int]:
    """One proposal through screen and confirmation; returns (accepted, GPU runs spent)."""
    calibration = [run(noise, 0.0) for _ in range(CALIBRATION_RUNS)]
    best_bpb = statistics.fmean(calibration)
    sigma = rules.calibrate({"best": calibration}, params)
    screened = rules.screen(run(noise, effect_sigma), best_bpb, "best", sigma, params)
    if not screened.confirm:
        return False, 1
    candidate, best = [], []
    for _ in range(params.confirm_runs):
        candidate.append(run(noise, effect_sigma))
        best.append(run(noise, 0.0))
    seeds = list(range(params.confirm_runs))
    verdict = rules.confirm(candidate, best, seeds, "best", sigma, params)
    return verdict.accepted, 1 + 2 * params.confirm_runs


def simulate(model: str, proposals: int, seed: int, params: rules.RuleParams) -> dict[str, object]:
    rng = random.Random(f"{seed}-{model}")
    noise = Noise(model, rng)
    curve: dict[str, float] = {}
    runs_spent: dict[str, float] = {}
    for effect in EFFECTS_SIGMA:
        count = proposals if effect == 0.0 else max(1000, proposals // 5)
        outcomes: list[tuple[bool, int]] = [decide(noise, effect, params) for _ in range(count)]
        curve[f"{effect:+.1f}"] = sum(a for a, _ in outcomes) / count
        runs_spent[f"{effect:+.1f}"] = statistics.fmean(r for _, r in outcomes)
    false_accepts = curve["+0.0"]
    print(f"{model:15s} false accepts {false_accepts:.4f}  power " +
          " ".join(f"{k}σ:{v:.3f}" for k, v in curve.items() if k != "+0.0") +
          f"  runs/decision at 0σ {runs_spent['+0.0']:.2f}", flush=True)  # fmt: skip
    return {
        "false_accept_rate": false_accepts,
        "proposals_at_zero_effect": proposals,
        "accept_rate_by_effect_sigma": curve,
        "gpu_runs_per_decision_by_effect_sigma": runs_spent,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--proposals", type=int, default=10_000, help="proposals with no true effect, per model"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    params = rules.params_from(AcceptanceSettings())
    log = io.StringIO()
    models: dict[str, Callable[[], dict[str, object]]] = {
        name: (lambda name=name: simulate(name, args.proposals, args.seed, params))  # type: ignore[misc]
        for name in ("gaussian", "student_t3", "resampled_real", "drift_outliers")
    }
    with redirect_stdout(log):
        results = {name: fn() for name, fn in models.items()}
    worst = max(float(r["false_accept_rate"]) for r in results.values())  # type: ignore[arg-type]
    figures = {
        "rule": rules.PAIRED_Z_RULE,
        "params": rules._params(params),
        "sigma_bpb_simulated": SIGMA_BPB,
        "calibration_runs": CALIBRATION_RUNS,
        "false_accept_rate": worst,
        "false_accept_goal": 0.01,
        "models": results,
    }
    path = write_results("acceptance", figures, log.getvalue())
    print(log.getvalue())
    print(f"worst false-accept rate {worst:.4f} (goal ≤ 0.01) -> {path}")


if __name__ == "__main__":
    main()
