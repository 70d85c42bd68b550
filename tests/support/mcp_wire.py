"""MCP over HTTP at the wire: one JSON-RPC request per POST, as a stateless client sends it. For tests
that look at the wire itself (auth refusals, no session between requests, the canary reads) rather
than through the SDK's client."""

import json
from typing import Any

import httpx

PATH = "/mcp"
PROTOCOL_VERSION = "2025-06-18"  # a version with the initialize handshake, as Claude Code speaks it
WIRE_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": PROTOCOL_VERSION}


def post(
    http: httpx.Client, method: str, params: dict[str, Any] | None = None, *, headers: dict[str, str]
) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
    return http.post(PATH, json=body, headers={**WIRE_HEADERS, **headers})


def call(
    http: httpx.Client, method: str, params: dict[str, Any] | None = None, *, headers: dict[str, str]
) -> dict[str, Any]:
    """The result of a request that must succeed at the protocol level."""
    response = post(http, method, params, headers=headers)
    assert response.status_code == 200, (method, response.status_code, response.text)
    message = response.json()
    assert "error" not in message, (method, message)
    result: dict[str, Any] = message["result"]
    return result


def strings(value: Any) -> list[str]:
    """Every string in a JSON value, unescaped (a JSON text block is parsed first)."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return [value]
        return [value] if isinstance(parsed, str) else strings(parsed)
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return [] if value is None else [str(value)]
