"""A three-node NATS cluster: every service is given all three nodes (NATS_URL, comma-separated)
and creates its buckets and streams replicated on all three (NATS_REPLICAS=3). Losing one node,
whichever the services happen to be connected to, loses no state and fails no call: clients keep
calling `count` through it, and every session's counter ends at the number of calls it answered.

Contract: README "Reliability" (three-node NATS); issue: durable sessions (three-node NATS).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness import Cluster
from mcp_http import SESSIONFUL_VERSION, headers, open_session, response_for, rpc

SESSIONS = 12
AFTER_LOSS = 12.0  # seconds of calls after the node is gone: past raft elections, leases, reconnects
EXPECTED_STREAMS = {
    "KV_mcp_sessions", "KV_mcp_shard_leases", "KV_mcp_workers", "KV_mcp_responses", "KV_mcp_users",
    "KV_mcp_principal_sessions", "KV_mcp_tasks", "MCP_EVENTS", "KV_auth_grants", "KV_auth_vault", "KV_auth_revocations",
}


@pytest.fixture()
def three_nodes(tmp_path: Path) -> Iterator[Cluster]:
    from conftest import _running

    yield from _running(Cluster(tmp_path, workers=2, nats_nodes=3))


def streams(cluster: Cluster) -> dict[str, int]:
    """Every stream of the cluster: name → replicas."""
    assert cluster.nats_cluster is not None
    out: dict[str, int] = {}
    for account in cluster.nats_cluster.jsz(0).get("account_details", []):
        for stream in account.get("stream_detail", []):
            out[stream["name"]] = int(stream["config"].get("num_replicas", 1))
    return out


def leader_of(cluster: Cluster, stream: str) -> str:
    """The node name leading a stream's raft group (e.g. `nats-2`)."""
    assert cluster.nats_cluster is not None
    for account in cluster.nats_cluster.jsz(0).get("account_details", []):
        for s in account.get("stream_detail", []):
            if s["name"] == stream:
                return str(s.get("cluster", {}).get("leader", ""))
    raise AssertionError(f"stream {stream} not found")


def pick_victim(cluster: Cluster, kind: str) -> int:
    """Index of the node to kill: the one the gateway is connected to (its in-flight requests and
    replies cross it, with whatever else is connected there), or the leader of a stream."""
    nodes = cluster.nats_cluster
    assert nodes is not None
    if kind == "gateway":
        # The gateway has one connection per HTTP thread ("gateway <id> http-<n>", its requests
        # and replies) besides its main one; they may sit on different nodes. Kill the node
        # holding the most of the HTTP threads' connections.
        held = {i: sum(n.startswith("gateway") and " http-" in n for n in nodes.connections(i)) for i in range(len(nodes.nodes))}
        victim = max(held, key=lambda i: held[i])
        assert held[victim] >= 1, held
        return victim
    leader = leader_of(cluster, kind)
    names = [n.proc.name for n in nodes.nodes]
    assert leader in names, f"{kind} is led by {leader!r}, not one of {names}"
    return names.index(leader)


# Which node goes: the gateway's; the leader of the workers' heartbeat bucket (every worker is
# fenced until a new leader is elected, seconds later); the leader of the shard leases (no lease
# can be renewed meanwhile); the leader of the session records (no call can commit meanwhile).
VICTIMS = ["gateway", "KV_mcp_workers", "KV_mcp_shard_leases", "KV_mcp_sessions"]


@pytest.mark.parametrize("victim_kind", VICTIMS)
def test_losing_one_of_three_nats_nodes_fails_no_call(three_nodes: Cluster, victim_kind: str) -> None:
    cluster = three_nodes
    assert cluster.gateway is not None and cluster.nats_cluster is not None
    replicas = streams(cluster)
    missing = {s for s in EXPECTED_STREAMS if not any(name.startswith(s) for name in replicas)}
    assert not missing, f"streams not found: {missing} (have {sorted(replicas)})"
    assert all(r == 3 for r in replicas.values()), f"not replicated on three nodes: {replicas}"

    url = cluster.gateway.mcp_url
    token = cluster.mint("alice")
    stop = threading.Event()
    answered: dict[str, int] = {}
    failures: list[str] = []
    calls = [0]
    longest = [0.0]

    def load(session: str) -> None:
        with httpx.Client(timeout=30) as client:
            n = 2
            while not stop.is_set():
                call = rpc("tools/call", {"name": "count", "arguments": {}}, n)
                try:
                    sent = time.monotonic()
                    r = client.post(url, json=call, headers=headers(token, session=session, version=SESSIONFUL_VERSION))
                    longest[0] = max(longest[0], time.monotonic() - sent)
                    value = int(response_for(r, n)["result"]["structuredContent"]["count"]) if r.status_code == 200 else None
                except (httpx.HTTPError, KeyError) as err:
                    failures.append(f"{session}: {err!r}")
                    return
                if value is None:
                    failures.append(f"{session}: HTTP {r.status_code} {r.text[:200]}")
                    return
                answered[session] = answered.get(session, 0) + 1
                calls[0] += 1
                if value != answered[session]:
                    failures.append(f"{session}: counter {value} after {answered[session]} answered calls")
                    return
                n += 1

    with httpx.Client(timeout=30) as client:
        sessions = [open_session(client, url, token) for _ in range(SESSIONS)]
    threads = [threading.Thread(target=load, args=(s,), daemon=True) for s in sessions]
    for t in threads:
        t.start()
    try:
        start = time.monotonic()
        while calls[0] < 10 * SESSIONS and time.monotonic() - start < 30 and not failures:
            time.sleep(0.05)
        before = calls[0]
        nodes = cluster.nats_cluster
        index = pick_victim(cluster, victim_kind)
        victim = nodes.nodes[index]
        print(f"\nkilling {victim.proc.name} ({victim_kind}), serving {nodes.connections(index)}")
        victim.proc.kill()
        lost = time.monotonic()
        while time.monotonic() - lost < AFTER_LOSS and not failures:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not failures, f"{len(failures)} calls failed after losing one NATS node: {failures[:5]}"
    assert calls[0] > before + SESSIONS, f"calls stopped after losing the node ({before} → {calls[0]})"
    for proc in cluster.procs():
        if proc is not victim.proc:
            proc.check_alive()
    print(f"\nthree-node NATS: {calls[0]} calls, {calls[0] - before} after losing a node, none failed;"
          f" longest call {longest[0]:.2f} s")
