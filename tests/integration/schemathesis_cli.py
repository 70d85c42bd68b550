"""Run the schemathesis CLI against a live controller: every check (`--checks all`), the phases asked
for, a seed that a failure replays with. Used by tests/integration/test_fuzz_api.py (the stateful
phase) and bench/fuzz_api.py (every phase, by hand).

The seed defaults to one derived from the code under test: the first 8 hex digits of the git HEAD as
an integer, or, without git, of a sha256 over the files of services/ and tests/. So a run is the same
run for the same code, and a failure replays with `AR_FUZZ_SEED=<the printed seed>`.
"""

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "schemathesis.toml"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
PHASES = ("examples", "coverage", "fuzzing", "stateful")
REQUEST_TIMEOUT_S = 30  # per request; the event streams are left out of the CLI runs (see below)
# The two event streams never end while their proposal runs; the in-process fuzz reads them for a
# moment each (test_fuzz_the_openapi_schema). The CLI would wait for each until the timeout.
STREAMS = r"^/v1/(events|proposals/\{proposal_id\}/log/stream)$"


@dataclass(frozen=True)
class FuzzRun:
    returncode: int
    output: str
    seed: int

    def summary(self) -> str:
        """The CLI's closing lines (cases, failures, seed)."""
        lines = [line for line in self.output.splitlines() if line.strip()]
        tail = [line for line in lines if re.search(r"(passed|failed|error|Seed|test cases|cases)", line)]
        return "\n".join(tail[-8:])


def default_seed() -> int:
    """AR_FUZZ_SEED, else the first 8 hex digits of HEAD, else of a hash of services/ and tests/."""
    if os.environ.get("AR_FUZZ_SEED"):
        return int(os.environ["AR_FUZZ_SEED"])
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        digest = hashlib.sha256()
        for path in sorted(p for folder in ("services", "tests") for p in (REPO / folder).rglob("*.py")):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
        head = digest.hexdigest()
    return int(head[:8], 16)


def run_schemathesis(
    base_url: str,
    token: str,
    *,
    phases: tuple[str, ...],
    seed: int,
    max_examples: int,
    report_dir: Path,
    timeout_s: float,
) -> FuzzRun:
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        ",".join(phases),
        "--seed",
        str(seed),
        "--max-examples",
        str(max_examples),
        "--header",
        f"Authorization: Bearer {token}",
        "--exclude-path-regex",
        STREAMS,
        "--request-timeout",
        str(REQUEST_TIMEOUT_S),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--report",
        "junit,ndjson",
        "--report-dir",
        str(report_dir),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    return FuzzRun(proc.returncode, proc.stdout + proc.stderr, seed)
