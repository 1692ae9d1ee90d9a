"""Resumable streams and the stateful `count` tool, across gateways and workers.

A session's GET /mcp stream starts with a priming event carrying an id; every event after it
has an id. A client whose stream dropped reconnects with `Last-Event-ID` to any gateway and gets
exactly the events it missed, in order, then the live ones. The legacy /sse transport resumes the
same way. The `count` tool's counter lives in the session's record: a retried request (same id)
is answered from the record, never counted twice, and the counter survives the loss of the
worker that held it.

Contract: README "Reliability"; issue: durable sessions (resumable streams, persisted state).
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import Cluster
from mcp_http import (
    LEGACY_VERSION,
    SESSIONFUL_VERSION,
    SseReader,
    headers,
    initialize_msg,
    legacy_post,
    open_session,
    response_for,
    rpc,
)

SHARED_RESOURCE = "http://mcp.example.test/mcp"  # the load balancer's URL both gateways serve


@pytest.fixture()
def two_gateways(tmp_path: Path) -> Iterator[Cluster]:
    from conftest import _running

    yield from _running(Cluster(tmp_path, workers=2, gateways=2, resource=SHARED_RESOURCE))


def count(client: httpx.Client, url: str, token: str, session: str, id: int, by: int = 1) -> int:
    r = client.post(url, json=rpc("tools/call", {"name": "count", "arguments": {"by": by}}, id),
                    headers=headers(token, session=session, version=SESSIONFUL_VERSION))
    assert r.status_code == 200, r.text
    result = response_for(r, id)["result"]
    assert not result.get("isError"), result
    return int(result["structuredContent"]["count"])


def counted(reader: SseReader, timeout: float = 10.0) -> tuple[int, str]:
    """The next `count` log event on a stream: (the value it reports, its event id)."""
    msg: dict[str, Any] = reader.message(timeout)
    while msg.get("method") != "notifications/message":
        msg = reader.message(timeout)
    assert reader.event_id, f"event without an id: {msg}"
    return int(msg["params"]["data"]["count"]), reader.event_id


def get_stream(url: str, token: str, session: str, last_event_id: str | None = None) -> SseReader:
    extra = {"Mcp-Session-Id": session, "MCP-Protocol-Version": SESSIONFUL_VERSION}
    if last_event_id is not None:
        extra["Last-Event-ID"] = last_event_id
    return SseReader(url, token, headers=extra)


def wait_primed(reader: SseReader, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while reader.last_id is None and time.monotonic() < deadline and not reader.closed.is_set():
        time.sleep(0.02)
    assert reader.last_id is not None, "the stream sent no priming event id"
    return reader.last_id


def test_a_get_stream_resumes_on_another_gateway_with_exactly_the_missed_events(two_gateways: Cluster) -> None:
    a, b = two_gateways.gateways
    token = two_gateways.mint("alice")
    with httpx.Client(timeout=30) as client:
        session = open_session(client, a.mcp_url, token)
        with get_stream(a.mcp_url, token, session) as first:
            assert first.status == 200
            wait_primed(first)
            for i in range(1, 4):
                assert count(client, a.mcp_url, token, session, id=10 + i) == i
            seen = [counted(first) for _ in range(3)]
        assert [v for v, _ in seen] == [1, 2, 3]
        ids = [int(i) for _, i in seen]
        assert ids == sorted(ids) and len(set(ids)) == 3, ids

        # Stream gone: two more changes happen while the client is away.
        assert count(client, b.mcp_url, token, session, id=20) == 4
        assert count(client, a.mcp_url, token, session, id=21) == 5

        # Resume on the other gateway from the second event: 3, 4, 5 replayed, then live.
        with get_stream(b.mcp_url, token, session, last_event_id=seen[1][1]) as resumed:
            assert resumed.status == 200
            replayed = [counted(resumed) for _ in range(3)]
            assert [v for v, _ in replayed] == [3, 4, 5]
            assert replayed[0][1] == seen[2][1], "a replayed event keeps its id"
            assert count(client, a.mcp_url, token, session, id=22) == 6
            value, live_id = counted(resumed)
            assert value == 6 and int(live_id) > int(replayed[-1][1])
            time.sleep(0.3)  # nothing else may arrive: no event twice
            extra = [m for m in resumed.messages_now() if m.get("method") == "notifications/message"]
            assert extra == [], extra


def test_a_bad_last_event_id_is_a_400(two_gateways: Cluster) -> None:
    a, _ = two_gateways.gateways
    token = two_gateways.mint("alice")
    with httpx.Client(timeout=30) as client:
        session = open_session(client, a.mcp_url, token)
        for bad in ["not-a-number", "-1", "x" * 300]:
            with get_stream(a.mcp_url, token, session, last_event_id=bad) as s:
                assert s.status == 400, (bad, s.status)
                body = s.response.json()
                assert body["error"]["code"] == -32600, body


def test_a_legacy_sse_stream_resumes_on_another_gateway(two_gateways: Cluster) -> None:
    a, b = two_gateways.gateways
    token = two_gateways.mint("alice")
    with httpx.Client(timeout=30) as client:
        with SseReader(a.sse_url, token) as first:
            assert first.status == 200
            endpoint = first.endpoint()
            cursor = first.event_id
            assert cursor and ":" in cursor, f"the endpoint event carries the resume cursor: {cursor!r}"
            r = legacy_post(client, a.base_url, endpoint, token, initialize_msg(1, LEGACY_VERSION))
            assert r.status_code == 202, r.text
            assert first.message()["id"] == 1
            legacy_post(client, a.base_url, endpoint, token, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            legacy_post(client, a.base_url, endpoint, token, rpc("tools/call", {"name": "count", "arguments": {}}, 2))
            answers = []
            while len(answers) < 1:
                m = first.message()
                if m.get("id") == 2:
                    answers.append(m)
            assert answers[0]["result"]["structuredContent"]["count"] == 1
            cursor = first.event_id
        # Away: a call posted through the other gateway is answered on the session's stream.
        r = legacy_post(client, b.base_url, endpoint, token, rpc("tools/call", {"name": "count", "arguments": {}}, 3))
        assert r.status_code == 202, r.text
        with SseReader(b.sse_url, token, headers={"Last-Event-ID": cursor}) as resumed:
            assert resumed.status == 200
            got: list[dict[str, Any]] = []
            deadline = time.monotonic() + 10
            while not any(m.get("id") == 3 for m in got) and time.monotonic() < deadline:
                try:
                    got.append(resumed.message(timeout=max(0.1, deadline - time.monotonic())))
                except queue.Empty:
                    break
            answer = next((m for m in got if m.get("id") == 3), None)
            assert answer is not None, f"the missed answer was not replayed: {got}"
            assert answer["result"]["structuredContent"]["count"] == 2
            assert not any(m.get("id") in (1, 2) for m in got), f"already-seen events replayed: {got}"
        # A cursor of an unknown session is a 404.
        with SseReader(b.sse_url, token, headers={"Last-Event-ID": "nosuchsession:1"}) as gone:
            assert gone.status in (400, 404), gone.status


def test_a_retried_count_is_answered_from_the_record_and_the_counter_survives_its_worker(
    two_gateways: Cluster,
) -> None:
    a, b = two_gateways.gateways
    token = two_gateways.mint("alice")
    with httpx.Client(timeout=30) as client:
        sessions = [open_session(client, a.mcp_url, token) for _ in range(8)]
        for s in sessions:
            assert count(client, a.mcp_url, token, s, id=5, by=2) == 2
            # The same request again (a client retry after a lost answer): same answer, no second run.
            assert count(client, b.mcp_url, token, s, id=5, by=2) == 2
            assert count(client, a.mcp_url, token, s, id=6) == 3
        victim = next(w for w in two_gateways.workers if w.proc and any(s in w.proc.log_text() for s in sessions))
        assert victim.proc is not None
        victim.proc.kill()
        for s in sessions:
            # Served again by the survivor, rehydrated from the record: the counter went on.
            assert count(client, b.mcp_url, token, s, id=7) == 4
        # setLevel is part of the session's state too: at "error", count's info log is not sent.
        s = sessions[0]
        r = client.post(a.mcp_url, json=rpc("logging/setLevel", {"level": "error"}, 8),
                        headers=headers(token, session=s, version=SESSIONFUL_VERSION))
        assert r.status_code == 200 and "result" in response_for(r, 8), r.text
        with get_stream(a.mcp_url, token, s) as stream:
            wait_primed(stream)
            assert count(client, a.mcp_url, token, s, id=9) == 5
            time.sleep(0.5)
            logs = [m for m in stream.messages_now() if m.get("method") == "notifications/message"]
            assert logs == [], json.dumps(logs)


# --- A request's SSE answer (a POST answered with a stream) resumes too -----------------------

@pytest.fixture()
def two_gateways_conformance(tmp_path: Path) -> Iterator[Cluster]:
    """The conformance tools: `test_elicitation` keeps its answer stream open until the client
    answers the elicitation, which lets a test lose the stream at a chosen point."""
    from conftest import _running

    yield from _running(Cluster(tmp_path, workers=2, gateways=2, resource=SHARED_RESOURCE, profile="conformance"))


def open_eliciting_session(client: httpx.Client, url: str, token: str) -> str:
    init = rpc("initialize", {"protocolVersion": SESSIONFUL_VERSION, "capabilities": {"elicitation": {}},
                              "clientInfo": {"name": "resume-e2e", "version": "0"}}, 1)
    r = client.post(url, json=init, headers=headers(token))
    assert r.status_code == 200, r.text
    session = r.headers["mcp-session-id"]
    r = client.post(url, json=rpc("notifications/initialized", id=None),
                    headers=headers(token, session=session, version=SESSIONFUL_VERSION))
    assert r.status_code == 202, r.text
    return session


def call_eliciting(url: str, token: str, session: str, id: int) -> tuple[SseReader, str, dict[str, Any], str]:
    """POST a `test_elicitation` call and read its stream up to the server's elicitation request:
    (the stream, its priming id, the elicitation request, that request's event id)."""
    call = rpc("tools/call", {"name": "test_elicitation", "arguments": {"message": "who are you?"}}, id)
    stream = SseReader(url, token, post=call,
                       headers={"Mcp-Session-Id": session, "MCP-Protocol-Version": SESSIONFUL_VERSION})
    assert stream.status == 200, stream.response.text
    ask = stream.message()
    assert ask.get("method") == "elicitation/create", ask
    ask_id = stream.event_id
    primed = stream.priming_id
    assert ask_id and primed, "an answer stream's events carry ids, after a priming event"
    return stream, primed, ask, ask_id


def answer_elicitation(client: httpx.Client, url: str, token: str, session: str, ask: dict[str, Any]) -> None:
    reply = {"jsonrpc": "2.0", "id": ask["id"],
             "result": {"action": "accept", "content": {"username": "alice", "email": "alice@example.test"}}}
    r = client.post(url, json=reply, headers=headers(token, session=session, version=SESSIONFUL_VERSION))
    assert r.status_code == 202, r.text


def test_a_posts_answer_stream_resumes_on_another_gateway_after_its_gateway_is_killed(
    two_gateways_conformance: Cluster,
) -> None:
    a, b = two_gateways_conformance.gateways
    token = two_gateways_conformance.mint("alice")
    with httpx.Client(timeout=30) as client:
        session = open_eliciting_session(client, a.mcp_url, token)
        stream, primed, ask, ask_id = call_eliciting(a.mcp_url, token, session, id=5)
        assert primed != ask_id and "." in ask_id, (primed, ask_id)
        assert a.proc is not None
        a.proc.kill()  # the stream breaks with its gateway; the call goes on in its worker
        assert stream.wait_closed(10)
        stream.close()

        # Resume on the other gateway from the last event seen, then answer the elicitation there:
        # the call's result comes live on the resumed stream, which then ends.
        with get_stream(b.mcp_url, token, session, last_event_id=ask_id) as resumed:
            assert resumed.status == 200
            answer_elicitation(client, b.mcp_url, token, session, ask)
            result = resumed.message()
            assert result.get("id") == 5, result
            assert "alice@example.test" in json.dumps(result["result"]), result
            final_id = resumed.event_id
            assert final_id and int(final_id.split(".")[0]) > int(ask_id.split(".")[0]), (ask_id, final_id)
            assert resumed.wait_closed(10), "a resumed answer stream ends after the answer"
            assert resumed.messages_now() == [], "nothing after the answer, the elicitation not again"


def test_a_lost_answer_stream_is_replayed_from_its_priming_id_and_nothing_of_another_stream(
    two_gateways_conformance: Cluster,
) -> None:
    a, b = two_gateways_conformance.gateways
    token = two_gateways_conformance.mint("alice")
    with httpx.Client(timeout=30) as client:
        session = open_eliciting_session(client, a.mcp_url, token)
        stream, primed, ask, ask_id = call_eliciting(a.mcp_url, token, session, id=7)
        stream.close()  # the client lost its connection (not a cancellation)
        answer_elicitation(client, b.mcp_url, token, session, ask)

        # From the priming id: the whole answer, in order, with the ids it had, then the end.
        with get_stream(b.mcp_url, token, session, last_event_id=primed) as resumed:
            assert resumed.status == 200
            again = resumed.message()
            assert again == ask and resumed.event_id == ask_id, (again, resumed.event_id)
            result = resumed.message()
            assert result.get("id") == 7 and "result" in result, result
            assert resumed.wait_closed(10)

        # The same cursor in another session of the same user names that session's stream: empty.
        other = open_eliciting_session(client, a.mcp_url, token)
        with get_stream(a.mcp_url, token, other, last_event_id=primed) as elsewhere:
            assert elsewhere.status == 200
            with pytest.raises(queue.Empty):
                elsewhere.message(timeout=1.0)

        # Another user cannot resume alice's answer stream: the session is not theirs.
        mallory = two_gateways_conformance.mint("mallory")
        with get_stream(b.mcp_url, mallory, session, last_event_id=primed) as stolen:
            assert stolen.status == 404, stolen.status
            assert "alice@example.test" not in stolen.response.text
