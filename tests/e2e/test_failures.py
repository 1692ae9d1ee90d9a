"""When the back end is missing, the gateway answers quickly with a JSON-RPC error instead of hanging.

Each test builds its own small cluster (own nats-server, issuer and gateway), so the shared one
is untouched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness import AuthService, Gateway, NatsServer, mint_token, retry_until
from mcp_http import headers, initialize_msg, messages, stateless_headers, stateless_msg

# How long the gateway here waits for a worker (or for NATS) before answering 503
# (GATEWAY_NO_RESPONDERS_RETRY_MS; its default rides out a NATS stream leader election).
PATIENCE_MS = 3000
# A failure must be reported well inside this many seconds: the patience and a margin (a hang
# would run to the client's 60 s timeout).
FAST = PATIENCE_MS / 1000 + 7.0


class Backendless:
    def __init__(self, workdir: Path) -> None:
        self.nats = NatsServer(workdir, "nats-noworkers").start()
        self.auth = AuthService(workdir, name="auth-noworkers").start(self.nats.url)
        self.gateway = Gateway(
            workdir, self.nats.url, [self.auth.issuer], name="gateway-noworkers",
            env={"GATEWAY_NO_RESPONDERS_RETRY_MS": str(PATIENCE_MS)},
        )
        # With no worker, readiness may honestly be "no": wait for liveness only.
        self.gateway.start(ready_path="/healthz")
        self.token = mint_token(key_file=self.auth.key_file, issuer=self.auth.issuer, audience=self.gateway.resource)

    def stop(self) -> None:
        self.gateway.stop()
        self.auth.stop()
        self.nats.stop()


@pytest.fixture
def backendless(tmp_path: Path) -> Iterator[Backendless]:
    b = Backendless(tmp_path)
    try:
        yield b
    finally:
        b.stop()


def assert_fast_jsonrpc_error(url: str, body: dict, h: dict[str, str]) -> None:
    started = time.monotonic()
    r = httpx.post(url, json=body, headers=h, timeout=60)
    elapsed = time.monotonic() - started
    assert elapsed < FAST, f"took {elapsed:.1f}s: {r.status_code} {r.text}"
    assert r.status_code in (200, 502, 503, 504), f"{r.status_code} {r.text}"
    msg = messages(r)[0]
    assert "error" in msg and "result" not in msg, msg
    assert isinstance(msg["error"].get("code"), int) and msg["error"].get("message"), msg
    assert msg.get("id") == body["id"], msg


def test_no_workers_initialize(backendless: Backendless) -> None:
    g = backendless.gateway
    assert_fast_jsonrpc_error(g.mcp_url, initialize_msg(), headers(backendless.token))
    assert g.proc is not None and g.proc.alive()


def test_no_workers_stateless(backendless: Backendless) -> None:
    g = backendless.gateway
    msg = stateless_msg("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})
    assert_fast_jsonrpc_error(g.mcp_url, msg, stateless_headers(backendless.token, msg))


def test_nats_down(backendless: Backendless) -> None:
    """Kill nats-server under a running gateway: requests fail fast, the gateway stays up, and
    its readiness turns to not-ready."""
    g = backendless.gateway
    backendless.nats.proc.kill()
    assert_fast_jsonrpc_error(g.mcp_url, initialize_msg(), headers(backendless.token))
    msg = stateless_msg("tools/list")
    assert_fast_jsonrpc_error(g.mcp_url, msg, stateless_headers(backendless.token, msg))
    assert g.proc is not None and g.proc.alive()
    retry_until(
        lambda: httpx.get(f"{g.admin_url}/readyz", timeout=5).status_code == 503,
        30,
        "gateway /readyz reports 503 with NATS down",
    )
