"""docs/architecture.md matches the code: every path it names exists, every module a folder's row of
its layout lists is in that folder, and every function or class it names after a module
(`path.py`: `name`) is defined there."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"

PATH = re.compile(
    r"`((?:services|trainer|tests|bench|docker|docs)/[\w./-]*)`|\b(docs/[\w-]+\.md|bench/README\.md)\b"
)
NAMED_IN = re.compile(r"`([\w/]+\.py)`: ((?:`[\w.]+`(?:, | / )?)+)")
LAYOUT_ROW = re.compile(r"^\| `([\w/]+/)` \| (.*) \|$")
MODULE = re.compile(r"`([\w]+(?:\.py|/))`")


def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def defined_names(path: Path) -> set[str]:
    """Top-level functions and classes of a module, and `Class.method` for their methods."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {
                f"{node.name}.{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            }
    return names


def test_every_path_it_names_exists() -> None:
    named = {a or b for a, b in PATH.findall(doc())}
    assert len(named) > 30, "the page names fewer paths than expected: is the pattern still right?"
    missing = sorted(path for path in named if not (REPO / path).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_module_a_layout_row_lists_is_in_its_folder() -> None:
    rows = [LAYOUT_ROW.match(line) for line in doc().splitlines()]
    listed = [(row.group(1), name) for row in rows if row for name in MODULE.findall(row.group(2))]
    assert len(listed) > 20
    missing = sorted(f"{folder}{name}" for folder, name in listed if not (REPO / folder / name).exists())
    assert not missing, f"docs/architecture.md's layout lists modules that do not exist: {missing}"


def test_every_function_it_names_after_a_module_is_defined_there() -> None:
    pairs = [
        (path, name) for path, names in NAMED_IN.findall(doc()) for name in re.findall(r"`([\w.]+)`", names)
    ]
    assert len(pairs) > 10
    missing = sorted(
        f"{path}: {name}"
        for path, name in pairs
        if not (REPO / path).is_file() or name not in defined_names(REPO / path)
    )
    assert not missing, f"docs/architecture.md names functions or classes that are not there: {missing}"


def test_every_method_it_names_is_defined() -> None:
    """`Class.method` named anywhere on the page (the states table names the function behind each
    move) is a method of that class in services/ or trainer/."""
    named = set(re.findall(r"`([A-Z]\w+\.\w+)`", doc())) - {"Dockerfile.services", "Dockerfile.trainer"}
    assert len(named) > 10
    defined: set[str] = set()
    for path in [*REPO.glob("services/**/*.py"), *REPO.glob("trainer/*.py")]:
        defined |= defined_names(path)
    missing = sorted(named - defined)
    assert not missing, f"docs/architecture.md names methods that are not there: {missing}"
