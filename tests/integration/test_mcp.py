"""The MCP server, spawned over stdio by the MCP Python SDK's client, against a running controller
(uvicorn in a thread, real Redis): the tools are listed and each one does what it says."""

import asyncio
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from mcp import ClientSession, StdioServerParameters, stdio_client

from services.patches import canonical_diff
from services.states import State
from services.store import Store
from tests.support.live_server import BASE, COMMIT, agent_token, with_lr
from tests.support.mcp_client import SESSION_TIMEOUT_S, TOOLS, data_of, text_of
from tests.support.walk import walk

REPO = Path(__file__).resolve().parents[2]


async def session_run(url: str, token: str, store: Store) -> dict[str, Any]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "services.cli.mcp_server"],
        env={"AUTORESEARCH_URL": url, "AUTORESEARCH_TOKEN": token},
        cwd=REPO,
    )
    seen: dict[str, Any] = {}
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        seen["init"] = await session.initialize()
        seen["tools"] = {tool.name for tool in (await session.list_tools()).tools}

        program = data_of(await session.call_tool("get_program", {}))
        seen["program"] = program
        best = data_of(await session.call_tool("get_best", {}))
        seen["best"] = best
        diff = canonical_diff(best["train_py"], with_lr("0.004"))
        submitted = data_of(
            await session.call_tool(
                "submit_proposal",
                {
                    "title": "lr 0.004",
                    "description": "faster",
                    "agent": "mcp-agent",
                    "diff": diff,
                    "program_version": program["version"],
                },
            )
        )
        seen["submitted"] = submitted
        again = data_of(
            await session.call_tool("submit_proposal", {"title": "again", "agent": "mcp-agent", "diff": diff})
        )
        seen["again"] = again
        walk(store, submitted["id"], State.CRASHED, "exit code 1")
        seen["status"] = data_of(await session.call_tool("proposal_status", {"proposal_id": submitted["id"]}))
        seen["list"] = data_of(await session.call_tool("list_proposals", {"state": "crashed"}))
        seen["log"] = text_of(await session.call_tool("proposal_log", {"proposal_id": submitted["id"]}))
        seen["leaderboard"] = await session.call_tool("leaderboard", {"limit": 5})
        seen["missing"] = await session.call_tool("proposal_status", {"proposal_id": "p_0123456789abcdef"})
        seen["escape"] = await session.call_tool("proposal_status", {"proposal_id": "../best"})
        seen["invalid"] = await session.call_tool(
            "submit_proposal", {"title": "t", "description": "", "agent": "a", "train_py": "def broken(:\n"}
        )
    return seen


def test_mcp_tools_against_a_running_controller(url: str, store: Store) -> None:
    token = agent_token(store, "mcp")
    seen = asyncio.run(asyncio.wait_for(session_run(url, token, store), SESSION_TIMEOUT_S))
    assert seen["tools"] == TOOLS
    assert seen["init"].server_info.version == metadata.version("autoresearch-service")
    assert seen["program"]["version"] == 1 and seen["program"]["text"].startswith("# Research program")
    assert (seen["best"]["commit"], seen["best"]["val_bpb"], seen["best"]["train_py"]) == (COMMIT, 1.5, BASE)
    submitted = seen["submitted"]
    assert (submitted["state"], submitted["created"], submitted["program_version"]) == ("queued", True, 1)
    stored = store.get(submitted["id"])
    assert (stored.agent, stored.train_py) == ("mcp-agent", with_lr("0.004"))
    assert (seen["again"]["id"], seen["again"]["created"]) == (submitted["id"], False)
    status = seen["status"]
    assert (status["state"], status["reason"]) == ("crashed", "exit code 1")
    assert [e["state"] for e in status["events"]] == ["queued", "running", "crashed"]
    assert [item["id"] for item in seen["list"]["items"]] == [submitted["id"]]
    assert seen["log"] == f"# no finished runs yet; proposal {submitted['id']} is crashed\n"
    assert data_of(seen["leaderboard"]) == [] and text_of(seen["leaderboard"]).startswith("[]")
    assert seen["missing"].is_error
    assert text_of(seen["missing"]).endswith("Not found (404): no proposal with id 'p_0123456789abcdef'")
    assert seen["escape"].is_error and "'../best' is not a proposal id" in text_of(seen["escape"])
    assert seen["invalid"].is_error
    assert "Candidate is not valid Python (422)" in text_of(seen["invalid"])
