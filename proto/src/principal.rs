//! The authenticated caller, as validated by the gateway.

use serde::{Deserialize, Serialize};

/// Who is calling: built by the gateway from a validated access token and carried
/// in every envelope. Never contains the token itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Token issuer (`iss`).
    pub iss: String,
    /// Subject (`sub`), unique within the issuer.
    pub sub: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// OAuth scopes granted to the token.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Permissions claimed by the identity provider (`permissions` claim).
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The OAuth client the token was issued to (`client_id` or `azp`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Token expiry, seconds since the epoch.
    #[serde(default)]
    pub expires_at: u64,
    /// The auth-service grant behind the token (`gid` claim), for the token vault.
    /// `None` for tokens of other issuers.
    #[serde(default)]
    pub grant_id: Option<String>,
}

impl Principal {
    /// The identity a session is bound to: issuer and subject together, so the
    /// same `sub` from two issuers is two people.
    pub fn identity(&self) -> String {
        format!("{}#{}", self.iss, self.sub)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    pub fn has_permission(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }
}
