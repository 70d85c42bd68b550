"""docs/architecture.md matches the code: every path it names exists, every module a folder's row of
its layout lists is in that folder, and every function or class it names after a module
(`path.py`: `name`) is defined there. The same holds for every page of docs/, README.md and
bench/*.md: the paths, `Class.method` names and `path.py`: `name` pairs they cite exist."""

import ast
import re
import subprocess
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


def defined_names(path: Path, fields: bool = False) -> set[str]:
    """Top-level functions and classes of a module, and `Class.method` for their methods (with
    `fields`, `Class.field` for their annotated fields too)."""
    names = set()
    members: tuple[type, ...] = (ast.FunctionDef, ast.AsyncFunctionDef, *((ast.AnnAssign,) if fields else ()))
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, members):
                    target = item.target if isinstance(item, ast.AnnAssign) else item
                    names.add(f"{node.name}.{getattr(target, 'id', None) or getattr(target, 'name', '')}")
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


PAGES = [*REPO.glob("docs/*.md"), REPO / "README.md", *REPO.glob("bench/*.md")]
FILE_NAMES = re.compile(r"^[A-Z]+\.(json|md|log|py)$|^Dockerfile\.\w+$")  # `NAME.json`, `Dockerfile.trainer`


def test_every_method_any_page_names_is_defined() -> None:
    """`Class.method` (or `Class.field`) named on any page of docs/, README.md or bench/*.md is
    defined in services/, trainer/, bench/ or tests/: a newcomer who looks it up finds it."""
    defined: set[str] = set()
    for folder in ("services/**", "trainer", "bench", "tests/**"):
        for path in REPO.glob(f"{folder}/*.py"):
            defined |= defined_names(path, fields=True)
    missing = sorted(
        f"{page.relative_to(REPO)}: {name}"
        for page in PAGES
        for name in set(re.findall(r"`([A-Z]\w+\.\w+)`", page.read_text(encoding="utf-8")))
        if name not in defined and not FILE_NAMES.match(name)
    )
    assert not missing, f"pages name methods that are not there: {missing}"


def test_every_path_any_page_names_exists() -> None:
    """Every `services/...`, `trainer/...`, `tests/...`, `bench/...`, `docker/...` and docs/ path
    named on any page exists (the benchmark scripts and results files included), or is one that
    git ignores (a file the project generates, such as a copied CA bundle)."""
    missing = sorted(
        f"{page.relative_to(REPO)}: {a or b}"
        for page in PAGES
        for a, b in PATH.findall(page.read_text(encoding="utf-8"))
        if not (REPO / (a or b)).exists() and not git_ignores(a or b)
    )
    assert not missing, f"pages name paths that do not exist: {missing}"


def git_ignores(path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, check=False).returncode == 0


def test_every_function_any_page_names_after_a_module_is_defined_there() -> None:
    missing = sorted(
        f"{page.relative_to(REPO)}: {path}: {name}"
        for page in PAGES
        for path, names in NAMED_IN.findall(page.read_text(encoding="utf-8"))
        for name in re.findall(r"`([\w.]+)`", names)
        if not (REPO / path).is_file() or name not in defined_names(REPO / path)
    )
    assert not missing, f"pages name functions or classes that are not there: {missing}"


def module_names(path: Path) -> set[str]:
    """What `module.name` may name in a module: its functions, classes and top-level constants, and its
    classes' methods and fields (`settings.sandbox.train_data`: a field of the settings object)."""
    names = {name.rpartition(".")[2] for name in defined_names(path, fields=True)}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        names |= {target.id for target in targets if isinstance(target, ast.Name)}
    return names


def test_every_module_function_any_page_names_is_defined() -> None:
    """`module.name` on any page (`queue.enqueue_decision`, `rules.decide`), where `module` is a module
    of services/, trainer/ or bench/, is defined in a module of that name."""
    modules: dict[str, list[Path]] = {}
    for folder in ("services/**", "trainer", "bench"):
        for path in REPO.glob(f"{folder}/*.py"):
            modules.setdefault(path.stem, []).append(path)
    cited = {
        (page.relative_to(REPO), module, name)
        for page in PAGES
        for module, name in re.findall(r"`([a-z_]+)\.([a-z_]\w*)`", page.read_text(encoding="utf-8"))
        if module in modules and name not in {"py", "md", "json", "log", "js", "tsv", "yaml", "sh", "txt"}
    }
    assert len(cited) > 10
    missing = sorted(
        f"{page}: {module}.{name}"
        for page, module, name in cited
        if not any(name in module_names(path) for path in modules[module])
    )
    assert not missing, f"pages name module functions that are not there: {missing}"
