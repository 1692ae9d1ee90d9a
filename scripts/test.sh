#!/usr/bin/env bash
# `make test`: every suite, in order, with the time each stage took.
#   1. deps         scripts/install-deps.sh (no-op when already installed)
#   2. build        cargo build --release --workspace (the binaries the e2e suites run)
#   2b. lint        cargo fmt --check; cargo clippy --workspace --all-targets --release -- -D warnings
#                   (release profile: it shares the build's dependency artifacts)
#   3. cargo test   cargo test --workspace --release --no-fail-fast (same profile as the build)
#   4. e2e          pytest tests/e2e (real nats-server, release binaries, Python SDK, Inspector CLI)
#   4b. deploy      pytest tests/deploy: alert rules with promtool (check + unit tests) and a real
#                   Prometheus scraping a local cluster
#   5. conformance  tests/conformance/run.sh <url> --token <t> against a cluster with the
#                   conformance tool profile (skipped, and said so, while that script is absent)
#   6. authz conf.  tests/conformance/run-authorization.sh: the suite's authorization-server
#                   scenarios against a cluster whose gateway fronts the OAuth server (static users)
#   7. browser      tests/browser/consent.test.mjs: consent and login pages in headless Debian
#                   chromium (playwright-core) against such a cluster; screenshots in
#                   tests/browser/artifacts/
# A failing build stops here; a failing suite does not stop the later ones, but the run fails.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

stages=()
failed=()
stage() {  # stage NAME CMD... — run, time and record one stage
  local name="$1"; shift
  local t0 rc
  t0=$(date +%s)
  log "=== $name: $*"
  set +e
  "$@"
  rc=$?
  set -e
  stages+=("$(printf '%-12s %5ss  %s' "$name" "$(( $(date +%s) - t0 ))" "$([[ $rc == 0 ]] && echo ok || echo "FAILED ($rc)")")")
  ((rc == 0)) || failed+=("$name")
  return "$rc"
}
summary() {
  log "=== stage timings"
  printf '  %s\n' "${stages[@]}" >&2
}
trap summary EXIT

stage deps bash scripts/install-deps.sh || exit 1
stage build cargo build --release --workspace || exit 1
stage fmt cargo fmt --all --check || true
stage clippy cargo clippy --workspace --all-targets --release -- -D warnings || true
stage "cargo test" cargo test --workspace --release --no-fail-fast || true
# shellcheck disable=SC2086 # PYTEST_ARGS is a list of words
stage e2e "$VENV_DIR/bin/python" -m pytest tests/e2e -q ${PYTEST_ARGS:-} || true
stage deploy "$VENV_DIR/bin/python" -m pytest tests/deploy -q || true
if [[ -f tests/conformance/run.sh ]]; then
  stage conformance "$VENV_DIR/bin/python" tests/e2e/with_cluster.py --profile conformance -- \
    bash tests/conformance/run.sh '{url}' --token '{token}' || true
else
  log "=== conformance: tests/conformance/run.sh not present yet; not run"
  stages+=("$(printf '%-12s %5s   %s' conformance - 'not present')")
fi

# The OAuth server behind the gateway, static-users upstream: MCP_ISSUER and MCP_URL come from
# with_cluster.py.
stage "authz conf" "$VENV_DIR/bin/python" tests/e2e/with_cluster.py --oauth static --workers 1 -- \
  bash tests/conformance/run-authorization.sh || true
stage browser "$VENV_DIR/bin/python" tests/e2e/with_cluster.py --oauth static --workers 1 -- \
  "$NODE22_BIN_DIR/node" --test tests/browser/consent.test.mjs || true

if ((${#failed[@]})); then
  log "failed stages: ${failed[*]}"
  exit 1
fi
