//! The identity provider behind the auth-service: where a person actually logs in.
//!
//! One [`Upstream`] per deployment, chosen by `AUTH_UPSTREAM`: `static` (users in a
//! file, the local default), `oidc` (any OpenID provider by discovery), the presets
//! `workos`, `cloudflare-access`, `pingone`, `entra`, and `github` (OAuth 2 without
//! OIDC). The OAuth server ([`crate::flow`]) only sees this interface:
//!
//! 1. [`Upstream::begin`] — where to send the browser, plus per-login secrets (PKCE
//!    verifier, nonce) that the flow keeps server-side in the pending login;
//! 2. [`Upstream::complete`] — the callback's `code` exchanged and verified into an
//!    [`Identity`] (one principal shape for every provider) and upstream tokens;
//! 3. [`Upstream::refresh`] — for the token vault.
//!
//! The static-users provider has no remote side: `begin` points at the auth-service's
//! own `/login` page and [`StaticUsers::verify`] checks the password there.
//!
//! Never log a token, a password or an ID token.
//!
//! Layout: [`config`] (settings and [`UpstreamArgs::build`]), `oidc` (discovery and
//! the presets), `github`, `static_users`, and underneath `oauth` (the `oauth2`
//! crate: authorization URL, PKCE, code exchange, refresh), `verify` (the provider's
//! JWTs checked with the shared `jwt-verify` crate, plus OIDC's `azp` and `nonce`),
//! `claims` (claims to [`Identity`]) and `http` (URL rules, bounded GETs, the
//! no-redirect client for token requests).

mod claims;
pub mod config;
mod github;
mod http;
mod oauth;
mod oidc;
mod static_users;
#[cfg(test)]
mod tests;
mod verify;

use serde::{Deserialize, Serialize};

pub use config::UpstreamArgs;
pub use github::GitHubProvider;
pub use oidc::{OidcProvider, Preset};
pub use static_users::{StaticUsers, hash_password};

/// The person, mapped from whatever the provider returns into one shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Stable, unique within this deployment's upstream (GitHub: the numeric id).
    pub sub: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub permissions: Vec<String>,
    pub groups: Vec<String>,
    pub org: Option<String>,
}

/// Tokens the upstream issued for this user (kept encrypted by the vault).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamTokens {
    pub access_token: String,
    pub token_type: String,
    pub refresh_token: Option<String>,
    /// Seconds since the epoch.
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for UpstreamTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTokens")
            .field("token_type", &self.token_type)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Secrets of one login attempt, kept server-side between `begin` and `complete`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginSecrets {
    pub pkce_verifier: Option<String>,
    pub nonce: Option<String>,
}

impl std::fmt::Debug for LoginSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginSecrets(<redacted>)")
    }
}

/// Where the browser goes next and what to remember.
#[derive(Debug, Clone)]
pub struct LoginStart {
    pub redirect_to: String,
    pub secrets: LoginSecrets,
}

/// A completed upstream login.
#[derive(Debug, Clone)]
pub struct Completed {
    pub identity: Identity,
    /// `None` for the static-users provider.
    pub tokens: Option<UpstreamTokens>,
    /// The raw claims (ID token and/or userinfo), stored encrypted in the vault and
    /// shown by `whoAmI`; never put in our access tokens.
    pub claims: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The provider sent the user back with an error (e.g. `access_denied`).
    #[error("identity provider returned {error}")]
    Denied { error: String, description: Option<String> },
    /// The provider's answer failed a check (signature, iss, aud, nonce, exp, ...).
    #[error("identity provider response rejected: {0}")]
    Invalid(String),
    /// The provider could not be reached or answered unexpectedly.
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
    /// Refresh token refused (`invalid_grant`): the grant is dead.
    #[error("identity provider refused the refresh token")]
    InvalidGrant,
    /// This provider cannot do that (e.g. refresh for static users).
    #[error("not supported by this identity provider")]
    Unsupported,
}

/// The configured identity provider (one per deployment). Cheap to clone.
#[derive(Debug, Clone)]
pub enum Upstream {
    Static(StaticUsers),
    /// Generic OIDC and the presets (WorkOS, Cloudflare Access, PingOne, Entra).
    Oidc(OidcProvider),
    GitHub(GitHubProvider),
}

/// The query of the provider's redirect to our `/callback` (RFC 6749 §4.1.2,
/// RFC 9207 `iss`). `state` is matched to the pending login by the flow.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    pub iss: Option<String>,
}

impl Upstream {
    /// The `AUTH_UPSTREAM` value: `static`, `oidc`, `workos`, `cloudflare-access`,
    /// `pingone`, `entra` or `github`.
    pub fn kind(&self) -> &'static str {
        match self {
            Upstream::Static(_) => "static",
            Upstream::Oidc(p) => p.preset().kind(),
            Upstream::GitHub(_) => "github",
        }
    }

    /// The users file, for the `/login` page (static provider only).
    pub fn static_users(&self) -> Option<&StaticUsers> {
        match self {
            Upstream::Static(u) => Some(u),
            _ => None,
        }
    }

    /// Where to send the browser: the provider's authorization endpoint with
    /// `state`, `redirect_uri=callback_url`, the scopes, PKCE S256 (a fresh verifier)
    /// and, for OpenID providers, a fresh `nonce`. The returned secrets stay
    /// server-side until [`Upstream::complete`]. The static provider has no such
    /// redirect (`Unsupported`): the flow shows its own `/login` page.
    pub async fn begin(&self, state: &str, callback_url: &str) -> Result<LoginStart, UpstreamError> {
        match self {
            Upstream::Static(_) => Err(UpstreamError::Unsupported),
            Upstream::Oidc(p) => p.begin(state, callback_url).await,
            Upstream::GitHub(p) => p.begin(state, callback_url).await,
        }
    }

    /// The callback's checks before the code is used: an `error` from the provider
    /// becomes [`UpstreamError::Denied`] (with a sanitised code), an RFC 9207 `iss`
    /// that is not our issuer is refused (mix-up defence), and a missing code is
    /// invalid. Returns the code for [`Upstream::complete`].
    pub fn callback_code<'a>(&self, params: &'a CallbackParams) -> Result<&'a str, UpstreamError> {
        if let Some(error) = &params.error {
            return Err(UpstreamError::Denied {
                error: oauth::error_code(error),
                description: params
                    .error_description
                    .as_deref()
                    .map(|d| d.chars().filter(|c| !c.is_control()).take(200).collect()),
            });
        }
        if let (Upstream::Oidc(p), Some(iss)) = (self, &params.iss)
            && p.issuer().is_some_and(|ours| ours != iss)
        {
            return Err(UpstreamError::Invalid("callback comes from another issuer".into()));
        }
        params
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| UpstreamError::Invalid("callback has no code".into()))
    }

    /// Exchange the callback's `code` (with the login's PKCE verifier) and establish
    /// who logged in: the ID token is verified (signature from the provider's JWKS,
    /// `iss`, `aud`/`azp`, `nonce`, `exp`/`iat`); GitHub's user comes from its API.
    pub async fn complete(
        &self,
        code: &str,
        callback_url: &str,
        secrets: &LoginSecrets,
    ) -> Result<Completed, UpstreamError> {
        match self {
            Upstream::Static(_) => Err(UpstreamError::Unsupported),
            Upstream::Oidc(p) => p.complete(code, callback_url, secrets).await,
            Upstream::GitHub(p) => p.complete(code, callback_url, secrets).await,
        }
    }

    /// New upstream tokens for the vault. `invalid_grant` → [`UpstreamError::InvalidGrant`]
    /// (the grant is dead); network trouble, 5xx, 429 → [`UpstreamError::Unavailable`]
    /// (try later). A provider that does not rotate refresh tokens gets the old one back.
    pub async fn refresh(&self, refresh_token: &str) -> Result<UpstreamTokens, UpstreamError> {
        match self {
            Upstream::Static(_) => Err(UpstreamError::Unsupported),
            Upstream::Oidc(p) => p.refresh(refresh_token).await,
            Upstream::GitHub(p) => p.refresh(refresh_token).await,
        }
    }
}
