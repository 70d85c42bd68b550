"""The control arm's view of the trainer: its UPPER_CASE numeric constants, and one perturbed."""

import difflib
import random
from pathlib import Path

from services.agent.search import hyperparameters, perturbed, with_value

TRAINER = Path(__file__).resolve().parents[2] / "trainer" / "train.py"


def test_hyperparameters_of_the_real_trainer() -> None:
    names = {c.name: c.value for c in hyperparameters(TRAINER.read_text(), frozenset({"PEAK_FLOPS"}))}
    assert names["MATRIX_LR"] == 0.06 and names["DEPTH"] == 6
    assert "COMPILE" not in names  # a bool
    assert "PROCESS_START" not in names  # not a literal
    assert "PEAK_FLOPS" not in names  # excluded
    assert "FINAL_LR_FRAC" not in names  # zero: scaling cannot move it


def test_one_perturbation_changes_one_literal_and_keeps_the_comment() -> None:
    source = TRAINER.read_text()
    rng = random.Random(3)
    for constant in hyperparameters(source):
        value = perturbed(constant.value, rng, 0.3)
        assert value != constant.value and type(value) is type(constant.value)
        changed = with_value(source, constant, value)
        compile(changed, "train.py", "exec")
        removed = [
            line for line in difflib.ndiff(source.splitlines(), changed.splitlines()) if line[:1] == "-"
        ]
        assert len(removed) == 1 and removed[0].startswith(f"- {constant.name} = ")
        new_line = changed.splitlines()[constant.line - 1]
        assert new_line.startswith(f"{constant.name} = {value!r}")
        assert new_line.split("#")[1:] == source.splitlines()[constant.line - 1].split("#")[1:]


def test_integers_stay_positive_and_negative_literals_are_found() -> None:
    rng = random.Random(0)
    assert all(perturbed(1, rng, 2.0) >= 1 for _ in range(200))
    (constant,) = hyperparameters("SHIFT = -0.5  # x\n")
    assert (
        constant.value == -0.5 and with_value("SHIFT = -0.5  # x\n", constant, -0.6) == "SHIFT = -0.6  # x\n"
    )
