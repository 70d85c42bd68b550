"""The `autoresearch` command line (main.py) and the HTTP client it shares with the MCP server."""

from services.cli.main import main

__all__ = ["main"]
