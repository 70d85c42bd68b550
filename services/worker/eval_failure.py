"""What a proposal is told when its evaluation fails: one fixed sentence per failure code of the
trusted scorer (`FAILURE_CODES` in trainer/protocol.py, written to result.json as "failure").

Never the scorer's log: it names shapes, dtypes, error text and timings that the candidate's model
code chose while it was being handed validation rows, and any such byte is a way to read the
validation data (docs/security.md, "Channels from evaluation back to an agent"). The logs stay in the
run's folder on the worker host (eval.log, model-a.log, model-b.log), for admins.
"""

from services.worker.sandbox import StepOutcome

REASONS = {
    "checkpoint": "the checkpoint is missing or unreadable (model.safetensors, run.json)",
    "model_build": "the model could not be built or loaded from train.py and the checkpoint, or failed "
    "its warm-up batch",
    "model_forward": "the model server reported an error on a batch",
    "model_crashed": "the model server crashed or closed its channel",
    "model_timeout": "the model server did not start or answer in time",
    "protocol": "the model server broke the evaluation protocol",
    "logits_shape": "logits of the wrong shape (want [batch, positions, vocab])",
    "logits_dtype": "logits of a non-float dtype",
    "non_finite": "non-finite logits",
    "lookahead": "the model looked ahead: the causality probes differ from the scored pass",
}


def reason(outcome: StepOutcome, failure_code: str, timeout_s: int) -> str:
    """The voided run's reason, from the scorer's exit and its failure code alone."""
    if outcome.timed_out:
        return f"evaluation failed: timed out after {timeout_s} s"
    known = REASONS.get(failure_code)
    if known is not None:
        return f"evaluation failed: {known}"
    return (
        f"evaluation failed: the scorer exited with code {outcome.exit_code} (its log is kept with the run "
        "on the worker host)"
    )
