"""The LLM agent's prompt and the reading of its answers (no network)."""

import pytest

from services.agent.loop import Outcome, Research
from services.agent.prompt import NoDiff, messages, parse_answer, reanchor
from services.patches import build_candidate

BASE = "".join(f"LINE_{i} = {i}\n" for i in range(1, 21))


def research() -> Research:
    return Research(
        program_version=3,
        program="Lower val_bpb.",
        best_commit="a" * 40,
        best_val_bpb=1.5,
        train_py=BASE,
        recent=[{"state": "rejected", "title": "bigger model", "agent": "x", "val_bpb": 1.6}],
    )


def test_prompt_carries_program_best_recent_and_own_outcomes() -> None:
    memory = [Outcome("raise lr", "merged", "beats the best", "p_1", 1.45, -0.05)]
    system, user = messages(research(), memory)
    assert system.role == "system" and "```diff" in system.content
    assert "version 3" in user.content and "Lower val_bpb." in user.content
    assert BASE in user.content and "val_bpb 1.500000" in user.content
    assert "[rejected] bigger model" in user.content
    assert "1. raise lr: merged, val_bpb 1.450000, Δ -0.050000. beats the best" in user.content


def test_answer_with_wrong_paths_and_line_numbers_is_repaired_to_apply_exactly() -> None:
    answer = (
        "TITLE: change line 10\nWHY: because\nit helps.\n```diff\n--- train.py\n+++ train.py\n"
        "@@ -2,3 +2,3 @@\n LINE_9 = 9\n-LINE_10 = 10\n+LINE_10 = 11\n LINE_11 = 11\n```\n"
    )
    idea = parse_answer(answer, BASE)
    assert idea.title == "change line 10" and idea.description == "because\nit helps."
    assert idea.diff.startswith("--- a/trainer/train.py\n+++ b/trainer/train.py\n@@ -9,3 +9,3 @@\n")
    candidate = build_candidate(BASE, base_commit="a" * 40, train_py=None, diff=idea.diff, max_bytes=10**6)
    assert "LINE_10 = 11\n" in candidate.train_py


def test_ambiguous_hunk_keeps_its_stated_position() -> None:
    base = "x = 1\ny = 2\nx = 1\ny = 2\n"
    diff = "--- a/t\n+++ b/t\n@@ -3,2 +3,2 @@\n x = 1\n-y = 2\n+y = 3\n"
    assert "@@ -3,2 +3,2 @@" in reanchor(diff, base)


def test_answer_without_a_diff_is_refused() -> None:
    with pytest.raises(NoDiff):
        parse_answer("TITLE: nothing\nI would rather not.", BASE)
