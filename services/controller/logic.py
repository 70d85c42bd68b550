"""What the controller does, without HTTP: routes parse, call one function here, and map errors.

Imports no FastAPI. Every failure is a ServiceError from services.errors (or NotReady below), which
the app maps to problem+json in one place.
"""

import difflib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from services.controller import quotas
from services.controller.auth import Principal
from services.controller.schemas import (
    PROGRAM_MAX_BYTES,
    PROGRAM_MESSAGE_MAX_CHARS,
    RequestRuns,
    SubmitProposal,
)
from services.errors import (
    InvalidProgram,
    NotFound,
    NotReady,
    ProposalError,
    UnknownBase,
    UnknownProgramVersion,
)
from services.models import (
    PROPOSAL_ID_PREFIX,
    RUN_ID_PREFIX,
    Best,
    Event,
    ProgramVersion,
    Proposal,
    RunResult,
    new_id,
)
from services.patches import candidate_text, content_hash, finish_candidate, prepare_base
from services.queue import enqueue_run, queue_keys
from services.settings import Settings
from services.states import State
from services.store import SUBMITTED_REASON, StatusRead, Store, stats
from services.text import check_multiline, check_one_line

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50  # rows per page when the client does not say

PROGRAM_SEED_AUTHOR = "repo"  # author of version 1, seeded from the repository's program.md


@dataclass(frozen=True)
class Base:
    commit: str
    train_py: str


# ---------------------------------------------------------------------------- proposals


def submit_proposal(
    store: Store,
    settings: Settings,
    principal: Principal,
    body: SubmitProposal,
    idempotency_key: str | None = None,
) -> tuple[Proposal, bool]:
    """Validate, deduplicate, store and enqueue; return (proposal, created). Nothing is stored or
    enqueued unless the whole submission is valid; a replay or a duplicate is returned as it is."""
    conn = store.r  # the queues and quotas share the store's Redis
    idem = None
    if idempotency_key is not None:
        idem = (_idempotency_owner(principal), idempotency_key, request_hash(body))
    if idem is not None and (replay := store.idempotent(*idem)) is not None:
        if replay.state == State.QUEUED:  # its first controller may have died before enqueueing it
            enqueue_run(conn, replay.id, settings.runs.run_budget_s, replay.transitions)
        return replay, False
    _check_text(body.title, body.description)
    if body.program_version is not None:
        check_program_version(store, body.program_version)
    base = resolve_base(store, body.base_commit, "base_commit")
    text = candidate_text(
        base.train_py, train_py=body.train_py, diff=body.diff, max_bytes=settings.controller.max_patch_bytes
    )
    text_hash = content_hash(base.commit, text)
    duplicate = store.duplicate(base.commit, text_hash)
    if duplicate is not None:  # answered before compiling: it compiled when it was stored
        if quotas.applies_to(
            principal
        ):  # a duplicate counts towards the rate (services/controller/quotas.py)
            quotas.count_submit(conn, principal, settings.controller.submits_per_minute)
        return _submitted(conn, settings, principal, body, base, duplicate, False)
    candidate = finish_candidate(base.train_py, text, text_hash)
    proposal = Proposal(
        id=new_id(PROPOSAL_ID_PREFIX),
        title=body.title,
        description=body.description,
        agent=body.agent,
        program_version=body.program_version,
        base_commit=base.commit,
        base_train_py=base.train_py,
        train_py=candidate.train_py,
        diff=candidate.diff,
        content_hash=candidate.content_hash,
        seeds=[settings.runs.first_seed],
    )
    if quotas.applies_to(principal):  # after validation: a rejected submission writes nothing
        with quotas.submit_place(
            conn, principal, proposal.id, limit=settings.controller.max_queued_per_token,
            per_minute=settings.controller.submits_per_minute, retry_after_s=settings.runs.run_budget_s,
        ) as place:  # fmt: skip
            stored, created = store.create(proposal, dedupe=True, idempotency=idem, also=place.keep)
            place.kept = created
    else:
        stored, created = store.create(proposal, dedupe=True, idempotency=idem)
    settings.pauses.reached("submit:stored")  # test-only kill point (services/faults.py); inert
    return _submitted(conn, settings, principal, body, base, stored, created)


def _submitted(
    conn: "redis.Redis[bytes]", settings: Settings, principal: Principal, body: SubmitProposal, base: Base,
    stored: Proposal, created: bool,
) -> tuple[Proposal, bool]:  # fmt: skip
    if stored.state == State.QUEUED:  # a replay too: its first controller may have died before this
        enqueue_run(conn, stored.id, settings.runs.run_budget_s, stored.transitions)
    if created:
        log.info(
            "proposal %s from %s (token %s) queued on %s",
            stored.id,
            body.agent,
            principal.name,
            base.commit[:12],
            extra={"proposal_id": stored.id, "agent": body.agent, "program_version": body.program_version},
        )
    else:
        log.info("submit returned the existing proposal %s", stored.id, extra={"proposal_id": stored.id})
    return stored, created


def submitted_events(store: Store, proposal: Proposal, created: bool) -> list[Event]:
    """The events to answer a submit with: a proposal just created has the one `Store.create` wrote
    (no read needed); a duplicate or a replay has its history read."""
    if created:
        return [Event(at=proposal.created_at, state=proposal.state, reason=SUBMITTED_REASON)]
    return store.events(proposal.id)


def get_proposal(store: Store, proposal_id: str) -> tuple[Proposal, list[Event]]:
    return store.get(proposal_id), store.events(proposal_id)


def page_size(settings: Settings, limit: int | None) -> int:
    """The requested page size, or the default; above settings.controller.page_size_max is an error, not a clamp,
    so a client never mistakes a short page for the end."""
    if limit is None:
        return min(DEFAULT_PAGE_SIZE, settings.controller.page_size_max)
    if limit > settings.controller.page_size_max:
        raise ProposalError(
            f"limit {limit} is above the maximum page size {settings.controller.page_size_max}; page with offset"
        )
    return limit


def list_proposals(
    store: Store, settings: Settings, state: State | None, offset: int, limit: int | None
) -> tuple[list[Proposal], int, int]:
    """(proposals newest first, total matching, the page size used)."""
    size = page_size(settings, limit)
    proposals, total = store.page(state, offset, size)
    return proposals, total, size


def proposal_log(
    store: Store,
    proposal_id: str,
    score: Callable[[float | None], str] = lambda v: "-" if v is None else f"{v:.6f}",
    text: Callable[[str], str] = lambda t: t,
) -> str:
    """The kept log tail of each finished run under a header (who ran: the candidate or the best, the
    seed, the outcome and the score) and above a closing line with the outcome and score. Paired runs
    come best first, so the candidate's run, and its score, end the log. `score` and `text` write
    figures as the caller may see them."""
    proposal = store.get(proposal_id)
    runs = ordered_runs(proposal)
    if not runs:
        return f"# no finished runs yet; proposal {proposal.id} is {proposal.state}\n"
    parts = []
    for run in runs:
        result = run.result
        reason = f": {text(result.reason)}" if result.reason else ""
        header = (
            f"# ---- run {result.run_id} · {run.role} · seed {result.seed} · {result.outcome} · "
            f"val_bpb {score(result.val_bpb)}{reason}"
        )
        tail = (
            result.log_tail
            if result.log_tail.endswith("\n") or not result.log_tail
            else result.log_tail + "\n"
        )
        closing = f"# ---- end of run {result.run_id} ({run.role}): {result.outcome}, val_bpb {score(result.val_bpb)}"
        parts.append(f"{header}\n{tail}{closing}\n")
    return "\n".join(parts)


@dataclass(frozen=True)
class RunOfProposal:
    role: str  # "candidate (screening)", "best 0123456789 (paired, confirmation 1/3)", ...
    result: RunResult


def ordered_runs(proposal: Proposal) -> list[RunOfProposal]:
    """A proposal's finished runs in reading order: its screening runs, then each confirmation pair
    with the best's run first and the candidate's after it, so a log ends with the candidate."""
    if proposal.kind == "run":
        return [RunOfProposal(f"commit {proposal.base_commit[:10]}", r) for r in proposal.results]
    screening = proposal.results[: len(proposal.seeds)]
    confirmation = proposal.results[len(proposal.seeds) :]
    total = len(proposal.confirm_seeds) or len(confirmation)
    runs = [RunOfProposal("candidate (screening)", r) for r in screening]
    for i in range(max(len(confirmation), len(proposal.baseline_results))):
        step = f"confirmation {i + 1}/{total}"
        if i < len(proposal.baseline_results):
            best = proposal.baseline_results[i]
            runs.append(RunOfProposal(f"best {proposal.base_commit[:10]} (paired, {step})", best))
        if i < len(confirmation):
            runs.append(RunOfProposal(f"candidate ({step})", confirmation[i]))
    return runs


def cancel_proposal(store: Store, principal: Principal, proposal_id: str) -> Proposal:
    proposal = store.cancel(proposal_id, f"cancelled by {principal.name}")
    log.info("proposal %s cancelled by %s", proposal_id, principal.name, extra={"proposal_id": proposal_id})
    return proposal


# ---------------------------------------------------------------------------- runs of a commit


def request_runs(store: Store, settings: Settings, principal: Principal, body: RequestRuns) -> Proposal:
    """Runs of an existing commit (baseline, calibration, re-runs): one proposal of kind "run" holding
    every seed, never deduplicated."""
    conn = store.r
    base = resolve_base(store, body.commit, "commit")
    title = body.title or f"{body.count} run(s) of {base.commit[:12]}"
    _check_text(title, body.description)
    seeds = (
        body.seeds if body.seeds is not None else [settings.runs.first_seed + i for i in range(body.count)]
    )
    proposal = Proposal(
        id=new_id(RUN_ID_PREFIX),
        kind="run",
        title=title,
        description=body.description,
        agent=principal.name,
        base_commit=base.commit,
        base_train_py=base.train_py,
        train_py=base.train_py,
        diff="",
        content_hash=content_hash(base.commit, base.train_py),
        seeds=seeds,
    )
    stored, _ = store.create(proposal, dedupe=False)
    enqueue_run(conn, stored.id, settings.runs.run_budget_s * len(seeds), stored.transitions)
    log.info(
        "runs %s of %s with seeds %s requested by %s",
        stored.id,
        base.commit[:12],
        seeds,
        principal.name,
        extra={"proposal_id": stored.id},
    )
    return stored


# ---------------------------------------------------------------------------- best, leaderboard, status


def resolve_base(store: Store, ref: str | None, field: str) -> Base:
    """The commit `ref` names (full id or a prefix of >= 7 hex digits), or the current best; `field`
    is the request's name for it, which the error names."""
    if ref is None:
        best = current_best(store)
        commit = best.commit
    else:
        resolved = store.resolve_commit(ref.lower())
        if resolved is None:
            raise UnknownBase(
                f"{field} {ref!r} is unknown: no commit on the research branch starts with it (or several "
                f"do); omit {field} to use the current best (GET /v1/best)"
            )
        commit = resolved
    train_py = store.commit_train_py(commit)
    if train_py is None:
        raise NotReady(
            f"commit {commit} is known but its train.py is missing from the store; try again shortly"
        )
    return Base(commit, train_py)


def warm_up(store: Store) -> None:
    """At start-up: read the best's train.py and prepare it for submits (`patches.prepare_base`), so the
    first submit on it does not pay for parsing and compiling it. Nothing when there is no best yet."""
    best = store.get_best()
    train_py = None if best is None else store.commit_train_py(best.commit)
    if train_py is not None:
        prepare_base(train_py)


def current_best(store: Store) -> Best:
    best = store.get_best()
    if best is None:
        raise NotReady(
            "no best commit yet: the research repo has not been initialised (the committer creates it and "
            "runs the baseline on first start); try again later"
        )
    return best


def best_train_py(store: Store) -> tuple[Best, str]:
    best = current_best(store)
    train_py = store.commit_train_py(best.commit)
    if train_py is None:
        raise NotReady(f"the best commit {best.commit} has no train.py in the store yet; try again shortly")
    return best, train_py


def best_runs(store: Store, best: Best) -> list[float]:
    """The best commit's runs on its fingerprint, as the committer's reference reads them: its own runs
    and its halves of every paired run since it became the best."""
    if best.fingerprint_key is None:
        return []
    return store.calibration_runs(best.fingerprint_key).get(best.commit, [])


def leaderboard(store: Store, settings: Settings, limit: int | None) -> list[Proposal]:
    return store.leaderboard(page_size(settings, limit))


def readiness(store: Store) -> Best:
    """Redis answers and a best commit exists; else NotReady / StoreUnavailable with the reason."""
    store.ping()
    best, _ = best_train_py(store)
    return best


def status(store: Store) -> StatusRead:
    """Queue depths, proposals per state, the counters and the best: one round trip to Redis."""
    return store.status(queue_keys())


# ---------------------------------------------------------------------------- program.md


@dataclass(frozen=True)
class ProgramStats:
    """How the proposals made from one program.md version fared (`version` None: made from none)."""

    version: int | None
    proposals: int
    scored: int  # a decision was made: accepted, merged or rejected on its score
    merged: int
    failed: int  # crashed, timed out, out of memory, voided, infrastructure error or cancelled
    win_rate: float | None  # merged / scored
    mean_delta_bpb: float | None  # mean of the decisions' val_bpb deltas; negative is better


def seed_program(store: Store, path: Path | None) -> ProgramVersion | None:
    """Make version 1 from the repository's program.md when the store holds no version yet."""
    current = store.program_version()
    if current is not None or path is None:
        return current
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("program.md not seeded: cannot read %s (%s); an admin can PUT /v1/program", path, exc)
        return None
    check_program_text(text)
    version, created = store.add_program_version(
        text, PROGRAM_SEED_AUTHOR, f"seeded from {path.name}", only_if_empty=True
    )
    if created:
        log.info("program.md version 1 seeded from %s", path)
    return version


def current_program(store: Store) -> ProgramVersion:
    version = store.program_version()
    if version is None:
        raise NotFound("no program.md yet: an admin sets one with PUT /v1/program")
    return version


def program_version(store: Store, version: int) -> tuple[ProgramVersion, str]:
    """The version and the unified diff from the version before it (the whole text added, for 1)."""
    found = store.program_version(version)
    if found is None:
        raise NotFound(f"no program.md version {version}; list them with GET /v1/program/versions")
    previous = store.program_version(version - 1) if version > 1 else None
    return found, program_diff(previous, found)


def program_diff(previous: ProgramVersion | None, current: ProgramVersion) -> str:
    lines = difflib.unified_diff(
        "" if previous is None else previous.text.splitlines(keepends=True),
        current.text.splitlines(keepends=True),
        fromfile="/dev/null" if previous is None else f"program.md@{previous.version}",
        tofile=f"program.md@{current.version}",
    )
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )


def set_program(store: Store, principal: Principal, text: str, message: str) -> tuple[ProgramVersion, bool]:
    """Store a new version (admin); text identical to the current version returns that version."""
    check_program_text(text)
    message = message.strip()
    check_one_line(message, "message")
    if not message or len(message) > PROGRAM_MESSAGE_MAX_CHARS:
        raise InvalidProgram(
            f"message must be one non-empty line of at most {PROGRAM_MESSAGE_MAX_CHARS} characters "
            "saying what changed"
        )
    version, created = store.add_program_version(text, principal.name, message)
    if created:
        log.info("program.md version %d set by %s: %s", version.version, principal.name, message)
    return version, created


def check_program_text(text: str) -> None:
    if not text.strip():
        raise InvalidProgram("text is empty; send the whole program.md")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidProgram(
            f"text is not valid UTF-8: character {exc.start} is a lone surrogate; send UTF-8 text"
        ) from exc
    if size > PROGRAM_MAX_BYTES:
        raise InvalidProgram(f"text is {size} bytes of UTF-8; the limit is {PROGRAM_MAX_BYTES} bytes")
    bad = next((c for c in text if ord(c) < 32 and c not in "\t\n\r"), None)
    if bad is not None:
        line = text.count("\n", 0, text.index(bad)) + 1
        raise InvalidProgram(f"text holds the control character U+{ord(bad):04X} on line {line}; remove it")


def check_program_version(store: Store, version: int) -> None:
    if store.program_version(version) is None:
        current = store.program_version()
        latest = "there is none yet" if current is None else f"the current one is {current.version}"
        raise UnknownProgramVersion(
            f"program_version {version} does not exist ({latest}); send the version you read "
            "(GET /v1/program) or leave it out"
        )


def program_stats(store: Store) -> list[ProgramStats]:
    """One row per program.md version, oldest first, then a row for proposals that named none (if
    any). Counts agent proposals only, not runs of commits; read from the store's counters."""
    counters, _ = store.stats()
    versions: list[int | None] = [v.version for v in store.program_versions()]
    named = {int(f.split(":")[1]) for f in counters if f.startswith("program:") and f.split(":")[1].isdigit()}
    rows: list[int | None] = sorted(set(versions) | named)  # type: ignore[type-var]
    if counters.get(stats.program_field(None, "proposals")):
        rows.append(None)
    return [_stats_row(version, counters) for version in rows]


def _stats_row(version: int | None, counters: dict[str, float]) -> ProgramStats:
    def count(what: str) -> int:
        return int(counters.get(stats.program_field(version, what), 0))

    scored, merged, deltas = count("scored"), count("merged"), count("deltas")
    delta_sum = counters.get(stats.program_field(version, "delta_sum_bpb"), 0.0)
    return ProgramStats(
        version=version,
        proposals=count("proposals"),
        scored=scored,
        merged=merged,
        failed=count("failed"),
        win_rate=merged / scored if scored else None,
        mean_delta_bpb=delta_sum / deltas if deltas else None,
    )


# ---------------------------------------------------------------------------- helpers


def _check_text(title: str, description: str) -> None:
    """Titles and descriptions go into commit messages: printable text only (services/text.py). Their
    lengths are the request models' constraints (schemas.request_models)."""
    check_one_line(title, "title")
    check_multiline(description, "description")


def request_hash(body: SubmitProposal) -> str:
    """What an Idempotency-Key is bound to: the submit's fields as validated (so key order and JSON
    whitespace do not matter)."""
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


def _idempotency_owner(principal: Principal) -> str:
    """Idempotency keys are scoped per token, so two agents cannot collide (or probe each other).
    Checked before validating again: the default base may have moved since, and a retry must still
    get its first answer."""
    return principal.token_hash[:32]
