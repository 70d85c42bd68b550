"""Deciding on scored proposals and writing the research branch. Runs only in the committer
process (one RQ worker on the `commits` queue), so decisions and commits are serial."""

import json
import logging
from dataclasses import dataclass

import redis

from services import queue
from services.committer.repo import HeadMoved, ResearchRepo
from services.committer.rules import beats_best
from services.errors import ProposalError
from services.models import Best, Decision, Proposal, RunResult, new_id
from services.patches import build_candidate
from services.settings import Settings
from services.states import State
from services.store import Store

log = logging.getLogger(__name__)

WAITING_FOR_BASELINE = "ar:waiting-for-baseline"  # proposals scored before the baseline was
BASELINE_REQUESTED = "ar:baseline-requested"


@dataclass
class Committer:
    settings: Settings
    store: Store
    repo: ResearchRepo
    conn: "redis.Redis[bytes]"

    # --- start-up

    def bootstrap(self, baseline_train_py: str) -> str:
        """Create the research repo if new, mirror its commits into the store, and ask once for a
        baseline run of the head so that there is a best score to beat."""
        head = self.repo.ensure(baseline_train_py)
        for info in self.repo.history():
            self.store.add_commit(info.sha, info.train_py)
        best = self.store.get_best()
        if best is None or self.store.commit_train_py(best.commit) is None:
            best = Best(commit=head, val_bpb=None)
            self.store.set_best(best)
        if best.val_bpb is None:
            self.request_baseline(best.commit)
        return head

    def request_baseline(self, head: str) -> None:
        if not self.conn.set(BASELINE_REQUESTED, head, nx=True):
            return
        train_py = self.store.commit_train_py(head) or ""
        run = Proposal(
            id=new_id("r"),
            kind="run",
            title="Baseline run",
            agent="committer",
            description=f"Establishes the score of {head[:10]}",
            base_commit=head,
            base_train_py=train_py,
            train_py=train_py,
            diff="",
            content_hash="",
            seeds=[self.settings.first_seed],
        )
        self.store.create(run, dedupe=False)
        queue.enqueue_run(self.conn, run.id, self.settings.run_wall_clock_s + self.settings.eval_timeout_s)
        log.info("baseline run requested", extra={"proposal_id": run.id, "commit": head})

    # --- deciding

    def decide(self, proposal_id: str) -> Proposal:
        proposal = self.store.get(proposal_id)
        if proposal.state != State.EVALUATING:
            log.info("decision skipped: proposal is %s", proposal.state, extra={"proposal_id": proposal_id})
            return proposal
        scored = [r for r in proposal.results if r.val_bpb is not None]
        if not scored:
            return self.store.transition(proposal_id, State.VOIDED, "no scored run")
        if proposal.kind == "run":
            return self._record_commit_run(proposal, scored)
        best = self.store.get_best()
        if best is None or best.val_bpb is None:
            self.conn.rpush(WAITING_FOR_BASELINE, proposal_id)
            log.info("waiting for the baseline score", extra={"proposal_id": proposal_id})
            return proposal
        candidate_bpb = _mean(scored)
        decision = beats_best(candidate_bpb, best.val_bpb, best.commit)
        self.store.record_score(proposal_id, candidate_bpb)
        if not decision.accepted:
            self._keep_tried(proposal, decision)
            return self.store.transition(proposal_id, State.REJECTED, decision.reason, decision=decision)
        self.store.transition(proposal_id, State.ACCEPTED, decision.reason, decision=decision)
        return self._merge(proposal_id, decision)

    def _merge(self, proposal_id: str, decision: Decision) -> Proposal:
        proposal = self.store.get(proposal_id)
        merged = self.repo.find_merged(proposal_id)  # a crash after publishing: don't commit twice
        if merged is None:
            if proposal.base_commit != self.repo.head():
                return self._requeue_on_head(proposal)
            try:
                merged = self.repo.commit_on_branch(
                    proposal.base_commit,
                    proposal.train_py,
                    _message(proposal, decision),
                    _note(proposal, decision),
                )
            except HeadMoved:
                return self._requeue_on_head(proposal)
        self._keep_tried(proposal, decision)
        self.store.add_commit(merged, proposal.train_py)
        self.store.set_best(
            Best(
                commit=merged,
                val_bpb=decision.candidate_bpb,
                proposal_id=proposal_id,
                fingerprint_key=_fingerprint_key(proposal.results),
            )
        )
        return self.store.transition(
            proposal_id, State.MERGED, f"merged as {merged[:10]}: {decision.reason}", merged_commit=merged
        )

    def _requeue_on_head(self, proposal: Proposal) -> Proposal:
        head = self.repo.head()
        head_train_py = self.store.commit_train_py(head) or ""
        try:
            candidate = build_candidate(
                head_train_py,
                base_commit=head,
                train_py=None,
                diff=proposal.diff,
                max_bytes=self.settings.max_patch_bytes,
            )
        except ProposalError as exc:
            return self.store.transition(
                proposal.id,
                State.REJECTED,
                f"the best moved to {head[:10]} and the change no longer applies: {exc}",
            )
        requeued = self.store.transition(
            proposal.id,
            State.QUEUED,
            f"the best moved to {head[:10]}; re-queued against it",
            base_commit=head,
            base_train_py=head_train_py,
            train_py=candidate.train_py,
            diff=candidate.diff,
            content_hash=candidate.content_hash,
            results=[],
            decision=None,
        )
        queue.enqueue_run(
            self.conn, proposal.id, self.settings.run_wall_clock_s + self.settings.eval_timeout_s
        )
        return requeued

    def _record_commit_run(self, proposal: Proposal, scored: list[RunResult]) -> Proposal:
        """A run of an existing commit: it sets the commit's score when it has none (the baseline)."""
        val_bpb = _mean(scored)
        self.store.record_score(proposal.id, val_bpb)
        best = self.store.get_best()
        reason = f"run of {proposal.base_commit[:10]} scored val_bpb {val_bpb:.6f}"
        if best is not None and best.commit == proposal.base_commit and best.val_bpb is None:
            self.store.set_best(
                best.model_copy(
                    update={
                        "val_bpb": val_bpb,
                        "proposal_id": proposal.id,
                        "fingerprint_key": _fingerprint_key(scored),
                    }
                )
            )
            reason += "; it is the best's score now"
            self._release_waiting()
        return self.store.transition(proposal.id, State.MERGED, reason)

    def _release_waiting(self) -> None:
        while (raw := self.conn.lpop(WAITING_FOR_BASELINE)) is not None:
            queue.enqueue_decision(self.conn, raw.decode())

    def _keep_tried(self, proposal: Proposal, decision: Decision) -> None:
        self.repo.keep_tried(
            proposal.id,
            proposal.base_commit,
            proposal.train_py,
            _message(proposal, decision),
            _note(proposal, decision),
        )


def _mean(results: list[RunResult]) -> float:
    values = [r.val_bpb for r in results if r.val_bpb is not None]
    return sum(values) / len(values)


def _fingerprint_key(results: list[RunResult]) -> str | None:
    keys = {r.fingerprint.key() for r in results if r.fingerprint is not None}
    return keys.pop() if len(keys) == 1 else None


def _message(proposal: Proposal, decision: Decision) -> str:
    best = "none" if decision.best_bpb is None else f"{decision.best_bpb:.6f}"
    delta = "n/a" if decision.delta_bpb is None else f"{decision.delta_bpb:+.6f}"
    first = next((r for r in proposal.results if r.val_bpb is not None), None)
    memory_gb = (first.peak_memory_bytes or 0) / 1e9 if first else 0.0
    lines = [
        proposal.title,
        "",
        proposal.description.strip(),
        "",
        f"val_bpb: {decision.candidate_bpb:.6f} (best {best} at {decision.best_commit[:10]}, delta {delta})",
        f"rule: {decision.rule}; runs: {len(proposal.results)}; seeds: {[r.seed for r in proposal.results]}",
        f"steps: {first.steps if first else None}; memory_gb: {memory_gb:.1f}",
        "",
        f"Proposal-Id: {proposal.id}",
        f"Agent: {proposal.agent}",
    ]
    return "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1]))


def _note(proposal: Proposal, decision: Decision) -> str:
    return json.dumps(
        {
            "proposal_id": proposal.id,
            "agent": proposal.agent,
            "program_version": proposal.program_version,
            "decision": decision.model_dump(mode="json"),
            "results": [r.model_dump(mode="json", exclude={"log_tail"}) for r in proposal.results],
        },
        indent=2,
        sort_keys=True,
    )
