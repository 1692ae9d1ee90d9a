#!/usr/bin/env bash
# Run the MCP Inspector CLI (npm @modelcontextprotocol/inspector-cli, installed by
# scripts/install-deps.sh) with Node 22 first on PATH. Arguments go to the CLI unchanged, e.g.
#   scripts/inspector-cli.sh --cli http://localhost:8788/mcp --transport http \
#       --header "Authorization: Bearer $(scripts/mint-token.sh)" --method tools/list
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ -f "$INSPECTOR_CLI_JS" ]] || die "Inspector CLI not installed: run scripts/install-deps.sh"
export PATH="$NODE22_BIN_DIR:$PATH"
# inspector-cli 1.0.3 checks fs.existsSync("../package.json") against the working directory but
# imports it relative to its own module, so it only starts from a directory whose parent holds a
# package.json. Its own build/ directory is one; paths in arguments must then be absolute.
cd "$(dirname "$INSPECTOR_CLI_JS")"
exec node "$INSPECTOR_CLI_JS" "$@"
