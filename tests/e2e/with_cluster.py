"""Run one command against a throwaway local cluster, then tear the cluster down.

    .venv/bin/python tests/e2e/with_cluster.py [--profile conformance] [--workers 2] \
        [--oauth static|oidc] -- CMD ARGS...

In CMD's arguments `{url}` becomes the gateway's MCP URL and `{token}` a fresh token; the command
also gets MCP_URL, MCP_TOKEN and MCP_SSE_URL in its environment. Exits with the command's status.
Used by `make test` for the conformance suite.

Without --oauth the token comes from the development issuer (`mint-token`). With --oauth the
auth-service is the OAuth server behind the gateway (issuer = the gateway's origin) and the token
comes from a real authorization-code flow: a registered public client, the headless browser
logging in as --sub (static users: deploy/local/static-users.json; oidc: the oidc-provider
fixture's accounts), consent, PKCE token exchange. The command also gets MCP_ISSUER.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import Cluster  # noqa: E402
from oauth_client import OAuthClient  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default", help="WORKER_TOOL_PROFILE (default|conformance)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sub", default="alice", help="subject of the minted token (user who logs in with --oauth)")
    ap.add_argument(
        "--oauth", choices=["static", "oidc"], default=None,
        help="run the OAuth server with this upstream and get the token through the OAuth flow",
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds the command may run")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given")

    with tempfile.TemporaryDirectory(prefix="mcp-cluster-") as tmp:
        cluster = Cluster(Path(tmp), workers=args.workers, profile=args.profile, oauth=args.oauth)
        try:
            cluster.start()
            assert cluster.gateway is not None
            url = cluster.gateway.mcp_url
            if args.oauth is None:
                token = cluster.mint(args.sub)
            else:
                client = OAuthClient.register(cluster.issuer)
                token = client.login(
                    cluster.gateway.resource, username=args.sub, password=cluster.passwords()[args.sub]
                )["access_token"]
            env = dict(
                os.environ, MCP_URL=url, MCP_TOKEN=token, MCP_SSE_URL=cluster.gateway.sse_url,
                MCP_ISSUER=cluster.issuer,
            )
            argv = [a.replace("{url}", url).replace("{token}", token) for a in cmd]
            mode = f", OAuth with {args.oauth} upstream" if args.oauth else ""
            print(f"with_cluster: {url} (profile {args.profile}, {args.workers} workers{mode})", file=sys.stderr)
            try:
                rc = subprocess.run(argv, env=env, timeout=args.timeout).returncode
            except subprocess.TimeoutExpired:
                print(f"with_cluster: command timed out after {args.timeout:.0f}s", file=sys.stderr)
                rc = 124
            if rc != 0:
                for p in cluster.procs():
                    print(f"--- {p.name} log tail ---\n{p.tail(20)}", file=sys.stderr)
            return rc
        finally:
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
