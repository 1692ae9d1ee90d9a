"""Black-box attack suite (issue 8): each defect as the request sequence an attacker would send
to a real cluster, asserting the safe outcome named in the case's docstring. A case passes when
the attack is refused safely; `conftest.py` prints "attack suite: N cases, M refused safely" at
the end (every test marked `attack`, here and in the other files).

Against the release build of the commit before the fixes (931c494), 26 of the 30 cases here
fail, i.e. the attack works: every defect case of issue 8 except the two controls, the
registered client asking for client_credentials, bob's requests on alice's *live* legacy
session, and a hanging issuer stalling another issuer's tokens (already safe; kept as
regression cases). Reproduce with `CARGO_TARGET_DIR=<dir with release/ of that commit>
.venv/bin/python -m pytest tests/e2e/test_attacks.py`.

Refusal paths that other files already cover (marked `attack` there, not repeated here):
- token failures (missing, garbage, tampered, other key, expired, wrong audience, unknown
  issuer): test_auth.py::test_token_failure_codes; legacy endpoints without a token:
  test_auth.py::test_legacy_endpoints_need_a_token
- another principal on a Streamable HTTP session (use, DELETE), unknown session id:
  test_sessions.py::test_session_bound_to_principal, ::test_other_principal_cannot_delete_session,
  test_bad_input.py::test_unknown_session_id
- body over GATEWAY_MAX_BODY_BYTES, bad Origin, bad Host, malformed JSON:
  test_bad_input.py::test_oversized_body, ::test_bad_origin, ::test_bad_host, ::test_malformed_json
- OAuth: authorization without PKCE or with plain PKCE, unknown client, unregistered redirect,
  wrong resource, bad code verifier, replayed code, bad client secret, consent CSRF, consent from
  another browser, non-loopback http redirect at registration, reuse of a rotated refresh token:
  test_oauth_flow.py (test_authorize_*, test_token_*, test_replayed_code_revokes_the_grant,
  test_consent_*, test_register_rejects_non_loopback_http_redirect,
  test_refresh_reuse_after_grace_revokes_the_grant)
"""

from __future__ import annotations

import json
import queue
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from conftest import _running
from harness import Cluster, Gateway, free_port, prometheus_samples, retry_until, wait_shards_settled
from mcp_http import (
    LEGACY_VERSION,
    SESSIONFUL_VERSION,
    SseReader,
    headers,
    initialize_msg,
    legacy_post,
    open_session,
    random_session_id,
    response_for,
    rpc,
    stateless_headers,
    stateless_msg,
)
from oauth_client import OAuthClient, jwt_claims
from test_auth import json_strings
from test_bad_input import assert_cluster_alive
from test_oauth_flow import REVOCATION_WAIT, error_of, mcp_status, register, user, wait_refused

pytestmark = pytest.mark.attack

HTTP_TIMEOUT = 15.0

# Settings the fixes add. Names as the README's "Security" section gives them.
SESSION_CAP_SETTING = "WORKER_MAX_SESSIONS_PER_PRINCIPAL"
SESSION_CAP = 5
BODY_READ_TIMEOUT_SETTING = "GATEWAY_BODY_READ_TIMEOUT"
BODY_READ_TIMEOUT = 2
UNAUTH_RATE_SETTING = "GATEWAY_UNAUTH_RATE"
UNAUTH_RATE = 30
# The auth-service's registration limit (AUTH_REGISTER_RATE's default).
REGISTER_RATE = 20
# The auth-service's limit on /authorize and /login per address (AUTH_BROWSER_RATE), here.
BROWSER_RATE = 20
# The gateway's clock-skew leeway on `exp` (jwt-verify LEEWAY_SECS).
EXP_LEEWAY = 60
# The gateway's shortest interval between two fetches of one issuer's keys that the TTL
# did not force (gateway/src/auth/jwks.rs MIN_REFRESH_INTERVAL).
JWKS_MIN_REFRESH = 10


# ---------------------------------------------------------------------------------------------
# clusters
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Development issuer (tokens minted and forged with the dev key), two workers, a gateway
    with the default body limit (4 MiB, above NATS's 1 MiB payload limit)."""
    yield from _running(
        Cluster(
            tmp_path_factory.mktemp("attacks"),
            workers=2,
            gateway_env={BODY_READ_TIMEOUT_SETTING: str(BODY_READ_TIMEOUT)},
            worker_env={SESSION_CAP_SETTING: str(SESSION_CAP)},
        )
    )


@pytest.fixture(scope="module")
def limits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The OAuth server behind a gateway with the default registration rate; no workers."""
    yield from _running(
        Cluster(
            tmp_path_factory.mktemp("attacks-limits"),
            workers=0,
            oauth="static",
            auth_env={"AUTH_REGISTER_RATE": str(REGISTER_RATE), "AUTH_BROWSER_RATE": str(BROWSER_RATE)},
            # The gateway's own per-IP limit stays out of the way: this cluster tests the
            # auth-service's registration limit behind the gateway.
            gateway_env={UNAUTH_RATE_SETTING: "100000"},
        )
    )


def someone(name: str = "alice") -> str:
    """A subject of its own for one test (caps and limits are per principal)."""
    return f"{name}-{secrets.token_hex(4)}"


def gateway_of(c: Cluster) -> Gateway:
    assert c.gateway is not None
    return c.gateway


def tool_call(name: str, arguments: dict[str, Any], id: int) -> dict[str, Any]:
    return rpc("tools/call", {"name": name, "arguments": arguments}, id)


def who_am_i_on(client: httpx.Client, c: Cluster, token: str, session: str, id: int) -> httpx.Response:
    return client.post(
        gateway_of(c).mcp_url,
        json=tool_call("whoAmI", {}, id),
        headers=headers(token, session=session, version=SESSIONFUL_VERSION),
    )


def who_am_i_result(resp: httpx.Response, id: int) -> dict[str, Any]:
    assert resp.status_code == 200, f"{resp.status_code} {resp.text[:300]}"
    result = response_for(resp, id)["result"]
    assert not result.get("isError"), result
    return json.loads(result["content"][0]["text"])


# ---------------------------------------------------------------------------------------------
# 1. Anonymous access through self-registration
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_post", "client_secret_basic"])
def test_dcr_client_credentials_client_is_refused(oauth_cluster: Cluster, method: str) -> None:
    """Attacker: register a client_credentials client anonymously, take a token for it from
    /token, call `add` on the gateway. Safe: the registration is refused (400
    invalid_client_metadata), so there is no token and no MCP access."""
    body = {
        "client_name": "anonymous machine",
        "grant_types": ["client_credentials"],
        "token_endpoint_auth_method": method,
    }
    r = OAuthClient.register_raw(oauth_cluster.issuer, body)
    if r.status_code == 201:
        reg = r.json()
        auth = httpx.BasicAuth(reg["client_id"], reg.get("client_secret", ""))
        form = {"grant_type": "client_credentials", "resource": gateway_of(oauth_cluster).resource}
        if method == "client_secret_post":
            form |= {"client_id": reg["client_id"], "client_secret": reg.get("client_secret", "")}
        tok = httpx.post(
            f"{oauth_cluster.issuer}/token", data=form, auth=auth if method == "client_secret_basic" else None,
            timeout=HTTP_TIMEOUT,
        )
        mcp = "no token"
        if tok.status_code == 200:
            msg = stateless_msg("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})
            call = httpx.post(
                gateway_of(oauth_cluster).mcp_url, json=msg,
                headers=stateless_headers(tok.json()["access_token"], msg), timeout=HTTP_TIMEOUT,
            )
            mcp = f"{call.status_code} {call.text[:200]}"
        pytest.fail(
            f"anonymous DCR registered a client_credentials client ({method}); /token answered "
            f"{tok.status_code}; MCP tools/call add with that token: {mcp}"
        )
    assert r.status_code == 400 and error_of(r) == "invalid_client_metadata", f"{r.status_code} {r.text}"


def test_dcr_user_client_cannot_use_client_credentials(oauth_cluster: Cluster) -> None:
    """Attacker: register an ordinary confidential client (authorization_code), then ask /token
    for grant_type=client_credentials. Safe: no token (400 unauthorized_client or
    unsupported_grant_type / invalid_grant)."""
    client = register(oauth_cluster, auth_method="client_secret_basic")
    r = client.token_raw({"grant_type": "client_credentials", "resource": gateway_of(oauth_cluster).resource})
    assert r.status_code in (400, 401), f"{r.status_code} {r.text}"
    assert "access_token" not in r.text, r.text


# ---------------------------------------------------------------------------------------------
# 2. Session takeover through the legacy transport
# ---------------------------------------------------------------------------------------------


def legacy_initialize(id: int = 1) -> dict[str, Any]:
    return initialize_msg(id, version=LEGACY_VERSION)


def legacy_handshake(client: httpx.Client, c: Cluster, stream: SseReader, endpoint: str, token: str) -> None:
    """initialize + notifications/initialized on a legacy session; the answer on the stream."""
    base = gateway_of(c).base_url
    r = legacy_post(client, base, endpoint, token, legacy_initialize(1))
    assert r.status_code == 202, f"owner's initialize: {r.status_code} {r.text}"
    m = stream.message(timeout=15)
    assert m.get("id") == 1 and "result" in m, m
    r = legacy_post(client, base, endpoint, token, rpc("notifications/initialized", id=None))
    assert r.status_code == 202, f"notifications/initialized: {r.status_code} {r.text}"


def assert_owner_served(client: httpx.Client, c: Cluster, stream: SseReader, endpoint: str, token: str,
                        id: int, intruder_ids: set[int]) -> None:
    """The owner's tools/list is accepted and answered on the owner's stream, and nothing the
    intruder sent (by JSON-RPC id) arrived on that stream before it."""
    r = legacy_post(client, gateway_of(c).base_url, endpoint, token, rpc("tools/list", {}, id))
    assert r.status_code == 202, f"owner's request on its own session: {r.status_code} {r.text}"
    deadline = time.monotonic() + 15
    while True:
        m = stream.message(timeout=max(0.1, deadline - time.monotonic()))
        assert m.get("id") not in intruder_ids, f"the owner's stream received the intruder's message: {m}"
        if m.get("id") == id:
            assert "result" in m, m
            return


def test_legacy_messages_to_an_unminted_session_id(dev: Cluster) -> None:
    """Attacker (bob): POST /messages?sessionId=<an id /sse never minted> with initialize.
    Safe: 404 (or 400); no session is opened under an id the gateway did not mint."""
    bob = dev.mint(someone("bob"))
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        for sid in (random_session_id(), secrets.token_hex(16)):
            r = legacy_post(client, gateway_of(dev).base_url, f"/messages?sessionId={sid}", bob, legacy_initialize(7))
            assert r.status_code in (400, 404), f"initialize under an unminted id {sid}: {r.status_code} {r.text}"


def test_legacy_initialize_on_someone_elses_fresh_sse_session(dev: Cluster) -> None:
    """Alice opens /sse (her id from the `endpoint` event) and has not initialized yet; bob
    POSTs initialize to /messages?sessionId=<alice's id>. Safe: 404; alice's stream receives
    nothing of bob's; alice's own initialize then works on her session."""
    alice, bob = dev.mint(someone("alice")), dev.mint(someone("bob"))
    with SseReader(gateway_of(dev).sse_url, alice) as stream, httpx.Client(timeout=HTTP_TIMEOUT) as client:
        assert stream.status == 200
        endpoint = stream.endpoint()
        r = legacy_post(client, gateway_of(dev).base_url, endpoint, bob, legacy_initialize(77))
        assert r.status_code in (400, 404), f"bob initialized alice's session: {r.status_code} {r.text}"
        r = legacy_post(client, gateway_of(dev).base_url, endpoint, alice, legacy_initialize(1))
        assert r.status_code == 202, f"alice's initialize after bob's attempt: {r.status_code} {r.text}"
        m = stream.message(timeout=15)
        assert m.get("id") == 1 and "result" in m, f"alice's stream got {m} instead of her initialize result"
        r = legacy_post(client, gateway_of(dev).base_url, endpoint, alice, rpc("notifications/initialized", id=None))
        assert r.status_code == 202
        assert_owner_served(client, dev, stream, endpoint, alice, 2, {77})


def test_legacy_initialize_on_someone_elses_live_session(dev: Cluster) -> None:
    """Alice's legacy session is open and initialized; bob POSTs initialize and tools/list to
    her id. Safe: both refused (404 or 400), alice's stream receives nothing of bob's, and
    alice's next request still works."""
    alice, bob = dev.mint(someone("alice")), dev.mint(someone("bob"))
    base = gateway_of(dev).base_url
    with SseReader(gateway_of(dev).sse_url, alice) as stream, httpx.Client(timeout=HTTP_TIMEOUT) as client:
        endpoint = stream.endpoint()
        legacy_handshake(client, dev, stream, endpoint, alice)
        r = legacy_post(client, base, endpoint, bob, legacy_initialize(77))
        assert r.status_code in (400, 404), f"bob's initialize on alice's session: {r.status_code} {r.text}"
        r = legacy_post(client, base, endpoint, bob, rpc("tools/list", {}, 78))
        assert r.status_code == 404, f"bob's request on alice's session: {r.status_code} {r.text}"
        assert_owner_served(client, dev, stream, endpoint, alice, 2, {77, 78})


def test_legacy_takeover_after_the_workers_restart(dev: Cluster) -> None:
    """Alice's legacy session is open; every worker restarts (no worker holds her actor any
    more, her record is in KV); bob POSTs initialize to her id. Safe: bob refused (404 or
    400), the stored record is not overwritten: alice's next request on her still-open stream
    works and bob's answer never reaches it."""
    alice, bob = dev.mint(someone("alice")), dev.mint(someone("bob"))
    base = gateway_of(dev).base_url
    with SseReader(gateway_of(dev).sse_url, alice) as stream, httpx.Client(timeout=HTTP_TIMEOUT) as client:
        endpoint = stream.endpoint()
        legacy_handshake(client, dev, stream, endpoint, alice)
        for w in dev.workers:
            w.stop()
        for w in dev.workers:
            w.start(wait=False)
        for w in dev.workers:
            w.wait_ready()
        wait_shards_settled(dev.workers)
        r = legacy_post(client, base, endpoint, bob, legacy_initialize(77))
        assert r.status_code in (400, 404), f"bob re-opened alice's session after a restart: {r.status_code} {r.text}"
        assert_owner_served(client, dev, stream, endpoint, alice, 2, {77})


# ---------------------------------------------------------------------------------------------
# 3. A session's rights frozen at initialize
# ---------------------------------------------------------------------------------------------


def test_session_refuses_another_client_of_the_same_user(dev: Cluster) -> None:
    """A session opened by (issuer, alice, client dev-cli); a request on it with a valid token
    of alice for another client. Safe: 404 (the session is bound to issuer, subject and client)."""
    sub = someone("alice")
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        session = open_session(client, gateway_of(dev).mcp_url, dev.mint(sub))
        other = dev.sign(sub, client_id="another-client")
        assert mcp_status(dev, other) == 200, "control: the other client's token itself is valid"
        r = client.post(
            gateway_of(dev).mcp_url, json=rpc("tools/list", {}, 2),
            headers=headers(other, session=session, version=SESSIONFUL_VERSION),
        )
        assert r.status_code == 404, f"another client used the session: {r.status_code} {r.text[:300]}"


def test_each_request_runs_with_its_own_tokens_rights(dev: Cluster) -> None:
    """A session opened with a token with scope `mcp` and no permissions; then requests with
    other tokens of the same user and client. Safe: `whoAmI` reports each request's own
    token: wider rights (scope `mcp extra`, permission image_generation), then narrower ones
    (no scope), never the rights frozen at initialize."""
    sub = someone("alice")
    opening = dev.mint(sub, scope="mcp")
    wider = dev.mint(sub, scope="mcp extra", permission="image_generation")
    narrower = dev.mint(sub)
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        session = open_session(client, gateway_of(dev).mcp_url, opening)
        first = who_am_i_result(who_am_i_on(client, dev, opening, session, 2), 2)
        assert first["scopes"] == ["mcp"] and first["permissions"] == [], first
        seen = who_am_i_result(who_am_i_on(client, dev, wider, session, 3), 3)
        assert sorted(seen["scopes"]) == ["extra", "mcp"], f"scopes of the request's token: {seen}"
        assert seen["permissions"] == ["image_generation"], f"permissions of the request's token: {seen}"
        seen = who_am_i_result(who_am_i_on(client, dev, narrower, session, 4), 4)
        assert seen["scopes"] == [] and seen["permissions"] == [], f"a narrower token kept old rights: {seen}"


def short_lived_token(c: Cluster, sub: str, seconds: int = 5) -> tuple[str, float]:
    """A token the gateway accepts for about `seconds` more seconds, and when that ends
    (monotonic): `exp` already in the past but within the gateway's leeway."""
    token = c.mint(sub, ttl=seconds - EXP_LEEWAY)
    return token, time.monotonic() + seconds


def test_sse_stream_ends_when_its_token_expires(dev: Cluster) -> None:
    """GET /sse with a token that runs out in a few seconds; nothing else is sent. Safe: the
    server ends the stream within 10 s of the token's end (the stream does not outlive it)."""
    token, ends = short_lived_token(dev, someone("alice"))
    with SseReader(gateway_of(dev).sse_url, token) as stream:
        assert stream.status == 200, stream.status
        stream.endpoint()
        closed = stream.wait_closed(max(0.0, ends - time.monotonic()) + 10)
        assert closed, "the /sse stream is still open 10 s after its token expired"


def test_mcp_get_stream_ends_when_its_token_expires(dev: Cluster) -> None:
    """GET /mcp (the session's stream) with a token that runs out in a few seconds. Safe: the
    server ends the stream within 10 s of the token's end."""
    token, ends = short_lived_token(dev, someone("alice"))
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        session = open_session(client, gateway_of(dev).mcp_url, token)
    with SseReader(
        gateway_of(dev).mcp_url, token,
        headers={"Mcp-Session-Id": session, "MCP-Protocol-Version": SESSIONFUL_VERSION},
    ) as stream:
        assert stream.status == 200, stream.status
        closed = stream.wait_closed(max(0.0, ends - time.monotonic()) + 10)
        assert closed, "the GET /mcp stream is still open 10 s after its token expired"


def test_sse_stream_ends_when_its_grant_is_revoked(oauth_cluster: Cluster) -> None:
    """A real OAuth login; GET /sse with the access token; the client revokes the grant (its
    refresh token at /revoke). Safe: the gateway ends the open stream once it learns of the
    revocation (within REVOCATION_WAIT + 5 s)."""
    client = register(oauth_cluster)
    tokens = client.login(gateway_of(oauth_cluster).resource, **user(oauth_cluster))
    with SseReader(gateway_of(oauth_cluster).sse_url, tokens["access_token"]) as stream:
        assert stream.status == 200, stream.status
        stream.endpoint()
        r = client.revoke(tokens["refresh_token"], "refresh_token")
        assert r.status_code == 200, r.text
        wait_refused(oauth_cluster, tokens["access_token"], "the access token of the revoked grant")
        assert stream.wait_closed(5), "the /sse stream of a revoked grant is still open"


# ---------------------------------------------------------------------------------------------
# 4. Grant DoS with a forged refresh token
# ---------------------------------------------------------------------------------------------


def forged(prefix: str) -> str:
    return f"{prefix}.{secrets.token_urlsafe(32)}"


def test_forged_refresh_token_with_the_grant_id_changes_nothing(oauth_cluster: Cluster) -> None:
    """Attacker knows alice's grant id (the refresh token's prefix before the `.`) and sends
    grant_type=refresh_token with `<grant id>.<garbage>`. Safe: invalid_grant, and alice's
    real refresh token still works afterwards (the grant is not revoked)."""
    resource = gateway_of(oauth_cluster).resource
    client = register(oauth_cluster)
    tokens = client.login(resource, **user(oauth_cluster))
    prefix = tokens["refresh_token"].split(".")[0]
    attacker = register(oauth_cluster)
    for who in (client, attacker):
        r = who.refresh(forged(prefix), resource)
        assert r.status_code == 400 and error_of(r) == "invalid_grant", f"{r.status_code} {r.text}"
    real = client.refresh(tokens["refresh_token"], resource)
    assert real.status_code == 200, f"a forged refresh token revoked the grant: {real.status_code} {real.text}"
    assert mcp_status(oauth_cluster, real.json()["access_token"]) == 200


def test_access_token_does_not_address_the_grant(oauth_cluster: Cluster) -> None:
    """Attacker holds one of alice's access tokens (e.g. from a log) and forges
    `<identifier>.<garbage>` refresh tokens from every string claim in it. Safe: no claim is
    the refresh token's grant prefix, every forgery is invalid_grant, and the real refresh
    token still works afterwards."""
    resource = gateway_of(oauth_cluster).resource
    client = register(oauth_cluster)
    tokens = client.login(resource, **user(oauth_cluster))
    prefix = tokens["refresh_token"].split(".")[0]
    claims = jwt_claims(tokens["access_token"])
    values = {k: v for k, v in claims.items() if isinstance(v, str)}
    carrying = sorted(k for k, v in values.items() if v == prefix)
    for value in values.values():
        r = client.refresh(forged(value), resource)
        assert r.status_code == 400 and error_of(r) == "invalid_grant", f"{r.status_code} {r.text}"
    real = client.refresh(tokens["refresh_token"], resource)
    assert real.status_code == 200, (
        f"refresh tokens forged from the access token's claims revoked the grant: {real.status_code} {real.text}"
    )
    assert not carrying, f"access token claims {carrying} carry the refresh token's grant prefix"


# ---------------------------------------------------------------------------------------------
# 5. RFC 9068 typ
# ---------------------------------------------------------------------------------------------


def test_signed_token_with_at_jwt_typ_is_accepted(dev: Cluster) -> None:
    """Control for the typ cases: a token from the same signer with typ at+jwt is served, so a
    refusal below is about `typ` alone."""
    assert mcp_status(dev, dev.sign(someone("alice"))) == 200


@pytest.mark.parametrize("typ", ["JWT", None, "jwt"])
def test_access_token_without_at_jwt_typ_is_refused(dev: Cluster, typ: str | None) -> None:
    """A token signed with the issuer's real key whose header says `typ: JWT` (an ID token
    shape) or no typ. Safe: 401 INVALID_TOKEN."""
    token = dev.sign(someone("alice"), header={"typ": typ} if typ is not None else {"typ": None})
    msg = stateless_msg("tools/list")
    r = httpx.post(gateway_of(dev).mcp_url, json=msg, headers=stateless_headers(token, msg), timeout=HTTP_TIMEOUT)
    assert r.status_code == 401, f"typ={typ!r}: {r.status_code} {r.text[:300]}"
    assert "INVALID_TOKEN" in json_strings(r.json()), r.text


# ---------------------------------------------------------------------------------------------
# 6. JWKS stalls
# ---------------------------------------------------------------------------------------------


class FakeIssuer:
    """A loopback issuer that serves discovery and a copy of another issuer's JWKS, and that
    can be told to hang: accept every request and never answer (until stopped)."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.hang = threading.Event()
        self.stopping = threading.Event()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                if outer.hang.is_set():
                    outer.stopping.wait(60)
                    return
                if self.path.startswith("/.well-known/"):
                    body = {"issuer": outer.url, "jwks_uri": f"{outer.url}/jwks.json"}
                elif self.path == "/jwks.json":
                    body = outer.jwks
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stalling(dev: Cluster, tmp_path: Any) -> Iterator[tuple[FakeIssuer, Gateway]]:
    """A fake issuer publishing the dev key, and a second gateway of the dev cluster that
    accepts it and the dev issuer, with a 1 s JWKS cache."""
    assert dev.auth is not None and dev.nats is not None
    jwks = httpx.get(f"{dev.auth.url}/jwks.json", timeout=HTTP_TIMEOUT).json()
    fake = FakeIssuer(jwks)
    gw = Gateway(tmp_path, dev.nats.url, [dev.auth.issuer, fake.url], name="gateway-jwks",
                 env={"JWKS_CACHE_TTL": "1"})
    try:
        gw.start()
        yield fake, gw
    finally:
        gw.stop()
        fake.stop()


def timed_status(url: str, token: str, timeout: float = 30.0) -> tuple[int, float]:
    msg = stateless_msg("tools/list")
    t0 = time.monotonic()
    try:
        r = httpx.post(url, json=msg, headers=stateless_headers(token, msg), timeout=timeout)
        return r.status_code, time.monotonic() - t0
    except httpx.TimeoutException:
        return 0, time.monotonic() - t0


def test_expired_jwks_cache_with_a_hanging_issuer_serves_stale_keys(dev: Cluster,
                                                                    stalling: tuple[FakeIssuer, Gateway]) -> None:
    """The issuer's keys are cached (1 s TTL), then the issuer hangs and the cache expires,
    and so does the refetch interval (a refetch is due). Safe: a token signed with a cached key
    is still answered at once (under 2 s) — stale keys are served while the gateway
    revalidates in the background."""
    fake, gw = stalling
    token = dev.sign(someone("alice"), iss=fake.url, aud=gw.resource, ttl=600)
    assert timed_status(gw.mcp_url, token)[0] == 200, "control: the fake issuer's token is accepted"
    fake.hang.set()
    # The configured JWKS_CACHE_TTL and the refetch interval run out (fixed periods of the
    # gateway's, not a readiness guess).
    time.sleep(JWKS_MIN_REFRESH + 1)
    status, took = timed_status(gw.mcp_url, token)
    assert status == 200 and took < 2.0, f"with the issuer hanging: {status} after {took:.1f}s"


def test_hanging_issuer_does_not_stall_another_issuers_tokens(dev: Cluster,
                                                              stalling: tuple[FakeIssuer, Gateway]) -> None:
    """One allowed issuer hangs before the gateway ever got its keys; a token for it is in
    flight. Safe: a token of the other (working) issuer is answered at once (under 2 s)."""
    fake, gw = stalling
    fake.hang.set()
    stuck = dev.sign(someone("mallory"), iss=fake.url, aud=gw.resource)
    good = dev.mint(someone("alice"), audience=gw.resource)
    waiting = threading.Thread(target=timed_status, args=(gw.mcp_url, stuck, 20.0), daemon=True)
    waiting.start()
    time.sleep(0.2)  # let the stuck request reach the gateway first (ordering, not readiness)
    status, took = timed_status(gw.mcp_url, good)
    assert status == 200 and took < 2.0, f"the working issuer's token: {status} after {took:.1f}s"


# ---------------------------------------------------------------------------------------------
# 7. Unbounded inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["stateless", "session"])
def test_body_between_nats_limit_and_body_limit_is_413(dev: Cluster, transport: str) -> None:
    """A 2 MiB valid JSON-RPC tools/call: below GATEWAY_MAX_BODY_BYTES (4 MiB) but above the
    NATS payload limit (1 MiB). Safe: 413, not 500; the cluster keeps serving."""
    token = dev.mint(someone("alice"))
    pad = "x" * (2 * 1024 * 1024)
    with httpx.Client(timeout=30) as client:
        if transport == "stateless":
            msg = stateless_msg("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}, "_meta": {"pad": pad}})
            r = client.post(gateway_of(dev).mcp_url, json=msg, headers=stateless_headers(token, msg))
        else:
            session = open_session(client, gateway_of(dev).mcp_url, token)
            msg = rpc("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}, "_meta": {"pad": pad}}, 2)
            r = client.post(gateway_of(dev).mcp_url, json=msg,
                            headers=headers(token, session=session, version=SESSIONFUL_VERSION))
    assert r.status_code == 413, f"{r.status_code} {r.text[:300]}"
    assert_cluster_alive(dev)


def test_registration_rate_limit_ignores_client_x_forwarded_for(limits: Cluster) -> None:
    """Attacker sends 25 POST /register to the public origin, each with a different made-up
    X-Forwarded-For. Safe: the per-address registration limit (20/min) still applies: a 429
    comes before the 25th."""
    endpoint = f"{gateway_of(limits).base_url}/register"
    statuses = []
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        for i in range(REGISTER_RATE + 5):
            body = {
                "client_name": f"spoofer {i}",
                "redirect_uris": [f"http://127.0.0.1:{free_port()}/callback"],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            }
            fake_ip = f"203.0.113.{i + 1}"
            r = client.post(endpoint, json=body, headers={"X-Forwarded-For": fake_ip})
            statuses.append(r.status_code)
            if r.status_code == 429:
                break
    assert 429 in statuses, f"no 429 in {len(statuses)} registrations with spoofed X-Forwarded-For: {statuses}"
    assert all(s in (201, 429) for s in statuses), statuses


@pytest.mark.parametrize("path", ["/authorize?client_id=nobody", "/login?tx=nothing"])
def test_browser_endpoint_flood_is_rate_limited(limits: Cluster, path: str) -> None:
    """Attacker floods /authorize or /login from one address (each a new login transaction
    or password try), with a made-up X-Forwarded-For on every request. Safe: after
    AUTH_BROWSER_RATE (20/min here) requests the auth-service answers 429 with Retry-After."""
    url = f"{gateway_of(limits).base_url}{path}"
    statuses = []
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        for i in range(BROWSER_RATE * 2 + 5):
            r = client.get(url, headers={"X-Forwarded-For": f"203.0.113.{i + 1}"})
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1, r.headers
                break
    assert 429 in statuses, f"{len(statuses)} requests to {path}, none limited: {set(statuses)}"


def test_live_sessions_per_principal_are_capped(dev: Cluster) -> None:
    """One token opens session after session and never closes any. Safe: once the principal
    holds the configured number of live sessions (SESSION_CAP), initialize is refused (429 or
    403), and another principal can still open one."""
    token = dev.mint(someone("hoarder"))
    opened, refused = 0, None
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        for _ in range(SESSION_CAP * 4):
            r = client.post(gateway_of(dev).mcp_url, json=initialize_msg(), headers=headers(token))
            if r.status_code == 200:
                opened += 1
                continue
            refused = r
            break
        assert refused is not None, f"{opened} live sessions for one principal, none refused"
        assert refused.status_code in (429, 403), f"after {opened}: {refused.status_code} {refused.text[:300]}"
        assert opened >= 1, "the first session was refused"
        open_session(client, gateway_of(dev).mcp_url, dev.mint(someone("other")))


def test_slow_request_body_is_cut_off(dev: Cluster) -> None:
    """Slowloris: a POST /mcp with a valid token announces a 4 KiB body and sends it one byte
    every 0.2 s. Safe: the gateway gives up on the body within GATEWAY_BODY_READ_TIMEOUT (2 s
    here) plus slack — it answers 408/4xx or closes the connection before 10 s; it never
    answers 2xx."""
    gw = gateway_of(dev)
    token = dev.mint(someone("slow"))
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
        f"Content-Length: 4096\r\n\r\n"
    ).encode()
    deadline = time.monotonic() + BODY_READ_TIMEOUT + 8
    answer = b""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(head + b"{")
        s.settimeout(0.2)
        cut = False
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
                answer += chunk
                cut = True  # an answer, or EOF (b"")
                if not chunk or b"\r\n\r\n" in answer:
                    break
            except socket.timeout:
                pass
            except OSError:
                cut = True
                break
            try:
                s.send(b" ")
            except OSError:
                cut = True
                break
    assert cut, f"the gateway kept reading a byte-by-byte body for {BODY_READ_TIMEOUT + 8} s"
    status_line = answer.split(b"\r\n", 1)[0]
    assert not status_line.startswith(b"HTTP/1.1 2"), f"a slowloris body was served: {status_line!r}"


def test_unauthenticated_flood_is_rate_limited(dev: Cluster, tmp_path: Any) -> None:
    """Attacker floods the gateway with requests without a token from one address. Safe: after
    the per-IP limit on unauthenticated requests (GATEWAY_UNAUTH_RATE, 30/min here) the gateway
    answers 429; a request with a valid token from the same address is still served."""
    assert dev.auth is not None and dev.nats is not None
    gw = Gateway(tmp_path, dev.nats.url, [dev.auth.issuer], name="gateway-flood",
                 env={UNAUTH_RATE_SETTING: str(UNAUTH_RATE)})
    gw.start()
    try:
        statuses = []
        with httpx.Client(timeout=HTTP_TIMEOUT) as client:
            for _ in range(UNAUTH_RATE * 5):
                r = client.post(gw.mcp_url, json=initialize_msg(), headers=headers(None))
                statuses.append(r.status_code)
                if r.status_code == 429:
                    break
        assert 429 in statuses, f"{len(statuses)} unauthenticated requests, none limited: {set(statuses)}"
        assert timed_status(gw.mcp_url, dev.mint(someone("alice"), audience=gw.resource))[0] == 200
    finally:
        gw.stop()


def open_sse_streams(gw: Gateway) -> float:
    """The gateway's open SSE streams (all kinds), from its /metrics."""
    text = httpx.get(f"{gw.admin_url}/metrics", timeout=HTTP_TIMEOUT).text
    return prometheus_samples(text).get("mcp_gateway_sse_streams", 0.0)


SLOW_READER_TIMEOUT = 3


def test_sse_client_that_stops_reading_is_disconnected(dev: Cluster, tmp_path: Any) -> None:
    """Attacker opens GET /sse with a 4 KiB receive buffer, never reads it again, and makes
    the server write to it: 600 tools/list requests on /messages, whose answers go to that
    stream. Safe: the gateway holds at most GATEWAY_SSE_BUFFER_BYTES for it, ends the stream
    and closes the connection (its open-stream gauge is back where it was) within
    GATEWAY_SLOW_READER_TIMEOUT (3 s here) plus slack, and keeps serving."""
    assert dev.auth is not None and dev.nats is not None
    gw = Gateway(tmp_path, dev.nats.url, [dev.auth.issuer], name="gateway-slow-reader",
                 env={"GATEWAY_SLOW_READER_TIMEOUT": str(SLOW_READER_TIMEOUT),
                      "GATEWAY_SSE_BUFFER_BYTES": "65536"})
    gw.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        token = dev.mint(someone("stalled"), audience=gw.resource)
        before = open_sse_streams(gw)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", gw.port))
        sock.sendall(
            f"GET /sse HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nAuthorization: Bearer {token}\r\n"
            f"Accept: text/event-stream\r\n\r\n".encode()
        )
        seen = b""
        while b"sessionId=" not in seen or not seen.split(b"sessionId=", 1)[1].split(b"\n", 1)[1:]:
            chunk = sock.recv(1024)
            assert chunk, f"the gateway closed the new /sse stream: {seen!r}"
            seen += chunk
        assert seen.startswith(b"HTTP/1.1 200"), seen[:200]
        endpoint = "/messages?sessionId=" + seen.split(b"sessionId=", 1)[1].split(b"\n", 1)[0].decode().strip()
        retry_until(lambda: open_sse_streams(gw) == before + 1, 10, "the stream counted")
        accepted = 0
        with httpx.Client(timeout=HTTP_TIMEOUT) as client:
            r = legacy_post(client, gw.base_url, endpoint, token, legacy_initialize(1))
            assert r.status_code == 202, f"{r.status_code} {r.text}"
            legacy_post(client, gw.base_url, endpoint, token, rpc("notifications/initialized", id=None))
            for i in range(600):
                r = legacy_post(client, gw.base_url, endpoint, token, rpc("tools/list", {}, 100 + i))
                if r.status_code != 202:
                    break
                accepted += 1
        # The attacker's socket is never read again.
        retry_until(lambda: open_sse_streams(gw) <= before, SLOW_READER_TIMEOUT + 20,
                    f"the stalled stream closed ({accepted} answers sent to it)")
        assert timed_status(gw.mcp_url, dev.mint(someone("alice"), audience=gw.resource))[0] == 200
    finally:
        sock.close()
        gw.stop()


# ---------------------------------------------------------------------------------------------
# 9. Introspection by a self-registered client
# ---------------------------------------------------------------------------------------------


def test_self_registered_confidential_client_cannot_introspect(oauth_cluster: Cluster) -> None:
    """Attacker registers a confidential client through DCR (authorization_code,
    client_secret_basic) and POSTs alice's access token to /introspect with its credentials.
    Safe: refused (401 invalid_client or 403); nothing about the token is revealed."""
    alice_client = register(oauth_cluster)
    tokens = alice_client.login(gateway_of(oauth_cluster).resource, **user(oauth_cluster))
    attacker = register(oauth_cluster, auth_method="client_secret_basic")
    assert attacker.client_secret
    r = httpx.post(
        attacker.meta["introspection_endpoint"] if "introspection_endpoint" in attacker.meta
        else f"{oauth_cluster.issuer}/introspect",
        data={"token": tokens["access_token"]},
        auth=httpx.BasicAuth(attacker.client_id, attacker.client_secret),
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code in (401, 403), f"introspection by a DCR client: {r.status_code} {r.text[:300]}"
    assert jwt_claims(tokens["access_token"])["sub"] not in r.text, r.text
