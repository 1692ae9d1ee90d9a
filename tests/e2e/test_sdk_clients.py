"""The official Python `mcp` SDK (2.x) against the cluster, in each transport and era it speaks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from harness import Cluster
from mcp_http import SESSIONFUL_VERSION, STATELESS_VERSION

# Seconds one whole client flow may take; a hang fails the test instead of blocking CI.
FLOW_TIMEOUT = 60


def run(flow: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        with anyio.fail_after(FLOW_TIMEOUT):
            return await flow()

    return anyio.run(bounded)


class Recorder:
    """httpx2 event hooks that keep what crossed the wire, to check what the SDK really did."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.responses: list[tuple[int, dict[str, str]]] = []
        self.versions: list[str] = []

    async def on_request(self, request: httpx2.Request) -> None:
        body = request.content if request.method == "POST" else b""
        self.requests.append((request.method, {k.lower(): v for k, v in request.headers.items()}, body))

    async def on_response(self, response: httpx2.Response) -> None:
        self.responses.append((response.status_code, {k.lower(): v for k, v in response.headers.items()}))
        self.versions.append(response.http_version)

    def client(self, token: str, *, h2c: bool = False) -> httpx2.AsyncClient:
        """`h2c`: HTTP/2 only, without TLS (prior knowledge), as a proxy in front of the gateway speaks it."""
        return httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx2.Timeout(30.0, read=60.0),
            event_hooks={"request": [self.on_request], "response": [self.on_response]},
            http1=not h2c,
            http2=h2c,
        )


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def list_and_add(client: Client, a: int, b: int) -> None:
    tools = await client.list_tools()
    names = {t.name for t in tools.tools}
    assert "add" in names, names
    result = await client.call_tool("add", {"a": a, "b": b})
    assert not result.is_error, result
    assert text_of(result).strip() == str(a + b), result


def test_streamable_http_sessionful(cluster: Cluster, token: str) -> None:
    assert cluster.gateway is not None
    rec = Recorder()

    async def flow() -> str:
        async with rec.client(token) as http:
            async with Client(
                streamable_http_client(cluster.gateway.mcp_url, http_client=http), mode="legacy"
            ) as client:
                await list_and_add(client, 2, 3)
                return client.protocol_version

    version = run(flow)
    assert version == SESSIONFUL_VERSION
    # The gateway minted a session id and the SDK presented it on every later request.
    session_ids = {h.get("mcp-session-id") for _, h in rec.responses if h.get("mcp-session-id")}
    assert len(session_ids) == 1, rec.responses
    later = [h for m, h, _ in rec.requests[1:] if m == "POST"]
    assert later and all(h.get("mcp-session-id") in session_ids for h in later)


@pytest.mark.parametrize("h2c", [False, True], ids=["http1", "h2c"])
def test_stateless_2026_pinned(cluster: Cluster, token: str, h2c: bool) -> None:
    """mode='2026-07-28': no initialize, no session id, every request stamped with the version.

    h2c: on the gateway's HTTP/2-without-TLS listener (GATEWAY_H2C_LISTEN), every request on one
    HTTP/2 connection. (The SDK's sessionful mode holds a GET stream open; over HTTP/2 its HTTP
    client sends one request at a time until the server names SETTINGS_MAX_CONCURRENT_STREAMS,
    which actix-http does not, so that mode belongs on HTTP/1.1: ARCHITECTURE.md, HTTP/2.)"""
    assert cluster.gateway is not None
    rec = Recorder()
    url = cluster.gateway.h2c_mcp_url if h2c else cluster.gateway.mcp_url

    async def flow() -> str:
        async with rec.client(token, h2c=h2c) as http:
            async with Client(streamable_http_client(url, http_client=http), mode=STATELESS_VERSION) as client:
                await list_and_add(client, 2, 3)
                return client.protocol_version

    assert run(flow) == STATELESS_VERSION
    assert set(rec.versions) == {"HTTP/2" if h2c else "HTTP/1.1"}, rec.versions
    posts = [(h, body) for m, h, body in rec.requests if m == "POST"]
    assert len(posts) >= 2
    assert all(h.get("mcp-protocol-version") == STATELESS_VERSION for h, _ in posts), posts
    assert not any(b'"initialize"' in body for _, body in posts)
    assert not any("mcp-session-id" in h for _, h in rec.responses), rec.responses


def test_auto_mode_discovers_2026(cluster: Cluster, token: str) -> None:
    """The SDK's default mode probes server/discover; the cluster speaks 2026-07-28, so no fallback."""
    assert cluster.gateway is not None
    rec = Recorder()

    async def flow() -> str:
        async with rec.client(token) as http:
            async with Client(streamable_http_client(cluster.gateway.mcp_url, http_client=http)) as client:
                await list_and_add(client, 20, 22)
                return client.protocol_version

    assert run(flow) == STATELESS_VERSION
    first_body = rec.requests[0][2]
    assert b'"server/discover"' in first_body, first_body


def test_legacy_sse(cluster: Cluster, token: str) -> None:
    """The 2024-11-05 HTTP+SSE transport: GET /sse, then POST /messages?sessionId=…"""
    assert cluster.gateway is not None
    endpoints: list[str] = []

    async def flow() -> str:
        async with Client(
            sse_client(
                cluster.gateway.sse_url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
                sse_read_timeout=60,
                on_session_created=endpoints.append,
            ),
            mode="legacy",
        ) as client:
            await list_and_add(client, 2, 3)
            return client.protocol_version

    version = run(flow)
    assert version in (SESSIONFUL_VERSION, "2025-06-18", "2025-03-26", "2024-11-05")
    assert len(endpoints) == 1 and endpoints[0], endpoints
