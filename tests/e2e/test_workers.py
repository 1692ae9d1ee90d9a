"""Both session workers take part: each owns shards and serves sessions."""

from __future__ import annotations

import re

import httpx

from harness import Cluster, Worker, retry_until
from mcp_http import SESSIONFUL_VERSION, headers, open_session, response_for, rpc

SESSIONS = 40  # P(all on one worker) with an even shard split is 2 * 2**-40

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


def owned_shards(w: Worker) -> float:
    s = samples(w.metrics())
    return sum(v for k, v in s.items() if "shard" in k and ("own" in k or "lease" in k))


def sessions_seen(w: Worker) -> float:
    s = samples(w.metrics())
    return sum(v for k, v in s.items() if "session" in k and not k.endswith(("_bucket", "_sum", "_count")))


def test_both_workers_own_shards(cluster: Cluster) -> None:
    assert len(cluster.workers) == 2
    for w in cluster.workers:
        assert httpx.get(f"{w.admin_url}/readyz", timeout=5).status_code == 200
    # Rebalancing to a fair share is eventually consistent: wait (bounded) until both own shards.
    counts = retry_until(
        lambda: (c := [owned_shards(w) for w in cluster.workers]) if all(x > 0 for x in c) else None,
        60,
        "both workers own shards per /metrics",
        interval=0.5,
    )
    assert all(c > 0 for c in counts), counts


def test_sessions_spread_over_both_workers(cluster: Cluster, token: str) -> None:
    assert cluster.gateway is not None
    url = cluster.gateway.mcp_url
    before = [sessions_seen(w) for w in cluster.workers]
    with httpx.Client(timeout=30) as client:
        for i in range(SESSIONS):
            session = open_session(client, url, token)
            r = client.post(
                url, json=rpc("tools/list", {}, 2), headers=headers(token, session=session, version=SESSIONFUL_VERSION)
            )
            assert r.status_code == 200, f"session {i}: {r.status_code} {r.text}"
            assert "result" in response_for(r, 2)
    after = [sessions_seen(w) for w in cluster.workers]
    grew = [a > b for a, b in zip(after, before)]
    assert all(grew), f"session metrics per worker before {before} after {after}"
