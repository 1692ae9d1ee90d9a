"""Hostile or broken HTTP input gets a precise 4xx, and leaves every process running."""

from __future__ import annotations

import httpx
import pytest

from conftest import MAX_BODY_BYTES, TRUSTED_ORIGIN
from harness import Cluster
from mcp_http import (
    headers,
    initialize_msg,
    messages,
    random_session_id,
    response_for,
    rpc,
    stateless_headers,
    stateless_msg,
)


def assert_cluster_alive(cluster: Cluster) -> None:
    for p in cluster.procs():
        assert p.alive(), f"{p.name} died (status {p.returncode()}):\n{p.tail()}"
    assert cluster.gateway is not None
    assert httpx.get(f"{cluster.gateway.admin_url}/healthz", timeout=5).status_code == 200


@pytest.fixture
def url(cluster: Cluster) -> str:
    assert cluster.gateway is not None
    return cluster.gateway.mcp_url


@pytest.mark.attack
def test_malformed_json(cluster: Cluster, url: str, token: str) -> None:
    r = httpx.post(url, content=b'{"jsonrpc": "2.0", "id": 1, "method": ', headers=headers(token), timeout=10)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"]["code"] == -32700, body
    assert body.get("id") is None, body
    assert_cluster_alive(cluster)


def test_not_a_jsonrpc_request(cluster: Cluster, url: str, token: str) -> None:
    r = httpx.post(url, json={"jsonrpc": "2.0", "id": 7}, headers=headers(token), timeout=10)
    assert r.status_code in (200, 400), r.text
    body = messages(r)[0]
    assert body["error"]["code"] == -32600, body
    assert_cluster_alive(cluster)


def test_wrong_content_type(cluster: Cluster, url: str, token: str) -> None:
    h = headers(token)
    h["Content-Type"] = "text/plain"
    r = httpx.post(url, content=b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', headers=h, timeout=10)
    assert r.status_code == 415, r.text
    assert_cluster_alive(cluster)


@pytest.mark.attack
def test_oversized_body(cluster: Cluster, url: str, token: str) -> None:
    big = stateless_msg("tools/list", {"_meta": {"padding": "x" * (2 * MAX_BODY_BYTES)}})
    r = httpx.post(url, json=big, headers=stateless_headers(token, big), timeout=30)
    assert r.status_code == 413, f"{r.status_code} {r.text[:300]}"
    assert_cluster_alive(cluster)


def test_body_under_the_limit_is_served(cluster: Cluster, url: str, token: str) -> None:
    """Control for the 413 test: half the limit is a normal request."""
    msg = stateless_msg("tools/list", {"_meta": {"padding": "x" * (MAX_BODY_BYTES // 2)}})
    r = httpx.post(url, json=msg, headers=stateless_headers(token, msg), timeout=30)
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]}"
    assert "result" in response_for(r, 1), r.text[:300]


@pytest.mark.attack
def test_unknown_session_id(cluster: Cluster, url: str, token: str) -> None:
    r = httpx.post(
        url,
        json=rpc("tools/list", {}, 2),
        headers=headers(token, session=random_session_id(), version="2025-11-25"),
        timeout=10,
    )
    assert r.status_code == 404, r.text
    assert_cluster_alive(cluster)


@pytest.mark.attack
def test_bad_origin(cluster: Cluster, url: str, token: str) -> None:
    r = httpx.post(
        url, json=initialize_msg(), headers=headers(token, extra={"Origin": "https://evil.example"}), timeout=10
    )
    assert r.status_code == 403, r.text
    assert_cluster_alive(cluster)


def test_trusted_origin_is_served(cluster: Cluster, url: str, token: str) -> None:
    """Control for the 403 test: the origin in GATEWAY_ALLOWED_ORIGINS gets through."""
    r = httpx.post(url, json=initialize_msg(), headers=headers(token, extra={"Origin": TRUSTED_ORIGIN}), timeout=30)
    assert r.status_code == 200, r.text


@pytest.mark.attack
def test_bad_host(cluster: Cluster, url: str, token: str) -> None:
    """DNS-rebinding guard: a Host outside GATEWAY_ALLOWED_HOSTS is refused."""
    r = httpx.post(url, json=initialize_msg(), headers=headers(token, extra={"Host": "evil.example"}), timeout=10)
    assert r.status_code in (400, 403, 421), r.text
    assert_cluster_alive(cluster)


def test_all_processes_alive_after_bad_input(cluster: Cluster, url: str, token: str) -> None:
    """After all of the above, a normal request still works end to end."""
    msg = stateless_msg("tools/call", {"name": "add", "arguments": {"a": 40, "b": 2}})
    r = httpx.post(url, json=msg, headers=stateless_headers(token, msg), timeout=30)
    assert r.status_code == 200, r.text
    result = response_for(r, 1)["result"]
    assert "".join(c.get("text", "") for c in result["content"]).strip() == "42", result
    assert_cluster_alive(cluster)
