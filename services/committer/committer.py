"""Deciding on scored proposals and writing the research branch. Runs only in the committer
process (one RQ worker on the `commits` queue), so decisions and commits are serial.

The committer never parses text a proposal's author wrote: which proposal a branch commit merged
comes from the repo's merged refs, the lineage's agent and title from the committer's own notes
(JSON of validated fields). Commit messages carry the title and description for people to read,
and trailers made of validated fields only (`Proposal-Id`, the agent's name)."""

import json
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import ValidationError

from services import queue
from services.committer import rules
from services.committer.repo import CommitInfo, ResearchRepo
from services.controller.disclosure import Disclosure
from services.errors import HeadMoved, ProposalError, RepoError
from services.models import Best, Decision, LineageEntry, Proposal, RunResult, new_id, now
from services.patches import build_candidate, split_lines
from services.settings import Settings
from services.states import TERMINAL, State
from services.store import Store, keys

log = logging.getLogger(__name__)

WAITING_FOR_BASELINE = keys.WAITING_FOR_BASELINE.of()  # proposals scored before the baseline was
BASELINE_REQUESTED = keys.BASELINE_REQUESTED.of()
# Test figures stay out of git (commit messages, notes, tried refs): agents may read the repository.
TEST_RESULT_FIELDS = frozenset({"test_bpb", "test_tokens", "test_bytes"})


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
        history = self.repo.history()
        for info in history:
            self.store.add_commit(info.sha, info.train_py)
        self._record_legacy_merges(history)
        self._backfill_lineage(history)
        best = self.store.get_best()
        if best is None or self.store.commit_train_py(best.commit) is None:
            best = Best(commit=head, val_bpb=None)
            self.store.set_best(best)
        if best.val_bpb is None:
            self.request_baseline(best.commit)
        self.publish_bundle()
        return head

    def _record_legacy_merges(self, history: list[CommitInfo]) -> None:
        """Branch commits merged before merged refs were kept get theirs, from the proposal id in the
        committer's own note on the commit (never from the commit message)."""
        refs = self.repo.merged_refs()
        known, recorded = set(refs), set(refs.values())
        for info in history[1:]:  # the root merged nothing
            if info.sha in recorded:
                continue
            proposal_id = _note_fields(self.repo.note(info.sha)).get("proposal_id")
            if isinstance(proposal_id, str) and proposal_id not in known:
                try:
                    self.repo.record_merged(proposal_id, info.sha)
                except RepoError as exc:
                    log.warning("no merged ref for %s: %s", info.sha[:10], exc)
                    continue
                known.add(proposal_id)
                log.info(
                    "merged ref for %s recorded from its note",
                    proposal_id,
                    extra={"proposal_id": proposal_id},
                )

    def _backfill_lineage(self, history: list[CommitInfo]) -> None:
        """Mirror the branch's history into the store's lineage (a fresh Redis recovers it from git:
        merged refs and notes); entries already recorded are kept as they are."""
        merged_by = {sha: proposal_id for proposal_id, sha in self.repo.merged_refs().items()}
        parent: str | None = None
        for position, info in enumerate(history):
            if self.store.lineage_entry(info.sha) is None:
                note = self.repo.note(info.sha)
                entry = _lineage_from_git(info, parent, position, note, merged_by.get(info.sha))
                self.store.add_lineage(entry)
            parent = info.sha

    def request_baseline(self, head: str) -> None:
        if not self.conn.set(BASELINE_REQUESTED, head, nx=True):
            return
        run = self._request_runs(
            head, "Baseline run", f"Establishes the score of {head[:10]}", [self.settings.runs.first_seed]
        )
        log.info("baseline run requested", extra={"proposal_id": run.id, "commit": head})

    def request_runs_on_new_fingerprint(self, fingerprint: str | None) -> None:
        """On a fingerprint where the best commit has no runs yet (a new evaluator version, trainer
        image, GPU model or data), ask once for `new_fingerprint_runs` runs of it, as POST /v1/runs
        would: they give the best a score there and calibrate the noise (val, and test − val)."""
        count = self.settings.acceptance.new_fingerprint_runs
        best = self.store.get_best()
        if fingerprint is None or count == 0 or best is None or best.val_bpb is None:
            return  # before the baseline's score, the baseline run is what establishes it
        if self.store.calibration_runs(fingerprint).get(best.commit):
            return
        if not self.conn.set(keys.NEW_FINGERPRINT_RUNS.of(fingerprint), best.commit, nx=True):
            return
        seeds = [self.settings.runs.first_seed + i for i in range(count)]
        description = (
            f"Runs of the best ({best.commit[:10]}) on fingerprint {fingerprint}, new to the branch: its score "
            "and the noise calibration there"
        )
        run = self._request_runs(
            best.commit, f"{count} run(s) of the best on a new fingerprint", description, seeds
        )
        log.info(
            "runs of the best requested on new fingerprint %s", fingerprint,
            extra={"proposal_id": run.id, "commit": best.commit},
        )  # fmt: skip

    def _request_runs(self, commit: str, title: str, description: str, seeds: list[int]) -> Proposal:
        train_py = self.store.commit_train_py(commit) or ""
        run = Proposal(
            id=new_id("r"), kind="run", title=title, agent="committer", description=description,
            base_commit=commit, base_train_py=train_py, train_py=train_py, diff="", content_hash="", seeds=seeds,
        )  # fmt: skip
        stored, _ = self.store.create(run, dedupe=False)
        queue.enqueue_run(self.conn, run.id, self.settings.runs.run_budget_s * len(seeds), stored.transitions)
        return stored

    def recover(self) -> int:
        """After a restart, finish the verdicts that were in flight: accepted but not yet merged, or
        scored but not yet decided. Deciding is idempotent, so a duplicate job is harmless."""
        pending = 0
        for state in (State.ACCEPTED, State.EVALUATING, State.CONFIRMING):
            proposals, _ = self.store.page(state, limit=10_000)
            for proposal in proposals:
                if state == State.ACCEPTED or _runs_complete(proposal):
                    queue.enqueue_decision(self.conn, proposal.id)
                    pending += 1
        return pending

    # --- deciding

    def decide(self, proposal_id: str, *, last_attempt: bool = True) -> Proposal:
        """One step of a proposal's verdict; idempotent, so a retried or duplicated job is harmless.
        When git fails, the job is tried again; on its `last_attempt` the proposal ends `infra_error`
        with git's reason, unless its commit was published (then recovery finishes the merge)."""
        try:
            return self._next_step(proposal_id)
        except RepoError as exc:
            if not last_attempt or self.repo.find_merged(proposal_id) is not None:
                raise
            return self._git_failed(proposal_id, exc)

    def _git_failed(self, proposal_id: str, exc: RepoError) -> Proposal:
        proposal = self.store.get(proposal_id)
        if proposal.state in TERMINAL:
            return proposal
        log.error("git failed on %s: %s", proposal_id, exc, extra={"proposal_id": proposal_id})
        return self.store.transition(
            proposal_id, State.INFRA_ERROR, f"the research repository failed, nothing was merged: {exc}"
        )

    def _next_step(self, proposal_id: str) -> Proposal:
        """What the proposal waits for, done: a merge, a confirmed decision, a screening, or nothing."""
        proposal = self.store.get(proposal_id)
        if proposal.state == State.ACCEPTED and proposal.decision is not None:
            return self._merge(proposal_id, proposal.decision)  # a committer died before merging
        if proposal.state == State.CONFIRMING and len(proposal.baseline_results) == len(
            proposal.confirm_seeds
        ):
            return self._decide_confirmed(proposal)
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
        return self._screen(proposal, scored, best)

    def _screen(self, proposal: Proposal, scored: list[RunResult], best: Best) -> Proposal:
        self._remember_fingerprints(scored)
        fingerprint = _fingerprint_key(scored)
        self.request_runs_on_new_fingerprint(fingerprint)
        self.store.record_score(proposal.id, _mean(scored), fingerprint)
        noise = self.noise(fingerprint)
        policy = self.policy
        best_runs = self.store.calibration_runs(fingerprint).get(best.commit, []) if fingerprint else []
        reference, reference_sd = rules.reference(
            policy.rule, best.val_bpb or 0.0, self._recorded_sd(best.commit), best_runs, noise
        )
        evidence = rules.Evidence(
            best_commit=best.commit, best_bpb=reference, best_sd_bpb=reference_sd, noise=noise,
            screen_runs=[r.val_bpb or 0.0 for r in scored], screen_seeds=[r.seed for r in scored],
            seed_only_change=only_seed_changed(proposal.diff), pair_spread=self._pair_spread(fingerprint, ""),
        )  # fmt: skip
        decision = rules.decide(evidence, policy)
        if not decision.confirm:
            reason = decision.reason + self._keep_tried(proposal, decision)
            return self.store.transition(
                proposal.id, State.REJECTED, reason, decision=decision, screening=decision
            )
        if proposal.base_commit != self.repo.head():
            return self._requeue_on_head(proposal)
        seeds = _fresh_seeds(decision.more_runs, exclude=set(proposal.seeds))
        confirming = self.store.transition(
            proposal.id, State.CONFIRMING, decision.reason, decision=decision, screening=decision,
            confirm_seeds=seeds, baseline_results=[],
        )  # fmt: skip
        budget = 2 * len(seeds) * self.settings.runs.run_budget_s
        queue.enqueue_run(self.conn, proposal.id, budget, confirming.transitions)
        return confirming

    def _recorded_sd(self, commit: str) -> float | None:
        """The uncertainty of a merged commit's recorded score, where its decision gave one."""
        entry = self.store.lineage_entry(commit)
        if entry is None or entry.decision is None:
            return None
        return entry.decision.posterior.get("sd_bpb")

    def _decide_confirmed(self, proposal: Proposal) -> Proposal:
        screen_runs = [r for r in proposal.results[: len(proposal.seeds)] if r.val_bpb is not None]
        confirm_runs = proposal.results[len(proposal.seeds) :]
        candidate = [r.val_bpb for r in confirm_runs if r.val_bpb is not None]
        baseline = [r.val_bpb for r in proposal.baseline_results if r.val_bpb is not None]
        self._remember_fingerprints([*confirm_runs, *proposal.baseline_results])
        fingerprint = _fingerprint_key([*confirm_runs, *proposal.baseline_results])
        if fingerprint is not None:  # the best's paired runs, each counted once however often this runs
            self.store.add_calibration_runs(
                fingerprint, proposal.base_commit, _val_scores(proposal.baseline_results)
            )
            self.store.add_gap_calibration_runs(
                fingerprint, proposal.base_commit, _gaps(proposal.baseline_results)
            )
            self.store.add_pair_calibration_runs(
                fingerprint, _pair_group(proposal), _pair_diffs(confirm_runs, proposal.baseline_results)
            )
            self.request_runs_on_new_fingerprint(fingerprint)
        noise = self.noise(fingerprint)
        screening = proposal.screening or proposal.decision
        reference = screening.best_bpb if screening is not None and screening.best_bpb is not None else 0.0
        reference_sd = screening.posterior.get("reference_sd_bpb") if screening is not None else None
        evidence = rules.Evidence(
            best_commit=proposal.base_commit, best_bpb=reference,
            best_sd_bpb=noise.sigma_bpb if reference_sd is None else reference_sd, noise=noise,
            screen_runs=[r.val_bpb or 0.0 for r in screen_runs], screen_seeds=[r.seed for r in screen_runs],
            candidate_runs=candidate, best_runs=baseline, seeds=list(proposal.confirm_seeds),
            seed_only_change=only_seed_changed(proposal.diff),
            test=self._tripwire_evidence(proposal, confirm_runs, fingerprint),
            pair_spread=self._pair_spread(fingerprint, _pair_group(proposal)),
        )  # fmt: skip
        decision = rules.decide(evidence, self.policy)
        if decision.tripwire != "not-run":
            log.info("held-out test tripwire: %s", decision.tripwire, extra={"proposal_id": proposal.id})
        elif decision.accepted and evidence.test is None:
            log.warning(
                "held-out test tripwire not run: the paired runs carry no test scores (set AR_TEST_DATA on "
                "the workers)", extra={"proposal_id": proposal.id},
            )  # fmt: skip
        self.store.record_score(proposal.id, decision.candidate_bpb, fingerprint)
        if decision.confirm:
            return self._confirm_more(proposal, decision)
        if not decision.accepted:
            reason = decision.reason + self._keep_tried(proposal, decision)
            return self.store.transition(proposal.id, State.REJECTED, reason, decision=decision)
        self.store.transition(proposal.id, State.ACCEPTED, decision.reason, decision=decision)
        return self._merge(proposal.id, decision)

    def _confirm_more(self, proposal: Proposal, decision: Decision) -> Proposal:
        """The rule asks for more paired runs: fresh seeds, the same proposal, its evidence kept, unless
        the head moved (then it is re-queued against the new head: docs/architecture.md, "The path of a proposal")."""
        if proposal.base_commit != self.repo.head():
            return self._requeue_on_head(proposal)
        used = {*proposal.seeds, *proposal.confirm_seeds}
        seeds = [*proposal.confirm_seeds, *_fresh_seeds(decision.more_runs, exclude=used)]
        confirming = self.store.transition(
            proposal.id, State.CONFIRMING, decision.reason, decision=decision, confirm_seeds=seeds
        )
        budget = 2 * decision.more_runs * self.settings.runs.run_budget_s
        queue.enqueue_run(self.conn, proposal.id, budget, confirming.transitions)
        return confirming

    def _tripwire_evidence(
        self, proposal: Proposal, confirm_runs: list[RunResult], fingerprint: str | None
    ) -> rules.TripwireEvidence | None:
        """The paired runs' test scores for the held-out test tripwire; None when they carry none (no
        test split configured where they ran)."""
        pairs = list(zip(confirm_runs, proposal.baseline_results, strict=True))
        if not pairs or any(r.test_bpb is None or r.val_bpb is None for pair in pairs for r in pair):
            return None
        scores = rules.PairedScores(
            val_candidate=[c.val_bpb or 0.0 for c, _ in pairs], val_best=[b.val_bpb or 0.0 for _, b in pairs],
            test_candidate=[c.test_bpb or 0.0 for c, _ in pairs], test_best=[b.test_bpb or 0.0 for _, b in pairs],
        )  # fmt: skip
        return rules.TripwireEvidence(
            scores, self.gap_noise(fingerprint), self._gap_history(proposal.base_commit),
            rules.tripwire_params_from(self.settings.acceptance),
        )  # fmt: skip

    def _gap_history(self, commit: str) -> list[rules.GapStep]:
        """The tripwire's figures of the merged steps from the root to `commit` (the cumulative check);
        steps merged before the tripwire measured them count for nothing."""
        entries = {entry.commit: entry for entry in self.store.lineage()}
        steps: list[rules.GapStep] = []
        seen: set[str] = set()
        entry = entries.get(commit)
        while entry is not None and entry.commit not in seen:
            seen.add(entry.commit)
            step = rules.gap_step(entry.decision) if entry.decision is not None else None
            if step is not None:
                steps.append(step)
            entry = entries.get(entry.parent) if entry.parent is not None else None
        return steps[::-1]

    def _pair_spread(self, fingerprint_key: str | None, exclude: str) -> rules.PairSpread:
        """The paired differences of the fingerprint's confirmations but `exclude` (the one deciding:
        the rule adds its own), for the same-seed correlation of seq-bayes/v4. Another rule reads none of
        it, so it is not read then (the hash grows with every confirmation on the fingerprint)."""
        if self.policy.rule != rules.SEQ_BAYES_V4_RULE or not fingerprint_key:
            return rules.PairSpread()
        diffs = self.store.pair_calibration_runs(fingerprint_key)
        return rules.pair_spread({group: d for group, d in diffs.items() if group != exclude})

    def noise(self, fingerprint_key: str | None) -> rules.Noise:
        runs = self.store.calibration_runs(fingerprint_key) if fingerprint_key else {}
        return rules.calibrate(runs, self.params)

    def gap_noise(self, fingerprint_key: str | None) -> rules.Noise:
        """σ of one run's (test_bpb − val_bpb) on the fingerprint, from the branch commits' runs."""
        runs = self.store.gap_calibration_runs(fingerprint_key) if fingerprint_key else {}
        return rules.calibrate_gap(runs, rules.tripwire_params_from(self.settings.acceptance))

    @property
    def params(self) -> rules.RuleParams:
        return rules.params_from(self.settings.acceptance)

    @property
    def policy(self) -> rules.Policy:
        return rules.policy_from(self.settings.acceptance)

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
                    _message(proposal, decision, self.settings.controller.agent_score_decimals),
                    proposal.id,
                )
            except HeadMoved:
                return self._requeue_on_head(proposal)
        if self.repo.note(merged) is None:  # new, or it died between moving the branch and the note
            self.repo.set_note(merged, _note(proposal, decision))
        pauses = self.settings.pauses  # test-only kill points (services/faults.py); inert by default
        pauses.reached("merge:noted")
        self._keep_tried(proposal, decision)
        pauses.reached("merge:tried-kept")
        self.store.add_commit(merged, proposal.train_py)
        parent = self.store.lineage_entry(proposal.base_commit)
        self.store.add_lineage(
            LineageEntry(
                commit=merged, parent=proposal.base_commit,
                position=parent.position + 1 if parent is not None else len(self.store.lineage()),
                proposal_id=proposal.id, title=proposal.title, agent=proposal.agent,
                val_bpb=_recorded_bpb(decision), delta_bpb=decision.delta_bpb,
                peak_memory_bytes=_peak_memory(proposal.results), decision=decision, merged_at=now(),
            )
        )  # fmt: skip
        self.store.set_best(
            Best(
                commit=merged,
                val_bpb=_recorded_bpb(decision),
                proposal_id=proposal_id,
                fingerprint_key=_fingerprint_key(proposal.results),
            )
        )
        pauses.reached("merge:best-set")
        self.publish_bundle()
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
                max_bytes=self.settings.controller.max_patch_bytes,
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
            baseline_results=[],
            confirm_seeds=[],
            decision=None,
        )
        queue.enqueue_run(self.conn, proposal.id, self.settings.runs.run_budget_s, requeued.transitions)
        return requeued

    def _record_commit_run(self, proposal: Proposal, scored: list[RunResult]) -> Proposal:
        """A run of an existing commit feeds the noise calibration of its fingerprint; for the best
        commit, the best's score becomes the mean of all its runs (the baseline's first score too)."""
        val_bpb = _mean(scored)
        self._remember_fingerprints(scored)
        fingerprint = _fingerprint_key(scored)
        self.store.record_score(proposal.id, val_bpb, fingerprint)
        if fingerprint is not None:
            self.store.add_calibration_runs(fingerprint, proposal.base_commit, _val_scores(scored))
            self.store.add_gap_calibration_runs(fingerprint, proposal.base_commit, _gaps(scored))
            self.request_runs_on_new_fingerprint(fingerprint)
        best = self.store.get_best()
        reason = f"run of {proposal.base_commit[:10]} scored val_bpb {val_bpb:.6f}"
        if best is not None and best.commit == proposal.base_commit:
            runs = self.store.calibration_runs(fingerprint).get(best.commit, []) if fingerprint else []
            mean = sum(runs) / len(runs) if runs else val_bpb
            self.store.set_best(
                best.model_copy(
                    update={
                        "val_bpb": mean,
                        "proposal_id": best.proposal_id or proposal.id,
                        "fingerprint_key": fingerprint,
                    }
                )
            )
            reason += f"; the best's score is now the mean of {max(1, len(runs))} runs: {mean:.6f}"
            self._record_root_runs(best.commit, scored, mean)
            self._release_waiting()
        else:
            self._record_root_runs(proposal.base_commit, scored, None)
        return self.store.transition(proposal.id, State.MERGED, reason)

    def _record_root_runs(self, commit: str, scored: list[RunResult], val_bpb: float | None) -> None:
        """Runs of the lineage's root (the baseline trainer) join the runs its note holds, as any
        merged commit's note holds all of its runs; while the root is the best, `val_bpb` (the mean of
        its runs) becomes its score. Runs already in the note (a retried decision) are not added twice."""
        entry = self.store.lineage_entry(commit)
        if entry is None or entry.proposal_id is not None:
            return
        earlier = _note_fields(self.repo.note(commit))
        if val_bpb is not None:
            memory = _peak_memory(scored)
            self.store.add_lineage(entry.model_copy(update={"val_bpb": val_bpb, "peak_memory_bytes": memory}))
        else:
            val_bpb, memory = earlier.get("val_bpb"), earlier.get("peak_memory_bytes")
        # in git too, so that a fresh Redis recovers the baseline's score with the lineage
        runs = _merged_runs(earlier.get("results"), _results_json(scored))
        note = {"val_bpb": val_bpb, "peak_memory_bytes": memory, "results": runs}
        self.repo.set_note(commit, json.dumps(note, indent=2, sort_keys=True))
        self.publish_bundle()

    def publish_bundle(self) -> None:
        """Store a fresh bundle of the branch for GET /v1/repo.bundle: its notes as agents may read
        them (`public_note`). A failure is logged, never raised: the verdict stands without it."""
        try:
            head, bundle = self.repo.bundle(self.public_note)
        except RepoError as exc:
            log.error("the repository bundle was not refreshed: %s", exc)
            return
        self.store.set_repo_bundle(head, bundle)

    def public_note(self, note: str) -> str | None:
        """A note as agents may read it: what the API shows an agent of the same record (scores at
        the agents' precision, no held-out test figures, no scorer timings, whole-second times).
        A note that is not the committer's JSON is left out."""
        data = _note_fields(note)
        if not data:
            return None
        public = Disclosure(admin=False, decimals=self.settings.controller.agent_score_decimals).data(data)
        return json.dumps(public, indent=2, sort_keys=True)

    def _remember_fingerprints(self, results: Iterable[RunResult]) -> None:
        for fingerprint in {r.fingerprint for r in results if r.fingerprint is not None}:
            self.store.add_fingerprint(fingerprint)

    def _release_waiting(self) -> None:
        while (raw := self.conn.lpop(WAITING_FOR_BASELINE)) is not None:
            queue.enqueue_decision(self.conn, raw.decode())

    def _keep_tried(self, proposal: Proposal, decision: Decision) -> str:
        """Keep the proposal's tried ref; "" or, when git failed, a note for the proposal's reason (the
        verdict stands without its ref)."""
        try:
            sha = self.repo.keep_tried(
                proposal.id,
                proposal.base_commit,
                proposal.train_py,
                _message(proposal, decision, self.settings.controller.agent_score_decimals),
                _note(proposal, decision),
            )
        except RepoError as exc:
            log.error("tried ref of %s not kept: %s", proposal.id, exc, extra={"proposal_id": proposal.id})
            return f" (its tried ref could not be kept: {exc})"
        self.store.update(proposal.id, tried_ref=sha)
        return ""


def _merged_runs(earlier: object, new: list[dict[str, object]]) -> list[object]:
    """The runs of a note followed by the new runs, each run (by its run_id) once."""
    if not isinstance(earlier, list):
        return list(new)
    fresh = {run.get("run_id") for run in new}
    kept = [run for run in earlier if not (isinstance(run, dict) and run.get("run_id") in fresh)]
    return [*kept, *new]


def _recorded_bpb(decision: Decision) -> float:
    """The score the branch records for a merged candidate: the posterior where the rule gave one
    (it shrinks the winner's curse), else the mean of its confirmation runs."""
    return decision.merged_bpb if decision.merged_bpb is not None else decision.candidate_bpb


def _runs_complete(proposal: Proposal) -> bool:
    if proposal.state == State.CONFIRMING:
        return bool(proposal.confirm_seeds) and len(proposal.baseline_results) == len(proposal.confirm_seeds)
    return len(proposal.results) == len(proposal.seeds) and all(
        r.val_bpb is not None for r in proposal.results
    )


def only_seed_changed(diff: str) -> bool:
    """True when every line the diff adds or removes mentions a seed: such a change cannot improve the
    model, only pick luck (the harness chooses seeds)."""
    changed = [
        line[1:] for line in split_lines(diff)
        if line[:1] in "+-" and not line.startswith(("+++", "---")) and line[1:].strip()
    ]  # fmt: skip
    return bool(changed) and all("seed" in line.lower() for line in changed)


def _fresh_seeds(count: int, exclude: set[int]) -> list[int]:
    """Unpredictable harness seeds, so that no proposal can be tuned to them."""
    seeds: list[int] = []
    while len(seeds) < count:
        seed = secrets.randbelow(2**31 - 1) + 1
        if seed not in exclude and seed not in seeds:
            seeds.append(seed)
    return seeds


def _val_scores(results: list[RunResult]) -> dict[str, float]:
    """run id → val_bpb of the scored runs (the calibration counts each run once, by its id)."""
    return {r.run_id: r.val_bpb for r in results if r.val_bpb is not None}


def _gaps(results: list[RunResult]) -> dict[str, float]:
    """run id → test_bpb − val_bpb of the runs that scored the test split."""
    return {
        r.run_id: r.test_bpb - r.val_bpb for r in results if r.test_bpb is not None and r.val_bpb is not None
    }


def _pair_group(proposal: Proposal) -> str:
    """A confirmation's paired differences share one effect: the proposal against its base."""
    return f"{proposal.id}@{proposal.base_commit}"


def _pair_diffs(candidate: list[RunResult], best: list[RunResult]) -> dict[str, float]:
    """candidate run id → val_bpb of the candidate − the best's on the same seed (both scored)."""
    return {
        c.run_id: c.val_bpb - b.val_bpb
        for c, b in zip(candidate, best, strict=False)
        if c.val_bpb is not None and b.val_bpb is not None and c.seed == b.seed
    }


def _mean(results: list[RunResult]) -> float:
    values = [r.val_bpb for r in results if r.val_bpb is not None]
    return sum(values) / len(values)


def _fingerprint_key(results: list[RunResult]) -> str | None:
    keys = {r.fingerprint.key() for r in results if r.fingerprint is not None}
    return keys.pop() if len(keys) == 1 else None


def _peak_memory(results: list[RunResult]) -> int | None:
    first = next((r for r in results if r.val_bpb is not None), None)
    return None if first is None else first.peak_memory_bytes


def _note_fields(note: str | None) -> dict[str, Any]:
    """The JSON object of a note the committer wrote; {} for none or anything else."""
    try:
        data = json.loads(note) if note else {}
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _lineage_from_git(
    info: CommitInfo, parent: str | None, position: int, note: str | None, proposal_id: str | None
) -> LineageEntry:
    """A lineage entry rebuilt from a branch commit: the proposal its merged ref names, and its note
    (agent, title, the decision and the runs, as `_note` wrote them). The root has no note and no
    proposal. A note written before notes carried the title leaves the commit's subject as title."""
    data = _note_fields(note)
    fields: dict[str, object] = {}
    try:
        if data.get("decision"):
            decision = Decision.model_validate(data["decision"])
            results = [RunResult.model_validate(r) for r in data.get("results", [])]
            fields = {"decision": decision, "val_bpb": decision.candidate_bpb, "delta_bpb": decision.delta_bpb,
                      "peak_memory_bytes": _peak_memory(results)}  # fmt: skip
        elif data.get("val_bpb") is not None:  # the root, scored by runs of it (`_score_root`)
            fields = {"val_bpb": float(data["val_bpb"]), "peak_memory_bytes": data.get("peak_memory_bytes")}
    except (ValidationError, AttributeError, TypeError, ValueError) as exc:
        log.warning("note of %s is unreadable (%s); lineage without its numbers", info.sha[:10], exc)
    title, agent = data.get("title"), data.get("agent")
    return LineageEntry(
        commit=info.sha, parent=parent, position=position, proposal_id=proposal_id,
        title=title if isinstance(title, str) else info.message.split("\n", 1)[0],
        agent=agent if isinstance(agent, str) and proposal_id else None,
        merged_at=info.committed_at if proposal_id else None, **fields,
    )  # fmt: skip


def _message(proposal: Proposal, decision: Decision, decimals: int) -> str:
    """The commit message; its scores at the agents' precision (`decimals`), since agents clone the
    branch (GET /v1/repo.bundle). The full figures are in the note and the API."""
    best = "none" if decision.best_bpb is None else f"{decision.best_bpb:.{decimals}f}"
    delta = "n/a" if decision.delta_bpb is None else f"{decision.delta_bpb:+.{decimals}f}"
    first = next((r for r in proposal.results if r.val_bpb is not None), None)
    memory_gb = (first.peak_memory_bytes or 0) / 1e9 if first else 0.0
    lines = [
        proposal.title,
        "",
        proposal.description.strip(),
        "",
        f"val_bpb: {decision.candidate_bpb:.{decimals}f} (best {best} at {decision.best_commit[:10]}, delta {delta})",
        f"rule: {decision.rule}; runs: {len(proposal.results)}; seeds: {[r.seed for r in proposal.results]}",
        f"steps: {first.steps if first else None}; memory_gb: {memory_gb:.1f}",
        "",
        f"Proposal-Id: {proposal.id}",
        f"Agent: {proposal.agent}",
    ]
    return "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1]))


def _results_json(results: list[RunResult]) -> list[dict[str, object]]:
    return [r.model_dump(mode="json", exclude={"log_tail", *TEST_RESULT_FIELDS}) for r in results]


def _decision_json(decision: Decision) -> dict[str, object]:
    """The decision as git keeps it: every field but the tripwire's test figures (`test_*`)."""
    test_fields = {name for name in Decision.model_fields if name.startswith("test_")}
    return decision.model_dump(mode="json", exclude=test_fields)


def _note(proposal: Proposal, decision: Decision) -> str:
    return json.dumps(
        {
            "proposal_id": proposal.id,
            "agent": proposal.agent,
            "title": proposal.title,
            "program_version": proposal.program_version,
            "decision": _decision_json(decision),
            "results": _results_json(proposal.results),
        },
        indent=2,
        sort_keys=True,
    )
