"""`autoresearch-mcp`: the service's operations as MCP tools over stdio, for Claude Code, Codex and
other MCP clients that start a local process (the controller serves the same tools over HTTP at /mcp).

It is a thin client of the HTTP API (services.cli.client), never of Redis: it runs wherever the agent
runs, with the agent's own token, and the controller enforces everything as for any other caller.
URL and token come from --url/--token or AUTORESEARCH_URL/AUTORESEARCH_TOKEN. The tools themselves
are defined in services/mcp_tools.py. It needs only the light install (`pip install .`: no server
dependencies).

    claude mcp add autoresearch -e AUTORESEARCH_URL=http://gpu-box:8000 \\
        -e AUTORESEARCH_TOKEN=ar_... -- autoresearch-mcp
"""

import argparse
import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

import anyio.to_thread

from services.cli.client import DEFAULT_URL, ApiClient
from services.mcp_tools import build_server


class ThreadedApi:
    """The CLI's synchronous client, called on a worker thread so the server's event loop runs on."""

    def __init__(self, client: ApiClient) -> None:
        self._client = client

    async def get(self, path: str, **params: Any) -> Any:
        return await anyio.to_thread.run_sync(functools.partial(self._client.get, path, **params))

    async def text(self, path: str) -> str:
        return await anyio.to_thread.run_sync(self._client.text, path)

    async def submit(self, body: dict[str, Any], idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        return await anyio.to_thread.run_sync(self._client.submit, body, idempotency_key)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="autoresearch-mcp", description="MCP server (stdio) for autoresearch")
    p.add_argument("--url", default=os.environ.get("AUTORESEARCH_URL", DEFAULT_URL))
    p.add_argument("--token", default=os.environ.get("AUTORESEARCH_TOKEN"))
    args = p.parse_args(argv)
    if not args.token:
        p.error("no token: pass --token or set AUTORESEARCH_TOKEN")
    with ApiClient(args.url, args.token) as client:
        api = ThreadedApi(client)
        server = build_server(lambda _request: api)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request on the client's log
        server.run("stdio")


if __name__ == "__main__":
    main()
