"""`autoresearch-search`: the control arm. Random local search over the best train.py's UPPER_CASE
hyperparameter constants: each iteration multiplies one numeric constant by a log-normal factor
(σ = AR_AGENT_SEARCH_STEP) and submits the result against the best, so merged steps make it a hill
climb. It reads no program.md and names no program_version: its proposals are the baseline that an
LLM agent's win rate and GPU time are compared with."""

import ast
import logging
import math
import random
import re
from dataclasses import dataclass, field

from services.agent.loop import Clock, Outcome, agent_token, log_outcome, submit_and_wait, wait_ready
from services.cli.client import ApiClient
from services.logs import configure_logging
from services.patches import split_lines
from services.settings import AgentSettings

log = logging.getLogger(__name__)

DEFAULT_NAME = "random-search"
SIGNIFICANT_DIGITS = 4  # of a perturbed float, so titles and diffs stay readable
PICKS_PER_ITERATION = 20  # draws before giving up on finding a not-yet-tried candidate
_UPPER = re.compile(r"^[A-Z][A-Z0-9_]*$")


class NothingToSearch(Exception):
    """The trainer has no numeric UPPER_CASE constant the search may change."""


@dataclass(frozen=True)
class Constant:
    """A module-level `NAME = <number>` of the trainer: where its literal is (1-based line, character
    columns) and its value."""

    name: str
    value: int | float
    line: int
    start: int
    end: int


def hyperparameters(source: str, exclude: frozenset[str] = frozenset()) -> list[Constant]:
    """Module-level UPPER_CASE names bound to a non-zero int or float literal (bools excluded)."""
    lines = split_lines(source)
    found = []
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target, value = node.targets[0], node.value
        if not isinstance(target, ast.Name) or not _UPPER.match(target.id) or target.id in exclude:
            continue
        number = _number(value)
        if number is None or number == 0 or value.lineno != value.end_lineno:
            continue
        line = lines[value.lineno - 1].encode()
        start = len(line[: value.col_offset].decode())  # ast columns count UTF-8 bytes
        end = len(line[: value.end_col_offset].decode())
        found.append(Constant(target.id, number, value.lineno, start, end))
    return found


def _number(node: ast.expr) -> int | float | None:
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        sign, node = -1, node.operand
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return sign * node.value
    return None


def perturbed(value: int | float, rng: random.Random, step: float) -> int | float:
    """`value` times exp(N(0, step)), rounded; never equal to `value`, and an int stays ≥ 1 if it was."""
    factor = math.exp(rng.gauss(0.0, step))
    if isinstance(value, int):
        new = round(value * factor)
        if new == value:
            new = value + (1 if factor >= 1 else -1)
        if value >= 1 and new < 1:
            new = 2 if value == 1 else 1
        return new
    new_float = _rounded(value * factor)
    return new_float if new_float != value else _rounded(value * (1.1 if factor >= 1 else 0.9))


def _rounded(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def with_value(source: str, constant: Constant, value: int | float) -> str:
    lines = split_lines(source, keepends=True)
    line = lines[constant.line - 1]
    lines[constant.line - 1] = line[: constant.start] + repr(value) + line[constant.end :]
    return "".join(lines)


@dataclass
class RandomSearch:
    client: ApiClient
    settings: AgentSettings
    rng: random.Random
    clock: Clock = field(default_factory=Clock)
    tried: set[tuple[str, str]] = field(default_factory=set)  # (base commit, candidate hash)

    @property
    def name(self) -> str:
        return self.settings.agent_name or DEFAULT_NAME

    def run(self) -> list[Outcome]:
        wait_ready(self.client, self.clock)
        outcomes = []
        for iteration in range(1, self.settings.agent_max_iterations + 1):
            outcome = self.step()
            outcomes.append(outcome)
            log_outcome(iteration, outcome)
        return outcomes

    def step(self) -> Outcome:
        best = self.client.get("/v1/best")
        source = str(best["train_py"])
        constants = hyperparameters(source, frozenset(self.settings.agent_search_exclude))
        if not constants:
            raise NothingToSearch("the best train.py has no numeric UPPER_CASE constant to search over")
        for _ in range(PICKS_PER_ITERATION):
            constant = self.rng.choice(constants)
            value = perturbed(constant.value, self.rng, self.settings.agent_search_step)
            key = (str(best["commit"]), f"{constant.name}={value!r}")
            if key not in self.tried:
                break
        self.tried.add(key)
        body = {
            "title": f"{constant.name} {constant.value!r} -> {value!r}",
            "description": f"random local search: one hyperparameter scaled by {value / constant.value:.3g}",
            "agent": self.name,
            "base_commit": best["commit"],
            "train_py": with_value(source, constant, value),
        }
        return submit_and_wait(self.client, body, self.settings, self.clock)


def main() -> int:
    configure_logging()
    settings = AgentSettings()
    rng = random.Random(settings.agent_search_seed)
    with ApiClient(settings.agent_controller_url, agent_token(settings)) as client:
        outcomes = RandomSearch(client, settings, rng).run()
    log.info("done", extra={"iterations": len(outcomes), "merged": sum(o.merged for o in outcomes)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
