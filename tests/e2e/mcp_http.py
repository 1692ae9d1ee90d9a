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
    params = msg.get("params") or {}
    name = None
    if msg["method"] in ("tools/call", "prompts/get"):
        name = params.get("name")
    elif msg["method"] in ("tasks/get", "tasks/update", "tasks/cancel"):
        name = params.get("taskId")
    if name is not None:
        extra["Mcp-Name"] = name
    return headers(token, version=STATELESS_VERSION, extra=extra)


LEGACY_VERSION = "2024-11-05"


class SseReader:
    """A GET event stream (`/sse` or `GET /mcp`) read by a background thread: each event lands
    in a queue, and `closed` is set when the server ends the stream. Every wait is bounded.

        with SseReader(url, token) as s:
            s.status == 200; s.endpoint()  # /sse: the `endpoint` event's data
            s.message(timeout=10)          # the next JSON-RPC message on the stream
            s.wait_closed(timeout=20)      # True once the server has ended it
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        headers: dict[str, str] | None = None,
        open_timeout: float = 15.0,
        read_timeout: float = 120.0,
        post: dict[str, Any] | None = None,
    ) -> None:
        import queue
        import threading

        # `post`: a JSON-RPC request whose answer is read as it streams (POST /mcp).
        h = {"Accept": ACCEPT if post is not None else "text/event-stream"}
        if post is not None:
            h["Content-Type"] = "application/json"
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        h.update(headers or {})
        self.events: "queue.Queue[tuple[str, str]]" = queue.Queue()
        # The `id:` of each queued event (None when it had none), in the same order, and the
        # last id the stream carried (priming events included): what a reconnect sends back.
        self.ids: "queue.Queue[str | None]" = queue.Queue()
        self.last_id: str | None = None
        self.priming_id: str | None = None  # the id of the stream's first priming event, if any
        self.event_id: str | None = None  # the id of the event `event()`/`message()` returned last
        self.closed = threading.Event()
        self.error: BaseException | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(open_timeout, read=read_timeout), trust_env=False)
        if post is None:
            self._cm = self._client.stream("GET", url, headers=h)
        else:
            self._cm = self._client.stream("POST", url, headers=h, json=post)
        self.response = self._cm.__enter__()
        self.status = self.response.status_code
        self._thread = threading.Thread(target=self._read, daemon=True)
        if self.status == 200:
            self._thread.start()
        else:
            self.response.read()
            self.closed.set()

    def _read(self) -> None:
        event, data, id = "message", [], None
        try:
            for line in self.response.iter_lines():
                if line == "":
                    if id is not None:
                        self.last_id = id  # a priming event (no data) only moves the cursor
                        if not "".join(data) and self.priming_id is None:
                            self.priming_id = id
                    if "".join(data):
                        self.ids.put(id)  # first, so a reader of the event finds its id
                        self.events.put((event, "\n".join(data)))
                    event, data, id = "message", [], None
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
                elif line.startswith("id:"):
                    id = line[3:].strip()
        except BaseException as exc:  # noqa: BLE001 - a read timeout or reset ends the stream for us
            self.error = exc
        finally:
            self.closed.set()

    def event(self, timeout: float = 10.0) -> tuple[str, str]:
        """The next (event name, data); raises queue.Empty after `timeout` seconds."""
        self.event_id = None
        item = self.events.get(timeout=timeout)
        self.event_id = self.ids.get_nowait()
        return item

    def endpoint(self, timeout: float = 10.0) -> str:
        name, data = self.event(timeout)
        assert name == "endpoint", f"first event is {name!r}: {data!r}"
        return data

    def message(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next JSON-RPC message (skipping other events)."""
        import queue
        import time

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise queue.Empty(f"no JSON-RPC message on the stream within {timeout}s")
            name, data = self.event(left)
            if name == "message":
                return json.loads(data)

    def messages_now(self) -> list[dict[str, Any]]:
        """Every JSON-RPC message queued so far, without waiting."""
        out = []
        while not self.events.empty():
            name, data = self.events.get_nowait()
            self.event_id = self.ids.get_nowait()
            if name == "message":
                out.append(json.loads(data))
        return out

    def wait_closed(self, timeout: float) -> bool:
        return self.closed.wait(timeout)

    def close(self) -> None:
        try:
            self._cm.__exit__(None, None, None)
        finally:
            self._client.close()

    def __enter__(self) -> "SseReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def legacy_post(client: httpx.Client, base_url: str, endpoint: str, token: str, msg: dict[str, Any]) -> httpx.Response:
    """POST one message to the legacy `/messages?sessionId=…` endpoint an `/sse` stream named."""
    return client.post(
        base_url + endpoint, json=msg, headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    )
