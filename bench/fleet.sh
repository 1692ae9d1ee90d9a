#!/usr/bin/env bash
# bench/fleet.sh — fleet-scale figures, each stage on a throwaway cluster of its own
# (nats-server, auth-service, session workers, one gateway, on loopback):
#
#   bash bench/fleet.sh [STAGE...]      stages: streams streams-h2 sessions burst (default: all)
#
#   streams   FLEET_STREAMS idle SSE streams on one gateway, half GET /mcp and half legacy
#             GET /sse, from FLEET_SOURCES loopback source addresses, while FLEET_CALLERS of
#             those clients call tools (1/s each): gateway KiB per stream, worker KiB per
#             session, p99 of the calls with the streams open over p99 without (2 workers).
#   streams-h2  the same over the gateway's HTTP/2-without-TLS listener (GATEWAY_H2C_LISTEN), as a
#             proxy in front carries it:
#             FLEET_H2_STREAMS (100000) streams, FLEET_PER_CONNECTION (100) on each connection,
#             each with its session (GATEWAY_MAX_STREAMS is raised to fit them).
#   sessions  FLEET_SESSIONS sessions on 2 workers: initialize per second, worker KiB per live
#             actor, then (WORKER_IDLE_TIMEOUT=FLEET_IDLE_TIMEOUT) the actors stop when idle and
#             one call per session brings each back from the session store: rehydrations per
#             second and per worker-CPU second.
#   burst     the sustainable tools/call rate (loadgen, closed loop, concurrency 64), then open-
#             loop arrivals at half of it, FLEET_BURST_FACTOR (10) times it for 5 s, half of it
#             again: calls shed with 503 + Retry-After, latency over time, time to recover, RSS
#             (2 workers, GATEWAY_MAX_INFLIGHT=FLEET_MAX_INFLIGHT, 256). Plot:
#             bench/results/fleet-<stamp>/burst.png.
#
# Open files: every connection is a file descriptor in the gateway and in the client. The
# script raises its soft limit to the hard one (`ulimit -Hn`); FLEET_STREAMS defaults to what
# that allows (the limit less the callers and a margin). Operators: see bench/README.md.
#
# Settings (environment): FLEET_STREAMS (fits the open-files limit), FLEET_SOURCES (64),
# FLEET_CALLERS (1000), FLEET_HOLD (20 s), FLEET_SESSIONS (100000), FLEET_IDLE_TIMEOUT (20 s),
# FLEET_BURST_FACTOR (10), FLEET_MAX_INFLIGHT (256), BENCH_SKIP_BUILD (0).
# Output: bench/results/fleet-<UTC stamp>.json (every figure, with the command) and
# bench/results/fleet-<UTC stamp>/ (logs, the burst timeline and its plot).
set -euo pipefail
# shellcheck source=scripts/lib.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$REPO_ROOT"

stages=("$@")
((${#stages[@]})) || stages=(streams streams-h2 sessions burst)
for s in "${stages[@]}"; do
  [[ "$s" =~ ^(streams|streams-h2|sessions|burst)$ ]] || die "unknown stage '$s' (streams, streams-h2, sessions, burst)"
done

ulimit -n "$(ulimit -Hn)"
nofile="$(ulimit -n)"
CALLERS="${FLEET_CALLERS:-1000}"
# Each stream is one descriptor in the gateway and one in this client; the callers hold a
# second connection each, and the processes need some for themselves.
STREAMS="${FLEET_STREAMS:-$(( (nofile - 2 * CALLERS - 500) / 2 * 2 ))}"
SOURCES="${FLEET_SOURCES:-64}"
HOLD="${FLEET_HOLD:-20}"
H2_STREAMS="${FLEET_H2_STREAMS:-100000}"
PER_CONNECTION="${FLEET_PER_CONNECTION:-100}"
SESSIONS="${FLEET_SESSIONS:-100000}"
IDLE_TIMEOUT="${FLEET_IDLE_TIMEOUT:-20}"
BURST_FACTOR="${FLEET_BURST_FACTOR:-10}"
PYTHON="${PYTHON:-$VENV_DIR/bin/python}"

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
results_dir="$REPO_ROOT/bench/results"
run_dir="$results_dir/fleet-$stamp"
lines="$run_dir/lines.jsonl"
mkdir -p "$run_dir"

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "cargo build --release (gateway, session-worker, auth-service, bench)"
  cargo build --release -p gateway -p session-worker -p auth-service -p bench
fi
for b in gateway session-worker auth-service fleet burst loadgen; do
  [[ -x "$RELEASE_DIR/$b" ]] || die "$RELEASE_DIR/$b missing: build with 'cargo build --release --workspace'"
done

# One bench principal opens every session, all counted (WORKER_MAX_SESSIONS_PER_PRINCIPAL is
# lifted to 1,000,000 by lib.sh, not turned off): `initialize` is measured with its count.

# Each stage runs in a subshell with its own cluster, stopped when the stage ends.
stage() {
  local name="$1"
  out_dir="$run_dir/$name"
  mkdir -p "$out_dir/logs"
  (
    # shellcheck source=bench/lib.sh disable=SC1091
    source "$REPO_ROOT/bench/lib.sh"
    "stage_${name//-/_}"
  ) || die "stage $name failed; logs in $out_dir/logs"
  rm -rf "$out_dir/nats"  # the throwaway JetStream store (up to gigabytes after the sessions stage)
}

record() { jq -c --arg stage "$1" --arg cmd "$2" '{stage: $stage, command: $cmd} + .' >>"$lines"; }

stage_streams() {
  start_cluster 2
  log "streams: $STREAMS idle streams (half legacy) from $SOURCES addresses, $CALLERS callers; open files $nofile"
  local cmd=(fleet streams --url "$gw_url" --streams "$STREAMS" --legacy-share 0.5 --sources "$SOURCES"
    --callers "$CALLERS" --call-rate 1 --call-duration 10 --hold "$HOLD"
    --gateway-pid "$(pid_of gateway)" --worker-pid "$(pid_of worker1)" --worker-pid "$(pid_of worker2)" --label streams)
  BENCH_TOKEN="$token" "$RELEASE_DIR/${cmd[0]}" "${cmd[@]:1}" 2>>"$out_dir/logs/fleet.log" \
    | record streams "GATEWAY_SSE_KEEPALIVE=${GATEWAY_SSE_KEEPALIVE:-15} ${cmd[*]}"
  tail -n 2 "$out_dir/logs/fleet.log" | sed 's/^/  /' >&2
}

stage_streams_h2() {
  local h2c_port
  h2c_port="$(free_port)"
  GATEWAY_H2C_LISTEN="127.0.0.1:$h2c_port" GATEWAY_MAX_STREAMS="$(( H2_STREAMS + CALLERS ))" start_cluster 2
  log "streams-h2: $H2_STREAMS idle streams (half legacy) over HTTP/2, $PER_CONNECTION per connection, from $SOURCES addresses, $CALLERS callers"
  local cmd=(fleet streams --url "$gw_url" --streams "$H2_STREAMS" --legacy-share 0.5 --sources "$SOURCES"
    --h2c-url "http://127.0.0.1:$h2c_port/mcp" --streams-per-connection "$PER_CONNECTION"
    --callers "$CALLERS" --call-rate 1 --call-duration 10 --hold "$HOLD"
    --gateway-pid "$(pid_of gateway)" --worker-pid "$(pid_of worker1)" --worker-pid "$(pid_of worker2)" --label streams-h2)
  BENCH_TOKEN="$token" "$RELEASE_DIR/${cmd[0]}" "${cmd[@]:1}" 2>>"$out_dir/logs/fleet.log" \
    | record streams-h2 "GATEWAY_H2C_LISTEN=127.0.0.1:$h2c_port GATEWAY_MAX_STREAMS=$(( H2_STREAMS + CALLERS )) GATEWAY_SSE_KEEPALIVE=${GATEWAY_SSE_KEEPALIVE:-15} ${cmd[*]}"
  tail -n 2 "$out_dir/logs/fleet.log" | sed 's/^/  /' >&2
}

stage_sessions() {
  WORKER_IDLE_TIMEOUT="$IDLE_TIMEOUT" start_cluster 2
  log "sessions: $SESSIONS sessions on 2 workers (idle timeout $IDLE_TIMEOUT s)"
  local cmd=(fleet sessions --url "$gw_url" --sessions "$SESSIONS" --connections 64 --sources "$SOURCES"
    --worker-admin "${worker_admin[1]}" --worker-admin "${worker_admin[2]}"
    --worker-pid "$(pid_of worker1)" --worker-pid "$(pid_of worker2)" --idle-wait "$(( IDLE_TIMEOUT * 4 + 60 ))" --label sessions)
  BENCH_TOKEN="$token" "$RELEASE_DIR/${cmd[0]}" "${cmd[@]:1}" 2>>"$out_dir/logs/fleet.log" \
    | record sessions "WORKER_IDLE_TIMEOUT=$IDLE_TIMEOUT ${cmd[*]}"
  tail -n 2 "$out_dir/logs/fleet.log" | sed 's/^/  /' >&2
}

stage_burst() {
  # The gateway's bound on requests in flight, sized for this machine by Little's law: about
  # 16k calls/s at ~15 ms of queueing is ~256 (the default, 2048, is for slow tools).
  GATEWAY_MAX_INFLIGHT="${FLEET_MAX_INFLIGHT:-256}" start_cluster 2
  local sustainable base burst
  sustainable="$(BENCH_TOKEN="$token" "$RELEASE_DIR/loadgen" --url "$gw_url" --concurrency 64 --warmup 2 \
    --duration 8 --label sustainable 2>>"$out_dir/logs/loadgen.log" | jq '.rps')"
  base="$(jq -n --argjson s "$sustainable" '$s / 2 | floor')"
  burst="$(jq -n --argjson s "$sustainable" --argjson f "$BURST_FACTOR" '$s * $f | floor')"
  log "burst: sustainable $sustainable calls/s; $base/s, then $burst/s for 5 s, then $base/s"
  local cmd=(burst --url "$gw_url" --base-rate "$base" --burst-rate "$burst" --before 10 --burst 5 --after 15
    --sessions 2048 --pid "gateway=$(pid_of gateway)" --pid "worker1=$(pid_of worker1)"
    --pid "worker2=$(pid_of worker2)" --pid "nats=$(pid_of nats)" --out "$out_dir/burst.json" --label burst)
  BENCH_TOKEN="$token" "$RELEASE_DIR/${cmd[0]}" "${cmd[@]:1}" 2>>"$out_dir/logs/burst.log" \
    | jq -c --argjson s "$sustainable" '. + {sustainable_rps: $s}' | record burst "${cmd[*]}"
  tail -n 1 "$out_dir/logs/burst.log" | sed 's/^/  /' >&2
  "$PYTHON" bench/plot.py burst "$out_dir/burst.json" "$run_dir/burst.png" >&2
}

for s in "${stages[@]}"; do
  log "stage $s"
  stage "$s"
done

python3 - "$lines" "$results_dir/fleet-$stamp.json" "$stamp" "$nofile" <<'PY'
import json, os, platform, sys
lines, out, stamp, nofile = sys.argv[1:5]
rows = [json.loads(l) for l in open(lines) if l.strip()]
doc = {"timestamp": stamp, "command": "bash bench/fleet.sh " + " ".join(r["stage"] for r in rows),
       "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "open_files_limit": int(nofile)},
       "stages": {r["stage"]: r for r in rows}}
json.dump(doc, open(out, "w"), indent=2)
s = doc["stages"]
def f(v, fmt="{:.2f}"):
    return "n/a" if v is None else fmt.format(v)
for name in ("streams", "streams-h2"):
    if name not in s:
        continue
    r = s[name]
    proto = "HTTP/2" if r.get("http2") else "HTTP/1.1"
    print(f"{name}: {r['mcp_streams']} GET /mcp + {r['legacy_streams']} /sse on {r.get('connections')} {proto} connections from {r['sources']} addresses: "
          f"gateway {f(r['gateway_kib_per_stream'])} KiB/stream, workers {f(r['workers_kib_per_session'])} KiB/session; "
          f"{r['callers']} callers p99 {f((r['calls_without_streams'] or {}).get('p99_ms'))} ms without streams, "
          f"{f((r['calls_with_streams'] or {}).get('p99_ms'))} ms with (x{f(r['p99_ratio'])}); "
          f"initialize {f(r['initialize_per_s'], '{:.0f}')}/s")
if "sessions" in s:
    r = s["sessions"]
    print(f"sessions: {r['opened']} on 2 workers at {r['initialize_per_s']:.0f} initialize/s; "
          f"{f(r['workers_kib_per_live_actor'])} KiB per live actor; idle actors stopped after {f(r['idle_stop_s'], '{:.0f}')} s; "
          f"rehydrated {r['rehydrated']} at {r['rehydrate_per_s']:.0f}/s, {f(r['rehydrate_per_worker_cpu_s'], '{:.0f}')} per worker-CPU s")
if "burst" in s:
    r = s["burst"]
    b = r["burst"]
    print(f"burst: sustainable {r['sustainable_rps']:.0f}/s; offered {b['offered_per_s']:.0f}/s for {r['burst_s']:.0f} s: "
          f"{b['ok_per_s']:.0f} ok/s, {b['shed_per_s']:.0f} shed/s, {b['error']} errors, {b['timeout']} timeouts; "
          f"p99 before {f((r['before']['latency_ok'] or {}).get('p99_ms'))} ms, during {f((b['latency_ok'] or {}).get('p99_ms'))} ms; "
          f"first normal bucket {f(r.get('first_normal_after_s'))} s after, normal for good {f(r['recovered_after_s'])} s after; RSS peak {r['rss_kib_peak']}")
print(f"written: {os.path.relpath(out)}")
PY
