//! OpenID Connect providers: generic discovery, and the presets (WorkOS AuthKit,
//! Cloudflare Access for SaaS, PingOne, Microsoft Entra ID), which are the same
//! provider with endpoints, scopes and claim names filled in.
//!
//! Discovery (`{issuer}/.well-known/openid-configuration`) happens on first use, not
//! at start-up, and is cached for [`METADATA_TTL`]; a failed refresh keeps using the
//! previous document and tries again after [`METADATA_RETRY`]. The document's `issuer` must equal the configured one exactly
//! and every endpoint must be https (http only on loopback hosts, for tests).
//!
//! WorkOS is the one dialect that is not plain OIDC: its User Management API
//! (`/user_management/authorize` with `provider=authkit`, then
//! `/user_management/authenticate`, which takes JSON) returns no ID token but a
//! user object and an access token that is a JWT signed by the client's JWKS
//! (`/sso/jwks/{client_id}`); that JWT is verified and carries `permissions`,
//! `org_id` and `role`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jwt_verify::IssuerRule;
use reqwest::Url;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::claims::{self, ClaimMapping};
use super::http::{TokenHttp, get_json, provider_url, redacted};
use super::oauth::{self, AuthRequest, ClientAuth, ClientCredentials, TokenEndpoint};
use super::verify::{Expect, ProviderKeys};
use super::{Completed, LoginSecrets, LoginStart, UpstreamError, UpstreamTokens};

/// How long a discovery document is used before it is fetched again.
pub const METADATA_TTL: Duration = Duration::from_secs(3600);
/// After a failed refresh the previous document serves this long before the next try.
pub const METADATA_RETRY: Duration = Duration::from_secs(60);

/// Which provider an [`OidcProvider`] was configured as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Any OpenID provider found by discovery (`AUTH_UPSTREAM=oidc`).
    Generic,
    WorkOs,
    CloudflareAccess,
    PingOne,
    Entra,
}

impl Preset {
    /// The `AUTH_UPSTREAM` value.
    pub fn kind(self) -> &'static str {
        match self {
            Preset::Generic => "oidc",
            Preset::WorkOs => "workos",
            Preset::CloudflareAccess => "cloudflare-access",
            Preset::PingOne => "pingone",
            Preset::Entra => "entra",
        }
    }
}

/// How the token endpoint's answer proves who logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// An ID token, checked against the nonce.
    Oidc,
    /// WorkOS User Management: a JWT access token plus a `user` object.
    WorkOs,
}

/// Where the endpoints come from.
#[derive(Debug, Clone)]
pub(crate) enum Endpoints {
    /// From `{issuer}/.well-known/openid-configuration`.
    Discovery { issuer: String },
    /// Configured, no discovery.
    Fixed(Arc<Resolved>),
}

/// The endpoints and rules in use.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub authorization: Url,
    pub token: Url,
    pub jwks: Url,
    pub userinfo: Option<Url>,
    pub issuer: IssuerRule,
    pub auth: ClientAuth,
}

/// Everything an [`OidcProvider`] is configured with.
#[derive(Debug, Clone)]
pub(crate) struct OidcSettings {
    pub preset: Preset,
    pub dialect: Dialect,
    pub creds: ClientCredentials,
    pub endpoints: Endpoints,
    pub scopes: Vec<String>,
    /// Extra authorization request parameters (PingOne `resource`, WorkOS `provider`).
    pub extra_auth_params: Vec<(String, String)>,
    pub mapping: ClaimMapping,
    /// Overrides the client authentication picked from discovery.
    pub auth: Option<ClientAuth>,
}

/// An OpenID Connect provider (or WorkOS). Cheap to clone.
#[derive(Clone)]
pub struct OidcProvider {
    inner: Arc<Inner>,
}

struct Inner {
    settings: OidcSettings,
    http: reqwest::Client,
    token_http: TokenHttp,
    jwks: ProviderKeys,
    /// The discovered endpoints and when they are to be fetched again. The lock is
    /// held while fetching: one discovery at a time.
    metadata: tokio::sync::Mutex<Option<(Arc<Resolved>, Instant)>>,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("OidcProvider")
            .field("preset", &s.preset)
            .field("client", &s.creds)
            .field("endpoints", &s.endpoints)
            .field("scopes", &s.scopes)
            .finish_non_exhaustive()
    }
}

/// The part of a discovery document we use.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

impl OidcProvider {
    pub(crate) fn new(settings: OidcSettings, http: reqwest::Client, token_http: TokenHttp) -> Self {
        let token_http = match settings.dialect {
            Dialect::WorkOs => token_http.with_json_body(),
            Dialect::Oidc => token_http,
        };
        Self {
            inner: Arc::new(Inner {
                jwks: ProviderKeys::new(http.clone()),
                settings,
                http,
                token_http,
                metadata: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Tests: let unknown `kid`s refetch the keys sooner.
    #[cfg(test)]
    pub(crate) fn with_jwks_min_refetch(mut self, interval: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.jwks = ProviderKeys::with_min_refetch(inner.http.clone(), interval);
        }
        self
    }

    pub fn preset(&self) -> Preset {
        self.inner.settings.preset
    }

    pub fn client_id(&self) -> &str {
        self.inner.settings.creds.client_id.as_str()
    }

    /// The issuer identifier when it is known exactly (discovery-based providers):
    /// what an RFC 9207 `iss` callback parameter must equal.
    pub fn issuer(&self) -> Option<&str> {
        match &self.inner.settings.endpoints {
            Endpoints::Discovery { issuer } => Some(issuer),
            Endpoints::Fixed(_) => None,
        }
    }

    /// The endpoints: configured, cached, or discovered now.
    async fn resolve(&self) -> Result<Arc<Resolved>, UpstreamError> {
        let issuer = match &self.inner.settings.endpoints {
            Endpoints::Fixed(r) => return Ok(r.clone()),
            Endpoints::Discovery { issuer } => issuer,
        };
        let mut cached = self.inner.metadata.lock().await;
        if let Some((r, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(r.clone());
        }
        match self.discover(issuer).await {
            Ok(r) => {
                let r = Arc::new(r);
                *cached = Some((r.clone(), Instant::now() + METADATA_TTL));
                Ok(r)
            }
            Err(err) => match cached.as_mut() {
                // Keep serving logins with the last good document; try again later.
                Some((r, until)) => {
                    tracing::warn!(issuer, error = %err, "provider discovery failed; using the previous document");
                    *until = Instant::now() + METADATA_RETRY;
                    Ok(r.clone())
                }
                None => Err(err),
            },
        }
    }

    async fn discover(&self, issuer: &str) -> Result<Resolved, UpstreamError> {
        let url = provider_url(
            "discovery url",
            &format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/')),
        )?;
        let doc = get_json(&self.inner.http, &url, None, &[])
            .await
            .map_err(|e| e.into_upstream("discovery"))?;
        let d: Discovery = serde_json::from_value(doc)
            .map_err(|_| UpstreamError::Invalid("discovery document lacks required fields".into()))?;
        if d.issuer != issuer {
            return Err(UpstreamError::Invalid("discovery document names another issuer".into()));
        }
        let resolved = Resolved {
            authorization: provider_url("authorization_endpoint", &d.authorization_endpoint)?,
            token: provider_url("token_endpoint", &d.token_endpoint)?,
            jwks: provider_url("jwks_uri", &d.jwks_uri)?,
            userinfo: match d.userinfo_endpoint.as_deref() {
                Some(u) => Some(provider_url("userinfo_endpoint", u)?),
                None => None,
            },
            issuer: IssuerRule::Exact(vec![issuer.to_owned()]),
            auth: self
                .inner
                .settings
                .auth
                .unwrap_or_else(|| ClientAuth::from_supported(d.token_endpoint_auth_methods_supported.as_deref())),
        };
        tracing::info!(issuer, token_endpoint = %redacted(&resolved.token), "discovered identity provider");
        Ok(resolved)
    }

    fn token_endpoint<'a>(&self, r: &'a Resolved) -> TokenEndpoint<'a> {
        TokenEndpoint {
            url: r.token.as_str(),
            auth: r.auth,
            send_redirect_uri: self.inner.settings.dialect == Dialect::Oidc,
        }
    }

    pub async fn begin(&self, state: &str, callback_url: &str) -> Result<LoginStart, UpstreamError> {
        let r = self.resolve().await?;
        let s = &self.inner.settings;
        oauth::begin(
            &s.creds,
            r.authorization.as_str(),
            callback_url,
            state,
            &AuthRequest {
                scopes: &s.scopes,
                nonce: s.dialect == Dialect::Oidc,
                extra: &s.extra_auth_params,
            },
        )
    }

    pub async fn complete(
        &self,
        code: &str,
        callback_url: &str,
        secrets: &LoginSecrets,
    ) -> Result<Completed, UpstreamError> {
        let r = self.resolve().await?;
        let s = &self.inner.settings;
        let body = oauth::exchange_code(
            &self.inner.token_http,
            &s.creds,
            &self.token_endpoint(&r),
            code,
            callback_url,
            secrets,
        )
        .await?;
        let tokens = oauth::upstream_tokens(&body, None);
        let (identity, claims) = match s.dialect {
            Dialect::Oidc => {
                let nonce = secrets
                    .nonce
                    .as_deref()
                    .ok_or_else(|| UpstreamError::Invalid("login has no nonce".into()))?;
                let id_token = body
                    .id_token
                    .as_deref()
                    .ok_or_else(|| UpstreamError::Invalid("token response has no id_token".into()))?;
                let expect = Expect {
                    what: "id token",
                    issuer: &r.issuer,
                    audience: self.client_id(),
                    audience_optional: false,
                    nonce: Some(nonce),
                    require_iat: true,
                };
                let mut claims = self.inner.jwks.verify(&r.jwks, id_token, &expect).await?;
                if !claims.contains_key("email")
                    && let Some(url) = &r.userinfo
                {
                    self.merge_userinfo(url, &tokens.access_token, &mut claims).await?;
                }
                (claims::identity(&claims, &s.mapping)?, claims)
            }
            Dialect::WorkOs => self.workos_identity(&r, &body).await?,
        };
        Ok(Completed {
            identity,
            tokens: Some(tokens),
            claims: Value::Object(claims),
        })
    }

    /// Add userinfo claims the ID token lacks. The userinfo `sub` must be the ID
    /// token's (OIDC Core §5.3.4). A provider whose userinfo is unreachable or not
    /// JSON costs us the e-mail, not the login.
    async fn merge_userinfo(
        &self,
        url: &Url,
        access_token: &str,
        claims: &mut Map<String, Value>,
    ) -> Result<(), UpstreamError> {
        let info = match get_json(&self.inner.http, url, Some(access_token), &[]).await {
            Ok(Value::Object(info)) => info,
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e.into_upstream("userinfo"), "userinfo unavailable; continuing without it");
                return Ok(());
            }
        };
        if info.get("sub") != claims.get("sub") {
            return Err(UpstreamError::Invalid("userinfo is about another subject".into()));
        }
        for (k, v) in info {
            claims.entry(k).or_insert(v);
        }
        Ok(())
    }

    /// WorkOS: verify the access token (a JWT from the client's JWKS) and combine
    /// its claims with the `user` object of the response.
    async fn workos_identity(
        &self,
        r: &Resolved,
        body: &oauth::TokenBody,
    ) -> Result<(super::Identity, Map<String, Value>), UpstreamError> {
        let expect = Expect {
            what: "access token",
            issuer: &r.issuer,
            audience: self.client_id(),
            audience_optional: true,
            nonce: None,
            require_iat: false,
        };
        let mut claims = self
            .inner
            .jwks
            .verify(&r.jwks, body.access_token.secret(), &expect)
            .await?;
        let user = body.user.as_ref().and_then(Value::as_object);
        if let Some(user) = user
            && user.get("id").is_some_and(|id| Some(id) != claims.get("sub"))
        {
            return Err(UpstreamError::Invalid("access token and user object disagree".into()));
        }
        let mut view = claims.clone();
        if let Some(user) = user {
            let field = |k: &str| user.get(k).cloned();
            if let Some(v) = field("email") {
                view.insert("email".into(), v);
            }
            if let Some(v) = field("email_verified") {
                view.insert("email_verified".into(), v);
            }
            let name = claims::join_name(
                user.get("first_name").and_then(Value::as_str).map(str::to_owned),
                user.get("last_name").and_then(Value::as_str).map(str::to_owned),
            );
            if let Some(n) = name {
                view.entry("name").or_insert(Value::String(n));
            }
        }
        if let Some(org) = &body.organization_id {
            view.entry("org_id").or_insert(Value::String(org.clone()));
        }
        let identity = claims::identity(&view, &self.inner.settings.mapping)?;
        if let Some(user) = &body.user {
            claims.insert("user".into(), user.clone());
        }
        Ok((identity, claims))
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<UpstreamTokens, UpstreamError> {
        let r = self.resolve().await?;
        let body = oauth::refresh(
            &self.inner.token_http,
            &self.inner.settings.creds,
            &self.token_endpoint(&r),
            refresh_token,
        )
        .await?;
        Ok(oauth::upstream_tokens(&body, Some(refresh_token)))
    }
}
