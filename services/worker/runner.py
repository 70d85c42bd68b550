"""One run: one train.py (the candidate's or the best's) trained and scored with one seed.

The steps, in order, each a method of `Runner` (docs/architecture.md, "The path of a proposal"):

    prepare             the run folder; then the fixed files' pinned hashes (`pin`, before training:
                        a probe that cannot run wastes no run)
    train               the training container (`Sandbox.train`)
    classify            how training ended: a failure state (`classify_training`), or on
    collect             the checkpoint and run.json, read as hostile input (collect.py)
    evaluate            the scorer's container and the model containers (`Sandbox.evaluate`), then
                        the scorer's result.json (`read_result`)
    verify_fixed_files  the hashes the scorer saw equal the pinned ones, else the run is voided
    score               the `RunResult`: the scorer's figures (`ScorerResult`), the run's statistics,
                        the fingerprint and the step timings (`Stopwatch`)

A step that fails ends the run with its failure state; whatever happens, the run folder is cleaned
up (`clean_up`). The sandbox is any `Sandbox` (Docker in production, a fake in tests).
"""

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from services.errors import RunFailed
from services.models import Fingerprint, Proposal, RunResult, StepTimings, new_id
from services.settings import Settings
from services.states import State
from services.store import Store
from services.worker import eval_failure, fixed_files
from services.worker.collect import RunStats, collect_checkpoint, prepare_run_dir, read_result
from services.worker.folders import remove_tree
from services.worker.sandbox import EvalRequest, RunPaths, Sandbox, StepOutcome, TrainRequest

log = logging.getLogger(__name__)

EXIT_OOM = 3  # the trainer contract's exit code for CUDA out of memory
EXIT_NON_FINITE = 4  # ... and for a non-finite loss
MAX_SCORER_TIMINGS = 32  # names kept from the scorer's own timings (result.json), each cut to 40 characters

Subject = Literal["candidate", "best"]


@dataclass(frozen=True)
class RunPlan:
    """What one run is for: whose train.py, whether it announces `evaluating`, whether it scores the
    held-out test split."""

    subject: Subject
    announce: bool
    score_test: bool


class Stopwatch:
    """Seconds per step of a run: each `lap(name)` records the time since the previous lap (or since
    the stopwatch was made)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = now - self._last
        self._last = now

    def timings(self) -> StepTimings:
        return StepTimings(**self.seconds)


@dataclass(frozen=True)
class ScorerResult:
    """The trusted scorer's result.json, as the worker uses it. The scores are kept as the scorer
    wrote them and validated where they become a `RunResult`; the timings are cleaned
    (`scorer_timings`)."""

    val_bpb: object
    val_tokens: object = None
    val_bytes: object = None
    test_bpb: object = None
    test_tokens: object = None
    test_bytes: object = None
    fixed_hashes: dict[str, str] = field(default_factory=dict)
    evaluator_version: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    logits_slots: str = ""

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], score_test: bool) -> "ScorerResult":
        """From a result.json whose fixed files were verified (so `fixed_hashes` is a mapping). Test
        figures come only from a scorer that was asked for them, and such a scorer must give them
        (else RunFailed: voided)."""
        if score_test and raw.get("test_bpb") is None:
            raise RunFailed(
                State.VOIDED, "the scorer was asked for the held-out test split and returned no test score"
            )
        scored = cls(
            val_bpb=raw["val_bpb"],
            val_tokens=raw.get("val_tokens"),
            val_bytes=raw.get("val_bytes"),
            test_bpb=raw.get("test_bpb"),
            test_tokens=raw.get("test_tokens"),
            test_bytes=raw.get("test_bytes"),
            fixed_hashes={str(k): str(v) for k, v in dict(raw.get("fixed_hashes") or {}).items()},
            evaluator_version=str(raw.get("evaluator_version", "")),
            timings=scorer_timings(raw.get("timings")),
            logits_slots=str(raw.get("logits_slots", ""))[:80],
        )
        return scored if score_test else replace(scored, test_bpb=None, test_tokens=None, test_bytes=None)


@dataclass(frozen=True)
class RunIdentity:
    """What every result of one run carries, whatever its outcome."""

    run_id: str
    proposal_id: str
    seed: int
    subject: Subject
    log_tail: str

    def failed(self, state: State, reason: str, timings: StepTimings | None = None) -> RunResult:
        return RunResult(**self.fields(), state=state, reason=reason, timings=timings or StepTimings())

    def fields(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "proposal_id": self.proposal_id, "seed": self.seed,
                "subject": self.subject, "log_tail": self.log_tail}  # fmt: skip


@dataclass
class Runner:
    """Runs the steps of one run (this module's docstring) for a worker. `pin` gives the fixed files'
    pinned hashes (`Worker.pinned_fixed_files`)."""

    settings: Settings
    store: Store
    sandbox: Sandbox
    pin: Callable[[], fixed_files.Pin]

    def run(self, proposal: Proposal, seed: int, plan: RunPlan) -> RunResult:
        run_id = new_id("run")
        train_py = proposal.train_py if plan.subject == "candidate" else proposal.base_train_py
        self.store.append_live_log(
            proposal.id, run_header(proposal, run_id, seed, plan.subject, plan.announce)
        )
        watch = Stopwatch()
        paths = self.prepare(run_id, train_py)
        result: RunResult | None = None
        try:
            result = self._steps(proposal, seed, plan, run_id, paths, watch)
        finally:
            self.clean_up(paths, result, proposal.id)
        return result

    def _steps(
        self, proposal: Proposal, seed: int, plan: RunPlan, run_id: str, paths: RunPaths, watch: Stopwatch
    ) -> RunResult:
        pinned = self.pin()
        watch.lap("prepare_s")
        trained = self.train(proposal, run_id, paths, seed)
        watch.lap("train_container_s")
        run = RunIdentity(run_id, proposal.id, seed, plan.subject, self._tail(trained.log))
        failure = self.classify(trained)
        if failure is not None:
            return run.failed(*failure, watch.timings())
        try:
            stats = self.collect(paths)
        except RunFailed as exc:
            return run.failed(exc.state, exc.reason)
        watch.lap("collect_s")
        if plan.announce:
            self.store.transition(proposal.id, State.EVALUATING, f"trained {stats.steps} steps; evaluating")
        evaluated = self.evaluate(proposal, run_id, paths, seed, plan.score_test)
        watch.lap("eval_container_s")
        try:
            raw = self.read_result(evaluated, paths)
            self.verify_fixed_files(raw, pinned, plan.score_test)
            scored = ScorerResult.from_json(raw, plan.score_test)
        except RunFailed as exc:
            return run.failed(exc.state, exc.reason, watch.timings())
        return self.score(run, stats, scored, watch.timings(), pinned)

    # ---------------------------------------------------------------------------------------------
    # The steps

    def prepare(self, run_id: str, train_py: str) -> RunPaths:
        return prepare_run_dir(self.settings.sandbox.runs_dir, run_id, train_py)

    def train(self, proposal: Proposal, run_id: str, paths: RunPaths, seed: int) -> StepOutcome:
        return self.sandbox.train(
            TrainRequest(
                run_id=run_id,
                proposal_id=proposal.id,
                paths=paths,
                seed=seed,
                wall_clock_s=self.settings.runs.run_wall_clock_s,
                preset=self.settings.runs.preset,
                device=self.settings.runs.device,
            )
        )

    def classify(self, trained: StepOutcome) -> tuple[State, str] | None:
        return classify_training(trained, self.settings.runs.run_wall_clock_s)

    def collect(self, paths: RunPaths) -> RunStats:
        stats = collect_checkpoint(paths, self.settings.runs.max_checkpoint_bytes).stats
        if stats.max_steps is not None and stats.steps is not None and stats.steps < stats.max_steps:
            raise RunFailed(
                State.TIMED_OUT,
                f"stopped at the {self.settings.runs.run_wall_clock_s} s deadline after {stats.steps} of its "
                f"{stats.max_steps} fixed steps: a fixed-step run cut short is not scored (the host was too "
                "slow or too busy for AR_RUN_WALL_CLOCK_S)",
            )
        return stats

    def evaluate(
        self, proposal: Proposal, run_id: str, paths: RunPaths, seed: int, score_test: bool
    ) -> StepOutcome:
        return self.sandbox.evaluate(
            EvalRequest(
                run_id=run_id,
                proposal_id=proposal.id,
                paths=paths,
                seed=seed,
                timeout_s=self.settings.runs.eval_timeout_s,
                device=self.settings.runs.device,
                score_test=score_test,
            )
        )

    def read_result(self, evaluated: StepOutcome, paths: RunPaths) -> dict[str, Any]:
        """The scorer's result.json, or RunFailed (voided): the scorer failed (its log never reaches
        the proposal: a fixed sentence does), or its result is unreadable."""
        if evaluated.exit_code != 0 or evaluated.timed_out:
            why = eval_failure.reason(evaluated, _failure_code(paths), self.settings.runs.eval_timeout_s)
            raise RunFailed(State.VOIDED, why)
        try:
            return read_result(paths)
        except RunFailed as exc:
            raise RunFailed(State.VOIDED, exc.reason) from exc

    def verify_fixed_files(self, raw: Mapping[str, Any], pinned: fixed_files.Pin, score_test: bool) -> None:
        """RunFailed (voided) when the hashes the scorer saw differ from the pinned ones."""
        changed = fixed_files.differing(fixed_files.expected(pinned, score_test), raw.get("fixed_hashes"))
        if changed:
            raise RunFailed(
                State.VOIDED,
                f"fixed files differ from the pinned ones ({pinned.key}, pinned by {pinned.pinned_by} at "
                f"{pinned.pinned_at}): {', '.join(changed)}",
            )

    def score(
        self,
        run: RunIdentity,
        stats: RunStats,
        scored: ScorerResult,
        timings: StepTimings,
        pinned: fixed_files.Pin,
    ) -> RunResult:
        env = self.sandbox.environment()
        # The fingerprint's fixed hash is the pin's, test split included, whether or not this run
        # scored it: a screening run and a confirmation run of one setup share one fingerprint.
        fingerprint = Fingerprint(
            gpu=env.gpu,
            driver=env.driver,
            environment_hash=env.environment_hash,
            fixed_hash=fixed_digest(pinned.hashes),
            wall_clock_s=self.settings.runs.run_wall_clock_s,
            evaluator_version=scored.evaluator_version,
            cpu=env.cpu if env.gpu == "cpu" else "",
        )
        return RunResult.model_validate(
            {
                **run.fields(),
                "state": State.EVALUATING,
                "val_bpb": scored.val_bpb,
                "val_tokens": scored.val_tokens,
                "val_bytes": scored.val_bytes,
                **stats.model_dump(exclude={"max_steps"}),
                "test_bpb": scored.test_bpb,
                "test_tokens": scored.test_tokens,
                "test_bytes": scored.test_bytes,
                "fingerprint": fingerprint,
                "fixed_hashes": scored.fixed_hashes,
                "timings": timings,
                "scorer_timings": scored.timings,
                "logits_slots": scored.logits_slots,
            }
        )

    def clean_up(self, paths: RunPaths, result: RunResult | None, proposal_id: str) -> None:
        """Remove what the run's containers wrote, keeping its logs, train.py and the evaluation's
        result; the compile cache too once the checkpoint was collected (a run of the same code may
        reuse it), and the weights with keep_checkpoints. A run that failed before (or raised)
        keeps nothing it wrote, however hostile the tree. A removal that fails is logged, never
        raised: the run's own outcome stands and is never turned into an infrastructure error."""
        kept = {paths.code.name, paths.eval_out.name}
        if result is not None and result.state in (State.EVALUATING, State.VOIDED):  # collected
            kept.add(paths.cache.name)
            if self.settings.runs.keep_checkpoints:
                kept |= {paths.out.name, paths.checkpoint.name}
        failed = _discard_outputs(paths, kept)
        if failed:
            log.error(
                "run %s: what its containers wrote could not all be removed: %s",
                paths.root.name, "; ".join(failed), extra={"proposal_id": proposal_id},
            )  # fmt: skip

    def _tail(self, text: str) -> str:
        data = text.encode("utf-8", "replace")[-self.settings.runs.log_tail_bytes :]
        return data.decode("utf-8", "replace")


def classify_training(outcome: StepOutcome, wall_clock_s: int) -> tuple[State, str] | None:
    """The failure state of a training step, or None if it ended cleanly."""
    if outcome.timed_out:
        return State.TIMED_OUT, f"killed at the {wall_clock_s} s wall-clock limit"
    if outcome.oom_killed:
        return State.OOM, "the container ran out of memory (OOMKilled)"
    if outcome.killed_reason:
        return State.CRASHED, f"stopped by the sandbox: {outcome.killed_reason}"
    if outcome.exit_code == EXIT_OOM:
        return State.OOM, "the trainer reported CUDA out of memory (exit 3)"
    if outcome.exit_code == EXIT_NON_FINITE:
        return State.CRASHED, f"non-finite loss (exit 4): {_last_line(outcome.log)}"
    if outcome.exit_code != 0:
        return State.CRASHED, f"the trainer exited with code {outcome.exit_code}: {_last_line(outcome.log)}"
    return None


def run_header(proposal: Proposal, run_id: str, seed: int, subject: Subject, screening: bool) -> str:
    """The live log's line before a run's output: which train.py runs (the candidate's or the best's),
    and its seed; a proposal's live log holds all of its runs one after the other."""
    if proposal.kind == "run":
        who = f"commit {proposal.base_commit[:10]}"
    elif subject == "best":
        who = f"best {proposal.base_commit[:10]} (paired)"
    else:
        who = "candidate (screening)" if screening else "candidate (confirmation)"
    return f"# ---- run {run_id} · {who} · seed {seed} · started\n"


def fixed_digest(hashes: Mapping[str, str]) -> str:
    """A fingerprint's fixed hash: of the fixed files' hashes, by name."""
    return hashlib.sha256(json.dumps(dict(hashes), sort_keys=True).encode()).hexdigest()[:16]


def scorer_timings(value: object) -> dict[str, float]:
    """The scorer's timings from result.json: names to finite seconds, at most 32 of them."""
    if not isinstance(value, dict):
        return {}
    timings = {
        str(name)[:40]: round(float(seconds), 3)
        for name, seconds in value.items()
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and math.isfinite(seconds)
    }
    return dict(list(timings.items())[:MAX_SCORER_TIMINGS])


def _discard_outputs(paths: RunPaths, kept: set[str]) -> list[str]:
    """Remove every entry of the run folder but the `kept` names and the logs (*.log files), by
    descriptor (folders.py: any depth, links never followed); returns what could not be removed."""
    try:
        with os.scandir(paths.root) as entries:
            doomed = [
                entry.name
                for entry in entries
                if entry.name not in kept
                and not (entry.name.endswith(".log") and entry.is_file(follow_symlinks=False))
            ]
    except OSError as exc:
        return [f"cannot list {paths.root}: {exc.strerror}"]
    failed = (remove_tree(paths.root / name) for name in sorted(doomed))
    return [reason for reason in failed if reason]


def _failure_code(paths: RunPaths) -> str:
    """The trusted scorer's failure code from its result.json, "" if it wrote none."""
    try:
        return str(read_result(paths).get("failure", ""))
    except RunFailed:
        return ""


def _last_line(log_text: str) -> str:
    lines = [line.strip() for line in log_text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"
