"""Counters kept with the transitions, so that status, metrics and program.md statistics read a few
numbers instead of walking every proposal.

Each proposal contributes numbers (`contributions`): 1 to its state's count, its GPU-seconds, its runs
by outcome and duration bucket, and to its program.md version's row. Every write of a proposal adds
`new − old` of its contributions to the hash `ar:stats` in the same transaction as the write
(`Store.create`, `Store.transition`, `Store.update`), so the counters always equal a full recount
(`recount`, which the migration uses). Fields whose name ends in `_s` or `_bpb` are floats
(HINCRBYFLOAT); the others are integer counts (HINCRBY).
"""

from collections import defaultdict

from services.models import Proposal
from services.states import FAILURES, State

DECIDED = frozenset({State.ACCEPTED, State.MERGED, State.REJECTED})  # a verdict on the score stands
# How a run ends: scored (its state stays `evaluating` until the proposal's decision) or a failure.
RUN_OUTCOMES = ("scored", State.CRASHED.value, State.TIMED_OUT.value, State.OOM.value, State.VOIDED.value)
# Upper bounds (seconds) of the run-duration histogram: a default run trains for 300 s.
DURATION_BUCKETS_S = (5.0, 15.0, 30.0, 60.0, 120.0, 240.0, 300.0, 360.0, 450.0, 600.0, 900.0, 1800.0, 3600.0)
DURATION_STEPS = ("train", "eval", "total")
NO_PROGRAM = "none"  # the program.md row of proposals that named no version


def is_float(field: str) -> bool:
    return field.endswith(("_s", "_bpb"))


def state_field(state: State | str) -> str:
    return f"state:{state}"


def program_field(version: int | str | None, what: str) -> str:
    return f"program:{NO_PROGRAM if version is None else version}:{what}"


def contributions(p: Proposal) -> defaultdict[str, float]:
    """What one proposal adds to the counters."""
    c: defaultdict[str, float] = defaultdict(float, {state_field(p.state): 1})
    c["gpu_s"] = p.gpu_seconds()
    if p.kind == "proposal" and p.state == State.MERGED:
        c["merged_proposals"] = 1
    for r in p.results:
        t = r.timings
        total = t.prepare_s + t.train_container_s + t.collect_s + t.eval_container_s
        c[f"runs:{r.outcome}"] += 1
        c["busy_s"] += t.train_container_s + t.eval_container_s
        for step, seconds in zip(
            DURATION_STEPS, (t.train_container_s, t.eval_container_s, total), strict=True
        ):
            c[f"duration:{step}:count"] += 1
            c[f"duration:{step}:sum_s"] += seconds
            for bound in DURATION_BUCKETS_S:
                if seconds <= bound:
                    c[f"duration:{step}:le:{bound}"] += 1
    if p.kind == "proposal":
        c[program_field(p.program_version, "proposals")] = 1
        if p.decision is not None and p.state in DECIDED:
            c[program_field(p.program_version, "scored")] = 1
            if p.decision.delta_bpb is not None:
                c[program_field(p.program_version, "deltas")] = 1
                c[program_field(p.program_version, "delta_sum_bpb")] = p.decision.delta_bpb
        if p.state == State.MERGED:
            c[program_field(p.program_version, "merged")] = 1
        if p.state in FAILURES:
            c[program_field(p.program_version, "failed")] = 1
    return c


def difference(old: Proposal | None, new: Proposal) -> dict[str, float]:
    """new − old of the contributions, without the fields that did not change."""
    after = contributions(new)
    before = contributions(old) if old is not None else defaultdict(float)
    return {k: after[k] - before[k] for k in after.keys() | before.keys() if after[k] != before[k]}


def first_run_started_at(p: Proposal) -> float | None:
    """When its earliest stored run started (seconds since the epoch), for the GPU busy share."""
    starts = [
        r.finished_at - (r.timings.prepare_s + r.timings.train_container_s + r.timings.collect_s
                         + r.timings.eval_container_s)
        for r in p.results
    ]  # fmt: skip
    return min(starts) if starts else None


def recount(proposals: list[Proposal]) -> dict[str, float]:
    """The counters from scratch (the migration's backfill; tests compare it with the kept ones)."""
    total: defaultdict[str, float] = defaultdict(float)
    for p in proposals:
        for field, value in contributions(p).items():
            total[field] += value
    return {field: value for field, value in total.items() if value}


# ---------------------------------------------------------------------------- results.tsv rows
# Upstream's results.tsv has a row per agent proposal with a verdict or a crash; each row is kept with
# the proposal's writes (zset `ar:results`, member "<id>\t<row>", score created_at), so the file is
# read without loading a proposal.
CRASH_STATES = frozenset({State.CRASHED, State.TIMED_OUT, State.OOM})
RESULTS_STATES = frozenset({State.MERGED, State.REJECTED, *CRASH_STATES})
SHORT_SHA = 7  # upstream's results.tsv shows commits abbreviated to 7 hex digits


def results_member(p: Proposal) -> str | None:
    """The proposal's results.tsv row, prefixed with its id; None if it has no row."""
    if p.kind != "proposal" or p.state not in RESULTS_STATES:
        return None
    return f"{p.id}\t{results_row(p)}"


def results_row(p: Proposal) -> str:
    """keep = merged; discard = rejected; crash = crashed, timed out or out of memory (val_bpb
    0.000000, memory 0.0). `commit` is the merged commit or the proposal's tried ref; a crash never
    reaches the committer, so it has none and the column is empty."""
    if p.state in CRASH_STATES:
        return row("", 0.0, None, "crash", p.title)
    first = next((r for r in p.results if r.val_bpb is not None), None)
    memory = None if first is None else first.peak_memory_bytes
    score = p.decision.candidate_bpb if p.decision is not None else (first.val_bpb if first else None)
    if p.state == State.MERGED:
        return row(p.merged_commit or "", score or 0.0, memory, "keep", p.title)
    return row(p.tried_ref or "", score or 0.0, memory, "discard", p.title)


def row(commit: str, val_bpb: float, peak_memory_bytes: int | None, status: str, description: str) -> str:
    memory_gb = (peak_memory_bytes or 0) / 1e9
    text = " ".join(description.split())  # no tabs or newlines inside a field
    return f"{commit[:SHORT_SHA]}\t{val_bpb:.6f}\t{memory_gb:.1f}\t{status}\t{text}"
