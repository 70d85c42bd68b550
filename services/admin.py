"""`autoresearch-admin`: operator commands run next to the service, e.g. inside the controller's
container (`docker compose exec controller autoresearch-admin token`). Settings from AR_*.

    autoresearch-admin token [--name NAME]   mint a new admin token and print it (only its hash is stored)
"""

import argparse
import sys
import time

import redis

from services.controller.auth import Role, create_token
from services.errors import StoreUnavailable
from services.settings import Settings
from services.store import Store


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="autoresearch-admin", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="mint a new admin token and print it")
    token.add_argument("--name", default=None, help="the token's name (default: admin-<UTC time>)")
    return parser.parse_args(argv)


def mint_admin_token(settings: Settings, name: str | None) -> str:
    name = name or time.strftime("admin-%Y%m%dT%H%M%SZ", time.gmtime())
    conn = redis.Redis.from_url(settings.redis_url)
    try:
        return create_token(Store(conn), name, Role.ADMIN)
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        token = mint_admin_token(Settings(), args.name)
    except StoreUnavailable as exc:
        print(f"autoresearch-admin: cannot reach Redis: {exc}", file=sys.stderr)
        return 1
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
