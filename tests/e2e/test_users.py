"""Per-user actors: the `notes` tool keeps a list per user (`user:<sub>`), reached from every
session and from stateless 2026-07-28 requests alike, owned by the worker leasing the user's
shard. The list is the user's, not the session's: another session, another protocol revision
and the official Python SDK all see it; another user never does; it survives the loss of the
worker that owned the user, and each addition is made once.

Contract: README "Tools" (notes) and "Reliability"; issue: durable sessions (per-user actors).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from harness import Cluster, Worker
from mcp_http import (
    SESSIONFUL_VERSION, STATELESS_VERSION, headers, open_session, response_for, rpc, stateless_headers,
    stateless_msg,
)

LEASE_TTL = 10.0  # WORKER_LEASE_TTL: a takeover must not wait for the leases to expire
FLOW_TIMEOUT = 60


@pytest.fixture()
def pair(tmp_path: Path) -> Iterator[Cluster]:
    from conftest import _running

    yield from _running(Cluster(tmp_path, workers=2))


def result_of(r: httpx.Response, id: int) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    answer = response_for(r, id)
    assert "result" in answer, answer
    return answer["result"]


def in_session(client: httpx.Client, url: str, token: str, session: str, id: int, **args: Any) -> dict[str, Any]:
    r = client.post(url, json=rpc("tools/call", {"name": "notes", "arguments": args}, id),
                    headers=headers(token, session=session, version=SESSIONFUL_VERSION))
    return result_of(r, id)


def stateless(client: httpx.Client, url: str, token: str, id: int, **args: Any) -> dict[str, Any]:
    msg = stateless_msg("tools/call", {"name": "notes", "arguments": args}, id)
    return result_of(client.post(url, json=msg, headers=stateless_headers(token, msg)), id)


def notes(result: dict[str, Any]) -> list[str]:
    assert not result.get("isError"), result
    return list(result["structuredContent"]["notes"])


def user_envelopes(worker: Worker) -> float:
    """User-state operations this worker's user actors took (`mcp_worker_envelopes_total{kind="user"}`)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in worker.metrics().splitlines()
               if line.startswith("mcp_worker_envelopes_total{") and 'kind="user"' in line)


def test_notes_follow_their_user_across_sessions_revisions_and_clients(pair: Cluster) -> None:
    assert pair.gateway is not None
    url = pair.gateway.mcp_url
    alice, bob = pair.mint("alice"), pair.mint("bob")
    with httpx.Client(timeout=30) as client:
        first = open_session(client, url, alice)
        assert notes(in_session(client, url, alice, first, 2, add="one")) == ["one"]
        assert notes(stateless(client, url, alice, 3, add="two")) == ["one", "two"]
        second = open_session(client, url, alice)
        assert notes(in_session(client, url, alice, second, 2)) == ["one", "two"]
        assert notes(stateless(client, url, bob, 4)) == [], "another user saw alice's notes"
        tools = client.post(url, json=(m := stateless_msg("tools/list", {}, 5)), headers=stateless_headers(alice, m))
        assert "notes" in {t["name"] for t in result_of(tools, 5)["tools"]}

    async def sdk() -> list[str]:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {alice}"}, timeout=30) as http:
            async with Client(streamable_http_client(url, http_client=http), mode=STATELESS_VERSION) as c:
                result = await c.call_tool("notes", {"add": "three"})
                assert not result.is_error, result
                return list(result.structured_content["notes"])

    async def bounded() -> list[str]:
        with anyio.fail_after(FLOW_TIMEOUT):
            return await sdk()

    assert anyio.run(bounded) == ["one", "two", "three"]


def test_bad_notes_are_refused_and_change_nothing(pair: Cluster) -> None:
    assert pair.gateway is not None
    url = pair.gateway.mcp_url
    token = pair.mint("carol")
    with httpx.Client(timeout=30) as client:
        assert notes(stateless(client, url, token, 2, add="kept")) == ["kept"]
        for i, args in enumerate([{"add": ""}, {"add": "x" * 501}, {"add": 7}, {"clear": "yes"}]):
            msg = stateless_msg("tools/call", {"name": "notes", "arguments": args}, 10 + i)
            r = client.post(url, json=msg, headers=stateless_headers(token, msg))
            assert r.status_code == 200, r.text
            answer = response_for(r, 10 + i)
            refused = "error" in answer or answer["result"].get("isError")
            assert refused, (args, answer)
        assert notes(stateless(client, url, token, 20)) == ["kept"]


def test_notes_survive_the_loss_of_the_worker_owning_their_user(pair: Cluster) -> None:
    assert pair.gateway is not None
    url = pair.gateway.mcp_url
    token = pair.mint("dave")
    with httpx.Client(timeout=30) as client:
        assert notes(stateless(client, url, token, 2, add="before")) == ["before"]
        owners = [w for w in pair.workers if user_envelopes(w) > 0]
        assert len(owners) == 1, [user_envelopes(w) for w in pair.workers]
        owner = owners[0]
        assert owner.proc is not None
        owner.proc.kill()
        killed = time.monotonic()
        # The first call after the kill may wait out the takeover inside the cluster.
        after = notes(stateless(client, url, token, 3, add="after"))
        took = time.monotonic() - killed
        print(f"\nuser actor served again {took:.2f}s after its worker was killed")
        assert after == ["before", "after"], after
        assert took < LEASE_TTL / 2, f"took {took:.1f}s: the leases expired rather than moved"
        assert notes(stateless(client, url, token, 4)) == ["before", "after"], "an addition was made twice"
