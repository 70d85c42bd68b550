"""The research record, without HTTP: lineage, results.tsv, noise calibration, fingerprints, the
leaderboard per fingerprint and GPU cost. Reads only what the committer mirrors into the store (the
controller has no git access). Imports no FastAPI; failures are ServiceErrors.
"""

from dataclasses import dataclass

from services.committer import rules
from services.errors import NotFound, NotReady
from services.models import Fingerprint, LineageEntry, Proposal
from services.settings import Settings
from services.store import Store, stats

RESULTS_COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description")  # upstream's, in its order
BASELINE_DESCRIPTION = "baseline"


# ---------------------------------------------------------------------------- lineage, results.tsv


def lineage(store: Store) -> list[LineageEntry]:
    """The research branch, oldest first, as the committer recorded it."""
    return store.lineage()


def results_tsv(store: Store) -> str:
    """Upstream's results.tsv: the baseline (once scored), then every agent proposal with a verdict or a
    crash, oldest first (services/store/stats.py: `results_row`); the rows are kept with the proposals'
    writes, so no proposal is loaded."""
    rows = ["\t".join(RESULTS_COLUMNS)]
    root = next(iter(store.lineage()), None)
    if root is not None and root.val_bpb is not None:
        rows.append(
            stats.row(root.commit, root.val_bpb, root.peak_memory_bytes, "keep", BASELINE_DESCRIPTION)
        )
    rows.extend(store.results_rows())
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------- the repository bundle


def repo_bundle(store: Store) -> tuple[str, bytes]:
    """(the research branch's head, a git bundle of the branch with its notes as agents may read them),
    as the committer last wrote it."""
    found = store.repo_bundle()
    if found is None:
        raise NotReady("no repository bundle yet: the committer writes one when it starts; try again shortly")
    return found


# ---------------------------------------------------------------------------- fingerprints


@dataclass(frozen=True)
class Calibration:
    key: str
    fingerprint: Fingerprint | None  # None if no result with this key was recorded since the upgrade
    sigma_bpb: float
    source: str  # calibrated | prior
    runs: int
    dof: int
    commits: int


@dataclass(frozen=True)
class FingerprintInfo:
    key: str
    fingerprint: Fingerprint | None
    scored: int  # proposals on this fingerprint's leaderboard
    best: bool  # the current best was scored on it


def calibration(store: Store, settings: Settings) -> list[Calibration]:
    """The noise the committer uses now, per fingerprint key (the same function over the same runs)."""
    params = rules.params_from(settings.acceptance)
    fields = store.fingerprint_fields()
    rows = []
    for key in store.fingerprints():
        runs = store.calibration_runs(key)
        noise = rules.calibrate(runs, params)
        rows.append(
            Calibration(
                key=key, fingerprint=fields.get(key), sigma_bpb=noise.sigma_bpb, source=noise.source,
                runs=noise.runs, dof=rules.degrees_of_freedom(runs), commits=len(runs),
            )
        )  # fmt: skip
    return rows


def fingerprints(store: Store) -> list[FingerprintInfo]:
    best = store.get_best()
    best_key = None if best is None else best.fingerprint_key
    fields = store.fingerprint_fields()
    return [
        FingerprintInfo(key, fields.get(key), store.leaderboard_size(key), key == best_key)
        for key in store.fingerprints()
    ]


def leaderboard(store: Store, limit: int, fingerprint_key: str | None) -> tuple[str | None, list[Proposal]]:
    """(the fingerprint key used, proposals best first). Without a key: the current best's fingerprint,
    else the only fingerprint seen, else (nothing scored on a fingerprint yet) the overall board."""
    known = store.fingerprints()
    if fingerprint_key is not None and fingerprint_key not in known:
        raise NotFound(
            f"no scores with fingerprint {fingerprint_key!r}; GET /v1/fingerprints lists the known keys"
        )
    key = fingerprint_key if fingerprint_key is not None else _default_fingerprint(store, known)
    return key, store.leaderboard(limit, key)


def _default_fingerprint(store: Store, known: list[str]) -> str | None:
    best = store.get_best()
    if best is not None and best.fingerprint_key is not None:
        return best.fingerprint_key
    return known[0] if len(known) == 1 else None


# ---------------------------------------------------------------------------- cost


@dataclass(frozen=True)
class Cost:
    gpu_seconds_total: float  # every stored run of every proposal and run of a commit
    merged_improvements: int  # agent proposals merged onto the branch
    gpu_seconds_per_improvement: float | None  # total / merged; None before the first merge


def cost(store: Store) -> Cost:
    """From the store's counters (services/store/stats.py): one read, whatever the number of proposals."""
    counters, _ = store.stats()
    return cost_of(counters)


def cost_of(counters: dict[str, float]) -> Cost:
    total = counters.get("gpu_s", 0.0)
    merged = int(counters.get("merged_proposals", 0))
    return Cost(total, merged, total / merged if merged else None)
