"""The controller in-process (FastAPI's TestClient) for the API tests: one client factory, the
shared trainer texts, and the checks every rejected request gets."""

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from services.controller.app import DEFAULT_PROGRAM_PATH, create_app
from services.settings import Settings
from services.store import Store

with warnings.catch_warnings():
    # Starlette >= 1.x warns that its TestClient prefers `httpx2`; the plain httpx still works.
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

ADMIN = "admin-token-for-tests-0123456789"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
BASE = """\
import os

LEARNING_RATE = 0.001  # per step
DEPTH = 4


def build_model(config):
    return None


def main():
    seed = int(os.environ.get("AR_SEED", "0"))
    print("seed", seed, LEARNING_RATE, DEPTH)


if __name__ == "__main__":
    main()
"""
BETTER = BASE.replace("LEARNING_RATE = 0.001", "LEARNING_RATE = 0.002")


def submission(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"title": "double the learning rate", "description": "why not", "agent": "tester"}
    if not {"train_py", "diff"} & fields.keys():
        body["train_py"] = BETTER
    body.update(fields)
    return {k: v for k, v in body.items() if v is not ...}


def keys(conn: "redis.Redis[bytes]") -> set[bytes]:
    return set(conn.keys("*"))


def assert_problem(answer: Any, status: int, slug: str, detail_part: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    assert body["type"] == f"urn:autoresearch:problem:{slug}"
    assert body["status"] == status
    assert body["title"]
    assert detail_part in body["detail"], body["detail"]
    return body


@contextmanager
def api_client(
    settings: Settings, store: Store, program_path: Path | None = DEFAULT_PROGRAM_PATH
) -> Iterator[TestClient]:
    """The controller app over `store`, in this process, with its start-up and shutdown run (program.md
    version 1 from `program_path`, none when it is None)."""
    with TestClient(create_app(settings, store=store, program_path=program_path)) as client:
        yield client
