"""The run folder on the host, and taking a run's outputs out of it safely.

Everything in `out/` and `eval/` was written by hostile code (as uid 65534, through a bind mount),
so it is read like untrusted input: names are opened relative to the folder with O_NOFOLLOW (a
symlink is refused, never followed), only regular files with one link are accepted (a hard link to
some other file is refused), sizes are capped before and while reading, and JSON must parse to an
object. O_NONBLOCK keeps a FIFO planted under an expected name from blocking the worker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.errors import CollectError, InfraError
from services.settings import MIB
from services.worker.folders import remove_tree
from services.worker.sandbox import CHECKPOINT_FILE, RESULT_FILE, RUN_JSON_FILE, RunPaths

MAX_RUN_JSON_BYTES = 1 * MIB
MAX_RESULT_BYTES = 1 * MIB
MAX_COUNT = 2**63 - 1  # steps, tokens and bytes the worker keeps: a number Redis, JSON and floats all hold
COPY_CHUNK_BYTES = 4 * MIB
WRITABLE_MODE = 0o1777  # folders the sandbox user (65534) writes: like /tmp, sticky
CODE_MODE = 0o755
TRAIN_PY_MODE = 0o444
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class RunStats(BaseModel):
    """What the worker keeps of the trainer's own run.json (the trainer contract's fields). Strict:
    the trainer wrote it, so a string, a list or a 400-digit integer is its failure, never the
    worker's (such a value would otherwise fail the worker's own records, or a float conversion later)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    steps: int | None = Field(None, ge=0, le=MAX_COUNT)
    max_steps: int | None = Field(None, ge=1, le=MAX_COUNT)  # a fixed-step run's planned steps (tiny)
    tokens: int | None = Field(None, ge=0, le=MAX_COUNT)
    startup_s: float | None = Field(None, ge=0, allow_inf_nan=False)
    training_s: float | None = Field(None, ge=0, allow_inf_nan=False)
    peak_memory_bytes: int | None = Field(None, ge=0, le=MAX_COUNT)


@dataclass(frozen=True)
class CollectedRun:
    checkpoint: Path  # the copied model.safetensors, in paths.checkpoint
    checkpoint_bytes: int
    run_json: dict[str, Any]
    stats: RunStats


def prepare_run_dir(root: Path, run_id: str, train_py: str) -> RunPaths:
    """Create a fresh run folder `root/run_id` holding `code/train.py` (read-only) and the empty
    folders the sandbox writes. A folder left by an earlier attempt of the same run is replaced."""
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r} is not a safe folder name")
    paths = RunPaths(Path(root) / run_id)
    _remove_or_raise(paths.root, "the run folder an earlier attempt left")
    paths.root.mkdir(parents=True, mode=CODE_MODE)
    paths.code.mkdir(mode=CODE_MODE)
    os.chmod(paths.code, CODE_MODE)  # mkdir's mode is masked by the umask
    fd = os.open(paths.code / "train.py", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, TRAIN_PY_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(train_py)
    os.chmod(paths.code / "train.py", TRAIN_PY_MODE)
    for folder in (paths.out, paths.cache, paths.scratch, paths.eval_out):
        folder.mkdir()
        os.chmod(folder, WRITABLE_MODE)
    return paths


def collect_checkpoint(paths: RunPaths, max_checkpoint_bytes: int) -> CollectedRun:
    """Copy `model.safetensors` and `run.json` from the run's output folder into its checkpoint
    folder (mounted read-only into evaluation). Raises CollectError with the reason."""
    _remove_or_raise(paths.checkpoint, "the checkpoint folder an earlier attempt left")
    paths.checkpoint.mkdir(mode=CODE_MODE)
    os.chmod(paths.checkpoint, CODE_MODE)
    target = paths.checkpoint / CHECKPOINT_FILE
    size = _copy_untrusted(paths.out, CHECKPOINT_FILE, target, max_checkpoint_bytes)
    run_json_bytes = _read_untrusted(paths.out, RUN_JSON_FILE, MAX_RUN_JSON_BYTES)
    run_json = _json_object(run_json_bytes, RUN_JSON_FILE)
    stats = _run_stats(run_json)
    _write_readonly(paths.checkpoint / RUN_JSON_FILE, run_json_bytes)
    return CollectedRun(checkpoint=target, checkpoint_bytes=size, run_json=run_json, stats=stats)


def read_result(paths: RunPaths) -> dict[str, Any]:
    """The evaluator's result.json, read with the same care (the candidate's model code ran in
    the evaluation container too)."""
    return _json_object(_read_untrusted(paths.eval_out, RESULT_FILE, MAX_RESULT_BYTES), RESULT_FILE)


def copy_cache(source: RunPaths, target: RunPaths) -> None:
    """Seed a run's compile cache with another run's (of the same code only: a cache holds
    generated code that runs on load). Symlinks are copied as links, never followed."""
    shutil.copytree(source.cache, target.cache, symlinks=True, dirs_exist_ok=True)


# -------------------------------------------------------------------------------------------------


def _remove_or_raise(path: Path, what: str) -> None:
    """Remove `path` by descriptor (folders.py: any depth, links never followed); a folder the
    worker cannot clear is the host's failure, not the run's."""
    failed = remove_tree(path)
    if failed:
        raise InfraError(f"cannot remove {what}: {failed}")


def _open_untrusted(folder: Path, name: str, max_bytes: int) -> tuple[int, int]:
    """Open folder/name for reading if it is a regular, singly linked file of at most max_bytes;
    returns (fd, size)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise CollectError(f"cannot open the output folder: {exc.strerror}") from exc
    try:
        try:
            info = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError as exc:
            raise CollectError(f"missing {name}") from exc
        _check_file(name, info, max_bytes)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:  # swapped for a symlink or removed since lstat
            raise CollectError(f"cannot open {name}: {exc.strerror}") from exc
    finally:
        os.close(dir_fd)
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
        os.close(fd)
        raise CollectError(f"{name} changed while it was being opened")
    try:
        _check_file(name, opened, max_bytes)
    except CollectError:
        os.close(fd)
        raise
    return fd, opened.st_size


def _check_file(name: str, info: os.stat_result, max_bytes: int) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise CollectError(f"{name} is a symlink")
    if not stat.S_ISREG(info.st_mode):
        raise CollectError(f"{name} is not a regular file")
    if info.st_nlink != 1:
        raise CollectError(f"{name} is a hard link ({info.st_nlink} links)")
    if info.st_size > max_bytes:
        raise CollectError(f"{name} is {_size(info.st_size)}, over the {_size(max_bytes)} cap")


def _read_untrusted(folder: Path, name: str, max_bytes: int) -> bytes:
    fd, _ = _open_untrusted(folder, name, max_bytes)
    with os.fdopen(fd, "rb") as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise CollectError(f"{name} grew past the {_size(max_bytes)} cap while being read")
    return data


def _copy_untrusted(folder: Path, name: str, target: Path, max_bytes: int) -> int:
    fd, size = _open_untrusted(folder, name, max_bytes)
    copied = 0
    out_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "rb") as source, os.fdopen(out_fd, "wb") as sink:
        while chunk := source.read(COPY_CHUNK_BYTES):
            copied += len(chunk)
            if copied > max_bytes:
                raise CollectError(f"{name} grew past the {_size(max_bytes)} cap while being copied")
            sink.write(chunk)
    if copied != size:
        raise CollectError(f"{name} changed size while being copied ({size} → {copied} bytes)")
    os.chmod(target, TRAIN_PY_MODE)
    return copied


def _write_readonly(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.chmod(path, 0o444)


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    def refuse_constant(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    try:
        value = json.loads(data.decode("utf-8"), parse_constant=refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise CollectError(f"{name} is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # nesting deeper than the parser's stack, e.g. 100,000 brackets
        raise CollectError(f"{name} is not valid JSON: nested too deeply") from exc
    if not isinstance(value, dict):
        raise CollectError(f"{name} is not a JSON object")
    return value


def _run_stats(run_json: dict[str, Any]) -> RunStats:
    try:
        return RunStats.model_validate(run_json)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise CollectError(f"{RUN_JSON_FILE} field {field!r} is invalid: {error['msg']}") from exc


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{n} bytes"
