"""Test-only pause points, for fault-injection tests that kill a real process at a chosen step.

Inert in production: `Settings.fault_pause_at` (environment `AR_FAULT_PAUSE_AT`) is empty unless a
test sets it. When it names a point, the process that reaches that point creates the file
`Settings.fault_pause_marker` (`AR_FAULT_PAUSE_MARKER`), so the test knows it got there, and then
sleeps until it is killed. Points:

    submit:stored          the controller stored a submitted proposal; its run job is not enqueued

the committer's merge, in order:

    merge:commit-written   the commit object exists; the branch has not moved
    merge:branch-moved     the branch points at the new commit; its note is not written
    merge:noted            the note is written; the tried ref is not
    merge:tried-kept       the tried ref and its note exist; the store has not heard of the merge
    merge:best-set         the store's best is the new commit; the proposal is still `accepted`
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PAUSE_POINTS = (
    "submit:stored",
    "merge:commit-written",
    "merge:branch-moved",
    "merge:noted",
    "merge:tried-kept",
    "merge:best-set",
)
PAUSE_SLEEP_S = 3600  # one nap of a paused process; it naps until it is killed


@dataclass(frozen=True)
class PausePoints:
    at: str = ""  # the point to pause at; "" never pauses
    marker: Path | None = None  # created on pausing

    def reached(self, point: str) -> None:
        """Pause here for good if this is the configured point; otherwise return at once."""
        if not self.at or point != self.at:
            return
        if self.marker is not None:
            self.marker.touch()
        log.warning("paused at fault point %s until killed (AR_FAULT_PAUSE_AT is set)", point)
        while True:
            time.sleep(PAUSE_SLEEP_S)


NO_PAUSES = PausePoints()
