"""Accept rules: pure functions from numbers to a Decision. The noise-aware rule is its own issue;
this is the simple one the spine needs: strictly better than the best."""

from services.models import Decision

BEATS_BEST_RULE = "beats-best/v1"


def beats_best(candidate_bpb: float, best_bpb: float, best_commit: str) -> Decision:
    delta = candidate_bpb - best_bpb
    accepted = delta < 0
    verdict = "beats" if accepted else "does not beat"
    return Decision(
        accepted=accepted,
        rule=BEATS_BEST_RULE,
        candidate_bpb=candidate_bpb,
        best_bpb=best_bpb,
        best_commit=best_commit,
        delta_bpb=delta,
        reason=f"val_bpb {candidate_bpb:.6f} {verdict} the best {best_bpb:.6f} (Δ {delta:+.6f})",
    )
