"""Per-token submit quotas over HTTP against a real Redis: queued proposals per token and submits
per minute answer 429 problem+json with Retry-After and store nothing; other tokens and admin
tokens are not affected; a proposal that leaves the queue frees its place; concurrent submits of one
token against a live controller take exactly the quota."""

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.controller import quotas
from services.models import Best
from services.queue import runs_queue
from services.settings import Settings
from services.states import State
from services.store import Store
from tests.support.api import api_client
from tests.support.live_server import agent_token, seed, serve, settings_for, with_lr

ADMIN = "admin-token-for-quota-tests-0123456789"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
BASE = "LEARNING_RATE = 0.001\n"
MAX_QUEUED = 2
PER_MINUTE = 4

Headers = dict[str, str]


@pytest.fixture
def client(redis_url: str, store: Store) -> Iterator[TestClient]:
    settings = Settings(
        redis_url=redis_url, admin_token=SecretStr(ADMIN), max_queued_per_token=MAX_QUEUED,
        submits_per_minute=PER_MINUTE,
    )  # fmt: skip
    store.add_commit(COMMIT, BASE)
    store.set_best(Best(commit=COMMIT, val_bpb=1.5))
    with api_client(settings, store) as test_client:
        yield test_client


def token(client: TestClient, name: str, role: str = "agent") -> Headers:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    answer = client.post("/v1/tokens", json={"name": name, "role": role}, headers=admin)
    assert answer.status_code == 201, answer.text
    return {"Authorization": f"Bearer {answer.json()['token']}"}


def submit(client: TestClient, headers: Headers, value: int, **extra: Any) -> Any:
    body = {"title": f"lr {value}", "agent": "a", "train_py": f"LEARNING_RATE = {value}\n", **extra}
    return client.post("/v1/proposals", json=body, headers=headers)


def assert_429(answer: Any, detail_part: str) -> int:
    assert answer.status_code == 429, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body = answer.json()
    assert body["type"] == "urn:autoresearch:problem:quota-exceeded" and body["status"] == 429
    assert detail_part in body["detail"] and "retry" in body["detail"].lower(), body["detail"]
    retry_after = int(answer.headers["retry-after"])
    assert retry_after >= 1
    return retry_after


def test_queued_quota_answers_429_and_stores_nothing(
    client: TestClient, redis_client: "redis.Redis[bytes]", store: Store
) -> None:
    agent = token(client, "busy-agent")
    for value in range(MAX_QUEUED):
        assert submit(client, agent, value).status_code == 201
    refused = submit(client, agent, 99)
    assert_429(refused, f"has {MAX_QUEUED} proposals queued (limit {MAX_QUEUED})")
    assert store.count_by_state().get(State.QUEUED.value, 0) == MAX_QUEUED
    assert len(runs_queue(redis_client)) == MAX_QUEUED


def test_a_proposal_leaving_the_queue_frees_a_place(client: TestClient, store: Store) -> None:
    agent = token(client, "agent")
    ids = [submit(client, agent, value).json()["id"] for value in range(MAX_QUEUED)]
    assert submit(client, agent, 98).status_code == 429
    store.transition(ids[0], State.RUNNING, "a worker took it", expect={State.QUEUED})
    assert submit(client, agent, 99).status_code == 201


def test_other_tokens_and_admins_have_their_own_quota(client: TestClient) -> None:
    first, second = token(client, "first"), token(client, "second")
    for value in range(MAX_QUEUED):
        assert submit(client, first, value).status_code == 201
    assert submit(client, first, 50).status_code == 429
    assert submit(client, second, 51).status_code == 201
    admin = {"Authorization": f"Bearer {ADMIN}"}
    for value in range(60, 60 + MAX_QUEUED + PER_MINUTE):
        assert submit(client, admin, value).status_code == 201  # the operator's token is not limited


def test_submits_per_minute_answer_429_with_retry_after(client: TestClient, store: Store) -> None:
    agent = token(client, "chatty-agent")
    assert submit(client, agent, 0, train_py="not python (").status_code == 422  # not counted
    for value in range(PER_MINUTE):
        answer = submit(client, agent, value)
        assert answer.status_code == 201
        store.transition(answer.json()["id"], State.RUNNING, "taken", expect={State.QUEUED})
    retry_after = assert_429(submit(client, agent, 99), f"limit of {PER_MINUTE} submits per minute")
    assert retry_after <= quotas.RATE_WINDOW_S
    assert store.count_by_state().get(State.QUEUED.value, 0) == 0


def test_an_idempotent_replay_is_not_counted(client: TestClient) -> None:
    agent = token(client, "retrying-agent")
    key = {**agent, "Idempotency-Key": "same-submit"}
    first = submit(client, key, 1)
    assert first.status_code == 201
    for _ in range(PER_MINUTE + 2):
        replay = submit(client, key, 1)
        assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]


def test_the_rate_window_resets_each_minute(redis_client: "redis.Redis[bytes]") -> None:
    from services.controller.auth import Principal, Role
    from services.errors import QuotaExceeded

    caller = Principal(name="a", role=Role.AGENT, token_hash="h" * 64)
    minute = 1_000_000 * quotas.RATE_WINDOW_S
    quotas.count_submit(redis_client, caller, 1, now=minute + 10)
    with pytest.raises(QuotaExceeded) as raised:
        quotas.count_submit(redis_client, caller, 1, now=minute + 10)
    assert raised.value.retry_after_s == quotas.RATE_WINDOW_S - 10
    quotas.count_submit(redis_client, caller, 1, now=minute + quotas.RATE_WINDOW_S)  # a new window


@pytest.mark.parametrize("stale", [10, 40])
def test_places_held_are_counted_exactly_and_stale_ones_forgotten_once_they_outnumber_them(
    redis_client: "redis.Redis[bytes]", stale: int
) -> None:
    """A token's places: 2 of queued proposals, `stale` of proposals that left the queue. The places
    held count 2 either way (a limit of 2 refuses, naming 2; a limit of 3 takes a place); the stale
    ones are forgotten by that call only once they outnumber the held ones by more than SCAN_SLACK."""
    from services.controller.auth import Principal, Role
    from services.errors import QuotaExceeded
    from services.store import keys, state_key

    caller = Principal(name="a", role=Role.AGENT, token_hash="q" * 64)
    places = keys.QUOTA_PLACES.of(caller.token_hash)
    redis_client.zadd(state_key(State.QUEUED), {"p_queued_1": 1.0, "p_queued_2": 2.0, "p_other": 3.0})
    redis_client.zadd(places, {"p_queued_1": 0, "p_queued_2": 0, **{f"p_gone_{i}": 0 for i in range(stale)}})
    with (
        pytest.raises(QuotaExceeded, match="has 2 proposals queued"),
        quotas.submit_place(redis_client, caller, "p_new", limit=2, per_minute=100, retry_after_s=1),
    ):
        pass
    with quotas.submit_place(redis_client, caller, "p_new", limit=3, per_minute=100, retry_after_s=1):
        assert redis_client.zscore(places, "p_new") is not None  # its reservation counts meanwhile
    forgotten = stale > 2 + quotas.SCAN_SLACK
    assert redis_client.zcard(places) == (2 if forgotten else 2 + stale)  # p_new settled: not stored


# ---------------------------------------------------------------------------------------------------
# Concurrent submits against a live controller (uvicorn in a thread, its threadpool serving them)

CONCURRENT = 24  # submits of one token sent at once


def submit_at_once(base_url: str, token_value: str, count: int) -> list[httpx.Response]:
    """`count` different valid submits of one token, released together by a barrier."""
    start = threading.Barrier(count)
    headers = {"Authorization": f"Bearer {token_value}"}

    def post(i: int) -> httpx.Response:
        body = {"title": f"lr {i}", "agent": "racer", "train_py": with_lr(f"0.{i + 100}")}
        start.wait()
        return httpx.post(f"{base_url}/v1/proposals", json=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(post, range(count)))


def test_concurrent_submits_take_exactly_the_queued_quota(
    redis_url: str, store: Store, redis_client: "redis.Redis[bytes]"
) -> None:
    """24 submits of one agent token at once, queued quota 5: exactly 5 are accepted (201) and 19
    answered 429 with the quota's message; 5 proposals stored, 5 jobs queued (before the check and
    the reservation were one Lua script, concurrent submits could all pass the check)."""
    settings = settings_for(redis_url).replace(max_queued_per_token=MAX_QUEUED + 3, submits_per_minute=1000)
    limit = settings.controller.max_queued_per_token
    with serve(settings, seed(store)) as base_url:
        answers = submit_at_once(base_url, agent_token(store, "racer"), CONCURRENT)
    codes = Counter(a.status_code for a in answers)
    assert codes == {201: limit, 429: CONCURRENT - limit}, [
        a.text for a in answers if a.status_code not in (201, 429)
    ]
    for refused in (a for a in answers if a.status_code == 429):
        assert f"proposals queued (limit {limit})" in refused.json()["detail"], refused.text
    assert store.count_by_state()[State.QUEUED.value] == limit
    assert len(runs_queue(redis_client)) == limit
    print(f"{CONCURRENT} concurrent submits, queued quota {limit}: {dict(codes)}")


def test_concurrent_submits_take_exactly_the_rate_quota(
    redis_url: str, store: Store, redis_client: "redis.Redis[bytes]"
) -> None:
    """24 submits of one agent token at once, 6 per minute (queued quota far above): exactly 6 are
    accepted and 18 answered 429 naming the rate; the window's counter stops at 6."""
    settings = settings_for(redis_url).replace(max_queued_per_token=1000, submits_per_minute=6)
    with serve(settings, seed(store)) as base_url:
        answers = submit_at_once(base_url, agent_token(store, "racer"), CONCURRENT)
    codes = Counter(a.status_code for a in answers)
    assert codes == {201: 6, 429: CONCURRENT - 6}, codes
    assert all("limit of 6 submits per minute" in a.json()["detail"] for a in answers if a.status_code == 429)
    assert store.count_by_state()[State.QUEUED.value] == 6
