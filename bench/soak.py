"""Soak: mixed traffic against a local cluster for a long time; RSS of every process over it.

    .venv/bin/python bench/soak.py [--minutes 30] [--sample 10]

Starts its own cluster from target/release with the test harness (nats-server, the auth-service
as the OAuth server with the static-users provider, two workers, one gateway; loopback), signs in
through the real OAuth flow, then runs until the time is up:

- sessionful churn: open a session, 20 `tools/call`, `DELETE` it, again (2 threads);
- stateless: 2026-07-28 `tools/call` without a session (1 thread);
- legacy HTTP+SSE: `GET /sse`, `initialize` and 5 calls through `/messages`, answers read on the
  stream, stream closed, again (1 thread);
- idle streams: 50 sessions holding `GET /mcp` open the whole time;
- OAuth: the refresh token is rotated every 2 s (the new access token is what every thread uses),
  and a whole new sign-in (register, authorize, code exchange) every 5 minutes.

Every `--sample` seconds it reads the VmRSS of each process and counts operations and errors.
Writes bench/results/soak-<stamp>.json (samples, errors, per-process RSS growth after the first
5 minutes as KiB per minute) and bench/results/soak-<stamp>.png (bench/plot.py rss). Exits 1 on
any error or a process that died.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import httpx  # noqa: E402

from harness import STATIC_PASSWORDS, Cluster  # noqa: E402
from mcp_http import (  # noqa: E402
    SESSIONFUL_VERSION,
    SseReader,
    headers,
    legacy_post,
    open_session,
    response_for,
    rpc,
    stateless_headers,
    stateless_msg,
)
from oauth_client import OAuthClient  # noqa: E402

REFRESH_EVERY = 2.0
RELOGIN_EVERY = 300.0
IDLE_STREAMS = 50
WARMUP_MINUTES = 5.0


class State:
    """What the threads share: the current access token, counters, the stop flag."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.lock = threading.Lock()
        self.ops: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.first_errors: dict[str, str] = {}
        self.stop = threading.Event()

    def ok(self, kind: str, n: int = 1) -> None:
        with self.lock:
            self.ops[kind] += n

    def fail(self, kind: str, what: str) -> None:
        with self.lock:
            self.errors[kind] += 1
            self.first_errors.setdefault(kind, what[:500])


def loop(state: State, kind: str, body: Any) -> threading.Thread:
    def run() -> None:
        while not state.stop.is_set():
            try:
                body()
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                if not state.stop.is_set():
                    state.fail(kind, repr(e))
                    time.sleep(0.2)

    t = threading.Thread(target=run, name=kind, daemon=True)
    t.start()
    return t


def sessionful(state: State, url: str, http: httpx.Client) -> None:
    token = state.token
    session = open_session(http, url, token)
    h = headers(token, session=session, version=SESSIONFUL_VERSION)
    for i in range(20):
        r = http.post(url, json=rpc("tools/call", {"name": "add", "arguments": {"a": i, "b": 1}}, 10 + i), headers=h)
        if r.status_code != 200 or response_for(r, 10 + i)["result"]["content"][0]["text"] != str(i + 1):
            raise AssertionError(f"tools/call: {r.status_code} {r.text[:200]}")
    state.ok("sessionful calls", 20)
    r = http.delete(url, headers=h)
    if r.status_code not in (200, 202, 204):
        raise AssertionError(f"DELETE: {r.status_code} {r.text[:200]}")
    state.ok("sessions opened and closed")


def stateless(state: State, url: str, http: httpx.Client) -> None:
    msg = stateless_msg("tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}}, id=7)
    r = http.post(url, json=msg, headers=stateless_headers(state.token, msg))
    if r.status_code != 200 or '"5"' not in r.text:
        raise AssertionError(f"stateless: {r.status_code} {r.text[:200]}")
    state.ok("stateless calls")


def legacy(state: State, base: str, http: httpx.Client) -> None:
    token = state.token
    with SseReader(f"{base}/sse", token) as stream:
        if stream.status != 200:
            raise AssertionError(f"GET /sse: {stream.status}")
        endpoint = stream.endpoint()
        init = rpc("initialize", {"protocolVersion": "2024-11-05", "capabilities": {},
                                  "clientInfo": {"name": "soak", "version": "0"}}, 1)
        for msg in [init]:
            r = legacy_post(http, base, endpoint, token, msg)
            if r.status_code != 202:
                raise AssertionError(f"legacy initialize: {r.status_code} {r.text[:200]}")
        if stream.message(timeout=15).get("id") != 1:
            raise AssertionError("no initialize result on the stream")
        legacy_post(http, base, endpoint, token, rpc("notifications/initialized", id=None))
        for i in range(5):
            r = legacy_post(http, base, endpoint, token, rpc("tools/call", {"name": "add", "arguments": {"a": i, "b": 1}}, 10 + i))
            if r.status_code != 202:
                raise AssertionError(f"legacy call: {r.status_code} {r.text[:200]}")
            m = stream.message(timeout=15)
            if m.get("id") != 10 + i:
                raise AssertionError(f"legacy answer: {m}")
        state.ok("legacy calls", 5)
    state.ok("legacy sessions")


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def slope_kib_per_min(points: list[tuple[float, int]]) -> float | None:
    """Least-squares slope of (minutes, KiB)."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    den = sum((p[0] - mx) ** 2 for p in points)
    return None if den == 0 else sum((p[0] - mx) * (p[1] - my) for p in points) / den


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    # One user opens every session: legacy sessions outlive their stream by the resume grace
    # (30 s), so at this churn the user holds more than the default 100 at once.
    cluster = Cluster(workdir, workers=2, oauth="static", worker_env={"WORKER_MAX_SESSIONS_PER_PRINCIPAL": "2000"})
    cluster.start()
    try:
        assert cluster.gateway is not None
        gw = cluster.gateway
        url, base, resource = gw.mcp_url, gw.base_url, gw.resource
        client = OAuthClient.register(cluster.issuer)
        tokens = client.login(resource, username="alice", password=STATIC_PASSWORDS["alice"])
        state = State(tokens["access_token"])
        refresh = {"token": tokens["refresh_token"]}

        def oauth() -> None:
            time.sleep(REFRESH_EVERY)
            r = client.refresh(refresh["token"], resource)
            if r.status_code != 200:
                raise AssertionError(f"refresh: {r.status_code} {r.text[:200]}")
            body = r.json()
            refresh["token"] = body["refresh_token"]
            state.token = body["access_token"]
            state.ok("oauth refreshes")

        def relogin() -> None:
            time.sleep(RELOGIN_EVERY)
            fresh = OAuthClient.register(cluster.issuer)
            t = fresh.login(resource, username="bob", password=STATIC_PASSWORDS["bob"])
            if not t.get("access_token"):
                raise AssertionError(f"sign-in: {t}")
            state.ok("oauth sign-ins")

        clients = [httpx.Client(timeout=30) for _ in range(4)]
        threads = [
            loop(state, "sessionful", lambda: sessionful(state, url, clients[0])),
            loop(state, "sessionful", lambda: sessionful(state, url, clients[1])),
            loop(state, "stateless", lambda: stateless(state, url, clients[2])),
            loop(state, "legacy", lambda: legacy(state, base, clients[3])),
            loop(state, "oauth", oauth),
            loop(state, "oauth", relogin),
        ]
        # Idle streams held open the whole time (their token is the first one: it outlives the run
        # only if the access-token lifetime does, so they are reopened when they end).
        idle: list[SseReader] = []

        def hold_streams() -> None:
            with httpx.Client(timeout=30) as http:
                while len(idle) < IDLE_STREAMS:
                    s = open_session(http, url, state.token)
                    idle.append(SseReader(url, state.token, headers={
                        "Mcp-Session-Id": s, "MCP-Protocol-Version": SESSIONFUL_VERSION}))
            state.ok("idle streams opened", IDLE_STREAMS)
            while not state.stop.is_set():
                time.sleep(1)
                for i, s in enumerate(idle):
                    if s.closed.is_set():
                        s.close()
                        with httpx.Client(timeout=30) as http:
                            sid = open_session(http, url, state.token)
                        idle[i] = SseReader(url, state.token, headers={
                            "Mcp-Session-Id": sid, "MCP-Protocol-Version": SESSIONFUL_VERSION})
                        state.ok("idle streams reopened")

        threads.append(loop(state, "idle streams", hold_streams))
        procs = {p.name: p for p in cluster.procs()}
        samples: list[dict[str, Any]] = []
        started = time.monotonic()
        last_ops: collections.Counter[str] = collections.Counter()
        deadline = started + args.minutes * 60
        print(f"soak: {args.minutes:g} min against {url}; samples every {args.sample:g} s", flush=True)
        while time.monotonic() < deadline:
            time.sleep(min(args.sample, max(0.0, deadline - time.monotonic())))
            with state.lock:
                ops = collections.Counter(state.ops)
            rates = {k: (ops[k] - last_ops[k]) / args.sample for k in ops}
            last_ops = ops
            sample = {"t_s": time.monotonic() - started,
                      "rss_kib": {n: v for n, p in procs.items() if (v := rss_kib(p.pid)) is not None},
                      "ops": rates, "errors": dict(state.errors)}
            samples.append(sample)
            dead = [n for n, p in procs.items() if not p.alive()]
            print(f"  {sample['t_s'] / 60:5.1f} min  rss MiB "
                  + " ".join(f"{n} {v / 1024:.0f}" for n, v in sample["rss_kib"].items())
                  + f"  ops/s {sum(rates.values()):.0f}  errors {sum(state.errors.values())}"
                  + (f"  DEAD {dead}" if dead else ""), flush=True)
            if dead:
                break
        state.stop.set()
        for t in threads:
            t.join(timeout=20)
        for s in idle:
            s.close()
        for c in clients:
            c.close()
        growth = {}
        for name in procs:
            pts = [(s["t_s"] / 60, s["rss_kib"][name]) for s in samples
                   if name in s["rss_kib"] and s["t_s"] / 60 >= min(WARMUP_MINUTES, args.minutes / 3)]
            growth[name] = {
                "kib_per_min_after_warmup": slope_kib_per_min(pts),
                "first_kib": pts[0][1] if pts else None,
                "last_kib": pts[-1][1] if pts else None,
            }
        dead = [n for n, p in procs.items() if not p.alive()]
        report = {
            "timestamp": stamp, "command": f"python bench/soak.py --minutes {args.minutes:g} --sample {args.sample:g}",
            "duration_s": samples[-1]["t_s"] if samples else 0.0,
            "totals": dict(state.ops), "errors": dict(state.errors), "first_errors": state.first_errors,
            "dead": dead, "rss_growth": growth, "samples": samples,
        }
        out = results / f"soak-{stamp}.json"
        out.write_text(json.dumps(report, indent=2))
        print(json.dumps({k: report[k] for k in ("totals", "errors", "dead", "rss_growth")}, indent=2))
        print(f"written: {out.relative_to(ROOT)}")
        import subprocess

        subprocess.run([sys.executable, str(ROOT / "bench" / "plot.py"), "rss", str(out),
                        str(results / f"soak-{stamp}.png")], check=False)
        return 0 if not state.errors and not dead else 1
    finally:
        cluster.stop()


if __name__ == "__main__":
    raise SystemExit(main())
