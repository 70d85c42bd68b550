"""How a worker is put together, in one place: the worker's main, the tests and the benchmarks all
build it here, so that what runs in production is what they exercise."""

import socket

from services.settings import Settings
from services.store import Store, connect
from services.worker.docker_sandbox import DockerSandbox
from services.worker.sandbox import Sandbox
from services.worker.worker import Worker


def worker_name(settings: Settings) -> str:
    """AR_WORKER_NAME, or the host's name with the GPU's index when the worker owns one (one worker
    per GPU)."""
    if settings.runs.worker_name:
        return settings.runs.worker_name
    host = socket.gethostname()
    return f"{host}-gpu{settings.sandbox.gpu_id}" if settings.sandbox.gpu_mode != "none" else host


def build_sandbox(settings: Settings, store: Store, owner: str) -> DockerSandbox:
    """The Docker sandbox as a worker runs it: its containers labelled with the worker's name, live
    logs into the store."""
    return DockerSandbox(settings.sandbox, owner=owner, log_sink=store.append_live_log)


def build_worker(
    settings: Settings, *, store: Store | None = None, sandbox: Sandbox | None = None, name: str | None = None
) -> Worker:
    """A worker from its settings. A store (and its Redis connection) and a sandbox may be given, as
    tests do; otherwise they are made from the settings."""
    store = store if store is not None else Store(connect(settings.redis_url))
    name = name if name is not None else worker_name(settings)
    sandbox = sandbox if sandbox is not None else build_sandbox(settings, store, name)
    return Worker(settings=settings, store=store, sandbox=sandbox, conn=store.r, name=name)
