#!/usr/bin/env bash
# Bring up a local mcp-cluster on loopback and keep it running until Ctrl-C:
#   nats-server -js (store in .run/nats) → auth-service (OAuth server, static-users provider
#   from deploy/local/static-users.json) → 2 session workers → 1 gateway on http://localhost:8788,
#   which is both the MCP resource (/mcp) and the issuer (it forwards the OAuth paths).
# Installs missing tools (scripts/install-deps.sh) and builds the release binaries first.
# Ports can be moved with the variables below, e.g. GATEWAY_PORT=18788 make run.
# NATS_NODES=3 make run: a three-node NATS cluster (client ports NATS_PORT..NATS_PORT+2, stores
# in .run/nats-1..3) with every bucket and stream replicated on all three (NATS_REPLICAS=3):
# kill one node and the cluster keeps serving.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

NATS_PORT="${NATS_PORT:-4222}"
NATS_NODES="${NATS_NODES:-1}"
NATS_CLUSTER_PORT="${NATS_CLUSTER_PORT:-6222}"   # route ports of a cluster: this and the next two
[[ "$NATS_NODES" == 1 || "$NATS_NODES" == 3 ]] || die "NATS_NODES must be 1 or 3"
AUTH_PORT="${AUTH_PORT:-8790}"
AUTH_ADMIN_PORT="${AUTH_ADMIN_PORT:-9791}"
WORKER1_ADMIN_PORT="${WORKER1_ADMIN_PORT:-9790}"
WORKER2_ADMIN_PORT="${WORKER2_ADMIN_PORT:-9792}"
GATEWAY_PORT="${GATEWAY_PORT:-8788}"
GATEWAY_H2C_PORT="${GATEWAY_H2C_PORT:-8789}"
GATEWAY_ADMIN_PORT="${GATEWAY_ADMIN_PORT:-9788}"
TODO_API_PORT="${TODO_API_PORT:-8791}"
READY_TIMEOUT="${READY_TIMEOUT:-60}"   # seconds each component gets to become ready
STOP_TIMEOUT="${STOP_TIMEOUT:-20}"     # seconds each component gets to drain after SIGTERM

bash scripts/install-deps.sh
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "cargo build --release --workspace"
  cargo build --release --workspace
fi
for b in gateway session-worker auth-service todo-api; do
  [[ -x "$RELEASE_DIR/$b" ]] || die "$RELEASE_DIR/$b missing after the build"
done

nats_ports=()
for ((n = 0; n < NATS_NODES; n++)); do nats_ports+=("$((NATS_PORT + n))"); done
((NATS_NODES > 1)) && for ((n = 0; n < NATS_NODES; n++)); do nats_ports+=("$((NATS_CLUSTER_PORT + n))"); done
for p in "${nats_ports[@]}" "$AUTH_PORT" "$AUTH_ADMIN_PORT" "$WORKER1_ADMIN_PORT" "$WORKER2_ADMIN_PORT" \
  "$GATEWAY_PORT" "$GATEWAY_H2C_PORT" "$GATEWAY_ADMIN_PORT" "$TODO_API_PORT"; do
  port_free "$p" || die "port 127.0.0.1:$p is in use (another 'make run'?); set the *_PORT variables to move"
done

mkdir -p "$RUN_DIR/logs"
if ((NATS_NODES > 1)); then
  urls=()
  for ((n = 0; n < NATS_NODES; n++)); do urls+=("nats://127.0.0.1:$((NATS_PORT + n))"); done
  NATS_URL="$(IFS=,; echo "${urls[*]}")"
  export NATS_URL NATS_REPLICAS="$NATS_NODES"
else
  export NATS_URL="nats://127.0.0.1:$NATS_PORT"
fi
# One public origin: the gateway forwards the OAuth paths to the auth-service.
ORIGIN="http://localhost:$GATEWAY_PORT"
export AUTH_ISSUER_URL="$ORIGIN"
export RESOURCE_IDENTIFIER="$ORIGIN/mcp"
export AUTH_UPSTREAM="${AUTH_UPSTREAM:-static}"
export AUTH_STATIC_USERS_FILE="${AUTH_STATIC_USERS_FILE:-$REPO_ROOT/deploy/local/static-users.json}"
# Scopes clients may ask for: "mcp" plus those of the checklist and process tools (stepped up to).
export AUTH_SCOPES="${AUTH_SCOPES:-mcp checklist.list checklist.read process.read process.search}"
# The downstream Todo API (examples/todo-api): the todo tools call it with a token the vault
# issues for the signed-in user (static users) — the seeds' API_IDENTIFIER / API_URL.
export API_IDENTIFIER="${API_IDENTIFIER:-http://127.0.0.1:$TODO_API_PORT/todos}"
export API_URL="${API_URL:-http://127.0.0.1:$TODO_API_PORT}"
export CHECKLIST_DIR="${CHECKLIST_DIR:-$REPO_ROOT/deploy/local/checklists}"
export PROCESS_DIR="${PROCESS_DIR:-$REPO_ROOT/deploy/local/processes}"
# DEVELOPMENT ONLY: a file key also published in the JWKS, so `make token` can mint tokens.
export AUTH_DEV_KEY_FILE="$RUN_DIR/dev-issuer-ed25519.pem"
# The vault and cookie keys are made once and kept beside the NATS store they protect
# (the signing keys in the store are sealed with the vault key).
if [[ ! -f "$RUN_DIR/auth-keys.env" ]]; then
  (umask 077 && "$RELEASE_DIR/auth-service" gen-keys >"$RUN_DIR/auth-keys.env.tmp" && mv "$RUN_DIR/auth-keys.env.tmp" "$RUN_DIR/auth-keys.env")
  log "created $RUN_DIR/auth-keys.env (vault and cookie keys of the local cluster)"
fi
set -a
# shellcheck disable=SC1091
source "$RUN_DIR/auth-keys.env"
set +a

pids=()
names=()
stopping=0
stop_all() {
  ((stopping)) && return
  stopping=1
  trap - INT TERM HUP EXIT
  log "stopping the cluster"
  local i pid
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do   # reverse start order: gateway first, NATS last
    pid="${pids[$i]}"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((STOP_TIMEOUT * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "${names[$i]} (pid $pid) still running ${STOP_TIMEOUT}s after SIGTERM; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  log "stopped; logs are in ${RUN_DIR#"$REPO_ROOT"/}/logs"
}
trap stop_all INT TERM HUP EXIT

# start NAME CMD... — run CMD in the background with its output in .run/logs/NAME.log.
# setsid: each component gets its own process group, so Ctrl-C reaches only this script, which
# then stops the components in order (gateway, workers, issuer, NATS last) and each can drain.
start() {
  local name="$1"; shift
  setsid "$@" >"$RUN_DIR/logs/$name.log" 2>&1 &
  pids+=("$!")
  names+=("$name")
  log "started $name (pid $!)"
}
# ready NAME URL — wait for URL or show the component's log and give up
ready() {
  local name="$1" url="$2" i pid=""
  for i in "${!names[@]}"; do [[ "${names[$i]}" == "$name" ]] && pid="${pids[$i]}"; done
  if ! wait_http "$url" "$READY_TIMEOUT" "$pid"; then
    log "$name is not ready; last lines of its log:"
    tail -n 30 "$RUN_DIR/logs/$name.log" >&2 || true
    exit 1
  fi
  log "$name ready ($url)"
}

if ((NATS_NODES > 1)); then
  routes=""
  for ((n = 0; n < NATS_NODES; n++)); do routes+="${routes:+,}nats://127.0.0.1:$((NATS_CLUSTER_PORT + n))"; done
  for ((n = 0; n < NATS_NODES; n++)); do
    mkdir -p "$RUN_DIR/nats-$((n + 1))"
    start "nats-$((n + 1))" "$NATS_SERVER_BIN" -a 127.0.0.1 -p "$((NATS_PORT + n))" -js -sd "$RUN_DIR/nats-$((n + 1))" \
      -n "mcp-cluster-local-$((n + 1))" --cluster_name mcp-cluster-local \
      --cluster "nats://127.0.0.1:$((NATS_CLUSTER_PORT + n))" --routes "$routes"
  done
  for ((n = 0; n < NATS_NODES; n++)); do
    wait_port 127.0.0.1 "$((NATS_PORT + n))" "$READY_TIMEOUT" "${pids[$n]}" \
      || { tail -n 30 "$RUN_DIR/logs/nats-$((n + 1)).log" >&2; exit 1; }
  done
  # Buckets can be created once every node knows the JetStream metadata leader.
  for ((t = 0; t < READY_TIMEOUT * 10; t++)); do
    elected=0
    for ((n = 1; n <= NATS_NODES; n++)); do grep -q "metadata leader" "$RUN_DIR/logs/nats-$n.log" && elected=$((elected + 1)); done
    ((elected == NATS_NODES)) && break
    sleep 0.1
  done
  ((elected == NATS_NODES)) || die "the NATS cluster elected no JetStream leader in ${READY_TIMEOUT}s (see .run/logs/nats-*.log)"
  log "nats cluster ready ($NATS_URL, every bucket on $NATS_REPLICAS nodes)"
else
  mkdir -p "$RUN_DIR/nats"
  start nats "$NATS_SERVER_BIN" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$RUN_DIR/nats" -n mcp-cluster-local
  wait_port 127.0.0.1 "$NATS_PORT" "$READY_TIMEOUT" "${pids[0]}" || { tail -n 30 "$RUN_DIR/logs/nats.log" >&2; exit 1; }
  log "nats ready ($NATS_URL)"
fi

AUTH_LISTEN="127.0.0.1:$AUTH_PORT" AUTH_ADMIN_LISTEN="127.0.0.1:$AUTH_ADMIN_PORT" \
  start auth-service "$RELEASE_DIR/auth-service"
ready auth-service "http://127.0.0.1:$AUTH_ADMIN_PORT/readyz"

TODO_API_LISTEN="127.0.0.1:$TODO_API_PORT" TODO_API_ISSUERS="$ORIGIN" \
  start todo-api "$RELEASE_DIR/todo-api"
ready todo-api "http://127.0.0.1:$TODO_API_PORT/healthz"

WORKER_ID=worker-1 WORKER_ADMIN_LISTEN="127.0.0.1:$WORKER1_ADMIN_PORT" \
  start worker-1 "$RELEASE_DIR/session-worker"
WORKER_ID=worker-2 WORKER_ADMIN_LISTEN="127.0.0.1:$WORKER2_ADMIN_PORT" \
  start worker-2 "$RELEASE_DIR/session-worker"

GATEWAY_LISTEN="127.0.0.1:$GATEWAY_PORT" GATEWAY_ADMIN_LISTEN="127.0.0.1:$GATEWAY_ADMIN_PORT" \
  GATEWAY_H2C_LISTEN="127.0.0.1:$GATEWAY_H2C_PORT" \
  ALLOWED_ISSUERS="$ORIGIN" AUTHORIZATION_SERVERS="$ORIGIN" \
  GATEWAY_AUTH_UPSTREAM="http://127.0.0.1:$AUTH_PORT" \
  start gateway "$RELEASE_DIR/gateway"

ready worker-1 "http://127.0.0.1:$WORKER1_ADMIN_PORT/readyz"
ready worker-2 "http://127.0.0.1:$WORKER2_ADMIN_PORT/readyz"
ready gateway "http://127.0.0.1:$GATEWAY_ADMIN_PORT/readyz"

token="$(bash scripts/mint-token.sh alice)"
printf '%s\n' "$token" >"$RUN_DIR/dev-token"
url="http://localhost:$GATEWAY_PORT/mcp"

cat <<EOF

  mcp-cluster is running: $url
  (NATS $NATS_URL, auth-service :$AUTH_PORT behind the gateway, workers :$WORKER1_ADMIN_PORT :$WORKER2_ADMIN_PORT,
   Todo API :$TODO_API_PORT, logs in .run/logs/)

  Tools: add, whoAmI, count (a counter in your session), notes (your notes, in every session and
  protocol revision), generateImage (alice has the image_generation permission, bob has not),
  listTodos/addTodo/completeTodo/deleteTodo (the Todo API, with a token the client never sees),
  list_checklists/get_checklist/list_processes/get_process/search_processes (their scopes are
  asked for on first use: the client authorizes again).

  Connect with OAuth (the client registers itself, you approve it and sign in):
    sample users (deploy/local/static-users.json):  alice / alice-dev-password   bob / bob-dev-password

  Claude Code:
    claude mcp add --transport http mcp-cluster $url
    then /mcp in Claude Code → mcp-cluster → Authenticate: a browser opens the consent page and the sign-in.

  MCP Inspector UI (needs Node >= 22.19): npx @modelcontextprotocol/inspector
    Transport "Streamable HTTP", URL $url, then "Open Auth Settings" → "Quick OAuth Flow".

  Without a browser — DEVELOPMENT ONLY token minted with the local dev key for "alice",
  valid ${TOKEN_TTL:-3600}s ('make token' mints a fresh one; never publish a dev key in production):
    $token
  MCP Inspector CLI (installed by this repo, Node 22):
    scripts/inspector-cli.sh --cli $url --transport http \\
        --header "Authorization: Bearer \$(cat .run/dev-token)" \\
        --method tools/call --tool-name add --tool-arg a=1 b=2

  Legacy HTTP+SSE clients: http://localhost:$GATEWAY_PORT/sse
  HTTP/2 without TLS (what a proxy in front would speak): http://localhost:$GATEWAY_H2C_PORT/mcp
    curl --http2-prior-knowledge http://localhost:$GATEWAY_H2C_PORT/mcp -H "Authorization: Bearer \$(cat .run/dev-token)" \
        -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
        -d '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}'

  Press Ctrl-C to stop.
EOF

# Run until Ctrl-C. A component that dies is reported and the rest keep running — kill a
# worker (kill -9 <pid>) and its sessions are served by the other: the cluster's failover;
# with NATS_NODES=3, kill a NATS node and the services move to the others.
for i in "${!names[@]}"; do log "${names[$i]}: pid ${pids[$i]}"; done
reported=()
declare -A status=()
while true; do
  live=()
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      live+=("${pids[$i]}")
    elif [[ " ${reported[*]} " != *" $i "* ]]; then
      reported+=("$i")
      log "${names[$i]} exited (status ${status[${pids[$i]}]:-?}); the rest of the cluster keeps running. Last lines of its log:"
      tail -n 10 "$RUN_DIR/logs/${names[$i]}.log" >&2 || true
    fi
  done
  ((stopping)) && break
  if ((${#live[@]} == 0)); then
    log "every component has exited"
    exit 1
  fi
  set +e
  died=""
  wait -n -p died "${live[@]}"
  rc=$?
  set -e
  [[ -n "${died:-}" ]] && status[$died]=$rc
  ((stopping)) && break
done
