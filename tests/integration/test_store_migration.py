"""A store written by the service before layout 2 (tests/fixtures/store_v1.rdb, made by
tests/fixtures/make_store_v1.py at commit 45c9010) is refused with a message naming the migration
command; the command then brings it to the current layout without losing a record."""

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.errors import StoreNeedsMigration
from services.models import Proposal
from services.states import State
from services.store import MIGRATE_COMMAND, SCHEMA_VERSION, Store, connect, stats
from tests.support.net import free_port, wait_for

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store_v1.rdb"


@pytest.fixture
def old_store(tmp_path: Path) -> Iterator[tuple[Store, str]]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    shutil.copy(FIXTURE, tmp_path / "dump.rdb")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--dbfilename", "dump.rdb"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = connect(url)

    def up() -> bool:
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.BusyLoadingError):
            return False

    try:
        wait_for(up, 10, "redis-server to load the fixture")
        yield Store(client), url
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def old_records(store: Store) -> dict[str, Proposal]:
    """Every proposal as layout 1 stored it (plain JSON)."""
    ids = [i.decode() for i in store.r.zrange("ar:proposals", 0, -1)]
    return {i: Proposal.model_validate_json(store.r.get(f"ar:proposal:{i}") or b"") for i in ids}


def migrate(url: str) -> subprocess.CompletedProcess[str]:
    module = MIGRATE_COMMAND.split()[-1]
    return subprocess.run(
        [sys.executable, "-m", module, "--redis-url", url], capture_output=True, text=True, timeout=60
    )


def test_an_old_store_is_refused_then_migrated_without_loss(old_store: tuple[Store, str]) -> None:
    store, url = old_store
    before = old_records(store)
    events = {i: store.events(i) for i in before}
    assert len(before) == 6
    with pytest.raises(StoreNeedsMigration, match=f"`{MIGRATE_COMMAND} --redis-url"):
        store.open_schema()

    done = migrate(url)
    assert done.returncode == 0, done.stderr
    assert f"6 proposals; the store now has layout {SCHEMA_VERSION}" in done.stdout
    assert store.open_schema() == SCHEMA_VERSION
    assert {i: store.get(i) for i in before} == before
    assert {i: store.events(i) for i in before} == events
    counts = store.count_by_state()
    assert {s: n for s, n in counts.items() if n} == {
        "queued": 2, "running": 1, "rejected": 1, "crashed": 1, "merged": 1,
    }  # fmt: skip
    assert store.stats()[0] == pytest.approx(stats.recount(list(before.values())))
    assert [p.id for p in store.page(State.MERGED)[0]] == [
        p.id for p in before.values() if p.state == "merged"
    ]
    assert store.get_best() is not None and store.get_best().val_bpb == 1.5  # type: ignore[union-attr]
    assert store.token("c" * 64) is None and store.has_tokens()
    assert [v.version for v in store.program_versions()] == [1, 2]
    assert len(store.leaderboard()) == 2
    verdicts = sorted(
        (p for p in before.values() if stats.results_member(p)), key=lambda p: (p.created_at, p.id)
    )
    assert store.results_rows() == [stats.results_row(p) for p in verdicts] and len(verdicts) == 3

    again = migrate(url)  # idempotent
    assert again.returncode == 0, again.stderr
    assert {i: store.get(i) for i in before} == before
    assert store.stats()[0] == pytest.approx(stats.recount(list(before.values())))


def test_an_old_store_keeps_answering_duplicates_and_retries(old_store: tuple[Store, str]) -> None:
    store, url = old_store
    queued = next(p for p in old_records(store).values() if p.title == "lr 0.02")
    assert migrate(url).returncode == 0
    again, created = store.create(queued.model_copy(update={"id": "p_ffffffffffffffff"}))
    assert (again.id, created) == (queued.id, False)
    assert store.idempotent("owner1", "key-0.02", "h" * 64) == queued
