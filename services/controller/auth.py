"""Bearer tokens and roles (no FastAPI here; the controller's dependencies call these).

Tokens are random strings handed out once; the store keeps only their sha256, so a copy of Redis does
not hold usable secrets. Roles:

    agent   submit proposals, read everything
    admin   everything an agent can, plus runs of commits, cancelling, and creating tokens

The first admin token is `AR_ADMIN_TOKEN`; without it, a controller that finds no tokens at all makes
one and logs it once.
"""

import hashlib
import logging
import secrets
from dataclasses import dataclass
from enum import StrEnum

from pydantic import SecretStr

from services.errors import AuthError
from services.logs import boxed
from services.store import Store

log = logging.getLogger(__name__)

TOKEN_PREFIX = "ar_"  # makes a leaked token easy to grep for
TOKEN_BYTES = 32  # of randomness, 256 bits
BOOTSTRAP_ADMIN_NAME = "admin"
MIN_ADMIN_TOKEN_CHARS = 24  # below this an operator-chosen token is guessable; warn, do not refuse


class Role(StrEnum):
    AGENT = "agent"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name, role and hash (the hash scopes idempotency keys)."""

    name: str
    role: Role
    token_hash: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def create_token(store: Store, name: str, role: Role) -> str:
    """Store a new token's hash; return the token itself (the only time it is seen)."""
    token = new_token()
    store.add_token(hash_token(token), name, role.value)
    log.info("created %s token %r", role.value, name)
    return token


def authenticate(store: Store, token: str | None) -> Principal:
    if not token:
        raise AuthError("missing bearer token: send the header 'Authorization: Bearer <token>'")
    token_hash = hash_token(token)
    record = store.token(token_hash)
    if record is None:
        raise AuthError("unknown bearer token: check the token, or ask an admin for one (POST /v1/tokens)")
    return Principal(name=record["name"], role=Role(record["role"]), token_hash=token_hash)


def require(principal: Principal, role: Role) -> Principal:
    if role is Role.ADMIN and principal.role is not Role.ADMIN:
        raise AuthError(
            f"token {principal.name!r} has role {principal.role}; this needs an admin token", forbidden=True
        )
    return principal


def bootstrap_admin(store: Store, admin_token: SecretStr | None) -> None:
    """Register AR_ADMIN_TOKEN, or make and log a first admin token when the store has none."""
    if admin_token is not None and admin_token.get_secret_value():
        if len(admin_token.get_secret_value()) < MIN_ADMIN_TOKEN_CHARS:
            log.warning(
                "AR_ADMIN_TOKEN is shorter than %d characters; use a long random string",
                MIN_ADMIN_TOKEN_CHARS,
            )
        store.add_token(hash_token(admin_token.get_secret_value()), BOOTSTRAP_ADMIN_NAME, Role.ADMIN.value)
        return
    if store.has_tokens():
        return
    token = new_token()
    if not store.add_first_token(hash_token(token), BOOTSTRAP_ADMIN_NAME, Role.ADMIN.value):
        return  # another controller process made the first one
    # Shown once, on purpose: the operator copies it from the log; only its hash is stored.
    log.warning(
        "AR_ADMIN_TOKEN is unset and no tokens exist: created admin token %s (store it now)",
        token,
        extra={"banner": first_admin_banner(token)},
    )


def first_admin_banner(token: str) -> str:
    return boxed(
        [
            "FIRST ADMIN TOKEN (shown once; only its hash is stored):",
            "",
            f"    {token}",
            "",
            "Use it as `Authorization: Bearer <token>` (dashboard, CLI, API).",
            "Lost it? A new admin token: docker compose exec controller autoresearch-admin token",
        ]
    )
