"""The fixed files' expected hashes are pinned in Redis from a trusted probe (the image and the data,
no candidate), never learned from a run; a run whose hashes differ is voided, naming the files
(docs/evaluation.md, "Fixed files"). Real Redis, the fake sandbox, `Worker.run_once`."""

import json
from pathlib import Path

import pytest
import redis

from services.models import Proposal, RunResult, new_id
from services.settings import Settings
from services.states import State
from services.store import Store
from services.worker import fixed_files
from services.worker.build import build_worker
from services.worker.sandbox import FixedFiles
from services.worker.worker import Worker
from tests.support.fakes import FakeSandbox

TRUSTED = FixedFiles("fake/1", {"evaluate.py": "e" * 64, "val/val.jsonl": "v" * 64})
OTHER_DATA = FixedFiles("fake/1", {"evaluate.py": "e" * 64, "val/val.jsonl": "0" * 64})


def forged(hashes: dict[str, str]) -> str:
    """A candidate whose result.json reports these fixed-file hashes (as one evaluated in-process could)."""
    return f"FAKE_FIXED = {json.dumps(hashes)}\n"


def make_worker(tmp_path: Path, conn: "redis.Redis[bytes]", name: str, found: FixedFiles) -> Worker:
    settings = Settings(runs_dir=tmp_path / name, repo_dir=tmp_path / "repo")
    return build_worker(settings, store=Store(conn), sandbox=FakeSandbox(fixed=found), name=name)


def run(worker: Worker, train_py: str = "FAKE_SCORE = 1.4\n") -> RunResult:
    proposal = Proposal(
        id=new_id("p"), title="t", agent="tester", base_commit="c0ffee1", base_train_py="",
        train_py=train_py, diff="", content_hash=new_id("h"), seeds=[42],
    )  # fmt: skip
    stored, _ = worker.store.create(proposal)
    return worker.run_once(stored, 42, announce=False)


def test_a_run_whose_fixed_files_differ_from_the_pin_is_voided_naming_them(
    tmp_path: Path, redis_client: "redis.Redis[bytes]"
) -> None:
    worker = make_worker(tmp_path, redis_client, "w1", TRUSTED)
    assert run(worker).state == State.EVALUATING
    result = run(worker, forged({"evaluate.py": "f" * 64, "val/val.jsonl": "v" * 64, "extra.py": "x"}))
    assert result.state == State.VOIDED and result.val_bpb is None
    assert result.reason.startswith("fixed files differ from the pinned ones (ar:fixed-files:")
    assert result.reason.endswith(": evaluate.py, extra.py")
    assert "pinned by w1 at " in result.reason


def test_the_first_run_cannot_set_the_expected_hashes(
    tmp_path: Path, redis_client: "redis.Redis[bytes]"
) -> None:
    """A fresh deployment whose very first run reports tampered hashes: voided, because the pin
    comes from the probe; the honest run after it scores."""
    worker = make_worker(tmp_path, redis_client, "w1", TRUSTED)
    first = run(worker, forged({"evaluate.py": "f" * 64}))
    assert first.state == State.VOIDED
    assert first.reason.endswith(": evaluate.py, val/val.jsonl")
    assert run(worker).state == State.EVALUATING
    assert dict(worker.pinned_fixed_files().hashes) == dict(TRUSTED.hashes)


def test_a_new_worker_uses_the_pinned_values_not_its_own(
    tmp_path: Path, redis_client: "redis.Redis[bytes]", caplog: pytest.LogCaptureFixture
) -> None:
    """The first worker to start pins; a later worker on a host with other data (its own probe and
    its honest runs say so) compares with the pin: its runs are voided, naming the file."""
    first = make_worker(tmp_path, redis_client, "host-a", TRUSTED)
    first.check_fixed_files()
    second = make_worker(tmp_path, redis_client, "host-b", OTHER_DATA)
    second.check_fixed_files()
    assert "its runs will be voided" in caplog.text and "val/val.jsonl" in caplog.text
    pinned = second.pinned_fixed_files()
    assert pinned.pinned_by == "host-a" and dict(pinned.hashes) == dict(TRUSTED.hashes)
    voided = run(second)
    assert voided.state == State.VOIDED and voided.reason.endswith(
        f"pinned by host-a at {pinned.pinned_at}): val/val.jsonl"
    )
    assert run(second, forged(dict(TRUSTED.hashes))).state == State.EVALUATING
    assert run(first).state == State.EVALUATING


def test_a_pin_is_per_evaluator_version_and_environment(redis_client: "redis.Redis[bytes]") -> None:
    a = fixed_files.pin(redis_client, TRUSTED, "env-1", "w1")
    assert fixed_files.pin(redis_client, OTHER_DATA, "env-1", "w2") == a
    other_env = fixed_files.pin(redis_client, OTHER_DATA, "env-2", "w2")
    other_version = fixed_files.pin(redis_client, FixedFiles("fake/2", OTHER_DATA.hashes), "env-1", "w2")
    assert len({a.key, other_env.key, other_version.key}) == 3
    assert dict(other_env.hashes) == dict(other_version.hashes) == dict(OTHER_DATA.hashes)
    redis_client.delete(a.key)  # an operator re-pins on purpose
    assert fixed_files.pin(redis_client, OTHER_DATA, "env-1", "w2").pinned_by == "w2"


def test_a_missing_extra_or_malformed_set_differs() -> None:
    expected = {"evaluate.py": "a", "model_server.py": "m"}
    assert fixed_files.differing(expected, {"evaluate.py": "a", "model_server.py": "m"}) == []
    assert fixed_files.differing(expected, {"evaluate.py": "a"}) == ["model_server.py"]
    assert fixed_files.differing(expected, {**expected, "new.py": "n"}) == ["new.py"]
    assert fixed_files.differing(expected, "junk") == ["evaluate.py", "model_server.py"]
    assert fixed_files.differing(expected, None) == ["evaluate.py", "model_server.py"]


WITH_TEST = FixedFiles(
    "fake/1", {**TRUSTED.hashes, "test/test.jsonl": "t" * 64, "test/manifest.json": "m" * 64}
)


def test_the_test_split_is_compared_only_in_runs_that_score_it(
    tmp_path: Path, redis_client: "redis.Redis[bytes]"
) -> None:
    """The probe hashes the held-out test split; a run that does not score it reports no test files
    and is compared without them, one that scores it is compared with them, and both runs get one
    fingerprint (the pin's), so screening and confirmation runs stay comparable."""
    settings = Settings(runs_dir=tmp_path / "w", repo_dir=tmp_path / "repo", test_data="test-data")
    worker = build_worker(
        settings, store=Store(redis_client), sandbox=FakeSandbox(fixed=WITH_TEST), name="worker"
    )
    proposal = Proposal(
        id=new_id("p"), title="t", agent="tester", base_commit="c0ffee1", base_train_py="",
        train_py="FAKE_SCORE = 1.4\n", diff="", content_hash=new_id("h"), seeds=[42],
    )  # fmt: skip
    stored, _ = worker.store.create(proposal)
    screening = worker.run_once(stored, 42, announce=False)
    confirming = worker.run_once(stored, 43, announce=False, score_test=True)
    assert screening.state == confirming.state == State.EVALUATING
    assert screening.test_bpb is None and confirming.test_bpb is not None
    assert "test/test.jsonl" not in screening.fixed_hashes and "test/test.jsonl" in confirming.fixed_hashes
    assert screening.fingerprint == confirming.fingerprint
    missing = FakeSandbox(fixed=WITH_TEST)
    worker.sandbox = missing
    forged_run = stored.model_copy(update={"train_py": forged(dict(TRUSTED.hashes))})
    voided = worker.run_once(forged_run, 44, announce=False, score_test=True)
    assert voided.state == State.VOIDED and voided.reason.endswith(": test/manifest.json, test/test.jsonl")


def test_expected_hashes_leave_out_the_test_split_unless_it_is_scored() -> None:
    pin = fixed_files.Pin("k", "fake/1", WITH_TEST.hashes)
    assert dict(fixed_files.expected(pin, True)) == dict(WITH_TEST.hashes)
    assert dict(fixed_files.expected(pin, False)) == dict(TRUSTED.hashes)
