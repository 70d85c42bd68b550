"""What the test suites share, so that no test module imports another: fakes of our own interfaces
(`fakes`), the service in one process (`service`, `stack`, `worker_group`), a live controller
(`live_server`), the API and MCP clients' helpers (`api`, `mcp_client`, `mcp_wire`), data
(`sandbox_data`, `trainer`), the hostile harness (`hostile`), and small tools (`net`, `walk`)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
