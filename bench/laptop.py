"""The laptop command, measured from a fresh clone: `docker compose -f compose.yaml -f compose.cpu.yaml
up` with nothing else set (no admin token, no corpus: the bundled sample in data/sample), until the
baseline is scored. The admin token is read from the box the controller prints on first start, as a
new user would. Then headless Chromium signs in and photographs the dashboard and the baseline's page
(docs/img/), and `down -v` must leave nothing of the project behind.

    python bench/laptop.py [--clone-of .] [--base-image IMAGE] [--ca-bundle PEM]

`--base-image` is for machines without a registry (compose then builds FROM that local image instead of
the public python:3.11 one), `--ca-bundle` for machines behind a TLS-inspecting proxy (docker/certs/);
they are the only variables set besides the port and the project name.
Writes bench/results/laptop.json (timings, versions, what was left behind) and the compose log beside it
in bench/results/logs/laptop.log.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHOTS = REPO / "docs" / "img"
CPU_FILES = ["-f", "compose.yaml", "-f", "compose.cpu.yaml"]
TOKEN_LINE = re.compile(r"^\W*([A-Za-z0-9_-]{32,})\W*$")
PROJECT_LABEL = "com.docker.compose.project"
CHROMIUM = "/usr/bin/chromium"


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    sys.exit("neither `docker compose` nor `docker-compose` is installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def admin_token_from_box(logs: str) -> str | None:
    """The token line inside the first-start box: the only long token-shaped line after its title."""
    after = logs.split("FIRST ADMIN TOKEN", 1)
    if len(after) < 2:
        return None
    for line in after[1].splitlines()[1:8]:
        text = line.split("|", 1)[-1]  # compose prefixes each line with "service | "
        match = TOKEN_LINE.match(text.strip())
        if match:
            return match.group(1)
    return None


def wait_for(what: str, predicate: Any, timeout_s: float, interval_s: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (httpx.HTTPError, ValueError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval_s)
    raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last!r}")


def leftovers(project: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for kind, args in {
        "containers": ["ps", "-a"],
        "volumes": ["volume", "ls"],
        "networks": ["network", "ls"],
    }.items():
        out = subprocess.run(
            ["docker", *args, "-q", "--filter", f"label={PROJECT_LABEL}={project}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found[kind] = out.split()
    return found


def screenshots(url: str, token: str) -> list[str]:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    taken = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"], headless=True
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url + "/")
        page.fill("#token", token)
        page.keyboard.press("Enter")
        page.wait_for_selector("#progress-plot circle.kept")  # the baseline's point
        page.wait_for_function("document.getElementById('best-bpb').textContent.trim() !== ''")
        time.sleep(3)  # the next poll fills the tables (the live stream keeps the network busy)
        page.screenshot(path=str(SHOTS / "laptop-dashboard.png"), full_page=True)
        taken.append("docs/img/laptop-dashboard.png")
        browser.close()
    return taken


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--clone-of", default=str(REPO), help="the git repository to clone (default: this one)"
    )
    parser.add_argument("--base-image", default="", help="a local base image, where no registry is reachable")
    parser.add_argument("--ca-bundle", default="", help="a CA bundle for pip in the builds (behind a proxy)")
    parser.add_argument("--timeout-s", type=float, default=3600)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ar-laptop-"))
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", args.clone_of, str(clone)], check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout.strip()
    project = f"ar-laptop-{secrets.token_hex(3)}"
    port = free_port()
    env_extra = {"COMPOSE_PROJECT_NAME": project, "AR_PORT": str(port)}
    if args.base_image:
        env_extra["AR_BASE_IMAGE"] = args.base_image
    if args.ca_bundle:
        shutil.copy(args.ca_bundle, clone / "docker" / "certs" / "host.pem")
        env_extra["AR_CA_BUNDLE"] = "docker/certs/host.pem"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AR_")}, **env_extra}
    compose = [*compose_command(), *CPU_FILES]
    url = f"http://127.0.0.1:{port}"
    log_path = RESULTS / "logs" / "laptop.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    result: dict[str, Any] = {
        "command": " ".join([*compose, "up", "-d"]) + "  (from a fresh clone; then wait for the baseline)",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "set_variables": sorted(env_extra),
    }
    start = time.monotonic()
    try:
        up = subprocess.run(
            [*compose, "up", "-d", "--build"], cwd=clone, env=env, capture_output=True, text=True
        )
        timings["build_and_up_s"] = round(time.monotonic() - start, 1)
        if up.returncode != 0:
            raise SystemExit(f"up failed:\n{(up.stdout + up.stderr)[-3000:]}")

        def logs() -> str:
            return subprocess.run(
                [*compose, "logs", "--no-color", "controller"],
                cwd=clone,
                env=env,
                capture_output=True,
                text=True,
            ).stdout

        token = wait_for("the first admin token's box", lambda: admin_token_from_box(logs()), 300)
        headers = {"Authorization": f"Bearer {token}"}

        def best() -> dict[str, Any] | None:
            answer = httpx.get(url + "/v1/best", headers=headers, timeout=10)
            return answer.json() if answer.status_code == 200 and answer.json().get("val_bpb") else None

        scored = wait_for("the baseline's score", best, args.timeout_s, interval_s=5)
        timings["up_to_baseline_scored_s"] = round(time.monotonic() - start, 1)
        result["baseline"] = {k: scored.get(k) for k in ("commit", "val_bpb", "proposal_id")}
        result["screenshots"] = screenshots(url, token)
    finally:
        log_path.write_text(
            subprocess.run(
                [*compose, "logs", "--no-color"], cwd=clone, env=env, capture_output=True, text=True
            ).stdout
        )
        down_start = time.monotonic()
        subprocess.run([*compose, "down", "-v"], cwd=clone, env=env, capture_output=True, text=True)
        timings["down_s"] = round(time.monotonic() - down_start, 1)
        result["left_behind"] = leftovers(project)
        result["timings"] = timings
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "laptop.json").write_text(json.dumps(result, indent=2) + "\n")
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if any(result["left_behind"].values()):
        sys.exit(f"down -v left project resources behind: {result['left_behind']}")


if __name__ == "__main__":
    main()
