"""Recovery: what dead workers and processes leave behind is found and run again. Two things:
the worker lease, and the sweep every worker makes at start and then every lease period (`sweep`):
proposals of workers that died mid-run (`recover_orphans`, handing each to
`Worker.recover_orphan`), then proposals waiting for a run job that have none (`requeue_lost`).

While a worker runs a proposal it holds a lease: `ar:lease:<id>` (the worker's name) with a TTL of
`worker_lease_ttl_s`, refreshed by a thread every third of that, and the id in the set `ar:leased`.
A worker killed mid-run (kill -9, a lost machine) stops refreshing; its key expires and the id is
left in the set without a key. `recover_orphans` (every worker runs it at start and then every
`worker_lease_ttl_s`) finds such ids and hands each to the worker's infrastructure-failure path: run
again (screening from scratch, or the confirmation runs still missing) or `infra_error` after
`infra_retries`. A proposal is so never lost, and never re-queued while its lease is alive, so two
workers never run it at once (a dead worker's container is stopped by its own in-container backstop
at the deadline, and removed by `remove_strays` when that worker starts again).

A worker's name is held the same way (`claim_name`): `ar:worker-name:<name>`, set only if free and
refreshed while the process lives, so a second live worker with the same name (two CPU workers on
one host, say) refuses to start instead of removing the first one's containers as strays; a worker
restarting after a crash waits for its old claim to expire.

Order matters: the key is set before the id joins the set, and the id leaves the set before the key
is deleted, so a sweep never sees a live run as orphaned. `SREM` decides which sweeper recovers it.
"""

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from services import queue
from services.errors import InfraError, WorkerNameTaken
from services.settings import Settings
from services.states import State
from services.store import Store, keys

log = logging.getLogger(__name__)

LEASED_SET = keys.LEASED.of()
REFRESHES_PER_TTL = 3  # a lease survives two missed refreshes
SWEEP_MAX_QUEUED = 10_000  # queued proposals one sweep looks at (per-token quotas keep far fewer)


@contextmanager
def held(conn: "redis.Redis[bytes]", proposal_id: str, owner: str, ttl_s: int) -> Iterator[None]:
    """Hold the proposal's lease for the duration of the block."""
    key = keys.LEASE.of(proposal_id)
    conn.set(key, owner, ex=ttl_s)
    conn.sadd(LEASED_SET, proposal_id)
    stop = threading.Event()
    refresher = threading.Thread(
        target=_refresh, args=(conn, key, owner, ttl_s, stop), name=f"lease-{proposal_id}", daemon=True
    )
    refresher.start()
    try:
        yield
    finally:
        stop.set()
        refresher.join()
        if conn.get(key) in (owner.encode(), None):  # not a lease another worker took since
            conn.srem(LEASED_SET, proposal_id)
            conn.delete(key)


def claim_name(
    conn: "redis.Redis[bytes]", name: str, ttl_s: int, wait_s: float | None = None
) -> threading.Event:
    """Hold the worker name `name` for as long as this process lives (a refresher thread; set the
    returned event to let go). A claim another process holds is waited for up to `wait_s` (default:
    one TTL, what a crashed worker's claim needs to expire), then refused with `WorkerNameTaken`."""
    key = keys.WORKER_NAME.of(name)
    me = f"{socket.gethostname()} pid {os.getpid()} ({uuid.uuid4().hex[:8]})"
    deadline = time.monotonic() + (ttl_s + 1 if wait_s is None else wait_s)
    while not conn.set(key, me, nx=True, ex=ttl_s):
        if time.monotonic() >= deadline:
            holder = (conn.get(key) or b"?").decode(errors="replace")
            raise WorkerNameTaken(
                f"the worker name {name!r} is held by a live worker ({holder}); give each worker on a host "
                "its own AR_WORKER_NAME"
            )
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    stop = threading.Event()
    threading.Thread(
        target=_refresh, args=(conn, key, me, ttl_s, stop), name=f"worker-name-{name}", daemon=True
    ).start()
    return stop


def _refresh(conn: "redis.Redis[bytes]", key: str, owner: str, ttl_s: int, stop: threading.Event) -> None:
    while not stop.wait(ttl_s / REFRESHES_PER_TTL):
        try:
            conn.set(key, owner, ex=ttl_s)
        except redis.RedisError:  # Redis away for a moment: the next refresh may succeed
            log.warning("could not refresh the lease %s", key, exc_info=True)


def orphans(conn: "redis.Redis[bytes]") -> list[str]:
    """Ids of proposals whose worker took a lease and stopped refreshing it."""
    ids = sorted(raw.decode() for raw in conn.smembers(LEASED_SET))
    return [i for i in ids if not conn.exists(keys.LEASE.of(i))]


def recover_orphans(conn: "redis.Redis[bytes]", recover: Callable[[str], object]) -> list[str]:
    """Call `recover(proposal_id)` once for each orphan this sweep claims; return their ids."""
    claimed = [i for i in orphans(conn) if conn.srem(LEASED_SET, i)]
    for proposal_id in claimed:
        log.warning("lease expired: its worker died; recovering", extra={"proposal_id": proposal_id})
        recover(proposal_id)
    return claimed


def sweep(
    conn: "redis.Redis[bytes]", store: Store, settings: Settings, recover: Callable[[str], object]
) -> None:
    """What every worker does at start and then every lease period: recover the proposals of
    workers that died mid-run, give a run job to queued proposals that have none, and age the run
    log tails of proposals finished longer ago than AR_RUN_LOG_RETENTION_S (Store.age_run_logs)."""
    recover_orphans(conn, recover)
    requeue_lost(conn, store, settings)
    aged = store.age_run_logs(settings.runs.run_log_retention_s)
    if aged:
        log.info("aged the run log tails of %d finished proposal(s)", aged)


def requeue_lost(conn: "redis.Redis[bytes]", store: Store, settings: Settings) -> list[str]:
    """Enqueue the run job of each queued proposal, or confirming one with paired runs to go, whose
    job is missing (the controller or the committer died between storing the state and enqueueing)
    or dead (queue.ensure_run). Job ids
    name the spell and are enqueued only if new, so however many workers sweep at once, and
    whatever the process that stored the proposal does meanwhile, each spell gets one job."""
    requeued = []
    queued, _ = store.page(State.QUEUED, limit=SWEEP_MAX_QUEUED)
    confirming, _ = store.page(State.CONFIRMING, limit=SWEEP_MAX_QUEUED)
    for proposal in [*queued, *confirming]:
        if proposal.state == State.CONFIRMING:
            pending = len(proposal.confirm_seeds) - len(proposal.baseline_results)
            if pending <= 0:  # its paired runs are done: the committer's turn, not a worker's
                continue
            budget_s = 2 * pending * settings.runs.run_budget_s
        else:
            budget_s = len(proposal.seeds) * settings.runs.run_budget_s
        if queue.ensure_run(conn, proposal.id, budget_s, proposal.transitions):
            log.warning(
                "%s without a run job: enqueued it",
                proposal.state.value,
                extra={"proposal_id": proposal.id},
            )
            requeued.append(proposal.id)
    return requeued


def sweep_forever(sweep: Callable[[], object], every_s: float) -> threading.Thread:
    """Run `sweep()` (the worker's: `recover_orphans`, then queued proposals without a run job)
    every `every_s` seconds on a daemon thread."""

    def loop() -> None:
        while True:
            try:
                sweep()
            except (redis.RedisError, InfraError):
                log.warning("sweep failed; trying again", exc_info=True)
            time.sleep(every_s)

    thread = threading.Thread(target=loop, name="lease-sweep", daemon=True)
    thread.start()
    return thread
