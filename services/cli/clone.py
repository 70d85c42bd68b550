"""The CLI's one use of git (the user's own `git` program): a bundle of the research branch, as GET
/v1/repo.bundle serves it, cloned into a directory with its notes (`git log` then shows each commit's
result under it).

Every failure is raised as a ClientError that says what went wrong.
"""

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.cli.client import ClientError

NOTES_REF = "refs/notes/commits"  # git log shows the notes of this ref without being asked
GIT_TIMEOUT_S = 300.0  # a clone of a local file; minutes only for a very long branch


@contextmanager
def scratch_file(name: str) -> Iterator[Path]:
    """A path in a fresh temporary directory, removed with it afterwards."""
    with tempfile.TemporaryDirectory(prefix="autoresearch-") as folder:
        yield Path(folder) / name


def clone_bundle(bundle: Path, target: Path) -> str:
    """Clone the bundle into `target` (its branch checked out), fetch its notes, and drop the remote
    that names the bundle's temporary path; returns the branch's name."""
    heads = _git("bundle", "list-heads", str(bundle)).split()
    _git("clone", "--quiet", str(bundle), str(target))
    if NOTES_REF in heads:
        _git("-C", str(target), "fetch", "--quiet", str(bundle), f"+{NOTES_REF}:{NOTES_REF}")
    _git("-C", str(target), "remote", "remove", "origin")
    return _git("-C", str(target), "rev-parse", "--abbrev-ref", "HEAD").strip()


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except FileNotFoundError as exc:
        raise ClientError(
            "git is not installed (or not on PATH); `repo bundle` saves the bundle alone"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ClientError(f"git {args[0]} took more than {GIT_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        raise ClientError(f"git {' '.join(args[:2])} failed: {' '.join(done.stderr.split())[:500]}")
    return done.stdout
