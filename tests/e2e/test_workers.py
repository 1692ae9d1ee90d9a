"""Both session workers take part: each owns shards and serves sessions."""

from __future__ import annotations

import re

import httpx

from harness import Cluster, Worker, retry_until
from mcp_http import SESSIONFUL_VERSION, headers, open_session, response_for, rpc

SESSIONS = 40  # P(all on one worker) with an even shard split is 2 * 2**-40
SHARD_COUNT = 1024  # proto::shard::SHARD_COUNT
OWNED_SHARDS = "mcp_worker_owned_shards"  # gauge: shards leased by this worker
SESSIONS_OPENED = "mcp_worker_sessions_opened_total"  # counter

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def samples(text: str) -> dict[str, float]:
    """Prometheus text format → {name: sum over label sets}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            try:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
            except ValueError:
                continue
    return out


def metric(w: Worker, name: str) -> float:
    s = samples(w.metrics())
    assert name in s, f"{w.worker_id} /metrics has no {name}"
    return s[name]


def test_both_workers_own_shards(cluster: Cluster) -> None:
    assert len(cluster.workers) == 2
    for w in cluster.workers:
        assert httpx.get(f"{w.admin_url}/readyz", timeout=5).status_code == 200
    # Rebalancing to a fair share is eventually consistent: wait (bounded) until each worker
    # owns a fair part (at least a quarter here) and together they own every shard once.
    def split() -> list[float]:
        c = [metric(w, OWNED_SHARDS) for w in cluster.workers]
        assert min(c) >= SHARD_COUNT // 4 and sum(c) == SHARD_COUNT, f"owned shards per worker: {c}"
        return c

    retry_until(split, 60, f"both workers own a fair share of the {SHARD_COUNT} shards", interval=0.5)


def test_sessions_spread_over_both_workers(cluster: Cluster, token: str) -> None:
    assert cluster.gateway is not None
    url = cluster.gateway.mcp_url
    before = [metric(w, SESSIONS_OPENED) for w in cluster.workers]
    with httpx.Client(timeout=30) as client:
        for i in range(SESSIONS):
            session = open_session(client, url, token)
            r = client.post(
                url, json=rpc("tools/list", {}, 2), headers=headers(token, session=session, version=SESSIONFUL_VERSION)
            )
            assert r.status_code == 200, f"session {i}: {r.status_code} {r.text}"
            assert "result" in response_for(r, 2)
    after = [metric(w, SESSIONS_OPENED) for w in cluster.workers]
    grew = [a > b for a, b in zip(after, before)]
    assert all(grew), f"{SESSIONS_OPENED} per worker before {before} after {after}"
    assert sum(after) - sum(before) >= SESSIONS, (before, after)
