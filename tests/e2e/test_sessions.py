"""Sessions belong to the principal that created them, and end when deleted."""

from __future__ import annotations

import httpx
import pytest

from harness import Cluster
from mcp_http import SESSIONFUL_VERSION, headers, open_session, response_for, rpc


def tools_list(client: httpx.Client, url: str, token: str, session: str) -> httpx.Response:
    return client.post(
        url, json=rpc("tools/list", {}, 2), headers=headers(token, session=session, version=SESSIONFUL_VERSION)
    )


@pytest.mark.attack
def test_session_bound_to_principal(cluster: Cluster, token: str) -> None:
    assert cluster.gateway is not None
    url = cluster.gateway.mcp_url
    bob = cluster.mint("bob")
    with httpx.Client(timeout=30) as client:
        session = open_session(client, url, token)

        own = tools_list(client, url, token, session)
        assert own.status_code == 200, own.text
        assert "result" in response_for(own, 2)

        stolen = tools_list(client, url, bob, session)
        assert stolen.status_code == 404, f"bob used alice's session: {stolen.status_code} {stolen.text}"

        # Bob's attempt did not harm the session for its owner.
        again = tools_list(client, url, token, session)
        assert again.status_code == 200, again.text


@pytest.mark.attack
def test_other_principal_cannot_delete_session(cluster: Cluster, token: str) -> None:
    assert cluster.gateway is not None
    url = cluster.gateway.mcp_url
    mallory = cluster.mint("mallory")
    with httpx.Client(timeout=30) as client:
        session = open_session(client, url, token)
        r = client.delete(url, headers=headers(mallory, session=session, version=SESSIONFUL_VERSION))
        assert r.status_code == 404, r.text
        assert tools_list(client, url, token, session).status_code == 200


def test_deleted_session_is_gone(cluster: Cluster, token: str) -> None:
    assert cluster.gateway is not None
    url = cluster.gateway.mcp_url
    with httpx.Client(timeout=30) as client:
        session = open_session(client, url, token)
        r = client.delete(url, headers=headers(token, session=session, version=SESSIONFUL_VERSION))
        assert r.status_code in (200, 202, 204), r.text
        after = tools_list(client, url, token, session)
        assert after.status_code == 404, after.text
