//! The provider's JWTs (ID tokens, WorkOS's access tokens), checked with `jwt-verify`:
//! keys from the provider's JWKS URL (cached for [`JWKS_TTL`], refetched on an unknown
//! `kid` at most once per [`jwt_verify::MIN_REFRESH_INTERVAL`], a failed fetch keeping
//! the old keys), the algorithm table, the signature, `exp`/`nbf`/`iat` with
//! [`jwt_verify::LEEWAY_SECS`], `iss`, `aud` and `sub`.
//!
//! What OpenID Connect adds for ID tokens is checked here (OIDC Core §3.1.3.7): with
//! several audiences `azp` must name us, and `azp`, when present, must be us; `nonce`
//! must be the login's. `jwt-verify`'s refusals become [`UpstreamError`]s: a key fetch
//! that may work later is `Unavailable`, everything else `Invalid`.

use std::time::Duration;

use jwt_verify::{AudienceRule, CacheConfig, IssuerRule, KeyCache, KeySource, Policy, Token, VerifyError};
use reqwest::Url;
use serde_json::{Map, Value};

use super::UpstreamError;
use super::http::USER_AGENT;

/// How long fetched keys are fresh; past it they are still used while they are
/// fetched again in the background.
pub const JWKS_TTL: Duration = Duration::from_secs(3600);

/// What a token must say.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// "id token", "access token": for messages.
    pub what: &'static str,
    pub issuer: &'a IssuerRule,
    /// Our client id: `aud` must contain it; with several audiences `azp` must name it.
    pub audience: &'a str,
    /// A token without `aud` is accepted (WorkOS access tokens; their JWKS is per
    /// client already).
    pub audience_optional: bool,
    /// `nonce` must equal this.
    pub nonce: Option<&'a str>,
    /// `iat` must be present (ID tokens).
    pub require_iat: bool,
}

/// One provider's signing keys. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProviderKeys {
    cache: KeyCache,
}

impl ProviderKeys {
    pub fn new(http: reqwest::Client) -> Self {
        Self::with_min_refetch(http, jwt_verify::MIN_REFRESH_INTERVAL)
    }

    pub fn with_min_refetch(http: reqwest::Client, min_refetch: Duration) -> Self {
        let config = CacheConfig {
            ttl: JWKS_TTL,
            min_refresh_interval: min_refetch,
            user_agent: Some(USER_AGENT.to_owned()),
        };
        Self {
            cache: KeyCache::new(http, config),
        }
    }

    /// Verify a JWT's signature with the keys at `jwks_url` and check its claims.
    pub async fn verify(
        &self,
        jwks_url: &Url,
        token: &str,
        expect: &Expect<'_>,
    ) -> Result<Map<String, Value>, UpstreamError> {
        let what = expect.what;
        let token = Token::parse(token).map_err(|e| rejected(what, &e))?;
        let accepted = vec![expect.audience.to_owned()];
        let audience = if expect.audience_optional {
            AudienceRule::IfPresent(accepted)
        } else {
            AudienceRule::Required(accepted)
        };
        let policy = Policy {
            issuer: expect.issuer,
            audience: &audience,
            required_claims: if expect.require_iat { &["iat"] } else { &[] },
        };
        let claims = self
            .cache
            .verify(&token, &KeySource::Jwks(jwks_url.clone()), &policy)
            .await
            .map_err(|e| rejected(what, &e))?;
        check_oidc_claims(&claims, expect)?;
        Ok(claims)
    }
}

/// `azp` and `nonce` (OIDC Core §3.1.3.7, steps 4, 5 and 11).
fn check_oidc_claims(claims: &Map<String, Value>, expect: &Expect<'_>) -> Result<(), UpstreamError> {
    let what = expect.what;
    let audiences = match claims.get("aud") {
        Some(Value::Array(a)) => a.iter().filter(|v| v.is_string()).count(),
        Some(_) => 1,
        None => 0,
    };
    match claims.get("azp") {
        Some(Value::String(azp)) if azp == expect.audience => {}
        None if audiences <= 1 => {}
        _ => {
            return Err(UpstreamError::Invalid(format!(
                "{what} was issued to another party (azp)"
            )));
        }
    }
    if let Some(nonce) = expect.nonce
        && claims.get("nonce").and_then(Value::as_str) != Some(nonce)
    {
        return Err(UpstreamError::Invalid(format!("{what} nonce does not match")));
    }
    Ok(())
}

/// A refusal of `jwt-verify` as an [`UpstreamError`]; `what` names the token.
fn rejected(what: &str, err: &VerifyError) -> UpstreamError {
    let invalid = |m: String| UpstreamError::Invalid(m);
    match err {
        VerifyError::Malformed => invalid(format!("{what} is not a jwt")),
        VerifyError::UnsupportedAlgorithm(alg) => {
            invalid(format!("{what} is signed with {alg:?}, which is not accepted"))
        }
        VerifyError::UnknownKid | VerifyError::NoKid => invalid(format!("{what} is signed with an unknown key")),
        VerifyError::KeyMismatch => invalid(format!("{what} algorithm does not fit its key")),
        VerifyError::WeakKey => invalid("provider key is too weak".into()),
        VerifyError::UnusableKey => invalid("provider key is unusable".into()),
        VerifyError::Keys(e) if e.is_transient() => UpstreamError::Unavailable(format!("jwks: {e}")),
        VerifyError::Keys(e) => invalid(format!("jwks: {e}")),
        VerifyError::BadSignature => invalid(format!("{what} has a bad signature")),
        VerifyError::Expired => invalid(format!("{what} expired")),
        VerifyError::NotYetValid => invalid(format!("{what} not yet valid")),
        VerifyError::IssuedInFuture => invalid(format!("{what} was issued in the future")),
        VerifyError::WrongIssuer => invalid(format!("{what} has the wrong issuer")),
        VerifyError::WrongAudience => invalid(format!("{what} has the wrong audience")),
        VerifyError::MissingClaim(claim) => invalid(format!("{what} lacks the {claim} claim")),
        VerifyError::MalformedClaim("sub") => invalid(format!("{what} has no usable sub")),
        VerifyError::MalformedClaim(claim) => invalid(format!("{what} has a malformed {claim} claim")),
    }
}
