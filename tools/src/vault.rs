//! What the tools need from the auth-service's token vault, without knowing how it
//! is reached: this crate never touches NATS, so the worker implements
//! [`TokenVault`] over [`proto::auth::VAULT_TOKEN`] and hands it to
//! [`crate::McpServer::with_vault`]; tests implement it in memory.
//!
//! An [`UpstreamToken`] is the user's access token at the identity provider. It is
//! never logged and never returned to the MCP client: its `Debug` is redacted, and
//! tools only read what they need from it (`whoAmI` reads the `aud` claim).

use std::{future::Future, pin::Pin};

use proto::{Principal, auth::VaultReply};

/// The future a [`TokenVault`] returns.
pub type VaultFuture<'a> = Pin<Box<dyn Future<Output = Result<UpstreamToken, VaultError>> + Send + 'a>>;

/// Where a tool gets the upstream access token of the caller.
pub trait TokenVault: Send + Sync {
    /// The current upstream access token of the user behind `principal`'s grant.
    fn upstream_token<'a>(&'a self, principal: &'a Principal) -> VaultFuture<'a>;

    /// A refreshed token, after the current one was refused downstream (HTTP 401).
    fn refreshed_token<'a>(&'a self, principal: &'a Principal) -> VaultFuture<'a> {
        self.upstream_token(principal)
    }
}

/// The user's current access token at the upstream identity provider.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamToken {
    pub access_token: String,
    pub token_type: String,
    /// Seconds since the epoch, when the upstream said.
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for UpstreamToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamToken")
            .field("access_token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why there is no upstream token. The messages are short enough to show a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// The caller's token names no auth-service grant (another issuer's token).
    #[error("no upstream token")]
    NoGrant,
    /// The vault keeps no upstream token for this grant and subject.
    #[error("not found")]
    NotFound,
    /// The grant was revoked.
    #[error("revoked")]
    Revoked,
    /// The vault or the upstream failed; try again later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The vault did not answer in time.
    #[error("timed out")]
    TimedOut,
    /// No auth-service replica listens on the vault subject.
    #[error("no responders")]
    NoResponders,
}

impl VaultError {
    /// A few words for a user, without the detail of [`VaultError::Unavailable`]
    /// (which may quote the upstream's error).
    pub fn short(&self) -> &'static str {
        match self {
            Self::NoGrant => "no upstream token",
            Self::NotFound => "not found",
            Self::Revoked => "revoked",
            Self::Unavailable(_) => "unavailable",
            Self::TimedOut => "timed out",
            Self::NoResponders => "no responders",
        }
    }

    /// Whether asking again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::TimedOut | Self::NoResponders)
    }
}

/// The vault's answer as a result.
pub fn from_reply(reply: VaultReply) -> Result<UpstreamToken, VaultError> {
    match reply {
        VaultReply::Token {
            access_token,
            token_type,
            expires_at,
        } => Ok(UpstreamToken {
            access_token,
            token_type,
            expires_at,
        }),
        VaultReply::NotFound => Err(VaultError::NotFound),
        VaultReply::Revoked => Err(VaultError::Revoked),
        VaultReply::Unavailable { message } => Err(VaultError::Unavailable(message)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn replies_map_to_results_and_debug_hides_the_token() {
        let token = from_reply(VaultReply::Token {
            access_token: "upstream-secret-zz9".into(),
            token_type: "Bearer".into(),
            expires_at: Some(7),
        })
        .unwrap();
        assert_eq!(token.expires_at, Some(7));
        assert!(!format!("{token:?}").contains("upstream-secret-zz9"));
        assert_eq!(from_reply(VaultReply::NotFound), Err(VaultError::NotFound));
        assert_eq!(from_reply(VaultReply::Revoked), Err(VaultError::Revoked));
        let e = from_reply(VaultReply::Unavailable {
            message: "upstream down".into(),
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "unavailable: upstream down");
        assert_eq!(e.short(), "unavailable");
        assert!(e.is_transient());
        assert!(!VaultError::Revoked.is_transient());
    }
}
