"""Many workers, many hosts: two worker groups that share only Redis process one `runs` queue while the
committer (in this process, real git) decides and merges. Each group is its own Python process
(tests/support/worker_group.py: an RQ SimpleWorker with the fake sandbox) with its own run folder.

`netns`: each group runs in its own network namespace, reaching Redis over a veth pair; Redis listens
only on the host sides of the pairs, so the groups share no network but that and no loopback. Needs
root and `ip netns`; skipped with the reason otherwise. `host`: the same two processes on this host's
loopback, for machines where namespaces are not allowed. The file system is shared by the processes
in both variants (namespaces do not separate it); no group is told about the other's folder, and the
proposals carry everything a run needs.
"""

import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from rq import SimpleWorker

from services import queue
from services.committer import jobs as committer_jobs
from services.committer.build import build_committer, research_repo
from services.committer.repo import GitResearchRepo
from services.models import Proposal, new_id
from services.patches import build_candidate
from services.settings import Settings
from services.states import TERMINAL, State
from services.store import Store, connect
from tests.support.net import free_port, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
FILLER = "".join(f"LAYER_{i} = {i}\n" for i in range(96))  # far-apart lines: edits rebase cleanly
BASELINE = f"import os\nFAKE_SCORE = 1.5\n{FILLER}"
GROUPS = ("a", "b")
DEADLINE_S = 50  # the whole exchange; it takes ~10 s here


@dataclass(frozen=True)
class Group:
    name: str
    runs_dir: Path
    log: Path
    prefix: tuple[str, ...]  # how to enter its network namespace (empty: the host's)
    redis_url: str = ""


@dataclass(frozen=True)
class Network:
    redis_url: str
    groups: tuple[Group, ...]


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def _start_redis(binds: list[str], folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", *binds, "--protected-mode", "no", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return proc, f"redis://{binds[0]}:{port}/0"


@pytest.fixture
def netns_network(tmp_path: Path) -> Iterator[Network]:
    """Two namespaces, each joined to the host by a veth pair; a private Redis on the host sides."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (`ip netns`)")
    tag = secrets.token_hex(3)
    subnet = 16 + secrets.randbelow(200)
    made: list[tuple[str, str]] = []
    groups, host_ips = [], []
    proc = None
    try:
        for i, name in enumerate(GROUPS):
            ns, host_if, ns_if = f"ar-{tag}-{name}", f"arh{tag}{i}", f"arn{tag}{i}"
            host_ip, ns_ip = f"10.{subnet}.{i}.1", f"10.{subnet}.{i}.2"
            try:
                _run("ip", "netns", "add", ns)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"`ip netns add` is not allowed here: {exc.stderr.strip()}")
            made.append((ns, host_if))
            _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            _run("ip", "link", "set", ns_if, "netns", ns)
            _run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
            _run("ip", "link", "set", host_if, "up")
            _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
            _run("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
            host_ips.append(host_ip)
            groups.append(_group(tmp_path, name, ("ip", "netns", "exec", ns), ""))
        proc, url = _start_redis(host_ips, tmp_path)
        groups = [  # each group reaches Redis through its own pair
            Group(g.name, g.runs_dir, g.log, g.prefix, url.replace(host_ips[0], ip))
            for g, ip in zip(groups, host_ips, strict=True)
        ]
        _wait_for_redis(url)
        yield Network(url, tuple(groups))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        for ns, host_if in made:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
            subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)


@pytest.fixture
def host_network(tmp_path: Path, redis_url: str, redis_client: "redis.Redis[bytes]") -> Network:
    groups = tuple(_group(tmp_path, name, (), redis_url) for name in GROUPS)
    return Network(redis_url, groups)


def _group(tmp_path: Path, name: str, prefix: tuple[str, ...], redis_url: str) -> Group:
    runs_dir = tmp_path / f"group-{name}" / "runs"
    runs_dir.mkdir(parents=True)
    return Group(name, runs_dir, tmp_path / f"group-{name}" / "trained.log", prefix, redis_url)


def _wait_for_redis(url: str) -> None:
    client = connect(url)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(up, 10, "redis-server to answer")
    finally:
        client.close()


# ---------------------------------------------------------------------------- the exchange


def _start_group(group: Group) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*group.prefix, sys.executable, "-m", "tests.support.worker_group", "--redis-url", group.redis_url,
         "--runs-dir", str(group.runs_dir), "--log", str(group.log), "--name", f"group-{group.name}"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _ideas() -> list[tuple[str, str]]:
    """(title, train.py): two real improvements on lines far apart (both can land, the second after a
    re-queue), eight neutral edits, one worse score, one crash."""
    ideas = [
        ("lower the score", BASELINE.replace("FAKE_SCORE = 1.5", "FAKE_SCORE = 1.45")),
        ("an independent gain", BASELINE.replace("LAYER_90 = 90\n", "FAKE_DELTA = -0.03\n")),
        ("a worse score", BASELINE.replace("FAKE_SCORE = 1.5", "FAKE_SCORE = 1.6")),
        ("a crash", BASELINE.replace("LAYER_80 = 80\n", "FAKE_EXIT = 1\n")),
    ]
    ideas += [
        (f"neutral {k}", BASELINE.replace(f"LAYER_{10 * k} = ", f"LAYER_{10 * k} = 1 + ")) for k in range(8)
    ]
    return ideas


def _submit(store: Store, conn: "redis.Redis[bytes]", settings: Settings, title: str, train_py: str) -> str:
    best = store.get_best()
    assert best is not None
    base_py = store.commit_train_py(best.commit) or ""
    candidate = build_candidate(
        base_py, base_commit=best.commit, train_py=train_py, diff=None, max_bytes=10**6
    )
    proposal = Proposal(
        id=new_id("p"), title=title, agent=f"agent-{title.split()[0]}", base_commit=best.commit,
        base_train_py=base_py, train_py=candidate.train_py, diff=candidate.diff,
        content_hash=candidate.content_hash, seeds=[settings.runs.first_seed],
    )  # fmt: skip
    stored, _ = store.create(proposal)
    queue.enqueue_run(conn, stored.id, 60)
    return stored.id


def _exchange(network: Network, tmp_path: Path) -> None:
    conn = connect(network.redis_url)
    conn.flushdb()
    settings = Settings(
        redis_url=network.redis_url, runs_dir=tmp_path / "committer-runs", repo_dir=tmp_path / "repo",
        confirm_runs=2,
    )  # fmt: skip
    store = Store(conn)
    repo = research_repo(settings)
    committer = build_committer(settings, store=store, repo=repo)
    committer_jobs.configure(committer)
    workers = [_start_group(group) for group in network.groups]
    try:
        committer.bootstrap(BASELINE)
        ids = [_submit(store, conn, settings, title, text) for title, text in _ideas()]
        _commit_until_done(conn, store, ids)
        _check(network, store, repo, ids)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(5)
        committer_jobs.configure(None)
        repo.close()
        conn.flushdb()
        conn.close()


def _commit_until_done(conn: "redis.Redis[bytes]", store: Store, ids: list[str]) -> None:
    """Be the committer: work the `commits` queue until every proposal is in a terminal state."""
    deadline = time.monotonic() + DEADLINE_S
    commits = queue.commits_queue(conn)
    while time.monotonic() < deadline:
        SimpleWorker([commits], connection=conn).work(burst=True, logging_level="WARNING")
        if all(store.proposal_state(pid) in TERMINAL for pid in ids):
            return
        time.sleep(0.05)
    states = {pid: store.proposal_state(pid) for pid in ids}
    raise AssertionError(f"not all proposals finished within {DEADLINE_S} s: {states}")


def _check(network: Network, store: Store, repo: GitResearchRepo, ids: list[str]) -> None:
    proposals = [store.get(pid) for pid in ids]
    trained = {
        g.name: [tuple(line.split("\t")) for line in g.log.read_text().splitlines()] for g in network.groups
    }
    # both groups did work, and nothing was trained twice (same proposal, seed and code)
    assert all(trained.values()), {name: len(lines) for name, lines in trained.items()}
    everything = [run for lines in trained.values() for run in lines]
    repeats = [run for run, count in Counter(everything).items() if count > 1]
    assert not repeats, repeats
    # nothing lost: every stored run was trained by one of the groups
    trained_pairs = {(pid, int(seed)) for pid, seed, _ in everything}
    for p in proposals:
        for result in [*p.results, *p.baseline_results]:
            assert (p.id, result.seed) in trained_pairs, (p.id, result.seed)
    # each group kept to its own folder
    for group in network.groups:
        assert any(group.runs_dir.iterdir()), group.name
    # the branch is one chain; each merge's parent is the head before it; one commit per merge
    lineage = store.lineage()
    chain = repo.history()
    assert [e.commit for e in lineage] == [c.sha for c in chain]
    for before, after in itertools.pairwise(lineage):
        assert after.parent == before.commit
    parents = subprocess.run(
        ["git", "-C", str(repo.path), "rev-list", "--parents", repo.branch],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert all(len(line.split()) <= 2 for line in parents)  # no merge commits, no forks
    merged = [p for p in proposals if p.state == State.MERGED]
    assert sorted(p.merged_commit or "" for p in merged) == sorted(e.commit for e in lineage[1:])
    assert len({e.proposal_id for e in lineage[1:]}) == len(merged) >= 2
    by_title = {p.title: p for p in proposals}
    assert by_title["a crash"].state == State.CRASHED
    assert by_title["a worse score"].state == State.REJECTED


def test_two_worker_groups_in_separate_network_namespaces(netns_network: Network, tmp_path: Path) -> None:
    _exchange(netns_network, tmp_path)


def test_two_worker_groups_on_one_host(host_network: Network, tmp_path: Path) -> None:
    _exchange(host_network, tmp_path)
