"""The token vault end to end: a user signs in at the real upstream OpenID provider (npm
`oidc-provider`), the auth-service keeps the provider's tokens sealed, and the `whoAmI` tool in a
worker asks the vault over NATS for the user's current upstream token — refreshed at the
provider when it is about to expire — and shows only its audience and expiry, never the token.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import _running
from harness import Cluster, retry_until
from mcp_http import stateless_headers, stateless_msg
from oauth_client import OAuthClient

HTTP_TIMEOUT = 20.0
# The provider's access tokens live 20 s: less than the vault's 60 s refresh-ahead, so every
# request for the token makes the vault refresh it at the provider (once, cluster-wide).
UPSTREAM_ACCESS_TTL = 20


@pytest.fixture(scope="module")
def vault_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from _running(
        Cluster(
            tmp_path_factory.mktemp("vault"),
            workers=2,
            oauth="oidc",
            oidc_access_token_ttl=UPSTREAM_ACCESS_TTL,
        )
    )


def who_am_i(cluster: Cluster, token: str) -> tuple[dict[str, Any], str]:
    """Call whoAmI (stateless request); its JSON and the raw response text."""
    assert cluster.gateway is not None
    msg = stateless_msg("tools/call", {"name": "whoAmI", "arguments": {}})
    r = httpx.post(cluster.gateway.mcp_url, json=msg, headers=stateless_headers(token, msg), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]}"
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else _from_sse(r.text)
    result = body["result"]
    assert not result.get("isError"), result
    return json.loads(result["content"][0]["text"]), r.text


def _from_sse(text: str) -> dict[str, Any]:
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    return json.loads(data[-1])


def test_who_am_i_gets_a_refreshed_upstream_token_from_the_vault(vault_cluster: Cluster) -> None:
    assert vault_cluster.gateway is not None
    client = OAuthClient.register(vault_cluster.issuer)
    tokens = client.login(
        vault_cluster.gateway.resource, username="alice", password=vault_cluster.passwords()["alice"]
    )

    first, raw_first = who_am_i(vault_cluster, tokens["access_token"])
    assert first["sub"] and first["iss"] == vault_cluster.issuer, first
    assert "image_generation" in first["permissions"], first
    down = first["downstream"]
    assert down["available"] is True, down
    assert down["expires_at"] and down["expires_at"] > time.time(), down

    # A later request: the token is within the refresh-ahead window, so the vault refreshes it
    # at the provider. Expiries are whole seconds: let one pass so the new one is later.
    time.sleep(1.5)
    second, raw_second = who_am_i(vault_cluster, tokens["access_token"])
    assert second["downstream"]["available"] is True, second
    assert second["downstream"]["expires_at"] > down["expires_at"], (first, second)

    # The tool never shows a token: neither ours nor the provider's.
    for raw in (raw_first, raw_second):
        assert tokens["access_token"] not in raw
        assert tokens["refresh_token"] not in raw


def test_revoked_grant_has_no_upstream_token(vault_cluster: Cluster) -> None:
    """Revoking the grant drops its vault entry; a token of the grant is then refused outright."""
    assert vault_cluster.gateway is not None
    client = OAuthClient.register(vault_cluster.issuer)
    tokens = client.login(
        vault_cluster.gateway.resource, username="alice", password=vault_cluster.passwords()["alice"]
    )
    assert who_am_i(vault_cluster, tokens["access_token"])[0]["downstream"]["available"] is True
    r = client.revoke(tokens["refresh_token"])
    assert r.status_code == 200, r.text
    msg = stateless_msg("tools/call", {"name": "whoAmI", "arguments": {}})

    def refused() -> bool:
        r = httpx.post(
            vault_cluster.gateway.mcp_url, json=msg, headers=stateless_headers(tokens["access_token"], msg),
            timeout=HTTP_TIMEOUT,
        )
        return r.status_code == 401

    retry_until(refused, 15, "the gateway refuses a token of the revoked grant", interval=0.2)
