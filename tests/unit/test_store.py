"""The store against a real Redis (private redis-server, flushed around each test)."""

import pytest

from services.errors import Conflict, IllegalTransition, NotFound, StoreNeedsMigration
from services.models import Best, Proposal, RunResult, StepTimings, new_id
from services.states import State, may_follow
from services.store import SCHEMA_KEY, SCHEMA_VERSION, Store, stats
from tests.support.walk import path_to


def make_proposal(text: str = "print('hi')\n", base: str = "c0ffee1") -> Proposal:
    return Proposal(
        id=new_id("p"),
        title="t",
        agent="tester",
        base_commit=base,
        base_train_py="print('base')\n",
        train_py=text,
        diff="",
        content_hash=f"hash-of-{text}",
        seeds=[42],
    )


def test_create_get_and_events(store: Store) -> None:
    proposal, created = store.create(make_proposal())
    assert created
    assert store.get(proposal.id) == proposal
    assert [e.state for e in store.events(proposal.id)] == [State.QUEUED]


def test_duplicate_content_on_same_base_returns_the_first(store: Store) -> None:
    first, _ = store.create(make_proposal())
    second, created = store.create(make_proposal())
    assert not created
    assert second.id == first.id
    _, other_base_created = store.create(make_proposal(base="beef001"))
    assert other_base_created
    assert store.page()[1] == 2


def test_runs_of_a_commit_are_not_deduplicated(store: Store) -> None:
    store.create(make_proposal(), dedupe=False)
    _, created = store.create(make_proposal(), dedupe=False)
    assert created


def test_transition_moves_state_index_and_appends_event(store: Store) -> None:
    proposal, _ = store.create(make_proposal())
    store.transition(proposal.id, State.RUNNING, "picked up by worker w1", attempts=1)
    moved = store.get(proposal.id)
    assert moved.state == State.RUNNING
    assert moved.attempts == 1
    assert [p.id for p in store.page(State.RUNNING)[0]] == [proposal.id]
    assert store.page(State.QUEUED)[1] == 0
    assert [e.reason for e in store.events(proposal.id)] == ["submitted", "picked up by worker w1"]


def test_transition_validates_changed_fields(store: Store) -> None:
    proposal, _ = store.create(make_proposal())
    with pytest.raises(ValueError, match="attempts"):
        store.update(proposal.id, attempts="many")


def test_page_is_newest_first_and_paginates(store: Store) -> None:
    ids = [store.create(make_proposal(f"x = {i}\n"))[0].id for i in range(5)]
    page, total = store.page(offset=1, limit=2)
    assert total == 5
    assert [p.id for p in page] == [ids[3], ids[2]]


def test_cancel_only_when_queued(store: Store) -> None:
    proposal, _ = store.create(make_proposal())
    store.transition(proposal.id, State.RUNNING, "started")
    with pytest.raises(Conflict, match="only queued"):
        store.cancel(proposal.id, "by admin")
    with pytest.raises(NotFound):
        store.cancel("p_missing", "by admin")


def test_best_and_commit_mirror(store: Store) -> None:
    assert store.get_best() is None
    store.add_commit("a" * 40, "print(1)\n")
    store.set_best(Best(commit="a" * 40, val_bpb=None))
    assert store.get_best() == Best(commit="a" * 40, val_bpb=None, updated_at=store.get_best().updated_at)  # type: ignore[union-attr]
    assert store.resolve_commit("aaaaaaa") == "a" * 40
    assert store.resolve_commit("bbbbbbb") is None
    assert store.commit_train_py("a" * 40) == "print(1)\n"


def test_leaderboard_orders_by_score(store: Store) -> None:
    worse, _ = store.create(make_proposal("a = 1\n"))
    better, _ = store.create(make_proposal("a = 2\n"))
    store.record_score(worse.id, 1.31)
    store.record_score(better.id, 1.29)
    assert [p.id for p in store.leaderboard()] == [better.id, worse.id]


def test_calibration_counts_each_run_once_by_its_id(store: Store) -> None:
    """A decision that is retried or delivered twice hands the same runs in again: they count once."""
    store.add_calibration_runs("fp1", "c1", {"run-a": 1.50, "run-b": 1.51})
    store.add_calibration_runs("fp1", "c1", {"run-a": 1.50, "run-b": 1.51})
    store.add_calibration_runs("fp1", "c1", {"run-b": 1.51, "run-c": 1.49})
    store.add_calibration_runs("fp1", "c2", {"run-d": 1.40})
    store.add_calibration_runs("fp1", "c2", {})
    assert store.calibration_runs("fp1") == {"c1": [1.50, 1.51, 1.49], "c2": [1.40]}
    store.add_gap_calibration_runs("fp1", "c1", {"run-a": 0.01})
    store.add_gap_calibration_runs("fp1", "c1", {"run-a": 0.01, "run-c": 0.02})
    assert store.gap_calibration_runs("fp1") == {"c1": [0.01, 0.02]}
    store.add_pair_calibration_runs("fp1", "p1@c1", {"run-a": -0.001})
    store.add_pair_calibration_runs("fp1", "p1@c1", {"run-a": -0.001, "run-c": 0.0005})
    assert store.pair_calibration_runs("fp1") == {"p1@c1": [-0.001, 0.0005]}
    assert store.calibration_runs("fp2") == {} and "fp1" in store.fingerprints()


def test_transition_walks_the_table(store: Store) -> None:
    """Every (from, to) pair of states: the store allows exactly the moves the table lists, and a
    refused move changes nothing."""
    paths = path_to(State.QUEUED)
    for old in State:
        for new in State:
            proposal, _ = store.create(make_proposal(f"x = '{old}-{new}'\n"))
            for step in paths[old][1:]:
                store.transition(proposal.id, step, f"to {step}")
            before = store.get(proposal.id), store.events(proposal.id), store.count_by_state()
            if may_follow(old, new):
                assert store.transition(proposal.id, new, "walk").state == new
            else:
                with pytest.raises(IllegalTransition, match=f"is {old}; it cannot become {new}"):
                    store.transition(proposal.id, new, "walk")
                assert (store.get(proposal.id), store.events(proposal.id), store.count_by_state()) == before


def test_counters_equal_a_recount_after_any_writes(store: Store) -> None:
    """The counters kept with each write are what counting every proposal from scratch gives."""
    run = RunResult(
        run_id="r1", proposal_id="p", seed=1, state=State.EVALUATING, val_bpb=1.2,
        timings=StepTimings(prepare_s=1.0, train_container_s=100.0, collect_s=1.0, eval_container_s=9.0),
    )  # fmt: skip
    paths = path_to(State.QUEUED)
    for i, target in enumerate(State):
        proposal, _ = store.create(make_proposal(f"x = {i}\n"))
        for step in paths[target][1:]:
            store.transition(proposal.id, step, "walk", results=[run] if step != State.QUEUED else [])
        store.update(proposal.id, attempts=2)
    counters, first = store.stats()
    ids = [p.id for p in store.page(limit=100)[0]]
    assert counters == pytest.approx(stats.recount(store.get_many(ids)))
    assert store.count_by_state() == {s.value: 1 for s in State}
    assert first == pytest.approx(run.finished_at - 111.0)


def test_an_empty_store_is_stamped_and_an_unmarked_one_refused(store: Store) -> None:
    assert store.open_schema() == SCHEMA_VERSION
    store.r.delete(SCHEMA_KEY)
    store.create(make_proposal())
    with pytest.raises(StoreNeedsMigration, match=r"python -m services\.store\.migrate --redis-url"):
        store.open_schema()
    store.r.set(SCHEMA_KEY, SCHEMA_VERSION + 1)
    with pytest.raises(StoreNeedsMigration, match="newer version"):
        store.open_schema()


def test_each_body_is_stored_once_and_records_hold_hashes(store: Store) -> None:
    first, _ = store.create(make_proposal("x = 1\n"))
    second, _ = store.create(make_proposal("x = 2\n"))
    store.create(make_proposal("x = 1\n", base="beef001"))  # the same bodies on another base
    assert len(list(store.r.scan_iter("ar:body:*"))) == 3  # the base's and two candidates
    raw = store.r.get(f"ar:proposal:{first.id}") or b""
    assert b"print('base')" not in raw and b"x = 1" not in raw
    assert store.get(first.id) == first and store.get(second.id) == second
    moved = store.transition(first.id, State.RUNNING, "go")
    moved = store.transition(first.id, State.QUEUED, "re-queued", base_train_py="print('new base')\n")
    assert store.get(first.id) == moved and moved.base_train_py == "print('new base')\n"


def test_only_the_first_token_is_added_while_none_exists(store: Store) -> None:
    assert store.add_first_token("h1", "admin", "admin")
    assert not store.add_first_token("h2", "admin", "admin")  # another controller process came second
    assert store.token("h1") == {"name": "admin", "role": "admin"} and store.token("h2") is None
