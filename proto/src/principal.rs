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
    /// The organization (WorkOS `org_id`, `organization`, Entra `tid`).
    #[serde(default)]
    pub organization: Option<String>,
    /// A person, or a machine acting for itself (a `client_credentials` token).
    #[serde(default)]
    pub kind: SubjectKind,
}

/// Whom a token speaks for ([`crate::auth::SUBJECT_KIND_CLAIM`] in our tokens; other
/// issuers' markers are read by the gateway).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    /// A person who logged in.
    #[default]
    User,
    /// A client acting for itself: nobody logged in.
    Machine,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::User => crate::auth::SUBJECT_KIND_USER,
            SubjectKind::Machine => crate::auth::SUBJECT_KIND_MACHINE,
        }
    }
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

    /// Whether the caller is a person (not a machine client acting for itself).
    pub fn is_user(&self) -> bool {
        self.kind == SubjectKind::User
    }

    /// What a session is bound to: issuer, subject and OAuth client. Another client
    /// of the same user (another app holding its own token) is another session owner.
    pub fn binding(&self) -> String {
        format!("{}#{}#{}", self.iss, self.sub, self.client_id.as_deref().unwrap_or(""))
    }
}
