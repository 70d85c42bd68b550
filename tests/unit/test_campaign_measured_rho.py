"""bench/campaign.py runs the same-seed correlation measured on a GPU (MEASURED_RHOS) as a grid of its
own: its cells are reported beside the grid's, never pooled into the grid's ratios."""

import sys
from pathlib import Path

from services.committer import rules

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import campaign

V4 = rules.SEQ_BAYES_V4_RULE
RULES = [campaign.GREEDY, rules.PAIRED_Z_RULE, campaign.CANDIDATE_RULE, V4, campaign.ORACLE]


def test_the_grid_and_the_measured_correlation_are_separate_cells() -> None:
    assert not set(campaign.MEASURED_RHOS) & set(campaign.RHOS)
    grid = campaign.scenarios(2, 0, 1.0)
    assert {cell[4] for cell in grid} == set(campaign.RHOS) and len(grid) == 48
    measured = campaign.scenarios(2, 0, 1.0, rhos=campaign.MEASURED_RHOS)
    assert {cell[4] for cell in measured} == {0.98} and len(measured) == 24


def test_the_table_prints_the_measured_cells_apart_with_each_rules_ratios() -> None:
    cells = [c for c in campaign.scenarios(2, 0, 2.0, RULES, [0.002], [0.0, 0.98]) if "gaussian" in c[0]]
    results = {str(out["scenario"]): out["rules"] for out in map(campaign.run_cell, cells)}
    grid = {n: r for n, r in results.items() if n.endswith("rho=0")}
    measured = {n: r for n, r in results.items() if n.endswith("rho=0.98")}
    document = {
        "candidate_rule": campaign.CANDIDATE_RULE, "rules": RULES, "scenarios": grid,
        "ratios": campaign.ratios(grid), "ratios_of": {V4: campaign.ratios(grid, V4)},
        "measured_rho": {
            "rho": [0.98], "scenarios": measured, "ratios": campaign.ratios(measured),
            "ratios_of": {V4: campaign.ratios(measured, V4)},
        },
    }  # fmt: skip
    text = campaign.table(document)
    grid_part, measured_part = text.split("Measured same-seed correlation (\u03c1 0.98):")
    assert "| 0.98 |" not in grid_part and "| 0.98 |" in measured_part
    for part in (grid_part, measured_part):
        assert f"ratio ({campaign.CANDIDATE_RULE} over)" in part and f"ratio ({V4} over)" in part
