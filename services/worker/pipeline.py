"""Running one proposal: prepare the run folder, train in the sandbox, collect the checkpoint,
evaluate in a separate sandbox step, record the result, hand the decision to the committer.
Each step is a small function; the sandbox is any `Sandbox` (Docker in production, a fake in tests).
"""

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

import redis

from services import queue
from services.errors import Conflict, InfraError, RunFailed, SandboxUnavailable
from services.models import Fingerprint, Proposal, RunResult, StepTimings, new_id
from services.settings import Settings
from services.states import State
from services.store import Store, keys
from services.worker import eval_failure, fixed_files, lease
from services.worker.collect import RunStats, collect_checkpoint, prepare_run_dir, read_result
from services.worker.folders import remove_tree
from services.worker.sandbox import EvalRequest, RunPaths, Sandbox, StepOutcome, TrainRequest

log = logging.getLogger(__name__)

EXIT_OOM = 3  # the trainer contract's exit code for CUDA out of memory
EXIT_NON_FINITE = 4  # ... and for a non-finite loss
SWEEP_MAX_QUEUED = 10_000  # queued proposals one sweep looks at (per-token quotas keep far fewer)


@dataclass
class Worker:
    settings: Settings
    store: Store
    sandbox: Sandbox
    conn: "redis.Redis[bytes]"
    name: str = "worker"

    def execute(self, proposal_id: str) -> Proposal:
        """Run what a proposal is waiting for: its screening run(s) when queued, its paired
        confirmation runs when confirming. Anything else (cancelled, finished, or a job delivered
        twice) is left alone, so nothing runs twice."""
        proposal = self.store.get(proposal_id)
        if proposal.state == State.CONFIRMING:
            return self._confirm(proposal)
        try:
            self.store.transition(
                proposal_id, State.RUNNING, f"{self.name} started training", expect={State.QUEUED}
            )
        except Conflict:
            log.info("skipped: proposal is %s", proposal.state, extra={"proposal_id": proposal_id})
            return proposal
        with self._lease(proposal_id):
            try:
                results = self._run_seeds(proposal)
            except InfraError as exc:
                infra = exc
            except Exception as exc:  # a bug of ours, not the proposal's: bounded retries, then infra_error
                log.exception("run failed unexpectedly", extra={"proposal_id": proposal_id})
                infra = InfraError(f"worker error: {exc!r}")
            else:
                return self._screened(proposal_id, results)
        return self._retry_later(proposal_id, infra, State.QUEUED)  # its lease released: re-queue

    def _screened(self, proposal_id: str, results: list[RunResult]) -> Proposal:
        failed = next((r for r in results if r.state != State.EVALUATING), None)
        if failed is not None:
            return self.store.transition(proposal_id, failed.state, failed.reason, results=results)
        proposal = self.store.update(proposal_id, results=results)
        queue.enqueue_decision(self.conn, proposal_id)
        return proposal

    def recover_orphan(self, proposal_id: str) -> Proposal:
        """The worker that ran this proposal died (its lease expired): run it again, counted as an
        infrastructure failure, unless its runs were finished (then only make sure it is decided)."""
        proposal = self.store.get(proposal_id)
        died = InfraError("the worker running it stopped renewing its lease (it died mid-run)")
        if proposal.state == State.RUNNING or (
            proposal.state == State.EVALUATING and not _scored_all(proposal)
        ):
            return self._infra_failure(proposal_id, died, State.QUEUED)
        if proposal.state == State.CONFIRMING and len(proposal.baseline_results) < len(
            proposal.confirm_seeds
        ):
            self.conn.delete(keys.CONFIRM_CLAIM.of(proposal.id))
            return self._infra_failure(proposal_id, died, State.CONFIRMING)
        if proposal.state in (State.EVALUATING, State.CONFIRMING):
            queue.enqueue_decision(self.conn, proposal_id)  # deciding is idempotent
        return proposal

    def sweep(self) -> None:
        """What every worker does at start and then every lease period: recover the proposals of
        workers that died mid-run, then give a run job to queued proposals that have none."""
        lease.recover_orphans(self.conn, self.recover_orphan)
        self.requeue_lost()

    def requeue_lost(self) -> list[str]:
        """Enqueue the run job of each queued proposal, or confirming one with paired runs to go, whose
        job is missing (the controller or the committer died between storing the state and enqueueing)
        or dead (queue.ensure_run). Job ids
        name the spell and are enqueued only if new, so however many workers sweep at once, and
        whatever the process that stored the proposal does meanwhile, each spell gets one job."""
        requeued = []
        queued, _ = self.store.page(State.QUEUED, limit=SWEEP_MAX_QUEUED)
        confirming, _ = self.store.page(State.CONFIRMING, limit=SWEEP_MAX_QUEUED)
        for proposal in [*queued, *confirming]:
            if proposal.state == State.CONFIRMING:
                pending = len(proposal.confirm_seeds) - len(proposal.baseline_results)
                if pending <= 0:  # its paired runs are done: the committer's turn, not a worker's
                    continue
                budget_s = 2 * pending * self.settings.run_budget_s
            else:
                budget_s = len(proposal.seeds) * self.settings.run_budget_s
            if queue.ensure_run(self.conn, proposal.id, budget_s, proposal.transitions):
                log.warning(
                    "%s without a run job: enqueued it",
                    proposal.state.value,
                    extra={"proposal_id": proposal.id},
                )
                requeued.append(proposal.id)
        return requeued

    def _lease(self, proposal_id: str) -> AbstractContextManager[None]:
        return lease.held(self.conn, proposal_id, self.name, self.settings.worker_lease_ttl_s)

    def _run_seeds(self, proposal: Proposal) -> list[RunResult]:
        results: list[RunResult] = []
        for seed in proposal.seeds:  # runs of a commit can decide (the best's score): they score test
            result = self.run_once(proposal, seed, score_test=proposal.kind == "run")
            results.append(result)
            self.store.update(proposal.id, results=results)
            if result.state != State.EVALUATING:
                break
        return results

    def _confirm(self, proposal: Proposal) -> Proposal:
        """Paired runs: for each confirmation seed, the candidate then the best (the proposal's
        base), back to back on this worker, so both see the same machine and cache state."""
        pending = proposal.confirm_seeds[len(proposal.baseline_results) :]
        claim_ttl_s = 2 * max(1, len(pending)) * self.settings.run_budget_s
        if not self.conn.set(keys.CONFIRM_CLAIM.of(proposal.id), self.name, nx=True, ex=claim_ttl_s):
            log.info("skipped: another worker confirms it", extra={"proposal_id": proposal.id})
            return proposal
        try:
            with self._lease(proposal.id):
                return self._confirm_runs(proposal, pending)
        except InfraError as exc:
            infra = exc
        except Exception as exc:  # a bug of ours: bounded retries as in `execute`, never a failed job
            log.exception("confirmation failed unexpectedly", extra={"proposal_id": proposal.id})
            infra = InfraError(f"worker error: {exc!r}")  # that the sweep would re-run without end
        finally:  # before any re-queue, so that the worker taking the retry can claim it
            self.conn.delete(keys.CONFIRM_CLAIM.of(proposal.id))
        return self._retry_later(proposal.id, infra, State.CONFIRMING)

    def _confirm_runs(self, proposal: Proposal, pending: list[int]) -> Proposal:
        for seed in pending:  # the runs that decide a merge: both score the held-out test split too
            candidate = self.run_once(proposal, seed, announce=False, score_test=True)
            if candidate.state != State.EVALUATING:
                results = [*proposal.results, candidate]
                return self.store.transition(
                    proposal.id, candidate.state, f"confirmation run (seed {seed}): {candidate.reason}",
                    results=results,
                )  # fmt: skip
            best = self.run_once(proposal, seed, announce=False, subject="best", score_test=True)
            if best.state != State.EVALUATING:
                raise SandboxUnavailable(f"the best's paired run failed ({best.state}: {best.reason})")
            proposal = self.store.update(
                proposal.id, results=[*proposal.results, candidate],
                baseline_results=[*proposal.baseline_results, best],
            )  # fmt: skip
        queue.enqueue_decision(self.conn, proposal.id)
        return proposal

    def run_once(
        self,
        proposal: Proposal,
        seed: int,
        *,
        announce: bool = True,
        subject: Literal["candidate", "best"] = "candidate",
        score_test: bool = False,
    ) -> RunResult:
        """Train and evaluate one train.py (the candidate, or with subject="best" its base) with one
        seed. `announce` moves the proposal to `evaluating` when its evaluation starts; `score_test`
        scores the held-out test split too, where one is configured (runs that can decide a merge)."""
        run_id = new_id("run")
        train_py = proposal.train_py if subject == "candidate" else proposal.base_train_py
        self.store.append_live_log(proposal.id, _run_header(proposal, run_id, seed, subject, announce))
        t0 = time.monotonic()
        paths = prepare_run_dir(self.settings.runs_dir, run_id, train_py)
        step = _Step(subject, announce, score_test and bool(self.settings.test_data))
        result: RunResult | None = None
        try:
            result = self._train_and_score(proposal, seed, step, run_id, paths, t0)
        finally:
            self._clean_up(paths, result, proposal.id)
        return result

    def _clean_up(self, paths: RunPaths, result: RunResult | None, proposal_id: str) -> None:
        """Remove what the run's containers wrote, keeping its logs, train.py and the evaluation's
        result; the compile cache too once the checkpoint was collected (a run of the same code may
        reuse it), and the weights with keep_checkpoints. A run that failed before (or raised)
        keeps nothing it wrote, however hostile the tree. A removal that fails is logged, never
        raised: the run's own outcome stands and is never turned into an infrastructure error."""
        kept = {paths.code.name, paths.eval_out.name}
        if result is not None and result.state in (State.EVALUATING, State.VOIDED):  # collected
            kept.add(paths.cache.name)
            if self.settings.keep_checkpoints:
                kept |= {paths.out.name, paths.checkpoint.name}
        failed = _discard_outputs(paths, kept)
        if failed:
            log.error(
                "run %s: what its containers wrote could not all be removed: %s",
                paths.root.name, "; ".join(failed), extra={"proposal_id": proposal_id},
            )  # fmt: skip

    def _train_and_score(
        self, proposal: Proposal, seed: int, step: "_Step", run_id: str, paths: RunPaths, t0: float
    ) -> RunResult:
        pinned = self.pinned_fixed_files()  # before training: a probe that cannot run wastes no run
        t1 = time.monotonic()
        trained = self.sandbox.train(self._train_request(proposal, run_id, paths, seed))
        t2 = time.monotonic()
        base = {"run_id": run_id, "proposal_id": proposal.id, "seed": seed, "subject": step.subject,
                "log_tail": self._tail(trained.log)}  # fmt: skip
        failure = classify_training(trained, self.settings.run_wall_clock_s)
        if failure is not None:
            timings = StepTimings(prepare_s=t1 - t0, train_container_s=t2 - t1)
            return RunResult(**base, state=failure[0], reason=failure[1], timings=timings)
        try:
            stats = collect_checkpoint(paths, self.settings.max_checkpoint_bytes).stats
        except RunFailed as exc:
            return RunResult(**base, state=exc.state, reason=exc.reason)
        t3 = time.monotonic()
        if step.announce:
            self.store.transition(proposal.id, State.EVALUATING, f"trained {stats.steps} steps; evaluating")
        evaluated = self.sandbox.evaluate(self._eval_request(proposal, run_id, paths, seed, step.score_test))
        t4 = time.monotonic()
        timings = StepTimings(
            prepare_s=t1 - t0, train_container_s=t2 - t1, collect_s=t3 - t2, eval_container_s=t4 - t3
        )
        if evaluated.exit_code != 0 or evaluated.timed_out:  # the scorer's log never reaches the proposal
            why = eval_failure.reason(evaluated, _failure_code(paths), self.settings.eval_timeout_s)
            return RunResult(**base, state=State.VOIDED, reason=why, timings=timings)
        try:
            scored = read_result(paths)
        except RunFailed as exc:
            return RunResult(**base, state=State.VOIDED, reason=exc.reason, timings=timings)
        changed = fixed_files.differing(
            fixed_files.expected(pinned, step.score_test), scored.get("fixed_hashes")
        )
        if changed:
            reason = (
                f"fixed files differ from the pinned ones ({pinned.key}, pinned by {pinned.pinned_by} at "
                f"{pinned.pinned_at}): {', '.join(changed)}"
            )
            return RunResult(**base, state=State.VOIDED, reason=reason, timings=timings)
        if step.score_test and scored.get("test_bpb") is None:
            reason = "the scorer was asked for the held-out test split and returned no test score"
            return RunResult(**base, state=State.VOIDED, reason=reason, timings=timings)
        if not step.score_test:  # test figures come only from a scorer that was asked for them
            scored = {k: v for k, v in scored.items() if not k.startswith("test_")}
        return self._scored(base, stats, scored, timings, pinned)

    def pinned_fixed_files(self) -> fixed_files.Pin:
        """The fixed files' expected hashes for this worker's runs: the record pinned in Redis for
        its scope, which this worker pins from its own trusted probe (the image and the data, no
        candidate) if no worker did before; never from a run's result (fixed_files.py)."""
        local = self.sandbox.fixed_files()
        return fixed_files.pin(self.conn, local, self.sandbox.environment().environment_hash, self.name)

    def check_fixed_files(self) -> None:
        """At start-up: pin (or read) the expected hashes, and say loudly if this worker's own image
        or data differ from them, since every run it scores would then be voided."""
        local = self.sandbox.fixed_files()
        pinned = self.pinned_fixed_files()
        changed = fixed_files.differing(pinned.hashes, local.hashes)
        if changed:
            log.error(
                "this worker's fixed files differ from those pinned in %s by %s at %s: %s; its runs will be "
                "voided until its image or data match, or the pin is deleted",
                pinned.key, pinned.pinned_by, pinned.pinned_at, ", ".join(changed),
            )  # fmt: skip
        else:
            log.info("fixed files match the pin %s (%d files)", pinned.key, len(pinned.hashes))

    def _scored(
        self,
        base: dict[str, object],
        stats: RunStats,
        scored: dict[str, object],
        timings: StepTimings,
        pinned: fixed_files.Pin,
    ) -> RunResult:
        env = self.sandbox.environment()
        fixed = {str(k): str(v) for k, v in dict(scored.get("fixed_hashes") or {}).items()}  # type: ignore[call-overload]
        # The fingerprint's fixed hash is the pin's, test split included, whether or not this run
        # scored it: a screening run and a confirmation run of one setup share one fingerprint.
        fingerprint = Fingerprint(
            gpu=env.gpu,
            driver=env.driver,
            environment_hash=env.environment_hash,
            fixed_hash=_digest(pinned.hashes),
            wall_clock_s=self.settings.run_wall_clock_s,
            evaluator_version=str(scored.get("evaluator_version", "")),
            cpu=env.cpu if env.gpu == "cpu" else "",
        )
        return RunResult.model_validate(
            {
                **base,
                "state": State.EVALUATING,
                "val_bpb": scored["val_bpb"],
                "val_tokens": scored.get("val_tokens"),
                "val_bytes": scored.get("val_bytes"),
                **stats.model_dump(),
                "test_bpb": scored.get("test_bpb"),
                "test_tokens": scored.get("test_tokens"),
                "test_bytes": scored.get("test_bytes"),
                "fingerprint": fingerprint,
                "fixed_hashes": fixed,
                "timings": timings,
                "scorer_timings": _scorer_timings(scored.get("timings")),
                "logits_slots": str(scored.get("logits_slots", ""))[:80],
            }
        )

    def _train_request(self, proposal: Proposal, run_id: str, paths: RunPaths, seed: int) -> TrainRequest:
        return TrainRequest(
            run_id=run_id,
            proposal_id=proposal.id,
            paths=paths,
            seed=seed,
            wall_clock_s=self.settings.run_wall_clock_s,
            preset=self.settings.preset,
            device=self.settings.device,
        )

    def _eval_request(
        self, proposal: Proposal, run_id: str, paths: RunPaths, seed: int, score_test: bool
    ) -> EvalRequest:
        return EvalRequest(
            run_id=run_id,
            proposal_id=proposal.id,
            paths=paths,
            seed=seed,
            timeout_s=self.settings.eval_timeout_s,
            device=self.settings.device,
            score_test=score_test,
        )

    def _retry_later(self, proposal_id: str, exc: InfraError, retry_state: State) -> Proposal:
        """An infrastructure failure of this worker's own run: record it (re-queued, or infra_error),
        then wait for the sandbox to answer again before taking more work. Without the wait, a worker
        whose Docker daemon restarts takes the retry at once, fails it too, and uses up the retries
        in milliseconds; meanwhile a worker on another host may take the retry."""
        proposal = self._infra_failure(proposal_id, exc, retry_state)
        wait_s = self.settings.sandbox_ready_wait_s
        if not self.sandbox.wait_ready(wait_s):
            log.warning("the sandbox still fails after %.0f s; taking work again", wait_s)
        return proposal

    def _infra_failure(self, proposal_id: str, exc: InfraError, retry_state: State) -> Proposal:
        """Never the proposal's fault: run it again (screening from scratch, or the confirmation runs
        still missing) up to `infra_retries` times, then `infra_error`."""
        proposal = self.store.get(proposal_id)
        attempts = proposal.attempts + 1
        if attempts > self.settings.infra_retries:
            return self.store.transition(
                proposal_id,
                State.INFRA_ERROR,
                f"infrastructure failed {attempts} times; last: {exc}",
                attempts=attempts,
            )
        reason = f"infrastructure failed ({exc}); retry {attempts} of {self.settings.infra_retries}"
        changes: dict[str, object] = {"attempts": attempts}
        if retry_state == State.QUEUED:
            changes["results"] = []
        retried = self.store.transition(proposal_id, retry_state, reason, expect=None, **changes)
        runs = len(proposal.seeds) if retry_state == State.QUEUED else 2 * len(proposal.confirm_seeds)
        queue.enqueue_run(self.conn, proposal_id, runs * self.settings.run_budget_s, retried.transitions)
        return self.store.get(proposal_id)

    def _tail(self, text: str) -> str:
        data = text.encode("utf-8", "replace")[-self.settings.log_tail_bytes :]
        return data.decode("utf-8", "replace")


@dataclass(frozen=True)
class _Step:
    """What one run is for: whose train.py, whether it announces `evaluating`, whether it scores the
    held-out test split."""

    subject: Literal["candidate", "best"]
    announce: bool
    score_test: bool


def _run_header(
    proposal: Proposal, run_id: str, seed: int, subject: Literal["candidate", "best"], screening: bool
) -> str:
    """The live log's line before a run's output: which train.py runs (the candidate's or the best's),
    and its seed; a proposal's live log holds all of its runs one after the other."""
    if proposal.kind == "run":
        who = f"commit {proposal.base_commit[:10]}"
    elif subject == "best":
        who = f"best {proposal.base_commit[:10]} (paired)"
    else:
        who = "candidate (screening)" if screening else "candidate (confirmation)"
    return f"# ---- run {run_id} · {who} · seed {seed} · started\n"


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


def _digest(hashes: Mapping[str, str]) -> str:
    """A fingerprint's fixed hash: of the fixed files' hashes, by name."""
    return hashlib.sha256(json.dumps(dict(hashes), sort_keys=True).encode()).hexdigest()[:16]


def _scored_all(proposal: Proposal) -> bool:
    return len(proposal.results) == len(proposal.seeds) and all(
        r.val_bpb is not None for r in proposal.results
    )


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


def _scorer_timings(value: object) -> dict[str, float]:
    """The scorer's timings from result.json: names to finite seconds, at most 32 of them."""
    if not isinstance(value, dict):
        return {}
    timings = {
        str(name)[:40]: round(float(seconds), 3)
        for name, seconds in value.items()
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and math.isfinite(seconds)
    }
    return dict(list(timings.items())[:32])


def _last_line(log_text: str) -> str:
    lines = [line.strip() for line in log_text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"
