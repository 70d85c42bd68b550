"""Claude Code adds the controller's /mcp as an HTTP MCP server and reports it connected.

    python -m tests.integration.claude_code_check --claude PATH [--loopback-only]

Starts a private Redis and a controller (tests/support/live_server.py), makes an agent token, and
in a fresh HOME runs, as a user would:

    claude mcp add --transport http autoresearch URL/mcp --header "Authorization: Bearer TOKEN"
    claude mcp list

and the same with a wrong token (the control: it must not be reported connected). Prints what Claude
Code printed; exits 0 when the first is "Connected" and the control is not. With --loopback-only
the whole check runs in a network namespace holding only loopback (`unshare -rn`), which shows that
nothing beyond loopback is needed; where the kernel refuses one, it says so and exits 3.
"""

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import redis

from services.store import Store
from tests.support.live_server import agent_token, seed, serve, settings_for
from tests.support.net import free_port, wait_for

CLAUDE_TIMEOUT_S = 120  # hang guard per claude command
INSIDE = "AR_CLAUDE_CHECK_IN_NAMESPACE"  # set when re-run inside the namespace
EXIT_NO_NAMESPACE = 3
# Claude Code's own traffic (updates, telemetry, error reports) off: the check needs none of it.
QUIET = {
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
}
GOOD, CONTROL = "autoresearch", "autoresearch-wrong-token"


def loopback_only(argv: Sequence[str]) -> list[str] | None:
    """`argv` wrapped to run in a new network namespace with loopback up, if this kernel allows it."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    wrapped = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]
    probe = subprocess.run([*wrapped[: -len(argv)], "true"], capture_output=True, timeout=30, check=False)
    return wrapped if probe.returncode == 0 else None


@contextmanager
def private_redis() -> Iterator[str]:
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder],
            stdout=subprocess.DEVNULL,
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            wait_for(lambda: _answers(url), 10, "redis-server to start")
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.ConnectionError:
        return False


def claude(binary: str, home: Path, *args: str) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **QUIET}
    done = subprocess.run(
        [binary, *args],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLAUDE_TIMEOUT_S,
        check=False,
    )
    shown = [repr("Authorization: Bearer ***") if "Bearer" in a else a for a in args]  # no token in logs
    print(f"$ claude {' '.join(shown)}")
    print((done.stdout + done.stderr).rstrip())
    if done.returncode != 0:
        raise SystemExit(f"claude {args[0]} {args[1]} exited {done.returncode}")
    return done.stdout


def status_line(listing: str, name: str) -> str:
    return next((line for line in listing.splitlines() if line.startswith(f"{name}: ")), "")


def check(binary: str) -> int:
    with private_redis() as redis_url:
        store = Store(redis.Redis.from_url(redis_url))
        with serve(settings_for(redis_url), seed(store)) as url, tempfile.TemporaryDirectory() as home:
            token = agent_token(store, "claude-code")
            for name, bearer in ((GOOD, token), (CONTROL, "ar_wrong")):
                header = f"Authorization: Bearer {bearer}"
                claude(
                    binary,
                    Path(home),
                    "mcp",
                    "add",
                    "--transport",
                    "http",
                    name,
                    f"{url}/mcp",
                    "--header",
                    header,
                )
            started = time.monotonic()
            listing = claude(binary, Path(home), "mcp", "list")
            print(f"# claude mcp list took {time.monotonic() - started:.1f} s")
    good, control = status_line(listing, GOOD), status_line(listing, CONTROL)
    ok = good.endswith("Connected") and "Connected" not in control
    print("# PASS" if ok else "# FAIL", "(the right token connects; the wrong one does not)")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--claude", default=shutil.which("claude"), help="the claude executable")
    p.add_argument(
        "--loopback-only", action="store_true", help="run in a network namespace with only loopback"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)  # the controller's and the SDK's INFO lines are not the point
    if not args.claude:
        p.error("no claude executable: pass --claude (tests/integration/claude_code.sh installs it)")
    if args.loopback_only and not os.environ.get(INSIDE):
        wrapped = loopback_only(
            [sys.executable, "-m", "tests.integration.claude_code_check", "--claude", args.claude]
        )
        if wrapped is None:
            print("no network namespace here (unshare -rn and ip are needed)", file=sys.stderr)
            return EXIT_NO_NAMESPACE
        print("# in a network namespace with only loopback (unshare -rn)")
        sys.stdout.flush()
        return subprocess.run(wrapped, env={**os.environ, INSIDE: "1"}, check=False).returncode
    return check(args.claude)


if __name__ == "__main__":
    sys.exit(main())
