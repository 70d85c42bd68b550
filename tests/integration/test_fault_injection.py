"""Fault injection with real processes: a worker killed with SIGKILL mid-training (its lease expires,
the next worker's sweep re-runs the proposal once, counted as an infrastructure attempt; never run by
two workers at once); Redis stopped and restarted with AOF persistence (proposals and queue intact);
the controller killed during submits (a retry with the same Idempotency-Key creates one proposal)
and between storing a proposal and enqueueing it (a sweep gives it exactly one job); the committer
killed at each step of a merge (the proposal is merged exactly once). The Docker daemon's faults are
in test_fault_dockerd.py."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from rq.job import JobStatus

from services import faults, queue
from services.committer.repo import GitResearchRepo
from services.models import Best, Decision, Proposal, RunResult, new_id
from services.patches import canonical_diff, content_hash
from services.settings import Settings
from services.states import State
from services.store import Store, connect, keys
from services.worker import recovery
from services.worker.build import build_worker
from services.worker.worker import Worker
from tests.support import REPO
from tests.support.fakes import FakeSandbox
from tests.support.live_server import ADMIN, REPO_PROGRAM, agent_token, seed, with_lr
from tests.support.net import free_port, wait_for
from tests.support.walk import walk

BASE = "FAKE_SCORE = 1.5\n"


def new_proposal(store: Store, train_py: str) -> Proposal:
    proposal = Proposal(
        id=new_id("p"), title="idea", agent="t", description="", base_commit="a" * 40, base_train_py=BASE,
        train_py=train_py, diff="", content_hash=new_id("h"), seeds=[42],
    )  # fmt: skip
    stored, _ = store.create(proposal)
    return stored


def start_worker(name: str, env: dict[str, str], log: Path) -> "subprocess.Popen[bytes]":
    with log.open("ab") as sink:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.fault_worker", name], cwd=REPO, env=env,
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip


def test_worker_killed_mid_training_is_rerun_once_by_the_next_worker(
    tmp_path: Path, redis_url: str, store: Store, redis_client: "redis.Redis[bytes]"
) -> None:
    """Kills: worker A (SIGKILL) while its run is in flight. Verifies: while A lives its lease is
    renewed and no sweep takes the proposal; after the kill the lease expires, worker B's start-up
    sweep re-queues it (attempt 1, reason in the history), B runs it to a score, no lease is left."""
    hold = tmp_path / "hold"
    hold.touch()
    proposal = new_proposal(store, f"FAKE_HOLD = {hold}\nFAKE_SCORE = 1.4\n")
    queue.enqueue_run(redis_client, proposal.id, 60)
    env = {**os.environ, "AR_REDIS_URL": redis_url, "AR_RUNS_DIR": str(tmp_path / "runs"),
           "AR_WORKER_LEASE_TTL_S": "1", "AR_INFRA_RETRIES": "2"}  # fmt: skip
    worker_a = start_worker("worker-a", env, tmp_path / "a.log")
    try:
        wait_for(lambda: redis_client.exists(keys.LEASE.of(proposal.id)), 30, "worker A's lease")
        assert store.get(proposal.id).state == State.RUNNING
        time.sleep(2.5)  # over two lease periods: renewed, so never orphaned while A lives
        assert recovery.orphans(redis_client) == []
        assert recovery.recover_orphans(redis_client, lambda _: pytest.fail("recovered a live run")) == []
    finally:
        worker_a.send_signal(signal.SIGKILL)
        worker_a.wait(10)
    hold.unlink()
    wait_for(lambda: recovery.orphans(redis_client) == [proposal.id], 5, "the dead worker's lease to expire")
    assert store.get(proposal.id).state == State.RUNNING  # nothing moved it yet: not lost, not re-run
    worker_b = start_worker("worker-b", env, tmp_path / "b.log")
    assert worker_b.wait(60) == 0, (tmp_path / "b.log").read_text(errors="replace")[-2000:]
    done = store.get(proposal.id)
    assert done.state == State.EVALUATING and done.attempts == 1
    assert [r.val_bpb for r in done.results] == [pytest.approx(1.4, abs=1e-3)]
    reasons = [e.reason for e in store.events(proposal.id)]
    assert any("stopped renewing its lease" in r and "retry 1 of 2" in r for r in reasons), reasons
    assert redis_client.scard(recovery.LEASED_SET) == 0
    assert queue.queue_depths(redis_client) == {queue.RUNS_QUEUE: 0, queue.COMMITS_QUEUE: 1}


@pytest.fixture
def in_process_worker(tmp_path: Path, store: Store, redis_client: "redis.Redis[bytes]") -> Worker:
    settings = Settings(runs_dir=tmp_path / "runs", infra_retries=1)
    return build_worker(settings, store=store, sandbox=FakeSandbox(), name="w")


def orphan(redis_client: "redis.Redis[bytes]", proposal_id: str) -> None:
    """What a worker killed mid-run leaves: the id in the leased set, its lease key expired."""
    redis_client.sadd(recovery.LEASED_SET, proposal_id)


def test_a_proposal_whose_workers_keep_dying_ends_infra_error(
    in_process_worker: Worker, store: Store, redis_client: "redis.Redis[bytes]"
) -> None:
    proposal = new_proposal(store, BASE)
    for attempt in (1, 2):
        store.transition(proposal.id, State.RUNNING, "a worker took it", expect={State.QUEUED})
        orphan(redis_client, proposal.id)
        assert recovery.recover_orphans(redis_client, in_process_worker.recover_orphan) == [proposal.id]
        assert store.get(proposal.id).attempts == attempt
    ended = store.get(proposal.id)
    assert ended.state == State.INFRA_ERROR and "infrastructure failed 2 times" in ended.reason
    assert "lease" in ended.reason


def test_an_orphan_whose_runs_were_finished_is_only_sent_for_a_decision(
    in_process_worker: Worker, store: Store, redis_client: "redis.Redis[bytes]"
) -> None:
    proposal = new_proposal(store, BASE)
    store.transition(proposal.id, State.RUNNING, "taken", expect={State.QUEUED})
    scored = RunResult(run_id="r1", proposal_id=proposal.id, seed=42, state=State.EVALUATING, val_bpb=1.4)
    walk(store, proposal.id, State.EVALUATING, "scored", results=[scored])
    orphan(redis_client, proposal.id)
    recovery.recover_orphans(redis_client, in_process_worker.recover_orphan)
    after = store.get(proposal.id)
    assert after.state == State.EVALUATING and after.attempts == 0 and len(after.results) == 1
    assert queue.queue_depths(redis_client) == {queue.RUNS_QUEUE: 0, queue.COMMITS_QUEUE: 1}


# ---------------------------------------------------------------------------------------------------
# Redis restart with persistence


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[tuple[list["subprocess.Popen[bytes]"], int]]:
    """A redis-server configured as compose.yaml runs it (--appendonly yes), restartable on one dir."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes", "--save", "",
            "--dir", str(tmp_path)]  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        client = connect(f"redis://127.0.0.1:{port}/0")
        wait_for(lambda: _answers(client), 10, "redis-server to answer")
        client.close()

    start()
    try:
        yield procs, port
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    del start


def _answers(client: "redis.Redis[bytes]") -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_redis_restart_with_aof_keeps_proposals_and_queue(
    persistent_redis: tuple[list["subprocess.Popen[bytes]"], int], tmp_path: Path
) -> None:
    """Kills: redis-server, by a clean SHUTDOWN (as `docker compose restart` does, SIGTERM) and
    restarts it on the same folder. Verifies: the proposals, their histories and the queued job."""
    procs, port = persistent_redis
    conn = connect(f"redis://127.0.0.1:{port}/0")
    store = Store(conn)
    proposals = [new_proposal(store, f"FAKE_SCORE = 1.{i}\n") for i in range(3)]
    for p in proposals:
        queue.enqueue_run(conn, p.id, 60)
    store.transition(proposals[0].id, State.RUNNING, "taken", expect={State.QUEUED})
    procs[0].send_signal(signal.SIGTERM)  # redis writes and fsyncs the AOF on SIGTERM
    procs[0].wait(10)
    conn.close()
    args = list(procs[0].args)  # type: ignore[arg-type]
    procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    conn = connect(f"redis://127.0.0.1:{port}/0")
    wait_for(lambda: _answers(conn), 10, "redis-server to come back")
    store = Store(conn)
    assert [store.get(p.id).state for p in proposals] == [State.RUNNING, State.QUEUED, State.QUEUED]
    assert [e.reason for e in store.events(proposals[0].id)][-1] == "taken"
    assert [job.args[0] for job in queue.runs_queue(conn).jobs] == [p.id for p in proposals]
    conn.close()


# ---------------------------------------------------------------------------------------------------
# The controller killed during a submit


def start_controller(
    redis_url: str, port: int, log: Path, extra_env: dict[str, str] | None = None
) -> "subprocess.Popen[bytes]":
    env = {**os.environ, "AR_REDIS_URL": redis_url, "AR_ADMIN_TOKEN": ADMIN, "AR_HOST": "127.0.0.1",
           "AR_PORT": str(port), "AR_PROGRAM_PATH": str(REPO_PROGRAM), **(extra_env or {})}  # fmt: skip
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.controller.main"], cwd=REPO, env=env, stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_for(lambda: _healthy(port), 30, "the controller to answer")
    return proc


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_controller_killed_during_submits_then_retried_creates_each_proposal_once(
    tmp_path: Path, redis_url: str, store: Store
) -> None:
    """Kills: the controller process (SIGKILL) 0-100 ms into each of six submits, each with its own
    Idempotency-Key. Verifies: after a restart, retrying every submit with its key answers 200/201
    and the six retries name six proposals, each stored exactly once (a kill after the store write
    is answered by the replay, a kill before it by a fresh create)."""
    seed(store)
    headers = {"Authorization": f"Bearer {agent_token(store)}"}
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/proposals"

    def body(i: int) -> dict[str, str]:
        return {"title": f"lr {i}", "agent": "a", "train_py": with_lr(f"0.00{i + 2}")}

    for i, delay_s in enumerate((0.0, 0.005, 0.01, 0.02, 0.05, 0.1)):
        controller = start_controller(redis_url, port, tmp_path / "controller.log")
        sender = threading.Thread(
            target=_post_ignoring_errors, args=(url, body(i), {**headers, "Idempotency-Key": f"k{i}"})
        )
        sender.start()
        time.sleep(delay_s)
        controller.send_signal(signal.SIGKILL)
        controller.wait(10)
        sender.join(10)
    controller = start_controller(redis_url, port, tmp_path / "controller.log")
    try:
        answers = [
            httpx.post(url, json=body(i), headers={**headers, "Idempotency-Key": f"k{i}"}, timeout=10)
            for i in range(6)
        ]
    finally:
        controller.send_signal(signal.SIGKILL)
        controller.wait(10)
    assert all(a.status_code in (200, 201) for a in answers), [a.text for a in answers]
    ids = [a.json()["id"] for a in answers]
    assert len(set(ids)) == 6
    stored, total = store.page(limit=100)
    assert total == 6 and sorted(p.id for p in stored) == sorted(ids)


def _post_ignoring_errors(url: str, body: dict[str, str], headers: dict[str, str]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url, json=body, headers=headers, timeout=5)


def test_controller_killed_between_storing_and_enqueueing_runs_the_proposal_once(
    tmp_path: Path, redis_url: str, store: Store, redis_client: "redis.Redis[bytes]"
) -> None:
    """Kills: the controller process (SIGKILL) paused after storing a submitted proposal and before
    enqueueing its run job (AR_FAULT_PAUSE_AT=submit:stored). Verifies: the proposal is `queued`
    with no job; four workers' sweeps at once plus the client's retry (same Idempotency-Key) on a
    restarted controller make exactly one job, `run-<id>-0`; a worker process then runs it once
    (one `running` event, one scored result, nothing left queued)."""
    seed(store)
    headers = {"Authorization": f"Bearer {agent_token(store)}", "Idempotency-Key": "k"}
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/proposals"
    body = {"title": "lr", "agent": "a", "train_py": with_lr("0.002")}
    marker = tmp_path / "paused"
    pause = {"AR_FAULT_PAUSE_AT": "submit:stored", "AR_FAULT_PAUSE_MARKER": str(marker)}
    controller = start_controller(redis_url, port, tmp_path / "controller.log", pause)
    sender = threading.Thread(target=_post_ignoring_errors, args=(url, body, headers))
    sender.start()
    try:
        wait_for(marker.exists, 30, "the controller to pause between storing and enqueueing")
    finally:
        controller.send_signal(signal.SIGKILL)
        controller.wait(10)
        sender.join(10)
    [proposal], total = store.page()
    assert total == 1 and proposal.state == State.QUEUED
    assert queue.queue_depths(redis_client)[queue.RUNS_QUEUE] == 0  # stored, never enqueued
    settings = Settings(runs_dir=tmp_path / "runs")
    sweepers = [build_worker(settings, store=store, sandbox=FakeSandbox(), name=f"w{i}") for i in range(4)]
    start = threading.Barrier(len(sweepers))
    swept: list[list[str]] = []

    def sweep(worker: Worker) -> None:
        start.wait()
        swept.append(worker.requeue_lost())

    threads = [threading.Thread(target=sweep, args=(w,)) for w in sweepers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(swept) == [[], [], [], [proposal.id]]
    controller = start_controller(redis_url, port, tmp_path / "controller.log")
    try:
        retried = httpx.post(url, json=body, headers=headers, timeout=10)
    finally:
        controller.send_signal(signal.SIGKILL)
        controller.wait(10)
    assert retried.status_code == 200 and retried.json()["id"] == proposal.id, retried.text
    assert [job.id for job in queue.runs_queue(redis_client).jobs] == [f"run-{proposal.id}-0"]
    env = {**os.environ, "AR_REDIS_URL": redis_url, "AR_RUNS_DIR": str(tmp_path / "runs")}
    worker = start_worker("worker-c", env, tmp_path / "c.log")
    assert worker.wait(60) == 0, (tmp_path / "c.log").read_text(errors="replace")[-2000:]
    done = store.get(proposal.id)
    assert done.state == State.EVALUATING and len(done.results) == 1
    assert [e.state for e in store.events(proposal.id)] == [State.QUEUED, State.RUNNING, State.EVALUATING]
    assert queue.queue_depths(redis_client) == {queue.RUNS_QUEUE: 0, queue.COMMITS_QUEUE: 1}
    print(
        f"killed: the controller between store and enqueue; verified: one job run-{proposal.id}-0, run once"
    )


# ---------------------------------------------------------------------------------------------------
# The committer killed mid-merge, as a real process


COMMITTER_BASELINE = "import os\nFAKE_SCORE = 1.5\n"


def start_committer(env: dict[str, str], log: Path) -> "subprocess.Popen[bytes]":
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "services.committer.main"], cwd=REPO, env=env, stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def accepted(store: Store, head: str, base_py: str, i: int) -> Proposal:
    """A proposal as the committer finds it once its confirmation runs won: `accepted`, with the decision."""
    train_py = base_py + f"IDEA_{i} = {i}\n"
    proposal = Proposal(
        id=new_id("p"), title=f"idea {i}", agent="t", description="a test idea", base_commit=head,
        base_train_py=base_py, train_py=train_py, diff=canonical_diff(base_py, train_py),
        content_hash=content_hash(head, train_py), seeds=[42],
    )  # fmt: skip
    store.create(proposal)
    decision = Decision(
        accepted=True, rule="paired-z/v1", stage="confirm", candidate_bpb=1.4 - i / 100, best_bpb=1.5,
        best_commit=head, delta_bpb=-0.1, reason="confirmed (test)",
    )  # fmt: skip
    return walk(store, proposal.id, State.ACCEPTED, "confirmed (test)", decision=decision)


def test_committer_sigkilled_at_each_step_of_a_merge_merges_exactly_once(
    tmp_path: Path, redis_url: str, store: Store
) -> None:
    """Kills: the committer process (`python -m services.committer.main`, SIGKILL) paused at each
    point of a merge in turn (services/faults.py: commit written, branch moved, note written, tried
    ref kept, best set), then restarts it at once. Verifies, for each: right after the kill the
    branch is consistent (fsck clean; head is the old head, or the one new commit when the kill came
    after update-ref) and the proposal's merged ref, written before the branch moves, points at its
    commit (off the branch when the kill came before update-ref); after the restart the proposal is
    `merged` exactly once (one commit on the branch with its Proposal-Id, the head, parent the old
    head, its merged ref), its note and tried ref (with note) exist, the store's best is the commit.
    The restart right after a SIGKILL also checks that the
    committer's RQ worker name is per process (RQ refuses a name a killed process still holds)."""
    repo_dir = tmp_path / "repo"
    baseline = tmp_path / "baseline_train.py"
    baseline.write_text(COMMITTER_BASELINE)
    repo = GitResearchRepo(repo_dir, "research", Settings().repo.git_author)
    root = repo.ensure(COMMITTER_BASELINE)
    repo.close()
    store.add_commit(root, COMMITTER_BASELINE)
    store.set_best(Best(commit=root, val_bpb=1.5))  # scored: the committer asks for no baseline run
    env = {**os.environ, "AR_REDIS_URL": redis_url, "AR_REPO_DIR": str(repo_dir),
           "AR_BASELINE_TRAIN_PY": str(baseline)}  # fmt: skip
    log = tmp_path / "committer.log"
    base_py = COMMITTER_BASELINE
    for i, point in enumerate(p for p in faults.PAUSE_POINTS if p.startswith("merge:")):
        head = git(repo_dir, "rev-parse", "research").strip()
        proposal = accepted(store, head, base_py, i)
        marker = tmp_path / f"paused-{i}"
        paused = start_committer(
            {**env, "AR_FAULT_PAUSE_AT": point, "AR_FAULT_PAUSE_MARKER": str(marker)}, log
        )
        try:
            wait_for(
                lambda m=marker, c=paused: m.exists() or c.poll() is not None, 30, f"it to reach {point}"
            )
            assert paused.poll() is None, log.read_text(errors="replace")[-3000:]
        finally:
            paused.send_signal(signal.SIGKILL)
            paused.wait(10)
        git(repo_dir, "fsck", "--strict", "--no-dangling")  # raises on any error
        after_kill = git(repo_dir, "rev-parse", "research").strip()
        recorded = git(repo_dir, "rev-parse", f"refs/autoresearch/merged/{proposal.id}").strip()
        if point == "merge:commit-written":  # recorded before publishing; not on the branch, so stale
            assert after_kill == head and recorded != head, point
            assert git(repo_dir, "rev-parse", f"{recorded}^").strip() == head, point
        else:
            assert git(repo_dir, "rev-parse", f"{after_kill}^").strip() == head, point
            assert recorded == after_kill, point
            assert f"Proposal-Id: {proposal.id}" in git(repo_dir, "log", "-1", "--format=%B", after_kill)
        assert store.get(proposal.id).state == State.ACCEPTED, point
        # Restart in the next second: a commit made in the same second as the killed one, with the same
        # parent, tree and message, would have its SHA (the tried ref's commit would be the branch's).
        time.sleep(1.01 - time.time() % 1)
        restarted = start_committer(env, log)
        try:
            wait_for(lambda p=proposal.id: store.get(p).state == State.MERGED, 30, f"the merge after {point}")
        finally:
            restarted.send_signal(signal.SIGKILL)
            restarted.wait(10)
        done = store.get(proposal.id)
        on_branch = git(
            repo_dir, "log", "--format=%H", f"--grep=Proposal-Id: {proposal.id}", "research"
        ).split()
        assert on_branch == [done.merged_commit] == [git(repo_dir, "rev-parse", "research").strip()], point
        assert git(repo_dir, "rev-parse", f"{done.merged_commit}^").strip() == head, point
        assert (
            git(repo_dir, "rev-parse", f"refs/autoresearch/merged/{proposal.id}").strip()
            == done.merged_commit
        )
        assert git(repo_dir, "rev-list", "--count", "research").strip() == str(i + 2), point
        assert (
            json.loads(git(repo_dir, "notes", "show", str(done.merged_commit)))["proposal_id"] == proposal.id
        )
        tried = git(repo_dir, "rev-parse", f"refs/autoresearch/tried/{proposal.id}").strip()
        assert tried == done.tried_ref and json.loads(git(repo_dir, "notes", "show", tried))["proposal_id"]
        git(repo_dir, "fsck", "--strict", "--no-dangling")
        best = store.get_best()
        assert best is not None and best.commit == done.merged_commit, point
        base_py = done.train_py
        print(
            f"killed: the committer (SIGKILL) at {point}; verified: merged once as {done.merged_commit[:10]}"
        )


def test_a_queued_proposal_whose_run_job_died_gets_a_new_one(
    in_process_worker: Worker, store: Store, redis_client: "redis.Redis[bytes]"
) -> None:
    """Kills: (simulated) a worker between taking a proposal's job and starting its run: RQ ends
    such a job `failed` once it gives up on it, and the proposal stays `queued`. Verifies: the sweep
    replaces the dead job (same id, queued again, once) and a second sweep leaves it alone."""
    proposal = new_proposal(store, BASE)
    assert queue.enqueue_run(redis_client, proposal.id, 60)
    runs = queue.runs_queue(redis_client)
    [job] = runs.jobs
    runs.remove(job)
    job.set_status(JobStatus.FAILED)
    assert in_process_worker.requeue_lost() == [proposal.id]
    assert [(j.id, j.get_status()) for j in runs.jobs] == [(f"run-{proposal.id}-0", JobStatus.QUEUED)]
    assert in_process_worker.requeue_lost() == []
    assert len(runs) == 1


def test_a_confirming_proposal_whose_paired_runs_were_never_enqueued_gets_one_job(
    in_process_worker: Worker, store: Store, redis_client: "redis.Redis[bytes]"
) -> None:
    """Kills: (simulated) the committer between moving a proposal to `confirming` and enqueueing its
    paired runs. Verifies: the sweep enqueues one run job for the new spell (a second sweep adds
    none), and leaves alone a confirming proposal whose paired runs are all done (it waits for the
    committer's verdict, not for a worker)."""
    waiting = new_proposal(store, BASE)
    walk(store, waiting.id, State.CONFIRMING, "screened: confirm", confirm_seeds=[7, 8])
    done = new_proposal(store, BASE + "\n# other\n")
    finished = in_process_worker.run_once(done, 9, announce=False, subject="best")
    walk(
        store, done.id, State.CONFIRMING, "screened: confirm", confirm_seeds=[9], baseline_results=[finished]
    )
    assert in_process_worker.requeue_lost() == [waiting.id]
    runs = queue.runs_queue(redis_client)
    transitions = store.get(waiting.id).transitions
    assert [j.id for j in runs.jobs] == [queue.run_job_id(waiting.id, transitions)]
    assert in_process_worker.requeue_lost() == []
    assert len(runs) == 1
