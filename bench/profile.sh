#!/usr/bin/env bash
# bench/profile.sh — where the cluster's CPU goes on the `tools/call` path, next to the in-process
# rmcp server doing the same calls: CPU time per call of each process, and `perf` profiles.
#
#   bash bench/profile.sh            # PROFILE_CONCURRENCY=16, PROFILE_DURATION=10 s
#
# Starts a throwaway cluster (nats-server, auth-service, one session-worker, one gateway; bench/lib.sh)
# and rmcp_nodelay (the in-process baseline of bench/run.sh). For each, target/release/loadgen
# drives `add` for 2 s of warm-up, then PROFILE_DURATION s measured while `perf record -g` samples
# every process of that target. Output in bench/results/profile-<stamp>/: summary.txt (calls/s,
# CPU µs per call by process), <process>.perf.txt (`perf report`, self time by symbol) and the
# perf.data files. Needs `perf` (linux-perf) and a release build with debug info (the workspace's
# release profile has it).
set -euo pipefail
# shellcheck source=scripts/lib.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$REPO_ROOT"

CONCURRENCY="${PROFILE_CONCURRENCY:-16}"
DURATION="${PROFILE_DURATION:-10}"
FREQ="${PROFILE_FREQ:-1999}"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out_dir="$REPO_ROOT/bench/results/profile-$stamp"
mkdir -p "$out_dir/logs" "$out_dir/nats"
[[ -x "$NATS_SERVER_BIN" ]] || NATS_SERVER_BIN="$(command -v nats-server || true)"
command -v perf >/dev/null || die "perf is needed (Debian: linux-perf)"
for b in gateway session-worker auth-service rmcp_nodelay loadgen; do
  [[ -x "$RELEASE_DIR/$b" ]] || die "$RELEASE_DIR/$b missing: build with 'cargo build --release --workspace'"
done
# shellcheck source=bench/lib.sh disable=SC1091
source "$REPO_ROOT/bench/lib.sh"

summary="$out_dir/summary.txt"
hz="$(getconf CLK_TCK)"

# measure LABEL URL TOKEN NAME=PID... — warm up, then load and perf at once; CPU per call per process
measure() {
  local label="$1" url="$2" tok="$3"; shift 3
  local procs=("$@") p name pid before=() after=() perf_pids=()
  BENCH_TOKEN="$tok" "$RELEASE_DIR/loadgen" --url "$url" --concurrency "$CONCURRENCY" --duration 2 --warmup 0 \
    --label warmup >/dev/null 2>>"$out_dir/logs/loadgen.log"
  for p in "${procs[@]}"; do before+=("$(cpu_ticks "${p#*=}")"); done
  for p in "${procs[@]}"; do
    name="${p%%=*}"; pid="${p#*=}"
    perf record -F "$FREQ" -g -p "$pid" -o "$out_dir/$label-$name.perf.data" -- sleep "$((DURATION + 1))" \
      >/dev/null 2>>"$out_dir/logs/perf.log" &
    perf_pids+=("$!")
  done
  local out
  out="$(BENCH_TOKEN="$tok" "$RELEASE_DIR/loadgen" --url "$url" --concurrency "$CONCURRENCY" --duration "$DURATION" \
    --warmup 0 --label "$label" 2>>"$out_dir/logs/loadgen.log" | tail -n 1)"
  for p in "${procs[@]}"; do after+=("$(cpu_ticks "${p#*=}")"); done
  for pid in "${perf_pids[@]}"; do wait "$pid" || true; done
  local requests rps i total=0 line
  requests="$(jq '.requests' <<<"$out")"; rps="$(jq '.rps' <<<"$out")"
  line="$(printf '%-8s calls/s %8.0f  cpu µs/call:' "$label" "$rps")"
  for i in "${!procs[@]}"; do
    local ticks=$(( after[i] - before[i] ))
    total=$(( total + ticks ))
    line+="$(awk -v t="$ticks" -v hz="$hz" -v n="$requests" -v name="${procs[$i]%%=*}" \
      'BEGIN { printf "  %s %.1f", name, t * 1e6 / hz / n }')"
  done
  line+="$(awk -v t="$total" -v hz="$hz" -v n="$requests" 'BEGIN { printf "  total %.1f", t * 1e6 / hz / n }')"
  echo "$line" | tee -a "$summary"
  for p in "${procs[@]}"; do
    name="${p%%=*}"
    perf report -i "$out_dir/$label-$name.perf.data" --no-children --sort dso,symbol --percent-limit 0.5 \
      --stdio 2>/dev/null | grep -v '^$' | head -n 120 >"$out_dir/$label-$name.perf.txt" || true
  done
}

log "in-process rmcp server"
inproc_port="$(free_port)"
start inproc "$RELEASE_DIR/rmcp_nodelay" --listen "127.0.0.1:$inproc_port"
wait_port 127.0.0.1 "$inproc_port" "$READY_TIMEOUT" "$(pid_of inproc)" || die "rmcp_nodelay did not start"
measure inproc "http://127.0.0.1:$inproc_port/mcp" "" "inproc=$(pid_of inproc)"

log "cluster: gateway → NATS → one session-worker"
start_cluster 1
measure cluster "$gw_url" "$token" "gateway=$(pid_of gateway)" "worker=$(pid_of worker1)" "nats=$(pid_of nats)"
log "profiles in ${out_dir#"$REPO_ROOT"/}"
