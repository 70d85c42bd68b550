"""A real Redis stopped under a running controller: every Redis error is translated where the store,
the queue module and the quota module send their commands (StoreUnavailable), and the API answers
503 `store-unavailable` problem details, never a 500 and never through the app's last-resort handler
for untranslated Redis errors. When Redis comes back, so does the service."""

import logging
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services import queue
from services.controller import auth, quotas
from services.controller.app import create_app
from services.errors import StoreUnavailable
from services.models import Proposal, new_id
from services.settings import Settings
from services.store import Store, connect
from tests.support.live_server import BASE, COMMIT, seed, with_lr
from tests.support.net import free_port, wait_for

ADMIN = "admin-token-for-redis-down-0123456789"
LAST_RESORT = "Redis error:"  # what services/controller/problems.py logs for an untranslated one


class PrivateRedis:
    """A redis-server of this test's own (the session's is shared and must stay up)."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.folder)]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = connect(self.url)
        try:
            wait_for(lambda: _answers(probe), 10, "redis-server to answer")
        finally:
            probe.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def _answers(client: Any) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def store(private_redis: PrivateRedis) -> Iterator[Store]:
    store = Store.from_url(private_redis.url)
    store.open_schema()
    seed(store)
    try:
        yield store
    finally:
        store.r.close()


def a_proposal() -> Proposal:
    return Proposal(
        id=new_id("p"), title="t", description="d", agent="a", base_commit=COMMIT, base_train_py=BASE,
        train_py=with_lr("0.5"), diff="", content_hash="h" * 64, seeds=[0],
    )  # fmt: skip


def boundary_calls(store: Store) -> dict[str, Callable[[], object]]:
    principal = auth.Principal(name="agent", role=auth.Role.AGENT, token_hash="t" * 64)

    def take_place() -> None:
        with quotas.submit_place(store.r, principal, "p_x", limit=3, per_minute=10, retry_after_s=1):
            pass

    return {
        "Store.get": lambda: store.get("p_x"),
        "Store.create": lambda: store.create(a_proposal()),
        "Store.page": lambda: store.page(),
        "Store.status": lambda: store.status(queue.queue_keys()),
        "Store.events": lambda: store.events("p_x"),
        "Store.get_best": store.get_best,
        "auth.authenticate": lambda: auth.authenticate(store, "some-token"),
        "quotas.submit_place": take_place,
        "quotas.count_submit": lambda: quotas.count_submit(store.r, principal, 10),
        "queue.enqueue_run": lambda: queue.enqueue_run(store.r, "p_x", 60),
        "queue.queue_depths": lambda: queue.queue_depths(store.r),
    }


def test_each_boundary_raises_store_unavailable(private_redis: PrivateRedis, store: Store) -> None:
    private_redis.stop()
    for name, call in boundary_calls(store).items():
        with pytest.raises(StoreUnavailable, match="Redis"):
            call()
        assert name  # the name says which call, should one raise something else


ROUTES = [
    ("GET", "/readyz", None),
    ("GET", "/v1/status", None),
    ("GET", "/v1/proposals", None),
    ("GET", "/v1/proposals/p_x", None),
    ("GET", "/v1/best", None),
    ("GET", "/v1/leaderboard", None),
    ("POST", "/v1/proposals", {"title": "t", "description": "d", "agent": "a", "train_py": with_lr("0.7")}),
]


def test_the_api_answers_503_while_redis_is_down_and_recovers(
    private_redis: PrivateRedis, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(redis_url=private_redis.url, admin_token=SecretStr(ADMIN))
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with TestClient(create_app(settings, store=store, program_path=None)) as client:
        assert client.get("/v1/status", headers=headers).status_code == 200
        private_redis.stop()
        with caplog.at_level(logging.WARNING, logger="services.controller.problems"):
            for method, path, body in ROUTES:
                answer = client.request(method, path, json=body, headers=headers)
                assert answer.status_code == 503, (path, answer.text)
                assert answer.headers["content-type"].startswith("application/problem+json")
                problem = answer.json()
                assert problem["status"] == 503 and problem["type"].endswith("store-unavailable"), problem
        assert not [r for r in caplog.records if LAST_RESORT in r.getMessage()]

        private_redis.start()  # an empty Redis on the same port: the service answers again
        store.open_schema()
        seed(store)
        auth.bootstrap_admin(store, SecretStr(ADMIN))
        assert client.get("/v1/status", headers=headers).status_code == 200
        submitted = client.post("/v1/proposals", json=ROUTES[-1][2], headers=headers)
        assert submitted.status_code == 201, submitted.text
