"""RQ job entry points of the worker. The worker process configures the `Worker` once at start-up
(`configure`); RQ then calls `execute_proposal` with a proposal id."""

from services.models import Proposal
from services.worker.worker import Worker

_worker: Worker | None = None


def configure(worker: Worker | None) -> None:
    global _worker
    _worker = worker


def execute_proposal(proposal_id: str) -> str:
    if _worker is None:
        raise RuntimeError("the worker is not configured: call services.worker.jobs.configure() first")
    proposal: Proposal = _worker.execute(proposal_id)
    return proposal.state.value
