//! Bearer-token validation for the gateway in resource-server mode.
//!
//! The gateway accepts JWT access tokens from the issuers in `allowed_issuers` (our
//! own auth-service among them), validated locally against each issuer's JWKS: no
//! round trip per request. This module owns the accept/refuse decision and the shape
//! of a refusal (RFC 6750 challenge with the RFC 9728 `resource_metadata` pointer,
//! JSON body with the SSO seed's error codes). It never logs, stores or echoes a token.
//!
//! Order of checks, so each refusal has one well-defined reason:
//! 1. `Authorization: Bearer <jwt>` present (scheme case-insensitive) — else
//!    `MISSING_AUTHORIZATION`; a malformed value is `INVALID_TOKEN`.
//! 2. The header parses and names one of [`jwt_verify::ALGORITHMS`] (RS256, PS256,
//!    ES256, EdDSA) — never `none`, never HS*.
//! 3. `iss` (read before verification only to pick the keys) is exactly one of
//!    `allowed_issuers` — else `INVALID_ISSUER`, and no network request is made; then
//!    `typ` says `at+jwt` unless the issuer is exempt (RFC 9068).
//! 4. The issuer's key for `kid` ([`jwt_verify::KeyCache`]: JWKS found by discovery,
//!    cached per issuer, stale keys served while revalidated in the background,
//!    refetched on an unknown `kid` at most once per [`jwt_verify::MIN_REFRESH_INTERVAL`])
//!    — a fetch failure with no cached keys is `ISSUER_UNAVAILABLE` (503); the key must
//!    fit the token's `alg`.
//! 5. Signature (`INVALID_SIGNATURE`), then `exp` (`TOKEN_EXPIRED`, [`LEEWAY`] of clock
//!    skew), `nbf` and `iat`, `aud` contains `resource` (`INVALID_AUDIENCE`), then the
//!    required scopes (`INSUFFICIENT_SCOPE`, 403) — after the revocation check: a token
//!    whose grant (`gid` claim) or `jti` the auth-service revoked is `INVALID_TOKEN`
//!    "token revoked" ([`revocation`]).
//!
//! Fetching keys and checking signature and claims is `jwt-verify`'s, shared with the
//! auth-service's upstream login; this module maps its [`VerifyError`] to [`AuthError`].
//!
//! A verified token is remembered until it expires (at most one JWKS cache
//! period); the revocation check is made again on every use, so revoking a grant
//! takes effect for tokens already seen as soon as the revocation arrives.

mod error;
pub mod revocation;

use std::sync::Arc;
use std::time::Duration;

use jwt_verify::{AudienceRule, CacheConfig, IssuerRule, KeyCache, KeySource, Policy, Token, VerifyError};

pub use error::AuthError;
pub use revocation::RevocationSet;

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds: `jwt-verify`'s one
/// leeway, which revocation entries and stream deadlines follow too.
pub const LEEWAY: u64 = jwt_verify::LEEWAY_SECS;
/// Longest bearer token accepted, in bytes (a cheap guard before any parsing).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// How the gateway validates tokens. Built once from the gateway's config.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Issuers whose tokens are accepted, compared as exact strings with `iss`.
    pub allowed_issuers: Vec<String>,
    /// This resource's identifier (RESOURCE_IDENTIFIER, e.g. `http://localhost:8788/mcp`);
    /// a token's `aud` must contain it.
    pub resource: String,
    /// The URL of this resource's RFC 9728 metadata, sent in every challenge.
    pub resource_metadata_url: String,
    /// How long an issuer's JWKS is used before it is fetched again.
    pub jwks_cache_ttl: Duration,
    /// Scopes every token must carry (empty: none).
    pub required_scopes: Vec<String>,
    /// Authorization servers advertised in the RFC 9728 metadata; empty means
    /// `allowed_issuers`.
    pub authorization_servers: Vec<String>,
    /// Allowed issuers whose access tokens need not say `typ: at+jwt` (RFC 9068 §2.1);
    /// every other issuer's tokens must (`GATEWAY_ISSUERS_WITHOUT_TYP`).
    pub issuers_without_typ: Vec<String>,
}

/// Validates bearer tokens. Cheap to clone; one instance is shared by all workers.
#[derive(Clone)]
pub struct Validator {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: AuthConfig,
    keys: KeyCache,
    /// `aud` must contain the resource or its origin (see [`legacy_resource`]).
    audience: AudienceRule,
    accepted: AcceptedTokens,
    revocations: RevocationSet,
}

/// The description of a refusal for a revoked grant or token.
pub const REVOKED: &str = "token revoked";

/// A token that passed every check but revocation and scope.
#[derive(Clone)]
struct Verified {
    principal: proto::Principal,
    jti: Option<String>,
}

/// Most tokens a gateway remembers as already verified.
pub const ACCEPTED_CACHE_MAX: usize = 16_384;

/// Tokens this gateway verified recently, so a client's every request does not
/// pay for a signature check. An entry lives until the token expires or, at the
/// latest, one JWKS cache period (so a key an issuer withdraws stops working
/// within that period, as with the key cache itself). Keys are the exact token
/// strings; nothing here is logged.
#[derive(Default)]
struct AcceptedTokens {
    map: std::sync::Mutex<std::collections::HashMap<String, (Verified, std::time::Instant)>>,
}

impl AcceptedTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (Verified, std::time::Instant)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, token: &str) -> Option<Verified> {
        let now = std::time::Instant::now();
        let unix = unix_now();
        let map = self.lock();
        let (verified, until) = map.get(token)?;
        (*until > now && verified.principal.expires_at > unix).then(|| verified.clone())
    }

    fn insert(&self, token: &str, verified: &Verified, ttl: Duration) {
        let now = std::time::Instant::now();
        let mut map = self.lock();
        if map.len() >= ACCEPTED_CACHE_MAX {
            let unix = unix_now();
            map.retain(|_, (v, until)| *until > now && v.principal.expires_at > unix);
            if map.len() >= ACCEPTED_CACHE_MAX {
                map.clear();
            }
        }
        map.insert(token.to_owned(), (verified.clone(), now + ttl));
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("allowed_issuers", &self.inner.cfg.allowed_issuers)
            .field("resource", &self.inner.cfg.resource)
            .finish_non_exhaustive()
    }
}

impl Validator {
    pub fn new(cfg: AuthConfig, http: reqwest::Client) -> Self {
        Self::with_min_refresh_interval(cfg, http, jwt_verify::MIN_REFRESH_INTERVAL)
    }

    /// As [`Validator::new`], with another floor between forced JWKS refetches
    /// (tests use zero to exercise key rotation without waiting).
    pub fn with_min_refresh_interval(cfg: AuthConfig, http: reqwest::Client, min_refresh_interval: Duration) -> Self {
        let keys = KeyCache::new(
            http,
            CacheConfig {
                min_refresh_interval,
                ..CacheConfig::new(cfg.jwks_cache_ttl)
            },
        );
        // The resource, or the origin that names the whole server (what clients
        // given the legacy /sse URL ask for; see `legacy_resource`).
        let audience = AudienceRule::Required(vec![cfg.resource.clone(), origin_of(&cfg.resource).to_owned()]);
        Self {
            inner: Arc::new(Inner {
                cfg,
                keys,
                audience,
                accepted: AcceptedTokens::default(),
                revocations: RevocationSet::default(),
            }),
        }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.inner.cfg
    }

    /// The revocations this validator honours; [`crate::revocations`] keeps them
    /// in step with the auth-service's bucket.
    pub fn revocations(&self) -> &RevocationSet {
        &self.inner.revocations
    }

    /// What a stream opened with the token in `authorization` (already validated into
    /// `principal`) re-checks while it is open: the token's expiry (with [`LEEWAY`])
    /// and the revocation of its grant or id.
    pub fn stream_auth(&self, authorization: Option<&str>, principal: &proto::Principal) -> crate::sse::StreamAuth {
        let jti = bearer_token(authorization)
            .ok()
            .and_then(|t| self.inner.accepted.get(t))
            .and_then(|v| v.jti);
        let grant = principal.grant_id.clone();
        let me = self.clone();
        crate::sse::StreamAuth {
            valid_until: principal.expires_at.saturating_add(LEEWAY),
            changes: self.inner.revocations.changes(),
            revoked: Box::new(move || {
                me.inner
                    .revocations
                    .is_revoked(grant.as_deref(), jti.as_deref(), unix_now())
            }),
        }
    }

    fn check_revoked(&self, verified: &Verified) -> Result<(), AuthError> {
        let revoked = self.inner.revocations.is_revoked(
            verified.principal.grant_id.as_deref(),
            verified.jti.as_deref(),
            unix_now(),
        );
        if revoked {
            Err(AuthError::InvalidToken(REVOKED.into()))
        } else {
            Ok(())
        }
    }

    /// Validate the value of an `Authorization` header (`None` when absent).
    pub async fn validate(&self, authorization: Option<&str>) -> Result<proto::Principal, AuthError> {
        if let Ok(token) = bearer_token(authorization)
            && let Some(verified) = self.inner.accepted.get(token)
        {
            return match self.check_revoked(&verified) {
                Ok(()) => Ok(verified.principal),
                Err(e) => {
                    tracing::debug!(code = e.code(), reason = %e, "bearer token refused");
                    Err(e)
                }
            };
        }
        let result = self.validate_inner(authorization).await;
        if let (Ok(verified), Ok(token)) = (&result, bearer_token(authorization)) {
            self.inner
                .accepted
                .insert(token, verified, self.inner.cfg.jwks_cache_ttl);
        }
        let result = result.map(|v| v.principal);
        match &result {
            Ok(p) => tracing::debug!(iss = %p.iss, sub = %p.sub, "bearer token accepted"),
            Err(e) => tracing::debug!(code = e.code(), reason = %e, "bearer token refused"),
        }
        result
    }

    /// The complete refusal for `err`, challenge with `resource_metadata` included, as
    /// an actix error (`return Err(validator.reject(e))`).
    pub fn reject(&self, err: AuthError) -> actix_web::Error {
        let response = err.to_response(Some(&self.inner.cfg.resource_metadata_url));
        actix_web::error::InternalError::from_response(err, response).into()
    }

    /// The complete refusal for `err` as a response.
    pub fn reject_response(&self, err: &AuthError) -> actix_web::HttpResponse {
        err.to_response(Some(&self.inner.cfg.resource_metadata_url))
    }

    /// The refusal on a legacy endpoint: its challenge names the legacy metadata.
    pub fn reject_legacy_response(&self, err: &AuthError) -> actix_web::HttpResponse {
        err.to_response(Some(&legacy_resource_metadata_url(&self.inner.cfg)))
    }

    async fn validate_inner(&self, authorization: Option<&str>) -> Result<Verified, AuthError> {
        let cfg = &self.inner.cfg;
        let raw = bearer_token(authorization)?;

        let token = Token::parse(raw).map_err(|e| map_verify_error(&e))?;

        // Read `iss` unverified, only to choose whose keys to verify with.
        let iss = token
            .unverified_issuer()
            .map_err(|_| AuthError::InvalidToken("malformed token claims".into()))?
            .ok_or(AuthError::InvalidIssuer)?;
        if !cfg.allowed_issuers.contains(&iss) {
            return Err(AuthError::InvalidIssuer);
        }
        // RFC 9068 §4: an access token says so in `typ`, so an ID token or another
        // JWT signed by the same issuer cannot be passed off as one.
        if !cfg.issuers_without_typ.contains(&iss) && !is_access_token_typ(token.header().typ.as_deref()) {
            return Err(AuthError::InvalidToken("token type is not at+jwt (RFC 9068)".into()));
        }

        let issuer = IssuerRule::Exact(vec![iss.clone()]);
        let policy = Policy {
            issuer: &issuer,
            audience: &self.inner.audience,
            required_claims: &[],
        };
        let claims = self
            .inner
            .keys
            .verify(&token, &KeySource::Issuer(iss.clone()), &policy)
            .await
            .map_err(|e| map_verify_error(&e))?;
        let claims = serde_json::Value::Object(claims);
        let principal = principal_from_claims(&iss, &claims)?;
        let verified = Verified {
            jti: str_claim(&claims, "jti"),
            principal,
        };
        self.check_revoked(&verified)?;
        let principal = &verified.principal;

        let missing: Vec<&String> = cfg.required_scopes.iter().filter(|s| !principal.has_scope(s)).collect();
        if !missing.is_empty() {
            return Err(AuthError::InsufficientScope(cfg.required_scopes.clone()));
        }
        Ok(verified)
    }
}

/// `at+jwt` or `application/at+jwt`, in any case (RFC 9068 §2.1, RFC 8725 §3.11).
pub fn is_access_token_typ(typ: Option<&str>) -> bool {
    typ.is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        t == "at+jwt" || t == "application/at+jwt"
    })
}

/// The token from `Authorization: Bearer <token>`; the scheme is case-insensitive.
fn bearer_token(authorization: Option<&str>) -> Result<&str, AuthError> {
    let value = authorization.map(str::trim).unwrap_or_default();
    if value.is_empty() {
        return Err(AuthError::MissingAuthorization);
    }
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Basic, DPoP, ...: no bearer credentials were offered.
        return Err(AuthError::MissingAuthorization);
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthError::InvalidToken("empty bearer token".into()));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::InvalidToken("bearer token too long".into()));
    }
    if token.split('.').count() != 3
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(AuthError::InvalidToken("bearer token is not a jwt".into()));
    }
    Ok(token)
}

/// `jwt-verify`'s refusal as the gateway's. Key-fetch details are logged there;
/// clients get no internals.
fn map_verify_error(err: &VerifyError) -> AuthError {
    let invalid = |m: &str| AuthError::InvalidToken(m.to_owned());
    match err {
        VerifyError::Malformed => invalid("malformed token"),
        VerifyError::UnsupportedAlgorithm(_) => invalid("unsupported token algorithm"),
        VerifyError::UnknownKid | VerifyError::BadSignature => AuthError::InvalidSignature,
        VerifyError::NoKid => invalid("token has no kid"),
        VerifyError::KeyMismatch => invalid("token algorithm does not match the signing key"),
        VerifyError::WeakKey => invalid("token is signed with a key too weak to trust"),
        VerifyError::UnusableKey => AuthError::IssuerUnavailable("issuer published an unusable key".into()),
        VerifyError::Keys(_) => AuthError::IssuerUnavailable("cannot fetch the issuer's signing keys".into()),
        VerifyError::Expired => AuthError::TokenExpired,
        VerifyError::NotYetValid => invalid("token is not yet valid"),
        VerifyError::IssuedInFuture => invalid("token is issued in the future"),
        VerifyError::WrongIssuer => AuthError::InvalidIssuer,
        VerifyError::WrongAudience => AuthError::InvalidAudience,
        VerifyError::MissingClaim(claim) => AuthError::InvalidToken(format!("token has no {claim} claim")),
        VerifyError::MalformedClaim(claim) => AuthError::InvalidToken(format!("token {claim} claim is malformed")),
    }
}

/// Build the principal from verified claims.
fn principal_from_claims(iss: &str, claims: &serde_json::Value) -> Result<proto::Principal, AuthError> {
    let sub = str_claim(claims, "sub")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AuthError::InvalidToken("token has no sub claim".into()))?;
    let scopes = match claims.get("scope") {
        Some(v) => string_list(v),
        None => claims.get("scp").map(string_list).unwrap_or_default(),
    };
    Ok(proto::Principal {
        iss: iss.to_owned(),
        sub,
        email: str_claim(claims, "email"),
        name: str_claim(claims, "name"),
        scopes,
        // WorkOS and our issuer say `permissions`; Entra (and others) app roles `roles`.
        permissions: claims
            .get("permissions")
            .or_else(|| claims.get("roles"))
            .map(string_list)
            .unwrap_or_default(),
        groups: claims.get("groups").map(string_list).unwrap_or_default(),
        client_id: str_claim(claims, "client_id").or_else(|| str_claim(claims, "azp")),
        expires_at: claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(0),
        grant_id: str_claim(claims, proto::auth::GRANT_CLAIM),
        organization: str_claim(claims, "org_id")
            .or_else(|| str_claim(claims, "organization"))
            .or_else(|| str_claim(claims, "tid")),
        kind: subject_kind(claims),
    })
}

/// Whether a token speaks for a person or for a machine acting for itself: our
/// issuer's `sub_kind`, Microsoft Entra's `idtyp: app`, Auth0's
/// `gty: client-credentials`. A token with none of these is taken as a user's (other
/// issuers' client-credentials tokens need one of these markers to be told apart).
fn subject_kind(claims: &serde_json::Value) -> proto::SubjectKind {
    let machine = str_claim(claims, proto::auth::SUBJECT_KIND_CLAIM).as_deref()
        == Some(proto::auth::SUBJECT_KIND_MACHINE)
        || str_claim(claims, "idtyp").as_deref() == Some("app")
        || str_claim(claims, "gty").as_deref() == Some("client-credentials");
    if machine {
        proto::SubjectKind::Machine
    } else {
        proto::SubjectKind::User
    }
}

fn str_claim(claims: &serde_json::Value, name: &str) -> Option<String> {
    claims.get(name).and_then(|v| v.as_str()).map(str::to_owned)
}

/// A space-separated string (`scope`) or an array of strings (`scp`, `permissions`).
fn string_list(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        serde_json::Value::Array(items) => items.iter().filter_map(|i| i.as_str()).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// This resource's RFC 9728 protected-resource metadata document.
/// The scheme and authority of a URL (`http://localhost:8788` of
/// `http://localhost:8788/mcp`); the input itself when it has no scheme.
pub fn origin_of(url: &str) -> &str {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host_len = rest.find('/').unwrap_or(rest.len());
            &url[..scheme.len() + 3 + host_len]
        }
        None => url,
    }
}

/// Paths of the legacy HTTP+SSE transport.
pub const LEGACY_PATHS: [&str; 2] = ["/sse", "/messages"];

/// The resource a client given a legacy URL (`/sse`) checks the metadata against:
/// the origin, a prefix of every endpoint, since MCP SDKs require the metadata's
/// resource to be a prefix of the URL they were given (RFC 9728 §3.3).
pub fn legacy_resource(cfg: &AuthConfig) -> &str {
    origin_of(&cfg.resource)
}

/// Where the legacy endpoints' metadata is (path-suffixed form, RFC 9728 §3.1).
pub fn legacy_resource_metadata_url(cfg: &AuthConfig) -> String {
    format!("{}/.well-known/oauth-protected-resource/sse", origin_of(&cfg.resource))
}

/// RFC 9728 metadata for the legacy endpoints: as [`protected_resource_metadata`]
/// with the origin as the resource.
pub fn legacy_protected_resource_metadata(cfg: &AuthConfig) -> serde_json::Value {
    let mut doc = protected_resource_metadata(cfg);
    doc["resource"] = serde_json::json!(legacy_resource(cfg));
    doc
}

pub fn protected_resource_metadata(cfg: &AuthConfig) -> serde_json::Value {
    let servers = if cfg.authorization_servers.is_empty() {
        &cfg.allowed_issuers
    } else {
        &cfg.authorization_servers
    };
    let mut doc = serde_json::json!({
        "resource": cfg.resource,
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
    });
    if !cfg.required_scopes.is_empty()
        && let Some(obj) = doc.as_object_mut()
    {
        obj.insert("scopes_supported".into(), serde_json::json!(cfg.required_scopes));
    }
    doc
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

#[cfg(test)]
mod accepted_tests {
    use super::*;

    fn principal(expires_at: u64) -> Verified {
        Verified {
            principal: proto::Principal {
                iss: "http://issuer".into(),
                sub: "alice".into(),
                expires_at,
                ..Default::default()
            },
            jti: None,
        }
    }

    #[test]
    fn remembered_until_expiry_or_ttl() {
        let cache = AcceptedTokens::default();
        cache.insert("t1", &principal(unix_now() + 60), Duration::from_secs(60));
        assert_eq!(cache.get("t1").map(|v| v.principal.sub), Some("alice".into()));
        assert!(cache.get("t2").is_none(), "unknown token");
        cache.insert("expired", &principal(unix_now() - 1), Duration::from_secs(60));
        assert!(cache.get("expired").is_none(), "token past exp");
        cache.insert("stale", &principal(unix_now() + 60), Duration::ZERO);
        assert!(cache.get("stale").is_none(), "entry past the JWKS cache period");
    }

    #[test]
    fn bounded() {
        let cache = AcceptedTokens::default();
        for i in 0..ACCEPTED_CACHE_MAX + 10 {
            cache.insert(&format!("t{i}"), &principal(unix_now() + 60), Duration::from_secs(60));
        }
        assert!(cache.lock().len() <= ACCEPTED_CACHE_MAX);
    }
}
