#!/usr/bin/env bash
# CPU time per `tools/call` of the whole cluster (gateway + session-worker + nats-server), a
# feature on and off, alternating: a steadier figure than throughput on a shared machine.
#
#     bash bench/cpu-per-call.sh records [rounds=2] [concurrency=16]   request records on / off
#     bash bench/cpu-per-call.sh traces  [rounds=2] [concurrency=16]   OTLP trace export on / off
#
# traces: "on" exports every span (OTEL_TRACES_SAMPLER=always_on) to target/release/otlp-sink,
# whose own CPU is not counted; "10%" samples a tenth of the traces (parentbased_traceidratio
# 0.1, the chart's default); "off" sets no OTEL_* variable.
#
# Each run starts a throwaway cluster (tests/e2e/with_cluster.py, conformance tool profile, where
# every tools/call is recorded), drives `add` with target/release/loadgen for 2 s of warm-up and
# 10 s measured, and reads the processes' utime+stime from /proc. Needs
# `cargo build --release --workspace` and `bash scripts/install-deps.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: cpu-per-call.sh records|traces [rounds] [concurrency]}
rounds=${2:-2}
concurrency=${3:-16}
export PATH="$PWD/.venv/bin:$PATH"

if [[ "${MCP_URL:-}" != "" && "${CPU_PER_CALL_INNER:-}" == 1 ]]; then
    ticks() {
        local t=0 a b
        for p in $(pgrep -f "target/release/(gateway|session-worker)|nats-server"); do
            read -r a b <<<"$(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo "0 0")"
            t=$((t + ${a:-0} + ${b:-0}))
        done
        echo "$t"
    }
    BENCH_TOKEN=$MCP_TOKEN target/release/loadgen --url "$MCP_URL" --concurrency "$concurrency" \
        --duration 2 --warmup 1 --label warmup >/dev/null
    before=$(ticks)
    out=$(BENCH_TOKEN=$MCP_TOKEN target/release/loadgen --url "$MCP_URL" --concurrency "$concurrency" \
        --duration 10 --warmup 0 --label measured | tail -1)
    after=$(ticks)
    python3 - "$out" "$before" "$after" "$(getconf CLK_TCK)" "$CPU_PER_CALL_LABEL" <<'PY'
import json, sys
out, before, after, hz, label = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
us = (after - before) * 1e6 / hz / out["requests"]
print(f"{label:14} calls={out['requests']:6} rps={out['rps']:7.0f} cpu_us_per_call={us:5.0f}")
PY
    exit 0
fi

run() {  # label, then VAR=value... for the cluster
    local label=$1
    shift
    env "$@" CPU_PER_CALL_LABEL="$label" CPU_PER_CALL_INNER=1 timeout 300 \
        python tests/e2e/with_cluster.py --profile conformance -- bash "$0" "$mode" "$rounds" "$concurrency" 2>/dev/null \
        | grep "^$label "
}

case "$mode" in
records)
    for round in $(seq "$rounds"); do
        run records=true WORKER_REQUEST_RECORDS=true
        run records=false WORKER_REQUEST_RECORDS=false
    done
    ;;
traces)
    sink_dir=$(mktemp -d)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    OTLP_SINK_LISTEN=127.0.0.1:$port target/release/otlp-sink "$sink_dir/spans.jsonl" >/dev/null &
    sink=$!
    trap 'kill $sink 2>/dev/null; rm -rf "$sink_dir"' EXIT
    for round in $(seq "$rounds"); do
        run traces=on OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$port OTEL_TRACES_SAMPLER=always_on
        run traces=10% OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$port \
            OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.1
        run traces=off
    done
    echo "spans received: $(wc -l <"$sink_dir/spans.jsonl")"
    ;;
*)
    echo "usage: cpu-per-call.sh records|traces [rounds] [concurrency]" >&2
    exit 64
    ;;
esac
