"""Taking a run's outputs: what a hostile train.py can leave in its output folder, and that each
trick is refused with a clear reason (no Docker needed: the files are planted directly)."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from services.errors import CollectError, RunFailed
from services.settings import KIB, MIB
from services.states import State
from services.worker.collect import collect_checkpoint, copy_cache, prepare_run_dir, read_result
from services.worker.sandbox import RunPaths

RUN_JSON = {"config": {"n_layer": 2}, "steps": 10, "tokens": 1000, "seed": 42}


@pytest.fixture
def paths(tmp_path: Path) -> RunPaths:
    return prepare_run_dir(tmp_path / "runs", "run_abc123", "print('train')\n")


def plant(paths: RunPaths, weights: bytes = b"w" * 1000, run_json: object = RUN_JSON) -> None:
    (paths.out / "model.safetensors").write_bytes(weights)
    (paths.out / "run.json").write_text(json.dumps(run_json))


def refused(paths: RunPaths, cap: int = MIB) -> str:
    with pytest.raises(CollectError) as caught:
        collect_checkpoint(paths, cap)
    return caught.value.reason


# ---------------------------------------------------------------------------------------------------
# The run folder


def test_prepare_run_dir_lays_out_the_folders(paths: RunPaths) -> None:
    assert (paths.code / "train.py").read_text() == "print('train')\n"
    assert stat.S_IMODE((paths.code / "train.py").stat().st_mode) == 0o444
    assert stat.S_IMODE(paths.code.stat().st_mode) == 0o755
    for folder in (paths.out, paths.cache, paths.scratch, paths.eval_out):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o1777, folder
    assert not paths.checkpoint.exists()


def test_prepare_run_dir_replaces_an_earlier_attempt(tmp_path: Path) -> None:
    first = prepare_run_dir(tmp_path, "run1", "a = 1\n")
    (first.out / "stale").write_text("x")
    second = prepare_run_dir(tmp_path, "run1", "a = 2\n")
    assert second == first
    assert not (second.out / "stale").exists()
    assert (second.code / "train.py").read_text() == "a = 2\n"


@pytest.mark.parametrize("run_id", ["../escape", "a/b", "", ".hidden", "x" * 200])
def test_prepare_run_dir_refuses_unsafe_run_ids(tmp_path: Path, run_id: str) -> None:
    with pytest.raises(ValueError, match="not a safe folder name"):
        prepare_run_dir(tmp_path, run_id, "")


# ---------------------------------------------------------------------------------------------------
# collect_checkpoint


def test_collect_copies_checkpoint_and_run_json(paths: RunPaths) -> None:
    plant(paths)
    collected = collect_checkpoint(paths, MIB)
    assert collected.run_json == RUN_JSON
    assert collected.checkpoint == paths.checkpoint / "model.safetensors"
    assert collected.checkpoint.read_bytes() == b"w" * 1000 and collected.checkpoint_bytes == 1000
    assert json.loads((paths.checkpoint / "run.json").read_text()) == RUN_JSON
    for name in ("model.safetensors", "run.json"):
        assert not (paths.checkpoint / name).is_symlink()
        assert stat.S_IMODE((paths.checkpoint / name).stat().st_mode) == 0o444


def test_collect_error_is_a_crash_of_the_proposal() -> None:
    error = CollectError("missing model.safetensors")
    assert isinstance(error, RunFailed) and error.state == State.CRASHED


def test_missing_checkpoint(paths: RunPaths) -> None:
    (paths.out / "run.json").write_text(json.dumps(RUN_JSON))
    assert refused(paths) == "missing model.safetensors"


def test_missing_run_json(paths: RunPaths) -> None:
    (paths.out / "model.safetensors").write_bytes(b"w")
    assert refused(paths) == "missing run.json"


def test_symlinked_checkpoint_to_a_host_file_is_refused(paths: RunPaths, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("host secret")
    plant(paths)
    (paths.out / "model.safetensors").unlink()
    (paths.out / "model.safetensors").symlink_to(secret)
    assert refused(paths) == "model.safetensors is a symlink"
    assert not (paths.checkpoint / "model.safetensors").exists()


def test_symlinked_run_json_is_refused(paths: RunPaths, tmp_path: Path) -> None:
    plant(paths)
    (tmp_path / "elsewhere.json").write_text(json.dumps(RUN_JSON))
    (paths.out / "run.json").unlink()
    (paths.out / "run.json").symlink_to(tmp_path / "elsewhere.json")
    assert refused(paths) == "run.json is a symlink"


def test_hard_link_to_a_host_file_is_refused(paths: RunPaths, tmp_path: Path) -> None:
    host_file = tmp_path / "host-weights"
    host_file.write_bytes(b"host data")
    plant(paths)
    (paths.out / "model.safetensors").unlink()
    os.link(host_file, paths.out / "model.safetensors")
    assert refused(paths) == "model.safetensors is a hard link (2 links)"


def test_oversized_checkpoint_is_refused_before_copying(paths: RunPaths) -> None:
    plant(paths, weights=b"w" * (5 * KIB + 100))
    assert refused(paths, cap=4 * KIB) == "model.safetensors is 5.1 KiB, over the 4 KiB cap"
    assert not (paths.checkpoint / "model.safetensors").exists()


def test_sparse_checkpoint_over_the_cap_is_refused(paths: RunPaths) -> None:
    plant(paths)
    with open(paths.out / "model.safetensors", "r+b") as file:
        file.truncate(5 * 1024 * MIB)  # 5 GiB apparent size, no disk used
    assert refused(paths, cap=4 * 1024 * MIB) == "model.safetensors is 5 GiB, over the 4 GiB cap"


def test_directory_fifo_and_socket_are_not_regular_files(paths: RunPaths) -> None:
    (paths.out / "run.json").write_text(json.dumps(RUN_JSON))
    (paths.out / "model.safetensors").mkdir()
    assert refused(paths) == "model.safetensors is not a regular file"
    (paths.out / "model.safetensors").rmdir()
    os.mkfifo(paths.out / "model.safetensors")
    finished = threading.Event()

    def collect() -> None:  # a FIFO must not block the worker: run it on a thread to notice
        with pytest.raises(CollectError, match="not a regular file"):
            collect_checkpoint(paths, MIB)
        finished.set()

    worker = threading.Thread(target=collect, daemon=True)
    worker.start()
    worker.join(5)
    assert finished.is_set()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "run.json is not valid JSON"),
        ("[1, 2]", "run.json is not a JSON object"),
        ('{"loss": NaN}', "run.json is not valid JSON: NaN is not JSON"),
        ("\udcff", "run.json is not valid JSON"),
    ],
)
def test_invalid_run_json_is_refused(paths: RunPaths, content: str, reason: str) -> None:
    plant(paths)
    (paths.out / "run.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    assert refused(paths).startswith(reason)


def test_run_json_over_one_mib_is_refused(paths: RunPaths) -> None:
    plant(paths, run_json={"pad": "x" * MIB})
    assert refused(paths).startswith("run.json is 1 MiB, over the 1 MiB cap")


def test_collect_twice_replaces_the_checkpoint(paths: RunPaths) -> None:
    plant(paths, weights=b"first")
    collect_checkpoint(paths, MIB)
    plant(paths, weights=b"second")
    assert collect_checkpoint(paths, MIB).checkpoint.read_bytes() == b"second"


# ---------------------------------------------------------------------------------------------------
# read_result and copy_cache


def test_read_result(paths: RunPaths) -> None:
    (paths.eval_out / "result.json").write_text(json.dumps({"val_bpb": 1.234}))
    assert read_result(paths) == {"val_bpb": 1.234}


def test_read_result_refuses_missing_and_symlinked(paths: RunPaths, tmp_path: Path) -> None:
    with pytest.raises(CollectError, match=r"missing result\.json"):
        read_result(paths)
    (tmp_path / "forged.json").write_text(json.dumps({"val_bpb": 0.1}))
    (paths.eval_out / "result.json").symlink_to(tmp_path / "forged.json")
    with pytest.raises(CollectError, match=r"result\.json is a symlink"):
        read_result(paths)


def test_copy_cache_keeps_symlinks_as_links(tmp_path: Path) -> None:
    source = prepare_run_dir(tmp_path, "source", "")
    target = prepare_run_dir(tmp_path, "target", "")
    (source.cache / "inductor").mkdir()
    (source.cache / "inductor" / "kernel.py").write_text("generated")
    (source.cache / "link").symlink_to("/etc/passwd")
    copy_cache(source, target)
    assert (target.cache / "inductor" / "kernel.py").read_text() == "generated"
    assert (target.cache / "link").is_symlink() and os.readlink(target.cache / "link") == "/etc/passwd"
