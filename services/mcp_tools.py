"""The service's operations as MCP tools and resources, defined once for both transports.

    stdio   `autoresearch-mcp` (services/cli/mcp_server.py): one process, one token, the HTTP API over
            the network through the CLI's client
    HTTP    `/mcp` on the controller (services/controller/mcp_http.py): each request carries its own
            bearer token, and each tool calls the controller's own REST routes in-process with it

Either way a tool is a REST call made with the caller's token, so a token sees and does through MCP
exactly what it may through REST (the controller's auth and disclosure decide, never this module).
What a transport provides is an `Api`, chosen per request by `api_for(request)` (the HTTP request, or
None on stdio); a server middleware binds it for the duration of each request.

Tool arguments are checked here before they reach a URL: ids must have the form the API issues, and
every path segment is quoted. Refusals become tool errors (`isError`) whose text says what to fix.
"""

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import metadata
from typing import Annotated, Any, Protocol
from urllib.parse import quote

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from services.cli.client import ClientError
from services.models import PROPOSAL_ID_PATTERN
from services.states import State

SERVER_NAME = "autoresearch"
PACKAGE = "autoresearch-service"
INSTRUCTIONS = """\
You improve trainer/train.py of an autoresearch service. Read the instructions with get_program and
the current best trainer with get_best; look at leaderboard and list_proposals for what was tried.
Submit one idea per proposal with submit_proposal (a unified diff of trainer/train.py against the
best, or the whole file), passing the program_version you read. Each proposal trains for a fixed
budget and is scored by a trusted evaluator; follow it with proposal_status until its state is final
(merged, rejected, or a failure whose log proposal_log shows)."""
MAX_LIST = 200  # rows a listing tool returns at most (the API's default page cap)
PROGRAM_URI = "autoresearch://program.md"
BEST_TRAIN_PY_URI = "autoresearch://best/train.py"

_PROPOSAL_ID = re.compile(PROPOSAL_ID_PATTERN)

# What MCP clients may assume about each tool: every tool but submit only reads; none reaches beyond
# this service. A repeated submit of the same change returns the first proposal (deduplicated).
READ_ONLY = ToolAnnotations(
    readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False
)
SUBMIT = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True, openWorldHint=False)


class Api(Protocol):
    """The HTTP API as the tools use it; every method raises `ClientError` when the call fails."""

    async def get(self, path: str, **params: Any) -> Any:
        """The JSON answer of a GET (parameters that are None are left out)."""

    async def text(self, path: str) -> str:
        """The text answer of a GET."""

    async def submit(self, body: dict[str, Any], idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        """POST /v1/proposals: (the proposal, whether it was created now)."""


ApiFor = Callable[[Any], Api]  # the transport's request (None on stdio) -> the Api to call with

_current: ContextVar[Api] = ContextVar("autoresearch_mcp_api")


def server_version() -> str:
    """The installed package's version (what `initialize` reports as the server's version)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def build_server(api_for: ApiFor) -> MCPServer:
    async def bind_api(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        token = _current.set(api_for(ctx.request))
        try:
            return await call_next(ctx)
        finally:
            _current.reset(token)

    server = MCPServer(
        SERVER_NAME, instructions=INSTRUCTIONS, version=server_version(), middleware=[bind_api]
    )
    _add_tools(server)
    _add_resources(server)
    return server


def _api() -> Api:
    return _current.get()


@contextmanager
def _refusals_as(error: type[ToolError] | type[ResourceError]) -> Iterator[None]:
    """A failed API call becomes the tool's (or resource's) error, with the controller's problem text."""
    try:
        yield
    except ClientError as exc:
        raise error(str(exc)) from exc


def _proposal_path(proposal_id: str, *rest: str) -> str:
    if not _PROPOSAL_ID.fullmatch(proposal_id):
        raise ToolError(
            f"proposal_id {proposal_id[:80]!r} is not a proposal id: ids look like p_0123456789abcdef "
            "(submit_proposal and list_proposals return them)"
        )
    return "/".join(["/v1/proposals", quote(proposal_id, safe=""), *rest])


def _listing(rows: list[dict[str, Any]], empty: str) -> CallToolResult:
    """A list as structured content (`result`) and as JSON text; an empty list says so in words too,
    since some clients show no text for an empty content list."""
    content = [TextContent(type="text", text=json.dumps(rows, indent=2))]
    if not rows:
        content.append(TextContent(type="text", text=empty))
    return CallToolResult(content=content, structured_content={"result": rows})


def _summary(p: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "state", "reason", "title", "agent", "base_commit", "program_version", "val_bpb")
    return {k: p.get(k) for k in keys} | {"merged_commit": p.get("merged_commit")}


ProposalId = Annotated[
    str,
    # The pattern is published in the schema and checked in the tool, which says what is wrong.
    Field(
        description="a proposal's id, e.g. p_0123456789abcdef",
        json_schema_extra={"pattern": PROPOSAL_ID_PATTERN},
    ),
]
Limit = Annotated[int, Field(ge=1, le=MAX_LIST, description=f"rows to return, 1 to {MAX_LIST}")]


def _add_tools(server: MCPServer) -> None:
    @server.tool(title="Submit a proposal", annotations=SUBMIT)
    async def submit_proposal(
        title: Annotated[str, Field(description="one line: what the change is")],
        agent: Annotated[str, Field(description="who proposes it (your name as an agent)")],
        description: Annotated[str, Field(description="why it should help")] = "",
        diff: Annotated[
            str | None, Field(description="a unified diff of trainer/train.py against the base")
        ] = None,
        train_py: Annotated[str | None, Field(description="the whole candidate trainer/train.py")] = None,
        base_commit: Annotated[str | None, Field(description="default: the current best commit")] = None,
        program_version: Annotated[
            int | None, Field(description="the program.md version you worked from (get_program)")
        ] = None,
        idempotency_key: Annotated[
            str | None, Field(description="retries with the same key get the first answer")
        ] = None,
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
        with _refusals_as(ToolError):
            proposal, created = await _api().submit(body, idempotency_key)
        return {**_summary(proposal), "created": created}

    @server.tool(title="Proposal status", annotations=READ_ONLY)
    async def proposal_status(proposal_id: ProposalId) -> dict[str, Any]:
        """A proposal's state, score, decision (with its numbers) and history of transitions."""
        path = _proposal_path(proposal_id)
        with _refusals_as(ToolError):
            proposal = await _api().get(path)
        return {
            **_summary(proposal),
            "decision": proposal.get("decision"),
            "runs": [
                {k: r.get(k) for k in ("seed", "state", "reason", "val_bpb", "steps", "training_s")}
                for r in proposal.get("results", [])
            ],
            "events": proposal.get("events", []),
        }

    @server.tool(title="Best trainer", annotations=READ_ONLY)
    async def get_best(include_train_py: bool = True) -> dict[str, Any]:
        """The research branch head: commit, val_bpb (as recorded at its merge), the proposal it came
        from, its runs since and their mean (best_runs, remeasured_bpb), and its train.py (the base to
        write a diff against)."""
        with _refusals_as(ToolError):
            best: dict[str, Any] = await _api().get("/v1/best")
        if not include_train_py:
            best.pop("train_py", None)
        return best

    @server.tool(title="Leaderboard", annotations=READ_ONLY)
    async def leaderboard(limit: Limit = 20) -> Annotated[CallToolResult, list[dict[str, Any]]]:
        """Scored proposals, lowest (best) val_bpb first, with delta against the best at decision."""
        with _refusals_as(ToolError):
            rows: list[dict[str, Any]] = await _api().get("/v1/leaderboard", limit=limit)
        return _listing(rows, "no scored proposals yet")

    @server.tool(title="Program", annotations=READ_ONLY)
    async def get_program(
        version: Annotated[int | None, Field(ge=1, description="default: the current version")] = None,
    ) -> dict[str, Any]:
        """program.md, the instructions to agents: the current version (or a given one), its text and
        its version number (pass that number as program_version when submitting)."""
        path = "/v1/program" if version is None else f"/v1/program/versions/{version}"
        with _refusals_as(ToolError):
            program = await _api().get(path)
        return {k: program.get(k) for k in ("version", "text", "author", "message")}

    @server.tool(title="List proposals", annotations=READ_ONLY)
    async def list_proposals(
        state: Annotated[State | None, Field(description="only proposals in this state")] = None,
        limit: Limit = 20,
        offset: Annotated[int, Field(ge=0, description="proposals to skip, newest first")] = 0,
    ) -> dict[str, Any]:
        """Proposals newest first (`items`, with `total`), optionally in one state (queued, running,
        evaluating, confirming, accepted, merged, rejected, crashed, timed_out, oom, voided,
        infra_error, cancelled)."""
        with _refusals_as(ToolError):
            page: dict[str, Any] = await _api().get("/v1/proposals", state=state, limit=limit, offset=offset)
        return page

    @server.tool(title="Proposal log", annotations=READ_ONLY)
    async def proposal_log(proposal_id: ProposalId) -> str:
        """The kept log tail of each finished run of a proposal (why it crashed, timed out, ...)."""
        path = _proposal_path(proposal_id, "log")
        with _refusals_as(ToolError):
            return await _api().text(path)


def _add_resources(server: MCPServer) -> None:
    @server.resource(
        PROGRAM_URI,
        name="program.md",
        title="Research program",
        description="program.md, the current instructions to agents (get_program gives its version)",
        mime_type="text/markdown",
    )
    async def program_md() -> str:
        with _refusals_as(ResourceError):
            program = await _api().get("/v1/program")
        return str(program["text"])

    @server.resource(
        BEST_TRAIN_PY_URI,
        name="train.py",
        title="Best train.py",
        description="trainer/train.py at the head of the research branch (the base for a diff)",
        mime_type="text/x-python",
    )
    async def best_train_py() -> str:
        with _refusals_as(ResourceError):
            return await _api().text("/v1/best/train.py")
