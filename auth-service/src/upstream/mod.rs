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

use serde::{Deserialize, Serialize};

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
