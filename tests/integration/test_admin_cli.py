"""`autoresearch-admin token` mints a working admin token against the service's Redis and stores
only its hash."""

import pytest

from services import admin
from services.controller.auth import hash_token
from services.settings import Settings
from services.store import Store
from tests.support.api import api_client


def test_minted_token_is_an_admin_token_stored_hashed(
    redis_url: str, store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AR_REDIS_URL", redis_url)
    assert admin.main(["token", "--name", "ops"]) == 0
    token = capsys.readouterr().out.strip()
    assert store.token(hash_token(token)) == {"name": "ops", "role": "admin"}
    assert token.encode() not in b"".join(store.r.hgetall("ar:tokens").values())
    with api_client(Settings(redis_url=redis_url), store) as client:
        created = client.post(
            "/v1/tokens",
            json={"name": "agent-x", "role": "agent"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert created.status_code == 201, created.text


def test_unreachable_redis_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AR_REDIS_URL", "redis://127.0.0.1:1/0")
    assert admin.main(["token"]) == 1
    assert "cannot reach Redis" in capsys.readouterr().err
