"""The shipped tools end to end, through the full OAuth flow with the Python `mcp` SDK: who
sees and may call which tool (WorkOS-style permission, e-mail allow-list, scopes), the PNG of
`generateImage`, the todo tools against the real Todo API (examples/todo-api) with a downstream
token the client never sees, the checklist/process tools, and the scope step-up (HTTP 403
`insufficient_scope`, the SDK authorizes again, the call then succeeds).

Contract: README "Tools"; issue: the seeds' tools and per-tool policy.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mcp.client.client import Client

from harness import Cluster
from test_oauth_flow import SdkClient, gw, text_of, user

DOC_SCOPES = "checklist.list checklist.read process.read process.search"
DEPLOY_LOCAL = __import__("pathlib").Path(__file__).resolve().parents[2] / "deploy" / "local"


@pytest.fixture(scope="module")
def tools_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from conftest import _running

    yield from _running(
        Cluster(
            tmp_path_factory.mktemp("tools"),
            workers=2,
            oauth="static",
            todo_api=True,
            auth_env={"AUTH_SCOPES": f"mcp {DOC_SCOPES}"},
            # The protected resource asks for "mcp" only: the document tools' scopes come by step-up.
            gateway_env={"REQUIRED_SCOPES": "mcp"},
            worker_env={
                "CHECKLIST_DIR": str(DEPLOY_LOCAL / "checklists"),
                "PROCESS_DIR": str(DEPLOY_LOCAL / "processes"),
                "ALLOWED_EMAILS": "carol@example.com",
            },
        )
    )


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the inflated image data of a PNG (signature and chunk CRCs checked)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    pos, idat, size = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    assert size is not None, "no IHDR"
    return size[0], size[1], zlib.decompress(idat)


def image_of(result: Any) -> bytes:
    import base64

    images = [b for b in result.content if getattr(b, "type", None) == "image"]
    assert len(images) == 1, result
    assert images[0].mime_type == "image/png"
    return base64.b64decode(images[0].data)


async def names(client: Client) -> list[str]:
    return [t.name for t in (await client.list_tools()).tools]


def test_each_user_sees_and_calls_exactly_its_tools(tools_cluster: Cluster) -> None:
    async def alice_flow(client: Client) -> tuple[list[str], Any, Any]:
        listed = await names(client)
        fox = await client.call_tool("generateImage", {"prompt": "a red fox in the snow", "size": "256x256"})
        owl = await client.call_tool("generateImage", {"prompt": "a grey owl at night", "size": "256x256"})
        return listed, fox, owl

    alice = SdkClient(tools_cluster, **user(tools_cluster, "alice"))
    listed, fox, owl = alice.run(alice_flow)
    for tool in ["add", "generateImage", "whoAmI", "listTodos", "addTodo", "completeTodo", "deleteTodo",
                 "list_checklists", "get_checklist", "list_processes", "get_process", "search_processes"]:
        assert tool in listed, (tool, listed)
    assert not fox.is_error and not owl.is_error, (fox, owl)
    w, h, fox_pixels = png_pixels(image_of(fox))
    assert (w, h) == (256, 256)
    _, _, owl_pixels = png_pixels(image_of(owl))
    assert fox_pixels != owl_pixels, "the picture depends on the prompt"

    async def bob_flow(client: Client) -> tuple[list[str], Any, str]:
        listed = await names(client)
        refused = await client.call_tool("generateImage", {"prompt": "a red fox"})
        me = text_of(await client.call_tool("whoAmI", {}))
        return listed, refused, me

    bob = SdkClient(tools_cluster, **user(tools_cluster, "bob"))
    listed, refused, me = bob.run(bob_flow)
    assert "generateImage" not in listed, listed
    assert "add" in listed and "listTodos" in listed, listed
    assert refused.is_error and "image_generation" in text_of(refused), refused
    assert '"sub": "bob"' in me, me
    # whoAmI shows the downstream token's audience and expiry, never the token.
    assert tools_cluster.todo_api is not None
    assert tools_cluster.todo_api.api_identifier in me, me
    assert "eyJ" not in me, "no JWT in the answer"


def test_todos_round_trip_through_the_todo_api_and_stay_apart(tools_cluster: Cluster) -> None:
    async def alice_flow(client: Client) -> tuple[Any, Any, str, Any, Any]:
        added = await client.call_tool("addTodo", {"title": "water the plants"})
        listed = await client.call_tool("listTodos", {})
        todo_id = next(t["id"] for t in __import__("json").loads(text_of(listed)) if t["title"] == "water the plants")
        completed = await client.call_tool("completeTodo", {"id": todo_id})
        after = await client.call_tool("listTodos", {})
        return added, after, todo_id, completed, listed

    alice = SdkClient(tools_cluster, **user(tools_cluster, "alice"))
    added, after, todo_id, completed, _ = alice.run(alice_flow)
    assert not added.is_error and "water the plants" in text_of(added), added
    assert not completed.is_error, completed
    todos = __import__("json").loads(text_of(after))
    assert [t["completed"] for t in todos if t["id"] == todo_id] == [True], todos

    async def bob_flow(client: Client) -> tuple[Any, Any, Any]:
        listed = await client.call_tool("listTodos", {})
        complete = await client.call_tool("completeTodo", {"id": todo_id})
        delete = await client.call_tool("deleteTodo", {"id": todo_id})
        return listed, complete, delete

    bob = SdkClient(tools_cluster, **user(tools_cluster, "bob"))
    listed, complete, delete = bob.run(bob_flow)
    assert todo_id not in text_of(listed), "bob cannot see alice's todos"
    assert complete.is_error and "no such todo" in text_of(complete), complete
    assert delete.is_error and "no such todo" in text_of(delete), delete

    async def alice_delete(client: Client) -> tuple[Any, Any]:
        deleted = await client.call_tool("deleteTodo", {"id": todo_id})
        return deleted, await client.call_tool("listTodos", {})

    deleted, listed = SdkClient(tools_cluster, **user(tools_cluster, "alice")).run(alice_delete)
    assert not deleted.is_error, deleted
    assert todo_id not in text_of(listed)

    # The Todo API itself refuses the MCP access token (wrong audience): only the vault's works.
    assert tools_cluster.todo_api is not None
    r = httpx.get(f"{tools_cluster.todo_api.url}/todos", headers={"Authorization": "Bearer x.y.z"}, timeout=10)
    assert r.status_code == 401, r.text


def test_a_missing_scope_is_a_403_step_up_and_the_sdk_authorizes_again(tools_cluster: Cluster) -> None:
    async def flow(client: Client) -> tuple[Any, Any]:
        checklist = await client.call_tool("get_checklist", {"name": "release"})
        hits = await client.call_tool("search_processes", {"query": "review"})
        return checklist, hits

    sdk = SdkClient(tools_cluster, **user(tools_cluster, "alice"))
    checklist, hits = sdk.run(flow)
    assert not checklist.is_error and text_of(checklist).startswith("# "), checklist
    assert not hits.is_error and '"count"' in text_of(hits), hits

    paths = sdk.wire.paths()
    step_ups = [p for p in paths if p[1] == "/mcp" and p[2] == 403]
    assert step_ups, paths
    # Two authorizations: the first for "mcp" only, the second adding what the 403 named.
    assert len(sdk.callbacks) >= 2, sdk.authorize_urls
    first, second = sdk.authorize_urls[0], sdk.authorize_urls[1]
    assert "checklist.read" not in first, first
    assert "checklist.read" in second and "mcp" in second, second


def test_the_step_up_challenge_on_the_wire(tools_cluster: Cluster) -> None:
    """The 403 a client without the scope gets: WWW-Authenticate with error, scope (what it has
    plus what it lacks) and resource_metadata; the SSO seed's INSUFFICIENT_SCOPE code in the body."""
    seen: dict[str, Any] = {}

    async def flow(client: Client) -> None:
        await client.call_tool("add", {"a": 1, "b": 1})

    sdk = SdkClient(tools_cluster, **user(tools_cluster, "bob"))
    sdk.run(flow)
    assert sdk.storage.tokens is not None
    token = sdk.storage.tokens.access_token
    g = gw(tools_cluster)
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-06-18",
    }
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}}
    r = httpx.post(g.mcp_url, json=init, headers=headers, timeout=15)
    assert r.status_code == 200, r.text
    headers["Mcp-Session-Id"] = r.headers["mcp-session-id"]
    httpx.post(g.mcp_url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers, timeout=15)
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "list_checklists", "arguments": {}}}
    r = httpx.post(g.mcp_url, json=call, headers=headers, timeout=15)
    seen["status"] = r.status_code
    assert r.status_code == 403, r.text
    challenge = r.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge, challenge
    assert 'scope="mcp checklist.list"' in challenge, challenge
    assert "resource_metadata=" in challenge, challenge
    assert r.json()["error_code"] == "INSUFFICIENT_SCOPE", r.text


# --- every transport, with the development issuer's tokens -------------------------------------

TRANSPORTS = ["sessionful", "stateless", "legacy-sse"]


def _client_for(cluster: Cluster, transport: str, token: str) -> Any:
    import httpx2
    from mcp.client.sse import sse_client
    from mcp.client.streamable_http import streamable_http_client

    from mcp_http import STATELESS_VERSION

    assert cluster.gateway is not None
    if transport == "legacy-sse":
        return Client(
            sse_client(cluster.gateway.sse_url, headers={"Authorization": f"Bearer {token}"}, timeout=30,
                       sse_read_timeout=60),
            mode="legacy",
        )
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30.0, read=60.0))
    mode = STATELESS_VERSION if transport == "stateless" else "legacy"
    return Client(streamable_http_client(cluster.gateway.mcp_url, http_client=http), mode=mode)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_gating_holds_on_every_transport(cluster: Cluster, transport: str) -> None:
    import anyio

    artist = cluster.mint("alice", permission="image_generation")
    plain = cluster.mint("bob")

    async def flow(token: str) -> tuple[list[str], Any]:
        with anyio.fail_after(60):
            async with _client_for(cluster, transport, token) as client:
                listed = await names(client)
                result = await client.call_tool("generateImage", {"prompt": "a lighthouse", "size": "256x256"})
                return listed, result

    listed, result = anyio.run(flow, artist)
    assert "generateImage" in listed, listed
    assert not result.is_error and png_pixels(image_of(result))[:2] == (256, 256), result
    listed, result = anyio.run(flow, plain)
    assert "generateImage" not in listed and "add" in listed, listed
    assert result.is_error, result


def test_a_session_follows_its_callers_token_and_hears_list_changed(cluster: Cluster) -> None:
    """The same session (same iss, sub, client) used first with a token without the permission,
    then with one that has it: the list follows and notifications/tools/list_changed arrives on
    the session's GET stream."""
    from mcp_http import SESSIONFUL_VERSION, SseReader, headers, messages, open_session, rpc

    assert cluster.gateway is not None
    url = cluster.gateway.mcp_url
    before = cluster.mint("carol")
    after = cluster.mint("carol", permission="image_generation")

    def listed(http: httpx.Client, token: str, sid: str, id: int) -> list[str]:
        r = http.post(url, json=rpc("tools/list", {}, id=id),
                      headers=headers(token, session=sid, version=SESSIONFUL_VERSION))
        assert r.status_code == 200, r.text
        (answer,) = [m for m in messages(r) if m.get("id") == id]
        return [t["name"] for t in answer["result"]["tools"]]

    with httpx.Client(timeout=15) as http:
        sid = open_session(http, url, before)
        with SseReader(url, before, headers={"Mcp-Session-Id": sid, "MCP-Protocol-Version": SESSIONFUL_VERSION}) as stream:
            assert stream.status == 200
            assert "generateImage" not in listed(http, before, sid, 2)
            assert "generateImage" in listed(http, after, sid, 3)
            event = stream.message(timeout=10)
            assert event.get("method") == "notifications/tools/list_changed", event
            # Back to the narrower token: the list narrows again, and says so.
            assert "generateImage" not in listed(http, before, sid, 4)
            assert stream.message(timeout=10).get("method") == "notifications/tools/list_changed"


# --- the real upstream OpenID provider ---------------------------------------------------------

# The provider's access tokens (JWTs for the Todo API) live 63 s: fresh (more than the vault's
# 60 s refresh-ahead) right after sign-in, due for a refresh a few seconds later.
UPSTREAM_TTL = 63


@pytest.fixture(scope="module")
def oidc_tools_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from conftest import _running

    yield from _running(
        Cluster(
            tmp_path_factory.mktemp("tools-oidc"),
            workers=2,
            oauth="oidc",
            todo_api=True,
            oidc_access_token_ttl=UPSTREAM_TTL,
        )
    )


def test_upstream_users_tools_and_todos_with_the_providers_token(oidc_tools_cluster: Cluster) -> None:
    """Users signed in at oidc-provider: permissions from its claims decide generateImage; the
    todo tools call the Todo API with the provider's JWT access token for it (resource
    indicator), which the vault refreshes once when it is about to expire."""
    import json

    cluster = oidc_tools_cluster
    assert cluster.auth is not None and cluster.todo_api is not None
    refreshes = lambda: sum(cluster.auth.series("auth_vault_refreshes_total").values())  # noqa: E731

    async def alice_flow(client: Client) -> tuple[list[str], Any, Any, Any, Any]:
        listed = await names(client)
        me = await client.call_tool("whoAmI", {})
        added = await client.call_tool("addTodo", {"title": "renew the certificate"})
        before = refreshes()
        # Let the provider's token come within the vault's refresh-ahead window.
        await __import__("anyio").sleep(4)
        todos = await client.call_tool("listTodos", {})
        return listed, me, added, todos, before

    alice = SdkClient(cluster, **user(cluster, "alice"))
    listed, me, added, todos, before = alice.run(alice_flow)
    assert "generateImage" in listed, listed
    report = json.loads(text_of(me))
    assert report["downstream"]["audience"] == cluster.todo_api.api_identifier, report
    assert not added.is_error, added
    assert not todos.is_error and "renew the certificate" in text_of(todos), todos
    # The second call needed a refreshed provider token: the vault refreshed it, once.
    assert refreshes() == before + 1, (before, cluster.auth.series("auth_vault_refreshes_total"))
    assert cluster.auth.series('auth_vault_refreshes_total{outcome="ok"}'), "refreshed successfully"

    async def bob_flow(client: Client) -> tuple[list[str], Any]:
        return await names(client), await client.call_tool("listTodos", {})

    bob = SdkClient(cluster, **user(cluster, "bob"))
    listed, todos = bob.run(bob_flow)
    assert "generateImage" not in listed, listed
    assert not todos.is_error and "renew the certificate" not in text_of(todos), todos


def test_an_upstream_refusal_ends_the_sign_in_and_the_client_must_authorize_again(
    oidc_tools_cluster: Cluster,
) -> None:
    """The provider forgets every grant (restarted: its store is in memory), so the vault's next
    refresh gets invalid_grant: the tool says to sign in again, the grant is revoked, and the
    client's next request with its token gets 401."""
    import anyio

    cluster = oidc_tools_cluster
    assert cluster.oidc is not None and cluster.auth is not None and cluster.gateway is not None

    async def sign_in(client: Client) -> Any:
        return await client.call_tool("listTodos", {})

    sdk = SdkClient(cluster, **user(cluster, "alice"))
    assert not sdk.run(sign_in).is_error
    assert sdk.storage.tokens is not None
    token = sdk.storage.tokens.access_token

    cluster.oidc.stop()
    cluster.oidc.start()  # same port and issuer, no grants
    anyio.run(anyio.sleep, 4)  # the provider's token is now due for a refresh

    from mcp_http import stateless_headers, stateless_msg

    msg = stateless_msg("tools/call", {"name": "listTodos", "arguments": {}})
    r = httpx.post(cluster.gateway.mcp_url, json=msg, headers=stateless_headers(token, msg), timeout=30)
    assert r.status_code == 200, r.text
    assert "authorize this client again" in r.text, r.text
    assert cluster.auth.series('auth_vault_refreshes_total{outcome="invalid_grant"}'), "the refusal was seen"

    def refused() -> bool:
        again = httpx.post(cluster.gateway.mcp_url, json=msg, headers=stateless_headers(token, msg), timeout=30)
        return again.status_code == 401

    from harness import retry_until

    retry_until(refused, 15, "the gateway refuses the token of the revoked grant", interval=0.2)
