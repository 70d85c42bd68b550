"""What the MCP tests share: the tools the server lists, and reading a tool's result."""

import json
from typing import Any

from mcp.types import CallToolResult, TextContent

TOOLS = {
    "submit_proposal",
    "proposal_status",
    "get_best",
    "leaderboard",
    "get_program",
    "list_proposals",
    "proposal_log",
}
SESSION_TIMEOUT_S = 60


def text_of(result: CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, TextContent))


def data_of(result: CallToolResult) -> Any:
    assert not result.is_error, text_of(result)
    if result.structured_content is not None:
        structured = result.structured_content
        return structured.get("result", structured) if set(structured) == {"result"} else structured
    return json.loads(text_of(result))
