"""`python -m services.store.migrate --redis-url URL`: bring a store written by an older version of the
service to the layout this version reads (services.store.SCHEMA_VERSION), keeping every record.

Run it once with the controller, workers and committer stopped (they refuse an older layout at start
and say so). It is idempotent: run again, it rewrites the same records and counts the same counters.
What it does: rewrites each proposal in the current record format, then counts the counters of
services/store/stats.py from scratch over every proposal, then stamps the layout version.
"""

import argparse
import logging
import sys

from services.errors import ServiceError
from services.logs import configure_logging
from services.store import SCHEMA_VERSION, Store, connect

log = logging.getLogger(__name__)

BATCH = 500  # proposals read and written per round trip


def migrate(store: Store) -> int:
    """Migrate `store` in place; return the number of proposals it holds."""
    count = store.rewrite_all(BATCH)
    log.info("store migrated to layout %d: %d proposals rewritten and counted", SCHEMA_VERSION, count)
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.store.migrate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--redis-url", required=True, help="the store's Redis, as AR_REDIS_URL names it")
    args = parser.parse_args(argv)
    configure_logging()
    client = connect(args.redis_url)
    try:
        count = migrate(Store(client))
    except ServiceError as exc:
        print(f"migration failed, nothing marked migrated: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"migrated: {count} proposals; the store now has layout {SCHEMA_VERSION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
