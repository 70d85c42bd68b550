"""Prometheus metrics (`GET /metrics`), computed on scrape from the counters the store keeps with every
write of a proposal (services/store/stats.py), so a scrape costs the same whatever the number of
proposals, any controller replica answers the same, and nothing is lost on restart.

GPU busy share: the sum over all stored runs of the seconds their training and evaluation containers
held a GPU, divided by the wall time from the start of the earliest stored run to now. It is in
GPU-equivalents: with several workers it can exceed 1; divide by the number of GPUs for a per-GPU
share, or use `rate(autoresearch_gpu_busy_seconds_total[1h])` in Prometheus. Runs that the service
discards (a proposal re-queued against a new head, or retried after an infrastructure failure) leave
no stored result, so their time is not counted.
"""

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from services.queue import queue_depths
from services.store import Store
from services.store.stats import DURATION_BUCKETS_S, DURATION_STEPS, RUN_OUTCOMES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text exposition format
PREFIX = "autoresearch_"


@dataclass(frozen=True)
class Snapshot:
    queues: dict[str, int]
    states: dict[str, int]
    counters: dict[str, float]  # services/store/stats.py
    first_run_at: float | None  # when the earliest stored run started
    best_val_bpb: float | None
    program_version: int | None
    at: float


def snapshot(
    store: Store,
    score: Callable[[float | None], float | None] = lambda x: x,
) -> Snapshot:
    """`score` shows the best's val_bpb as this route's audience may see it (rounded for agents)."""
    best = store.get_best()
    program = store.program_version()
    counters, first_run_at = store.stats()
    return Snapshot(
        queues=queue_depths(store.r),
        states=store.count_by_state(),
        counters=counters,
        first_run_at=first_run_at,
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
        c = s.counters
        yield _gauge("queue_depth", "Jobs waiting in each RQ queue.", "queue", s.queues.items())
        yield _gauge("proposals", "Proposals (and runs of commits) in each state.", "state", s.states.items())
        outcomes = [(outcome, c.get(f"runs:{outcome}", 0.0)) for outcome in RUN_OUTCOMES]
        yield _counter("runs", "Stored runs (one training + evaluation) by outcome.", "outcome", outcomes)
        yield _durations(c)
        busy = float(round(c.get("busy_s", 0.0)))  # whole seconds: no per-run timing
        yield _counter(
            "gpu_busy_seconds", "Seconds training and evaluation containers held a GPU.", None, [("", busy)]
        )
        share = 0.0
        if s.first_run_at is not None and c.get("duration:total:count"):
            wall = s.at - s.first_run_at
            share = busy / wall if wall > 0 else 0.0
        yield _gauge(
            "gpu_busy_share",
            "GPU-seconds busy per wall-clock second since the first stored run (GPU-equivalents).",
            None,
            [("", share)],
        )
        accepts = c.get("merged_proposals", 0.0)
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


def _durations(c: dict[str, float]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        PREFIX + "run_duration_seconds",
        "Seconds per stored run: the training container, the evaluation container, and the whole run.",
        labels=["step"],
    )
    for step in DURATION_STEPS:
        buckets = [(str(bound), c.get(f"duration:{step}:le:{bound}", 0.0)) for bound in DURATION_BUCKETS_S]
        buckets.append(("+Inf", c.get(f"duration:{step}:count", 0.0)))
        # whole seconds, as agents see durations: a sum that moves by one run's exact seconds is that
        # run's evaluation time to the microsecond (services/controller/disclosure.py)
        family.add_metric([step], buckets, sum_value=float(round(c.get(f"duration:{step}:sum_s", 0.0))))
    return family
