"""Fast failover and fencing: a worker killed with SIGKILL has its sessions served again by the
survivor within about a second (its heartbeats stop; the survivor takes its leases by
compare-and-set, long before the 10 s lease TTL); a worker stalled with SIGSTOP is declared dead,
and when it resumes it is fenced: it answers nothing it received while stalled and gives up
every shard before taking its share again.

Contract: README "Reliability"; issue: durable sessions (fast failover).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness import Cluster, Worker
from mcp_http import SESSIONFUL_VERSION, headers, open_session, response_for, rpc

SESSIONS = 24
LEASE_TTL = 10.0  # WORKER_LEASE_TTL: what a takeover waited for before heartbeats


def ping(client: httpx.Client, url: str, token: str, session: str, id: int = 2) -> bool:
    try:
        r = client.post(url, json=rpc("tools/list", {}, id),
                        headers=headers(token, session=session, version=SESSIONFUL_VERSION))
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and "result" in response_for(r, id)


def owned_by(worker: Worker, sessions: list[str]) -> list[str]:
    """The sessions whose actor lives on `worker` (its log names each session it opened)."""
    assert worker.proc is not None
    log = worker.proc.log_text()
    return [s for s in sessions if s in log]


def rehydrated_on(worker: Worker, sessions: list[str]) -> list[str]:
    """The sessions `worker` brought back from the store (its log names each one)."""
    assert worker.proc is not None
    lines = [line for line in worker.proc.log_text().splitlines() if "rehydrated" in line]
    return [s for s in sessions if any(s in line for line in lines)]


@pytest.fixture()
def pair(tmp_path: Path) -> Iterator[Cluster]:
    from conftest import _running

    yield from _running(Cluster(tmp_path, workers=2))


def test_a_killed_workers_sessions_are_served_again_within_about_a_second(pair: Cluster) -> None:
    assert pair.gateway is not None
    url = pair.gateway.mcp_url
    token = pair.mint("alice")
    victim, survivor = pair.workers
    with httpx.Client(timeout=30) as client:
        sessions = [open_session(client, url, token) for _ in range(SESSIONS)]
        assert all(ping(client, url, token, s) for s in sessions)
        theirs = owned_by(victim, sessions)
        assert theirs, "no session on the victim"
        assert victim.proc is not None
        victim.proc.kill()
        killed = time.monotonic()
        # Each request may wait out the handover in the gateway (it retries while no worker
        # owns the shard); what counts is when every session answers again.
        pending = set(theirs)
        while pending and time.monotonic() - killed < LEASE_TTL:
            pending = {s for s in pending if not ping(client, url, token, s, id=3)}
            time.sleep(0.05)
        served_after = time.monotonic() - killed
        assert not pending, f"{len(pending)} sessions still unserved {served_after:.1f}s after the kill"
        print(f"\nfailover: {len(theirs)} sessions of the killed worker served again after {served_after:.2f}s")
        assert served_after < LEASE_TTL / 2, f"took {served_after:.1f}s: the leases expired rather than moved"
        assert all(ping(client, url, token, s, id=4) for s in sessions)
        assert "took over a dead worker's shards" in (survivor.proc.log_text() if survivor.proc else "")


def test_a_stalled_worker_is_fenced_when_it_resumes(pair: Cluster) -> None:
    assert pair.gateway is not None
    url = pair.gateway.mcp_url
    token = pair.mint("alice")
    stalled, survivor = pair.workers
    assert stalled.proc is not None
    with httpx.Client(timeout=30) as client:
        sessions = [open_session(client, url, token) for _ in range(SESSIONS)]
        theirs = owned_by(stalled, sessions)
        assert theirs, "no session on the worker to stall"
        os.kill(stalled.proc.pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            # Requests sent now reach the stalled worker's socket too (its subscriptions stay
            # open while the process sleeps); once the survivor took over it answers them.
            # A request that reached only the stalled worker (before the takeover) times out
            # in the gateway (GATEWAY_ACK_TIMEOUT_MS, 5 s); the next one is answered.
            pending = set(theirs)
            while pending and time.monotonic() - stopped < 3 * LEASE_TTL:
                pending = {s for s in pending if not ping(client, url, token, s, id=3)}
            assert not pending, f"{len(pending)} sessions unserved while their worker was stalled"
        finally:
            os.kill(stalled.proc.pid, signal.SIGCONT)
        # Resumed: it must find itself declared dead and drop what it buffered meanwhile.
        deadline = time.monotonic() + 10
        while "declared dead by the other workers" not in stalled.proc.log_text():
            assert time.monotonic() < deadline, stalled.proc.tail()
            time.sleep(0.1)
        fenced = [line for line in stalled.metrics().splitlines()
                  if line.startswith("mcp_worker_envelopes_total") and 'outcome="fenced"' in line]
        assert fenced and float(fenced[0].split()[-1]) > 0, \
            f"the stalled worker answered what it received while stalled: {fenced}"
        # And the cluster goes on: every session answers, on whichever worker owns it now.
        assert all(ping(client, url, token, s, id=5) for s in sessions)
        assert survivor.proc is not None and survivor.proc.alive()


def test_a_new_session_opened_while_a_worker_stalls_is_opened_elsewhere(pair: Cluster) -> None:
    """`initialize` requests sent right after a worker stalls (SIGSTOP) reach its socket for the
    shards it still holds and are never acknowledged. A new session has nothing to lose: the
    gateway opens it again under a new id (the stalled worker's shards have moved by then), so
    every client gets a working session, and the abandoned id is never told to anyone."""
    assert pair.gateway is not None
    url = pair.gateway.mcp_url
    token = pair.mint("alice")
    stalled, survivor = pair.workers
    assert stalled.proc is not None
    opened: list[str] = []
    failures: list[str] = []

    def initialize() -> None:
        try:
            with httpx.Client(timeout=60) as client:
                opened.append(open_session(client, url, token))
        except (httpx.HTTPError, AssertionError, KeyError) as err:
            failures.append(repr(err)[:300])

    os.kill(stalled.proc.pid, signal.SIGSTOP)
    try:
        # Eight at once: each lands on the stalled worker's half of the shards with even odds.
        threads = [threading.Thread(target=initialize) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        os.kill(stalled.proc.pid, signal.SIGCONT)
    assert not failures, f"{len(failures)} of 8 sessions could not be opened while a worker stalled: {failures}"
    assert len(set(opened)) == 8
    with httpx.Client(timeout=30) as client:
        assert all(ping(client, url, token, s) for s in opened)
    assert survivor.proc is not None and survivor.proc.alive()


@pytest.fixture()
def fixture_pair(tmp_path: Path) -> Iterator[Cluster]:
    from conftest import _running

    yield from _running(Cluster(tmp_path, workers=2, profile="conformance"))


def test_a_request_in_flight_on_a_killed_worker_is_retried_on_the_survivor(fixture_pair: Cluster) -> None:
    """A 4 s tool call is running when its worker is killed: the gateway learns of the death
    (the survivor deletes the worker's key) within about a second and sends the request again,
    flagged as a retry; the survivor finds no record of it (its first run never finished), runs
    it, and the client gets one answer, instead of waiting GATEWAY_REQUEST_TIMEOUT (300 s)."""
    import threading

    cluster = fixture_pair
    assert cluster.gateway is not None
    url = cluster.gateway.mcp_url
    token = cluster.mint("alice")
    victim = cluster.workers[0]
    answer: dict[str, object] = {}
    with httpx.Client(timeout=60) as client:
        sessions = [open_session(client, url, token) for _ in range(8)]
        mine = owned_by(victim, sessions)
        assert mine, "no session on the victim"

        def slow_call() -> None:
            call = rpc("tools/call", {"name": "slow_compute", "arguments": {"seconds": 4, "label": "survivor"}}, 7)
            r = client.post(url, json=call, headers=headers(token, session=mine[0], version=SESSIONFUL_VERSION))
            answer["status"] = r.status_code
            answer["body"] = response_for(r, 7) if r.status_code == 200 else r.text
            answer["at"] = time.monotonic()

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(1.0)  # the call is running on the victim
        assert victim.proc is not None
        victim.proc.kill()
        killed = time.monotonic()
        caller.join(timeout=30)
        assert not caller.is_alive(), "the request was still held 30 s after its worker died"
        took = float(answer["at"]) - killed  # type: ignore[arg-type]
        print(f"\nin-flight request answered by the survivor {took:.2f}s after its worker was killed")
        assert answer["status"] == 200, answer
        body = answer["body"]
        assert isinstance(body, dict) and body["result"]["content"][0]["text"] == "survivor: computed in 4s", body
        retried = [line for line in cluster.gateway.metrics().splitlines()
                   if line.startswith("mcp_gateway_worker_gone_total") and 'outcome="retried"' in line]
        assert retried and float(retried[0].split()[-1]) >= 1, retried
        assert ping(client, url, token, mine[0], id=8)


def test_a_request_its_worker_never_acknowledged_is_sent_again_when_the_worker_dies(pair: Cluster) -> None:
    """A request reaches a worker that is stalled (SIGSTOP) and then killed: no acknowledgement
    ever comes, so the gateway cannot know which worker had it. It learns of a death while it
    waits and sends the request again, flagged as a retry, to the shard's new owner: the client
    gets one answer, and the `count` call ran exactly once, instead of a 504 after the
    acknowledgement timeout."""
    import threading

    assert pair.gateway is not None
    url = pair.gateway.mcp_url
    token = pair.mint("alice")
    victim = pair.workers[0]
    assert victim.proc is not None

    def count(client: httpx.Client, session: str, id: int) -> httpx.Response:
        call = rpc("tools/call", {"name": "count", "arguments": {}}, id)
        return client.post(url, json=call, headers=headers(token, session=session, version=SESSIONFUL_VERSION))

    def value(r: httpx.Response, id: int) -> int:
        assert r.status_code == 200, r.text
        return int(response_for(r, id)["result"]["structuredContent"]["count"])

    answer: dict[str, httpx.Response] = {}
    with httpx.Client(timeout=60) as client:
        sessions = [open_session(client, url, token) for _ in range(8)]
        for s in sessions:
            assert value(count(client, s, 2), 2) == 1
        mine = owned_by(victim, sessions)
        assert mine, "no session on the victim"
        os.kill(victim.proc.pid, signal.SIGSTOP)
        caller = threading.Thread(target=lambda: answer.setdefault("r", count(client, mine[0], 3)))
        caller.start()
        time.sleep(0.3)  # the request sits, unread, in the stalled worker's socket
        victim.proc.kill()
        caller.join(timeout=30)
        assert not caller.is_alive(), "the request was still held 30 s after its worker died"
        assert value(answer["r"], 3) == 2
        assert value(count(client, mine[0], 4), 4) == 3, "the retried call ran twice"
        retried = [line for line in pair.gateway.metrics().splitlines()
                   if line.startswith("mcp_gateway_worker_gone_total") and 'outcome="retried"' in line]
        assert retried and float(retried[0].split()[-1]) >= 1, retried


NATS_RECOVERY = 30.0  # seconds the cluster has to serve again once nats-server is back
NATS_OUTAGE = 2.0  # seconds nats-server stays down: longer than the fence, so every worker stops serving


def test_the_cluster_serves_again_by_itself_after_nats_server_restarts(pair: Cluster) -> None:
    """nats-server stops for longer than the workers' fence and starts again on its port and
    store; no service is restarted. Its memory-backed buckets (worker heartbeats, shard leases,
    request records) are gone with it: the services reconnect and recreate what they need by
    themselves. Every session answers again with its committed state (the `count` tool's counter,
    in the file-backed session bucket) intact, new sessions open, and fast failover still works:
    the survivors and the gateway follow the new heartbeat bucket, not the lost one."""
    assert pair.gateway is not None and pair.nats is not None
    url = pair.gateway.mcp_url
    token = pair.mint("alice")

    def count(client: httpx.Client, session: str, id: int) -> int:
        call = rpc("tools/call", {"name": "count", "arguments": {}}, id)
        r = client.post(url, json=call, headers=headers(token, session=session, version=SESSIONFUL_VERSION))
        assert r.status_code == 200, r.text
        return int(response_for(r, id)["result"]["structuredContent"]["count"])

    def unserved(client: httpx.Client, sessions: list[str], deadline: float, id: int) -> tuple[set[str], float]:
        start = time.monotonic()
        pending = set(sessions)
        while pending and time.monotonic() - start < deadline:
            pending = {s for s in pending if not ping(client, url, token, s, id=id)}
            time.sleep(0.05)
        return pending, time.monotonic() - start

    with httpx.Client(timeout=10) as client:
        sessions = [open_session(client, url, token) for _ in range(8)]
        for s in sessions:
            assert count(client, s, 2) == 1
        pair.nats.stop_process()
        time.sleep(NATS_OUTAGE)  # the outage itself
        pair.nats.start_again()
        pending, took = unserved(client, sessions, NATS_RECOVERY, 3)
        logs = "\n".join(w.proc.tail(15) for w in pair.workers if w.proc)
        assert not pending, f"{len(pending)} of {len(sessions)} sessions unserved {took:.0f}s after nats-server came back\n{logs}"
        print(f"\nnats restart: every session served again {took:.2f}s after nats-server came back")
        assert [count(client, s, 4) for s in sessions] == [2] * len(sessions), "counters lost or doubled"
        fresh = open_session(client, url, token)
        assert count(client, fresh, 2) == 1
        for proc in pair.procs():
            proc.check_alive()

        # The worker now serving most of the sessions (after the restart they were
        # rehydrated wherever their shards went), so the failover below has sessions to move.
        victim = max(pair.workers, key=lambda w: len(rehydrated_on(w, sessions)))
        assert victim.proc is not None and rehydrated_on(victim, sessions)
        victim.proc.kill()
        pending, took = unserved(client, sessions, LEASE_TTL, 5)
        assert not pending, f"{len(pending)} sessions unserved {took:.1f}s after a worker was killed"
        assert took < LEASE_TTL / 2, f"took {took:.1f}s: the leases expired rather than moved"
