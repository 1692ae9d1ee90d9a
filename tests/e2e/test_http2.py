"""The gateway's HTTP/2-without-TLS listener (GATEWAY_H2C_LISTEN, prior knowledge), driven by Node's
http2 client and curl (both nghttp2): what a proxy in front that speaks HTTP/2 to its back ends
does, many requests and a held stream on one connection. The Python SDK over h2c:
tests/e2e/test_sdk_clients.py."""

from __future__ import annotations

import json
import subprocess

from harness import REPO_ROOT, Cluster, node_binary

# Seconds the held stream stays open in the multiplexed run (the calls finish well inside it).
HOLD_SECONDS = 2
MULTIPLEX_JS = REPO_ROOT / "tests/e2e/fixtures/h2c/multiplex.mjs"


def curl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", *args], capture_output=True, text=True, timeout=timeout
    )


def test_a_stream_and_calls_share_one_connection(cluster: Cluster, token: str) -> None:
    """Node's http2 client (nghttp2): initialize, then GET /mcp held open while two tools/call go
    out on the same connection; the calls are answered and the stream carries the session's event.
    (curl 7.88 fails its own multiplexed requests on a prior-knowledge connection with "Error in the
    HTTP2 framing layer" before sending them, so the multiplexing client here is Node's.)"""
    assert cluster.gateway is not None
    out = subprocess.run(
        [str(node_binary()), str(MULTIPLEX_JS), cluster.gateway.h2c_mcp_url, token, str(HOLD_SECONDS * 1000)],
        capture_output=True,
        text=True,
        timeout=HOLD_SECONDS + 60,
    )
    assert out.returncode == 0, (out.stdout, out.stderr)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["initialized"] == 202, got
    assert got["add"]["status"] == 200 and json.loads(got["add"]["text"])["result"]["content"][0]["text"] == "42"
    assert got["count"]["status"] == 200 and json.loads(got["count"]["text"])["result"]["structuredContent"] == {
        "count": 7
    }
    assert got["stream"]["status"] == 200, got
    events = [
        json.loads(line[len("data: ") :])
        for line in got["stream"]["text"].splitlines()
        if line.startswith("data: {")
    ]
    assert any(e.get("method") == "notifications/message" and e["params"]["data"] == {"count": 7} for e in events), got
    # Five requests, one connection.
    assert got["requests"] == 5 and got["connections"] == 1, got


def test_the_host_check_reads_the_authority(cluster: Cluster, token: str) -> None:
    """An HTTP/2 request names its host in :authority; a host the gateway does not serve is 403."""
    assert cluster.gateway is not None
    out = curl(
        "-m", "10", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
        "-X", "POST", cluster.gateway.h2c_mcp_url,
        "-H", "Host: rebound.example",
        "-H", f"Authorization: Bearer {token}",
        "-H", "Content-Type: application/json",
        "-H", "Accept: application/json, text/event-stream",
        "-d", '{"jsonrpc":"2.0","id":1,"method":"ping"}',
    )  # fmt: skip
    assert out.stdout == "403 2", (out.stdout, out.stderr)


def test_the_http1_port_does_not_speak_http2(cluster: Cluster) -> None:
    """HTTP/2 has its own listener; the HTTP/1.1 one refuses a prior-knowledge preface."""
    assert cluster.gateway is not None
    out = curl("-m", "10", "-o", "/dev/null", "-w", "%{http_code}", cluster.gateway.mcp_url)
    assert out.returncode != 0 and out.stdout in ("", "000"), (out.returncode, out.stdout, out.stderr)
