#!/usr/bin/env bash
# Claude Code adds the controller's /mcp over HTTP and reports it connected, with nothing beyond
# loopback (tests/integration/claude_code_check.py says how). Run from anywhere in the checkout after
# `make setup`:
#
#   tests/integration/claude_code.sh
#
# Claude Code: $CLAUDE if set, else `claude` on PATH, else the npm package @anthropic-ai/claude-code
# installed (once) into $CLAUDE_CODE_PREFIX, default ~/.cache/autoresearch/claude-code (this needs
# node, npm and the npm registry; the check itself does not).
set -euo pipefail
cd "$(dirname "$0")/../.."

prefix=${CLAUDE_CODE_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/autoresearch/claude-code}
claude=${CLAUDE:-$(command -v claude || true)}
if [[ -z $claude ]]; then
    if [[ ! -x $prefix/node_modules/.bin/claude ]]; then
        command -v npm >/dev/null || { echo "npm is not installed: install Node.js, or set CLAUDE" >&2; exit 2; }
        npm install --prefix "$prefix" --no-audit --no-fund @anthropic-ai/claude-code
    fi
    claude=$prefix/node_modules/.bin/claude
fi
echo "# Claude Code $("$claude" --version)"
rc=0
.venv/bin/python -m tests.integration.claude_code_check --claude "$claude" --loopback-only || rc=$?
if [[ $rc -eq 3 ]]; then
    echo "# no network namespace here: checking on this host's network instead"
    exec .venv/bin/python -m tests.integration.claude_code_check --claude "$claude"
fi
exit $rc
