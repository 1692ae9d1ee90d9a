"""Both session workers take part: each owns shards and serves sessions; a worker that joins
under traffic takes its share without failing requests or losing sessions."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from harness import (
    OWNED_SHARDS,
    SHARD_COUNT,
    AuthService,
    Cluster,
    Gateway,
    NatsServer,
    Worker,
    mint_token,
    wait_shards_settled,
)
from mcp_http import SESSIONFUL_VERSION, headers, initialize_msg, open_session, response_for, rpc

SESSIONS = 40  # P(all on one worker) with an even shard split is 2 * 2**-40
SESSIONS_OPENED = "mcp_worker_sessions_opened_total"  # counter
JOIN_WINDOW = 40.0  # seconds of traffic at most while the second worker joins


def tools_list(client: httpx.Client, url: str, token: str, session: str) -> httpx.Response:
    return client.post(
        url, json=rpc("tools/list", {}, 2), headers=headers(token, session=session, version=SESSIONFUL_VERSION)
    )


def test_both_workers_own_shards(cluster: Cluster) -> None:
    assert len(cluster.workers) == 2
    for w in cluster.workers:
        assert httpx.get(f"{w.admin_url}/readyz", timeout=5).status_code == 200
    owned = [w.metric(OWNED_SHARDS) for w in cluster.workers]
    assert sum(owned) == SHARD_COUNT and min(owned) >= SHARD_COUNT // 4, owned


def test_sessions_spread_over_both_workers(cluster: Cluster, token: str) -> None:
    assert cluster.gateway is not None
    url = cluster.gateway.mcp_url
    before = [w.metric(SESSIONS_OPENED) for w in cluster.workers]
    with httpx.Client(timeout=30) as client:
        for i in range(SESSIONS):
            session = open_session(client, url, token)
            r = tools_list(client, url, token, session)
            assert r.status_code == 200, f"session {i}: {r.status_code} {r.text}"
            assert "result" in response_for(r, 2)
    after = [w.metric(SESSIONS_OPENED) for w in cluster.workers]
    assert all(a > b for a, b in zip(after, before)), f"{SESSIONS_OPENED} per worker before {before} after {after}"
    assert sum(after) - sum(before) >= SESSIONS, (before, after)


def traffic_until_settled(client: httpx.Client, gw: Gateway, token: str, workers: list[Worker]) -> list[str]:
    """Open and close sessions back to back until the shards have settled over `workers` (plus
    2 s), at most JOIN_WINDOW seconds; return a line for each request that failed. (Each session
    is closed again: one principal may only hold WORKER_MAX_SESSIONS_PER_PRINCIPAL at once.)"""
    failures: list[str] = []
    t0 = time.monotonic()
    settled_at: float | None = None
    while time.monotonic() - t0 < JOIN_WINDOW:
        r = client.post(gw.mcp_url, json=initialize_msg(), headers=headers(token))
        if r.status_code != 200:
            failures.append(f"+{time.monotonic() - t0:.1f}s initialize: {r.status_code} {r.text[:200]}")
        else:
            session = r.headers["mcp-session-id"]
            d = client.delete(gw.mcp_url, headers=headers(token, session=session, version=SESSIONFUL_VERSION))
            if not d.is_success:
                failures.append(f"+{time.monotonic() - t0:.1f}s delete: {d.status_code} {d.text[:200]}")
        if settled_at is None:
            try:
                owned = [w.metric(OWNED_SHARDS) for w in workers]
            except (httpx.HTTPError, AssertionError):
                continue
            if sum(owned) == SHARD_COUNT and min(owned) >= SHARD_COUNT / len(workers) / 2:
                settled_at = time.monotonic()
        elif time.monotonic() - settled_at > 2.0:
            break
    assert settled_at is not None, f"shards did not settle over {len(workers)} workers in {JOIN_WINDOW:.0f}s"
    return failures


def test_worker_joining_under_traffic(tmp_path: Path) -> None:
    """One worker owns all shards; a second joins while sessions are being opened. Every
    request must succeed while shards move (the gateway waits out a handover), and sessions
    opened before the join still answer afterwards, on whichever worker now owns them."""
    nats = NatsServer(tmp_path, "nats-join").start()
    auth = AuthService(tmp_path, name="auth-join").start(nats.url)
    w1 = Worker(tmp_path, "join-worker-1", nats.url).start()
    w2 = Worker(tmp_path, "join-worker-2", nats.url)
    gw = Gateway(tmp_path, nats.url, [auth.issuer], name="gateway-join").start()
    try:
        wait_shards_settled([w1])
        token = mint_token(key_file=auth.key_file, issuer=auth.issuer, audience=gw.resource)
        with httpx.Client(timeout=30) as client:
            sessions = [open_session(client, gw.mcp_url, token) for _ in range(10)]
            w2.start(wait=False)
            failures = traffic_until_settled(client, gw, token, [w1, w2])
            for s in sessions:
                r = tools_list(client, gw.mcp_url, token, s)
                if r.status_code != 200:
                    failures.append(f"old session {s[:8]} after the join: {r.status_code} {r.text[:200]}")
        assert not failures, f"{len(failures)} failed requests while a worker joined:\n" + "\n".join(failures[:20])
    finally:
        for part in (gw, w2, w1, auth, nats):
            part.stop()


def test_workers_starting_together_serve_at_once(tmp_path: Path) -> None:
    """Two workers start at the same moment (a fresh deployment). Once both say ready on
    /readyz, requests must succeed while they split the shards between them."""
    nats = NatsServer(tmp_path, "nats-together").start()
    auth = AuthService(tmp_path, name="auth-together").start(nats.url)
    gw = Gateway(tmp_path, nats.url, [auth.issuer], name="gateway-together").start()
    workers = [Worker(tmp_path, f"together-worker-{i}", nats.url).start(wait=False) for i in (1, 2)]
    try:
        for w in workers:
            w.wait_ready()
        token = mint_token(key_file=auth.key_file, issuer=auth.issuer, audience=gw.resource)
        with httpx.Client(timeout=30) as client:
            failures = traffic_until_settled(client, gw, token, workers)
        assert not failures, f"{len(failures)} failed requests while two new workers split the shards:\n" + "\n".join(
            failures[:20]
        )
    finally:
        for part in (gw, *workers, auth, nats):
            part.stop()
