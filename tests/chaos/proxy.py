"""A small round-robin TCP proxy on loopback, standing in for the load balancer in front of the
gateways. Each client connection goes to the next backend in turn; a backend that refuses the
connection (stopped, draining, killed) is skipped for the next one, and only when none accepts
is the client's connection closed. Bytes are copied unchanged both ways; when either side
closes, both are closed.

It binds its port (one the kernel picks) before the gateways exist, so their public URL can name
it; `backends` is set once they run. `pin(i)` sends new connections to backend `i` only (used to put every SSE stream on the gateway
a scenario then kills). Counters for the notes: connections per backend, refused connects, and
connections a backend closed while a request was outstanding (bytes went to it after the last
bytes came back): a dropped in-flight request, as seen from the wire.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from load import AsyncRunner

# Seconds a connect to a backend may take before the next backend is tried.
CONNECT_TIMEOUT = 2.0
COPY_CHUNK = 64 * 1024


class Proxy:
    def __init__(self) -> None:
        self.port = 0
        self.backends: list[int] = []  # gateway ports, in order
        self.connections: Counter[int] = Counter()  # per backend index
        self.refused: Counter[int] = Counter()
        self.no_backend = 0
        self.dropped_mid_request = 0
        self._next = 0
        self._pinned: int | None = None
        self._runner: AsyncRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Proxy":
        self._runner = AsyncRunner("chaos-proxy")
        self._runner.run(self._listen(), timeout=10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def pin(self, backend: int | None) -> None:
        self._pinned = backend

    def _order(self) -> list[int]:
        if not self.backends:
            return []
        if self._pinned is not None:
            return [self._pinned]
        n = len(self.backends)
        first = self._next % n
        self._next += 1
        return [(first + i) % n for i in range(n)]

    def _accept(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(creader, cwriter))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        backend = None
        for i in self._order():
            try:
                breader, bwriter = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.backends[i]), CONNECT_TIMEOUT
                )
            except (OSError, asyncio.TimeoutError):
                self.refused[i] += 1
                continue
            backend = i
            break
        if backend is None:
            self.no_backend += 1
            cwriter.close()
            return
        self.connections[backend] += 1
        last = {"up": 0.0, "down": 0.0}
        up = asyncio.create_task(self._copy(creader, bwriter, last, "up"))
        down = asyncio.create_task(self._copy(breader, cwriter, last, "down"))
        try:
            done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            if down in done and last["up"] > last["down"]:
                self.dropped_mid_request += 1
        finally:
            for t in (up, down):
                t.cancel()
            for w in (cwriter, bwriter):
                w.close()

    @staticmethod
    async def _copy(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, last: dict[str, float], side: str
    ) -> None:
        try:
            while data := await src.read(COPY_CHUNK):
                last[side] = time.monotonic()
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass

    def stats(self) -> str:
        per = ", ".join(f"gateway {i + 1}: {self.connections[i]}" for i in range(len(self.backends)))
        refused = sum(self.refused.values())
        return (
            f"proxy connections ({per}), {refused} connects refused and moved on"
            + (f", {self.no_backend} with no live backend" if self.no_backend else "")
            + f", {self.dropped_mid_request} dropped by a gateway with a request outstanding"
        )

    def stop(self) -> None:
        if self._runner is None:
            return

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for t in list(self._tasks):
                t.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=5)

        try:
            self._runner.run(shut(), timeout=10)
        finally:
            self._runner.close()
