"""Bearer-token validation at the gateway: each failure has its own code, 401 and a challenge
that points at the RFC 9728 metadata; a valid token gets through."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness import Cluster, free_port
from mcp_http import headers, initialize_msg, response_for

RESOURCE_METADATA = re.compile(r'resource_metadata="([^"]+)"')


def json_strings(value: Any) -> set[str]:
    """Every string value in a JSON document (the error code may sit in any field)."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(json_strings(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(json_strings(v) for v in value)) if value else set()
    return set()


def other_key(tmp_path: Path) -> Path:
    """An Ed25519 key that no allowed issuer publishes (PKCS#8 PEM, like the dev issuer's)."""
    path = tmp_path / "other-ed25519.pem"
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return path


def tamper_signature(token: str) -> str:
    """Same header and claims, signature bytes flipped: the kid is known, the signature is wrong."""
    head, claims, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[0] ^= 0xFF
    raw[-1] ^= 0xFF
    return f"{head}.{claims}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


# name -> (function building the Authorization header value or None, expected code)
CASES: dict[str, tuple[Callable[[Cluster, Path], str | None], str]] = {
    "missing_header": (lambda c, p: None, "MISSING_AUTHORIZATION"),
    "garbage_token": (lambda c, p: "Bearer not-a-jwt", "INVALID_TOKEN"),
    "tampered_signature": (lambda c, p: "Bearer " + tamper_signature(c.mint("alice")), "INVALID_SIGNATURE"),
    "signed_by_other_key": (lambda c, p: "Bearer " + c.mint("alice", key_file=other_key(p)), "INVALID_SIGNATURE"),
    "expired": (lambda c, p: "Bearer " + c.mint("alice", ttl=-120), "TOKEN_EXPIRED"),
    "wrong_audience": (
        lambda c, p: "Bearer " + c.mint("alice", audience="http://127.0.0.1:1/not-this-server"),
        "INVALID_AUDIENCE",
    ),
    "unknown_issuer": (
        lambda c, p: "Bearer " + c.mint("alice", issuer=f"http://127.0.0.1:{free_port()}"),
        "INVALID_ISSUER",
    ),
}


@pytest.mark.attack
@pytest.mark.parametrize("case", list(CASES))
def test_token_failure_codes(cluster: Cluster, tmp_path: Path, case: str) -> None:
    assert cluster.gateway is not None
    build, code = CASES[case]
    authz = build(cluster, tmp_path)
    h = headers(None)
    if authz is not None:
        h["Authorization"] = authz
    r = httpx.post(cluster.gateway.mcp_url, json=initialize_msg(), headers=h, timeout=10)
    assert r.status_code == 401, f"{case}: {r.status_code} {r.text}"
    challenge = r.headers.get("www-authenticate", "")
    assert challenge.lower().startswith("bearer"), challenge
    m = RESOURCE_METADATA.search(challenge)
    assert m, f"no resource_metadata in {challenge!r}"
    assert m.group(1).startswith(cluster.gateway.base_url + "/.well-known/oauth-protected-resource"), m.group(1)
    assert code in json_strings(r.json()), f"{case}: expected {code} in body {r.text!r}"


@pytest.mark.attack
@pytest.mark.parametrize("path", ["/sse", "/messages?sessionId=00000000-0000-0000-0000-000000000000"])
def test_legacy_endpoints_need_a_token(cluster: Cluster, path: str) -> None:
    assert cluster.gateway is not None
    url = cluster.gateway.base_url + path
    if path == "/sse":
        r = httpx.get(url, headers={"Accept": "text/event-stream"}, timeout=10)
    else:
        r = httpx.post(url, json=initialize_msg(), timeout=10)
    assert r.status_code == 401, f"{path}: {r.status_code} {r.text}"
    assert "MISSING_AUTHORIZATION" in json_strings(r.json()), r.text
    assert RESOURCE_METADATA.search(r.headers.get("www-authenticate", ""))


def test_valid_token_is_accepted(cluster: Cluster, token: str) -> None:
    assert cluster.gateway is not None
    r = httpx.post(cluster.gateway.mcp_url, json=initialize_msg(), headers=headers(token), timeout=30)
    assert r.status_code == 200, r.text
    assert "result" in response_for(r, 1)


@pytest.mark.parametrize("suffix", ["", "/mcp"])
def test_protected_resource_metadata(cluster: Cluster, suffix: str) -> None:
    """RFC 9728 metadata names this resource and the allowed issuer, without a token."""
    assert cluster.gateway is not None and cluster.auth is not None
    r = httpx.get(f"{cluster.gateway.base_url}/.well-known/oauth-protected-resource{suffix}", timeout=10)
    assert r.status_code == 200, r.text
    meta = r.json()
    assert meta["resource"] == cluster.gateway.resource, meta
    assert cluster.auth.issuer in meta["authorization_servers"], meta


def test_challenge_metadata_url_resolves(cluster: Cluster) -> None:
    """The resource_metadata URL in a 401 challenge is fetchable and describes this resource."""
    assert cluster.gateway is not None
    r = httpx.post(cluster.gateway.mcp_url, json=initialize_msg(), headers=headers(None), timeout=10)
    m = RESOURCE_METADATA.search(r.headers.get("www-authenticate", ""))
    assert m, r.headers
    meta = httpx.get(m.group(1), timeout=10)
    assert meta.status_code == 200 and meta.json()["resource"] == cluster.gateway.resource
