"""docs/configuration.md, generated from the settings classes: every `AR_*` variable with its type,
default, bounds and meaning, in the sections services/settings.py gives them, each section saying
where code reads it (`settings.sandbox`, `AgentSettings`).

    python -m services.settings_doc > docs/configuration.md

The meaning is the field's comment in services/settings.py: the comment lines right above it and the
comment at the end of its line. Section titles are its `# --- name` lines. A test fails when the file
is stale, or when a field has no comment.
"""

import ast
import inspect
import io
import itertools
import json
import sys
import tokenize
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from services.settings import GROUPS, AgentSettings, Settings

COMMAND = "python -m services.settings_doc > docs/configuration.md"
GROUP_MARK = "# ---"

HEADER = f"""# Configuration

Every process (controller, worker, committer, agents, `autoresearch-admin`) reads its settings from
`AR_*` environment variables when it starts, and refuses to start when one is out of its bounds.
Compose passes them from `.env` and sets a few per service (`compose.yaml`: the worker's GPU,
volumes and image, for instance). Lists and maps are written as JSON, e.g.
`AR_GPU_HOST_MOUNTS='["/usr:/usr"]'`.

The variables are flat, but code reads them in groups (services/settings.py): the connections and
the fault points on `Settings` itself, then `settings.controller` (proposals, the API),
`settings.runs`, `settings.sandbox` (containers, data, GPU), `settings.acceptance` (the merge rule
and the tripwire) and `settings.repo`; the built-in agents read `AgentSettings`, apart. Each section
below says which group it belongs to.

Generated from `services/settings.py` by `{COMMAND}`:
edit the comments there, not this file.
"""

# Each settings class, and how code reaches its fields.
CLASSES: tuple[tuple[type[BaseModel], str], ...] = (
    (Settings, "settings"),
    *((group, f"settings.{name}") for name, group in GROUPS.items()),
    (AgentSettings, "AgentSettings()"),
)


@dataclass(frozen=True)
class Variable:
    group: str
    where: str  # how code reads it, e.g. `settings.sandbox`
    name: str
    type: str
    default: str
    bounds: str
    meaning: str


@dataclass(frozen=True)
class Comments:
    """What services/settings.py says about its fields: each field's group and meaning, and each
    group's introduction (the comment lines right below its `# --- name` line, then a blank line)."""

    fields: dict[str, tuple[str, str]]
    groups: dict[str, str]


def comments_by_line(source: str) -> dict[int, str]:
    """Line number → the text of the comment on it (`#` and spaces stripped)."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {tok.start[0]: tok.string for tok in tokens if tok.type == tokenize.COMMENT}


def read_comments(cls: type) -> Comments:
    source = inspect.getsource(cls)
    comments = comments_by_line(source)
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    fields_at = {
        node.lineno: node
        for node in body.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    fields: dict[str, tuple[str, str]] = {}
    groups: dict[str, str] = {}
    block: list[str] = []
    group, block_opens_group = "", False
    for number, line in enumerate(source.splitlines(), start=1):
        text = line.strip()
        if text.startswith(GROUP_MARK):
            group, block, block_opens_group = text[len(GROUP_MARK) :].strip(), [], True
        elif text.startswith("#"):
            block.append(text.lstrip("#").strip())
        elif not text:
            if block_opens_group and block:
                groups[group] = " ".join(block)
            block, block_opens_group = [], False
        elif number in fields_at:
            node = fields_at[number]
            assert isinstance(node.target, ast.Name)
            after = [
                comments.get(n, "").lstrip("#").strip() for n in sorted({number, node.end_lineno or number})
            ]
            fields[node.target.id] = (group, " ".join(part for part in [*block, *after] if part))
            block, block_opens_group = [], False
    return Comments(fields, groups)


def type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{value}`" for value in arguments)
    if origin in (typing.Union, types.UnionType):
        named = [type_name(argument) for argument in arguments if argument is not type(None)]
        return " \\| ".join(named) + (" or unset" if type(None) in arguments else "")
    if origin is list:
        return f"JSON list of {type_name(arguments[0])}"
    if origin is dict:
        return f"JSON object of {type_name(arguments[1])}"
    if annotation is SecretStr:
        return "secret"
    if annotation is Path:
        return "path"
    return str(getattr(annotation, "__name__", annotation))


def default_text(name: str, field: FieldInfo) -> str:
    value = field.get_default()
    if value is None:
        return "unset"
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return '`""`'
    if name.endswith("_bytes") and isinstance(value, int) and value >= 1024 and value % 1024 == 0:
        return f"`{value}` ({_binary_size(value)})"
    return f"`{value}`"


def _binary_size(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value % size == 0:
            return f"{value // size} {unit}"
    return str(value)


def bounds_text(field: FieldInfo) -> str:
    words = {
        annotated_types.Gt: ("> ", "gt"),
        annotated_types.Ge: ("≥ ", "ge"),
        annotated_types.Lt: ("< ", "lt"),
        annotated_types.Le: ("≤ ", "le"),
        annotated_types.MaxLen: ("length ≤ ", "max_length"),
    }
    parts = []
    for item in field.metadata:
        for kind, (word, attribute) in words.items():
            if isinstance(item, kind):
                parts.append(f"{word}{getattr(item, attribute)}")
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            parts.append(f"matches `{pattern}`")
    return ", ".join(parts)


def variables(
    classes: tuple[tuple[type[BaseModel], str], ...] = CLASSES, prefix: str = "AR_"
) -> list[Variable]:
    """Every variable once, in the order of the classes and their fields (a field another class
    already lists, such as the agents' fallback `admin_token`, is not listed again)."""
    found: list[Variable] = []
    seen: set[str] = set()
    for cls, where in classes:
        comments = read_comments(cls).fields
        for name, field in cls.model_fields.items():
            if name in GROUPS or name in seen:
                continue
            seen.add(name)
            group, meaning = comments.get(name, ("", ""))
            found.append(
                Variable(
                    group=group,
                    where=where,
                    name=f"{prefix}{name.upper()}",
                    type=type_name(field.annotation),
                    default=default_text(name, field),
                    bounds=bounds_text(field),
                    meaning=meaning,
                )
            )
    return found


def introductions(classes: tuple[tuple[type[BaseModel], str], ...] = CLASSES) -> dict[str, str]:
    """Each section's introduction, from every class."""
    found: dict[str, str] = {}
    for cls, _ in classes:
        found.update(read_comments(cls).groups)
    return found


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(found: list[Variable], groups: dict[str, str]) -> str:
    out = [HEADER]
    for (group, where), grouped in itertools.groupby(
        found, key=lambda variable: (variable.group, variable.where)
    ):
        members = list(grouped)
        out.append(f"## {group[:1].upper()}{group[1:]}\n")
        if group in groups:
            out.append(f"{groups[group]}\n")
        example = members[0].name.removeprefix("AR_").lower()
        out.append(f"Group `{where}`: in code, `{where}.{example}` and so on.\n")
        out.append("| variable | type | default | bounds | meaning |")
        out.append("|---|---|---|---|---|")
        for variable in members:
            row = [
                f"`{variable.name}`",
                variable.type,
                variable.default,
                variable.bounds,
                cell(variable.meaning),
            ]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    sys.stdout.write(render(variables(), introductions()))


if __name__ == "__main__":
    main()
