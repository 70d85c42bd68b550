"""Research-campaign simulator: whole campaigns of proposals decided by the production rule code
(services/committer/rules.py: `decide`, `reference`, `calibrate`, `gap_step`, the tripwire inside
`decide`) through the committer's bookkeeping, against upstream's greedy keep-if-better.

    .venv/bin/python bench/campaign.py [--campaigns 200] [--gpu-hours 100] [--jobs 2] [--rules seq-bayes/v2]
    .venv/bin/python bench/campaign.py --rhos 0.98 --name campaign-measured-rho   # the measured ρ only
    .venv/bin/python bench/campaign.py --table bench/results/campaign.json   # the docs' tables

An experiment, not a rule: `--rules seq-bayes/v4@true-shrink` runs that sequential rule with its prior's
scales multiplied, on the upstream-fit stream, by the stream's true shrink factor 1 / (1 + I/0.003) (I
the branch's true improvement, which no real rule knows): the most a prior that follows the branch could
give.

A campaign spends a fixed GPU budget (a run costs RUN_S: 300 s of training plus evaluation) on a
stream of proposals whose true effect Δ (candidate − current best, bits per byte; negative is better)
comes from a mixture; every rule sees the same stream in a campaign. A run's score is the branch's
true score + Δ + noise (σ, the noise model of the scenario, the same-seed part shared by runs with one
harness seed, the machine's drift). The bookkeeping follows the committer: the root is run 4 times
(baseline and the runs on a new fingerprint), σ is pooled over the runs of branch commits, the best's
halves of paired runs are runs of the best, a merged candidate's score is what the decision records,
screening runs use the first seed, confirmations fresh seeds, and the tripwire decides on the paired
runs' test scores (honest proposals: test moves as validation does). One GPU runs the campaign, so no
confirmation is ever in flight when the head moves (with several workers the committer re-queues those,
losing their runs; this simulator does not model that).

Writes bench/results/campaign.json (or `--name`'s file: {"default_rule", "candidate_rule", "scenarios":
{SCENARIO: {RULE: figures}}, the candidate rule's ratios to greedy and paired-z/v1 per scenario and their
median and minimum, `ratios_of` the same for each further rule, and `measured_rho`: the cells at the
measured same-seed correlation, MEASURED_RHOS, with their own scenarios, ratios and trust checks, never
pooled with the grid's) and its raw log.
"""

import argparse
import functools
import io
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import write_results  # noqa: E402
from services.committer import rules  # noqa: E402
from services.settings import AcceptanceSettings  # noqa: E402

RUN_S = 315.0  # 300 s of training (AR_WALL_CLOCK_S) + ~15 s of evaluation (H100, docs/evaluation.md)
FIRST_SEED = 42  # the harness seed of every screening run (RunSettings.first_seed)
ROOT_RUNS = 4  # the baseline run + 3 runs on its new fingerprint (AcceptanceSettings.new_fingerprint_runs)
DRIFT_PER_RUN = 0.05  # the machine's random walk per run, in σ
SIGMAS = [0.0005, 0.002, 0.005, 0.009]
NOISES = ["gaussian", "student_t3", "drift"]
MIXTURES = ["default", "upstream"]
RHOS = [0.0, 0.5]
# The same-seed correlation measured on an H100 at 300 s (bench/results/gpu-noise-h100-ve3.json: seed σ 0.0020,
# two runs of one seed 0.0004 RMS apart): its own grid, reported beside the one above (`measured_rho`).
MEASURED_RHOS = [0.98]
GAP_SIGMA_SHARE = 1.0  # σ of one run's (test − val), as a share of σ: a pessimistic guess
GREEDY = "greedy"
ORACLE = "oracle"  # a bound, not a rule: knows every true Δ, spends one run per proposal, merges every gain
TRUE_SHRINK = "true-shrink"  # `RULE@true-shrink`: the rule's prior follows the upstream-fit stream's shrink
CANDIDATE_RULE = rules.SEQ_BAYES_V3_RULE  # the rule measured against the goals (the `ratios`)
RULE_NAMES = [GREEDY, rules.PAIRED_Z_RULE, CANDIDATE_RULE, ORACLE]  # `--rules` adds others (seq-bayes/v2)


# ---------------------------------------------------------------------------------------------------
# proposals


@dataclass(frozen=True)
class Proposal:
    effect0: float  # Δ0, before any shrinking as the branch improves
    crash: bool = False
    ignores_seed: bool = False  # scores the same on every seed (its score is fixed at `fixed_offset`)
    fixed_offset: float = 0.0


def proposal_stream(mixture: str, rng: np.random.Generator, count: int) -> list[Proposal]:
    """default: 55% +|N(0, 0.01)|, 25% N(0, 0.0005), 15% −Exp(0.0015), 5% crashes; upstream-fit: 45%
    +|N(0, 0.015)|, 40% N(0, 0.0005), 15% −Exp(0.006), no crashes (effects shrink as the branch
    improves: `effect`); zero: Δ = 0 (pure noise); seedless: Δ = 0 and a score that ignores the seed."""
    if mixture == "zero":
        return [Proposal(0.0) for _ in range(count)]
    if mixture == "seedless":
        return [
            Proposal(0.0, ignores_seed=True, fixed_offset=float(-abs(rng.normal(0, 1)))) for _ in range(count)
        ]
    weights = [0.55, 0.25, 0.15, 0.05] if mixture == "default" else [0.45, 0.40, 0.15, 0.0]
    worse_sd, gain_mean = (0.01, 0.0015) if mixture == "default" else (0.015, 0.006)
    kinds = rng.choice(4, size=count, p=weights)
    out = []
    for kind in kinds:
        if kind == 0:
            out.append(Proposal(float(abs(rng.normal(0, worse_sd)))))
        elif kind == 1:
            out.append(Proposal(float(rng.normal(0, 0.0005))))
        elif kind == 2:
            out.append(Proposal(float(-rng.exponential(gain_mean))))
        else:
            out.append(Proposal(0.0, crash=True))
    return out


def effect(mixture: str, effect0: float, improvement: float) -> float:
    return effect0 / (1 + improvement / 0.003) if mixture == "upstream" and improvement > 0 else effect0


# ---------------------------------------------------------------------------------------------------
# the machine


class Machine:
    """Scores of runs: true score + σ·(same-seed part + own part) + drift; a fixed budget of runs."""

    def __init__(self, sigma: float, noise: str, rho: float, seed: tuple[int, ...], runs: int) -> None:
        self.sigma, self.noise, self.rho = sigma, noise, rho
        rng = np.random.default_rng(seed)
        self.own = self._unit(rng, runs + 64)
        self.gap = rng.normal(0, 1, runs + 64)
        steps = rng.normal(0, DRIFT_PER_RUN, runs + 64) if noise == "drift" else np.zeros(runs + 64)
        self.drift = np.cumsum(steps)
        self.seed_effects: dict[int, float] = {}
        self.seed_rng = np.random.default_rng((*seed, 7))
        self.used, self.budget = 0, runs

    def _unit(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.noise == "student_t3":
            return rng.standard_t(3, n) / math.sqrt(3.0)
        return rng.normal(0, 1, n)

    def left(self) -> int:
        return self.budget - self.used

    def run(self, true_bpb: float, seed: int) -> tuple[float, float]:
        """(val_bpb, test_bpb) of one run."""
        if seed not in self.seed_effects:
            self.seed_effects[seed] = float(self._unit(self.seed_rng, 1)[0])
        i = self.used
        self.used += 1
        unit = math.sqrt(self.rho) * self.seed_effects[seed] + math.sqrt(1 - self.rho) * float(self.own[i])
        val = true_bpb + self.sigma * (unit + float(self.drift[i]))
        return val, val + GAP_SIGMA_SHARE * self.sigma * float(self.gap[i])


# ---------------------------------------------------------------------------------------------------
# one campaign under one rule, with the committer's bookkeeping


@dataclass
class Tally:
    gain_bpb: float = 0.0
    runs: int = 0
    decisions: int = 0
    merges: int = 0
    false_merges: int = 0
    harmful_merges: int = 0
    real_gains: int = 0  # proposals with Δ < −σ that were decided
    missed_real_gains: int = 0
    recorded_gap_bpb: float = 0.0  # true − recorded score of the best at the end (> 0 flatters)
    val_accepts: int = 0  # verdicts the val rule accepted (before the tripwire)
    tripwire_blocks: int = 0
    crashes: int = 0
    stops: dict[str, int] = field(default_factory=dict)


@dataclass
class Branch:
    """The committer's state: the best commit, its recorded score, runs of commits, merged steps."""

    true_bpb: float
    recorded_bpb: float
    recorded_sd: float | None
    commit: int = 0
    runs_by_commit: dict[int, list[float]] = field(default_factory=dict)
    gap_steps: list[rules.GapStep] = field(default_factory=list)
    pair_spread: rules.PairSpread = field(default_factory=rules.PairSpread)  # earlier confirmations' pairs

    _noise_key: tuple[int, int] = (-1, -1)
    _noise: rules.Noise | None = None

    def noise(self, params: rules.RuleParams) -> rules.Noise:
        """σ pooled over the runs of the latest commits; recomputed only when those runs changed."""
        recent = {c: r for c, r in self.runs_by_commit.items() if c > self.commit - 4}
        key = (self.commit, sum(len(r) for r in recent.values()))
        if self._noise is None or key != self._noise_key:
            self._noise = rules.calibrate({str(c): r for c, r in recent.items()}, params)
            self._noise_key = key
        return self._noise


def shrunk_prior_policy(policy: rules.Policy, improvement: float) -> rules.Policy:
    """The policy with its sequential rules' prior scaled by the upstream-fit stream's shrink factor at this
    true improvement, in quarter-octave steps (so the rules' cached screening thresholds stay few)."""
    shrink = 2 ** (round(math.log2(1 / (1 + improvement / 0.003)) * 4) / 4)

    def scaled(prior: rules.Prior) -> rules.Prior:
        return replace(
            prior, version=f"{prior.version} x{shrink:.3g}", worse_sd_bpb=prior.worse_sd_bpb * shrink,
            zero_sd_bpb=prior.zero_sd_bpb * shrink, gain_mean_bpb=prior.gain_mean_bpb * shrink,
            large_gain_mean_bpb=prior.large_gain_mean_bpb * shrink,
        )  # fmt: skip

    return replace(
        policy, seq2=replace(policy.seq2, prior=scaled(policy.seq2.prior)),
        seq3=replace(policy.seq3, prior=scaled(policy.seq3.prior)),
        seq4=replace(policy.seq4, prior=scaled(policy.seq4.prior)),
    )  # fmt: skip


def campaign(rule: str, mixture: str, machine: Machine, stream: list[Proposal], policy: rules.Policy,
             base_bpb: float = 1.0) -> Tally:  # fmt: skip
    tally = Tally()
    rule, _, variant = rule.partition("@")
    root = [machine.run(base_bpb, FIRST_SEED + i)[0] for i in range(ROOT_RUNS)]
    branch = Branch(true_bpb=base_bpb, recorded_bpb=statistics.fmean(root), recorded_sd=None)
    branch.runs_by_commit[0] = root
    seeds = itertools.count(1000)
    for proposal in stream:
        if machine.left() <= 0:
            break
        improvement = base_bpb - branch.true_bpb
        delta = effect(mixture, proposal.effect0, improvement)
        if proposal.crash:
            machine.used += 1
            tally.crashes += 1
            continue
        if rule == GREEDY:
            outcome = _greedy(branch, machine, delta, proposal)
        elif rule == ORACLE:
            outcome = _oracle(branch, machine, delta)
        else:
            shrunk = variant == TRUE_SHRINK and mixture == "upstream" and improvement > 0
            decide_policy = shrunk_prior_policy(policy, improvement) if shrunk else policy
            outcome = _decide(branch, machine, delta, proposal, decide_policy, seeds, tally)
        if outcome is None:  # the budget ran out mid-decision
            break
        tally.decisions += 1
        sigma = machine.sigma
        if delta < -sigma:
            tally.real_gains += 1
            tally.missed_real_gains += not outcome
        if outcome:
            tally.merges += 1
            tally.false_merges += delta >= 0
            tally.harmful_merges += delta > sigma
    tally.runs = machine.used
    tally.gain_bpb = base_bpb - branch.true_bpb
    tally.recorded_gap_bpb = branch.true_bpb - branch.recorded_bpb
    return tally


def _score(
    branch: Branch, machine: Machine, delta: float, proposal: Proposal, seed: int
) -> tuple[float, float]:
    val, test = machine.run(branch.true_bpb + delta, seed)
    if proposal.ignores_seed:  # the same score whatever the seed: a fixed lucky value
        fixed = branch.true_bpb + delta + machine.sigma * proposal.fixed_offset
        return fixed, fixed + (test - val)
    return val, test


def _greedy(branch: Branch, machine: Machine, delta: float, proposal: Proposal) -> bool | None:
    """Upstream's rule: one run, kept if it beats the recorded best's score (which it then becomes)."""
    if machine.left() < 1:
        return None
    val, _ = _score(branch, machine, delta, proposal, FIRST_SEED)
    if val < branch.recorded_bpb:
        branch.true_bpb += delta
        branch.recorded_bpb = val
        return True
    return False


def _oracle(branch: Branch, machine: Machine, delta: float) -> bool | None:
    """The bound no rule can beat on a budget of one run per proposal: merge exactly the true gains."""
    if machine.left() < 1:
        return None
    machine.used += 1
    if delta < 0:
        branch.true_bpb += delta
        branch.recorded_bpb = branch.true_bpb
        return True
    return False


def _decide(branch: Branch, machine: Machine, delta: float, proposal: Proposal, policy: rules.Policy,
            seeds: Iterator[int], tally: Tally) -> bool | None:  # fmt: skip
    """Screen, then paired runs while the rule asks for them, as the committer and workers do."""
    if machine.left() < 1:
        return None
    screen, _ = _score(branch, machine, delta, proposal, FIRST_SEED)
    cand, best, used_seeds, test_c, test_b = [], [], [], [], []
    best_runs = branch.runs_by_commit.setdefault(branch.commit, [])
    noise = branch.noise(policy.paired)
    ref, ref_sd = rules.reference(policy.rule, branch.recorded_bpb, branch.recorded_sd, best_runs, noise)
    while True:  # the committer keeps the screen's reference for the confirmation steps
        noise = branch.noise(policy.paired)
        test = None
        if cand:
            scores = rules.PairedScores(cand, best, test_c, test_b)
            gap_noise = rules.Noise(GAP_SIGMA_SHARE * machine.sigma, "calibrated", 100)
            test = rules.TripwireEvidence(
                scores, gap_noise, branch.gap_steps, rules.tripwire_params_from(AcceptanceSettings.defaults())
            )
        evidence = rules.Evidence(
            best_commit=str(branch.commit), best_bpb=ref, best_sd_bpb=ref_sd, noise=noise,
            screen_runs=[screen], screen_seeds=[FIRST_SEED], candidate_runs=list(cand), best_runs=list(best),
            seeds=list(used_seeds), test=test, pair_spread=branch.pair_spread,
        )  # fmt: skip
        decision = rules.decide(evidence, policy)
        if decision.stopped:
            tally.stops[decision.stopped] = tally.stops.get(decision.stopped, 0) + 1
        if decision.tripwire != "not-run":
            tally.val_accepts += 1
            tally.tripwire_blocks += decision.tripwire == "blocked"
        if not decision.confirm:
            break
        if machine.left() < 2 * decision.more_runs:
            return None
        for _ in range(decision.more_runs):
            seed = next(seeds)
            c_val, c_test = _score(branch, machine, delta, proposal, seed)
            b_val, b_test = machine.run(branch.true_bpb, seed)
            cand.append(c_val), test_c.append(c_test), best.append(b_val), test_b.append(b_test)
            used_seeds.append(seed)
            best_runs.append(b_val)  # the committer adds the best's paired runs to its calibration
    # the committer records every confirmation's paired differences (one fingerprint here)
    branch.pair_spread = rules.add_pairs(branch.pair_spread, [c - b for c, b in zip(cand, best, strict=True)])
    if not decision.accepted:
        return False
    step = rules.gap_step(decision)
    if step is not None:
        branch.gap_steps.append(step)
    branch.true_bpb += delta
    branch.commit += 1
    branch.recorded_bpb = decision.merged_bpb if decision.merged_bpb is not None else decision.candidate_bpb
    branch.recorded_sd = decision.posterior.get("sd_bpb")
    return True


# ---------------------------------------------------------------------------------------------------
# the grid


@functools.cache
def policy_for(rule: str, rho: float = 0.0) -> rules.Policy:
    acceptance = AcceptanceSettings.defaults()
    rule = rule.partition("@")[0]
    return rules.Policy(
        rule=rule if rule in rules.RULES else rules.PAIRED_Z_RULE, paired=rules.params_from(acceptance),
        seq=rules.seq_params_from(acceptance),
    )  # fmt: skip


def run_cell(args: tuple[str, float, str, str, float, int, int, float, list[str]]) -> dict[str, object]:
    name, sigma, noise, mixture, rho, campaigns, seed, gpu_hours, rule_names = args
    runs = int(gpu_hours * 3600 / RUN_S)
    tallies: dict[str, list[Tally]] = {r: [] for r in rule_names}
    for c in range(campaigns):
        stream = proposal_stream(mixture, np.random.default_rng((seed, c, 1)), runs)
        for r in rule_names:
            machine = Machine(sigma, noise, rho, (seed, c, 2), runs)  # the same machine luck for every rule
            tallies[r].append(campaign(r, mixture if mixture in MIXTURES else "default", machine, stream,
                                       policy_for(r)))  # fmt: skip
    return {"scenario": name, "rules": {r: summarise(t, gpu_hours) for r, t in tallies.items()}}


def summarise(tallies: list[Tally], gpu_hours: float) -> dict[str, object]:
    n = len(tallies)
    decisions = sum(t.decisions for t in tallies)
    real = sum(t.real_gains for t in tallies)
    accepts = sum(t.val_accepts for t in tallies)
    stops: dict[str, int] = {}
    for t in tallies:
        for k, v in t.stops.items():
            stops[k] = stops.get(k, 0) + v
    return {
        "campaigns": n,
        "gain_per_gpu_hour": statistics.fmean(t.gain_bpb for t in tallies) / gpu_hours,
        "gain_per_gpu_hour_se": (statistics.stdev(t.gain_bpb for t in tallies) / math.sqrt(n) / gpu_hours)
        if n > 1
        else math.inf,
        "gain_bpb": statistics.fmean(t.gain_bpb for t in tallies),
        "false_merges": statistics.fmean(t.false_merges for t in tallies) * 100 / gpu_hours,
        "harmful_merges": statistics.fmean(t.harmful_merges for t in tallies) * 100 / gpu_hours,
        "merges": statistics.fmean(t.merges for t in tallies) * 100 / gpu_hours,
        "runs_per_decision": sum(t.runs - ROOT_RUNS - t.crashes for t in tallies) / max(decisions, 1),
        "decisions": decisions / n,
        "missed_real_gains": sum(t.missed_real_gains for t in tallies) / max(real, 1),
        "recorded_minus_true_bpb": -statistics.fmean(t.recorded_gap_bpb for t in tallies),
        "tripwire_false_block_rate": sum(t.tripwire_blocks for t in tallies) / accepts if accepts else 0.0,
        "stops": stops,
    }


Cell = tuple[str, float, str, str, float, int, int, float, list[str]]


def scenarios(
    campaigns: int, seed: int, gpu_hours: float, rule_names: list[str] = RULE_NAMES,
    sigmas: list[float] = SIGMAS, rhos: list[float] = RHOS,
) -> list[Cell]:  # fmt: skip
    cells = []
    for sigma, noise, mixture, rho in itertools.product(sigmas, NOISES, MIXTURES, rhos):
        name = f"sigma={sigma:g}/noise={noise}/mix={mixture}/rho={rho:g}"
        cells.append((name, sigma, noise, mixture, rho, campaigns, seed, gpu_hours, rule_names))
    return cells


RESOLVED_SE = 2.0  # a rule's gain counts as a ratio's denominator only this many standard errors above 0


def ratios(results: dict[str, dict[str, dict[str, object]]], rule: str = CANDIDATE_RULE) -> dict[str, object]:
    """Per scenario, then summarised: a rule's (by default CANDIDATE_RULE) gain against greedy's and
    paired-z's, and its false merges against greedy's (the goals are stated in those terms).

    A ratio whose denominator is not resolved from zero (a mean gain below RESOLVED_SE standard errors
    over the campaigns: at σ ≥ 0.005 on the default stream paired-z/v1 and greedy gain ~nothing) is noise
    divided by noise, so it is kept out of the `resolved` summaries, which are the ones the goals are
    judged on; the `all` summaries take every scenario (∞ where the denominator is ≤ 0)."""
    per: dict[str, dict[str, float | bool]] = {}
    for name, by_rule in results.items():
        g = float(by_rule[rule]["gain_per_gpu_hour"])  # type: ignore[arg-type]
        greedy = float(by_rule[GREEDY]["gain_per_gpu_hour"])  # type: ignore[arg-type]
        paired = float(by_rule[rules.PAIRED_Z_RULE]["gain_per_gpu_hour"])  # type: ignore[arg-type]
        fm = float(by_rule[rule]["false_merges"])  # type: ignore[arg-type]
        fm_greedy = float(by_rule[GREEDY]["false_merges"])  # type: ignore[arg-type]
        per[name] = {
            "gain_vs_greedy": g / greedy if greedy > 0 else math.inf,
            "gain_vs_paired_z": g / paired if paired > 0 else math.inf,
            "false_merges_vs_greedy": fm / fm_greedy if fm_greedy > 0 else 0.0,
            "greedy_resolved": greedy > RESOLVED_SE * float(by_rule[GREEDY]["gain_per_gpu_hour_se"]),  # type: ignore[arg-type]
            "paired_z_resolved": paired
            > RESOLVED_SE * float(by_rule[rules.PAIRED_Z_RULE]["gain_per_gpu_hour_se"]),  # type: ignore[arg-type]
        }

    def spread(values: list[float]) -> dict[str, float]:
        if not values:
            return {"median": math.nan, "min": math.nan, "max": math.nan, "scenarios": 0}
        return {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "scenarios": len(values),
        }

    summary = {
        "gain_vs_greedy": spread([float(v["gain_vs_greedy"]) for v in per.values() if v["greedy_resolved"]]),
        "gain_vs_paired_z": spread(
            [float(v["gain_vs_paired_z"]) for v in per.values() if v["paired_z_resolved"]]
        ),
        "false_merges_vs_greedy": spread([float(v["false_merges_vs_greedy"]) for v in per.values()]),
        "gain_vs_greedy_all": spread([float(v["gain_vs_greedy"]) for v in per.values()]),
        "gain_vs_paired_z_all": spread([float(v["gain_vs_paired_z"]) for v in per.values()]),
    }
    s = summary
    goals = {
        "minimum": s["gain_vs_paired_z"]["median"] >= 2.0 and s["false_merges_vs_greedy"]["max"] <= 0.10,
        "stretch": s["gain_vs_paired_z"]["median"] >= 2.5 and s["gain_vs_greedy"]["median"] >= 0.8
        and s["false_merges_vs_greedy"]["max"] <= 0.10,
        "false_merges_within_10pct_everywhere": s["false_merges_vs_greedy"]["max"] <= 0.10,
    }  # fmt: skip
    return {"per_scenario": per, "summary": summary, "goals": goals, "resolved_se": RESOLVED_SE}


def trust(
    campaigns: int = 5, proposals: int = 400, rule: str = CANDIDATE_RULE, rho: float = 0.5,
    seedless_rho: float = 0.0,
) -> dict[str, object]:  # fmt: skip
    """A rule (by default the candidate) on pure noise (effect 0, drift, same-seed correlation `rho`) at
    every σ, and on changes that ignore AR_SEED (same-seed correlation `seedless_rho`): how often each
    is merged."""
    out: dict[str, object] = {}
    for sigma in SIGMAS:
        merges = decisions = 0
        for c in range(campaigns):
            stream = proposal_stream("zero", np.random.default_rng((11, c)), proposals)
            tally = campaign(
                rule, "default", Machine(sigma, "drift", rho, (12, c), proposals), stream, policy_for(rule)
            )
            merges, decisions = merges + tally.merges, decisions + tally.decisions
        seedless = campaign(
            rule, "default", Machine(sigma, "gaussian", seedless_rho, (13,), proposals),
            proposal_stream("seedless", np.random.default_rng(14), proposals), policy_for(rule),
        )  # fmt: skip
        out[f"sigma={sigma:g}"] = {
            "zero_effect_decisions": decisions, "zero_effect_merges": merges,
            "zero_effect_accept_rate": merges / max(decisions, 1),
            "seed_ignoring_decisions": seedless.decisions, "seed_ignoring_merges": seedless.merges,
        }  # fmt: skip
    return out


def table(figures: dict[str, object]) -> str:
    """The markdown tables of docs/evaluation.md, from a results document (`--table`): the grid's, then
    those of the measured same-seed correlation where the file has them."""
    rule = str(figures.get("candidate_rule", CANDIDATE_RULE))
    extra = [
        r
        for r in cast("list[str]", figures.get("rules", []))
        if r not in (GREEDY, rules.PAIRED_Z_RULE, rule, ORACLE)
    ]
    parts = []
    for section in (figures, cast("dict[str, object] | None", figures.get("measured_rho"))):
        if section is None or not section.get("scenarios"):
            continue
        if section is not figures:
            measured = ", ".join(f"{r:g}" for r in cast("list[float]", section["rho"]))
            parts.append(f"Measured same-seed correlation (\u03c1 {measured}):")
        parts.append(_section_table(section, [rule, *extra]))
    return "\n\n".join(parts)


def _section_table(section: dict[str, object], seq: list[str]) -> str:
    scenarios = cast("dict[str, dict[str, dict[str, Any]]]", section["scenarios"])
    paired = rules.PAIRED_Z_RULE
    names = " · ".join(seq)
    lines = [
        f"| σ | noise | mixture | \u03c1 | gain/GPU-h greedy · {paired} · {names} (mbpb) | false merges /100 GPU-h "
        f"greedy · {paired} · {names} | runs/decision {paired} · {names} | recorded − true, greedy · {names} (mbpb) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, by_rule in scenarios.items():
        cells = dict(part.split("=", 1) for part in name.split("/", 3))
        g, p, cs = by_rule[GREEDY], by_rule[paired], [by_rule[r] for r in seq]
        gains = " · ".join(f"{f['gain_per_gpu_hour'] * 1000:.3f}" for f in (g, p, *cs))
        falses = " · ".join(f"{f['false_merges']:.2f}" for f in (g, p, *cs))
        runs = " · ".join(f"{f['runs_per_decision']:.2f}" for f in (p, *cs))
        recorded = " · ".join(f"{f['recorded_minus_true_bpb'] * 1000:+.2f}" for f in (g, *cs))
        lines.append(
            f"| {cells['sigma']} | {cells['noise']} | {cells['mix']} | {cells['rho']} | {gains} | {falses} | "
            f"{runs} | {recorded} |"
        )
    by = {seq[0]: section["ratios"], **cast("dict[str, object]", section.get("ratios_of", {}))}
    for rule in seq:
        summary = cast("dict[str, dict[str, float]]", cast("dict[str, Any]", by[rule])["summary"])
        lines += ["", f"| ratio ({rule} over) | median | min | max | scenarios |", "|---|---|---|---|---|"]
        for key, row in summary.items():
            lines.append(
                f"| {key} | {row['median']:.2f} | {row['min']:.2f} | {row['max']:.2f} | {row.get('scenarios', '')} |"
            )
    for rule in seq:
        worst = max(float(by_rule[rule]["tripwire_false_block_rate"]) for by_rule in scenarios.values())
        lines += ["", f"Tripwire false blocks on honest proposals ({rule}, worst scenario): {worst:.4f}"]
    trusts = cast("dict[str, dict[str, dict[str, dict[str, float]]]]", section.get("trust_of", {}))
    if trusts:
        lines += [
            "",
            "| rule | \u03c1 | pure noise merged, per σ | seed-ignoring merged, per σ |",
            "|---|---|---|---|",
        ]
        for rule, by_rho in trusts.items():
            for rho, by_sigma in by_rho.items():
                noise = " · ".join(
                    f"{v['zero_effect_merges']}/{v['zero_effect_decisions']}" for v in by_sigma.values()
                )
                seedless = " · ".join(
                    f"{v['seed_ignoring_merges']}/{v['seed_ignoring_decisions']}" for v in by_sigma.values()
                )
                lines.append(f"| {rule} | {rho} | {noise} | {seedless} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=200, help="campaigns per scenario")
    parser.add_argument("--gpu-hours", type=float, default=100.0, help="budget of one campaign")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="processes")
    parser.add_argument(
        "--only", default="", help="only scenarios whose name contains each of these (commas)"
    )
    parser.add_argument(
        "--rules",
        default="",
        help="further rules to measure besides greedy, paired-z/v1 and the candidate (commas)",
    )
    parser.add_argument(
        "--rhos", default=",".join(f"{r:g}" for r in RHOS + MEASURED_RHOS),
        help="same-seed correlations to run (commas): the grid's and the measured one by default",
    )  # fmt: skip
    parser.add_argument(
        "--candidate", default=CANDIDATE_RULE, help="the rule measured against the goals (the `ratios`)"
    )
    parser.add_argument("--sigmas", default=",".join(f"{s:g}" for s in SIGMAS), help="σ to run (commas)")
    parser.add_argument("--name", default="campaign", help="results file: bench/results/NAME.json")
    parser.add_argument("--table", type=Path, help="print the docs' tables of this results file, run nothing")
    args = parser.parse_args()
    if args.table is not None:
        print(table(json.loads(args.table.read_text())))
        return
    wanted = [part for part in args.only.split(",") if part]
    extra = [r for r in args.rules.split(",") if r]
    candidate = args.candidate
    unknown = [
        r for r in [*extra, candidate]
        if r.partition("@")[0] not in rules.RULES or r.partition("@")[2] not in ("", TRUE_SHRINK)
    ]  # fmt: skip
    if unknown:
        parser.error(f"unknown rules {unknown}; known: {', '.join(rules.RULES)}")
    always = [GREEDY, rules.PAIRED_Z_RULE, candidate]
    rule_names = [*always, *(r for r in extra if r not in always), ORACLE]
    sequential = [r for r in rule_names if r not in (GREEDY, rules.PAIRED_Z_RULE, ORACLE)]
    rhos = [float(r) for r in args.rhos.split(",") if r]
    sigmas = [float(s) for s in args.sigmas.split(",") if s]
    cells = [
        c
        for c in scenarios(args.campaigns, args.seed, args.gpu_hours, rule_names, sigmas, rhos)
        if all(w in c[0] for w in wanted)
    ]
    measured_names = {c[0] for c in cells if c[4] in MEASURED_RHOS}
    log = io.StringIO()
    results: dict[str, dict[str, dict[str, object]]] = {}
    t0 = time.monotonic()
    with ProcessPoolExecutor(args.jobs) as pool:
        for cell in pool.map(run_cell, cells):
            name = str(cell["scenario"])
            results[name] = cell["rules"]  # type: ignore[assignment]
            line = f"{time.monotonic() - t0:7.1f}s {name}\n" + "".join(
                f"    {r:13s} gain/GPU-h {f['gain_per_gpu_hour'] * 1000:8.4f} mbpb  false {f['false_merges']:6.2f}"
                f"  harmful {f['harmful_merges']:5.2f}  runs/decision {f['runs_per_decision']:5.2f}  missed "
                f"{f['missed_real_gains']:.2f}  recorded−true {f['recorded_minus_true_bpb'] * 1000:+.3f} mbpb"
                f"  tripwire false blocks {f['tripwire_false_block_rate']:.3f}\n"
                for r, f in cell["rules"].items()  # type: ignore[union-attr]
            )
            print(line, end="", flush=True)
            log.write(line)
    measured = {name: by_rule for name, by_rule in results.items() if name in measured_names}
    results = {name: by_rule for name, by_rule in results.items() if name not in measured_names}

    def report(label: str, text: object) -> None:
        log.write(f"{label} {text}\n")
        print(f"{label} {text}", flush=True)

    summary = ratios(results, candidate) if results else {}
    ratios_of = {r: ratios(results, r) for r in sequential[1:]} if results else {}
    for r, figs in [(candidate, summary), *ratios_of.items()] if results else []:
        report(f"summary {r}", figs["summary"])  # type: ignore[index]
        report(f"goals {r}", figs["goals"])  # type: ignore[index]
    checks = trust(rule=candidate) if results else {}
    report("trust", checks)
    grid_rhos = sorted({c[4] for c in cells if c[0] not in measured_names})
    trust_of = {
        r: {f"{rho:g}": trust(rule=r, rho=rho, seedless_rho=rho) for rho in grid_rhos} for r in sequential[1:]
    }
    report("trust of further rules", trust_of)
    measured_section: dict[str, object] = {}
    if measured:
        measured_rhos = sorted({c[4] for c in cells if c[0] in measured_names})
        measured_section = {
            "rho": measured_rhos, "scenarios": measured, "ratios": ratios(measured, candidate),
            "ratios_of": {r: ratios(measured, r) for r in sequential[1:]},
            "trust_of": {r: {f"{rho:g}": trust(rule=r, rho=rho, seedless_rho=rho) for rho in measured_rhos}
                         for r in sequential},
        }  # fmt: skip
        for r in sequential:
            figs = cast("dict[str, Any]", measured_section["ratios"] if r == candidate else
                        cast("dict[str, Any]", measured_section["ratios_of"])[r])  # fmt: skip
            report(f"measured rho: summary {r}", figs["summary"])
        report("measured rho: trust", measured_section["trust_of"])
    figures = {
        "default_rule": AcceptanceSettings.defaults().accept_rule,
        "candidate_rule": candidate,
        "rules": rule_names,
        "grid": {"sigma_bpb": sigmas, "noise": NOISES, "mixture": MIXTURES, "rho": grid_rhos,
                 "campaigns": args.campaigns, "gpu_hours": args.gpu_hours, "run_s": RUN_S,
                 "drift_per_run_sigma": DRIFT_PER_RUN, "gap_sigma_share": GAP_SIGMA_SHARE},
        "seq_params": rules._seq_params(rules.seq_params_from(AcceptanceSettings.defaults())),
        "seq2_params": rules._seq_v2_params(policy_for(candidate).seq2),
        "seq2_prior": rules.PRIOR_V2.version,
        "seq3_params": rules._seq_v3_params(policy_for(candidate).seq3),
        "seq3_prior": policy_for(candidate).seq3.prior.version,
        "trust": checks,
        "paired_params": rules._params(rules.params_from(AcceptanceSettings.defaults())),
        "wall_s": round(time.monotonic() - t0, 1),
        "ratios": summary,
        "ratios_of": ratios_of,
        "trust_of": trust_of,
        "scenarios": results,
        "measured_rho": measured_section,
    }  # fmt: skip
    path = write_results(args.name, figures, log.getvalue())
    print(f"-> {path}")


if __name__ == "__main__":
    main()
