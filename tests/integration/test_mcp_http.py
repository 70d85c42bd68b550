"""MCP over streamable HTTP at the controller's /mcp (uvicorn in a thread, real Redis): the official
SDK's client lists and calls every tool with an agent's token; tokens are checked per request; an
agent sees through MCP what REST shows it; no request depends on an earlier one (two controllers)."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

import httpx
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CallToolResult, TextContent
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from services.models import Best, Decision
from services.patches import canonical_diff
from services.settings import Settings
from services.states import State
from services.store import Store
from tests.support import mcp_wire
from tests.support.live_server import ADMIN, BASE, COMMIT, agent_token, serve, stored_proposal, with_lr
from tests.support.mcp_client import TOOLS, data_of, text_of
from tests.support.walk import walk

SESSION_TIMEOUT_S = 60
RESOURCES = {"autoresearch://program.md", "autoresearch://best/train.py"}


@asynccontextmanager
async def session(url: str, token: str) -> AsyncIterator[ClientSession]:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with (
        http,  # a client passed in is the caller's to close
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as client,
    ):
        yield client


async def every_tool(url: str, token: str, store: Store) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with session(url, token) as client:
        seen["init"] = await client.initialize()
        seen["tools"] = {tool.name: tool for tool in (await client.list_tools()).tools}
        seen["empty_leaderboard"] = await client.call_tool("leaderboard", {})
        seen["program"] = data_of(await client.call_tool("get_program", {}))
        seen["program_v1"] = data_of(await client.call_tool("get_program", {"version": 1}))
        seen["best"] = data_of(await client.call_tool("get_best", {}))
        seen["best_short"] = data_of(await client.call_tool("get_best", {"include_train_py": False}))
        diff = canonical_diff(seen["best"]["train_py"], with_lr("0.004"))
        submit = {"title": "lr 0.004", "agent": "http-agent", "diff": diff}  # no description: optional
        seen["submitted"] = data_of(await client.call_tool("submit_proposal", submit))
        seen["again"] = data_of(await client.call_tool("submit_proposal", {**submit, "title": "again"}))
        proposal_id = seen["submitted"]["id"]
        walk(store, proposal_id, State.CRASHED, "exit code 1")
        seen["status"] = data_of(await client.call_tool("proposal_status", {"proposal_id": proposal_id}))
        seen["list"] = data_of(await client.call_tool("list_proposals", {"state": "crashed", "limit": 5}))
        seen["log"] = text_of(await client.call_tool("proposal_log", {"proposal_id": proposal_id}))
        scored = stored_proposal(store, "0.003")
        store.record_score(scored.id, 1.6)
        seen["scored_id"] = scored.id
        seen["leaderboard"] = data_of(await client.call_tool("leaderboard", {"limit": 5}))
        seen["resources"] = {str(r.uri) for r in (await client.list_resources()).resources}
        seen["program_md"] = await client.read_resource("autoresearch://program.md")
        seen["best_train_py"] = await client.read_resource("autoresearch://best/train.py")
        seen["escape"] = await client.call_tool("proposal_status", {"proposal_id": "../best"})
        seen["escape_log"] = await client.call_tool("proposal_log", {"proposal_id": "p_0123/../../best"})
        seen["unknown"] = await client.call_tool("proposal_log", {"proposal_id": "p_0123456789abcdef"})
        seen["bad_state"] = await client.call_tool("list_proposals", {"state": "finished"})
        seen["invalid"] = await client.call_tool(
            "submit_proposal", {"title": "t", "agent": "a", "train_py": "def broken(:\n"}
        )
    return seen


def test_the_sdk_client_lists_and_calls_every_tool_over_http(url: str, store: Store) -> None:
    seen = asyncio.run(
        asyncio.wait_for(every_tool(url, agent_token(store, "http"), store), SESSION_TIMEOUT_S)
    )
    assert seen["init"].server_info.name == "autoresearch"
    assert seen["init"].server_info.version == metadata.version("autoresearch-service")
    tools = seen["tools"]
    assert set(tools) == TOOLS
    for name, tool in tools.items():
        assert tool.annotations is not None and tool.annotations.open_world_hint is False
        assert tool.annotations.read_only_hint is (name != "submit_proposal"), name
    assert "description" not in tools["submit_proposal"].input_schema["required"]

    empty: CallToolResult = seen["empty_leaderboard"]
    assert not empty.is_error and empty.structured_content == {"result": []}
    assert next(block.text for block in empty.content if isinstance(block, TextContent)) == "[]"

    assert seen["program"]["version"] == 1 and seen["program"]["text"].startswith("# Research program")
    assert seen["program_v1"] == seen["program"]
    assert (seen["best"]["commit"], seen["best"]["val_bpb"], seen["best"]["train_py"]) == (COMMIT, 1.5, BASE)
    assert "train_py" not in seen["best_short"]
    submitted = seen["submitted"]
    assert (submitted["state"], submitted["created"], submitted["agent"]) == ("queued", True, "http-agent")
    assert store.get(submitted["id"]).description == ""
    assert (seen["again"]["id"], seen["again"]["created"]) == (submitted["id"], False)
    assert (seen["status"]["state"], seen["status"]["reason"]) == ("crashed", "exit code 1")
    assert [e["state"] for e in seen["status"]["events"]] == ["queued", "running", "crashed"]
    assert [item["id"] for item in seen["list"]["items"]] == [submitted["id"]]
    assert seen["log"] == f"# no finished runs yet; proposal {submitted['id']} is crashed\n"
    assert [row["id"] for row in seen["leaderboard"]] == [seen["scored_id"]]

    assert seen["resources"] == RESOURCES
    assert seen["program_md"].contents[0].text == seen["program"]["text"]
    assert seen["best_train_py"].contents[0].text == BASE

    for key in ("escape", "escape_log"):
        assert seen[key].is_error
        assert "is not a proposal id: ids look like p_0123456789abcdef" in text_of(seen[key])
    assert seen["unknown"].is_error
    assert text_of(seen["unknown"]).endswith("Not found (404): no proposal with id 'p_0123456789abcdef'")
    assert seen["bad_state"].is_error and "'queued'" in text_of(seen["bad_state"])
    assert seen["invalid"].is_error and "Candidate is not valid Python (422)" in text_of(seen["invalid"])


async def modern(url: str, token: str) -> dict[str, Any]:
    """The SDK's high-level client, which asks for the newest protocol (one exchange per request, no
    initialize handshake) and falls back to the handshake only for servers that lack it."""
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
    ):
        return {
            "version": client.protocol_version,
            "tools": {tool.name for tool in (await client.list_tools()).tools},
            "best": data_of(await client.call_tool("get_best", {"include_train_py": False})),
            "program_md": (await client.read_resource("autoresearch://program.md")).contents[0],
        }


def test_a_client_of_the_newest_protocol_is_served_too(url: str, store: Store) -> None:
    seen = asyncio.run(asyncio.wait_for(modern(url, agent_token(store)), SESSION_TIMEOUT_S))
    assert seen["version"] in MODERN_PROTOCOL_VERSIONS
    assert seen["tools"] == TOOLS
    assert seen["best"] == {
        "commit": COMMIT,
        "val_bpb": 1.5,
        "proposal_id": None,
        "updated_at": seen["best"]["updated_at"],
        "best_runs": [],  # no run of the best on its fingerprint yet: not re-measured
        "remeasured_bpb": None,
    }
    assert seen["program_md"].text.startswith("# Research program")


def test_each_request_needs_a_known_bearer_token(url: str, store: Store) -> None:
    with httpx.Client(base_url=url) as http:
        for headers in ({}, {"Authorization": "Bearer ar_not-a-token"}, {"Authorization": "Basic YTpi"}):
            response = mcp_wire.post(http, "tools/list", headers=headers)
            assert response.status_code == 401, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["type"] == "urn:autoresearch:problem:unauthorized"
        tools = mcp_wire.call(http, "tools/list", headers={"Authorization": f"Bearer {agent_token(store)}"})
        assert {tool["name"] for tool in tools["tools"]} == TOOLS


def test_an_agent_sees_through_mcp_what_rest_shows_it(url: str, store: Store) -> None:
    store.set_best(Best(commit=COMMIT, val_bpb=1.23456789))
    proposal = stored_proposal(store, "0.005")
    decision = Decision(
        accepted=False,
        rule="test",
        candidate_bpb=1.2345678,
        best_bpb=1.23456789,
        best_commit=COMMIT,
        delta_bpb=-0.00000009,
        reason="no gain: Δ -0.00000009 is within the noise",
        tripwire="passed",
        test_gap_bpb=0.00123456,
        test_candidate_runs=[1.31234567],
    )
    walk(store, proposal.id, State.REJECTED, decision.reason)
    store.update(proposal.id, decision=decision)
    tokens = {"agent": agent_token(store), "admin": ADMIN}
    seen: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=url) as http:
        for role, token in tokens.items():
            headers = {"Authorization": f"Bearer {token}"}
            rest = http.get(f"/v1/proposals/{proposal.id}", headers=headers).json()
            status = mcp_wire.call(
                http,
                "tools/call",
                {"name": "proposal_status", "arguments": {"proposal_id": proposal.id}},
                headers=headers,
            )
            best = mcp_wire.call(http, "tools/call", {"name": "get_best", "arguments": {}}, headers=headers)
            seen[role] = {
                "rest": rest,
                "status": status["structuredContent"],
                "best": best["structuredContent"],
            }
    agent, admin = seen["agent"], seen["admin"]
    assert agent["status"]["decision"] == agent["rest"]["decision"]
    test_figures = {k: v for k, v in agent["status"]["decision"].items() if k.startswith("test_")}
    assert test_figures and not any(test_figures.values()), test_figures  # hidden: models' empty defaults
    assert agent["status"]["decision"]["candidate_bpb"] == 1.2346
    assert agent["best"]["val_bpb"] == 1.2346
    assert admin["status"]["decision"]["test_gap_bpb"] == 0.00123456
    assert admin["status"]["decision"]["candidate_bpb"] == 1.2345678
    assert admin["best"]["val_bpb"] == 1.23456789


def test_no_request_depends_on_an_earlier_one(settings: Settings, store: Store, url: str) -> None:
    """Two controllers on one Redis stand for two processes behind a load balancer: a client that
    initialised with one is served by the other, and neither hands out a session."""
    headers = {"Authorization": f"Bearer {agent_token(store)}"}
    with (
        serve(settings, store) as other_url,
        httpx.Client(base_url=url) as first,
        httpx.Client(base_url=other_url) as second,
    ):
        hello = {
            "protocolVersion": mcp_wire.PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "t"},
        }
        init = mcp_wire.post(first, "initialize", hello, headers=headers)
        assert init.status_code == 200 and "mcp-session-id" not in init.headers
        arguments = {"title": "lr 0.006", "agent": "lb", "train_py": with_lr("0.006")}
        submit = {"name": "submit_proposal", "arguments": arguments}
        proposal_id = mcp_wire.call(second, "tools/call", submit, headers=headers)["structuredContent"]["id"]
        ask = {"name": "proposal_status", "arguments": {"proposal_id": proposal_id}}
        status = mcp_wire.call(first, "tools/call", ask, headers=headers)
    assert status["structuredContent"]["state"] == "queued"
    assert store.get(proposal_id).title == "lr 0.006"
