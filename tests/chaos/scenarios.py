"""The chaos scenarios: each starts its own cluster in its own directory, loads it with `count`
calls on many sessions, injects one fault and checks what the clients saw.

Every scenario has the same shape: open the sessions, load for WARMUP seconds (and until every
session answered once), inject the fault, keep loading until every session has answered again
(bounded: RECOVERY_TIMEOUT), then TAIL seconds more (and another answer from every session).
Waits are bounded condition polls (`retry_until`); `hold` keeps a fault in place for its stated
length while checking that the processes meant to stay up do.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from harness import Cluster, Proc, retry_until
from load import Load
from mcp_http import SESSIONFUL_VERSION, open_session
from proxy import Proxy

WARMUP = 3.0  # seconds of load before the fault
TAIL = 2.0  # seconds of load after every session answered again
RECOVERY_TIMEOUT = 30.0  # seconds every session gets to answer again after a fault
NATS_RECOVERY_TIMEOUT = 60.0  # … after nats-server came back
STALL = 3.0  # seconds a worker stays SIGSTOPped (WORKER_DEAD_AFTER_MS is 1 s)
NATS_OUTAGE = 2.0  # seconds nats-server stays down
STEP_LOAD = 1.0  # seconds of load on each intermediate state of a rolling restart
SESSIONS_PER_USER = 50  # the gateway lets one principal hold 100 live sessions
CLIENT_ATTEMPTS = 3  # behind the proxy: attempts of a call that got no HTTP answer
EVENTS_TIMEOUT = 15.0  # seconds the last events get to arrive once the load stopped
PRIMING_TIMEOUT = 5.0


@dataclass
class Ctx:
    workdir: Path
    stack: ExitStack  # cleanups, run when the scenario ends (cluster, proxy, load)
    tool: str = "count"
    sessions: int = 200
    concurrency: int = 32
    log: Callable[[str], None] = print


@dataclass
class Result:
    name: str
    zero_failed: bool  # does the scenario promise that no call fails?
    calls: int = 0
    failed: int = 0
    duplicated: int | None = 0  # None: not measurable (`add`)
    events_lost: int | None = None  # None: not measured
    stall: float = 0.0
    verdict: str = "PASS"  # PASS, FAIL, SKIP, ERROR
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why it FAILed

    def judge(self) -> None:
        if self.verdict in ("SKIP", "ERROR"):
            return
        if self.zero_failed and self.failed:
            self.problems.append(f"{self.failed} calls failed where none may")
        if self.duplicated:
            self.problems.append(f"{self.duplicated} duplicated")
        if self.events_lost:
            self.problems.append(f"{self.events_lost} events lost")
        self.verdict = "FAIL" if self.problems else "PASS"


# ---- shared steps ---------------------------------------------------------------------------


def hold(seconds: float, load: Load, procs: list[Proc]) -> None:
    """Keep the current state (a fault, or plain load) for `seconds`, checking every 0.1 s that
    the load generator and `procs` are still running: the fault's length, not a settling wait."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        load.check()
        for p in procs:
            p.check_alive()
        time.sleep(min(0.1, left))


def start_cluster(ctx: Ctx, **kw: object) -> Cluster:
    cluster = Cluster(ctx.workdir, **kw)  # type: ignore[arg-type]
    ctx.stack.callback(cluster.stop)
    t = time.monotonic()
    cluster.start()
    ctx.log(f"  cluster up in {time.monotonic() - t:.1f}s ({len(cluster.workers)} workers, "
            f"{max(1, len(cluster.gateways))} gateways)")
    return cluster


def start_proxy(ctx: Ctx) -> Proxy:
    """The load balancer, listening before the gateways start (their public URL names it)."""
    proxy = Proxy().start()
    ctx.stack.callback(proxy.stop)
    return proxy


def start_gateways_behind(ctx: Ctx, proxy: Proxy) -> Cluster:
    cluster = start_cluster(ctx, workers=2, gateways=2, resource=f"{proxy.url}/mcp")
    proxy.backends = [g.port for g in cluster.gateways]
    return cluster


def start_load(ctx: Ctx, url: str, tokens: list[str], *, attempts: int = 1, streams: bool = False,
               before_load: Callable[[Load], None] | None = None) -> Load:
    """Open the sessions, then load them until WARMUP seconds passed and each answered once."""
    load = Load(url, tokens, tool=ctx.tool, concurrency=ctx.concurrency, attempts=attempts)
    ctx.stack.callback(load.close)
    t = time.monotonic()
    load.open_sessions(ctx.sessions)
    ctx.log(f"  {ctx.sessions} sessions opened in {time.monotonic() - t:.1f}s")
    if before_load is not None:
        before_load(load)
    load.start()

    def warm() -> bool:
        load.check()
        return time.monotonic() - load.started_at >= WARMUP and not load.unanswered_since(load.started_at)

    retry_until(warm, WARMUP + RECOVERY_TIMEOUT, "every session answers before the fault")
    ctx.log(f"  warm: {load.calls} calls, {load.failed} failed")
    return load


def recover(ctx: Ctx, res: Result, load: Load, since: float, what: str,
            timeout: float = RECOVERY_TIMEOUT) -> bool:
    """Keep loading until every session answered after `since`; a FAIL if they do not in time."""

    def all_answered() -> bool:
        load.check()
        return not load.unanswered_since(since)

    try:
        retry_until(all_answered, timeout, f"every session answers after {what}", interval=0.05)
    except TimeoutError:
        left = load.unanswered_since(since)
        res.problems.append(f"{len(left)} sessions did not answer within {timeout:.0f}s after {what} "
                            f"(e.g. {', '.join(s.sid for s in left[:2])})")
        return False
    took = time.monotonic() - since
    res.notes.append(f"every session answered again {took:.1f}s after {what}")
    ctx.log(f"  every session answered again {took:.2f}s after {what}")
    return True


def tail(res: Result, load: Load) -> None:
    """TAIL more seconds of load, and one more answer from every session (a FAIL if not)."""
    t = time.monotonic()

    def done() -> bool:
        load.check()
        return time.monotonic() - t >= TAIL and not load.unanswered_since(t)

    try:
        retry_until(done, TAIL + RECOVERY_TIMEOUT, "every session answers once more after recovery")
    except TimeoutError:
        left = load.unanswered_since(t)
        res.problems.append(f"{len(left)} sessions that had answered again did not answer in the "
                            f"{TAIL + RECOVERY_TIMEOUT:.0f}s after (e.g. {', '.join(s.sid for s in left[:2])})")


def finish(ctx: Ctx, res: Result, load: Load) -> Result:
    """Stop the load and fill in the result from its counters."""
    load.stop()
    res.calls = load.calls
    res.failed = load.failed
    res.stall = load.longest_stall()
    if load.failures:
        res.notes.append("failures: " + ", ".join(f"{k} ×{v}" for k, v in load.failures.most_common()))
    if load.retries:
        res.notes.append(
            f"client retried {sum(load.retries.values())} attempts that got no HTTP answer ("
            + ", ".join(f"{k} ×{v}" for k, v in load.retries.most_common()) + ")"
        )
    if load.sequenced:
        res.duplicated = load.duplicated()
        if load.uncertain_ran():
            res.notes.append(f"{load.uncertain_ran()} increments by calls whose outcome was uncertain "
                             "(a failed or retried attempt that had run: not duplicates)")
        res.notes.extend(load.anomalies)
        bad = load.ledger_mismatches()
        res.notes.append(
            "ledger: every session's last value = its successful calls + uncertain ones that ran"
            if not bad else f"ledger: {bad} sessions' last value ≠ successful calls + uncertain ones"
        )
    else:
        res.duplicated = None
        res.notes.append(f"tool {ctx.tool}: answers are not a sequence, duplicates not measurable")
    return res


def metric_lines(text: str, name: str, label: str = "") -> float:
    """Sum of the samples of `name` whose labels contain `label`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label in line and not line.startswith("#"):
            try:
                total += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return total


def tokens_for(ctx: Ctx, cluster: Cluster) -> list[str]:
    """One token per SESSIONS_PER_USER sessions, each of its own subject."""
    users = max(1, -(-ctx.sessions // SESSIONS_PER_USER))
    return [cluster.mint(f"chaos-{i}", ttl=3600) for i in range(users)]


# ---- the scenarios --------------------------------------------------------------------------


def kill_worker(ctx: Ctx) -> Result:
    """SIGKILL one of two workers mid-load: the gateway retries its requests on the survivor."""
    res = Result("kill -9 worker", zero_failed=True)
    cluster = start_cluster(ctx, workers=2)
    assert cluster.gateway is not None
    load = start_load(ctx, cluster.gateway.mcp_url, tokens_for(ctx, cluster))
    victim, survivor = cluster.workers
    assert victim.proc is not None
    victim.proc.kill()
    killed = time.monotonic()
    ctx.log(f"  SIGKILL {victim.worker_id}")
    if recover(ctx, res, load, killed, "the kill"):
        tail(res, load)
    finish(ctx, res, load)
    retried = metric_lines(cluster.gateway.metrics(), "mcp_gateway_worker_gone_total", 'outcome="retried"')
    res.notes.append(f"gateway retried {retried:.0f} requests of the dead worker")
    assert survivor.proc is not None
    survivor.proc.check_alive()
    return res


def stop_worker(ctx: Ctx) -> Result:
    """SIGSTOP one of two workers for STALL seconds, then SIGCONT: it must be fenced."""
    res = Result("SIGSTOP worker", zero_failed=False)
    cluster = start_cluster(ctx, workers=2)
    assert cluster.gateway is not None and cluster.gateway.proc is not None
    load = start_load(ctx, cluster.gateway.mcp_url, tokens_for(ctx, cluster))
    stalled, survivor = cluster.workers
    assert stalled.proc is not None and survivor.proc is not None
    os.kill(stalled.proc.pid, signal.SIGSTOP)
    ctx.log(f"  SIGSTOP {stalled.worker_id} for {STALL:.0f}s")
    try:
        hold(STALL, load, [survivor.proc, cluster.gateway.proc])
    finally:
        os.kill(stalled.proc.pid, signal.SIGCONT)
    resumed = time.monotonic()
    ctx.log(f"  SIGCONT {stalled.worker_id}")
    if recover(ctx, res, load, resumed, "SIGCONT"):
        tail(res, load)
    finish(ctx, res, load)
    try:
        retry_until(lambda: "declared dead by the other workers" in stalled.proc.log_text(),  # type: ignore[union-attr]
                    10, "the stalled worker finds itself declared dead")
        res.notes.append("the stalled worker found itself declared dead")
    except TimeoutError:
        res.notes.append("the stalled worker never logged that it was declared dead")
    fenced = metric_lines(stalled.metrics(), "mcp_worker_envelopes_total", 'outcome="fenced"')
    res.notes.append(f"it dropped {fenced:.0f} envelopes it received while stalled (fenced)")
    return res


def rolling_workers(ctx: Ctx) -> Result:
    """Three workers, each in turn SIGTERMed (drain) and replaced by a new one, ready before the next."""
    res = Result("rolling restart workers", zero_failed=True)
    cluster = start_cluster(ctx, workers=3)
    assert cluster.gateway is not None
    load = start_load(ctx, cluster.gateway.mcp_url, tokens_for(ctx, cluster))
    last = time.monotonic()
    for i, old in enumerate(list(cluster.workers)):
        assert old.proc is not None
        t = time.monotonic()
        old.stop()
        drained = time.monotonic() - t
        if old.proc.returncode() not in (0, None):
            res.notes.append(f"{old.worker_id} exited with {old.proc.returncode()} after SIGTERM")
        new = cluster.add_worker(f"worker-{4 + i}")
        last = time.monotonic()
        ctx.log(f"  {old.worker_id} drained in {drained:.1f}s, {new.worker_id} ready after {last - t:.1f}s")
        hold(STEP_LOAD, load, [w.proc for w in cluster.workers if w.proc is not None and w is not old][-3:])
    if recover(ctx, res, load, last, "the last replacement was ready"):
        tail(res, load)
    return finish(ctx, res, load)


def rolling_gateways(ctx: Ctx) -> Result:
    """Two gateways behind the proxy, each in turn SIGTERMed and started again."""
    res = Result("rolling restart gateways", zero_failed=True)
    proxy = start_proxy(ctx)
    cluster = start_gateways_behind(ctx, proxy)
    load = start_load(ctx, f"{proxy.url}/mcp", tokens_for(ctx, cluster), attempts=CLIENT_ATTEMPTS)
    last = time.monotonic()
    for g in cluster.gateways:
        assert g.proc is not None
        t = time.monotonic()
        g.stop()
        drained = time.monotonic() - t
        if g.proc.returncode() not in (0, None):
            res.notes.append(f"{g.name} exited with {g.proc.returncode()} after SIGTERM")
        g.start()
        last = time.monotonic()
        ctx.log(f"  {g.name} stopped in {drained:.1f}s, ready again after {last - t:.1f}s")
        hold(STEP_LOAD, load, [p.proc for p in cluster.gateways if p.proc is not None])
    if recover(ctx, res, load, last, "the last gateway was ready"):
        tail(res, load)
    finish(ctx, res, load)
    res.notes.append(proxy.stats())
    res.notes.append(f"a call counts as failed on an HTTP error answer, or after {CLIENT_ATTEMPTS} "
                     "attempts without an HTTP answer (connection refused or dropped)")
    return res


def restart_nats(ctx: Ctx) -> Result:
    """SIGTERM nats-server, start it again on its port and store; no service is restarted."""
    res = Result("nats restart", zero_failed=False)
    cluster = start_cluster(ctx, workers=2)
    assert cluster.gateway is not None and cluster.nats is not None and cluster.auth is not None
    load = start_load(ctx, cluster.gateway.mcp_url, tokens_for(ctx, cluster))
    services = [p for p in cluster.procs() if p is not cluster.nats.proc]
    before = load.failed
    cluster.nats.stop_process()
    ctx.log(f"  nats-server stopped, down for {NATS_OUTAGE:.0f}s")
    hold(NATS_OUTAGE, load, services)
    cluster.nats.start_again()
    back = time.monotonic()
    ctx.log("  nats-server started again")
    during = load.failed - before
    if recover(ctx, res, load, back, "nats-server was back", NATS_RECOVERY_TIMEOUT):
        tail(res, load)
    finish(ctx, res, load)
    res.notes.insert(0, f"{during} calls failed while nats-server was down (allowed), "
                        f"{res.failed - during} after it was back")
    for p in services:
        if not p.alive():
            res.problems.append(f"{p.name} exited ({p.returncode()}) over the NATS restart")
    return res


def lose_nats_node(ctx: Ctx) -> Result:
    """Three routed nats-servers, every bucket and stream on all three (NATS_REPLICAS=3): SIGKILL
    the node the gateway is connected to, mid-load. No call may fail."""
    res = Result("lose 1 of 3 NATS nodes", zero_failed=True)
    cluster = start_cluster(ctx, workers=2, nats_nodes=3)
    assert cluster.gateway is not None and cluster.nats_cluster is not None
    load = start_load(ctx, cluster.gateway.mcp_url, tokens_for(ctx, cluster))
    nodes = cluster.nats_cluster
    held = [i for i in range(len(nodes.nodes)) if any(n.startswith("gateway") for n in nodes.connections(i))]
    index = held[0] if held else 0
    victim = nodes.nodes[index]
    serving = ", ".join(nodes.connections(index))
    victim.proc.kill()
    killed = time.monotonic()
    ctx.log(f"  SIGKILL {victim.proc.name} (serving {serving})")
    if recover(ctx, res, load, killed, "the kill"):
        tail(res, load)
    finish(ctx, res, load)
    for p in cluster.procs():
        if p is not victim.proc and not p.alive():
            res.problems.append(f"{p.name} exited ({p.returncode()}) after losing a NATS node")
    return res


def priming_id(url: str, token: str) -> str | None:
    """The `id:` of the first event of a fresh session's GET /mcp stream, None if it has none."""
    with httpx.Client(timeout=httpx.Timeout(PRIMING_TIMEOUT), trust_env=False) as client:
        sid = open_session(client, url, token)
        h = {"Accept": "text/event-stream", "Authorization": f"Bearer {token}",
             "Mcp-Session-Id": sid, "MCP-Protocol-Version": SESSIONFUL_VERSION}
        try:
            with client.stream("GET", url, headers=h) as r:
                if r.status_code != 200:
                    return None
                for line in r.iter_lines():
                    if line.startswith("id:"):
                        return line[3:].strip()
                    if line == "":
                        return None  # the first event ended without an id
        except httpx.ReadTimeout:
            return None
    return None


def sse_resume(ctx: Ctx) -> Result:
    """Every session holds a GET /mcp stream on gateway 1; it is SIGKILLed; the streams reconnect
    through the proxy with Last-Event-ID and must get every `count` event exactly once."""
    res = Result("gateway kill, SSE resume", zero_failed=False)
    proxy = start_proxy(ctx)
    cluster = start_gateways_behind(ctx, proxy)
    tokens = tokens_for(ctx, cluster)
    victim, survivor = cluster.gateways
    if priming_id(victim.mcp_url, tokens[0]) is None:
        res.verdict = "SKIP"
        res.duplicated = None
        res.notes.append("needs resumable streams: the gateway's GET /mcp stream sends no `id:` "
                         "on its first (priming) event")
        return res

    def streams_on_victim(load: Load) -> None:
        proxy.pin(0)
        load.open_streams()
        retry_until(lambda: (load.check(), all(s.stream_open for s in load.sessions))[1],
                    RECOVERY_TIMEOUT, "every session's GET stream is open and primed")
        proxy.pin(None)
        ctx.log(f"  {len(load.sessions)} GET streams open on {victim.name}")

    load = start_load(ctx, f"{proxy.url}/mcp", tokens, attempts=CLIENT_ATTEMPTS, before_load=streams_on_victim)
    assert victim.proc is not None and survivor.proc is not None
    victim.proc.kill()
    killed = time.monotonic()
    ctx.log(f"  SIGKILL {victim.name}")
    if recover(ctx, res, load, killed, "the kill"):
        try:
            retry_until(lambda: all(s.stream_open and s.stream_up_at > killed for s in load.sessions),
                        RECOVERY_TIMEOUT, "every stream reconnected")
            slowest = max(s.stream_up_at for s in load.sessions) - killed
            res.notes.append(f"every stream resumed within {slowest:.1f}s of the kill")
        except TimeoutError:
            down = sum(1 for s in load.sessions if not (s.stream_open and s.stream_up_at > killed))
            res.problems.append(f"{down} streams did not reconnect within {RECOVERY_TIMEOUT:.0f}s")
        tail(res, load)
    finish(ctx, res, load)
    if not load.sequenced:
        res.notes.append(f"tool {ctx.tool}: no events to check")
        load.stop_streams()
    else:
        try:
            retry_until(lambda: all(s.last == 0 or s.last in s.seen for s in load.sessions),
                        EVENTS_TIMEOUT, "every session's stream shows its last value")
        except TimeoutError:
            pass  # counted as lost below
        load.stop_streams()
        res.events_lost = load.events_lost()
        dup_events = load.events_duplicated()
        res.duplicated = (res.duplicated or 0) + dup_events
        res.notes.append(f"{sum(s.last for s in load.sessions)} events expected, {res.events_lost} lost, "
                         f"{dup_events} delivered twice")
    reconnects = sum(max(0, s.stream_connects - 1) for s in load.sessions)
    res.notes.append(f"{reconnects} stream reconnects")
    if load.stream_status:
        res.notes.append("streams: " + ", ".join(f"{k} ×{v}" for k, v in load.stream_status.most_common()))
    res.notes.append(proxy.stats())
    res.notes.append(f"a call counts as failed on an HTTP error answer, or after {CLIENT_ATTEMPTS} "
                     "attempts without an HTTP answer")
    return res


SCENARIOS: list[tuple[str, Callable[[Ctx], Result]]] = [
    ("kill-worker", kill_worker),
    ("stop-worker", stop_worker),
    ("rolling-workers", rolling_workers),
    ("rolling-gateways", rolling_gateways),
    ("nats-restart", restart_nats),
    ("nats-node-loss", lose_nats_node),
    ("sse-resume", sse_resume),
]
