//! The provider's signing keys and the check of a JWT it signed (ID token, or
//! WorkOS's access token).
//!
//! Keys come from one JWKS URL per provider, are cached for [`JWKS_TTL`], and are
//! fetched again when a token names a `kid` we do not have (key rotation) — at most
//! once per [`MIN_REFETCH_INTERVAL`], so tokens with random `kid`s cannot make us
//! hammer the provider. A failed fetch keeps the previous keys.
//!
//! Accepted algorithms: RS256, PS256, ES256, EdDSA (never `none`, never HMAC).

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use reqwest::Url;
use serde_json::{Map, Value};

use super::UpstreamError;
use super::http::{get_json, redacted};

/// How long fetched keys are used before they are fetched again.
pub const JWKS_TTL: Duration = Duration::from_secs(3600);
/// Shortest time between two fetches not forced by the TTL.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 60;
/// The algorithms an upstream token may be signed with.
pub const ALLOWED_ALGORITHMS: [Algorithm; 4] = [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA];

#[derive(Default)]
struct KeySet {
    /// The URL these keys came from (a provider's `jwks_uri` may change on rediscovery).
    url: Option<Url>,
    keys: Vec<Arc<Jwk>>,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
}

impl KeySet {
    fn fresh_for(&self, url: &Url) -> bool {
        self.url.as_ref() == Some(url) && self.fetched_at.is_some_and(|t| t.elapsed() < JWKS_TTL)
    }
    fn may_refetch(&self, min_interval: Duration) -> bool {
        self.attempted_at.is_none_or(|t| t.elapsed() >= min_interval)
    }
}

/// One provider's JWKS cache.
pub struct JwksCache {
    http: reqwest::Client,
    min_refetch: Duration,
    state: tokio::sync::RwLock<KeySet>,
    /// Single flight: one fetch at a time.
    flight: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache").finish_non_exhaustive()
    }
}

impl JwksCache {
    pub fn new(http: reqwest::Client) -> Self {
        Self::with_min_refetch(http, MIN_REFETCH_INTERVAL)
    }

    pub fn with_min_refetch(http: reqwest::Client, min_refetch: Duration) -> Self {
        Self {
            http,
            min_refetch,
            state: tokio::sync::RwLock::new(KeySet::default()),
            flight: tokio::sync::Mutex::new(()),
        }
    }

    /// The key for a token with header `kid`/`alg`, fetching when needed.
    async fn key_for(&self, url: &Url, kid: Option<&str>, alg: Algorithm) -> Result<Option<Arc<Jwk>>, UpstreamError> {
        {
            let state = self.state.read().await;
            if state.fresh_for(url) {
                if let Some(k) = select(&state.keys, kid, alg) {
                    return Ok(Some(k));
                }
                if !state.may_refetch(self.min_refetch) {
                    return Ok(None);
                }
            }
        }
        self.fetch(url).await?;
        let state = self.state.read().await;
        Ok(select(&state.keys, kid, alg))
    }

    async fn fetch(&self, url: &Url) -> Result<(), UpstreamError> {
        let waited_since = Instant::now();
        let _flight = self.flight.lock().await;
        {
            let state = self.state.read().await;
            let same_url = state.url.as_ref() == Some(url);
            // Someone fetched while we waited, or we fetched too recently.
            if same_url
                && (state.attempted_at.is_some_and(|t| t >= waited_since) || !state.may_refetch(self.min_refetch))
            {
                return if state.keys.is_empty() {
                    Err(UpstreamError::Unavailable("signing keys unavailable".into()))
                } else {
                    Ok(())
                };
            }
        }
        let result = get_json(&self.http, url, None, &[]).await;
        let mut state = self.state.write().await;
        if state.url.as_ref() != Some(url) {
            *state = KeySet {
                url: Some(url.clone()),
                ..KeySet::default()
            };
        }
        state.attempted_at = Some(Instant::now());
        match result.map(|doc| parse_jwks(&doc)) {
            Ok(Some(keys)) => {
                tracing::debug!(jwks = %redacted(url), keys = keys.len(), "fetched provider signing keys");
                state.keys = keys;
                state.fetched_at = state.attempted_at;
                Ok(())
            }
            Ok(None) => {
                tracing::warn!(jwks = %redacted(url), "provider jwks is not a key set");
                keep_or(&state, UpstreamError::Invalid("jwks is not a key set".into()))
            }
            Err(e) => {
                let err = e.into_upstream("jwks");
                tracing::warn!(jwks = %redacted(url), error = %err, stale_keys = state.keys.len(), "provider jwks fetch failed");
                keep_or(&state, err)
            }
        }
    }

    /// Verify a JWT's signature with the provider's keys and check its claims.
    pub async fn verify(
        &self,
        jwks_url: &Url,
        token: &str,
        expect: &Expect<'_>,
    ) -> Result<Map<String, Value>, UpstreamError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| UpstreamError::Invalid(format!("{} is not a jwt", expect.what)))?;
        if !ALLOWED_ALGORITHMS.contains(&header.alg) {
            return Err(UpstreamError::Invalid(format!(
                "{} is signed with {:?}, which is not accepted",
                expect.what, header.alg
            )));
        }
        let jwk = self
            .key_for(jwks_url, header.kid.as_deref(), header.alg)
            .await?
            .ok_or_else(|| UpstreamError::Invalid(format!("{} is signed with an unknown key", expect.what)))?;
        if !key_fits(&jwk, header.alg) {
            return Err(UpstreamError::Invalid(format!(
                "{} algorithm does not fit its key",
                expect.what
            )));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| UpstreamError::Invalid("provider key is unusable".into()))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp", "iss", "sub"]
            .into_iter()
            .map(str::to_owned)
            .collect::<HashSet<_>>();
        match &expect.issuer {
            IssuerRule::Exact(list) => validation.set_issuer(list),
            IssuerRule::SameOrigin(_) => validation.iss = None,
        }
        // `aud` and `azp` are checked below, together.
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
            UpstreamError::Invalid(match e.kind() {
                ErrorKind::ExpiredSignature => format!("{} expired", expect.what),
                ErrorKind::ImmatureSignature => format!("{} not yet valid", expect.what),
                ErrorKind::InvalidIssuer => format!("{} has the wrong issuer", expect.what),
                ErrorKind::InvalidAudience => {
                    format!("{} has the wrong audience", expect.what)
                }
                ErrorKind::InvalidSignature => {
                    format!("{} has a bad signature", expect.what)
                }
                ErrorKind::MissingRequiredClaim(c) => {
                    format!("{} lacks the {c} claim", expect.what)
                }
                _ => format!("{} is invalid", expect.what),
            })
        })?;
        let claims = data.claims;
        check_claims(&claims, expect)?;
        Ok(claims)
    }
}

fn keep_or(state: &KeySet, err: UpstreamError) -> Result<(), UpstreamError> {
    if state.keys.is_empty() { Err(err) } else { Ok(()) }
}

/// How `iss` is checked.
#[derive(Debug, Clone)]
pub enum IssuerRule {
    /// Exactly one of these strings.
    Exact(Vec<String>),
    /// Any https (or loopback http) URL on this origin: Cloudflare Access for SaaS,
    /// configured without discovery, whose issuer is a path on the team domain.
    SameOrigin(url::Origin),
}

/// What a token must say.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// "id token", "access token": for messages.
    pub what: &'static str,
    pub issuer: IssuerRule,
    /// `aud` must contain this; with several audiences `azp` must name it.
    pub audience: Option<&'a str>,
    /// A token without `aud` is accepted (WorkOS access tokens; their JWKS is
    /// per client already).
    pub audience_optional: bool,
    /// `nonce` must equal this.
    pub nonce: Option<&'a str>,
    /// `iat` must be present (ID tokens).
    pub require_iat: bool,
}

fn check_claims(claims: &Map<String, Value>, expect: &Expect<'_>) -> Result<(), UpstreamError> {
    let what = expect.what;
    let invalid = |m: String| Err(UpstreamError::Invalid(m));
    if let IssuerRule::SameOrigin(origin) = &expect.issuer {
        let ok = claims
            .get("iss")
            .and_then(Value::as_str)
            .and_then(|s| Url::parse(s).ok())
            .is_some_and(|u| super::http::url_problem(&u).is_none() && &u.origin() == origin);
        if !ok {
            return invalid(format!("{what} has the wrong issuer"));
        }
    }
    match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => return invalid(format!("{what} has no usable sub")),
    }
    if let Some(client_id) = expect.audience {
        let auds: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            None if expect.audience_optional => vec![client_id],
            _ => vec![],
        };
        if !auds.contains(&client_id) {
            return invalid(format!("{what} has the wrong audience"));
        }
        match claims.get("azp") {
            Some(Value::String(azp)) if azp == client_id => {}
            None if auds.len() == 1 => {}
            _ => return invalid(format!("{what} was issued to another party (azp)")),
        }
    }
    if let Some(nonce) = expect.nonce
        && claims.get("nonce").and_then(Value::as_str) != Some(nonce)
    {
        return invalid(format!("{what} nonce does not match"));
    }
    let now = super::oauth::now_secs();
    match claims.get("iat").and_then(Value::as_f64) {
        Some(iat) if iat > (now + LEEWAY_SECS) as f64 => {
            return invalid(format!("{what} was issued in the future"));
        }
        None if expect.require_iat => return invalid(format!("{what} lacks the iat claim")),
        _ => {}
    }
    Ok(())
}

/// Parse `{"keys": [...]}`, skipping keys this library cannot represent and keys
/// not meant for signatures.
fn parse_jwks(doc: &Value) -> Option<Vec<Arc<Jwk>>> {
    let keys = doc.get("keys")?.as_array()?;
    Some(
        keys.iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter(|k| !matches!(k.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature))
            .map(Arc::new)
            .collect(),
    )
}

/// Does this key verify `alg`? Its type must fit (RSA: RS256/PS256, EC P-256: ES256,
/// OKP Ed25519: EdDSA), and a key that declares an `alg` must declare this one.
pub fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    let type_fits = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(alg, Algorithm::RS256 | Algorithm::PS256),
        AlgorithmParameters::EllipticCurve(p) => p.curve == EllipticCurve::P256 && alg == Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) => p.curve == EllipticCurve::Ed25519 && alg == Algorithm::EdDSA,
        _ => false,
    };
    type_fits
        && match jwk.common.key_algorithm {
            None => true,
            Some(declared) => Algorithm::from_str(&declared.to_string()).ok() == Some(alg),
        }
}

fn select(keys: &[Arc<Jwk>], kid: Option<&str>, alg: Algorithm) -> Option<Arc<Jwk>> {
    match kid {
        Some(kid) => keys.iter().find(|k| k.common.key_id.as_deref() == Some(kid)).cloned(),
        // Without a kid only an unambiguous key will do.
        None => {
            let mut fitting = keys.iter().filter(|k| key_fits(k, alg));
            match (fitting.next(), fitting.next()) {
                (Some(k), None) => Some(k.clone()),
                _ => None,
            }
        }
    }
}
