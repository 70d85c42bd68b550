"""The project speaks to its users: no file in the checkout points to the places its development
happened (tracker numbers, working notes kept outside the repository, the machines it was built on,
paths on those machines). Each rule below names one such usage; ordinary English ("an issue with",
a pytest `scope="session"`, `requests.Session`) passes.

Scanned: every file git tracks or would add (`git ls-files --cached --others --exclude-standard`),
except binary files, this file (its examples break the rules on purpose) and `bench/results/`, whose
files are the benchmarks' recorded output (their commands and logs as they ran, and copies of the
trainer of that day), written by the scripts and never edited by hand."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SKIPPED_PREFIXES = ("bench/results/", "tests/unit/test_project_words.py")

# (what the line points to, pattern); case matters only where a capital tells the usage apart.
TRACKER = (
    r"\b(issue|ticket|pull request|PR)s?\s*#?\d+|\bin\s+the\s+issues\b|\bissues?\s+(says?|asks?|said|asked)\b"
)
TRACKER_ITEM = r"\b(this|that|the next|an? later|an? earlier|the scale|the trainer)\s+issue\b"
SESSION = r"\bsessions?\s*#?\d+\b"
SESSION_ITEM = r"\b(this|that|an? earlier|an? later|another|the previous|the next)\s+session\b"
MACHINE = r"\b(device|CI|dev|development)\s+machines?\b|\bthese\s+machines\b|\bdevice\s+time\b"
NOTES = r"\.\./shared\b|\bshared/(device|data)\b|\b(DESIGN|STYLE|DEVELOPERS)\.md\b|\bclosing\s+note\b|\bthe\s+brief\b"
MACHINE_PATH = r"(?<![\w.])/work/"
RULES: list[tuple[str, re.Pattern[str]]] = [
    ("a tracker item", re.compile(TRACKER, re.IGNORECASE)),
    ("a tracker item", re.compile(TRACKER_ITEM)),
    ("a work session", re.compile(SESSION, re.IGNORECASE)),
    ("a work session", re.compile(SESSION_ITEM)),
    ("a build machine", re.compile(MACHINE, re.IGNORECASE)),
    ("notes outside the repository", re.compile(NOTES, re.IGNORECASE)),
    ("a path on a build machine", re.compile(MACHINE_PATH)),
]


def project_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode()  # fmt: skip
    names = [name for name in listed.split("\0") if name and not name.startswith(SKIPPED_PREFIXES)]
    return [REPO / name for name in names if (REPO / name).is_file()]


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file (a NUL byte, or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def insider_words(text: str) -> list[tuple[int, str, str]]:
    """(line number, what it points to, the words) for every rule a line breaks."""
    hits = []
    for number, line in enumerate(text.splitlines(), start=1):
        for meaning, pattern in RULES:
            found = pattern.search(line)
            if found:
                hits.append((number, meaning, found.group(0)))
    return hits


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_no_file_points_to_where_the_project_was_built() -> None:
    hits = []
    for path in project_files():
        text = text_of(path)
        for number, meaning, words in insider_words(text or ""):
            hits.append(f"{path.relative_to(REPO)}:{number}: {meaning}: {words!r}")
    assert not hits, "reword these for users:\n" + "\n".join(hits)


@pytest.mark.parametrize(
    "line",
    [
        "Runs on the device machine (no network)",
        "as the CI machine showed",
        "the development machines have no GPU",
        "not explored for lack of device time",
        "GPU benchmark (issue 4)",
        "the in-process path (issue #6)",
        "the causality probes are issue 6's work",
        "the anchor in the issues (1.3369)",
        "| session 2 | host slots | 16.5 s |",
        "see ../shared/device/README.md",
        "the trainer contract, DESIGN" + ".md",
        "python bench/x.py --carried /work/main/.gpudata",
    ],
)
def test_each_insider_usage_is_caught(line: str) -> None:
    assert insider_words(line), line


@pytest.mark.parametrize(
    "line",
    [
        '@pytest.fixture(scope="session")',
        "with requests.Session() as session:",
        "async with ClientSession(read, write) as session:",
        "prepared once for the whole session",
        "A proposal id must have the form the API issues",
        "no session between requests, and no sticky sessions",
        "If you hit an issue with the compose file, see docs/operating.md",
        "the evaluation protocol (docs/architecture.md)",
        "a GPU host without Docker",
        "tests/unit/test_x.py and bench/results/logs/cycle.log",
    ],
)
def test_ordinary_words_pass(line: str) -> None:
    assert not insider_words(line), line
