"""What a sequential rule's unit tests decide on: one candidate's evidence against a best at 1.3000,
with a calibrated σ of 0.001 and the best's reference known to σ/2."""

from services.committer import rules

SIGMA = 0.001
NOISE = rules.Noise(SIGMA, "calibrated", 10)


def evidence(
    screen: float, cand: tuple[float, ...] = (), best: tuple[float, ...] = (), seeds: tuple[int, ...] = ()
) -> rules.Evidence:
    """A screening run at `screen` (seed 42), and the paired runs so far: the candidate's `cand` and the
    best's `best` on `seeds`."""
    return rules.Evidence(
        best_commit="c", best_bpb=1.3000, best_sd_bpb=SIGMA / 2, noise=NOISE, screen_runs=[screen],
        screen_seeds=[42], candidate_runs=list(cand), best_runs=list(best), seeds=list(seeds),
    )  # fmt: skip
