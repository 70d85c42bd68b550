"""The strict unified-diff applier and the candidate checks in services/patches.py."""

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from services.errors import InvalidPatch, InvalidPython
from services.patches import (
    apply_unified_diff,
    build_candidate,
    canonical_diff,
    content_hash,
    normalise,
    split_lines,
)

BASE = "".join(f"x{i} = {i}\n" for i in range(1, 31))  # 30 lines of valid Python
COMMIT = "a" * 40
MAX = 64 * 1024


def edit(text: str, line: int, new: str) -> str:
    lines = text.split("\n")
    lines[line - 1] = new
    return "\n".join(lines)


def build(*, train_py: str | None = None, diff: str | None = None, base: str = BASE, max_bytes: int = MAX):
    return build_candidate(base, base_commit=COMMIT, train_py=train_py, diff=diff, max_bytes=max_bytes)


# ---------------------------------------------------------------------------- applier


def test_canonical_diff_round_trips_through_the_applier() -> None:
    target = edit(edit(BASE, 3, "x3 = 33"), 25, "x25 = 2525")
    diff = canonical_diff(BASE, target)
    assert diff.startswith("--- a/trainer/train.py\n+++ b/trainer/train.py\n")
    assert diff.count("\n@@ ") == 2  # far apart edits make two hunks
    assert apply_unified_diff(BASE, diff) == target


@pytest.mark.skipif(shutil.which("diff") is None, reason="GNU diff is not installed")
def test_applies_gnu_diff_output_with_timestamps(tmp_path: Path) -> None:
    target = edit(BASE, 10, "x10 = 'ten'") + "y = 1\n"
    (tmp_path / "old.py").write_text(BASE)
    (tmp_path / "new.py").write_text(target)
    out = subprocess.run(
        ["diff", "-u", "--label", "trainer/train.py\t2026-01-01 00:00:00", "--label", "trainer/train.py",
         "old.py", "new.py"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    assert apply_unified_diff(BASE, out) == target


def test_git_diff_headers_are_accepted() -> None:
    target = edit(BASE, 5, "x5 = 55")
    body = canonical_diff(BASE, target)
    diff = "diff --git a/trainer/train.py b/trainer/train.py\nindex 0123abc..4567def 100644\n" + body
    assert apply_unified_diff(BASE, diff) == target


def test_no_newline_at_end_of_file_on_both_sides() -> None:
    base = BASE.rstrip("\n")
    target = edit(base, 30, "x30 = 'last'")
    diff = canonical_diff(base, target)
    assert diff.count("\\ No newline at end of file") == 2
    assert apply_unified_diff(base, diff) == target


def test_adding_the_final_newline() -> None:
    base = BASE.rstrip("\n")
    diff = canonical_diff(base, BASE)
    assert apply_unified_diff(base, diff) == BASE


def test_removing_the_final_newline() -> None:
    target = BASE.rstrip("\n")
    assert apply_unified_diff(BASE, canonical_diff(BASE, target)) == target


def test_missing_no_newline_marker_is_rejected() -> None:
    base = BASE.rstrip("\n")
    diff = canonical_diff(base, edit(base, 30, "x30 = 0")).replace("\\ No newline at end of file\n", "")
    with pytest.raises(InvalidPatch, match="no newline at end of file"):
        apply_unified_diff(base, diff)


def test_wrong_line_offset_is_rejected_without_fuzz() -> None:
    diff = canonical_diff(BASE, edit(BASE, 15, "x15 = 0"))
    shifted = diff.replace("@@ -12,7 +12,7 @@", "@@ -13,7 +13,7 @@")
    assert shifted != diff
    with pytest.raises(
        InvalidPatch, match=r"hunk 1 .* line 13 of the base is 'x13 = 13' but the hunk expects"
    ):
        apply_unified_diff(BASE, shifted)


def test_context_mismatch_names_the_hunk_and_line() -> None:
    target = edit(edit(BASE, 3, "x3 = 0"), 25, "x25 = 0")
    diff = canonical_diff(BASE, target).replace(" x24 = 24\n", " x24 = 99\n")
    with pytest.raises(InvalidPatch, match=r"hunk 2 \(@@ -22,7 \+22,7 @@\) does not apply: line 24"):
        apply_unified_diff(BASE, diff)


def test_trailing_whitespace_in_context_must_match_exactly() -> None:
    diff = canonical_diff(BASE, edit(BASE, 15, "x15 = 0")).replace(" x14 = 14\n", " x14 = 14  \n")
    with pytest.raises(InvalidPatch, match="line 14"):
        apply_unified_diff(BASE, diff)


def test_crlf_diff_applies_to_lf_base() -> None:
    target = edit(BASE, 7, "x7 = 0")
    diff = canonical_diff(BASE, target).replace("\n", "\r\n")
    assert apply_unified_diff(BASE, diff) == target


def test_empty_context_line_without_its_space_is_accepted() -> None:
    base = "a = 1\n\nb = 2\n"
    diff = "--- a/trainer/train.py\n+++ b/trainer/train.py\n@@ -1,3 +1,3 @@\n a = 1\n\n-b = 2\n+b = 3\n"
    assert apply_unified_diff(base, diff) == "a = 1\n\nb = 3\n"


def test_hunk_counts_that_lie_are_rejected() -> None:
    diff = canonical_diff(BASE, edit(BASE, 15, "x15 = 0")).replace("@@ -12,7 +12,7 @@", "@@ -12,5 +12,5 @@")
    with pytest.raises(InvalidPatch, match="does not fit the header's line counts"):
        apply_unified_diff(BASE, diff)


def test_truncated_hunk_is_rejected() -> None:
    diff = canonical_diff(BASE, edit(BASE, 15, "x15 = 0"))
    with pytest.raises(InvalidPatch, match="truncated"):
        apply_unified_diff(BASE, "\n".join(diff.split("\n")[:-3]) + "\n")


def test_overlapping_or_unordered_hunks_are_rejected() -> None:
    target = edit(edit(BASE, 3, "x3 = 0"), 25, "x25 = 0")
    header, first, second = canonical_diff(BASE, target).split("@@ -")
    swapped = header + "@@ -" + second + "@@ -" + first
    with pytest.raises(InvalidPatch, match="file order"):
        apply_unified_diff(BASE, swapped)


def test_pure_insertion_hunk() -> None:
    diff = "--- trainer/train.py\n+++ trainer/train.py\n@@ -2,0 +3,2 @@\n+y = 1\n+z = 2\n"
    lines = BASE.split("\n")
    assert apply_unified_diff(BASE, diff) == "\n".join([*lines[:2], "y = 1", "z = 2", *lines[2:]])


def test_hunk_beyond_the_end_of_the_base() -> None:
    diff = "--- a/trainer/train.py\n+++ b/trainer/train.py\n@@ -40,1 +40,1 @@\n-x40 = 40\n+x40 = 0\n"
    with pytest.raises(InvalidPatch, match="the base has 30 lines"):
        apply_unified_diff(BASE, diff)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("--- a/trainer/evaluate.py\n+++ b/trainer/evaluate.py\n", "touches 'a/trainer/evaluate.py'"),
        ("--- a/trainer/train.py\n+++ b/trainer/prepare.py\n", "touches 'b/trainer/prepare.py'"),
        ("--- a/../trainer/train.py\n+++ b/../trainer/train.py\n", "is not allowed"),
        ("--- /etc/passwd\n+++ /etc/passwd\n", "is not allowed"),
        ("--- /dev/null\n+++ b/trainer/train.py\n", "creates or deletes"),
        ("--- a/trainer/train.py\n+++ /dev/null\n", "creates or deletes"),
        ("diff --git a/trainer/train.py b/trainer/train.py\nold mode 100644\nnew mode 100755\n", "mode"),
        ("diff --git a/trainer/train.py b/trainer/new.py\nsimilarity index 90%\n", "only trainer/train.py"),
        ("diff --git a/trainer/train.py b/trainer/train.py\nrename from trainer/train.py\n", "renames"),
        ("diff --git a/trainer/train.py b/trainer/train.py\nGIT binary patch\n", "binary"),
        ("Binary files a/trainer/train.py and b/trainer/train.py differ\n", "binary"),
        ("diff --git a/trainer/train.py b/trainer/train.py\ndeleted file mode 100644\n", "deletes"),
    ],
)
def test_diffs_touching_anything_else_are_rejected(header: str, message: str) -> None:
    body = canonical_diff(BASE, edit(BASE, 15, "x15 = 0")).split("\n", 2)[2]
    if not header.rstrip("\n").split("\n")[-1].startswith("+++"):
        header += "--- a/trainer/train.py\n+++ b/trainer/train.py\n"
    with pytest.raises(InvalidPatch, match=message):
        apply_unified_diff(BASE, header + body)


def test_a_second_file_is_rejected() -> None:
    diff = canonical_diff(BASE, edit(BASE, 15, "x15 = 0"))
    other = "--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-a\n+b\n"
    with pytest.raises(InvalidPatch, match="a second file"):
        apply_unified_diff(BASE, diff + other)


@pytest.mark.parametrize(
    ("diff", "message"),
    [
        ("hello\n", "expected '--- a/trainer/train.py'"),
        ("--- a/trainer/train.py\n+++ b/trainer/train.py\n", "no hunks"),
        ("--- a/trainer/train.py\n", "not a unified diff"),
        ("--- a/trainer/train.py\n+++ b/trainer/train.py\n@@ nonsense @@\n", "malformed hunk header"),
        (
            "--- a/trainer/train.py\n+++ b/trainer/train.py\n@@ -1 +1 @@\n-x1 = 1\n+x1 = 0\ngarbage\n",
            "got 'garbage'",
        ),
    ],
)
def test_malformed_diffs(diff: str, message: str) -> None:
    with pytest.raises(InvalidPatch, match=message):
        apply_unified_diff(BASE, diff)


# ---------------------------------------------------------------------------- build_candidate


def test_full_file_and_equivalent_diff_give_the_same_candidate() -> None:
    target = edit(BASE, 15, "x15 = 0")
    from_file = build(train_py=target)
    from_diff = build(diff=canonical_diff(BASE, target))
    assert from_file == from_diff
    assert from_file.diff == canonical_diff(BASE, target)
    assert from_file.content_hash == content_hash(COMMIT, target)


def test_crlf_and_trailing_whitespace_hash_the_same() -> None:
    target = edit(BASE, 15, "x15 = 0")
    messy = "\r\n".join(line + "   " for line in target.split("\n")) + "\r\n\r\n"
    assert build(train_py=messy).content_hash == build(train_py=target).content_hash
    assert build(train_py=messy).train_py.count("\r") == 0


def test_hash_depends_on_the_base_commit() -> None:
    assert content_hash("a" * 40, BASE) != content_hash("b" * 40, BASE)
    assert normalise("a  \r\nb\t\n\n\n") == "a\nb\n"


def test_exactly_one_of_train_py_and_diff() -> None:
    with pytest.raises(InvalidPatch, match="exactly one"):
        build()
    with pytest.raises(InvalidPatch, match="exactly one"):
        build(train_py=BASE, diff="x")


def test_size_cap_counts_utf8_bytes() -> None:
    text = edit(BASE, 1, "s = '" + "é" * 40 + "'")  # 40 chars, 80 bytes
    with pytest.raises(InvalidPatch, match=r"is \d+ bytes of UTF-8; the limit is 100 bytes"):
        build(train_py=text, max_bytes=100)


def test_lone_surrogate_and_nul_are_rejected() -> None:
    with pytest.raises(InvalidPatch, match="line 2 holds a lone surrogate"):
        build(train_py="a = 1\nb = '\ud800'\n")
    with pytest.raises(InvalidPatch, match="NUL byte on line 3"):
        build(train_py="a = 1\nb = 2\nc = '\0'\n")


# Every character `str.splitlines` (or some editor) breaks a line at, besides `\n` and `\r\n`.
FOREIGN_BREAKS = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]


@pytest.mark.parametrize("char", FOREIGN_BREAKS)
def test_canonical_diff_and_the_applier_agree_on_what_a_line_is(char: str) -> None:
    """The one definition of a line: a comment holding `char` is one line to `split_lines` (as to
    Python), one added line in the canonical diff, and applying that diff gives the candidate back.
    With `str.splitlines` in canonical_diff, the comment's tail became a line of code of its own."""
    comment = f"# note{char}print('pwned')"
    candidate = BASE + comment + "\n"
    assert split_lines(candidate)[-1] == comment and len(split_lines(candidate)) == 31
    diff = canonical_diff(BASE, candidate)
    assert [line for line in split_lines(diff) if line.startswith("+") and not line.startswith("+++")] == [
        "+" + comment
    ]
    assert apply_unified_diff(BASE, diff) == candidate
    unterminated = BASE + comment  # and at the end of a file without a final newline
    assert apply_unified_diff(BASE, canonical_diff(BASE, unterminated)) == unterminated


def test_split_lines_counts_crlf_as_one_line_end() -> None:
    assert split_lines("a\r\nb\n\nc") == ["a", "b", "", "c"]
    assert split_lines("a\r\nb\n", keepends=True) == ["a\n", "b\n"]
    assert split_lines("") == [] and split_lines("x", keepends=True) == ["x"]


@pytest.mark.parametrize("char", [*FOREIGN_BREAKS, "\r"])
def test_other_line_breaks_are_refused_naming_the_character_line_and_column(char: str) -> None:
    code = f"# note{char}print('pwned')"
    with pytest.raises(InvalidPatch, match=rf"train_py holds U\+{ord(char):04X} \(.+\) at line 3, column 7"):
        build(train_py=edit(BASE, 3, code))
    diff = "--- a/trainer/train.py\n+++ b/trainer/train.py\n@@ -3 +3 @@\n-x3 = 3\n+" + code + "\n"
    with pytest.raises(InvalidPatch, match=rf"diff holds U\+{ord(char):04X} \(.+\) at line 5, column 8"):
        build(diff=diff)


@pytest.mark.parametrize("char", [*FOREIGN_BREAKS, "\r", "\0", "\ud800"])
def test_a_diff_on_a_base_that_holds_a_refused_character_is_checked_whole(char: str) -> None:
    """A diff applied to a clean base has its size checked only (its characters are the base's and the
    diff's, both checked); on a base holding a refused character, the patched file is checked whole,
    as it always was, and refused naming what it holds."""
    base = edit(BASE, 20, f"x20 = '{char}'")
    diff = "--- a/trainer/train.py\n+++ b/trainer/train.py\n@@ -3 +3 @@\n-x3 = 3\n+x3 = 33\n"
    with pytest.raises(InvalidPatch, match=r"the patched train\.py (holds|contains|is not valid UTF-8)"):
        build(diff=diff, base=base)


def test_a_diff_on_a_clean_base_is_still_held_to_the_size_cap() -> None:
    diff = "--- a/trainer/train.py\n+++ b/trainer/train.py\n@@ -3 +3 @@\n-x3 = 3\n+x3 = 'é'\n"
    with pytest.raises(InvalidPatch, match=r"the patched train.py is 255 bytes of UTF-8; the limit is 254"):
        build(diff=diff, max_bytes=254)


def test_crlf_line_endings_are_accepted() -> None:
    crlf = edit(BASE, 3, "x3 = 33").replace("\n", "\r\n")
    assert build(train_py=crlf).train_py == edit(BASE, 3, "x3 = 33")


def test_unchanged_candidate_is_rejected() -> None:
    with pytest.raises(InvalidPatch, match="changes nothing"):
        build(train_py=BASE.replace("\n", "  \r\n"))


def test_syntax_error_names_line_and_column() -> None:
    with pytest.raises(InvalidPython, match=r"line 3, column \d+"):
        build(train_py="a = 1\nb = 2\nc = (\n")
    with pytest.raises(InvalidPython, match="outside function"):
        build(train_py="return 1\n")


def test_diff_that_breaks_python_is_rejected_as_invalid_python() -> None:
    with pytest.raises(InvalidPython, match="line 15"):
        build(diff=canonical_diff(BASE, edit(BASE, 15, "x15 = = 0")))


def test_empty_inputs() -> None:
    with pytest.raises(InvalidPatch, match="train_py is empty"):
        build(train_py="  \n")
    with pytest.raises(InvalidPatch, match="diff is empty"):
        build(diff="")


def test_random_edits_round_trip() -> None:
    rng = random.Random(7)
    for _ in range(300):
        lines = BASE.split("\n")[:-1]
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(lines) + 1)
            action = rng.choice(["insert", "delete", "change"])
            if action == "insert" or not lines:
                lines.insert(at, f"y{rng.randrange(1000)} = 0")
            elif action == "delete":
                del lines[min(at, len(lines) - 1)]
            else:
                lines[min(at, len(lines) - 1)] = f"z = {rng.random()}"
        target = "\n".join(lines) + rng.choice(["\n", ""])
        base = BASE if rng.random() < 0.5 else BASE.rstrip("\n")
        assert apply_unified_diff(base, canonical_diff(base, target)) == target
