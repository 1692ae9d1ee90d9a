"""MCP tasks (the io.modelcontextprotocol/tasks extension, SEP-2663) through the cluster:
`generateImage` as a task on the stateless 2026-07-28 wire and in a 2025-11-25 session, polled
with tasks/get wherever the gateway routes it (two workers); tasks are private to their user; a
request without the extension gets the picture synchronously; a task whose worker is killed
reads as failed instead of working forever. The conformance suite's tasks scenarios run in
`make test` (tests/conformance/run.sh).

Contract: README "Long-running tools: MCP tasks"; issue: the seeds' tools, item 5.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness import Cluster
from mcp_http import (
    SESSIONFUL_VERSION,
    headers,
    messages,
    response_for,
    rpc,
    stateless_headers,
    stateless_msg,
)
from test_tools import png_pixels

TASKS = "io.modelcontextprotocol/tasks"
WITH_TASKS = {"io.modelcontextprotocol/clientCapabilities": {"extensions": {TASKS: {}}}}


def call(http: httpx.Client, url: str, token: str, method: str, params: dict[str, Any], *,
         tasks: bool = True, id: int = 1) -> dict[str, Any]:
    """One stateless request; the JSON-RPC answer."""
    if tasks:
        params = {**params, "_meta": {**params.get("_meta", {}), **WITH_TASKS}}
    msg = stateless_msg(method, params, id=id)
    r = http.post(url, json=msg, headers=stateless_headers(token, msg))
    return response_for(r, id)


def poll(http: httpx.Client, url: str, token: str, task_id: str, *, until: set[str],
         timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answer = call(http, url, token, "tasks/get", {"taskId": task_id})
        assert "result" in answer, answer
        if answer["result"]["status"] in until:
            return answer["result"]
        assert time.monotonic() < deadline, f"task {task_id} still {answer['result']['status']}"
        time.sleep(0.1)


def picture(result: dict[str, Any]) -> tuple[int, int, bytes]:
    (image,) = [c for c in result["content"] if c["type"] == "image"]
    assert image["mimeType"] == "image/png"
    return png_pixels(base64.b64decode(image["data"]))


def test_generate_image_runs_as_a_task_on_the_stateless_wire(cluster: Cluster) -> None:
    assert cluster.gateway is not None
    url = cluster.gateway.mcp_url
    artist = cluster.mint("alice", permission="image_generation")
    with httpx.Client(timeout=15) as http:
        listed = call(http, url, artist, "tools/list", {})["result"]["tools"]
        (tool,) = [t for t in listed if t["name"] == "generateImage"]
        assert tool["_meta"][TASKS]["taskSupport"] == "optional", tool
        created = call(http, url, artist, "tools/call",
                       {"name": "generateImage", "arguments": {"prompt": "a kite over the sea", "size": "256x256"}})
        task = created["result"]
        assert task["resultType"] == "task", created
        assert task["status"] == "working" and isinstance(task["ttlMs"], int), task
        assert "content" not in task and "requestState" not in task, task
        # Every poll may land on either worker: the record is in JetStream, not in one worker.
        done = poll(http, url, artist, task["taskId"], until={"completed", "failed", "cancelled"})
        assert done["status"] == "completed", done
        assert done["resultType"] == "complete"
        assert picture(done["result"])[:2] == (256, 256)
        # The same prompt, synchronously (no extension): the same picture.
        sync = call(http, url, artist, "tools/call",
                    {"name": "generateImage", "arguments": {"prompt": "a kite over the sea", "size": "256x256"}},
                    tasks=False)
        assert sync["result"]["resultType"] == "complete", sync
        assert picture(sync["result"]) == picture(done["result"])


def test_a_task_is_private_to_its_user(cluster: Cluster) -> None:
    assert cluster.gateway is not None
    url = cluster.gateway.mcp_url
    alice = cluster.mint("alice", permission="image_generation")
    mallory = cluster.mint("mallory", permission="image_generation")
    with httpx.Client(timeout=15) as http:
        task = call(http, url, alice, "tools/call",
                    {"name": "generateImage", "arguments": {"prompt": "a secret garden", "size": "256x256"}})["result"]
        for method, extra in [("tasks/get", {}), ("tasks/cancel", {}), ("tasks/update", {"inputResponses": {}})]:
            answer = call(http, url, mallory, method, {"taskId": task["taskId"], **extra})
            assert answer.get("error", {}).get("code") == -32602, (method, answer)
        done = poll(http, url, alice, task["taskId"], until={"completed", "failed", "cancelled"})
        assert done["status"] == "completed", done
        # Without the extension declared, tasks/* are refused before any lookup.
        answer = call(http, url, alice, "tasks/get", {"taskId": task["taskId"]}, tasks=False)
        assert answer["error"]["code"] == -32021, answer
        assert TASKS in answer["error"]["data"]["requiredCapabilities"]["extensions"], answer


def test_generate_image_as_a_task_in_a_session(cluster: Cluster) -> None:
    """A 2025-11-25 session that declared the extension at initialize."""
    assert cluster.gateway is not None
    url = cluster.gateway.mcp_url
    artist = cluster.mint("carol", permission="image_generation")
    with httpx.Client(timeout=15) as http:
        init = rpc("initialize", {"protocolVersion": SESSIONFUL_VERSION,
                                  "capabilities": {"extensions": {TASKS: {}}},
                                  "clientInfo": {"name": "e2e-tasks", "version": "0"}})
        r = http.post(url, json=init, headers=headers(artist))
        assert r.status_code == 200, r.text
        sid = r.headers["mcp-session-id"]
        h = headers(artist, session=sid, version=SESSIONFUL_VERSION)
        assert response_for(r, 1)["result"]["capabilities"]["extensions"][TASKS] == {}
        assert http.post(url, json=rpc("notifications/initialized", id=None), headers=h).status_code == 202
        r = http.post(url, json=rpc("tools/call", {"name": "generateImage",
                                                   "arguments": {"prompt": "a lantern", "size": "256x256"}}, id=2),
                      headers=h)
        (created,) = [m for m in messages(r) if m.get("id") == 2]
        task_id = created["result"]["taskId"]
        deadline = time.monotonic() + 30
        n = 3
        while True:
            r = http.post(url, json=rpc("tasks/get", {"taskId": task_id}, id=n), headers=h)
            (got,) = [m for m in messages(r) if m.get("id") == n]
            if got["result"]["status"] != "working":
                break
            assert time.monotonic() < deadline, got
            n += 1
            time.sleep(0.1)
        assert got["result"]["status"] == "completed", got
        assert picture(got["result"]["result"])[:2] == (256, 256)


# --- a worker dies under its tasks ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from conftest import _running

    yield from _running(Cluster(tmp_path_factory.mktemp("tasks"), workers=2, profile="conformance"))


def test_a_task_whose_worker_is_killed_fails_and_the_others_go_on(fixture_cluster: Cluster) -> None:
    """slow_compute tasks on two workers; worker-1 is killed (SIGKILL): its tasks read as failed
    (the runner stopped heartbeating) within the stale bound, the other worker's go on working
    and can still be cancelled."""
    cluster = fixture_cluster
    assert cluster.gateway is not None
    url = cluster.gateway.mcp_url
    token = cluster.mint("alice")
    victim, survivor = cluster.workers
    with httpx.Client(timeout=15) as http:
        ids: list[str] = []
        # The stateless queue group spreads the calls; go on until both workers run some.
        for attempt in range(24):
            created = call(http, url, token, "tools/call",
                           {"name": "slow_compute", "arguments": {"seconds": 120, "label": f"chaos-{attempt}"}})
            ids.append(created["result"]["taskId"])
            time.sleep(0.05)
            log1 = victim.proc.log_text() if victim.proc else ""
            on_victim = [i for i in ids if re.search(rf"task started.*{i}|{i}.*task started", log1)]
            if on_victim and len(on_victim) < len(ids) and len(ids) >= 4:
                break
        on_victim = set(on_victim)
        on_survivor = [i for i in ids if i not in on_victim]
        assert on_victim and on_survivor, f"tasks did not spread over the workers: {ids}"
        assert victim.proc is not None
        victim.proc.kill()
        for task_id in on_victim:
            done = poll(http, url, token, task_id, until={"failed", "completed", "cancelled"}, timeout=45)
            assert done["status"] == "failed", done
            assert "stopped" in done["error"]["message"], done
        for task_id in on_survivor:
            assert poll(http, url, token, task_id, until={"working"}, timeout=5)["status"] == "working"
            assert call(http, url, token, "tasks/cancel", {"taskId": task_id})["result"] == {"resultType": "complete"}
            assert poll(http, url, token, task_id, until={"cancelled"}, timeout=5)["status"] == "cancelled"
