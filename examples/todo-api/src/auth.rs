//! Bearer tokens: who is calling, and may they read or write.
//!
//! A token is accepted when it is a JWT whose unverified `iss` is one of the allowed
//! issuers (no key is fetched for any other), whose `typ` is absent, `JWT` or
//! `at+jwt`, and which `jwt-verify` accepts: signed by a key of that issuer's JWKS
//! (found by discovery, cached), not expired, `aud` containing the API identifier, a
//! non-empty `sub`. Scopes come from `scope` (space-separated) or `scp` (an array, or
//! a space-separated string, as Entra and Okta send it).
//!
//! The user is the pair (`iss`, `sub`), reduced to an [`Owner`] key. Nothing here
//! logs or returns a token or a claim's value.

use std::time::Duration;

use jwt_verify::{AudienceRule, CacheConfig, IssuerRule, KeyCache, KeySource, Policy, Token, VerifyError};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How long an issuer's keys are fresh (past it they are revalidated in the background).
pub const JWKS_CACHE_TTL: Duration = Duration::from_secs(300);
/// Longest bearer token looked at, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What a request needs the token to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Write,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "todo:read",
            Scope::Write => "todo:write",
        }
    }
}

/// Why a request was refused. The messages go to the client: they name no token content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a bearer token is required")]
    Missing,
    #[error("{0}")]
    Invalid(&'static str),
    #[error("token refused: {0}")]
    Refused(VerifyError),
    /// The issuer's keys could not be fetched (the token may be fine).
    #[error("the issuer's signing keys are unavailable")]
    KeysUnavailable,
    #[error("the token lacks the scope {}", .0.as_str())]
    InsufficientScope(Scope),
}

/// The user a request acts for: lowercase hex of SHA-256(`iss#sub`), first 32
/// characters. Safe as a KV key token; issuers never contain `#` (config checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(String);

impl Owner {
    pub fn new(iss: &str, sub: &str) -> Self {
        let digest = Sha256::digest(format!("{iss}#{sub}").as_bytes());
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks bearer tokens. Cheap to clone (the key cache is shared).
#[derive(Debug, Clone)]
pub struct Authenticator {
    keys: KeyCache,
    issuers: Vec<String>,
    audience: AudienceRule,
}

impl Authenticator {
    pub fn new(issuers: Vec<String>, api_identifier: &str, http: reqwest::Client) -> Self {
        Self {
            keys: KeyCache::new(http, CacheConfig::new(JWKS_CACHE_TTL)),
            issuers,
            audience: AudienceRule::Required(vec![api_identifier.to_owned()]),
        }
    }

    /// The owner, if the `Authorization` header value carries a valid token with `scope`.
    pub async fn authorize(&self, authorization: Option<&str>, scope: Scope) -> Result<Owner, AuthError> {
        let raw = bearer(authorization)?;
        let token = Token::parse(raw).map_err(AuthError::Refused)?;
        let iss = token
            .unverified_issuer()
            .map_err(AuthError::Refused)?
            .filter(|iss| self.issuers.contains(iss))
            .ok_or(AuthError::Refused(VerifyError::WrongIssuer))?;
        if !typ_accepted(token.header().typ.as_deref()) {
            return Err(AuthError::Invalid("the token is not an access token (typ)"));
        }
        let issuer = IssuerRule::Exact(vec![iss.clone()]);
        let policy = Policy {
            issuer: &issuer,
            audience: &self.audience,
            required_claims: &[],
        };
        let claims = self
            .keys
            .verify(&token, &KeySource::Issuer(iss.clone()), &policy)
            .await
            .map_err(|e| match e {
                VerifyError::Keys(_) => AuthError::KeysUnavailable,
                e => AuthError::Refused(e),
            })?;
        if !has_scope(&claims, scope) {
            return Err(AuthError::InsufficientScope(scope));
        }
        // jwt-verify checked that `sub` is a non-empty string.
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
        Ok(Owner::new(&iss, sub))
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(authorization: Option<&str>) -> Result<&str, AuthError> {
    let value = authorization.map(str::trim).unwrap_or_default();
    if value.is_empty() {
        return Err(AuthError::Missing);
    }
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Basic, DPoP, ...: no bearer credentials offered.
        return Err(AuthError::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Invalid("empty bearer token"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Invalid("bearer token too long"));
    }
    Ok(token)
}

/// Absent, `JWT`, or RFC 9068's `at+jwt` (also `application/at+jwt`), in any case.
fn typ_accepted(typ: Option<&str>) -> bool {
    typ.is_none_or(|t| {
        let t = t.to_ascii_lowercase();
        matches!(t.as_str(), "jwt" | "at+jwt" | "application/at+jwt")
    })
}

fn has_scope(claims: &jwt_verify::Claims, scope: Scope) -> bool {
    ["scope", "scp"].iter().any(|name| match claims.get(*name) {
        Some(Value::String(s)) => s.split_whitespace().any(|s| s == scope.as_str()),
        Some(Value::Array(a)) => a.iter().any(|s| s.as_str() == Some(scope.as_str())),
        _ => false,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn owners_are_per_issuer_and_subject() {
        let a = Owner::new("https://a", "alice");
        assert_eq!(a.as_str().len(), 32);
        assert!(
            a.as_str()
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(a, Owner::new("https://a", "alice"));
        assert_ne!(a, Owner::new("https://b", "alice"));
        assert_ne!(a, Owner::new("https://a", "bob"));
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer(None), Err(AuthError::Missing));
        assert_eq!(bearer(Some("  ")), Err(AuthError::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(AuthError::Missing));
        assert!(matches!(bearer(Some("Bearer ")), Err(AuthError::Invalid(_))));
        assert_eq!(bearer(Some("bearer  a.b.c ")), Ok("a.b.c"));
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert!(matches!(bearer(Some(&long)), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn typ_values() {
        for ok in [
            None,
            Some("JWT"),
            Some("at+jwt"),
            Some("AT+JWT"),
            Some("application/at+jwt"),
        ] {
            assert!(typ_accepted(ok), "{ok:?}");
        }
        for bad in [Some("id_token+jwt"), Some("logout+jwt"), Some("")] {
            assert!(!typ_accepted(bad), "{bad:?}");
        }
    }

    #[test]
    fn scopes_from_scope_or_scp() {
        let claims = |v: Value| v.as_object().unwrap().clone();
        assert!(has_scope(&claims(json!({"scope": "openid todo:read"})), Scope::Read));
        assert!(!has_scope(&claims(json!({"scope": "openid todo:read"})), Scope::Write));
        assert!(!has_scope(&claims(json!({"scope": "todo:readwrite"})), Scope::Read));
        assert!(has_scope(&claims(json!({"scp": ["todo:write"]})), Scope::Write));
        assert!(has_scope(&claims(json!({"scp": "todo:write todo:read"})), Scope::Read));
        assert!(!has_scope(&claims(json!({"scp": [1, 2]})), Scope::Read));
        assert!(!has_scope(&claims(json!({})), Scope::Read));
    }
}
