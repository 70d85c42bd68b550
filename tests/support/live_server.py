"""A real controller over real HTTP for the client-side tests (events, CLI, MCP): uvicorn in a thread
on a free port, against the session's private Redis. Also the small trainer the tests submit."""

import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import SecretStr

from services.controller.app import create_app
from services.controller.auth import Role, create_token
from services.models import Best, Proposal, new_id
from services.patches import canonical_diff, content_hash
from services.settings import Settings
from services.store import Store
from tests.support.net import free_port, wait_for

ADMIN = "admin-token-for-live-tests-0123456789"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
BASE = """\
import os

LEARNING_RATE = 0.001  # per step


def build_model(config):
    return None


if __name__ == "__main__":
    print("seed", os.environ.get("AR_SEED"), LEARNING_RATE)
"""
REPO_PROGRAM = Path(__file__).resolve().parents[2] / "program.md"
HEARTBEAT_S = 0.2  # keepalive interval of the test servers' event streams


def with_lr(value: str) -> str:
    return BASE.replace("LEARNING_RATE = 0.001", f"LEARNING_RATE = {value}")


def seed(store: Store) -> Store:
    store.add_commit(COMMIT, BASE)
    store.set_best(Best(commit=COMMIT, val_bpb=1.5))
    store.set_repo_bundle(*research_bundle())
    return store


def research_bundle(train_py: str = BASE) -> tuple[str, bytes]:
    """(head, bytes) of a real git bundle of a one-commit research branch holding train_py: what the
    committer publishes for GET /v1/repo.bundle."""
    with tempfile.TemporaryDirectory() as folder:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", folder, *args], capture_output=True, text=True, check=True
            ).stdout

        git("init", "-q", "-b", "research")
        (Path(folder) / "train.py").write_text(train_py)
        git("add", "train.py")
        git(
            "-c",
            "user.name=committer",
            "-c",
            "user.email=committer@localhost",
            "commit",
            "-q",
            "-m",
            "Baseline",
        )
        git("bundle", "create", "research.bundle", "HEAD", "research")
        return git("rev-parse", "HEAD").strip(), (Path(folder) / "research.bundle").read_bytes()


def settings_for(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, admin_token=SecretStr(ADMIN), page_size_max=50)


def agent_token(store: Store, name: str = "agent-1") -> str:
    return create_token(store, name, Role.AGENT)


def stored_proposal(store: Store, lr: str = "0.002", **fields: Any) -> Proposal:
    """A proposal written straight to the store (as a submit would), queued."""
    train_py = with_lr(lr)
    proposal = Proposal(
        id=new_id("p"),
        title=f"learning rate {lr}",
        agent="tester",
        base_commit=COMMIT,
        base_train_py=BASE,
        train_py=train_py,
        diff=canonical_diff(BASE, train_py),
        content_hash=content_hash(COMMIT, train_py),
        seeds=[42],
        **fields,
    )
    created, _ = store.create(proposal, dedupe=False)
    return created


@contextmanager
def serve(settings: Settings, store: Store, **app_options: Any) -> Iterator[str]:
    """The controller at the yielded base URL until the block ends."""
    app = create_app(
        settings, store=store, program_path=REPO_PROGRAM, sse_heartbeat_s=HEARTBEAT_S, **app_options
    )
    config = uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), log_config=None, lifespan="on", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 10, "uvicorn to start")
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(10)
