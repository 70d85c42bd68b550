"""Typed values that travel between controller, queue, worker and committer (as JSON in Redis)."""

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.states import State

PROPOSAL_ID_PREFIX = "p"  # a submitted change
RUN_ID_PREFIX = "r"  # runs of an existing commit, asked for by an admin
ID_HEX_DIGITS = 16  # of a uuid4: 64 random bits
# Every id the API issues for a proposal (either kind); clients check ids against it before use.
PROPOSAL_ID_PATTERN = rf"^[{PROPOSAL_ID_PREFIX}{RUN_ID_PREFIX}]_[0-9a-f]{{{ID_HEX_DIGITS}}}$"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:ID_HEX_DIGITS]}"


def now() -> float:
    return time.time()


RUN_SCORED = "scored"  # a run's outcome when it was trained and scored (RunResult.outcome)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Frozen):
    at: float
    state: State
    reason: str


class Fingerprint(Frozen):
    """What must be equal for two scores to be comparable."""

    gpu: str  # GPU model, or "cpu"
    driver: str
    environment_hash: str  # python, torch, CUDA, installed packages of the trainer image
    fixed_hash: str  # prepare.py, evaluate.py, tokenizer and data
    wall_clock_s: int
    evaluator_version: str
    # The CPU model where runs execute on the CPU (gpu "cpu"); "" on GPU workers. Left out of the key
    # while empty, so GPU fingerprints keep the keys their calibration runs are filed under.
    cpu: str = ""

    def key(self) -> str:
        import hashlib

        exclude = {"cpu"} if not self.cpu else None
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()[:16]


class StepTimings(Frozen):
    """Seconds spent in each part of one run, measured by the worker."""

    prepare_s: float = 0.0
    train_container_s: float = 0.0  # container create → exit
    collect_s: float = 0.0
    eval_container_s: float = 0.0


class RunResult(Frozen):
    """One training + evaluation of one train.py with one harness seed."""

    run_id: str
    proposal_id: str
    seed: int
    subject: Literal["candidate", "best"] = "candidate"  # best: a paired run of the proposal's base
    state: State  # evaluating on success (the decision comes later), else the failure state
    reason: str = ""
    val_bpb: float | None = None
    val_tokens: int | None = None
    val_bytes: int | None = None
    # The held-out test split, scored in the same pass for runs that can decide a merge (confirmation
    # runs, runs of commits); None when it was not scored. Never shown to agents.
    test_bpb: float | None = None
    test_tokens: int | None = None
    test_bytes: int | None = None
    steps: int | None = None
    tokens: int | None = None
    startup_s: float | None = None
    training_s: float | None = None
    peak_memory_bytes: int | None = None
    fingerprint: Fingerprint | None = None
    fixed_hashes: dict[str, str] = {}
    timings: StepTimings = StepTimings()
    scorer_timings: dict[str, float] = {}  # the trusted scorer's own split of evaluation (result.json)
    logits_slots: str = ""  # where the logits crossed from the model containers: GPU or host memory
    log_tail: str = ""
    finished_at: float = Field(default_factory=now)

    @property
    def outcome(self) -> str:
        """How the run ended: `scored` (its stored state stays `evaluating`, the state the proposal was
        in when it was scored), or its failure state."""
        return RUN_SCORED if self.state == State.EVALUATING else self.state.value


class Decision(Frozen):
    """Why a scored proposal was accepted, rejected or sent to confirmation, with all the numbers."""

    accepted: bool
    rule: str  # name and version of the rule that decided
    stage: Literal["screen", "confirm", "commit-run"] = "screen"
    confirm: bool = False  # a screening verdict that asks for confirmation runs
    candidate_bpb: float  # the candidate's score (mean of the runs the stage used)
    best_bpb: float | None
    best_commit: str
    delta_bpb: float | None  # candidate - best; negative is better
    sigma_bpb: float | None = None  # run-to-run noise used
    sigma_source: str = ""  # calibrated | prior
    threshold_bpb: float | None = None  # screen: the margin; confirm: the upper confidence bound of Δ
    candidate_runs: list[float] = []
    best_runs: list[float] = []
    seeds: list[int] = []
    params: dict[str, int | float] = {}  # counts stay integers (confirm_runs)
    reason: str
    decided_at: float = Field(default_factory=now)
    # The held-out test tripwire (rule test-gap/v1), run on a confirmation the val rule accepts. The
    # reason never holds a test figure; the figures are here, in fields named test_* (never shown to
    # agents, never written to git). g_i = (test_cand_i − test_best_i) − (val_cand_i − val_best_i).
    tripwire: Literal["passed", "blocked", "not-run"] = "not-run"
    test_candidate_runs: list[float] = []  # test_bpb of the candidate's paired runs (seeds as `seeds`)
    test_best_runs: list[float] = []  # ... and of the best's
    test_gaps: list[float] = []  # g_i per seed: the part of the val gain that test did not show
    test_gap_bpb: float | None = None  # mean(g)
    test_gap_sigma_bpb: float | None = None  # σ_g: √2 × the calibrated σ of one run's (test − val)
    test_gap_sigma_source: str = ""  # calibrated | prior
    test_n: int | None = None  # paired runs
    test_val_gain_bpb: float | None = None  # −mean(val_cand − val_best): the val gain being checked
    test_threshold_bpb: float | None = None  # z σ_g / √n + slack × val gain; blocked when mean(g) > it
    test_cumulative_gap_bpb: float | None = (
        None  # Σ mean(g) of the branch's steps since the root, with this one
    )
    test_cumulative_threshold_bpb: float | None = None  # z √(Σ σ_g²/n) + slack × Σ val gain
    test_cumulative_steps: int | None = None  # steps in those sums (merges with test figures, and this one)
    test_params: dict[str, int | float] = {}
    # Rule seq-bayes/v1 (services/committer/rules.py): a posterior over the candidate's effect Δ.
    more_runs: int = 0  # with confirm=True: the paired runs (candidate + best each) asked for next
    posterior: dict[str, float] = {}  # p_better = P(Δ < 0), mean_bpb, sd_bpb, lo_bpb / hi_bpb (5% / 95%), ...
    prior_version: str = ""  # the prior over Δ the posterior started from
    stopped: str = ""  # why the rule stopped (or went on): accept | reject-unlikely | reject-not-worth | ...
    merged_bpb: float | None = None  # the score the branch records if merged (None: candidate_bpb)


ProposalKind = Literal["proposal", "run"]


class Proposal(Frozen):
    """A candidate train.py (or a re-run of an existing commit) and everything that happened to it."""

    id: str
    kind: ProposalKind = "proposal"
    title: str
    description: str = ""
    agent: str
    program_version: int | None = None
    base_commit: str
    base_train_py: str  # the base's train.py, so a worker needs no shared file system
    train_py: str  # the candidate, as it will run
    diff: str  # unified diff base → candidate, as stored in git
    content_hash: str
    seeds: list[int]
    state: State = State.QUEUED
    reason: str = ""
    attempts: int = 0  # infrastructure retries used
    # State changes so far. With the id it names the run job of the proposal's current spell in
    # `queued` or `confirming` (queue.run_job_id), so every process that enqueues it names it alike.
    transitions: int = 0
    results: list[RunResult] = []  # the candidate's runs: screening first, then confirmation
    baseline_results: list[RunResult] = []  # fresh runs of the base, paired with confirmation seeds
    confirm_seeds: list[int] = []
    screening: Decision | None = None
    decision: Decision | None = None  # the latest verdict
    merged_commit: str | None = None
    tried_ref: str | None = None  # refs/autoresearch/tried/<id> points here
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)

    def gpu_seconds(self) -> float:
        """Accelerator time spent on this proposal: every training and evaluation container it ran,
        its paired runs of the best included."""
        runs = [*self.results, *self.baseline_results]
        return sum(r.timings.train_container_s + r.timings.eval_container_s for r in runs)


class Best(Frozen):
    """The head of the research branch and its score (None until the baseline run is scored)."""

    commit: str
    val_bpb: float | None
    proposal_id: str | None = None
    fingerprint_key: str | None = None
    updated_at: float = Field(default_factory=now)


class ProgramVersion(Frozen):
    """One version of program.md, the human's instructions to agents; versions count from 1."""

    version: int = Field(ge=1)
    text: str
    author: str  # the name of the token that set it ("repo" for the seed from the repository's file)
    message: str
    created_at: float = Field(default_factory=now)


class LineageEntry(Frozen):
    """One commit of the research branch, mirrored into the store by the committer (the controller has
    no git access). `position` counts from 0 at the root, so entries sort oldest first."""

    commit: str
    parent: str | None  # None for the root (the baseline trainer)
    position: int = Field(ge=0)
    proposal_id: str | None = None  # None for the root
    title: str
    agent: str | None = None
    val_bpb: float | None = None  # the decision's candidate score; the root: the mean of its runs
    delta_bpb: float | None = None  # val_bpb minus the parent's in the paired confirmation runs
    peak_memory_bytes: int | None = None
    decision: Decision | None = None
    merged_at: float | None = None  # seconds since the epoch; None for the root
