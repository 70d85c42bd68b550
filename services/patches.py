"""Turn a submitted `train.py` or unified diff into a validated candidate (pure: no I/O, no FastAPI).

What is checked, in order, each failure raising `InvalidPatch` or `InvalidPython` with a message
that says what to fix:

    1. exactly one of `train_py` / `diff`; size in UTF-8 bytes; valid UTF-8 (no lone surrogates), no NUL,
       no line break other than `\\n` and `\\r\\n` (see "Lines" below)
    2. a diff touches `trainer/train.py` only: no other path, no rename, copy, creation, deletion,
       mode change or binary patch, one file only
    3. the diff applies strictly: every hunk's old lines must equal the base at the line its header
       states (no offset search, no fuzz); hunks in order and not overlapping
    4. the candidate compiles as Python (it is never run here); of a change to a base that compiles,
       the top-level statements it touches are compiled (`changed_region`), the whole file only if
       they fail
    5. the candidate differs from the base after normalisation

Lines: `split_lines` is the one definition of a line of `train.py` or of a diff, used wherever one is
parsed, canonicalised, applied or re-applied: a line ends at `\\n` (`\\r\\n` counts as `\\n`). Python
agrees (its tokenizer ends lines at `\\n`, `\\r\\n` and a lone `\\r` only), but `str.splitlines`, editors
and other tools also break lines at U+2028, U+2029, U+0085, VT, FF and `\\x1c`-`\\x1e`. A comment holding
one of those is one line to Python and two to such a tool: a diff made or re-applied by it would turn
the comment's tail into live code. So a submission holding any of them, or a lone `\\r`, is refused
(`check_line_breaks`, naming the character, line and column).

Normalisation (what deduplication hashes): line endings become `\\n`, trailing whitespace is
stripped from every line and trailing blank lines are dropped. Python's tokenizer treats `\\r\\n`
as `\\n`, so the stored candidate keeps its content but gets `\\n` line endings; its canonical diff is
made with difflib, so two submissions of the same file store the same diff whatever form they came in.

One leniency: inside a hunk a completely empty line counts as an empty context line, because editors
and mail clients strip the single space that `diff` writes there; it still has to match the base.
"""

import ast
import bisect
import difflib
import functools
import hashlib
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from services.errors import InvalidPatch, InvalidPython

TRAIN_PY = "trainer/train.py"
NO_NEWLINE_MARKER = "\\ No newline at end of file"
DIFF_CONTEXT_LINES = 3  # lines of context around each change in a canonical diff (diff -u's default)

_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(?: .*)?$")
# git extended headers that say something other than "this file's content changed".
_FORBIDDEN_GIT_HEADERS = {
    "new file mode": "creates a file",
    "deleted file mode": "deletes a file",
    "old mode": "changes a file mode",
    "new mode": "changes a file mode",
    "rename from": "renames a file",
    "rename to": "renames a file",
    "copy from": "copies a file",
    "copy to": "copies a file",
    "similarity index": "renames or copies a file",
    "dissimilarity index": "rewrites a file under another name",
    "GIT binary patch": "is a binary patch",
    "Binary files": "is a binary patch",
}
_ALLOWED_PATHS = {TRAIN_PY, f"a/{TRAIN_PY}", f"b/{TRAIN_PY}"}
# Characters that some tool takes for a line break though Python does not (or, for a lone `\r`, though
# `split_lines` does not): refused in every submitted train.py and diff. Their names, for the error.
_FOREIGN_BREAKS = {
    "\x0b": "LINE TABULATION (VT)",
    "\x0c": "FORM FEED (FF)",
    "\x1c": "INFORMATION SEPARATOR FOUR",
    "\x1d": "INFORMATION SEPARATOR THREE",
    "\x1e": "INFORMATION SEPARATOR TWO",
    "\x85": "NEXT LINE (NEL)",
    "\u2028": "LINE SEPARATOR",
    "\u2029": "PARAGRAPH SEPARATOR",
    "\r": "CARRIAGE RETURN not followed by a line feed",
}
_FOREIGN_BREAK = re.compile("[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]|\r(?!\n)")
_COMPILE_LOCK = threading.Lock()
# Bases (and the candidate a submit is working on) whose outline, lines, cleanliness or normal form are
# kept per process: a base changes when the best does.
OUTLINES_CACHED = 8


@dataclass(frozen=True)
class Candidate:
    train_py: str  # the file as it will run, `\n` line endings
    diff: str  # canonical unified diff base → candidate
    content_hash: str  # sha256 hex of base commit + normalised candidate


def build_candidate(
    base_train_py: str,
    *,
    base_commit: str,
    train_py: str | None,
    diff: str | None,
    max_bytes: int,
) -> Candidate:
    """Validate a submission against the base's `train.py`; raise InvalidPatch / InvalidPython."""
    text = candidate_text(base_train_py, train_py=train_py, diff=diff, max_bytes=max_bytes)
    return finish_candidate(base_train_py, text, content_hash(base_commit, text))


def candidate_text(base_train_py: str, *, train_py: str | None, diff: str | None, max_bytes: int) -> str:
    """The first, cheap half of `build_candidate`: the text checks and the diff applied, giving the
    candidate with `\n` line endings (not yet compiled). Its `content_hash` answers a duplicate before
    the costly half runs."""
    if (train_py is None) == (diff is None):
        raise InvalidPatch("send exactly one of `train_py` (the whole file) or `diff` (a unified diff)")
    if diff is not None:
        check_text(diff, "diff", max_bytes)
        candidate = apply_unified_diff(lf(base_train_py), diff)
        if clean_text(base_train_py):
            # Its characters are the base's and the diff's, both clean: only its size is new.
            check_size(candidate, "the patched train.py", max_bytes)
        else:
            check_text(candidate, "the patched train.py", max_bytes)
    else:
        assert train_py is not None
        check_text(train_py, "train_py", max_bytes)
        candidate = train_py
    return lf(candidate)


def prepare_base(base_train_py: str) -> None:
    """Compute what every submit on this base reads, and keep it (the caches below): its outline (the
    base parsed and compiled, ~20 ms for train.py, the costliest), its lines, its normal form and
    whether its characters are clean. Otherwise the first submit on the base pays for it."""
    base = lf(base_train_py)
    outline(base)
    clean_text(base_train_py)
    normalised(base_train_py)
    lines_of(base)
    lines_of(base, keepends=True)


def finish_candidate(base_train_py: str, candidate: str, candidate_hash: str) -> Candidate:
    """The second half of `build_candidate`: compile once, refuse a change of nothing, and make the
    canonical diff. `candidate` comes from `candidate_text`, `candidate_hash` is its `content_hash`."""
    check_python(candidate, base_train_py)
    if normalised(candidate) == normalised(base_train_py):
        raise InvalidPatch(
            "the candidate changes nothing: it equals the base train.py up to line endings and trailing "
            "whitespace; change the code"
        )
    return Candidate(
        train_py=candidate, diff=canonical_diff(lf(base_train_py), candidate), content_hash=candidate_hash
    )


# ---------------------------------------------------------------------------- text checks


def check_text(text: str, what: str, max_bytes: int) -> None:
    """Size cap in UTF-8 bytes, no lone surrogates, no NUL, no line break but `\\n` and `\\r\\n`."""
    check_size(text, what, max_bytes)
    nul = text.find("\0")
    if nul >= 0:
        raise InvalidPatch(f"{what} contains a NUL byte on line {text.count(chr(10), 0, nul) + 1}; remove it")
    check_line_breaks(text, what)


def check_size(text: str, what: str, max_bytes: int) -> None:
    """The first checks of `check_text`: not empty, valid UTF-8 (no lone surrogates), at most
    `max_bytes` bytes of it."""
    if not text.strip():
        raise InvalidPatch(f"{what} is empty")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        raise InvalidPatch(
            f"{what} is not valid UTF-8: line {line} holds a lone surrogate (U+{ord(text[exc.start]):04X}); "
            "send the text as valid UTF-8"
        ) from exc
    if size > max_bytes:
        raise InvalidPatch(
            f"{what} is {size} bytes of UTF-8; the limit is {max_bytes} bytes: make it smaller"
        )


@functools.lru_cache(maxsize=OUTLINES_CACHED)
def clean_text(text: str) -> bool:
    """True when `text` holds none of what `check_text` refuses in its characters: no lone surrogate,
    no NUL, no line break but `\\n` and `\\r\\n` (so `lf(text)` holds no `\\r` at all). A diff that
    passes `check_text`, applied to a clean base, gives a candidate whose every character comes from
    the two (and `\\n`), so only its size needs checking (`candidate_text`). Cached: bases repeat."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\0" not in text and _FOREIGN_BREAK.search(text) is None


def check_line_breaks(text: str, what: str) -> None:
    """Refuse any character that some tool takes for a line break other than `\\n` and `\\r\\n`
    (module docstring, "Lines"), naming it and its 1-based line and column (lines as `split_lines`
    counts them)."""
    found = _FOREIGN_BREAK.search(text)
    if found is None:
        return
    at = found.start()
    char = text[at]
    line = text.count("\n", 0, at) + 1
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    who = (
        "Python takes it for a line break and the service's diffs do not"
        if char == "\r"
        else "some tools take it for a line break and Python does not"
    )
    raise InvalidPatch(
        f"{what} holds U+{ord(char):04X} ({_FOREIGN_BREAKS[char]}) at line {line}, column {column}: {who}, "
        "so the code a reviewer or a diff tool sees could differ from the code that runs; remove it (inside "
        f"a string literal write it as an escape, e.g. '\\u{ord(char):04x}') and end lines with \\n or \\r\\n"
    )


def check_python(source: str, base: str | None = None) -> None:
    """Compile (never run) the candidate: catches syntax errors and compile-time ones such as a
    module-level `return`. Given the `base` it was made from, only the top-level statements the change
    touches are compiled when that decides it (`changed_region`); a failure there is settled by
    compiling the whole file, so the error and its position are the whole file's."""
    if base is not None:
        region = changed_region(outline(lf(base)), source)
        if region is not None and _compiles(region):
            return
    try:
        _compile(source)
    except SyntaxError as exc:
        raise InvalidPython(
            f"the candidate train.py does not parse as Python: {exc.msg} at line {exc.lineno}, "
            f"column {exc.offset}"
        ) from exc
    except (ValueError, RecursionError, MemoryError) as exc:
        raise InvalidPython(f"the candidate train.py does not parse as Python: {exc}") from exc


def _compile(source: str) -> None:
    """Warnings are silenced under a lock (the filter list is process-global) so a candidate full of
    odd escapes cannot flood the controller's log."""
    with _COMPILE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compile(source, TRAIN_PY, "exec", dont_inherit=True)


def _compiles(source: str) -> bool:
    try:
        _compile(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


# ---------------------------------------------------------------------------- compiling what changed


@dataclass(frozen=True)
class Outline:
    """A base `train.py` that compiles, as lines, and the 0-based indices of the lines where its
    top-level statements begin (decorators included), with the number of lines: the places where the
    file can be cut into runs of whole statements."""

    lines: tuple[str, ...]
    cuts: tuple[int, ...]  # ascending, from 0 (before any statement) to len(lines)


# Module-scope facts that tie one top-level statement to another (a `from __future__` import must come
# first; `global x` at module level is an error after a use of x): where either word occurs, the whole
# file is compiled.
_CROSS_STATEMENT = re.compile(r"__future__|\bglobal\b")


@functools.lru_cache(maxsize=OUTLINES_CACHED)
def outline(base: str) -> Outline | None:
    """The base's outline, or None when the base does not compile or ties statements together."""
    if _CROSS_STATEMENT.search(base) or not _compiles(base):
        return None
    try:
        tree = ast.parse(base)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    lines = tuple(split_lines(base))
    starts = []
    for node in tree.body:
        if node.col_offset != 0:  # a statement after `;` or a backslash: cut nowhere near it
            return None
        decorators = getattr(node, "decorator_list", [])
        starts.append(min([node.lineno, *(d.lineno for d in decorators)]) - 1)
    return Outline(lines, tuple(sorted({0, *starts, len(lines)})))


def changed_region(base: Outline | None, candidate: str) -> str | None:
    """The candidate's lines that differ from the base, widened to whole top-level statements of the
    base, with blank lines in front so line numbers stay the file's. If this region compiles, the
    whole candidate does: the lines before it and after it are runs of whole statements of a base
    that compiled, and a region that compiles on its own ends where a statement may begin. None when
    that argument does not hold here (no outline, or the change names `__future__` or `global`)."""
    if base is None or not base.lines:
        return None
    lines = split_lines(candidate)
    old = base.lines
    same_head = 0
    limit = min(len(lines), len(old))
    while same_head < limit and lines[same_head] == old[same_head]:
        same_head += 1
    same_tail = 0
    while same_tail < limit - same_head and lines[-1 - same_tail] == old[-1 - same_tail]:
        same_tail += 1
    start = base.cuts[bisect.bisect_right(base.cuts, same_head) - 1]
    end = base.cuts[bisect.bisect_left(base.cuts, len(old) - same_tail)]
    region = lines[start : len(lines) - (len(old) - end)]
    text = "\n".join(region) + "\n"
    if _CROSS_STATEMENT.search(text):
        return None
    return "\n" * start + text


# ---------------------------------------------------------------------------- normal forms


def lf(text: str) -> str:
    """`\\r\\n` line endings become `\\n` (the only other line ending `split_lines` knows)."""
    return text.replace("\r\n", "\n")


def split_lines(text: str, *, keepends: bool = False) -> list[str]:
    """The one definition of a line of `train.py` or of a diff: a line ends at `\\n`, and `\\r\\n`
    counts as `\\n` (it is returned as `\\n`). Like `str.splitlines`, a final line without a line end
    is kept and an empty text has no lines; unlike it, no other character ends a line."""
    parts = lf(text).split("\n")
    last = parts.pop()
    lines = [part + "\n" for part in parts] if keepends else parts
    return [*lines, last] if last else lines


@functools.lru_cache(maxsize=OUTLINES_CACHED)
def lines_of(text: str, *, keepends: bool = False) -> tuple[str, ...]:
    """`split_lines`, cached, for a base's lines: every submit on a base splits it again otherwise."""
    return tuple(split_lines(text, keepends=keepends))


def normalise(text: str) -> str:
    """`\\n` line endings, no trailing whitespace per line, no trailing blank lines, one final newline."""
    lines = [line.rstrip() for line in split_lines(text)]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=OUTLINES_CACHED)
def normalised(text: str) -> str:
    """`normalise`, cached: a submit normalises its candidate to hash it and again, with its base, to
    refuse a change of nothing (`finish_candidate`)."""
    return normalise(text)


def content_hash(base_commit: str, train_py: str) -> str:
    digest = hashlib.sha256()
    digest.update(base_commit.encode())
    digest.update(b"\0")
    digest.update(normalised(train_py).encode())
    return digest.hexdigest()


def canonical_diff(base: str, candidate: str) -> str:
    """difflib's unified diff with git-style headers and `\\ No newline at end of file` markers.
    difflib compares only what lies between the lines the two share at their start and end (and the
    context lines around it), so a small change to a long file costs little; hunk headers are then
    numbered as lines of the whole file."""
    old = lines_of(base, keepends=True)
    new = split_lines(candidate, keepends=True)
    head, tail = _common_ends(old, new)
    skip_head = max(0, head - DIFF_CONTEXT_LINES)
    skip_tail = max(0, tail - DIFF_CONTEXT_LINES)
    lines = difflib.unified_diff(
        old[skip_head : len(old) - skip_tail],
        new[skip_head : len(new) - skip_tail],
        fromfile=f"a/{TRAIN_PY}",
        tofile=f"b/{TRAIN_PY}",
        n=DIFF_CONTEXT_LINES,
    )
    out: list[str] = []
    for line in lines:
        if skip_head and line.startswith("@@ "):
            line = _shift_header(line, skip_head)
        if line.endswith("\n"):
            out.append(line)
        else:
            out.append(line + "\n" + NO_NEWLINE_MARKER + "\n")
    return "".join(out)


def _common_ends(old: Sequence[str], new: Sequence[str]) -> tuple[int, int]:
    """How many lines the two share at their start, and then at their end (not overlapping)."""
    limit = min(len(old), len(new))
    head = 0
    while head < limit and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < limit - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    return head, tail


def _shift_header(header: str, lines: int) -> str:
    match = _HUNK_HEADER.match(header.rstrip("\n"))
    assert match is not None, header  # difflib writes every header in this form
    old = f"{int(match[1]) + lines}" + ("" if match[2] is None else f",{match[2]}")
    new = f"{int(match[3]) + lines}" + ("" if match[4] is None else f",{match[4]}")
    return f"@@ -{old} +{new} @@\n"


# ---------------------------------------------------------------------------- diff parsing


@dataclass(frozen=True)
class Hunk:
    number: int  # 1-based, in diff order
    header: str
    old_start: int
    old_lines: list[str]
    new_lines: list[str]
    old_ends_without_newline: bool
    new_ends_without_newline: bool


def parse_unified_diff(diff: str) -> list[Hunk]:
    """The hunks of a one-file unified diff of `trainer/train.py`."""
    lines = split_lines(diff)
    index = _parse_file_header(lines)
    hunks: list[Hunk] = []
    while index < len(lines):
        line = lines[index]
        if line.startswith("@@"):
            hunk, index = _parse_hunk(lines, index, len(hunks) + 1)
            hunks.append(hunk)
        elif line.startswith(("--- ", "diff --git ", "+++ ")):
            raise InvalidPatch(
                f"diff line {index + 1}: a second file starts here; a proposal may change only {TRAIN_PY}"
            )
        elif not line.strip():
            index += 1
        elif line[:1] in " +-" and hunks:
            last = hunks[-1]
            raise InvalidPatch(
                f"diff line {index + 1}: {line[:80]!r} does not fit the header's line counts of hunk "
                f"{last.number} ({last.header}: {len(last.old_lines)} old, {len(last.new_lines)} new lines); "
                "fix the counts or regenerate the diff"
            )
        else:
            raise InvalidPatch(
                f"diff line {index + 1}: expected a hunk header '@@ -l,s +l,s @@', got {line[:80]!r}"
            )
    if not hunks:
        raise InvalidPatch("the diff has no hunks ('@@ -l,s +l,s @@' sections); nothing would change")
    return hunks


def _parse_file_header(lines: list[str]) -> int:
    """Skip `diff --git`/`index` lines, check `---`/`+++`; return the index after `+++`."""
    index = 0
    while index < len(lines) and not lines[index].startswith("--- "):
        line = lines[index]
        for prefix, what in _FORBIDDEN_GIT_HEADERS.items():
            if line.startswith(prefix):
                raise InvalidPatch(
                    f"diff line {index + 1}: the diff {what}; only edits of {TRAIN_PY} are accepted"
                )
        if line.startswith("diff --git "):
            _check_git_line(line, index)
        elif line.startswith("@@"):
            raise InvalidPatch(
                f"diff line {index + 1}: hunk before the '--- a/{TRAIN_PY}' / '+++ b/{TRAIN_PY}' header"
            )
        elif not line.startswith("index ") and line.strip():
            raise InvalidPatch(
                f"diff line {index + 1}: expected '--- a/{TRAIN_PY}', got {line[:80]!r}; send a unified diff "
                "(`diff -u` or `git diff`)"
            )
        index += 1
    if index + 1 >= len(lines) or not lines[index + 1].startswith("+++ "):
        raise InvalidPatch(
            f"not a unified diff: expected a '--- a/{TRAIN_PY}' line followed by '+++ b/{TRAIN_PY}'"
        )
    _check_path(lines[index][4:], index)
    _check_path(lines[index + 1][4:], index + 1)
    return index + 2


def _check_git_line(line: str, index: int) -> None:
    paths = line[len("diff --git ") :].split(" ")
    if len(paths) != 2:
        raise InvalidPatch(f"diff line {index + 1}: only {TRAIN_PY} may change; got {line[:120]!r}")
    for path in paths:
        _check_path(path, index)


def _check_path(field: str, index: int) -> None:
    path = field.split("\t", 1)[0].rstrip()  # `diff -u` appends a tab and a timestamp
    if path == "/dev/null":
        raise InvalidPatch(
            f"diff line {index + 1}: the diff creates or deletes a file (/dev/null); edit {TRAIN_PY} instead"
        )
    if path in _ALLOWED_PATHS:
        return
    if path.startswith("/") or ".." in path.split("/") or path.startswith('"'):
        raise InvalidPatch(
            f"diff line {index + 1}: path {path[:120]!r} is not allowed; only {TRAIN_PY} may change"
        )
    raise InvalidPatch(f"diff line {index + 1}: the diff touches {path[:120]!r}; only {TRAIN_PY} may change")


def _parse_hunk(lines: list[str], index: int, number: int) -> tuple[Hunk, int]:
    header = lines[index]
    match = _HUNK_HEADER.match(header)
    if match is None:
        raise InvalidPatch(
            f"diff line {index + 1}: malformed hunk header {header[:80]!r}; expected '@@ -l,s +l,s @@'"
        )
    old_start, new_start = int(match[1]), int(match[3])
    old_count = 1 if match[2] is None else int(match[2])
    new_count = 1 if match[4] is None else int(match[4])
    del new_start  # the old range locates the hunk; the new start is implied by earlier hunks
    old: list[str] = []
    new: list[str] = []
    old_eof = new_eof = False
    last: str | None = None  # which side(s) the previous line belonged to
    index += 1
    while index < len(lines) and (
        len(old) < old_count or len(new) < new_count or lines[index] == NO_NEWLINE_MARKER
    ):
        line = lines[index]
        tag, text = (line[:1], line[1:]) if line else (" ", "")
        if line == NO_NEWLINE_MARKER:
            if last is None:
                raise InvalidPatch(f"diff line {index + 1}: '{NO_NEWLINE_MARKER}' with no line before it")
            old_eof = old_eof or last in (" ", "-")
            new_eof = new_eof or last in (" ", "+")
        elif tag == " " and len(old) < old_count and len(new) < new_count:
            old.append(text)
            new.append(text)
        elif tag == "-" and len(old) < old_count:
            old.append(text)
        elif tag == "+" and len(new) < new_count:
            new.append(text)
        else:
            raise InvalidPatch(
                f"hunk {number} ({header}) at diff line {index + 1}: {line[:80]!r} does not fit the header's "
                f"line counts (it promises {old_count} old and {new_count} new lines); fix the counts or "
                "regenerate the diff"
            )
        last = tag if line != NO_NEWLINE_MARKER else None
        index += 1
    if len(old) < old_count or len(new) < new_count:
        raise InvalidPatch(
            f"hunk {number} ({header}) is truncated: the diff ends after {len(old)} of {old_count} old and "
            f"{len(new)} of {new_count} new lines"
        )
    hunk = Hunk(number, header, old_start, old, new, old_eof, new_eof)
    return hunk, index


# ---------------------------------------------------------------------------- strict application


def apply_unified_diff(base: str, diff: str) -> str:
    """Apply a one-file unified diff to `base` exactly: no offsets, no fuzz."""
    hunks = parse_unified_diff(diff)
    base_lines = lines_of(base)
    base_has_final_newline = not base or lf(base).endswith("\n")
    out: list[str] = []
    cursor = 0  # index of the next base line not yet copied
    final_newline = base_has_final_newline
    for hunk in hunks:
        if hunk.old_lines and hunk.old_start < 1:
            raise InvalidPatch(f"hunk {hunk.number} ({hunk.header}): line numbers start at 1")
        start = hunk.old_start - 1 if hunk.old_lines else hunk.old_start
        if start < cursor:
            raise InvalidPatch(
                f"hunk {hunk.number} ({hunk.header}) starts at line {hunk.old_start}, inside or before the "
                "previous hunk; hunks must be in file order and must not overlap"
            )
        end = start + len(hunk.old_lines)
        _match_hunk(hunk, base_lines, start, base_has_final_newline)
        out.extend(base_lines[cursor:start])
        out.extend(hunk.new_lines)
        cursor = end
        if end == len(base_lines) and (hunk.old_lines or hunk.new_lines):
            final_newline = not hunk.new_ends_without_newline
    out.extend(base_lines[cursor:])
    return "\n".join(out) + ("\n" if final_newline and out else "")


def _match_hunk(hunk: Hunk, base_lines: Sequence[str], start: int, base_has_final_newline: bool) -> None:
    where = f"hunk {hunk.number} ({hunk.header}) does not apply"
    end = start + len(hunk.old_lines)
    if end > len(base_lines):
        raise InvalidPatch(
            f"{where}: it needs base lines {start + 1}-{end} but the base has {len(base_lines)} lines; "
            "regenerate the diff against the base train.py (GET /v1/best/train.py)"
        )
    for offset, expected in enumerate(hunk.old_lines):
        actual = base_lines[start + offset]
        if actual != expected:
            raise InvalidPatch(
                f"{where}: line {start + offset + 1} of the base is {actual[:100]!r} but the hunk expects "
                f"{expected[:100]!r}; regenerate the diff against the base train.py (GET /v1/best/train.py)"
            )
    touches_end = end == len(base_lines) and bool(hunk.old_lines)
    if hunk.old_ends_without_newline and not (touches_end and not base_has_final_newline):
        raise InvalidPatch(
            f"{where}: it says the base's last line has no newline at end of file, but the base "
            + ("does end with a newline" if touches_end else f"continues after line {end}")
        )
    if touches_end and not base_has_final_newline and not hunk.old_ends_without_newline:
        raise InvalidPatch(
            f"{where}: the base's last line (line {end}) has no newline at end of file; the hunk needs the "
            f"'{NO_NEWLINE_MARKER}' marker after it"
        )
