"""Attacks from an outside review, through the same real path as test_attacks.py (API → RQ → Worker →
DockerSandbox → collect → evaluation → committer). One hostile property per test: the final state,
its reason, and that nothing else changed.

Covered here: a trainer's own run.json passing its failure off as the infrastructure's (a field of
the wrong type, nesting deeper than the parser's stack), a run.json integer that no float can hold
(it stopped the committer and left the proposal `evaluating`), a trainer whose run.json is only bad
on the confirmation seeds, the evaluation's duration read from timestamps and from /metrics, hostile
names and special files in the writable folders with non-UTF-8 output, and API inputs that must end
in a problem with nothing stored.
"""

import re
from typing import Any

import pytest

from tests.support.hostile import MODEL_TRAIN_PY, Harness

pytestmark = pytest.mark.docker

WRITE_RUN_JSON = '    with open(os.path.join(out, "run.json"), "w") as f:\n        json.dump(run, f)\n'
assert WRITE_RUN_JSON in MODEL_TRAIN_PY


def with_run_json(code: str) -> str:
    """The honest bigram trainer, with `code` in place of writing its run.json (`run`, `out`,
    `seed` are in scope)."""
    return MODEL_TRAIN_PY.replace(WRITE_RUN_JSON, code)


def agent_headers(hostile: Harness, name: str = "red-agent") -> dict[str, str]:
    created = hostile.api.post("/v1/tokens", json={"name": name, "role": "agent"})
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['token']}"}


def assert_nothing_scored(ran_detail: dict[str, Any]) -> None:
    assert ran_detail["attempts"] == 0, "the proposal's own failure was retried as the infrastructure's"
    assert all(r["val_bpb"] is None for r in ran_detail["results"])


# --------------------------------------------------------------------------------------------------
# run.json: the trainer's own output, so a bad one is the proposal's crash


def test_run_json_field_of_the_wrong_type_is_the_proposals_crash(hostile: Harness) -> None:
    """`steps` as a string used to fail the worker's own record of the run: "infrastructure failed
    (worker error: ValidationError ...)", re-run `infra_retries` times, then `infra_error`."""
    ran = hostile.run(with_run_json('    run["steps"] = "many"\n' + WRITE_RUN_JSON))
    assert ran.state == "crashed", (ran.state, ran.reason)
    assert "run.json field 'steps' is invalid" in ran.reason
    assert "worker error" not in ran.reason and "infrastructure" not in ran.reason
    assert_nothing_scored(ran.detail)
    hostile.assert_untouched(ran.id)


def test_run_json_nested_deeper_than_the_parser_is_the_proposals_crash(hostile: Harness) -> None:
    """200,000 nested brackets (400 KB, under the 1 MiB cap) made json.loads raise RecursionError,
    which is no ValueError: it escaped collect's checks and became a worker error."""
    nested = (
        '    with open(os.path.join(out, "run.json"), "w") as f:\n'
        '        f.write(\'{"steps": 1, "deep": \' + "[" * 200000 + "]" * 200000 + "}")\n'
    )
    ran = hostile.run(with_run_json(nested))
    assert ran.state == "crashed", (ran.state, ran.reason)
    assert "run.json is not valid JSON: nested too deeply" in ran.reason
    assert_nothing_scored(ran.detail)
    hostile.assert_untouched(ran.id)


def test_run_json_integer_no_float_can_hold_is_refused_before_the_committer(hostile: Harness) -> None:
    """`peak_memory_bytes` of 401 digits was stored as it was; the committer's commit message divides
    it by 1e9 (OverflowError), so every decision job failed and the proposal stayed `evaluating`
    for good (a committer restart decides it again and fails again)."""
    ran = hostile.run(with_run_json('    run["peak_memory_bytes"] = 10**400\n' + WRITE_RUN_JSON))
    assert ran.state == "crashed", (ran.state, ran.reason)
    assert "run.json field 'peak_memory_bytes' is invalid" in ran.reason
    assert_nothing_scored(ran.detail)
    assert hostile.api.get("/v1/results.tsv").status_code == 200
    hostile.assert_untouched(ran.id)


def test_run_json_bad_only_on_confirmation_seeds_ends_the_proposal(hostile: Harness) -> None:
    """Honest on the screening seed, so the committer sends it to confirmation; a bad run.json on
    the fresh seeds then escaped `Worker._confirm` (it caught InfraError only): the RQ job failed,
    the proposal stayed `confirming`, and each sweep replaced the dead job, training it again
    without end. It must end `crashed` with the confirmation run's reason."""
    best = hostile.store.get_best()
    assert best is not None
    hostile.store.set_best(best.model_copy(update={"val_bpb": 100.0}))  # the bigram model screens in
    hostile._snapshot = hostile._state()
    first_seed = hostile.settings.runs.first_seed
    code = with_run_json(f'    if seed != {first_seed}:\n        run["steps"] = "many"\n' + WRITE_RUN_JSON)
    ran = hostile.run(code)
    assert ran.state == "crashed", (ran.state, ran.reason)
    assert ran.reason.startswith("confirmation run (seed ")
    assert "run.json field 'steps' is invalid" in ran.reason
    assert ran.detail["attempts"] == 0
    assert ran.detail["results"][0]["val_bpb"] is not None  # the screening run was scored
    assert ran.detail["baseline_results"] == []  # the best was never run against a crash
    hostile.assert_untouched(ran.id)


# --------------------------------------------------------------------------------------------------
# The evaluation's duration: agents see whole seconds only


def test_evaluation_duration_reaches_agents_in_whole_seconds_only(hostile: Harness) -> None:
    """A run's `finished_at` minus its `evaluating` event's `at` was the evaluation's duration to the
    millisecond (13.784 s against the shown 14.0), and /metrics (no token) summed the exact
    container seconds (`autoresearch_run_duration_seconds_sum{step="eval"} 13.7826996900003`)."""
    ran = hostile.run(MODEL_TRAIN_PY + "# an honest change\n")
    assert ran.state == "rejected", (ran.state, ran.reason)
    agent = agent_headers(hostile)
    detail = hostile.api.get(f"/v1/proposals/{ran.id}", headers=agent).json()
    stamps = [detail["created_at"], detail["updated_at"], *(e["at"] for e in detail["events"])]
    stamps += [r["finished_at"] for r in detail["results"]]
    stamps += [detail["decision"]["decided_at"]]
    assert all(float(s).is_integer() for s in stamps), stamps
    evaluating = next(e["at"] for e in detail["events"] if e["state"] == "evaluating")
    assert float(detail["results"][0]["finished_at"] - evaluating).is_integer()
    exact = hostile.store.get(ran.id).results[0].timings.eval_container_s
    assert not float(exact).is_integer()  # what the admin sees, so the rounding is what hides it
    metrics = hostile.api.get("/metrics").text  # no token needed
    sums = re.findall(r'^autoresearch_run_duration_seconds_sum\{step="(\w+)"\} (\S+)$', metrics, re.M)
    assert {step for step, _ in sums} == {"train", "eval", "total"}
    assert all(float(value).is_integer() for _, value in sums), sums
    hostile.assert_untouched(ran.id)


# --------------------------------------------------------------------------------------------------
# Hostile names and special files left in the writable folders; non-UTF-8 output

HOSTILE_TREE = """\
    import socket
    for folder in (out, "/cache", "/tmp"):
        os.symlink("loop", os.path.join(folder, "loop"))
        os.symlink("/", os.path.join(folder, "up"))
        os.symlink("/proc/self/root", os.path.join(folder, "proc-root"))
        os.close(os.open(os.fsencode(folder) + b"/bad-\\xff\\xfe-name", os.O_CREAT | os.O_WRONLY, 0o600))
        open(os.path.join(folder, "n" * 255), "w").write("long")
        socket.socket(socket.AF_UNIX).bind(os.path.join(folder, "sock"))
        os.mkfifo(os.path.join(folder, "fifo"))
        os.mkdir(os.path.join(folder, "locked"))
        open(os.path.join(folder, "locked", "f"), "w").write("x")
        os.chmod(os.path.join(folder, "locked"), 0)
    import sys
    sys.stdout.buffer.write(b"bad utf8 \\xff\\xfe\\xc3( \\xed\\xa0\\x80 surrogate\\n")
    sys.stdout.flush()
"""


def test_hostile_names_and_special_files_in_writable_folders_do_not_disturb_the_worker(
    hostile: Harness,
) -> None:
    """Symlink loops, a symlink to /, a Unix socket, a FIFO, a non-UTF-8 name, a 255-byte name and an
    unreadable folder in /out, /cache and /tmp, and invalid UTF-8 on stdout: the run is scored as
    usual, its log is valid text, and the worker removes the output folder it measured."""
    ran = hostile.run(with_run_json(WRITE_RUN_JSON + HOSTILE_TREE))
    assert ran.state == "rejected", (ran.state, ran.reason)
    assert ran.detail["results"][0]["val_bpb"] is not None
    log = hostile.api.get(f"/v1/proposals/{ran.id}/log").text
    assert "bad utf8 \ufffd\ufffd" in log
    run_dir = hostile.settings.sandbox.runs_dir / ran.detail["results"][0]["run_id"]
    assert not (run_dir / "out").exists()
    hostile.assert_untouched(ran.id)


# --------------------------------------------------------------------------------------------------
# The API: odd inputs end in a problem, or in an ordinary answer, and store nothing


def test_nested_json_body_is_a_bad_request_that_stores_nothing(hostile: Harness) -> None:
    """300,000 nested brackets in a submit's body (600 KB, under the size limit): a 400 problem, not
    a 500 from the parser's recursion."""
    before = hostile.proposal_count()
    body = b'{"title": ' + b"[" * 300_000 + b"]" * 300_000 + b"}"
    response = hostile.api.post("/v1/proposals", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert hostile.proposal_count() == before


@pytest.mark.parametrize(
    "path",
    [
        "/v1/proposals?offset=100000000000000000000000",
        "/v1/proposals?offset=9223372036854775808",
        "/v1/program/versions/100000000000000000000000",
        "/v1/leaderboard?limit=100000000000000000000000",
    ],
)
def test_numbers_beyond_64_bits_in_queries_are_answered_without_a_server_error(
    hostile: Harness, path: str
) -> None:
    response = hostile.api.get(path, headers=agent_headers(hostile))
    assert response.status_code in (200, 404, 422), response.text
    if response.status_code == 200:
        assert response.json()["items"] == []
    else:
        assert response.headers["content-type"].startswith("application/problem+json")


def test_program_version_beyond_64_bits_is_refused_and_stores_nothing(hostile: Harness) -> None:
    before = hostile.proposal_count()
    body = {"title": "t", "agent": "red", "train_py": MODEL_TRAIN_PY + "# x\n", "program_version": 2**80}
    response = hostile.api.post("/v1/proposals", json=body, headers=agent_headers(hostile))
    assert response.status_code == 422, response.text
    assert response.json()["type"].endswith("unknown-program-version")
    assert hostile.proposal_count() == before


def test_an_idempotency_key_reused_by_another_token_never_returns_the_first_tokens_proposal(
    hostile: Harness,
) -> None:
    """Bob sends Alice's Idempotency-Key with his own proposal: he gets his own, not a replay of hers."""
    key = {"Idempotency-Key": "shared-key-1"}
    alice = agent_headers(hostile, "alice") | key
    bob = agent_headers(hostile, "bob") | key
    first = hostile.api.post(
        "/v1/proposals", headers=alice,
        json={"title": "alice's", "agent": "alice", "train_py": MODEL_TRAIN_PY + "# alice\n"},
    )  # fmt: skip
    second = hostile.api.post(
        "/v1/proposals", headers=bob,
        json={"title": "bob's", "agent": "bob", "train_py": MODEL_TRAIN_PY + "# bob\n"},
    )  # fmt: skip
    assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
    assert first.json()["id"] != second.json()["id"]
    assert second.json()["title"] == "bob's"
    for response in (first, second):
        hostile.api.post(f"/v1/proposals/{response.json()['id']}/cancel")
    assert hostile.api.get("/v1/proposals?state=cancelled").json()["total"] == 2


def test_lone_surrogates_are_refused_in_every_text_field(hostile: Harness) -> None:
    """A lone surrogate escape (valid JSON, not encodable as UTF-8) in the title, the description or
    the file: a 422 problem, nothing stored."""
    before = hostile.proposal_count()
    fields = {"title": '"t"', "description": '"d"', "train_py": '"x = 1\\n"'}
    for field in fields:
        body = {**fields, field: '"x\\udc00"'}
        raw = "{" + ", ".join(f'"{k}": {v}' for k, v in body.items()) + ', "agent": "red"}'
        response = hostile.api.post(
            "/v1/proposals", content=raw.encode(), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422, (field, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    assert hostile.proposal_count() == before
