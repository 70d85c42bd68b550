"""Every error the service raises on purpose.

    ServiceError
    ├── ProposalError            the caller's input is wrong; mapped to a 4xx, nothing is stored
    │   ├── InvalidPatch         not UTF-8, too large, not a diff, touches other files, does not apply
    │   ├── InvalidPython        the resulting train.py does not parse
    │   ├── InvalidText          a title, description or message holds a control or format character
    │   ├── InvalidProgram       a program.md text that cannot be stored (empty, too large, not text)
    │   ├── UnknownBase          the base commit is not on the research branch
    │   ├── UnknownProgramVersion  a submit names a program.md version that does not exist
    │   ├── IdempotencyKeyReused an Idempotency-Key sent again with another request
    │   ├── NotFound             no proposal / run / commit with that id
    │   └── Conflict             clashes with the current state (cancelling a finished run)
    │       └── IllegalTransition  a state change the transition table (services/states.py) forbids
    ├── AuthError                missing or wrong bearer token (401) or role (403)
    ├── QuotaExceeded            a token's submit quota is used up (429, with Retry-After)
    ├── InfraError               the machine broke, not the idea: retried, then `infra_error`
    │   ├── SandboxUnavailable   Docker daemon down, image missing, GPU lost
    │   ├── RepoError            the research repo could not be read or written (git failed)
    │   ├── NotReady             no best commit yet: the research repo is not initialised
    │   ├── StoreUnavailable     Redis unreachable
    │   ├── StoreNeedsMigration  the store was written by an older version; the message names the
    │   │                        command that migrates it
    │   └── WorkerNameTaken      another live worker holds this worker's name (AR_WORKER_NAME)
    ├── RunFailed                the proposal's own code failed: crashed, timed_out, oom, voided
    │   └── CollectError         its outputs cannot be taken (missing, too large, malformed): crashed
    └── HeadMoved                the branch moved under the committer; it decides again on the new head

Foreign exceptions (docker, redis, git) are translated into these at the one module that owns the
system, with `raise ... from exc`.
"""

from services.states import State


class ServiceError(Exception):
    """Root of the service's errors."""


class ProposalError(ServiceError):
    """The caller's input cannot be accepted; the message says what to fix."""


class InvalidPatch(ProposalError):
    pass


class InvalidPython(ProposalError):
    pass


class InvalidText(ProposalError):
    """Free text (a title, a description, a message) holds a character that is not stored."""


class UnknownBase(ProposalError):
    pass


class InvalidProgram(ProposalError):
    """A new program.md text that cannot be stored: empty, too large, not valid UTF-8 text."""


class UnknownProgramVersion(ProposalError):
    """A submit names a program.md version that does not exist."""


class IdempotencyKeyReused(ProposalError):
    """A submit repeats an Idempotency-Key of an earlier submit but not its body."""


class NotFound(ProposalError):
    pass


class Conflict(ProposalError):
    """The request is well formed but clashes with the current state (e.g. cancelling a finished run)."""


class IllegalTransition(Conflict):
    """A state change that the transition table (services.states.TRANSITIONS) does not allow."""


class AuthError(ServiceError):
    def __init__(self, message: str, *, forbidden: bool = False) -> None:
        super().__init__(message)
        self.forbidden = forbidden


class QuotaExceeded(ServiceError):
    """A token submitted too much; `retry_after_s` says when trying again can succeed."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InfraError(ServiceError):
    """Infrastructure failed; never counts against the proposal."""


class SandboxUnavailable(InfraError):
    pass


class StoreUnavailable(InfraError):
    pass


class RepoError(InfraError):
    """The research repository could not be read or written."""


class NotReady(InfraError):
    """The service cannot take work yet: no best commit (the research repo is not initialised)."""


class RunFailed(ServiceError):
    """The proposal's code failed in a way that is its own fault; carries the final state."""

    def __init__(self, state: State, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


class WorkerNameTaken(InfraError):
    """Another live worker process holds this worker's name. Names label containers, and a worker
    removes the containers of its name it did not start (`remove_strays`), so two live workers may
    never share one."""


class StoreNeedsMigration(InfraError):
    """The Redis store was written by an older version of the service; the message names the command
    that migrates it. Nothing is read or written until then."""


class CollectError(RunFailed):
    """A run's output cannot be taken: the proposal's fault, so the run ends `crashed`."""

    def __init__(self, reason: str) -> None:
        super().__init__(State.CRASHED, reason)


class HeadMoved(ServiceError):
    """The branch head is not the commit the caller built on (someone committed meanwhile)."""
