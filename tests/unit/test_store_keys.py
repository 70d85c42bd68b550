"""The table of Redis keys (services/store/keys.py) is the whole list: every key name written in the
code matches an entry, and every entry names a module that exists."""

import ast
import re
from pathlib import Path

from services.store import keys

REPO = Path(__file__).resolve().parents[2]


def key_literals() -> dict[str, list[str]]:
    """Every string (f-strings with their fields as `{}`) that starts with the prefix, per module."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "services").rglob("*.py")):
        if path.name == "keys.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
        for node in ast.walk(tree):
            text = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts:
                text = node.value
            elif isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            if text is not None and re.fullmatch(rf"{keys.PREFIX}[\w:{{}}.-]+", text):
                found.setdefault(str(path.relative_to(REPO)), []).append(text)
    return found


def matches(name: str, entry: keys.Key) -> bool:
    pattern = re.escape(keys.PREFIX + entry.pattern).replace(r"\{\}", ".+")
    return re.fullmatch(pattern, name.replace("{}", "x")) is not None


def test_every_key_written_in_the_code_is_in_the_table() -> None:
    found = key_literals()
    assert found, "no key names found: is the pattern still right?"
    unlisted = sorted(
        f"{module}: {name}"
        for module, names in found.items()
        for name in names
        if not any(matches(name, entry) for entry in keys.TABLE)
    )
    assert not unlisted, f"keys missing from services/store/keys.py: {unlisted}"


def test_only_the_store_package_spells_key_names() -> None:
    outside = sorted(module for module in key_literals() if not module.startswith("services/store/"))
    assert not outside, f"modules that spell key names instead of using services/store/keys.py: {outside}"


def test_every_entry_names_an_existing_owner_and_a_unique_pattern() -> None:
    assert len({entry.pattern for entry in keys.TABLE}) == len(keys.TABLE)
    for entry in keys.TABLE:
        assert (REPO / entry.owner).exists() or (REPO / f"{entry.owner}.py").exists(), entry
        assert entry.pattern.count("{}") == len(entry.parts), entry


def test_a_key_is_built_from_its_parts() -> None:
    assert keys.PROPOSAL.of("p_1") == "ar:proposal:p_1"
    assert keys.DEDUPE.of("c0ffee", "abc") == "ar:dedupe:c0ffee:abc"
