"""Claude Code (the npm package @anthropic-ai/claude-code) adds the controller's /mcp as an HTTP MCP
server and reports it connected, in a network namespace with only loopback where the kernel gives one
(tests/integration/claude_code_check.py). Skips when Claude Code is not installed:
tests/integration/claude_code.sh installs it with npm and runs the same check."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.claude_code_check import EXIT_NO_NAMESPACE

REPO = Path(__file__).resolve().parents[2]
# Where claude_code.sh installs the package by default
DEFAULT_PREFIX = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "autoresearch" / "claude-code"
)
CHECK_TIMEOUT_S = 600  # hang guard: a controller, Redis and three claude commands


def claude_executable() -> str | None:
    prefix = Path(os.environ.get("CLAUDE_CODE_PREFIX", DEFAULT_PREFIX))
    installed = prefix / "node_modules" / ".bin" / "claude"
    return (
        os.environ.get("CLAUDE") or shutil.which("claude") or (str(installed) if installed.exists() else None)
    )


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tests.integration.claude_code_check", *args]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, check=False
    )


def test_claude_code_adds_the_http_server_and_reports_it_connected() -> None:
    claude = claude_executable()
    if claude is None:
        missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
        pytest.skip(
            f"{' and '.join(missing)} not installed, so no Claude Code"
            if missing
            else "Claude Code is not installed (tests/integration/claude_code.sh installs it with npm; or set CLAUDE)"
        )
    done = run_check("--claude", claude, "--loopback-only")
    if done.returncode == EXIT_NO_NAMESPACE:  # no network namespace here: the host's network, then
        done = run_check("--claude", claude)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "autoresearch: http://127.0.0.1:" in output and "/mcp (HTTP) - ✔ Connected" in output, output
    assert "autoresearch-wrong-token: " in output and "# PASS" in output, output
