"""Schemathesis against the controller's own /openapi.json: a live controller (uvicorn, real HTTP) over
a real Redis (a database of its own, flushed before and after), fuzzed as an admin, as an agent and
with no token.

Per operation and caller:
- schemathesis' coverage cases: boundary values, wrong types, missing and extra fields, methods the
  operation does not have (deterministic, a few dozen per operation);
- Hypothesis-generated requests, valid and invalid (`EXAMPLES[caller]` of each);
- for operations under /v1/proposals/{proposal_id}, the same again with the id of a stored proposal
  (with a live log), so that the fuzz gets past the 404 into the handlers.

Every answer is checked for: no 5xx and no dropped connection (`not_a_server_error`); status code,
content type, headers and body as /openapi.json documents them; and every 4xx as RFC 9457 problem
details (application/problem+json with type, title, status, detail), as docs/architecture.md, "API", says.
`test_stateful_fuzz_with_every_check` runs the schemathesis CLI's stateful phase with `--checks all`
(positive and negative data, auth, Allow headers, resources that links lead to included), following the
schema's links from created proposals, runs and program versions; schemathesis.toml names the few
statuses the schema cannot rule out. The by-hand run of every phase is bench/fuzz_api.py.

Nothing is excluded. The two event streams (/v1/events, /v1/proposals/{id}/log/stream) never end
while their proposal runs, so schemathesis reads them for `STREAM_READ_S` and checks what came; they
get fewer examples since an open stream costs that long per case.

The test prints `schemathesis: N cases over M operations, E server errors ...` and writes the
figures, with any failures and a curl command for each, to test-output/schemathesis.json. Both fuzz
tests take their seed from the code under test (tests/integration/schemathesis_cli.py: the first 8 hex
digits of HEAD) and print it; a failure replays with

    AR_FUZZ_SEED=<the printed seed> .venv/bin/python -m pytest tests/integration/test_fuzz_api.py

The tests after them are one regression test per bug the fuzz found.
"""

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.controller.problems import PROBLEM_JSON
from services.store import Store, connect
from tests.integration.schemathesis_cli import default_seed, run_schemathesis
from tests.support.api import assert_problem
from tests.support.live_server import ADMIN, agent_token, seed, serve, settings_for, stored_proposal

FUZZ_DB = 9  # a Redis database of its own: nothing another test reads or flushes
EXAMPLES = {"admin": 60, "agent": 25, "none": 10}  # Hypothesis examples per operation, caller and mode
STREAM_EXAMPLES = 5  # per stream operation, caller and mode: an open stream costs STREAM_READ_S
STREAM_READ_S = 0.3  # how long one case reads an event stream (keepalives come every 0.2 s)
REQUEST_TIMEOUT_S = 30.0  # any other request
STREAM_PATHS = {"/v1/events", "/v1/proposals/{proposal_id}/log/stream"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
REPORTED_FAILURES = 10  # distinct failures shown in the assertion message
OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "schemathesis.json"  # git-ignored


@dataclass
class Tally:
    """Every case sent, and every failure, keyed so that one bug repeated reads as one line."""

    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: int = 0
    failures: Counter[tuple[str, ...]] = field(default_factory=Counter)
    examples: dict[tuple[str, ...], dict[str, str]] = field(default_factory=dict)
    server_error_keys: set[tuple[str, ...]] = field(default_factory=set)

    def fail(
        self, key: tuple[str, ...], case: Case, headers: dict[str, str], what: str, *, server: bool = False
    ) -> None:
        self.failures[key] += 1
        self.examples.setdefault(key, {"what": what[:600], "curl": _curl(case, headers)})
        if server:
            self.server_error_keys.add(key)

    def ranked(self) -> list[tuple[tuple[str, ...], int]]:
        """Server errors first, then the most frequent."""
        return sorted(
            self.failures.items(), key=lambda item: (item[0] not in self.server_error_keys, -item[1])
        )

    def report(self) -> str:
        lines = [f"{n}x {' | '.join(key)}\n   {self.examples[key]}" for key, n in self.ranked()]
        return "\n".join(lines[:REPORTED_FAILURES])


def _curl(case: Case, headers: dict[str, str]) -> str:
    try:
        return case.as_curl_command(headers=headers)[:600]
    except Exception as exc:  # a case schemathesis cannot print still counts; say why it has no command
        return f"(no curl command: {exc})"


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def fuzz_store(redis_url: str) -> Iterator[Store]:
    client = connect(redis_url.rsplit("/", 1)[0] + f"/{FUZZ_DB}")
    client.flushdb()
    yield seed(Store(client))
    client.flushdb()
    client.close()


@pytest.fixture
def fuzz_url(redis_url: str, fuzz_store: Store) -> Iterator[str]:
    settings = settings_for(redis_url.rsplit("/", 1)[0] + f"/{FUZZ_DB}")
    with serve(settings, fuzz_store) as base:
        yield base


# ---------------------------------------------------------------------------- the fuzz


@pytest.mark.slow  # ~30 s on 2 cores
def test_fuzz_the_openapi_schema(fuzz_url: str, fuzz_store: Store) -> None:
    fuzz_seed = default_seed()
    stored = stored_proposal(fuzz_store)
    fuzz_store.append_live_log(stored.id, "step 1 loss 4.2\n")
    callers = {
        "admin": {"Authorization": f"Bearer {ADMIN}"},
        "agent": {"Authorization": f"Bearer {agent_token(fuzz_store)}"},
        "none": {},
    }
    schema = schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    tally = Tally()
    started = time.monotonic()
    with requests.Session() as session:
        for caller, headers in callers.items():
            for operation in operations:
                send = _sender(session, tally, caller, operation, headers)
                for case in _coverage_cases(schema, operation):
                    send("coverage", case)
                pinned = [None, stored.id] if "{proposal_id}" in operation.path else [None]
                for proposal_id in pinned:
                    for mode in GenerationMode:
                        _fuzz(operation, mode, caller, proposal_id, fuzz_seed, send)
    elapsed_s = time.monotonic() - started

    summary = (
        f"schemathesis: {tally.cases} cases over {len(operations)} operations, {tally.server_errors} "
        f"server errors, {sum(tally.failures.values())} failed checks in {elapsed_s:.0f} s (seed {fuzz_seed})"
    )
    print(summary)
    _write_output(tally, len(operations), elapsed_s, fuzz_seed)
    assert len(operations) >= 25, f"the schema lost operations: {[o.label for o in operations]}"
    assert tally.cases > 0
    assert tally.server_errors == 0, f"{summary}\n{tally.report()}"
    assert not tally.failures, f"{summary}\n{tally.report()}"


STATEFUL_EXAMPLES = 25  # scenarios per caller
STATEFUL_TIMEOUT_S = 600  # the CLI's whole run; ~20 s on 2 cores


@pytest.mark.slow  # ~40 s on 2 cores
@pytest.mark.parametrize("caller", ["admin", "agent"])
def test_stateful_fuzz_with_every_check(
    fuzz_url: str, fuzz_store: Store, caller: str, tmp_path: Path
) -> None:
    token = ADMIN if caller == "admin" else agent_token(fuzz_store)
    run = run_schemathesis(
        fuzz_url,
        token,
        phases=("stateful",),
        seed=default_seed(),
        max_examples=STATEFUL_EXAMPLES,
        report_dir=tmp_path,
        timeout_s=STATEFUL_TIMEOUT_S,
    )
    print(f"schemathesis stateful ({caller}, seed {run.seed}):\n{run.summary()}")
    assert run.returncode == 0, run.output[-6000:]
    assert "Stateful" in run.output and "Scenarios:" in run.output, run.output[-3000:]


def _coverage_cases(schema: Any, operation: APIOperation) -> Iterator[Case]:
    config = schema.config.generation_for(operation=operation, phase="coverage")
    yield from schema.iter_coverage_cases(
        operation, generation_modes=list(GenerationMode), generation_config=config
    )


def _fuzz(
    operation: APIOperation,
    mode: GenerationMode,
    caller: str,
    proposal_id: str | None,
    fuzz_seed: int,
    send: Callable[[str, Case], None],
) -> None:
    examples = STREAM_EXAMPLES if operation.path in STREAM_PATHS else EXAMPLES[caller]
    path_parameters = None if proposal_id is None else {"proposal_id": proposal_id}
    phase = f"{mode.value}{'' if proposal_id is None else ' (stored id)'}"

    @given(operation.as_strategy(mode, path_parameters=path_parameters))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.seed(fuzz_seed)
    def run(case: Case) -> None:
        send(phase, case)

    try:
        run()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE, f"no valid request for {operation.label}"
        # Nothing in the request can be made invalid (no parameters, no body, or only the pinned id).


def _sender(
    session: requests.Session, tally: Tally, caller: str, operation: APIOperation, headers: dict[str, str]
) -> Callable[[str, Case], None]:
    timeout = STREAM_READ_S if operation.path in STREAM_PATHS else REQUEST_TIMEOUT_S

    def send(phase: str, case: Case) -> None:
        if caller == "none" and case.headers:
            case.headers.pop("Authorization", None)  # schemathesis fills in the security scheme itself
        key = (caller, phase, operation.label)
        tally.cases += 1
        try:
            response = case.call(session=session, headers=headers, timeout=timeout)
        except requests.RequestException as exc:  # e.g. a stream the server dropped after its 200
            tally.server_errors += 1
            tally.fail((*key, type(exc).__name__), case, headers, str(exc), server=True)
            return
        tally.statuses[response.status_code] += 1
        server_error = response.status_code >= 500
        tally.server_errors += server_error
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                what = f"{response.status_code} {failure.title}: {failure.message} | {response.text[:300]}"
                tally.fail((*key, type(failure).__name__), case, headers, what, server=server_error)
        problem = _not_a_problem(case, response)
        if problem:
            tally.fail((*key, "NotProblemJson"), case, headers, f"{response.status_code} {problem}")

    return send


def _not_a_problem(case: Case, response: schemathesis.Response) -> str | None:
    """Why an error answer is not RFC 9457 problem details (None if it is, or is no error)."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    if not content_type.startswith(PROBLEM_JSON):
        return f"content type {content_type!r}"
    if case.method.upper() == "HEAD":
        return None  # no body to check
    try:
        body = json.loads(response.content)
    except ValueError:
        return f"body is not JSON: {response.content[:200]!r}"
    missing = {"type", "title", "status", "detail"} - set(body)
    if missing or body["status"] != response.status_code:
        return f"body lacks {sorted(missing)} or has the wrong status: {body}"
    return None


def _write_output(tally: Tally, operations: int, elapsed_s: float, fuzz_seed: int) -> None:
    OUTPUT.parent.mkdir(exist_ok=True)
    report = {
        "cases": tally.cases,
        "operations": operations,
        "server_errors": tally.server_errors,
        "failed_checks": sum(tally.failures.values()),
        "elapsed_s": round(elapsed_s, 1),
        "seed": fuzz_seed,
        "examples_per_operation": EXAMPLES,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "failures": [{"key": list(key), "count": n, **tally.examples[key]} for key, n in tally.ranked()],
    }
    OUTPUT.write_text(json.dumps(report, indent=1) + "\n")


# ---------------------------------------------------------------------------- bugs the fuzz found
# Each was a 503 "store-unavailable" (or, for the stream, a connection dropped after its 200): a
# number the schema allows but Redis refuses, sent to Redis as it was.


@pytest.fixture
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10) as client:
        yield client


def test_a_program_version_beyond_64_bits_is_not_found(http: httpx.Client) -> None:
    answer = http.get(f"/v1/program/versions/{2**70}")
    assert_problem(answer, 404, "not-found", f"no program.md version {2**70}")


def test_a_submit_naming_a_program_version_beyond_64_bits_is_refused(http: httpx.Client) -> None:
    body = {"title": "t", "agent": "a", "train_py": "x = 1\n", "program_version": 2**70}
    assert_problem(http.post("/v1/proposals", json=body), 422, "unknown-program-version", f"{2**70}")


def test_a_page_offset_beyond_64_bits_is_an_empty_page(http: httpx.Client, store: Store) -> None:
    stored_proposal(store)
    answer = http.get("/v1/proposals", params={"offset": 2**70})
    assert answer.status_code == 200, answer.text
    assert answer.json()["items"] == [] and answer.json()["total"] == 1


@pytest.mark.parametrize("where", ["query", "header"])
def test_a_log_stream_resume_id_beyond_64_bits_is_refused_before_the_stream(
    http: httpx.Client, store: Store, where: str
) -> None:
    proposal = stored_proposal(store)
    too_big = f"{2**64}-0"  # 20 digits: the pattern lets it through
    params = {"after": too_big} if where == "query" else {}
    headers = {"Last-Event-ID": too_big} if where == "header" else {}
    answer = http.get(f"/v1/proposals/{proposal.id}/log/stream", params=params, headers=headers)
    assert_problem(answer, 422, "validation-error", "at most 18446744073709551615")


def test_the_schema_documents_every_error_as_a_problem(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert set(response["content"]) == {PROBLEM_JSON}, (method, path, status)
            if "requestBody" in operation:
                assert "400" in operation["responses"], (method, path)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
