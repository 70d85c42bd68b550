"""Measuring and removing trees that hostile code could write (services/worker/folders.py), on real
trees in tmp_path: deeper than PATH_MAX, thousands of levels deep, with folders made unreadable and
symlinks to folders outside. No Docker: the trees are planted directly."""

from __future__ import annotations

import os
import resource
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.worker.folders import MAX_OUTPUT_DEPTH, REMOVE_OPEN_DEPTH, empty_folder, over_cap, remove_tree

PATH_MAX = os.pathconf("/", "PC_PATH_MAX")
LONG_NAME = "n" * 255  # the longest name a folder can have
SANDBOX_UID = 65534
DEEP = 2000  # levels: beyond PATH_MAX with two-character names, and beyond the recursion limit
FEW_DESCRIPTORS = 220  # a child's open-file limit: what a bounded walk needs, far below DEEP
NO_CAP = 10**12


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """An empty folder to plant in; whatever a failed test leaves in it goes with `rm -rf` (pytest's
    own clean-up cannot remove a tree deeper than its recursion limit)."""
    folder = tmp_path / "tree"
    folder.mkdir()
    tmp_path.chmod(0o755)  # the unprivileged child below reaches it from tmp_path
    yield folder
    subprocess.run(["chmod", "-R", "u+rwx", str(tmp_path)], check=False, capture_output=True)
    subprocess.run(["rm", "-rf", str(folder)], check=True)


def nest(top: Path, depth: int, name: str = "dd") -> int:
    """Folders `name` nested `depth` deep under `top`, made relative to their parent's descriptor;
    returns the deepest one's descriptor (the caller closes it)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd


def plant_files(fd: int, count: int, size: int = 0, prefix: str = "f") -> None:
    for i in range(count):
        file = os.open(f"{prefix}{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
        os.write(file, b"x" * size)
        os.close(file)


def in_child(action: Callable[[], str], *, cwd: Path, unprivileged: bool = False, nofile: int = 0) -> str:
    """Run `action` in a forked child in `cwd`: as the sandbox user with `unprivileged` (root is
    dropped, so a folder made unreadable cannot be read), with at most `nofile` open descriptors
    if given. Returns "ok: <what it returned>" or "raised: <the exception>"."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(read)
            os.chdir(cwd)
            if nofile:
                resource.setrlimit(
                    resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
                )
            if unprivileged and os.geteuid() == 0:
                os.setgroups([])
                os.setgid(SANDBOX_UID)
                os.setuid(SANDBOX_UID)
            result = f"ok: {action()}"
        except BaseException as exc:
            result = f"raised: {exc!r}"
        os.write(write, result.encode()[:60_000])
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        result = pipe.read().decode()
    os.waitpid(pid, 0)
    return result


def listing(folder: Path) -> dict[str, bytes | str]:
    """Every path under `folder` (not following links) and its content or link target."""
    found: dict[str, bytes | str] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            key = str(path.relative_to(folder))
            found[key] = (
                os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
            )
    return found


# -------------------------------------------------------------------------------------------------
# over_cap


def test_entries_beyond_path_max_all_count(tree: Path) -> None:
    depth = PATH_MAX // len(LONG_NAME) + 4  # 20 levels: their path is longer than PATH_MAX
    fd = nest(tree, depth, LONG_NAME)
    plant_files(fd, 50, size=1000)
    os.close(fd)
    entries = depth + 50
    assert depth <= MAX_OUTPUT_DEPTH and len(LONG_NAME) * depth > PATH_MAX
    assert over_cap([tree], max_bytes=NO_CAP, max_entries=entries) == ""
    assert over_cap([tree], max_bytes=NO_CAP, max_entries=entries - 1) == (
        f"output exceeded {entries - 1} files and folders"
    )
    assert over_cap([tree], max_bytes=49_999, max_entries=entries) == "output exceeded 49999 bytes"


def test_entries_of_all_the_folders_count_together(tree: Path) -> None:
    for name in ("out", "cache"):
        (tree / name).mkdir()
        fd = os.open(tree / name, os.O_RDONLY | os.O_DIRECTORY)
        plant_files(fd, 10)
        os.close(fd)
    folders = [tree / "out", tree / "cache"]
    assert over_cap(folders, max_bytes=NO_CAP, max_entries=20) == ""
    assert over_cap(folders, max_bytes=NO_CAP, max_entries=19) == "output exceeded 19 files and folders"


def test_nesting_deeper_than_the_limit_is_a_violation(tree: Path) -> None:
    os.close(nest(tree, MAX_OUTPUT_DEPTH))
    assert over_cap([tree], max_bytes=NO_CAP, max_entries=NO_CAP) == ""
    os.close(nest(tree, MAX_OUTPUT_DEPTH + 1, "deeper"))
    reason = over_cap([tree], max_bytes=NO_CAP, max_entries=NO_CAP)
    assert reason == f"output nested deeper than {MAX_OUTPUT_DEPTH} levels"


def test_a_tree_thousands_deep_is_a_violation_found_with_few_descriptors(tree: Path) -> None:
    fd = nest(tree, DEEP)
    plant_files(fd, 100)
    os.close(fd)
    measured = in_child(
        lambda: over_cap([tree], max_bytes=NO_CAP, max_entries=NO_CAP), cwd=tree, nofile=FEW_DESCRIPTORS
    )
    assert measured == f"ok: output nested deeper than {MAX_OUTPUT_DEPTH} levels"


def test_an_unreadable_folder_is_a_violation_not_skipped(tree: Path) -> None:
    (tree / "open").mkdir()
    (tree / "locked").mkdir()
    (tree / "locked" / "hidden").write_bytes(b"x" * 10_000)
    (tree / "locked").chmod(0o000)
    measured = in_child(
        lambda: over_cap([Path("tree")], max_bytes=NO_CAP, max_entries=NO_CAP),
        cwd=tree.parent,
        unprivileged=True,
    )
    assert measured == "ok: an output entry could not be examined ('locked': Permission denied)"


def test_the_workers_own_shortage_of_descriptors_is_raised_not_blamed_on_the_tree(tree: Path) -> None:
    os.close(nest(tree, 20))

    def walk_with_few_descriptors() -> str:
        in_use = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (in_use + 6, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        )
        return over_cap([tree], max_bytes=NO_CAP, max_entries=NO_CAP)

    assert in_child(walk_with_few_descriptors, cwd=tree).startswith("raised: OSError(24, ")


def test_a_symlink_is_counted_never_followed(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    fd = os.open(outside, os.O_RDONLY | os.O_DIRECTORY)
    plant_files(fd, 100, size=1000)
    os.close(fd)
    (tree / "to-folder").symlink_to(outside)
    (tree / "to-file").symlink_to(outside / "f0")
    assert over_cap([tree], max_bytes=1000, max_entries=2) == ""  # two links, each a few bytes


def test_a_missing_folder_holds_nothing(tmp_path: Path) -> None:
    assert over_cap([tmp_path / "missing"], max_bytes=0, max_entries=0) == ""


# -------------------------------------------------------------------------------------------------
# remove_tree and empty_folder


def plant_deep_tree(top: Path, depth: int = DEEP) -> None:
    """`depth` levels of folders with files every 100 levels and 200 at the bottom, and a symlink."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for level in range(0, depth, 100):
        plant_files(fd, 3, size=10, prefix=f"level{level}-")
        deeper = nest_from(fd, 100)
        os.close(fd)
        fd = deeper
    plant_files(fd, 200)
    os.symlink("/", "root-link", dir_fd=fd)
    os.close(fd)


def nest_from(fd: int, depth: int) -> int:
    current = os.dup(fd)
    for _ in range(depth):
        os.mkdir("dd", dir_fd=current)
        child = os.open("dd", os.O_RDONLY | os.O_DIRECTORY, dir_fd=current)
        os.close(current)
        current = child
    return current


def test_remove_tree_removes_a_tree_thousands_deep_with_few_descriptors(tree: Path) -> None:
    plant_deep_tree(tree)
    assert DEEP > 2 * REMOVE_OPEN_DEPTH and len("dd/") * DEEP > PATH_MAX
    removed = in_child(lambda: remove_tree(Path("tree")), cwd=tree.parent, nofile=FEW_DESCRIPTORS)
    assert removed == "ok: "
    assert not os.path.lexists(tree)
    tree.mkdir()  # for the fixture's clean-up


def test_empty_folder_keeps_the_folder_and_removes_everything_in_it(tree: Path) -> None:
    plant_deep_tree(tree, depth=3 * REMOVE_OPEN_DEPTH)
    (tree / "file").write_text("x")
    assert empty_folder(tree) == ""
    assert tree.is_dir() and list(tree.iterdir()) == []


def test_the_remover_never_follows_a_symlink(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "keep.txt").write_text("host file")
    (outside / "sub" / "keep.bin").write_bytes(b"host data")
    before = listing(outside)
    (tree / "to-folder").symlink_to(outside)
    (tree / "to-file").symlink_to(outside / "keep.txt")
    fd = nest(tree, 2 * REMOVE_OPEN_DEPTH + 10)  # below the depth where folders are moved up first
    os.symlink(str(outside), "deep-link", dir_fd=fd)
    os.symlink(str(outside / "sub"), "dd-sibling", dir_fd=fd)
    os.close(fd)
    link = tmp_path / "link-to-outside"
    link.symlink_to(outside)

    assert remove_tree(tree) == ""
    assert remove_tree(link) == ""  # the link goes, not what it points to

    assert not os.path.lexists(tree) and not os.path.lexists(link)
    assert listing(outside) == before
    tree.mkdir()


def test_root_removes_folders_made_unreadable(tree: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root removes what the sandbox user made unreadable (the worker runs as root)")
    fd = nest(tree, 5)
    plant_files(fd, 3)
    os.close(fd)
    for folder in [tree / "dd", *(tree / "dd").rglob("*")][::-1]:
        if folder.is_dir():
            folder.chmod(0o000)
    assert remove_tree(tree) == ""
    assert not os.path.lexists(tree)
    tree.mkdir()


def test_a_removal_that_fails_is_reported_once_not_raised(tree: Path) -> None:
    """As the sandbox user, a folder another user made unreadable, ten levels down, cannot go: the
    rest goes, and the report names that folder once (not each of its folders above, left full)."""
    fd = nest(tree, 10)
    os.mkdir("locked", dir_fd=fd)
    os.close(fd)
    (tree / "plain").write_text("x")
    if os.geteuid() == 0:  # the tree is the sandbox user's but for the locked folder
        for path in [tree, *tree.rglob("*")]:
            if path.name != "locked":
                os.chown(path, SANDBOX_UID, SANDBOX_UID, follow_symlinks=False)
    locked = tree.joinpath(*["dd"] * 10, "locked")
    locked.chmod(0o000)
    removed = in_child(lambda: remove_tree(Path("tree")), cwd=tree.parent, unprivileged=True)
    assert removed == "ok: could not remove everything under tree: 'locked': Permission denied"
    assert not (tree / "plain").exists() and locked.exists()
    locked.chmod(0o755)


def test_removing_a_missing_path_is_nothing_to_do(tmp_path: Path) -> None:
    assert remove_tree(tmp_path / "missing") == ""
    assert empty_folder(tmp_path / "missing") == ""
