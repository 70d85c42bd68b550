"""The worker: what a proposal is waiting for, run on this worker's GPU. Screening runs when it is
queued, paired confirmation runs when it is confirming; the result recorded and the decision handed
to the committer; infrastructure failures retried a bounded number of times. One run's steps are
runner.py's; the sweeps that recover what dead workers and processes left behind, and the lease,
are recovery.py's.
"""

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

import redis

from services import queue
from services.errors import Conflict, InfraError, SandboxUnavailable
from services.models import Proposal, RunResult
from services.settings import Settings
from services.states import State
from services.store import Store, keys
from services.worker import fixed_files, recovery
from services.worker.runner import Runner, RunPlan
from services.worker.sandbox import Sandbox

log = logging.getLogger(__name__)


@dataclass
class Worker:
    settings: Settings
    store: Store
    sandbox: Sandbox
    conn: "redis.Redis[bytes]"
    name: str = "worker"

    @property
    def runner(self) -> Runner:
        """The steps of one run (runner.py), with this worker's sandbox and pinned fixed files."""
        return Runner(self.settings, self.store, self.sandbox, self.pinned_fixed_files)

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
        """What every worker does at start and then every lease period (recovery.sweep)."""
        recovery.sweep(self.conn, self.store, self.settings, self.recover_orphan)

    def requeue_lost(self) -> list[str]:
        """Give a run job to the proposals waiting for one that have none (recovery.requeue_lost)."""
        return recovery.requeue_lost(self.conn, self.store, self.settings)

    def _lease(self, proposal_id: str) -> AbstractContextManager[None]:
        return recovery.held(self.conn, proposal_id, self.name, self.settings.runs.worker_lease_ttl_s)

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
        claim_ttl_s = 2 * max(1, len(pending)) * self.settings.runs.run_budget_s
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
        plan = RunPlan(subject, announce, score_test and bool(self.settings.sandbox.test_data))
        return self.runner.run(proposal, seed, plan)

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

    def _retry_later(self, proposal_id: str, exc: InfraError, retry_state: State) -> Proposal:
        """An infrastructure failure of this worker's own run: record it (re-queued, or infra_error),
        then wait for the sandbox to answer again before taking more work. Without the wait, a worker
        whose Docker daemon restarts takes the retry at once, fails it too, and uses up the retries
        in milliseconds; meanwhile a worker on another host may take the retry."""
        proposal = self._infra_failure(proposal_id, exc, retry_state)
        wait_s = self.settings.runs.sandbox_ready_wait_s
        if not self.sandbox.wait_ready(wait_s):
            log.warning("the sandbox still fails after %.0f s; taking work again", wait_s)
        return proposal

    def _infra_failure(self, proposal_id: str, exc: InfraError, retry_state: State) -> Proposal:
        """Never the proposal's fault: run it again (screening from scratch, or the confirmation runs
        still missing) up to `infra_retries` times, then `infra_error`."""
        proposal = self.store.get(proposal_id)
        attempts = proposal.attempts + 1
        if attempts > self.settings.runs.infra_retries:
            return self.store.transition(
                proposal_id,
                State.INFRA_ERROR,
                f"infrastructure failed {attempts} times; last: {exc}",
                attempts=attempts,
            )
        reason = f"infrastructure failed ({exc}); retry {attempts} of {self.settings.runs.infra_retries}"
        changes: dict[str, object] = {"attempts": attempts}
        if retry_state == State.QUEUED:
            changes["results"] = []
        retried = self.store.transition(proposal_id, retry_state, reason, expect=None, **changes)
        runs = len(proposal.seeds) if retry_state == State.QUEUED else 2 * len(proposal.confirm_seeds)
        queue.enqueue_run(self.conn, proposal_id, runs * self.settings.runs.run_budget_s, retried.transitions)
        return self.store.get(proposal_id)


def _scored_all(proposal: Proposal) -> bool:
    return len(proposal.results) == len(proposal.seeds) and all(
        r.val_bpb is not None for r in proposal.results
    )
