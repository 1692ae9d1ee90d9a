"""Overload is shed, not queued: past the gateway's bound on requests in flight
(GATEWAY_MAX_INFLIGHT) and past a worker's bound on stateless requests
(WORKER_MAX_STATELESS_INFLIGHT) a request is answered at once with 503, a
`Retry-After` and a JSON-RPC error (code -32031), and it is not run. When the
load is gone the same requests are served again."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import Cluster, prometheus_samples, retry_until
from mcp_http import (
    SESSIONFUL_VERSION,
    headers,
    open_session,
    response_for,
    rpc,
    stateless_headers,
    stateless_msg,
)

OVERLOADED = -32031
# Long enough for the checks made while the slots are held; the calls end by themselves.
HOLD_SECONDS = 3


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One worker (so every stateless request meets the same bound), two gateway slots,
    one stateless slot on the worker; the conformance tools (`slow_compute` holds a slot)."""
    from conftest import _running

    yield from _running(
        Cluster(
            tmp_path_factory.mktemp("overload"),
            workers=1,
            profile="conformance",
            gateway_env={"GATEWAY_MAX_INFLIGHT": "2"},
            worker_env={"WORKER_MAX_STATELESS_INFLIGHT": "1"},
        )
    )


def sample(text: str, series: str) -> float:
    """The value of one series (`name` or `name{label="value"}`, exactly as exposed)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def gateway_metric(c: Cluster, series: str) -> float:
    assert c.gateway is not None
    return sample(c.gateway.metrics(), series)


def assert_shed(r: httpx.Response, id: int | None) -> None:
    """503 with Retry-After and the JSON-RPC overload error; `id`: the request's id, or
    None when it was shed before its body was read."""
    assert r.status_code == 503, f"{r.status_code} {r.text[:300]}"
    retry_after = r.headers.get("retry-after")
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1, dict(r.headers)
    body = r.json()
    assert body["error"]["code"] == OVERLOADED, body
    assert "overloaded" in body["error"]["message"].lower(), body
    assert body["id"] == id, body


def hold(url: str, hdrs: dict[str, str], msg: dict[str, Any], out: list[httpx.Response]) -> threading.Thread:
    """Send `msg` in the background (a slow tool call that holds a slot)."""

    def run() -> None:
        out.append(httpx.post(url, json=msg, headers=hdrs, timeout=30))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_the_gateway_sheds_past_its_in_flight_bound_and_runs_nothing_it_shed(small: Cluster) -> None:
    assert small.gateway is not None
    url = small.gateway.mcp_url
    token = small.mint("alice")
    with httpx.Client(timeout=30) as client:
        session = open_session(client, url, token)
        h = headers(token, session=session, version=SESSIONFUL_VERSION)
        shed_before = gateway_metric(small, 'mcp_gateway_requests_shed_total{by="gateway"}')
        held: list[httpx.Response] = []
        threads = [
            hold(url, h, rpc("tools/call", {"name": "slow_compute", "arguments": {"seconds": HOLD_SECONDS}}, 10 + i), held)
            for i in range(2)
        ]
        retry_until(
            lambda: gateway_metric(small, "mcp_gateway_requests_in_flight") >= 2,
            timeout=10,
            what="both slow calls in flight at the gateway",
        )
        # Full: the next call is shed, and never reaches the worker.
        worker = small.workers[0]
        envelopes = prometheus_samples(worker.metrics()).get("mcp_worker_envelopes_total", 0.0)
        r = client.post(url, json=rpc("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}, 20), headers=h)
        assert_shed(r, None)  # shed before its body was read
        # Shed before any work, the token check included.
        anonymous = client.post(url, json=rpc("tools/list", {}, 21), headers=headers(None, session=session))
        assert anonymous.status_code == 503, anonymous.text
        assert gateway_metric(small, 'mcp_gateway_requests_shed_total{by="gateway"}') >= shed_before + 2
        assert prometheus_samples(worker.metrics()).get("mcp_worker_envelopes_total", 0.0) == envelopes, (
            "a shed request reached the worker"
        )

        for t in threads:
            t.join(timeout=HOLD_SECONDS + 20)
        assert [x.status_code for x in held] == [200, 200], [x.text[:200] for x in held]
        assert gateway_metric(small, "mcp_gateway_requests_in_flight") == 0
        # Served again once the load is gone.
        r = client.post(url, json=rpc("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}, 22), headers=h)
        assert r.status_code == 200, r.text
        assert response_for(r, 22)["result"]["content"][0]["text"] == "3"


def test_a_worker_at_its_stateless_bound_sheds_with_503_and_retry_after(small: Cluster) -> None:
    assert small.gateway is not None
    url = small.gateway.mcp_url
    token = small.mint("alice")
    slow = stateless_msg("tools/call", {"name": "slow_compute", "arguments": {"seconds": HOLD_SECONDS}}, id=30)
    held: list[httpx.Response] = []
    t = hold(url, stateless_headers(token, slow), slow, held)
    worker = small.workers[0]

    retry_until(
        lambda: sample(worker.metrics(), "mcp_worker_stateless_inflight") >= 1,
        timeout=10,
        what="the slow stateless call running on the worker",
    )
    quick = stateless_msg("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}, id=31)
    r = httpx.post(url, json=quick, headers=stateless_headers(token, quick), timeout=30)
    assert_shed(r, 31)
    assert gateway_metric(small, 'mcp_gateway_requests_shed_total{by="worker"}') >= 1
    t.join(timeout=HOLD_SECONDS + 20)
    assert [x.status_code for x in held] == [200], [x.text[:200] for x in held]
    r = httpx.post(url, json=quick, headers=stateless_headers(token, quick), timeout=30)
    assert r.status_code == 200, r.text
    assert "3" in r.text
