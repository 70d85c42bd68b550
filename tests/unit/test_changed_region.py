"""Compiling only what a change touches (services/patches.py, `changed_region`): it accepts exactly
the candidates that compiling the whole file accepts, and refuses with the whole file's message."""

import random
from pathlib import Path

import pytest

from services.errors import InvalidPython
from services.patches import (
    apply_unified_diff,
    canonical_diff,
    changed_region,
    check_python,
    outline,
)

TRAIN_PY = (Path(__file__).resolve().parents[2] / "trainer" / "train.py").read_text()
# Lines an edit may insert: ordinary code, and lines that open or close something (a string, a bracket,
# a block, a continuation) or that only mean something next to other statements.
HOSTILE_LINES = [
    "x = 1",
    "    x = 1",
    "        return x",
    "return 1",
    "break",
    "yield 2",
    "await g()",
    "def f():",
    "class C:",
    "    pass",
    "@decorator",
    "else:",
    "x = (",
    ")",
    "]",
    'x = """',
    '"""',
    "'''",
    "x = 1 \\",
    "# a comment",
    "",
    "global y",
    "from __future__ import annotations",
    "nonlocal z",
    "if True:",
    "\tx = 1",
    "x: int = 1",
    "lambda: (yield)",
]


def whole_file_verdict(source: str) -> str | None:
    try:
        check_python(source)
    except InvalidPython as exc:
        return str(exc)
    return None


def region_verdict(source: str, base: str) -> str | None:
    try:
        check_python(source, base)
    except InvalidPython as exc:
        return str(exc)
    return None


def random_edit(rng: random.Random, base: str) -> str:
    lines = base.split("\n")
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(lines) + 1)
        action = rng.choice(["insert", "insert", "delete", "change", "copy"])
        new = rng.choice(HOSTILE_LINES)
        if action == "insert":
            lines.insert(at, new)
        elif action == "delete" and lines:
            del lines[min(at, len(lines) - 1)]
        elif action == "change" and lines:
            lines[min(at, len(lines) - 1)] = new
        else:  # a line from elsewhere in the file
            lines.insert(at, rng.choice(lines))
    return "\n".join(lines)


def test_the_region_check_agrees_with_compiling_the_whole_file() -> None:
    rng = random.Random(11)
    accepted = refused = 0
    for _ in range(300):
        candidate = random_edit(rng, TRAIN_PY)
        verdict = whole_file_verdict(candidate)
        assert region_verdict(candidate, TRAIN_PY) == verdict, candidate
        accepted += verdict is None
        refused += verdict is not None
    assert accepted > 30 and refused > 30  # both sides of the question were asked


def test_a_one_line_change_compiles_only_its_statement() -> None:
    lines = TRAIN_PY.split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("def "))
    lines.insert(at + 1, "    unused = 1")
    candidate = "\n".join(lines)
    region = changed_region(outline(TRAIN_PY), candidate)
    assert region is not None
    code = [line for line in region.split("\n") if line.strip()]
    assert lines[at] in code and "    unused = 1" in code
    assert len(code) < len(lines) // 4
    assert region.count("\n", 0, region.index(lines[at])) == at  # line numbers stay the file's


def test_a_syntax_error_keeps_the_whole_files_line_and_column() -> None:
    lines = TRAIN_PY.split("\n")
    lines.insert(200, "x = = 1")
    with pytest.raises(InvalidPython, match=r"at line 201, column \d+"):
        check_python("\n".join(lines), TRAIN_PY)


@pytest.mark.parametrize(
    "base", ["from __future__ import annotations\nx = 1\n", "x = 1\nglobal x\n", "x = (\n", "a = 1; b = 2\n"]
)
def test_bases_whose_statements_depend_on_each_other_are_compiled_whole(base: str) -> None:
    assert outline(base) is None
    assert changed_region(outline(base), base + "y = 1\n") is None


def test_a_change_naming_global_or_future_is_compiled_whole() -> None:
    assert changed_region(outline(TRAIN_PY), TRAIN_PY + "global y\n") is None
    assert changed_region(outline(TRAIN_PY), "from __future__ import annotations\n" + TRAIN_PY) is None


def test_canonical_diff_of_a_long_file_round_trips_and_numbers_hunks_in_the_whole_file() -> None:
    rng = random.Random(3)
    for _ in range(100):
        target = random_edit(rng, TRAIN_PY) + rng.choice(["", "\n"])
        diff = canonical_diff(TRAIN_PY, target)
        assert apply_unified_diff(TRAIN_PY, diff) == target
    lines = TRAIN_PY.split("\n")
    lines[400] = "# changed"
    assert "@@ -398,7 +398,7 @@\n" in canonical_diff(TRAIN_PY, "\n".join(lines))
