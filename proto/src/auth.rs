//! What the auth-service shares with gateways and workers over NATS: the revocation
//! bucket the gateways watch, the claim that names a grant, and the token-vault
//! request/reply.
//!
//! | name | written by | read by |
//! |---|---|---|
//! | KV [`REVOCATION_BUCKET`]: `grant.<gid>` / `token.<jti>` → [`Revocation`] | auth-service | every gateway (watch) |
//! | [`VAULT_TOKEN`] request [`VaultRequest`] → [`VaultReply`] | worker | auth-service (queue [`VAULT_QUEUE`]) |

use serde::{Deserialize, Serialize};

use crate::subjects::token;

/// Paths the auth-service serves on the public origin. A gateway with
/// `GATEWAY_AUTH_UPSTREAM` forwards these (and anything below the two well-known
/// prefixes) so one origin is both the MCP resource and the issuer; the Helm ingress
/// routes the same list.
pub const PUBLIC_PATHS: &[&str] = &[
    "/authorize",
    "/token",
    "/register",
    "/revoke",
    "/introspect",
    "/jwks.json",
    "/consent",
    "/login",
    "/callback",
];
/// Prefixes of the metadata documents (RFC 8414 inserts the issuer path after them).
pub const PUBLIC_PREFIXES: &[&str] = &[
    "/.well-known/oauth-authorization-server",
    "/.well-known/openid-configuration",
];

/// Version of [`Revocation`], [`VaultRequest`] and [`VaultReply`].
pub const AUTH_WIRE_VERSION: u16 = 1;

/// Access-token claim naming the grant the token belongs to (opaque id, no personal
/// data). Revoking the grant revokes every token carrying it.
pub const GRANT_CLAIM: &str = "gid";

/// Access-token claim saying whom our issuer's token speaks for:
/// [`SUBJECT_KIND_USER`] (someone logged in) or [`SUBJECT_KIND_MACHINE`] (a machine
/// client's `client_credentials` token, `sub` = its client id).
pub const SUBJECT_KIND_CLAIM: &str = "sub_kind";
pub const SUBJECT_KIND_USER: &str = "user";
pub const SUBJECT_KIND_MACHINE: &str = "machine";

/// JetStream KV bucket of revocations. Entries live [`REVOCATION_MAX_AGE_SECS`]; that
/// must exceed the longest access-token lifetime so a gateway that starts late still
/// learns of every revocation of a token that has not expired.
pub const REVOCATION_BUCKET: &str = "auth_revocations";
/// Max age of a revocation entry (seconds): 24 h.
pub const REVOCATION_MAX_AGE_SECS: u64 = 24 * 3600;
/// Size limit of the revocations bucket (both services create it with this).
pub const REVOCATION_MAX_BYTES: i64 = 256 * 1024 * 1024;

/// Key of a revoked grant.
pub fn revoked_grant_key(grant_id: &str) -> String {
    format!("grant.{}", token(grant_id))
}

/// Key of one revoked access token, by its `jti`.
pub fn revoked_token_key(jti: &str) -> String {
    format!("token.{}", token(jti))
}

/// A revocation: tokens of this grant (or this `jti`) are refused until `until`
/// (seconds since the epoch; after that they have expired anyway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub v: u16,
    pub until: u64,
    /// Why, for logs: `revoked`, `code_replay`, `refresh_reuse`, `upstream_invalid_grant`.
    pub reason: String,
}

/// Subject of the vault's "current upstream access token" service.
pub const VAULT_TOKEN: &str = "auth.vault.token";
/// Queue group of the auth-service replicas answering [`VAULT_TOKEN`].
pub const VAULT_QUEUE: &str = "auth-vault";

/// A worker asks for the upstream (identity provider) access token of the user
/// behind `grant_id`. `sub` must be the grant's subject: the worker sends what the
/// gateway verified (`iss` and `sub` of the principal), so a token of another issuer,
/// or a confused caller, cannot read another user's upstream token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultRequest {
    pub v: u16,
    pub grant_id: String,
    pub iss: String,
    pub sub: String,
    /// The token the vault gave was refused downstream (HTTP 401): refresh it even
    /// if it does not look expired (once; the tool then gives up).
    #[serde(default)]
    pub refresh: bool,
}

/// The vault's answer. Never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VaultReply {
    Token {
        access_token: String,
        token_type: String,
        /// Seconds since the epoch, when the upstream said.
        expires_at: Option<u64>,
    },
    /// No upstream token is kept for this grant (or the subject does not match).
    NotFound,
    /// The grant was revoked (by the user, or the upstream refused its refresh token).
    Revoked,
    /// The upstream could not be reached or answered an error; try again later.
    Unavailable { message: String },
}

impl std::fmt::Debug for VaultReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VaultReply::Token { expires_at, .. } => f
                .debug_struct("Token")
                .field("access_token", &"<redacted>")
                .field("expires_at", expires_at)
                .finish(),
            VaultReply::NotFound => f.write_str("NotFound"),
            VaultReply::Revoked => f.write_str("Revoked"),
            VaultReply::Unavailable { message } => f.debug_struct("Unavailable").field("message", message).finish(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_subject_safe() {
        assert_eq!(revoked_grant_key("g_1-A"), "grant.g_1-A");
        assert_eq!(revoked_token_key("a.b"), "token.x612e62");
    }

    #[test]
    fn wire_round_trips_and_debug_hides_the_token() {
        let reply = VaultReply::Token {
            access_token: "secret-upstream".into(),
            token_type: "Bearer".into(),
            expires_at: Some(5),
        };
        let bytes = rmp_serde::to_vec_named(&reply).unwrap();
        assert_eq!(rmp_serde::from_slice::<VaultReply>(&bytes).unwrap(), reply);
        assert!(!format!("{reply:?}").contains("secret-upstream"));
        let r = Revocation {
            v: AUTH_WIRE_VERSION,
            until: 9,
            reason: "revoked".into(),
        };
        let bytes = rmp_serde::to_vec_named(&r).unwrap();
        assert_eq!(rmp_serde::from_slice::<Revocation>(&bytes).unwrap(), r);
    }
}
