"""Request and response bodies of the HTTP API (pydantic only; separate from the stored models).

Request models forbid unknown fields, and their constraints are the validation: what /openapi.json
says a field may hold is what the server checks. Limits an operator sets (title, description and
patch sizes) come from Settings, so each app validates with models built for its settings by
`request_models`; the classes below hold the default limits and are the types the logic layer reads.

The character rules of free text (services/text.py) and the rules that need the store (a base commit
must exist, a diff must apply, train.py must compile) are checked by the logic layer, with messages
that say where the offending character or line is.
"""

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from services.controller.auth import Role
from services.models import Decision, Event, Fingerprint, LineageEntry, Proposal, RunResult
from services.settings import ControllerSettings, Settings
from services.states import State

COMMIT_PATTERN = r"^[0-9a-fA-F]{7,64}$"  # a full id or a prefix of at least 7 hex digits
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@:/+ -]*$"  # agent and token names: printable, no control chars
MAX_NAME_CHARS = 100
MAX_RUNS_PER_REQUEST = 32
PROGRAM_MAX_BYTES = 256 * 1024  # program.md is prose for agents; this is far above any sensible one
PROGRAM_MESSAGE_MAX_CHARS = 500

CommitRef = Annotated[
    str, Field(pattern=COMMIT_PATTERN, description="commit id or a prefix of >= 7 hex digits")
]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS, pattern=NAME_PATTERN)]


@dataclass(frozen=True)
class Limits:
    """The operator-set limits that request models enforce (and /openapi.json states)."""

    title_chars: int
    description_chars: int
    patch_bytes: int  # UTF-8 bytes of a train.py or a diff

    @classmethod
    def of(cls, settings: Settings) -> "Limits":
        return cls.of_group(settings.controller)

    @classmethod
    def of_group(cls, controller: ControllerSettings) -> "Limits":
        return cls(controller.max_title_chars, controller.max_description_chars, controller.max_patch_bytes)


DEFAULT_LIMITS = Limits.of_group(ControllerSettings.defaults())

# A trainer small enough to read in the schema; it compiles and differs from any real base, so the
# example submit succeeds (and queues a run that trains nothing useful).
EXAMPLE_TRAIN_PY = """\
import os

LEARNING_RATE = 0.002  # per step


def build_model(config):
    raise NotImplementedError("an example submit: replace with the whole trainer/train.py")


if __name__ == "__main__":
    print("seed", os.environ.get("AR_SEED"), LEARNING_RATE)
"""


def title_field(max_chars: int, *, what: str = "one line: what the change is", default: Any = ...) -> Any:
    return Field(
        default, min_length=1, max_length=max_chars, description=f"{what}; at most {max_chars} characters"
    )


def description_field(max_chars: int, *, what: str = "why it should help") -> Any:
    return Field("", max_length=max_chars, description=f"{what}; at most {max_chars} characters")


def patch_field(max_bytes: int, what: str) -> Any:
    """A train.py or a diff: at most `max_bytes` bytes of UTF-8. A JSON schema counts characters, so it
    says `maxLength: max_bytes` (each character is at least one byte); the byte count itself is checked
    by services/patches.py, which names the field and the limit."""
    return Field(
        None,
        max_length=max_bytes,
        description=f"{what}; at most {max_bytes} bytes of UTF-8",
        json_schema_extra={"x-max-bytes": max_bytes},
    )


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


# Exactly one of the two texts (null counts as absent), as the model's validator checks.
ONE_OF_FILE_OR_DIFF: list[JsonValue] = [
    {"required": [field], "properties": {field: {"type": "string"}}} for field in ("train_py", "diff")
]


class SubmitProposal(Request):
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": ONE_OF_FILE_OR_DIFF,
            "examples": [
                {
                    "title": "double the learning rate",
                    "description": "the loss still falls steeply at the end of the 5 minutes",
                    "agent": "example-agent",
                    "train_py": EXAMPLE_TRAIN_PY,
                }
            ],
        }
    )

    title: str = title_field(DEFAULT_LIMITS.title_chars)
    description: str = description_field(DEFAULT_LIMITS.description_chars)
    agent: Name = Field(description="who proposes it (an agent's or a person's name)")
    program_version: int | None = Field(None, ge=0, description="the program.md version it worked from")
    base_commit: CommitRef | None = Field(None, description="default: the current best commit")
    train_py: str | None = patch_field(DEFAULT_LIMITS.patch_bytes, "the whole candidate trainer/train.py")
    diff: str | None = patch_field(
        DEFAULT_LIMITS.patch_bytes, "a unified diff of trainer/train.py against base_commit"
    )

    @model_validator(mode="after")
    def _one_of_file_or_diff(self) -> "SubmitProposal":
        if (self.train_py is None) == (self.diff is None):
            raise ValueError("send exactly one of `train_py` (the whole file) or `diff` (a unified diff)")
        return self


class RequestRuns(Request):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"count": 2, "seeds": [7, 8], "title": "calibrate the noise"}]}
    )

    commit: CommitRef | None = Field(None, description="default: the current best commit")
    count: int = Field(1, ge=1, le=MAX_RUNS_PER_REQUEST, description="how many runs, each with its own seed")
    seeds: list[int] | None = Field(
        None,
        max_length=MAX_RUNS_PER_REQUEST,
        description="one distinct seed per run (as many as count); default first_seed, +1, ...",
    )
    title: str | None = title_field(
        DEFAULT_LIMITS.title_chars, what="one line; default: what is run", default=None
    )
    description: str = description_field(DEFAULT_LIMITS.description_chars, what="why")

    @model_validator(mode="after")
    def _seeds_match_count(self) -> "RequestRuns":
        if self.seeds is not None:
            if len(self.seeds) != self.count:
                raise ValueError(f"seeds has {len(self.seeds)} entries; give exactly count={self.count}")
            if len(set(self.seeds)) != len(self.seeds):
                raise ValueError("seeds must be distinct")
        return self


class CreateToken(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "agent-1", "role": "agent"}]})

    name: Name
    role: Role = Role.AGENT


class PutProgram(Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "text": "# program\n\nImprove val_bpb within the 5-minute budget; one idea per proposal.\n",
                    "message": "ask for one idea per proposal",
                }
            ]
        }
    )

    text: str = Field(
        min_length=1,
        max_length=PROGRAM_MAX_BYTES,
        description=f"the whole new program.md; at most {PROGRAM_MAX_BYTES} bytes of UTF-8",
        json_schema_extra={"x-max-bytes": PROGRAM_MAX_BYTES},
    )
    message: str = Field(
        min_length=1,
        max_length=PROGRAM_MESSAGE_MAX_CHARS,
        description=f"one line: what changed and why; at most {PROGRAM_MESSAGE_MAX_CHARS} characters",
    )


def request_models(limits: Limits) -> dict[type[Request], type[Request]]:
    """Each request model as this app validates it: the classes above with the operator's limits. A
    built model subclasses its class, so handlers and the logic layer keep their types."""
    if limits == DEFAULT_LIMITS:
        return {model: model for model in (SubmitProposal, RequestRuns, CreateToken, PutProgram)}

    class SubmitProposalLimited(SubmitProposal):
        model_config = ConfigDict(title="SubmitProposal")
        title: str = title_field(limits.title_chars)
        description: str = description_field(limits.description_chars)
        train_py: str | None = patch_field(limits.patch_bytes, "the whole candidate trainer/train.py")
        diff: str | None = patch_field(
            limits.patch_bytes, "a unified diff of trainer/train.py against base_commit"
        )

    class RequestRunsLimited(RequestRuns):
        model_config = ConfigDict(title="RequestRuns")
        title: str | None = title_field(
            limits.title_chars, what="one line; default: what is run", default=None
        )
        description: str = description_field(limits.description_chars, what="why")

    return {
        SubmitProposal: SubmitProposalLimited,
        RequestRuns: RequestRunsLimited,
        CreateToken: CreateToken,
        PutProgram: PutProgram,
    }


# ---------------------------------------------------------------------------- responses


class ProposalSummary(BaseModel):
    """A row of a listing: no file contents."""

    id: str
    kind: str
    title: str
    agent: str
    state: State
    reason: str
    base_commit: str
    val_bpb: float | None
    merged_commit: str | None
    gpu_seconds: float = Field(description="training + evaluation container seconds of all its runs")
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, p: Proposal) -> "ProposalSummary":
        return cls(
            id=p.id,
            kind=p.kind,
            title=p.title,
            agent=p.agent,
            state=p.state,
            reason=p.reason,
            base_commit=p.base_commit,
            val_bpb=score_of(p),
            merged_commit=p.merged_commit,
            gpu_seconds=p.gpu_seconds(),
            created_at=p.created_at,
            updated_at=p.updated_at,
        )


class ProposalDetail(BaseModel):
    """Everything stored about a proposal, with its event history."""

    id: str
    kind: str
    title: str
    description: str
    agent: str
    program_version: int | None
    base_commit: str
    state: State
    reason: str
    seeds: list[int]
    attempts: int
    val_bpb: float | None
    results: list[RunResult]
    baseline_results: list[RunResult] = Field(
        [], description="fresh runs of the base commit, paired with the confirmation runs by seed"
    )
    confirm_seeds: list[int] = []
    screening: Decision | None = Field(None, description="the screening verdict that asked for confirmation")
    decision: Decision | None
    merged_commit: str | None
    tried_ref: str | None = Field(None, description="the commit refs/autoresearch/tried/<id> points to")
    gpu_seconds: float = Field(description="training + evaluation container seconds of all its runs")
    content_hash: str
    diff: str
    train_py: str
    events: list[Event]
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, p: Proposal, events: list[Event]) -> "ProposalDetail":
        fields = p.model_dump(exclude={"base_train_py"})
        return cls(**fields, val_bpb=score_of(p), gpu_seconds=p.gpu_seconds(), events=events)


class ProposalPage(BaseModel):
    items: list[ProposalSummary]
    total: int
    offset: int
    limit: int


class BestView(BaseModel):
    commit: str
    val_bpb: float | None = Field(description="the score recorded when it became the best")
    proposal_id: str | None
    updated_at: float
    train_py: str
    best_runs: list[float] = Field(
        default=[], description="its runs on its fingerprint since: its own, and its halves of paired runs"
    )
    remeasured_bpb: float | None = Field(
        default=None, description="the mean of best_runs: the best re-measured, to set against val_bpb"
    )


class LeaderboardRow(BaseModel):
    id: str
    title: str
    agent: str
    val_bpb: float | None
    state: State
    merged_commit: str | None
    delta: float | None = Field(description="val_bpb minus the best's at decision time; negative is better")
    fingerprint: str | None = Field(None, description="the fingerprint key of the board this row is on")


class StatusView(BaseModel):
    queues: dict[str, int]
    states: dict[str, int]
    best_commit: str | None
    best_val_bpb: float | None
    gpu_seconds_total: float = Field(description="container seconds of every stored run")
    merged_improvements: int = Field(description="agent proposals merged onto the research branch")
    gpu_seconds_per_improvement: float | None = Field(
        description="gpu_seconds_total / merged_improvements; null before the first merge"
    )


class TokenCreated(BaseModel):
    token: str = Field(description="shown once; only its hash is stored")
    name: str
    role: Role


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    best_commit: str


class FingerprintView(BaseModel):
    key: str
    fingerprint: Fingerprint | None = Field(description="the fields the key hashes; null if not recorded")
    scored: int = Field(description="proposals on this fingerprint's leaderboard")
    best: bool = Field(description="the current best was scored on this fingerprint")


class CalibrationView(BaseModel):
    key: str
    fingerprint: Fingerprint | None
    sigma_bpb: float = Field(description="run-to-run σ of val_bpb the committer uses now")
    source: str = Field(description="calibrated (pooled over runs of branch commits) or prior")
    runs: int = Field(description="runs of branch commits on this fingerprint")
    dof: int = Field(description="degrees of freedom of the pooled σ: Σ (runs of a commit − 1)")
    commits: int = Field(description="branch commits with runs on this fingerprint")


LineageView = LineageEntry  # stored and served as it is: no file contents in it


def score_of(p: Proposal) -> float | None:
    """The decision's candidate score, else the mean of the scored runs, else None."""
    if p.decision is not None:
        return p.decision.candidate_bpb
    scores = [r.val_bpb for r in p.results if r.val_bpb is not None]
    return sum(scores) / len(scores) if scores else None


# ---------------------------------------------------------------------------- program.md


class ProgramView(BaseModel):
    version: int
    text: str
    author: str
    message: str
    created_at: float


class ProgramVersionSummary(BaseModel):
    version: int
    author: str
    message: str
    created_at: float
    bytes: int = Field(description="size of the text in UTF-8 bytes")


class ProgramVersionDetail(ProgramView):
    diff: str = Field(description="unified diff from the previous version (for version 1: the whole text)")


class ProgramStatsRow(BaseModel):
    version: int | None = Field(description="None: proposals that named no program_version")
    proposals: int
    scored: int = Field(description="decided on their score: merged, accepted or rejected")
    merged: int
    failed: int = Field(description="crashed, timed_out, oom, voided, infra_error or cancelled")
    win_rate: float | None = Field(description="merged / scored")
    mean_delta_bpb: float | None = Field(
        description="mean val_bpb minus the best's at decision; negative is better"
    )
