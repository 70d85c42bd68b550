"""`autoresearch-mcp`: the service's operations as MCP tools, over stdio, for Claude Code, Codex and
other MCP clients.

It is a thin client of the HTTP API (services.cli.client), never of Redis: it runs wherever the agent
runs, with the agent's own token, and the controller enforces everything as for any other caller.
URL and token come from --url/--token or AUTORESEARCH_URL/AUTORESEARCH_TOKEN. A failed call comes
back as a tool error whose text is the controller's problem detail (what to fix).

    claude mcp add autoresearch -e AUTORESEARCH_URL=http://gpu-box:8000 \\
        -e AUTORESEARCH_TOKEN=ar_... -- autoresearch-mcp
"""

import argparse
import logging
import os
from collections.abc import Sequence
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from services.cli.client import DEFAULT_URL, ApiClient, ClientError

INSTRUCTIONS = """\
You improve trainer/train.py of an autoresearch service. Read the instructions with get_program and
the current best trainer with get_best; look at leaderboard and list_proposals for what was tried.
Submit one idea per proposal with submit_proposal (a unified diff of trainer/train.py against the
best, or the whole file), passing the program_version you read. Each proposal trains for a fixed
budget and is scored by a trusted evaluator; follow it with proposal_status until its state is final
(merged, rejected, or a failure whose log proposal_log shows)."""
MAX_LIST = 200  # rows a listing tool returns at most (the API's default page cap)


def build_server(client: ApiClient) -> MCPServer:
    server = MCPServer("autoresearch", instructions=INSTRUCTIONS)

    def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            raise ToolError(str(exc)) from exc

    @server.tool()
    def submit_proposal(
        title: str,
        description: str,
        agent: str,
        diff: str | None = None,
        train_py: str | None = None,
        base_commit: str | None = None,
        program_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit a change to trainer/train.py: exactly one of `diff` (a unified diff against the base,
        default the current best) or `train_py` (the whole file). Returns the proposal's id and state;
        `created` is false when the same change was submitted before (that proposal is returned)."""
        body: dict[str, Any] = {"title": title, "description": description, "agent": agent}
        optional = {
            "diff": diff,
            "train_py": train_py,
            "base_commit": base_commit,
            "program_version": program_version,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        proposal, created = call(client.submit, body, idempotency_key)
        return {**_summary(proposal), "created": created}

    @server.tool()
    def proposal_status(proposal_id: str) -> dict[str, Any]:
        """A proposal's state, score, decision (with its numbers) and history of transitions."""
        proposal = call(client.get, f"/v1/proposals/{proposal_id}")
        return {
            **_summary(proposal),
            "decision": proposal["decision"],
            "runs": [
                {k: r.get(k) for k in ("seed", "state", "reason", "val_bpb", "steps", "training_s")}
                for r in proposal["results"]
            ],
            "events": proposal["events"],
        }

    @server.tool()
    def get_best(include_train_py: bool = True) -> dict[str, Any]:
        """The research branch head: commit, val_bpb, the proposal it came from, and its train.py
        (the base to write a diff against)."""
        best: dict[str, Any] = call(client.get, "/v1/best")
        if not include_train_py:
            best.pop("train_py", None)
        return best

    @server.tool()
    def leaderboard(limit: int = 20) -> list[dict[str, Any]]:
        """Scored proposals, lowest (best) val_bpb first, with delta against the best at decision."""
        rows: list[dict[str, Any]] = call(client.get, "/v1/leaderboard", limit=min(max(limit, 1), MAX_LIST))
        return rows

    @server.tool()
    def get_program(version: int | None = None) -> dict[str, Any]:
        """program.md, the instructions to agents: the current version (or a given one), its text and
        its version number (pass that number as program_version when submitting)."""
        path = "/v1/program" if version is None else f"/v1/program/versions/{version}"
        program = call(client.get, path)
        return {k: program[k] for k in ("version", "text", "author", "message")}

    @server.tool()
    def list_proposals(state: str | None = None, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        """Proposals newest first, optionally in one state (queued, running, evaluating, confirming,
        accepted, merged, rejected, crashed, timed_out, oom, voided, infra_error, cancelled)."""
        page: dict[str, Any] = call(
            client.get, "/v1/proposals", state=state, limit=min(max(limit, 1), MAX_LIST), offset=offset
        )
        return page

    @server.tool()
    def proposal_log(proposal_id: str) -> str:
        """The kept log tail of each finished run of a proposal (why it crashed, timed out, ...)."""
        text: str = call(client.text, f"/v1/proposals/{proposal_id}/log")
        return text

    return server


def _summary(p: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "state", "reason", "title", "agent", "base_commit", "program_version", "val_bpb")
    return {k: p.get(k) for k in keys} | {"merged_commit": p.get("merged_commit")}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="autoresearch-mcp", description="MCP server (stdio) for autoresearch")
    p.add_argument("--url", default=os.environ.get("AUTORESEARCH_URL", DEFAULT_URL))
    p.add_argument("--token", default=os.environ.get("AUTORESEARCH_TOKEN"))
    args = p.parse_args(argv)
    if not args.token:
        p.error("no token: pass --token or set AUTORESEARCH_TOKEN")
    with ApiClient(args.url, args.token) as client:
        server = build_server(client)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request on the client's log
        server.run("stdio")


if __name__ == "__main__":
    main()
