"""What a caller may see of the record, decided in one place: every route and event stream passes its
body through `Disclosure` before it leaves the controller.

Admins see everything. Agents (and the unauthenticated /metrics) see:
  - scores rounded to `agent_score_decimals` decimals (default 4: 0.0001 bpb, about a tenth of the
    run-to-run σ at the 300 s budget): at full precision a score carries tens of bits about the rows
    it was computed on; the committer decides on the full numbers
  - numbers in reason texts rounded the same way (the committer writes its verdicts with six)
  - the evaluation's duration in whole seconds, and no finer split of it (`scorer_timings`); every
    timestamp in whole seconds too, since two of them (a run's `finished_at` and its `evaluating`
    event's `at`) bracket the evaluation to the millisecond
  - nothing of the held-out test split but whether the tripwire passed (`test_*` fields hidden): agents
    who saw test figures could tune against them, and the tripwire would become a ranking
  - not where the logits crossed (`logits_slots`): the model server chooses it

docs/security.md, "Channels from evaluation back to an agent", lists every channel and its rate.
"""

import math
import re
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from services.controller.auth import Principal, Role
from services.settings import Settings

SCORE_KEYS = frozenset(
    {
        "val_bpb", "best_val_bpb", "candidate_bpb", "best_bpb", "delta_bpb", "delta", "threshold_bpb",
        "mean_delta_bpb", "candidate_runs", "best_runs",
        # seq-bayes/v1: the merged score and the posterior over the effect (Decision.posterior)
        "merged_bpb", "mean_bpb", "lo_bpb", "hi_bpb", "evidence_delta_bpb",
        # seq-bayes/v2: the candidate's and the best's pooled levels, a run's cost in bpb
        "candidate_level_bpb", "best_level_bpb", "run_cost_bpb",
        # seq-bayes/v3: E[max(−Δ, 0)], the posterior's expected gain
        "expected_gain_bpb",
        # GET /v1/best: the best re-measured
        "remeasured_bpb",
    }
)  # fmt: skip
# shown to two significant digits
# (seq-bayes/v4: the variance of a paired difference it used)
SIGMA_KEYS = frozenset({"sigma_bpb", "sd_bpb", "evidence_sd_bpb", "reference_sd_bpb", "pair_var_bpb2"})
# seq-bayes/v1's P(Δ < 0): in its steep part a finer probability pins the evidence far below the
# rounding of the scores, so agents see two decimals (the reasons write it so too)
PROBABILITY_KEYS = frozenset({"p_better", "p_better_confirmation_alone"})
PROBABILITY_DECIMALS = 2
SECONDS_KEYS = frozenset(
    {"eval_container_s", "gpu_seconds", "gpu_seconds_total", "gpu_seconds_per_improvement"}
)
# Timestamps (seconds since the epoch) of the record: events, runs, decisions, proposals, lineage.
TIME_KEYS = frozenset({"at", "finished_at", "decided_at", "created_at", "updated_at", "merged_at"})
HIDDEN_KEYS = frozenset({"scorer_timings", "logits_slots"})
HIDDEN_PREFIX = "test_"  # the held-out split's figures: admins only
TEXT_KEYS = frozenset({"reason"})
SIGMA_DIGITS = 2
ADMIN_SCORE_DECIMALS = 6  # how the committer writes scores in its verdicts

Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True)
class Disclosure:
    admin: bool
    decimals: int

    @classmethod
    def of(cls, caller: Principal | None, settings: Settings) -> "Disclosure":
        """None: a caller without a token (/metrics), shown what an agent is."""
        admin = caller is not None and caller.role is Role.ADMIN
        return cls(admin=admin, decimals=settings.controller.agent_score_decimals)

    def model(self, model: Model) -> Model:
        if self.admin:
            return model
        return type(model).model_validate(self.data(model.model_dump(mode="json")))

    def models(self, models: list[Model]) -> list[Model]:
        return [self.model(m) for m in models]

    def data(self, value: Any) -> Any:
        """A JSON-like value as this caller may see it (hidden keys are dropped, so models fill in
        their defaults)."""
        if self.admin:
            return value
        if isinstance(value, dict):
            return {k: self._field(k, v) for k, v in value.items() if not _hidden(k)}
        if isinstance(value, list):
            return [self.data(v) for v in value]
        return value

    def score(self, value: float | None) -> float | None:
        if value is None or self.admin or not math.isfinite(value):
            return value
        return round(value, self.decimals)

    def score_text(self, value: float | None) -> str:
        """A score written out: six decimals for admins, the agents' precision for agents."""
        if value is None:
            return "-"
        return f"{value:.{ADMIN_SCORE_DECIMALS if self.admin else self.decimals}f}"

    def text(self, text: str) -> str:
        """Numbers written with more decimals than agents see, rounded."""
        if self.admin:
            return text
        return _LONG_NUMBER[self.decimals].sub(lambda m: _rounded(m.group(0), self.decimals), text)

    def _field(self, key: str, value: Any) -> Any:
        if key in SCORE_KEYS:
            return _map_numbers(value, self.score)
        if key in SIGMA_KEYS:
            return _map_numbers(value, _significant)
        if key in PROBABILITY_KEYS:
            return _map_numbers(value, lambda x: round(x, PROBABILITY_DECIMALS))
        if key in SECONDS_KEYS or key in TIME_KEYS:
            return _map_numbers(value, lambda x: float(round(x)))
        if key in TEXT_KEYS and isinstance(value, str):
            return self.text(value)
        return self.data(value)


def _hidden(key: str) -> bool:
    return key in HIDDEN_KEYS or key.startswith(HIDDEN_PREFIX)


def _map_numbers(value: Any, f: Any) -> Any:
    if isinstance(value, list):
        return [_map_numbers(v, f) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f(float(value))
    return value


def _significant(value: float) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, SIGMA_DIGITS - 1 - math.floor(math.log10(abs(value))))


def _rounded(number: str, decimals: int) -> str:
    return f"{float(number):.{decimals}f}"


# a decimal number with more fractional digits than `decimals`, not part of a longer token
_LONG_NUMBER = {d: re.compile(rf"(?<![\w.])\d+\.\d{{{d + 1},}}(?!\d)") for d in range(0, 10)}
