"""The light install: a fresh virtual environment holding only `pip install .` (the package's base
dependencies) runs the CLI and the stdio MCP server, and has none of the server's dependencies."""

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from services.store import Store
from tests.support.live_server import agent_token
from tests.support.mcp_client import SESSION_TIMEOUT_S, TOOLS, data_of

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Import names of what only the services need (fastapi, Redis, RQ, Docker, git, torch, metrics, settings,
# the controller's HTTP parser and event loop, Redis's reply parser, the store's compressor)
SERVER_ONLY = (
    "fastapi", "redis", "rq", "docker", "git", "torch", "prometheus_client", "pydantic_settings",
    "httptools", "uvloop", "hiredis", "isal",
)  # fmt: skip
INSTALL_TIMEOUT_S = 900  # hang guard for venv + pip (downloads on a cold cache)


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with only the light install, built from a copy of the package (a build in the checkout
    would leave build/ behind)."""
    root = tmp_path_factory.mktemp("light")
    source = root / "source"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copytree(REPO / "services", source / "services", ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    for command in (
        [sys.executable, "-m", "venv", str(venv)],
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(source),
        ],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
        assert done.returncode == 0, f"{command[2:]} failed:\n{(done.stdout + done.stderr)[-4000:]}"
    return venv


def test_the_light_install_has_none_of_the_server_dependencies(light_venv: Path) -> None:
    # -I: not the working directory (the checkout has a docker/ folder) nor PYTHON* variables
    probe = f"import importlib.util; print(*[m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m)])"
    found = subprocess.run(
        [str(light_venv / "bin" / "python"), "-I", "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert found.stdout.split() == []


def test_the_light_install_runs_the_cli(light_venv: Path) -> None:
    done = subprocess.run(
        [str(light_venv / "bin" / "autoresearch"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "submit" in done.stdout and "leaderboard" in done.stdout


async def list_and_call(command: Path, url: str, token: str) -> tuple[set[str], dict[str, object]]:
    params = StdioServerParameters(
        command=str(command), env={"AUTORESEARCH_URL": url, "AUTORESEARCH_TOKEN": token}
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = {tool.name for tool in (await session.list_tools()).tools}
        program = data_of(await session.call_tool("get_program", {}))
    return tools, program


def test_the_light_install_serves_mcp_over_stdio(light_venv: Path, url: str, store: Store) -> None:
    command = light_venv / "bin" / "autoresearch-mcp"
    tools, program = asyncio.run(
        asyncio.wait_for(list_and_call(command, url, agent_token(store)), SESSION_TIMEOUT_S)
    )
    assert tools == TOOLS
    assert program["version"] == 1
