"""Measuring and removing the folders that sandboxed code wrote, by file descriptor.

Everything under a run's writable folders was made by hostile code (as the sandbox user, through a
bind mount): any depth, any names, symlinks to anywhere, folders it made unreadable. Both functions
here work on directory file descriptors (`openat` with O_DIRECTORY | O_NOFOLLOW relative to the
parent's descriptor, `fstatat` without following links, `scandir` on a descriptor, `unlinkat`), so
no path is ever built and neither PATH_MAX nor Python's recursion limit applies.

`over_cap(folders, ...)` guarantees:
  - every entry counts, however deep: files, folders, links and anything else, each once per name
    (a hard-linked file counts once per link), its `st_size` towards the byte cap
  - a symlink is counted, never followed
  - entries deeper than `max_depth` below a folder are a violation in themselves ("output nested
    deeper than N levels"), so the walk holds at most 2 × (max_depth + 1) descriptors
  - an entry that cannot be examined (a folder made unreadable, a listing that fails) is a
    violation, never skipped; only an entry gone since it was listed is passed over, and the
    worker's own shortage of descriptors or memory is raised (OSError), never blamed on the tree
  - it returns the first violation found, a reason that names the cap, or "" when none

`remove_tree(path)` and `empty_folder(path)` guarantee:
  - no recursion, no path-length limit: folders are emptied with an explicit stack of descriptors,
    at most REMOVE_OPEN_DEPTH deep; a folder below that is renamed up to the top of the tree under
    a fresh name and emptied from there later, so any depth is removed with bounded descriptors
  - a symlink is removed, never followed (nothing outside the tree is ever entered or deleted)
  - they never raise OSError: what could not be removed is logged and returned as one line ("" when
    everything went), for the caller to report
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Real trainer outputs are shallow: model.safetensors and run.json at the top of /out, and the
# compile caches under /cache 5 levels deep at most (inductor/fxgraph/<xx>/<hash>/<file>; measured
# with torch 2.11 + Triton on an H200 and torch 2.13 on CPU). Six times that leaves room for other
# caches and versions while bounding the descriptors a walk holds.
MAX_OUTPUT_DEPTH = 32
REMOVE_OPEN_DEPTH = 64  # folders the remover holds open at once; deeper ones are moved up first
MAX_REPORTED_NAME = 60  # characters of a hostile name quoted in a reason
MAX_REPORTED_PROBLEMS = 3  # what a failed removal quotes; the rest are counted

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The worker's own shortages, not the tree's doing: raised, so the sandbox reports an infrastructure
# failure instead of blaming the run.
_WORKER_SHORTAGES = {errno.EMFILE, errno.ENFILE, errno.ENOMEM}


# -------------------------------------------------------------------------------------------------
# Measuring


def over_cap(
    folders: Sequence[Path], *, max_bytes: int, max_entries: int, max_depth: int = MAX_OUTPUT_DEPTH
) -> str:
    """The first cap the trees under `folders` exceed, as a reason; "" if they are within them all.
    A folder that does not exist holds nothing."""
    tally = _Tally(max_bytes=max_bytes, max_entries=max_entries, max_depth=max_depth)
    for folder in folders:
        reason = tally.walk(folder)
        if reason:
            return reason
    return ""


@dataclass
class _Tally:
    max_bytes: int
    max_entries: int
    max_depth: int
    entries: int = 0
    total_bytes: int = 0

    def walk(self, folder: Path) -> str:
        try:
            top = os.open(folder, _DIR_FLAGS)
        except FileNotFoundError:
            return ""
        except OSError as exc:
            return f"output folder {folder.name} could not be examined ({exc.strerror})"
        stack = [_Listing(top)]
        try:
            return self._walk(stack)
        finally:
            for listing in stack:
                listing.close()

    def _walk(self, stack: list[_Listing]) -> str:
        while stack:
            listing = stack[-1]
            try:
                name = listing.next_name()
            except OSError as exc:
                return _unexaminable(listing.name, exc)
            if name is None:
                stack.pop().close()
                continue
            reason, child = self._count(listing.fd, name, depth=len(stack))
            if reason:
                return reason
            if child is not None:
                stack.append(child)
        return ""

    def _count(self, parent: int, name: str, depth: int) -> tuple[str, _Listing | None]:
        """Count one entry; returns a violation, or the listing of a folder to walk next."""
        if depth > self.max_depth:
            return f"output nested deeper than {self.max_depth} levels", None
        try:
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:  # removed since it was listed: nothing left to count
            return "", None
        except OSError as exc:
            return _unexaminable(name, exc), None
        self.entries += 1
        self.total_bytes += info.st_size
        if self.entries > self.max_entries:
            return f"output exceeded {self.max_entries} files and folders", None
        if self.total_bytes > self.max_bytes:
            return f"output exceeded {self.max_bytes} bytes", None
        if not stat.S_ISDIR(info.st_mode):
            return "", None
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            return "", None
        except OSError as exc:  # unreadable, or swapped for a link since the stat
            return _unexaminable(name, exc), None
        return "", _Listing(fd, name)


def _unexaminable(name: str, exc: OSError) -> str:
    if exc.errno in _WORKER_SHORTAGES:
        raise exc
    return f"an output entry could not be examined ({_quoted(name)}: {exc.strerror})"


def _quoted(name: str) -> str:
    shown = name if len(name) <= MAX_REPORTED_NAME else name[:MAX_REPORTED_NAME] + "..."
    return repr(shown)


@dataclass
class _Listing:
    """An open folder and an iterator over its names (scandir works on a duplicate descriptor)."""

    fd: int
    name: str = "."
    identity: tuple[int, int] = (0, 0)  # st_dev, st_ino
    incomplete: bool = False  # something in it could not be removed, or its listing broke off
    _entries: Iterator[os.DirEntry[str]] | None = field(default=None, repr=False)
    _close_entries: Callable[[], None] | None = field(default=None, repr=False)

    def next_name(self) -> str | None:
        if self._entries is None:
            entries = os.scandir(self.fd)
            self._entries, self._close_entries = entries, entries.close
        entry = next(self._entries, None)
        return None if entry is None else entry.name

    def close(self) -> None:
        if self._close_entries is not None:
            self._close_entries()
            self._close_entries = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# -------------------------------------------------------------------------------------------------
# Removing


def remove_tree(path: Path) -> str:
    """Remove `path`, whatever it is: a folder with anything in it, a file, or a link (the link
    itself). Returns "" when it is gone (or never was), else what could not be removed (logged)."""
    remover = _Remover()
    remover.remove(path)
    return remover.report(path)


def empty_folder(path: Path) -> str:
    """Remove everything inside the folder `path` and keep the folder; returns as `remove_tree`."""
    remover = _Remover()
    remover.empty(path)
    return remover.report(path)


@dataclass
class _Remover:
    open_depth: int = REMOVE_OPEN_DEPTH
    problems: list[str] = field(default_factory=list)  # the first few, quoted in the report
    failures: int = 0
    failed: set[tuple[int, int]] = field(default_factory=set)  # folders not emptied: reported once

    def remove(self, path: Path) -> None:
        try:
            parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._problem(str(path.parent), exc)
            return
        try:
            self._remove_entry(parent, path.name)
        finally:
            os.close(parent)

    def empty(self, path: Path) -> None:
        try:
            top = os.open(path, _DIR_FLAGS)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._problem(path.name, exc)
            return
        try:
            self._empty(top)
        finally:
            os.close(top)

    def report(self, path: Path) -> str:
        if not self.failures:
            return ""
        shown = "; ".join(self.problems)
        more = (
            f" (and {self.failures - len(self.problems)} more)" if self.failures > len(self.problems) else ""
        )
        line = f"could not remove everything under {path}: {shown}{more}"
        log.warning("%s", line)
        return line

    def _remove_entry(self, parent: int, name: str) -> None:
        try:
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._problem(name, exc)
            return
        if not stat.S_ISDIR(info.st_mode):
            self._unlink(parent, name)
            return
        try:
            top = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            self._problem(name, exc)
            return
        failures = self.failures
        try:
            self._empty(top)
        finally:
            os.close(top)
        if self.failures == failures:  # else it is not empty, and the reason is reported
            self._rmdir(parent, name)

    def _empty(self, top: int) -> None:
        """Empty the open folder `top`. A pass that moved folders up runs again: the listing of
        `top` may or may not have shown the names it gained meanwhile."""
        while self._empty_pass(top):
            pass

    def _empty_pass(self, top: int) -> int:
        """One pass over `top`, depth first; returns how many folders were moved up to it."""
        try:
            stack = [_Listing(os.open(".", _DIR_FLAGS, dir_fd=top))]  # its own offset for each pass
        except OSError as exc:
            self._problem(".", exc)
            return 0
        moved = 0
        try:
            while stack:
                listing = stack[-1]
                name = self._next_name(listing)
                if name is None:
                    self._leave(stack)
                    continue
                failures = self.failures
                child, moved_up = self._clear(listing, name, top, at_limit=len(stack) >= self.open_depth)
                if self.failures > failures:
                    listing.incomplete = True
                moved += moved_up
                if child is not None:
                    stack.append(child)
        finally:
            for listing in stack:
                listing.close()
        return moved

    def _next_name(self, listing: _Listing) -> str | None:
        try:
            return listing.next_name()
        except OSError as exc:
            listing.incomplete = True
            self._problem(listing.name, exc)
            return None

    def _leave(self, stack: list[_Listing]) -> None:
        """The folder on top of the stack has been listed to its end: close it and remove it, unless
        something in it could not be removed (reported already: its parent is incomplete too)."""
        done = stack.pop()
        done.close()
        if not stack:
            return
        parent = stack[-1]
        if done.incomplete or not self._rmdir(parent.fd, done.name):
            self.failed.add(done.identity)
            parent.incomplete = True

    def _clear(
        self, listing: _Listing, name: str, top: int, *, at_limit: bool
    ) -> tuple[_Listing | None, int]:
        """Unlink a non-folder. Open a folder to be emptied next, or, at the depth limit, rename
        it into `top` under a fresh name to be emptied from there. Returns (the opened folder,
        how many were moved up)."""
        try:
            info = os.stat(name, dir_fd=listing.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None, 0
        except OSError as exc:
            self._problem(name, exc)
            return None, 0
        identity = (info.st_dev, info.st_ino)
        if identity in self.failed:  # met again after a move up: reported already
            listing.incomplete = True
            return None, 0
        if not stat.S_ISDIR(info.st_mode):
            self._unlink(listing.fd, name)
            return None, 0
        try:
            if at_limit:
                os.rename(name, f".removing-{secrets.token_hex(8)}", src_dir_fd=listing.fd, dst_dir_fd=top)
                return None, 1
            return _Listing(os.open(name, _DIR_FLAGS, dir_fd=listing.fd), name, identity), 0
        except FileNotFoundError:
            return None, 0
        except OSError as exc:
            self.failed.add(identity)
            self._problem(name, exc)
            return None, 0

    def _unlink(self, parent: int, name: str) -> None:
        try:
            os.unlink(name, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._problem(name, exc)

    def _rmdir(self, parent: int, name: str) -> bool:
        try:
            os.rmdir(name, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._problem(name, exc)
            return False
        return True

    def _problem(self, name: str, exc: OSError) -> None:
        self.failures += 1
        if len(self.problems) < MAX_REPORTED_PROBLEMS:
            self.problems.append(f"{_quoted(name)}: {exc.strerror}")
