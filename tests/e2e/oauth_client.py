"""A plain OAuth 2.1 client for the end-to-end tests, below the level of an SDK: discovery,
RFC 7591 registration, PKCE, the browser part through `oauth_browser`, and the token, refresh
and revocation requests, each returning the raw httpx response where a test wants to look at it.

    client = OAuthClient.register(issuer)                     # public client, loopback redirect
    tokens = client.login(resource, username="alice", password="alice-dev-password")
    client.refresh(tokens["refresh_token"], resource)
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx

from harness import free_port
from oauth_browser import Browser, Callback

TIMEOUT = 15.0


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (the gateway is what verifies; tests only look)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def metadata(issuer: str) -> dict[str, Any]:
    r = httpx.get(f"{issuer}/.well-known/oauth-authorization-server", timeout=TIMEOUT)
    r.raise_for_status()
    return r.json()


@dataclass
class Authorization:
    """One authorization request: what the client keeps until its callback."""

    url: str
    state: str
    verifier: str
    challenge: str


@dataclass
class OAuthClient:
    issuer: str
    meta: dict[str, Any]
    client_id: str
    redirect_uri: str
    client_secret: str | None = None
    auth_method: str = "none"
    registration: dict[str, Any] = field(default_factory=dict)

    # -- registration -----------------------------------------------------------------------------
    @staticmethod
    def register_raw(issuer: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(metadata(issuer)["registration_endpoint"], json=body, timeout=TIMEOUT)

    @classmethod
    def register(
        cls,
        issuer: str,
        *,
        auth_method: str = "none",
        redirect_uri: str | None = None,
        name: str = "mcp-cluster e2e client",
        scope: str | None = None,
    ) -> "OAuthClient":
        meta = metadata(issuer)
        redirect_uri = redirect_uri or f"http://127.0.0.1:{free_port()}/callback"
        body: dict[str, Any] = {
            "client_name": name,
            "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": auth_method,
        }
        if scope is not None:
            body["scope"] = scope
        r = httpx.post(meta["registration_endpoint"], json=body, timeout=TIMEOUT)
        assert r.status_code == 201, f"registration: {r.status_code} {r.text}"
        reg = r.json()
        return cls(
            issuer=issuer,
            meta=meta,
            client_id=reg["client_id"],
            redirect_uri=redirect_uri,
            client_secret=reg.get("client_secret"),
            auth_method=reg.get("token_endpoint_auth_method", auth_method),
            registration=reg,
        )

    # -- authorization ----------------------------------------------------------------------------
    def authorization(self, resource: str | None, *, scope: str | None = None, **override: str | None) -> Authorization:
        """An authorization URL with fresh PKCE and state; `override` changes or (None) drops params."""
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(16)
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": resource,
            "scope": scope,
        }
        params.update(override)
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return Authorization(f"{self.meta['authorization_endpoint']}?{query}", state, verifier, challenge)

    def browser(self) -> Browser:
        return Browser(stop_at=self.redirect_uri)

    # -- token endpoint ---------------------------------------------------------------------------
    def _client_auth(self, data: dict[str, str], secret: str | None = None) -> tuple[dict[str, str], Any]:
        """Form fields and httpx auth for this client's token_endpoint_auth_method."""
        secret = secret if secret is not None else self.client_secret
        if self.auth_method == "client_secret_basic":
            return data, httpx.BasicAuth(self.client_id, secret or "")
        data = dict(data, client_id=self.client_id)
        if self.auth_method == "client_secret_post":
            data["client_secret"] = secret or ""
        return data, None

    def token_raw(self, data: dict[str, str], *, secret: str | None = None) -> httpx.Response:
        form, auth = self._client_auth(data, secret)
        return httpx.post(self.meta["token_endpoint"], data=form, auth=auth, timeout=TIMEOUT)

    def exchange(self, code: str, verifier: str, resource: str | None, *, secret: str | None = None) -> httpx.Response:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
        }
        if resource is not None:
            data["resource"] = resource
        return self.token_raw(data, secret=secret)

    def refresh(self, refresh_token: str, resource: str | None = None) -> httpx.Response:
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if resource is not None:
            data["resource"] = resource
        return self.token_raw(data)

    def revoke(self, token: str, hint: str | None = None) -> httpx.Response:
        data = {"token": token}
        if hint is not None:
            data["token_type_hint"] = hint
        form, auth = self._client_auth(data)
        return httpx.post(self.meta["revocation_endpoint"], data=form, auth=auth, timeout=TIMEOUT)

    # -- the whole flow -----------------------------------------------------------------------------
    def authorize(
        self,
        resource: str | None,
        *,
        username: str,
        password: str,
        consent: str = "approve",
        browser: Browser | None = None,
        scope: str | None = None,
    ) -> tuple[Authorization, Callback]:
        """Open the authorization URL in a (new or given) browser and log in; the callback it reached."""
        az = self.authorization(resource, scope=scope)
        own = browser is None
        b = browser or self.browser()
        try:
            cb = b.authorize(az.url, username=username, password=password, consent=consent)  # type: ignore[arg-type]
        finally:
            if own:
                b.close()
        return az, cb

    def login(self, resource: str, *, username: str, password: str, browser: Browser | None = None) -> dict[str, Any]:
        """Authorization code flow end to end; the token response (access and refresh token)."""
        az, cb = self.authorize(resource, username=username, password=password, browser=browser)
        assert cb.error is None and cb.code, f"no code: {cb.url}"
        assert cb.state == az.state, (cb.state, az.state)
        r = self.exchange(cb.code, az.verifier, resource)
        assert r.status_code == 200, f"token: {r.status_code} {r.text}"
        return r.json()
