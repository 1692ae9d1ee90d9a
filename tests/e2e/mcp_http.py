"""Raw HTTP helpers for MCP Streamable HTTP, for checks below the level of an SDK."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx

SESSIONFUL_VERSION = "2025-11-25"
STATELESS_VERSION = "2026-07-28"
ACCEPT = "application/json, text/event-stream"


def rpc(method: str, params: dict[str, Any] | None = None, id: int | str | None = 1) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    if id is not None:
        msg["id"] = id
    return msg


def initialize_msg(id: int = 1, version: str = SESSIONFUL_VERSION) -> dict[str, Any]:
    return rpc(
        "initialize",
        {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "mcp-cluster-e2e", "version": "0"},
        },
        id,
    )


def headers(
    token: str | None,
    *,
    session: str | None = None,
    version: str | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    h = {"Accept": ACCEPT, "Content-Type": "application/json"}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if session is not None:
        h["Mcp-Session-Id"] = session
    if version is not None:
        h["MCP-Protocol-Version"] = version
    if extra:
        h.update(extra)
    return h


def messages(resp: httpx.Response) -> list[dict[str, Any]]:
    """JSON-RPC messages in a response body, whether plain JSON or an SSE stream."""
    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "text/event-stream":
        out: list[dict[str, Any]] = []
        for event in resp.text.replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(
                line[5:].lstrip(" ") for line in event.split("\n") if line.startswith("data:")
            )
            if data.strip():
                out.append(json.loads(data))
        return out
    body = resp.json()
    return body if isinstance(body, list) else [body]


def response_for(resp: httpx.Response, id: int | str) -> dict[str, Any]:
    """The JSON-RPC response with `id` in `resp`; fails the test if there is none."""
    msgs = messages(resp)
    for m in msgs:
        if m.get("id") == id and ("result" in m or "error" in m):
            return m
    raise AssertionError(f"no JSON-RPC response with id {id!r} in {resp.status_code} {msgs!r}")


def open_session(client: httpx.Client, url: str, token: str) -> str:
    """initialize + notifications/initialized over raw HTTP; returns the Mcp-Session-Id."""
    r = client.post(url, json=initialize_msg(), headers=headers(token))
    assert r.status_code == 200, f"initialize: {r.status_code} {r.text}"
    session = r.headers.get("mcp-session-id")
    assert session, f"initialize answered without Mcp-Session-Id: {dict(r.headers)}"
    result = response_for(r, 1)
    assert "result" in result, result
    version = result["result"]["protocolVersion"]
    r = client.post(
        url,
        json=rpc("notifications/initialized", id=None),
        headers=headers(token, session=session, version=version),
    )
    assert r.status_code == 202, f"notifications/initialized: {r.status_code} {r.text}"
    return session


def random_session_id() -> str:
    return str(uuid.uuid4())


def stateless_msg(method: str, params: dict[str, Any] | None = None, id: int = 1) -> dict[str, Any]:
    """A 2026-07-28 request: no session; version and capabilities ride in `_meta`."""
    p = dict(params or {})
    p["_meta"] = {
        "io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
        **p.get("_meta", {}),
    }
    return rpc(method, p, id)


def stateless_headers(token: str | None, msg: dict[str, Any]) -> dict[str, str]:
    """Headers of a 2026-07-28 request, with the Mcp-Method / Mcp-Name routing headers."""
    extra = {"Mcp-Method": msg["method"]}
    name = (msg.get("params") or {}).get("name") if msg["method"] in ("tools/call", "prompts/get") else None
    if name is not None:
        extra["Mcp-Name"] = name
    return headers(token, version=STATELESS_VERSION, extra=extra)
