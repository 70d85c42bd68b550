"""What the LLM agent is told, and how its answer is read.

Each prompt is built afresh from the research state and the agent's own past outcomes (its memory),
so a long run never outgrows the model's context. The answer must hold a TITLE line, a WHY paragraph
and one unified diff of trainer/train.py in a ```diff block. Hunk headers whose line numbers are off
(common with LLMs) are re-anchored to where the hunk's old lines really are in the base; nothing else
is fuzzed, and the controller validates the result strictly.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.agent import AgentError
from services.agent.llm import Message
from services.agent.loop import Outcome, Research
from services.patches import split_lines

MEMORY = 12  # own past outcomes shown in each prompt, newest last
REASON_CHARS = 400  # of a past outcome's reason
TITLE_CHARS = 200
TARGET = "trainer/train.py"

SYSTEM = f"""\
You are an autonomous ML research agent. You improve {TARGET}, a small GPT language-model trainer,
one idea at a time. A service trains each change for a fixed budget, scores it with a trusted
evaluator (val_bpb, lower is better) and merges it only if it beats the current best beyond noise.

Answer in exactly this format:
TITLE: <one line: the change>
WHY: <a short paragraph: why it should lower val_bpb>
```diff
--- a/{TARGET}
+++ b/{TARGET}
@@ ... @@
<a unified diff against the current best {TARGET} shown to you, with 3 lines of context>
```
One idea per answer. Do not repeat an idea that was already rejected unless you change what matters."""

_FENCE = re.compile(r"```(?:diff|patch|udiff)?[ \t]*\n(.*?)```", re.DOTALL)
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")


class NoDiff(AgentError):
    """The answer holds no unified diff the agent can submit."""


@dataclass(frozen=True)
class Idea:
    title: str
    description: str
    diff: str


def messages(research: Research, memory: Sequence[Outcome]) -> list[Message]:
    return [Message("system", SYSTEM), Message("user", user_prompt(research, memory))]


def user_prompt(research: Research, memory: Sequence[Outcome]) -> str:
    score = "not scored" if research.best_val_bpb is None else f"{research.best_val_bpb:.6f}"
    parts = [
        f"## program.md (version {research.program_version}): your instructions\n\n{research.program}",
        f"## The current best {TARGET} (commit {research.best_commit[:12]}, val_bpb {score})\n\n"
        f"```python\n{research.train_py}```",
        "## Recent proposals by everyone (newest first)\n\n" + _recent(research),
        "## Your own past ideas and what became of them (oldest first)\n\n" + _memory(memory),
        "Propose your next idea now.",
    ]
    return "\n\n".join(parts)


def _recent(research: Research) -> str:
    rows = [
        f"- [{r['state']}] {r['title']} (by {r['agent']}, val_bpb {_num(r.get('val_bpb'))})"
        for r in research.recent
    ]
    return "\n".join(rows) or "(none yet)"


def _memory(memory: Sequence[Outcome]) -> str:
    lines = []
    for i, o in enumerate(memory[-MEMORY:], 1):
        numbers = f", val_bpb {_num(o.val_bpb)}, Δ {_num(o.delta_bpb)}" if o.val_bpb is not None else ""
        lines.append(f"{i}. {o.title}: {o.state}{numbers}. {o.reason[:REASON_CHARS]}")
    return "\n".join(lines) or "(this is your first idea)"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.6f}" if abs(value) < 0.1 else f"{value:.6f}"


def parse_answer(answer: str, base: str) -> Idea:
    """The idea in an LLM's answer, its diff aimed at TARGET and its hunks anchored on `base`."""
    title = _field(answer, "TITLE") or "an LLM idea"
    description = _field(answer, "WHY", multiline=True)
    return Idea(title[:TITLE_CHARS], description, reanchor(retarget(extract_diff(answer)), base))


def _field(answer: str, name: str, multiline: bool = False) -> str:
    pattern = (
        rf"^\s*\**{name}\**:\s*(.+?)\s*$" if not multiline else rf"^\s*\**{name}\**:\s*(.*?)\s*(?:```|\Z)"
    )
    match = re.search(pattern, answer, re.MULTILINE | (re.DOTALL if multiline else 0))
    return match.group(1).strip() if match else ""


def extract_diff(answer: str) -> str:
    for block in _FENCE.findall(answer):
        if re.search(r"^@@ ", block, re.MULTILINE):
            return str(block)
    start = re.search(r"^--- ", answer, re.MULTILINE)
    if start and re.search(r"^@@ ", answer[start.start() :], re.MULTILINE):
        return answer[start.start() :]
    raise NoDiff("the answer has no unified diff (expected a ```diff block with @@ hunks)")


def retarget(diff: str) -> str:
    """File headers naming TARGET, whatever path the model wrote (train.py, a/train.py, ...)."""
    lines = [line for line in split_lines(diff) if not line.startswith(("diff --git", "index "))]
    out = [f"--- a/{TARGET}" if line.startswith("--- ") else line for line in lines]
    out = [f"+++ b/{TARGET}" if line.startswith("+++ ") else line for line in out]
    if not any(line.startswith("--- ") for line in out):
        out = [f"--- a/{TARGET}", f"+++ b/{TARGET}", *out]
    return "\n".join(out) + "\n"


def reanchor(diff: str, base: str) -> str:
    """Each hunk's header rewritten from its body: counts recounted, and the old start moved to the
    one place in `base` where the hunk's old lines occur (left as written when not exactly once)."""
    base_lines = split_lines(base)
    out: list[str] = []
    hunk: list[str] = []
    header: re.Match[str] | None = None
    shift = 0  # new-file lines added minus removed by earlier hunks

    def flush() -> None:
        nonlocal shift
        if header is None:
            return
        while hunk and hunk[-1] == "":  # trailing blank lines a model leaves after the last hunk
            hunk.pop()
        old = [line[1:] for line in hunk if line[:1] in (" ", "-", "")]
        new_count = sum(1 for line in hunk if line[:1] in (" ", "+", ""))
        start = _locate(old, base_lines) or int(header.group(1))
        out.append(f"@@ -{start},{len(old)} +{start + shift},{new_count} @@{header.group(5)}")
        out.extend(hunk)
        shift += new_count - len(old)

    for line in split_lines(diff):
        match = _HUNK.match(line)
        if match:
            flush()
            header, hunk = match, []
        elif header is None:
            out.append(line)
        elif not line.startswith("\\"):
            hunk.append(line)
    flush()
    return "\n".join(out) + "\n"


def _locate(old: list[str], base: list[str]) -> int | None:
    if not old:
        return None
    found = [i + 1 for i in range(len(base) - len(old) + 1) if base[i : i + len(old)] == old]
    return found[0] if len(found) == 1 else None
