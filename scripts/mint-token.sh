#!/usr/bin/env bash
# DEVELOPMENT ONLY: mint a bearer token from the local dev issuer's private key.
# The dev issuer (auth-service with AUTH_DEV_KEY_FILE) exists for `make run` on a laptop; a real
# deployment gets its tokens from the OAuth flow of auth-service or an operator's IdP.
#
#   scripts/mint-token.sh [SUB]          prints a JWT for SUB (default: alice)
# Environment: TOKEN_TTL (seconds, default 3600), TOKEN_SCOPE, TOKEN_EMAIL, and the same
# AUTH_ISSUER_URL / RESOURCE_IDENTIFIER / AUTH_DEV_KEY_FILE that scripts/run-local.sh uses.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

sub="${1:-alice}"
key_file="${AUTH_DEV_KEY_FILE:-$RUN_DIR/dev-issuer-ed25519.pem}"
issuer="${AUTH_ISSUER_URL:-http://localhost:8788}"
audience="${RESOURCE_IDENTIFIER:-http://localhost:8788/mcp}"
ttl="${TOKEN_TTL:-3600}"
email="${TOKEN_EMAIL:-$sub@example.com}"
scope="${TOKEN_SCOPE:-openid profile email}"

auth_bin="$RELEASE_DIR/auth-service"
[[ -x "$auth_bin" ]] || die "$auth_bin not built: run 'cargo build --release --workspace' (or 'make run')"
[[ -f "$key_file" ]] || die "no dev issuer key at $key_file: start the local cluster first ('make run'), which creates it"

echo "DEVELOPMENT ONLY: token for sub=$sub from the local dev issuer $issuer, aud=$audience, ttl=${ttl}s" >&2
exec "$auth_bin" mint-token --key-file "$key_file" --issuer "$issuer" --audience "$audience" \
  --sub "$sub" --email "$email" --scope "$scope" --ttl "$ttl"
