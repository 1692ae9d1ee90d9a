"""The chaos suite's load generator: `count` calls on many sessions at once, with a ledger per
session that tells a duplicated or lost execution from an honest failure.

One asyncio loop in a background thread (`AsyncRunner`) runs everything: opening the sessions,
`concurrency` coroutines that take the next idle session from a FIFO queue and make one call on
it (so a session has at most one call in flight and every session is called in turn), and, when
asked, one GET /mcp event stream per session that reconnects with `Last-Event-ID`. The main
thread injects faults with the harness and reads the counters (plain ints and floats: a
snapshot under the GIL is good enough).

The ledger (tool `count`, which answers the session's new counter value): a session that got k
answers and whose every failed call certainly did not run must answer k+1 next. A failed call
that may have run ("uncertain": a transport error, a timeout, HTTP 5xx, JSON-RPC -32000 or
-32603) allows the next answer to be one higher per such call; those increments are counted as
`uncertain_ran`, not as duplicates. Anything else is a duplicate: a value repeated (or lower), or
a value skipped that no uncertain call explains. Uncertainty from an HTTP answer is settled by
the next answer (the cluster was done with that request when it answered); from a transport
error or client timeout it lingers (the request may still be running somewhere) until a jump
uses it up.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from mcp_http import SESSIONFUL_VERSION, headers, initialize_msg, response_for, rpc

T = TypeVar("T")

# Seconds one HTTP attempt may take (longer than the gateway's own retry windows: ack timeout 5 s,
# no-responders 15 s, worker-gone retries), so the cluster, not the client, decides a call's fate.
CALL_TIMEOUT = 60.0
# Pacing of the load generator: pause after a failed call, and between a client's retries.
FAILED_CALL_PACING = 0.05
RETRY_PACING = 0.1
# Pacing and budget of a GET stream's reconnects.
STREAM_RECONNECT_PACING = 0.1
STREAM_MAX_CONNECTS = 200
# SSE read timeout: well above the gateway's keep-alive comments (GATEWAY_SSE_KEEPALIVE, 15 s).
STREAM_READ_TIMEOUT = 60.0

# The tools the generator can drive: arguments, and whether answers are a per-session sequence.
TOOLS: dict[str, tuple[dict[str, Any], bool]] = {
    "count": ({"by": 1}, True),
    "add": ({"a": 1, "b": 2}, False),  # a stand-in to try the harness: no ledger, no events
}


class AsyncRunner:
    """An asyncio loop in a daemon thread: `spawn` schedules a coroutine, `run` waits for it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def spawn(self, coro: Coroutine[Any, Any, T]) -> "asyncio.Future[T]":
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[return-value]

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return self.spawn(coro).result(timeout)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


@dataclass
class Session:
    sid: str
    token: str
    ok: int = 0  # successful calls
    last: int = 0  # highest value answered
    pending: int = 0  # uncertain failures since the last answer, settled by the next one
    lingering: int = 0  # uncertain failures that may still run later (transport errors, timeouts)
    uncertain_ran: int = 0  # increments explained by uncertain failures
    repeated: int = 0  # answers not above the last one
    skipped: int = 0  # answers above what the session's calls explain
    last_ok_at: float = 0.0
    max_gap: float = 0.0  # longest time between two successes (or the start and the first)
    next_id: int = 2  # JSON-RPC ids: 1 was initialize
    # The GET /mcp stream (when the scenario holds one).
    seen: Counter[int] = field(default_factory=Counter)  # count values seen in notifications
    event_id: str | None = None  # last SSE id seen (sent back as Last-Event-ID)
    stream_open: bool = False
    stream_up_at: float = 0.0  # when the current connection delivered its first event
    stream_connects: int = 0


@dataclass
class Outcome:
    value: int | None = None  # the answer, when the call succeeded
    kind: str = ""  # what went wrong, for the notes
    uncertain: str = ""  # "", "pending" or "lingering": may the call have run?
    retryable: bool = False  # no HTTP answer: a client may try again


class Load:
    """`count` (or `add`) calls on `n` sessions through `url`, `concurrency` at a time; session i
    belongs to the principal of `tokens[i % len(tokens)]` (a principal may hold only so many).

    `attempts` > 1 lets a call be tried again, with a fresh JSON-RPC id, after an attempt that
    got no HTTP answer (connection refused or dropped): what a client behind a load balancer
    does. A call fails when an attempt gets an HTTP error, a JSON-RPC error or a tool error, or
    the attempts run out.
    """

    def __init__(
        self,
        url: str,
        tokens: list[str],
        *,
        tool: str = "count",
        concurrency: int = 32,
        attempts: int = 1,
        call_timeout: float = CALL_TIMEOUT,
    ) -> None:
        self.url = url
        self.tokens = tokens
        self.tool = tool
        self.arguments, self.sequenced = TOOLS[tool]
        self.concurrency = concurrency
        self.attempts = attempts
        self.call_timeout = call_timeout
        self.sessions: list[Session] = []
        self.calls = 0
        self.failed = 0
        self.failures: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self.anomalies: list[str] = []  # the first few duplicates, described
        self.max_call = 0.0
        self.started_at = 0.0
        self.stopped_at = 0.0
        self.stream_status: Counter[str] = Counter()  # GET answers other than 200, stream errors
        self._runner = AsyncRunner("chaos-load")
        self._client: httpx.AsyncClient | None = None
        self._stream_client: httpx.AsyncClient | None = None
        self._stop = False
        self._stop_streams = False
        self._run: "asyncio.Future[None] | None" = None
        self._streams: "asyncio.Future[None] | None" = None

    # ---- sessions -------------------------------------------------------------------------

    def open_sessions(self, n: int, timeout: float = 120.0) -> None:
        self._runner.run(self._open_all(n), timeout)

    async def _open_all(self, n: int) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.call_timeout, connect=5.0),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            trust_env=False,
        )
        gate = asyncio.Semaphore(self.concurrency)

        async def one(i: int) -> Session:
            async with gate:
                return await self._open_one(self.tokens[i % len(self.tokens)])

        self.sessions = list(await asyncio.gather(*(one(i) for i in range(n))))

    async def _open_one(self, token: str) -> Session:
        assert self._client is not None
        r = await self._client.post(self.url, json=initialize_msg(), headers=headers(token))
        if r.status_code != 200 or not r.headers.get("mcp-session-id"):
            raise RuntimeError(f"initialize: {r.status_code} {r.text[:200]}")
        sid = r.headers["mcp-session-id"]
        version = response_for(r, 1)["result"]["protocolVersion"]
        r = await self._client.post(
            self.url, json=rpc("notifications/initialized", id=None),
            headers=headers(token, session=sid, version=version),
        )
        if r.status_code != 202:
            raise RuntimeError(f"notifications/initialized: {r.status_code} {r.text[:200]}")
        return Session(sid, token)

    # ---- the calls ------------------------------------------------------------------------

    def start(self) -> None:
        self.started_at = time.monotonic()
        for s in self.sessions:
            s.last_ok_at = self.started_at
        self._run = self._runner.spawn(self._drive())  # type: ignore[assignment]

    def check(self) -> None:
        """Raise if the generator itself died (a bug in it, not a failed call)."""
        for fut in (self._run, self._streams):
            if fut is not None and fut.done() and not self._stop:
                fut.result()  # raises its exception, if any
                raise RuntimeError("the load generator stopped on its own")

    def stop(self) -> None:
        if self._run is None:
            return
        self._stop = True
        self._run.result(timeout=self.call_timeout * self.attempts + 10)  # type: ignore[union-attr]
        self.stopped_at = time.monotonic()

    async def _drive(self) -> None:
        queue: asyncio.Queue[Session] = asyncio.Queue()
        for s in self.sessions:
            queue.put_nowait(s)

        async def worker() -> None:
            while not self._stop:
                s = await queue.get()
                try:
                    ok = await self._call(s)
                finally:
                    queue.put_nowait(s)
                if not ok:
                    await asyncio.sleep(FAILED_CALL_PACING)

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(self.sessions)))))

    async def _call(self, s: Session) -> bool:
        began = time.monotonic()
        self.calls += 1
        try:
            for attempt in range(1, self.attempts + 1):
                rid = s.next_id
                s.next_id += 1
                out = await self._attempt(s, rid)
                if out.value is not None:
                    self._answered(s, out.value)
                    return True
                if out.uncertain == "pending":
                    s.pending += 1
                elif out.uncertain == "lingering":
                    s.lingering += 1
                if out.retryable and attempt < self.attempts:
                    self.retries[out.kind] += 1
                    await asyncio.sleep(RETRY_PACING * attempt)
                    continue
                self.failed += 1
                self.failures[out.kind if attempt == 1 else f"{out.kind} (after {attempt} attempts)"] += 1
                return False
            return False
        finally:
            self.max_call = max(self.max_call, time.monotonic() - began)

    async def _attempt(self, s: Session, rid: int) -> Outcome:
        assert self._client is not None
        msg = rpc("tools/call", {"name": self.tool, "arguments": self.arguments}, rid)
        try:
            r = await self._client.post(
                self.url, json=msg, headers=headers(s.token, session=s.sid, version=SESSIONFUL_VERSION)
            )
        except httpx.ConnectError:
            return Outcome(kind="connection refused", retryable=True)
        except httpx.TimeoutException as exc:
            return Outcome(kind=f"client timeout ({type(exc).__name__})", uncertain="lingering")
        except httpx.TransportError as exc:
            return Outcome(kind=f"connection lost ({type(exc).__name__})", uncertain="lingering", retryable=True)
        if r.status_code != 200:
            return Outcome(kind=f"HTTP {r.status_code}", uncertain="pending" if r.status_code >= 500 else "")
        try:
            answer = response_for(r, rid)
        except (AssertionError, ValueError) as exc:
            return Outcome(kind=f"no answer in the body ({exc})"[:80], uncertain="pending")
        if "error" in answer:
            code = answer["error"].get("code")
            return Outcome(kind=f"JSON-RPC {code}", uncertain="pending" if code in (-32000, -32603) else "")
        result = answer.get("result") or {}
        text = "".join(c.get("text", "") for c in result.get("content", []) if isinstance(c, dict))
        if result.get("isError"):
            return Outcome(kind=f"tool error: {text[:60]}")
        if not self.sequenced:
            return Outcome(value=0) if text == "3" else Outcome(kind=f"wrong answer {text[:40]!r}")
        value = (result.get("structuredContent") or {}).get("count")
        if not isinstance(value, int) or text != str(value):
            return Outcome(kind=f"malformed count answer {text[:40]!r}")
        return Outcome(value=value)

    def _answered(self, s: Session, value: int) -> None:
        now = time.monotonic()
        s.max_gap = max(s.max_gap, now - s.last_ok_at)
        s.last_ok_at = now
        s.ok += 1
        if not self.sequenced:
            return
        extra = value - s.last - 1
        if extra < 0:
            s.repeated += 1
            self._anomaly(f"session {s.sid[:8]}: answered {value} after {s.last} (repeated)")
        elif extra > s.pending + s.lingering:
            s.skipped += 1
            self._anomaly(
                f"session {s.sid[:8]}: answered {value} after {s.last} with {s.pending + s.lingering} "
                "uncertain calls (skipped)"
            )
            s.last = value
        else:
            s.lingering -= max(0, extra - s.pending)
            s.uncertain_ran += extra
            s.last = value
        s.pending = 0

    def _anomaly(self, text: str) -> None:
        if len(self.anomalies) < 5:
            self.anomalies.append(text)

    # ---- GET /mcp streams -----------------------------------------------------------------

    def open_streams(self) -> None:
        """One GET /mcp stream per session, reconnecting (with Last-Event-ID) until `stop_streams`."""
        self._streams = self._runner.spawn(self._all_streams())  # type: ignore[assignment]

    def stop_streams(self) -> None:
        if self._streams is None:
            return
        self._stop_streams = True
        self._runner.loop.call_soon_threadsafe(self._cancel_streams)
        try:
            self._streams.result(timeout=15)  # type: ignore[union-attr]
        except asyncio.CancelledError:
            pass

    def _cancel_streams(self) -> None:
        for t in getattr(self, "_stream_tasks", []):
            t.cancel()

    async def _all_streams(self) -> None:
        self._stream_client = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT),
            limits=httpx.Limits(max_connections=len(self.sessions) + 8),
            trust_env=False,
        )
        self._stream_tasks = [asyncio.create_task(self._stream(s)) for s in self.sessions]
        await asyncio.gather(*self._stream_tasks, return_exceptions=True)

    async def _stream(self, s: Session) -> None:
        assert self._stream_client is not None
        for _ in range(STREAM_MAX_CONNECTS):
            if self._stop_streams:
                return
            h = {
                "Accept": "text/event-stream",
                "Authorization": f"Bearer {s.token}",
                "Mcp-Session-Id": s.sid,
                "MCP-Protocol-Version": SESSIONFUL_VERSION,
            }
            if s.event_id is not None:
                h["Last-Event-ID"] = s.event_id
            try:
                async with self._stream_client.stream("GET", self.url, headers=h) as r:
                    s.stream_connects += 1
                    if r.status_code != 200:
                        self.stream_status[f"GET /mcp {r.status_code}"] += 1
                    else:
                        await self._read_events(s, r)
            except (httpx.HTTPError, httpx.StreamError) as exc:
                self.stream_status[f"stream ended: {type(exc).__name__}"] += 1
            s.stream_open = False
            await asyncio.sleep(STREAM_RECONNECT_PACING)
        self.stream_status["reconnect budget exhausted"] += 1

    async def _read_events(self, s: Session, r: httpx.Response) -> None:
        event_id: str | None = None
        data: list[str] = []
        async for line in r.aiter_lines():
            if line:
                if line.startswith("id:"):
                    event_id = line[3:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
                continue
            # End of an event (a comment-only block has neither id nor data).
            if event_id is not None:
                s.event_id = event_id
                if not s.stream_open:
                    s.stream_open = True
                    s.stream_up_at = time.monotonic()
            payload = "\n".join(data).strip()
            event_id, data = None, []
            if not payload:
                continue
            try:
                msg = json.loads(payload)
            except ValueError:
                self.stream_status["undecodable event"] += 1
                continue
            if msg.get("method") == "notifications/message":
                value = ((msg.get("params") or {}).get("data") or {}).get("count")
                if isinstance(value, int):
                    s.seen[value] += 1

    # ---- results --------------------------------------------------------------------------

    def unanswered_since(self, t: float) -> list[Session]:
        return [s for s in self.sessions if s.last_ok_at < t]

    def duplicated(self) -> int:
        return sum(s.repeated + s.skipped for s in self.sessions)

    def uncertain_ran(self) -> int:
        return sum(s.uncertain_ran for s in self.sessions)

    def longest_stall(self) -> float:
        end = self.stopped_at or time.monotonic()
        gaps = [max(s.max_gap, end - s.last_ok_at) for s in self.sessions]
        return max([self.max_call, *gaps])

    def ledger_mismatches(self) -> int:
        """Sessions whose last answer is not their successful calls plus the uncertain ones that ran."""
        return sum(1 for s in self.sessions if s.last != s.ok + s.uncertain_ran)

    def events_lost(self) -> int:
        return sum(1 for s in self.sessions for v in range(1, s.last + 1) if v not in s.seen)

    def events_duplicated(self) -> int:
        return sum(c - 1 for s in self.sessions for c in s.seen.values() if c > 1)

    def close(self) -> None:
        async def shut() -> None:
            for c in (self._client, self._stream_client):
                if c is not None:
                    await c.aclose()

        try:
            if self._run is not None and not self._run.done():
                self._stop = True
                self._run.result(timeout=self.call_timeout * self.attempts + 10)  # type: ignore[union-attr]
            if self._streams is not None and not self._streams.done():
                self.stop_streams()
            self._runner.run(shut(), 10)
        finally:
            self._runner.close()
