#!/usr/bin/env bash
# Run the official MCP conformance suite's authorization-server scenarios against ISSUER.
#
#   tests/conformance/run-authorization.sh [ISSUER] [--resource URI] [--port N]
#       [--client-id ID [--client-secret SECRET]] [--username U --password P]
#
# ISSUER defaults to $MCP_ISSUER and --resource to $MCP_URL (both set by
# tests/e2e/with_cluster.py --oauth static). Installs nothing beyond run.sh's cache (Node 22
# and @modelcontextprotocol/conformance, see lib.sh); only suite 0.2.0-alpha.12 has the
# `authorization` command.
#
# Runs `conformance authorization --url ISSUER` with both of its scenarios
# (authorization-server-metadata-endpoint, authorization-code-grant). The suite needs a
# pre-registered client and a person to open the authorization URL it prints, so
# authorization.mjs beside this script registers a public client with POST /register
# (redirect http://127.0.0.1:<port>/callback; skipped when --client-id is given) and walks
# the consent and static-users login pages for it as --username (default alice).
#
# Prints PASS/FAIL per scenario and exits non-zero on any failed or skipped check, a scenario
# that did not finish, or a suite that did not exit 0. Warnings are printed, not failed.
# Results (checks.json per scenario, output.log) go to $CONFORMANCE_CACHE/results/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/conformance/lib.sh
source "$here/lib.sh"   # cache, log, conformance_node, conformance_suite
version="${CONFORMANCE_AUTHZ_VERSION:-0.2.0-alpha.12}"
# Whole-run bound in seconds (the suite itself waits up to 300 s for the callback).
run_timeout="${CONFORMANCE_RUN_TIMEOUT:-360}"

usage() {
    echo "usage: $0 [ISSUER] [--resource URI] [--port N] [--client-id ID [--client-secret S]] [--username U --password P]" >&2
    exit 64
}

issuer="${MCP_ISSUER:-}"
issuer_arg=""
resource="${MCP_URL:-}"
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --resource|--port|--client-id|--client-secret|--username|--password)
            [ $# -ge 2 ] || usage
            if [ "$1" = --resource ]; then resource="$2"; else extra+=("$1" "$2"); fi
            shift 2 ;;
        --no-resource) resource=""; shift ;;
        -h|--help) usage ;;
        -*) echo "unknown option: $1" >&2; usage ;;
        *) [ -z "$issuer_arg" ] || usage; issuer_arg="$1"; shift ;;
    esac
done
[ -z "$issuer_arg" ] || issuer="$issuer_arg"
[ -n "$issuer" ] || usage

conformance_node
conformance_suite "$version"

out="$cache/results/$(date -u +%Y%m%dT%H%M%SZ)/authorization-$version"
mkdir -p "$out"
args=(--cli "$cli" --issuer "$issuer" --out "$out" --timeout "$run_timeout")
[ -z "$resource" ] || args+=(--resource "$resource")
log "authorization $version against $issuer${resource:+ (resource $resource)}"
exec "$node" "$here/authorization.mjs" "${args[@]}" "${extra[@]}"
