"""The OAuth server end to end: the auth-service behind the gateway (one origin is both the MCP
resource and the issuer), users logging in with the static-users provider or at a real upstream
OpenID provider (npm `oidc-provider`), driven by the Python `mcp` SDK's OAuth client with a
headless browser, and by plain HTTP for each way a request must be refused.

Contract: auth-service/README.md (endpoints, pages, cookies); DESIGN.md section 5.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import httpx2
import pytest
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from conftest import OAUTH_REFRESH_GRACE
from harness import Cluster, retry_until
from mcp_http import stateless_headers, stateless_msg
from oauth_browser import Browser, Callback, Page
from oauth_client import OAuthClient, jwt_claims, pkce_pair

# Seconds one whole SDK flow may take (login pages included); a hang fails instead of blocking CI.
FLOW_TIMEOUT = 90
# Seconds a revocation may take to reach the gateway (NATS KV watch) before a test fails.
REVOCATION_WAIT = 15
HTTP_TIMEOUT = 15.0


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def gw(cluster: Cluster) -> Any:
    assert cluster.gateway is not None
    return cluster.gateway


def mcp_status(cluster: Cluster, token: str) -> int:
    """Status of a stateless `tools/list` at the gateway with this bearer token."""
    msg = stateless_msg("tools/list")
    r = httpx.post(gw(cluster).mcp_url, json=msg, headers=stateless_headers(token, msg), timeout=HTTP_TIMEOUT)
    return r.status_code


def wait_refused(cluster: Cluster, token: str, what: str) -> None:
    """The gateway answers 401 to this token within REVOCATION_WAIT seconds."""
    retry_until(lambda: mcp_status(cluster, token) == 401, REVOCATION_WAIT, f"gateway refuses {what}", interval=0.2)


def user(cluster: Cluster, name: str = "alice") -> dict[str, str]:
    return {"username": name, "password": cluster.passwords()[name]}


def register(cluster: Cluster, **kw: Any) -> OAuthClient:
    return OAuthClient.register(cluster.issuer, **kw)


def error_of(r: httpx.Response) -> str | None:
    try:
        return r.json().get("error")
    except ValueError:
        return None


def redirect_params(r: httpx.Response, redirect_uri: str) -> dict[str, str]:
    """The query of a redirect to the client's redirect URI; fails if `r` is not one."""
    assert r.status_code in (302, 303), f"expected a redirect to the client, got {r.status_code}: {r.text[:300]}"
    location = r.headers.get("location", "")
    assert location.startswith(redirect_uri), f"redirect to {location!r}, not to {redirect_uri!r}"
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query, keep_blank_values=True).items()}


def assert_error_page(r: httpx.Response, status: int | tuple[int, ...]) -> None:
    """An HTML error page (README: message in #error), not a redirect."""
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, f"expected {statuses}, got {r.status_code} {r.headers.get('location')} {r.text[:300]}"
    assert "location" not in r.headers, f"error answered with a redirect to {r.headers['location']}"
    assert 'id="error"' in r.text, r.text[:500]


def until_consent(browser: Browser, url: str, cluster: Cluster) -> Page:
    """Open an authorization URL and log in where asked, until the consent page."""
    step = browser.get(url)
    for _ in range(6):
        assert isinstance(step, Page), f"reached the callback before any consent page: {step}"
        if step.has_form("consent"):
            return step
        step = browser.act(step, consent="approve", **user(cluster))
    raise AssertionError(f"no consent page; history {browser.history}")


# ---------------------------------------------------------------------------------------------
# The Python SDK's OAuth client, headless
# ---------------------------------------------------------------------------------------------


class MemoryStorage:
    """mcp.client.auth.TokenStorage in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class Wire:
    """httpx2 event hooks: every request the SDK sent (auth-flow ones included) and its status."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, bytes, int | None]] = []

    async def on_request(self, request: httpx2.Request) -> None:
        body = request.content if request.method == "POST" else b""
        self.log.append((request.method, str(request.url), body, None))

    async def on_response(self, response: httpx2.Response) -> None:
        req = response.request
        for i in range(len(self.log) - 1, -1, -1):
            m, u, b, s = self.log[i]
            if s is None and m == req.method and u == str(req.url):
                self.log[i] = (m, u, b, response.status_code)
                break

    def paths(self) -> list[tuple[str, str, int | None]]:
        return [(m, urlsplit(u).path, s) for m, u, _, s in self.log]


class SdkClient:
    """OAuthClientProvider whose redirect/callback handlers are the headless browser."""

    def __init__(self, cluster: Cluster, username: str, password: str) -> None:
        self.cluster = cluster
        self.redirect_uri = f"http://127.0.0.1:{secrets.randbelow(20000) + 30000}/callback"
        self.browser = Browser(stop_at=self.redirect_uri)
        self.storage = MemoryStorage()
        self.wire = Wire()
        self.authorize_urls: list[str] = []
        self.callbacks: list[Callback] = []
        self.username, self.password = username, password
        self.provider = OAuthClientProvider(
            server_url=gw(cluster).mcp_url,
            client_metadata=OAuthClientMetadata(
                client_name="mcp-cluster e2e (python sdk)",
                redirect_uris=[self.redirect_uri],  # type: ignore[list-item]
                grant_types=["authorization_code", "refresh_token"],
                response_types=["code"],
                token_endpoint_auth_method="none",
            ),
            storage=self.storage,
            redirect_handler=self._redirect,
            callback_handler=self._callback,
        )

    async def _redirect(self, url: str) -> None:
        self.authorize_urls.append(url)

    async def _callback(self) -> AuthorizationCodeResult:
        url = self.authorize_urls[-1]
        cb = await anyio.to_thread.run_sync(
            lambda: self.browser.authorize(url, username=self.username, password=self.password)
        )
        self.callbacks.append(cb)
        assert cb.code, f"authorization ended without a code: {cb.url}"
        return AuthorizationCodeResult(code=cb.code, state=cb.state, iss=cb.iss)

    def http(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            auth=self.provider,
            timeout=httpx2.Timeout(30.0, read=60.0),
            event_hooks={"request": [self.wire.on_request], "response": [self.wire.on_response]},
        )

    def run(self, flow: Callable[[Client], Awaitable[Any]]) -> Any:
        async def bounded() -> Any:
            with anyio.fail_after(FLOW_TIMEOUT):
                async with self.http() as http:
                    async with Client(streamable_http_client(gw(self.cluster).mcp_url, http_client=http)) as client:
                        return await flow(client)

        try:
            return anyio.run(bounded)
        finally:
            self.browser.close()


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def add(client: Client, a: int, b: int) -> str:
    result = await client.call_tool("add", {"a": a, "b": b})
    assert not result.is_error, result
    return text_of(result).strip()


def sdk_login_and_add(cluster: Cluster) -> SdkClient:
    """The SDK meets a 401, discovers, registers, authorizes (browser), exchanges, calls add."""
    sdk = SdkClient(cluster, **user(cluster))
    assert sdk.run(lambda c: add(c, 1, 2)) == "3"

    paths = sdk.wire.paths()
    first_mcp = next(p for p in paths if p[1] == "/mcp")
    assert first_mcp[2] == 401, paths
    assert any(p[1].startswith("/.well-known/oauth-protected-resource") and p[2] == 200 for p in paths), paths
    assert any(
        p[1].startswith(("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"))
        and p[2] == 200
        for p in paths
    ), paths
    assert ("POST", "/register", 201) in paths, paths
    assert ("POST", "/token", 200) in paths, paths
    assert len(sdk.callbacks) == 1 and sdk.callbacks[0].iss == cluster.issuer, sdk.callbacks
    # Every request to the SDK's authorization server went to the one public origin.
    origin = gw(cluster).base_url
    assert all(u.startswith(origin) for _, u, _, _ in sdk.wire.log), sdk.wire.log

    assert sdk.storage.tokens is not None and sdk.storage.tokens.refresh_token
    claims = jwt_claims(sdk.storage.tokens.access_token)
    assert claims["iss"] == cluster.issuer, claims
    aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    assert gw(cluster).resource in aud, claims
    assert claims.get("gid"), f"no grant id claim: {claims}"
    return sdk


def test_sdk_oauth_flow_static_users(oauth_cluster: Cluster) -> None:
    sdk_login_and_add(oauth_cluster)


def test_sdk_oauth_flow_oidc_upstream(oidc_cluster: Cluster) -> None:
    sdk = sdk_login_and_add(oidc_cluster)
    # The browser went through the upstream's own login and consent pages.
    upstream = oidc_cluster.oidc.issuer  # type: ignore[union-attr]
    assert any(u.startswith(upstream + "/interaction/") and m == "POST" for m, u, _ in sdk.browser.history)
    assert any(urlsplit(u).path == "/callback" and u.startswith(gw(oidc_cluster).base_url) for _, u, _ in sdk.browser.history)


def test_sdk_refreshes_and_rotates(oauth_cluster: Cluster) -> None:
    """An expired access token makes the SDK use its refresh token; the answer rotates it."""
    sdk = SdkClient(oauth_cluster, **user(oauth_cluster))
    seen: dict[str, str] = {}

    async def flow(client: Client) -> str:
        assert await add(client, 1, 2) == "3"
        assert sdk.storage.tokens is not None and sdk.storage.tokens.refresh_token
        seen["refresh"] = sdk.storage.tokens.refresh_token
        seen["access"] = sdk.storage.tokens.access_token
        sdk.provider.context.token_expiry_time = time.time() - 1  # as if it expired
        return await add(client, 20, 22)

    assert sdk.run(flow) == "42"
    refreshes = [(s, b) for m, u, b, s in sdk.wire.log if urlsplit(u).path == "/token" and b"grant_type=refresh_token" in b]
    assert [s for s, _ in refreshes] == [200], sdk.wire.paths()
    assert len(sdk.callbacks) == 1, "the SDK logged in again instead of refreshing"
    tokens = sdk.storage.tokens
    assert tokens is not None and tokens.refresh_token and tokens.refresh_token != seen["refresh"]
    assert tokens.access_token != seen["access"]


@pytest.mark.parametrize("upstream", ["static", "oidc"])
def test_access_token_carries_the_identity(request: pytest.FixtureRequest, upstream: str) -> None:
    """The tools decide on `email`/`permissions`: they come from the upstream identity
    (static-users file, or the oidc-provider's ID token)."""
    cluster: Cluster = request.getfixturevalue("oauth_cluster" if upstream == "static" else "oidc_cluster")
    client = register(cluster)
    tokens = client.login(gw(cluster).resource, **user(cluster))
    claims = jwt_claims(tokens["access_token"])
    assert claims.get("sub"), claims
    assert "image_generation" in (claims.get("permissions") or []), claims
    if upstream == "oidc":
        assert claims.get("email") == "alice@example.com", claims
    assert claims.get("client_id") == client.client_id, claims
    assert mcp_status(cluster, tokens["access_token"]) == 200


# ---------------------------------------------------------------------------------------------
# Metadata and pages
# ---------------------------------------------------------------------------------------------


def test_metadata_through_the_gateway(oauth_cluster: Cluster) -> None:
    issuer, base = oauth_cluster.issuer, gw(oauth_cluster).base_url
    assert issuer == base
    prm = httpx.get(f"{base}/.well-known/oauth-protected-resource/mcp", timeout=HTTP_TIMEOUT)
    assert prm.status_code == 200, prm.text
    assert prm.json()["resource"] == gw(oauth_cluster).resource
    assert prm.json()["authorization_servers"] == [issuer]
    r = httpx.get(f"{base}/.well-known/oauth-authorization-server", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    meta = r.json()
    assert meta["issuer"] == issuer
    for name, path in [
        ("authorization_endpoint", "/authorize"),
        ("token_endpoint", "/token"),
        ("registration_endpoint", "/register"),
        ("revocation_endpoint", "/revoke"),
        ("jwks_uri", "/jwks.json"),
    ]:
        assert meta.get(name) == issuer + path, (name, meta.get(name))
    assert meta["code_challenge_methods_supported"] == ["S256"], meta
    assert "code" in meta["response_types_supported"], meta
    assert {"authorization_code", "refresh_token"} <= set(meta["grant_types_supported"]), meta
    assert meta.get("authorization_response_iss_parameter_supported") is True, meta
    jwks = httpx.get(meta["jwks_uri"], timeout=HTTP_TIMEOUT)
    assert jwks.status_code == 200 and jwks.json()["keys"], jwks.text


def test_consent_page_contract(oauth_cluster: Cluster) -> None:
    """README "Pages" and "Cookies": ids the tests rely on, security headers, the tx cookie."""
    client = register(oauth_cluster, name="Consent <Page> Client")
    az = client.authorization(gw(oauth_cluster).resource)
    with client.browser() as b:
        page = until_consent(b, az.url, oauth_cluster)
        assert page.status == 200
        form = page.form("consent")
        assert form.method == "POST" and form.action == f"{oauth_cluster.issuer}/consent", form
        assert {"tx", "csrf"} <= form.field_names(), form
        assert {(btn.id, btn.name, btn.value) for btn in form.buttons} >= {
            ("approve", "action", "approve"),
            ("deny", "action", "deny"),
        }, form.buttons
        assert page.texts.get("client-name") == "Consent <Page> Client", page.texts
        assert page.texts.get("redirect-host", "").startswith("127.0.0.1"), page.texts
        assert "<Page>" not in page.text  # escaped
        csp = page.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, csp
        assert page.headers.get("x-frame-options", "").upper() == "DENY"
        assert "no-store" in page.headers.get("cache-control", "")
        assert page.headers.get("referrer-policy") == "no-referrer"


def test_pending_login_cookie(oauth_cluster: Cluster) -> None:
    """README "Cookies": an http issuer binds the pending login to the browser with the
    `mcp_browser` cookie (no __Host- prefix, which needs Secure)."""
    client = register(oauth_cluster)
    az = client.authorization(gw(oauth_cluster).resource)
    with client.browser() as b:
        until_consent(b, az.url, oauth_cluster)
        names = b.cookies.names("localhost")
    assert "mcp_browser" in names, f"cookies set on the issuer's host: {sorted(names)}"
    assert not any(n.startswith("__Host-") for n in names), names


def pages_until_callback(b: Browser, url: str, cluster: Cluster, name: str) -> tuple[list[str], Callback]:
    """Go through an authorization as `name`, approving; the ids of the forms met on the way."""
    seen: list[str] = []
    step = b.get(url)
    for _ in range(8):
        if isinstance(step, Callback):
            return seen, step
        seen.extend(f.id or "?" for f in step.forms)
        step = b.act(step, consent="approve", **user(cluster, name))
    raise AssertionError(f"no callback; history {b.history}")


def test_approved_client_skips_consent_for_the_same_user_only(oauth_cluster: Cluster) -> None:
    """README: /authorize skips the consent page for a client this user approved (signed
    cookie bound to the user's sub); another user in the same browser is asked again."""
    client = register(oauth_cluster)
    resource = gw(oauth_cluster).resource
    with client.browser() as b:
        first, cb = pages_until_callback(b, client.authorization(resource).url, oauth_cluster, "alice")
        assert "consent" in first and cb.code, (first, cb.url)
        again, cb = pages_until_callback(b, client.authorization(resource).url, oauth_cluster, "alice")
        assert "consent" not in again and cb.code, (again, cb.url)
        bob, cb = pages_until_callback(b, client.authorization(resource).url, oauth_cluster, "bob")
        assert "consent" in bob and cb.code, (bob, cb.url)


# ---------------------------------------------------------------------------------------------
# The user says no, or gets the password wrong
# ---------------------------------------------------------------------------------------------


def test_deny_on_consent(oauth_cluster: Cluster) -> None:
    client = register(oauth_cluster)
    az = client.authorization(gw(oauth_cluster).resource)
    with client.browser() as b:
        cb = b.authorize(az.url, consent="deny", **user(oauth_cluster))
    assert cb.error == "access_denied", cb.url
    assert cb.code is None, cb.url
    assert cb.state == az.state, cb.url
    assert cb.iss == oauth_cluster.issuer, cb.url


def test_wrong_password_shows_an_error_and_no_code(oauth_cluster: Cluster) -> None:
    client = register(oauth_cluster)
    az = client.authorization(gw(oauth_cluster).resource)
    with client.browser() as b:
        step = b.get(az.url)
        submitted = False
        for _ in range(6):
            assert isinstance(step, Page), f"reached the client's callback: {step}"
            if step.has_form("consent"):
                step = b.submit(step, "consent", button="approve")
            elif step.has_form("login") and not submitted:
                step = b.submit(step, "login", overrides={"username": "alice", "password": "not-her-password"})
                submitted = True
            else:
                break
        assert submitted, b.history
        assert isinstance(step, Page), f"a wrong password reached the client's callback: {step}"
        assert step.status >= 400, (step.status, step.url)
        assert step.error_text(), step.text[:500]
        assert not any(u.startswith(client.redirect_uri) for _, u, _ in b.history)


# ---------------------------------------------------------------------------------------------
# Refresh tokens, revocation
# ---------------------------------------------------------------------------------------------


def test_refresh_rotates_and_the_previous_token_works_within_the_grace(oauth_cluster: Cluster) -> None:
    resource = gw(oauth_cluster).resource
    client = register(oauth_cluster)
    tokens = client.login(resource, **user(oauth_cluster))
    rotated_at = time.monotonic()
    r = client.refresh(tokens["refresh_token"], resource)
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    assert new["access_token"] != tokens["access_token"]
    assert mcp_status(oauth_cluster, new["access_token"]) == 200
    # A retry after a lost response, inside AUTH_REFRESH_GRACE.
    retry = client.refresh(tokens["refresh_token"], resource)
    if time.monotonic() - rotated_at < OAUTH_REFRESH_GRACE - 0.5:
        assert retry.status_code == 200, f"reuse within the grace window: {retry.status_code} {retry.text}"


@pytest.mark.attack
def test_refresh_reuse_after_grace_revokes_the_grant(oauth_cluster: Cluster) -> None:
    resource = gw(oauth_cluster).resource
    client = register(oauth_cluster)
    tokens = client.login(resource, **user(oauth_cluster))
    r = client.refresh(tokens["refresh_token"], resource)
    assert r.status_code == 200, r.text
    rotated_at = time.monotonic()
    new = r.json()
    assert mcp_status(oauth_cluster, new["access_token"]) == 200
    # Wait out the configured grace window (a fixed period, not a guess at readiness).
    time.sleep(max(0.0, rotated_at + OAUTH_REFRESH_GRACE + 1.0 - time.monotonic()))
    reuse = client.refresh(tokens["refresh_token"], resource)
    assert reuse.status_code == 400 and error_of(reuse) == "invalid_grant", reuse.text
    # Reuse means theft: the whole grant is gone, its tokens stop working.
    wait_refused(oauth_cluster, new["access_token"], "the access token of a grant whose refresh token was reused")
    assert mcp_status(oauth_cluster, tokens["access_token"]) == 401
    after = client.refresh(new["refresh_token"], resource)
    assert after.status_code == 400 and error_of(after) == "invalid_grant", after.text


def test_revoke_refresh_token(oauth_cluster: Cluster) -> None:
    resource = gw(oauth_cluster).resource
    client = register(oauth_cluster)
    tokens = client.login(resource, **user(oauth_cluster))
    assert mcp_status(oauth_cluster, tokens["access_token"]) == 200
    r = client.revoke(tokens["refresh_token"], "refresh_token")
    assert r.status_code == 200, r.text
    wait_refused(oauth_cluster, tokens["access_token"], "the access token of a revoked grant")
    after = client.refresh(tokens["refresh_token"], resource)
    assert after.status_code == 400 and error_of(after) == "invalid_grant", after.text


def test_revoke_access_token(oauth_cluster: Cluster) -> None:
    resource = gw(oauth_cluster).resource
    client = register(oauth_cluster)
    tokens = client.login(resource, **user(oauth_cluster))
    assert mcp_status(oauth_cluster, tokens["access_token"]) == 200
    r = client.revoke(tokens["access_token"], "access_token")
    assert r.status_code == 200, r.text
    wait_refused(oauth_cluster, tokens["access_token"], "a revoked access token")


def test_revoke_unknown_token_is_ok(oauth_cluster: Cluster) -> None:
    """RFC 7009 2.2: an invalid token is not an error (nothing to learn from the answer)."""
    client = register(oauth_cluster)
    r = client.revoke("not-a-token-" + secrets.token_urlsafe(8))
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------------------------
# /authorize refusals
# ---------------------------------------------------------------------------------------------


def authorize_raw(url: str) -> httpx.Response:
    return httpx.get(url, follow_redirects=False, timeout=HTTP_TIMEOUT)


@pytest.mark.attack
def test_authorize_without_pkce(oauth_cluster: Cluster) -> None:
    client = register(oauth_cluster)
    az = client.authorization(gw(oauth_cluster).resource, code_challenge=None, code_challenge_method=None)
    p = redirect_params(authorize_raw(az.url), client.redirect_uri)
    assert p.get("error") == "invalid_request" and "code" not in p, p
    assert p.get("state") == az.state and p.get("iss") == oauth_cluster.issuer, p


@pytest.mark.attack
def test_authorize_with_plain_pkce(oauth_cluster: Cluster) -> None:
    client = register(oauth_cluster)
    verifier, _ = pkce_pair()
    az = client.authorization(gw(oauth_cluster).resource, code_challenge=verifier, code_challenge_method="plain")
    p = redirect_params(authorize_raw(az.url), client.redirect_uri)
    assert p.get("error") == "invalid_request" and "code" not in p, p
    assert p.get("state") == az.state and p.get("iss") == oauth_cluster.issuer, p


@pytest.mark.attack
def test_authorize_unknown_client(oauth_cluster: Cluster) -> None:
    client = register(oauth_cluster)
    az = client.authorization(gw(oauth_cluster).resource, client_id="unknown-" + secrets.token_urlsafe(8))
    assert_error_page(authorize_raw(az.url), 400)


@pytest.mark.attack
@pytest.mark.parametrize("where", ["other_host", "other_loopback_path"])
def test_authorize_unregistered_redirect_uri(oauth_cluster: Cluster, where: str) -> None:
    """Never redirect to a URI the client did not register: a 400 page instead."""
    client = register(oauth_cluster)
    port = urlsplit(client.redirect_uri).port
    evil = "https://evil.example/callback" if where == "other_host" else f"http://127.0.0.1:{port}/elsewhere"
    az = client.authorization(gw(oauth_cluster).resource, redirect_uri=evil)
    assert_error_page(authorize_raw(az.url), 400)


@pytest.mark.attack
def test_authorize_wrong_resource(oauth_cluster: Cluster) -> None:
    client = register(oauth_cluster)
    az = client.authorization("http://localhost:1/not-this-server")
    p = redirect_params(authorize_raw(az.url), client.redirect_uri)
    assert p.get("error") == "invalid_target" and "code" not in p, p
    assert p.get("state") == az.state and p.get("iss") == oauth_cluster.issuer, p


# ---------------------------------------------------------------------------------------------
# /token refusals
# ---------------------------------------------------------------------------------------------


@pytest.mark.attack
def test_token_bad_code_verifier(oauth_cluster: Cluster) -> None:
    resource = gw(oauth_cluster).resource
    client = register(oauth_cluster)
    _, cb = client.authorize(resource, **user(oauth_cluster))
    assert cb.code, cb.url
    wrong_verifier, _ = pkce_pair()
    r = client.exchange(cb.code, wrong_verifier, resource)
    assert r.status_code == 400 and error_of(r) == "invalid_grant", r.text
    assert "access_token" not in r.text


@pytest.mark.attack
def test_replayed_code_revokes_the_grant(oauth_cluster: Cluster) -> None:
    resource = gw(oauth_cluster).resource
    client = register(oauth_cluster)
    az, cb = client.authorize(resource, **user(oauth_cluster))
    assert cb.code, cb.url
    first = client.exchange(cb.code, az.verifier, resource)
    assert first.status_code == 200, first.text
    tokens = first.json()
    assert mcp_status(oauth_cluster, tokens["access_token"]) == 200
    second = client.exchange(cb.code, az.verifier, resource)
    assert second.status_code == 400 and error_of(second) == "invalid_grant", second.text
    wait_refused(oauth_cluster, tokens["access_token"], "the access token of a replayed code's grant")
    r = client.refresh(tokens["refresh_token"], resource)
    assert r.status_code == 400 and error_of(r) == "invalid_grant", r.text


@pytest.mark.attack
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_token_bad_client_secret(oauth_cluster: Cluster, method: str) -> None:
    resource = gw(oauth_cluster).resource
    client = register(oauth_cluster, auth_method=method)
    assert client.client_secret, f"a confidential client got no secret: {client.registration}"
    assert client.auth_method == method, client.registration
    az, cb = client.authorize(resource, **user(oauth_cluster))
    assert cb.code, cb.url
    r = client.exchange(cb.code, az.verifier, resource, secret="wrong-" + secrets.token_urlsafe(8))
    assert r.status_code == 401 and error_of(r) == "invalid_client", r.text
    if method == "client_secret_basic":
        assert r.headers.get("www-authenticate", "").lower().startswith("basic"), r.headers


def test_confidential_client_with_its_secret(oauth_cluster: Cluster) -> None:
    """The positive control of the test above: the right secret gets tokens."""
    client = register(oauth_cluster, auth_method="client_secret_basic")
    tokens = client.login(gw(oauth_cluster).resource, **user(oauth_cluster))
    assert mcp_status(oauth_cluster, tokens["access_token"]) == 200


# ---------------------------------------------------------------------------------------------
# Consent form: CSRF and the browser binding
# ---------------------------------------------------------------------------------------------


@pytest.mark.attack
@pytest.mark.parametrize("csrf", ["missing", "wrong"])
def test_consent_csrf(oauth_cluster: Cluster, csrf: str) -> None:
    client = register(oauth_cluster)
    az = client.authorization(gw(oauth_cluster).resource)
    with client.browser() as b:
        page = until_consent(b, az.url, oauth_cluster)
        good = page.form("consent").value("csrf") or ""
        value = None if csrf == "missing" else ("A" if good[:1] != "A" else "B") + good[1:]
        step = b.submit(page, "consent", overrides={"csrf": value}, button="approve")
    assert isinstance(step, Page), f"consent without a valid csrf reached the client: {step}"
    assert step.status == 403, (step.status, step.text[:300])


@pytest.mark.attack
def test_consent_from_another_browser(oauth_cluster: Cluster) -> None:
    """The tx cookie binds the pending login to the browser that started it."""
    client = register(oauth_cluster)
    az = client.authorization(gw(oauth_cluster).resource)
    with client.browser() as b:
        page = until_consent(b, az.url, oauth_cluster)
    with client.browser() as other:
        step = other.submit(page, "consent", button="approve")
    assert isinstance(step, Page), f"another browser's consent reached the client: {step}"
    assert step.status in (400, 403), (step.status, step.text[:300])


@pytest.mark.parametrize("endpoint", ["consent", "login", "callback"])
def test_unknown_or_expired_transaction(oauth_cluster: Cluster, endpoint: str) -> None:
    """A tx/state the server never issued (or that expired): an error page, never a redirect."""
    base, forged = oauth_cluster.issuer, secrets.token_urlsafe(24)
    if endpoint == "consent":
        r = httpx.post(
            f"{base}/consent",
            data={"tx": forged, "csrf": secrets.token_urlsafe(24), "action": "approve"},
            headers={"Origin": base},
            follow_redirects=False,
            timeout=HTTP_TIMEOUT,
        )
        assert_error_page(r, (400, 403))
    elif endpoint == "login":
        assert_error_page(httpx.get(f"{base}/login", params={"tx": forged}, timeout=HTTP_TIMEOUT), 400)
    else:
        r = httpx.get(
            f"{base}/callback", params={"state": forged, "code": "x"}, follow_redirects=False, timeout=HTTP_TIMEOUT
        )
        assert_error_page(r, 400)


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------


@pytest.mark.attack
def test_register_rejects_non_loopback_http_redirect(oauth_cluster: Cluster) -> None:
    r = OAuthClient.register_raw(
        oauth_cluster.issuer,
        {
            "client_name": "plain http elsewhere",
            "redirect_uris": ["http://client.example/callback"],
            "token_endpoint_auth_method": "none",
        },
    )
    assert r.status_code == 400 and error_of(r) == "invalid_redirect_uri", r.text


def test_register_loopback_any_port(oauth_cluster: Cluster) -> None:
    """Loopback redirect URIs may use any port (RFC 8252 7.3): registered on one, used on another."""
    client = register(oauth_cluster, redirect_uri="http://127.0.0.1:4000/callback")
    client.redirect_uri = "http://127.0.0.1:4711/callback"
    tokens = client.login(gw(oauth_cluster).resource, **user(oauth_cluster))
    assert mcp_status(oauth_cluster, tokens["access_token"]) == 200
