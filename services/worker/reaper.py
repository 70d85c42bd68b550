"""Remove stray sandbox containers: those labelled `autoresearch.managed=1` that a worker left
behind (killed mid-run, daemon restarted). The sandbox removes its containers in `finally`; this is
for what `finally` never reached.

    autoresearch-reap [--older-than SECONDS] [--dry-run]      (`make reap`)

Without --older-than every managed container goes, running ones too: use it when no worker is
running, or give an age longer than any step (wall clock + evaluation timeout) on a live host.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker.errors
from docker.client import DockerClient  # not `docker.DockerClient`: mypy sees ./docker/ as a package

from services.errors import SandboxUnavailable
from services.worker.docker_sandbox import LABEL_MANAGED, LABEL_RUN, LABEL_STEP


@dataclass(frozen=True)
class Reaped:
    name: str
    run_id: str
    step: str
    age_s: float


def reap(
    client: DockerClient,
    older_than_s: float = 0.0,
    *,
    labels: dict[str, str] | None = None,
    dry_run: bool = False,
) -> list[Reaped]:
    """Force-remove managed containers created more than `older_than_s` seconds ago (and carrying
    `labels` too, if given: e.g. one run's)."""
    now = time.time()
    reaped: list[Reaped] = []
    selectors = [f"{LABEL_MANAGED}=1", *(f"{key}={value}" for key, value in (labels or {}).items())]
    with _translated():
        listed: list[dict[str, Any]] = client.api.containers(all=True, filters={"label": selectors})
        for summary in listed:
            age_s = now - float(summary["Created"])
            if age_s < older_than_s:
                continue
            found = summary.get("Labels") or {}
            names = summary.get("Names") or [summary["Id"][:12]]
            if not dry_run:
                with contextlib.suppress(docker.errors.NotFound):  # removed meanwhile
                    client.api.remove_container(summary["Id"], force=True)
            reaped.append(
                Reaped(names[0].lstrip("/"), found.get(LABEL_RUN, ""), found.get(LABEL_STEP, ""), age_s)
            )
    return reaped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoresearch-reap", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--older-than", type=float, default=0.0, metavar="SECONDS", help="only containers this old"
    )
    parser.add_argument("--dry-run", action="store_true", help="list, do not remove")
    parser.add_argument(
        "--docker-url", default=None, help="daemon URL (default: DOCKER_HOST or the local socket)"
    )
    args = parser.parse_args(argv)
    try:
        with _translated():
            client = (
                DockerClient.from_env() if args.docker_url is None else DockerClient(base_url=args.docker_url)
            )
        try:
            reaped = reap(client, args.older_than, dry_run=args.dry_run)
        finally:
            client.close()
    except SandboxUnavailable as exc:
        print(f"autoresearch-reap: {exc}", file=sys.stderr)
        return 1
    verb = "would remove" if args.dry_run else "removed"
    for item in reaped:
        print(
            f"{verb} {item.name} (run {item.run_id or '-'}, step {item.step or '-'}, {item.age_s:.0f} s old)"
        )
    print(f"{verb} {len(reaped)} container(s)")
    return 0


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except (docker.errors.DockerException, OSError) as exc:
        raise SandboxUnavailable(f"docker failed while reaping: {exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
