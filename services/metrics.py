"""Numbers derived from the stored proposals: Prometheus metrics (`GET /metrics`) and the digests that
the program.md statistics share with them.

Everything is computed on scrape from what Redis holds, so any controller replica answers the same
and nothing is lost on restart. Loading every proposal on each scrape would cost a full parse of each
`train.py` pair, so a `DigestCache` keeps a small digest of each proposal in a terminal state (those
never change again: every later write goes with a transition) and reloads only the active ones.

GPU busy share: the sum over all stored runs of the seconds their training and evaluation containers
held a GPU, divided by the wall time from the start of the earliest stored run to now. It is in
GPU-equivalents: with several workers it can exceed 1; divide by the number of GPUs for a per-GPU
share, or use `rate(autoresearch_gpu_busy_seconds_total[1h])` in Prometheus. Runs that the service
discards (a proposal re-queued against a new head, or retried after an infrastructure failure) leave
no stored result, so their time is not counted.
"""

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from services.models import Proposal
from services.queue import queue_depths
from services.states import TERMINAL, State
from services.store import Store

DECIDED = frozenset({State.ACCEPTED, State.MERGED, State.REJECTED})  # a verdict on the score stands
# How a run ends: scored (its state stays `evaluating` until the proposal's decision) or a failure.
RUN_OUTCOMES = ("scored", State.CRASHED.value, State.TIMED_OUT.value, State.OOM.value, State.VOIDED.value)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text exposition format
PREFIX = "autoresearch_"
# Upper bounds (seconds) of the run-duration histogram: a default run trains for 300 s.
DURATION_BUCKETS_S = (5.0, 15.0, 30.0, 60.0, 120.0, 240.0, 300.0, 360.0, 450.0, 600.0, 900.0, 1800.0, 3600.0)


# ---------------------------------------------------------------------------- digests


@dataclass(frozen=True)
class RunDigest:
    state: State  # `evaluating` means the run was scored
    train_s: float  # the training container's seconds
    eval_s: float  # the evaluation container's seconds
    total_s: float  # prepare + train + collect + evaluate
    started_at: float  # seconds since the epoch: finished_at - total_s


@dataclass(frozen=True)
class Digest:
    """What statistics and metrics need of one proposal (no file contents)."""

    id: str
    kind: str
    state: State
    program_version: int | None
    decided: bool  # accepted, merged or rejected with a decision (not voided, not still confirming)
    delta_bpb: float | None
    runs: tuple[RunDigest, ...]
    gpu_seconds: float = 0.0  # Proposal.gpu_seconds(): its runs and its paired runs of the best

    @classmethod
    def of(cls, p: Proposal) -> "Digest":
        runs = []
        for r in p.results:
            t = r.timings
            total = t.prepare_s + t.train_container_s + t.collect_s + t.eval_container_s
            runs.append(
                RunDigest(r.state, t.train_container_s, t.eval_container_s, total, r.finished_at - total)
            )
        return cls(
            id=p.id,
            kind=p.kind,
            state=p.state,
            program_version=p.program_version,
            decided=p.decision is not None and p.state in DECIDED,
            delta_bpb=None if p.decision is None else p.decision.delta_bpb,
            runs=tuple(runs),
            gpu_seconds=p.gpu_seconds(),
        )


class DigestCache:
    """Digests of every stored proposal; terminal and queued ones are loaded once (again when their
    state changes), running ones on each refresh."""

    def __init__(self) -> None:
        self._terminal: dict[str, Digest] = {}
        self._lock = threading.Lock()

    def refresh(self, store: Store) -> list[Digest]:
        with self._lock:
            current: dict[str, Digest] = {}
            missing: list[str] = []
            for state, ids in store.proposal_ids_by_state().items():
                for pid in ids:
                    cached = self._terminal.get(pid)
                    if cached is not None and cached.state == state:
                        current[pid] = cached
                    else:
                        missing.append(pid)
            for proposal in store.get_many(missing):
                current[proposal.id] = Digest.of(proposal)
            # A digest changes only with its state, except while a proposal runs (its results grow).
            self._terminal = {
                pid: d for pid, d in current.items() if d.state in TERMINAL or d.state == State.QUEUED
            }
            return list(current.values())


# ---------------------------------------------------------------------------- Prometheus


@dataclass(frozen=True)
class Snapshot:
    queues: dict[str, int]
    states: dict[str, int]
    digests: list[Digest]
    best_val_bpb: float | None
    program_version: int | None
    at: float


def snapshot(
    store: Store,
    conn: "redis.Redis[bytes]",
    digests: DigestCache,
    score: Callable[[float | None], float | None] = lambda x: x,
) -> Snapshot:
    """`score` shows the best's val_bpb as this route's audience may see it (rounded for agents)."""
    best = store.get_best()
    program = store.program_version()
    return Snapshot(
        queues=queue_depths(conn),
        states=store.count_by_state(),
        digests=digests.refresh(store),
        best_val_bpb=None if best is None else score(best.val_bpb),
        program_version=None if program is None else program.version,
        at=time.time(),
    )


def render(snap: Snapshot) -> bytes:
    """The snapshot in the Prometheus text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))
    return generate_latest(registry)


class _SnapshotCollector(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        s = self.snap
        runs = [run for d in s.digests for run in d.runs]
        yield _gauge("queue_depth", "Jobs waiting in each RQ queue.", "queue", s.queues.items())
        yield _gauge("proposals", "Proposals (and runs of commits) in each state.", "state", s.states.items())
        outcomes = dict.fromkeys(RUN_OUTCOMES, 0)
        for run in runs:
            outcome = "scored" if run.state == State.EVALUATING else run.state.value
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        yield _counter(
            "runs", "Stored runs (one training + evaluation) by outcome.", "outcome", outcomes.items()
        )
        yield _durations(runs)
        busy = float(round(sum(run.train_s + run.eval_s for run in runs)))  # whole seconds: no per-run timing
        yield _counter(
            "gpu_busy_seconds", "Seconds training and evaluation containers held a GPU.", None, [("", busy)]
        )
        share = 0.0
        if runs:
            wall = s.at - min(run.started_at for run in runs)
            share = busy / wall if wall > 0 else 0.0
        yield _gauge(
            "gpu_busy_share",
            "GPU-seconds busy per wall-clock second since the first stored run (GPU-equivalents).",
            None,
            [("", share)],
        )
        accepts = sum(d.state == State.MERGED and d.kind == "proposal" for d in s.digests)
        yield _counter("accepts", "Proposals merged onto the research branch.", None, [("", accepts)])
        if s.best_val_bpb is not None:
            yield _gauge("best_val_bpb", "val_bpb of the research branch head.", None, [("", s.best_val_bpb)])
        if s.program_version is not None:
            yield _gauge(
                "program_version", "The current program.md version.", None, [("", s.program_version)]
            )


def _gauge(name: str, doc: str, label: str | None, samples: Iterable[tuple[str, float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, doc, labels=[label] if label else None)
    for value, sample in samples:
        family.add_metric([value] if label else [], sample)
    return family


def _counter(
    name: str, doc: str, label: str | None, samples: Iterable[tuple[str, float]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, doc, labels=[label] if label else None)
    for value, sample in samples:
        family.add_metric([value] if label else [], sample)
    return family


def _durations(runs: list[RunDigest]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        PREFIX + "run_duration_seconds",
        "Seconds per stored run: the training container, the evaluation container, and the whole run.",
        labels=["step"],
    )
    for step in ("train", "eval", "total"):
        values = [getattr(run, f"{step}_s") for run in runs]
        buckets = [(str(bound), float(sum(v <= bound for v in values))) for bound in DURATION_BUCKETS_S]
        buckets.append(("+Inf", float(len(values))))
        # whole seconds, as agents see durations: a sum that moves by one run's exact seconds is that
        # run's evaluation time to the microsecond (services/controller/disclosure.py)
        family.add_metric([step], buckets, sum_value=float(round(sum(values))))
    return family
