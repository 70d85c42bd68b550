"""The worker voids a run whose fixed files (evaluate.py, model_server.py, tokenizer, val data...)
hash differently from its first scored run's (docs/evaluation.md, "Fixed files")."""

from __future__ import annotations

from typing import Any, cast

from services.worker.pipeline import Worker


def worker() -> Worker:
    return Worker(settings=cast(Any, None), store=cast(Any, None), sandbox=cast(Any, None), conn=cast(Any, None))


def test_first_scored_run_sets_the_expected_hashes_and_later_ones_must_match() -> None:
    w = worker()
    first = {"fixed_hashes": {"evaluate.py": "a", "val/val.jsonl": "b"}}
    assert w._changed_fixed_files(first) == ""
    assert w.expected_fixed_hashes == {"evaluate.py": "a", "val/val.jsonl": "b"}
    assert w._changed_fixed_files({"fixed_hashes": {"evaluate.py": "a", "val/val.jsonl": "b"}}) == ""
    assert w._changed_fixed_files({"fixed_hashes": {"evaluate.py": "x", "val/val.jsonl": "b"}}) == "evaluate.py"


def test_a_missing_or_extra_file_is_a_mismatch() -> None:
    w = worker()
    w._changed_fixed_files({"fixed_hashes": {"evaluate.py": "a", "model_server.py": "m"}})
    assert w._changed_fixed_files({"fixed_hashes": {"evaluate.py": "a"}}) == "model_server.py"
    assert w._changed_fixed_files({"fixed_hashes": "junk"}) == "evaluate.py, model_server.py"
