"""What the worker keeps of the scorer's `timings` from result.json (read as untrusted input)."""

from __future__ import annotations

from services.worker.runner import scorer_timings


def test_names_to_finite_seconds_rounded_and_nothing_else() -> None:
    raw = {
        "data_s": 1.23456,
        "passes_s": 6,
        "bad": "1.0",
        "flag": True,
        "nan": float("nan"),
        "inf": float("inf"),
    }
    assert scorer_timings(raw) == {"data_s": 1.235, "passes_s": 6.0}


def test_not_an_object_gives_no_timings() -> None:
    assert scorer_timings(None) == {}
    assert scorer_timings([["data_s", 1.0]]) == {}


def test_at_most_32_names_of_at_most_40_characters() -> None:
    kept = scorer_timings({f"{i:03d}{'x' * 50}": float(i) for i in range(100)})
    assert len(kept) == 32 and all(len(name) == 40 for name in kept)
