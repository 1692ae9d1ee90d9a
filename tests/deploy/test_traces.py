"""OpenTelemetry traces across the cluster, exported over OTLP to a real receiver.

All three services get the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`,
`OTEL_TRACES_SAMPLER`) pointing at `otlp-sink` (testkit: an OTLP/HTTP receiver decoding the
official OpenTelemetry protobuf definitions). A user signs in at the real upstream OpenID provider
(npm `oidc-provider`), then calls `whoAmI`, a tool that asks the auth-service's vault for the
user's upstream token:

- a sessionful call with a W3C `traceparent` header yields ONE trace under the client's span:
  gateway `http.server` → `auth.verify` and `mcp.message` → `nats.request` → worker `envelope`
  → `actor.handle` → `tool.call` → `vault.request` → auth-service `vault.serve`, each the child of
  the one before, in the services named by their variables;
- a 2026-07-28 (stateless) call with no header but `params._meta.traceparent` continues that
  context from `mcp.message` on (linked to the HTTP span, which began before the body was read)
  down to the vault;
- the services' JSON logs inside those spans carry the trace id;
- with no OTLP endpoint set, nothing is exported and no trace-only span is made (the same call's
  logs carry no `trace_id`).

Contract: issue "Deploy and watch it" (OpenTelemetry traces); deploy/README.md "Traces".
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from harness import Cluster, Proc, free_port  # noqa: E402
from mcp_http import (  # noqa: E402
    SESSIONFUL_VERSION,
    headers,
    open_session,
    response_for,
    rpc,
    stateless_headers,
    stateless_msg,
)
from oauth_client import OAuthClient  # noqa: E402

SINK = ROOT / "target" / "release" / "otlp-sink"
HTTP_TIMEOUT = 20.0
SPANS_WAIT = 20.0  # seconds for the batch exporters to deliver (they send every 200 ms here)
GATEWAY_SERVICE = "mcp-gateway-under-test"  # OTEL_SERVICE_NAME; the others keep their defaults


def _running(cluster: Cluster) -> Iterator[Cluster]:
    from conftest import _running as running

    yield from running(cluster)


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    assert SINK.exists(), f"{SINK} missing: run `cargo build --release --workspace` (make build)"
    workdir = tmp_path_factory.mktemp("otlp")
    spans = workdir / "spans.jsonl"
    port = free_port()
    proc = Proc("otlp-sink", [str(SINK), str(spans)], {"OTLP_SINK_LISTEN": f"127.0.0.1:{port}"},
                workdir / "otlp-sink.log").start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.post(f"{url}/v1/traces", content=b"", timeout=1)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, f"otlp-sink did not start:\n{proc.tail(20)}"
            time.sleep(0.1)
    yield url, spans
    proc.stop()


@pytest.fixture(scope="module")
def traced(sink: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    url, _ = sink
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": url,
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    yield from _running(Cluster(
        tmp_path_factory.mktemp("traced"),
        workers=2,
        oauth="oidc",
        auth_env={**otel, "RUST_LOG": "info"},
        gateway_env={**otel, "OTEL_SERVICE_NAME": GATEWAY_SERVICE},
        worker_env={**otel, "RUST_LOG": "info,session_worker::vault=debug"},
    ))


def sign_in(cluster: Cluster) -> str:
    assert cluster.gateway is not None
    client = OAuthClient.register(cluster.issuer)
    tokens = client.login(cluster.gateway.resource, username="alice", password=cluster.passwords()["alice"])
    return str(tokens["access_token"])


def spans_of(path: Path, trace_id: str, count: int) -> list[dict[str, Any]]:
    """The spans of `trace_id` once `count` of them arrived (bounded wait)."""
    deadline = time.monotonic() + SPANS_WAIT
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        records = [json.loads(line) for line in lines]
        errors = [r for r in records if "error" in r]
        assert not errors, f"the receiver could not decode an export: {errors}"
        spans = [r for r in records if r.get("trace_id") == trace_id]
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.2)


# OTLP span kinds
SERVER, CLIENT = 2, 3

# The spans by the names they are exported under, with the kind where two share a name.
HTTP, VERIFY, MESSAGE, HOP = ("POST /mcp", None), ("bearer token check", None), ("tools/call", None), ("deliver send", CLIENT)
ENVELOPE, ACTOR, TOOL = ("deliver process", SERVER), ("session actor tools/call", None), ("tools/call whoAmI", None)
VAULT_REQUEST, VAULT_SERVE = ("vault token", CLIENT), ("vault token", SERVER)


def one(spans: list[dict[str, Any]], which: tuple[str, int | None]) -> dict[str, Any]:
    name, kind = which
    found = [s for s in spans if s["name"] == name and (kind is None or s["kind"] == kind)]
    assert len(found) == 1, f"{len(found)} spans {which!r} in {[(s['name'], s['kind']) for s in spans]}"
    return found[0]


def child_of(child: dict[str, Any], parent: dict[str, Any]) -> None:
    assert child["parent_span_id"] == parent["span_id"], (
        f"{child['name']} ({child['service']}) is not the child of {parent['name']} ({parent['service']}): "
        f"{child['parent_span_id']} != {parent['span_id']}")


def who_am_i_ok(r: httpx.Response, id: int) -> None:
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]}"
    result = response_for(r, id)["result"]
    assert not result.get("isError"), result
    report = json.loads(result["content"][0]["text"])
    assert report["downstream"]["available"] is True, report  # the vault was asked


CHAIN = [HTTP, MESSAGE, HOP, ENVELOPE, ACTOR, TOOL, VAULT_REQUEST, VAULT_SERVE]


def test_one_trace_covers_client_gateway_worker_and_auth_service(traced: Cluster, sink: tuple[str, Path]) -> None:
    assert traced.gateway is not None
    _, path = sink
    token = sign_in(traced)
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        session = open_session(client, traced.gateway.mcp_url, token)
        h = headers(token, session=session, version=SESSIONFUL_VERSION)
        h["traceparent"] = f"00-{trace_id}-{client_span}-01"
        r = client.post(traced.gateway.mcp_url, json=rpc("tools/call", {"name": "whoAmI", "arguments": {}}, 7),
                        headers=h)
    who_am_i_ok(r, 7)

    spans = spans_of(path, trace_id, len(CHAIN) + 1)
    http = one(spans, HTTP)
    assert http["parent_span_id"] == client_span, "the gateway continues the client's trace"
    child_of(one(spans, VERIFY), http)
    chain = [one(spans, n) for n in CHAIN]
    for parent, child in zip(chain, chain[1:]):
        child_of(child, parent)
    assert http["service"] == GATEWAY_SERVICE, "OTEL_SERVICE_NAME names the gateway's spans"
    assert {one(spans, n)["service"] for n in (MESSAGE, HOP, VERIFY)} == {GATEWAY_SERVICE}
    assert {one(spans, n)["service"] for n in (ENVELOPE, ACTOR, TOOL, VAULT_REQUEST)} == {"session-worker"}
    assert one(spans, VAULT_SERVE)["service"] == "auth-service"
    assert http["attributes"]["http.response.status_code"] == 200
    assert one(spans, TOOL)["attributes"]["gen_ai.tool.name"] == "whoAmI"
    assert len(spans) == len(CHAIN) + 1, [(s["name"], s["service"]) for s in spans]

    # The logs written under those spans name the trace.
    worker_logs = "".join(w.proc.log_text() for w in traced.workers if w.proc)
    lines = [json.loads(line) for line in worker_logs.splitlines()
             if line.startswith("{") and "vault gave" in line]
    assert lines, "the worker logged its vault request (debug)"
    assert any(trace_id in json.dumps(line.get("spans", [])) for line in lines), lines[-1]


def test_a_stateless_request_continues_the_context_in_its_meta(traced: Cluster, sink: tuple[str, Path]) -> None:
    assert traced.gateway is not None
    _, path = sink
    token = sign_in(traced)
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    msg = stateless_msg("tools/call", {"name": "whoAmI", "arguments": {},
                                       "_meta": {"traceparent": f"00-{trace_id}-{client_span}-01"}}, 9)
    r = httpx.post(traced.gateway.mcp_url, json=msg, headers=stateless_headers(token, msg), timeout=HTTP_TIMEOUT)
    who_am_i_ok(r, 9)

    wanted = [MESSAGE, ("stateless send", CLIENT), ("stateless process", SERVER), TOOL, VAULT_REQUEST, VAULT_SERVE]
    spans = spans_of(path, trace_id, len(wanted))
    message = one(spans, MESSAGE)
    assert message["parent_span_id"] == client_span, "the context in _meta is continued"
    assert message["links"], "linked to the HTTP request's span"
    assert message["links"][0]["trace_id"] != trace_id
    chain = [one(spans, n) for n in wanted]
    for parent, child in zip(chain, chain[1:]):
        child_of(child, parent)
    assert one(spans, ("stateless process", SERVER))["attributes"].get("messaging.operation.type") == "process"
    assert HTTP[0] not in {s["name"] for s in spans}, "the HTTP span began before the body was read"


def test_nothing_is_exported_or_traced_without_an_endpoint(tmp_path: Path) -> None:
    """The same call on a cluster without OTEL_* variables: no trace-only spans, no trace ids in
    the logs (and nothing to send anywhere)."""
    cluster_iter = _running(Cluster(tmp_path, workers=1, oauth="oidc",
                                    worker_env={"RUST_LOG": "info,session_worker::vault=debug"}))
    cluster = next(cluster_iter)
    try:
        assert cluster.gateway is not None
        token = sign_in(cluster)
        msg = stateless_msg("tools/call", {"name": "whoAmI", "arguments": {}}, 3)
        r = httpx.post(cluster.gateway.mcp_url, json=msg, headers=stateless_headers(token, msg), timeout=HTTP_TIMEOUT)
        who_am_i_ok(r, 3)
        logs = "".join(w.proc.log_text() for w in cluster.workers if w.proc)
        vault_lines = [line for line in logs.splitlines() if "vault gave" in line]
        assert vault_lines, "the worker logged its vault request (debug)"
        assert not any("trace_id" in line or "tool.call" in line or "actor.handle" in line for line in vault_lines), \
            vault_lines[-1]
        assert "exporting traces over OTLP" not in logs
    finally:
        for _ in cluster_iter:
            pass
