"""RQ job entry point of the committer: decide on a scored proposal and merge it if it wins."""

from services import queue
from services.committer.committer import Committer

_committer: Committer | None = None


def configure(committer: Committer | None) -> None:
    global _committer
    _committer = committer


def decide_and_commit(proposal_id: str) -> str:
    if _committer is None:
        raise RuntimeError("the committer is not configured: call services.committer.jobs.configure() first")
    return _committer.decide(proposal_id, last_attempt=queue.last_attempt()).state.value
