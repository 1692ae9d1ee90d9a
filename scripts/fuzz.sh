#!/usr/bin/env bash
# Fuzz the parsers that read untrusted bytes (cargo-fuzz targets in fuzz/, see
# fuzz/README.md): `make fuzz`.
#
# Runs every target for FUZZ_SECONDS (default 60) one after the other, then prints per
# target the executions (libFuzzer's stat::number_of_executed_units) and whether it
# found a crash; exits 1 when one did (the input is in fuzz/artifacts/<target>/).
#
# How long: the first build of fuzz/ takes 10-15 minutes on 2 cores (its own
# target dir, fuzz/target; 1-3 minutes after our crates changed), then 7 targets x FUZZ_SECONDS
# (7 minutes at the default). Not part of `make test` or CI; for a short smoke run
# use FUZZ_SECONDS=10.
#
# Settings (environment):
#   FUZZ_SECONDS    seconds per target (default 60)
#   FUZZ_TARGETS    space-separated subset (default: every target of `cargo fuzz list`)
#   FUZZ_SANITIZER  none (default: our crates forbid unsafe code) or address (checks
#                   the dependencies' unsafe code; about 7x fewer executions, and its
#                   own first build of about 15 minutes)
#   FUZZ_TIMEOUT    seconds one input may take before it counts as a hang (default 10)
#   FUZZ_ARGS       more libFuzzer flags (e.g. -max_len=16384)
#
# The toolchain is stable: cargo-fuzz needs nightly flags (-Z sanitizer, coverage
# instrumentation), hence RUSTC_BOOTSTRAP=1. New corpus entries go to
# fuzz/corpus-grown/<target> (ignored by git); the seeds in fuzz/corpus/<target> are
# read, never written.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}"
FUZZ_TIMEOUT="${FUZZ_TIMEOUT:-10}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (a few minutes)"
    cargo install cargo-fuzz --locked
fi

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"

# Another sanitizer builds everything differently: keep it apart from the default build.
build_args=(-s "$FUZZ_SANITIZER")
if [ "$FUZZ_SANITIZER" != none ]; then
    build_args+=(--target-dir "$ROOT/fuzz/target/sanitizer-$FUZZ_SANITIZER")
fi

echo "== building fuzz targets (sanitizer: $FUZZ_SANITIZER)"
cargo fuzz build "${build_args[@]}"

logs="$ROOT/fuzz/target/fuzz-logs"
mkdir -p "$logs"
declare -a summary=()
failed=0
for target in $targets; do
    grown="$ROOT/fuzz/corpus-grown/$target"
    mkdir -p "$grown" "$ROOT/fuzz/artifacts/$target"
    log="$logs/$target.log"
    echo "== $target: ${FUZZ_SECONDS}s"
    set +e
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    cargo fuzz run "${build_args[@]}" "$target" "$grown" "$ROOT/fuzz/corpus/$target" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout="$FUZZ_TIMEOUT" -print_final_stats=1 \
        ${FUZZ_ARGS:-} >"$log" 2>&1
    status=$?
    set -e
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    corpus="$(find "$grown" -type f | wc -l | tr -d ' ')"
    if [ "$status" -eq 0 ]; then
        outcome="no crash"
    else
        failed=1
        artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
        kind="$(sed -n 's/^SUMMARY: libFuzzer: *//p' "$log" | tail -n 1)"
        outcome="CRASH: ${kind:-exit $status}${artifact:+, input $artifact} (log $log)"
        grep -m 5 -E "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | sed 's/^/    /' || true
    fi
    summary+=("$(printf '%-26s %14s executions  %6s corpus  %s' "$target" "${execs:-?}" "$corpus" "$outcome")")
done

echo
echo "== fuzz summary (${FUZZ_SECONDS}s per target, sanitizer $FUZZ_SANITIZER; logs in $logs)"
printf '%s\n' "${summary[@]}"
exit "$failed"
