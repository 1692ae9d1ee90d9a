//! Issuer signing keys: discovery (RFC 8414 / OpenID Connect Discovery), JWKS fetch, a
//! per-issuer cache with a TTL, and a rate-limited refetch when a token names a `kid`
//! we have not seen (key rotation).
//!
//! Nothing a known key can verify ever waits on an issuer: past the TTL the cached
//! keys are still served while one background task per issuer revalidates them
//! (stale-while-revalidate), and an unknown-`kid` refetch holds no lock that readers
//! of known keys need. Only a token whose key is not cached waits for a fetch, and
//! then at most [`FETCH_DEADLINE`].
//!
//! Only issuers from `allowed_issuers` ever reach this module, so the cache is bounded
//! by configuration, not by what callers send. A flood of tokens with random `kid`s
//! costs at most one JWKS fetch per issuer per [`MIN_REFRESH_INTERVAL`].

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use reqwest::Url;

/// Shortest time between two fetches of one issuer's keys that were not forced by
/// the TTL (an unknown `kid`, or a retry after a failed fetch).
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Timeout of one HTTP request to an issuer.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time one refresh (discovery plus JWKS) may take, however many discovery
/// locations are tried: a hanging issuer delays only its own uncached tokens, and
/// only this long.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(6);
/// Largest discovery document or JWKS we accept.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// Why keys could not be had from an issuer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("issuer url is invalid")]
    BadIssuerUrl,
    #[error("no discovery document found for issuer")]
    NoDiscovery,
    #[error("discovery document names another issuer")]
    IssuerMismatch,
    #[error("discovery document has no jwks_uri")]
    NoJwksUri,
    #[error("fetch of {url} failed: {reason}")]
    Fetch { url: String, reason: String },
    #[error("document at {0} is not valid json")]
    BadDocument(String),
}

/// The outcome of looking up the key for one token.
#[derive(Debug)]
pub enum KeyLookup {
    Found(Arc<Jwk>),
    /// The issuer's current key set has no key with this `kid` (or, without a `kid`,
    /// no single key usable with the algorithm).
    NotFound,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<Arc<Jwk>>,
    jwks_uri: Option<String>,
    /// When `keys` were fetched successfully.
    fetched_at: Option<Instant>,
    /// When a fetch was last attempted, successful or not.
    attempted_at: Option<Instant>,
    last_error: Option<JwksError>,
}

#[derive(Default)]
struct IssuerEntry {
    state: tokio::sync::RwLock<KeySet>,
    /// Single flight: one fetch per issuer at a time.
    refresh: tokio::sync::Mutex<()>,
    /// A background revalidation of stale keys is under way.
    revalidating: AtomicBool,
}

/// Per-issuer JWKS cache shared by every actix worker. Cheap to clone.
#[derive(Clone)]
pub struct JwksCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    http: reqwest::Client,
    ttl: Duration,
    min_refresh_interval: Duration,
    issuers: Mutex<HashMap<String, Arc<IssuerEntry>>>,
}

impl JwksCache {
    pub fn new(http: reqwest::Client, ttl: Duration, min_refresh_interval: Duration) -> Self {
        Self {
            inner: Arc::new(CacheInner {
                http,
                ttl,
                min_refresh_interval,
                issuers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The key for a token from `issuer` with header `kid` and `alg`. A cached key
    /// is returned at once, stale or not (a stale set is revalidated in the
    /// background); otherwise the keys are fetched, unless that was tried within
    /// the refetch interval.
    pub async fn key_for(&self, issuer: &str, kid: Option<&str>, alg: Algorithm) -> Result<KeyLookup, JwksError> {
        let inner = &self.inner;
        let entry = inner.entry(issuer);
        {
            let state = entry.state.read().await;
            if let Some(key) = select(&state.keys, kid, alg) {
                if !state.is_fresh(inner.ttl) {
                    self.revalidate(issuer, &entry);
                }
                return Ok(KeyLookup::Found(key));
            }
            // Unknown kid (or no keys yet): a fetch is allowed only so often.
            if !state.may_refetch(inner.min_refresh_interval) {
                return state.outcome().map(|()| KeyLookup::NotFound);
            }
        }
        inner.refresh(issuer, &entry).await?;
        let state = entry.state.read().await;
        Ok(match select(&state.keys, kid, alg) {
            Some(key) => KeyLookup::Found(key),
            None => KeyLookup::NotFound,
        })
    }

    /// Refresh `issuer`'s stale keys in a background task (one at a time per issuer).
    fn revalidate(&self, issuer: &str, entry: &Arc<IssuerEntry>) {
        if entry.revalidating.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        let entry = entry.clone();
        let issuer = issuer.to_owned();
        tokio::spawn(async move {
            if let Err(err) = inner.refresh(&issuer, &entry).await {
                tracing::debug!(issuer, error = %err, "background key revalidation failed");
            }
            entry.revalidating.store(false, Ordering::Release);
        });
    }
}

impl CacheInner {
    fn entry(&self, issuer: &str) -> Arc<IssuerEntry> {
        let mut map = match self.issuers.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(issuer.to_owned()).or_default().clone()
    }

    /// Fetch the issuer's keys unless another task just did, or a fetch failed
    /// too recently. A failed fetch keeps the previous keys (if any) usable.
    async fn refresh(&self, issuer: &str, entry: &IssuerEntry) -> Result<(), JwksError> {
        let waited_since = Instant::now();
        let _flight = entry.refresh.lock().await;
        let jwks_uri = {
            let state = entry.state.read().await;
            // Another task fetched while we waited for the lock.
            if state.attempted_at.is_some_and(|t| t >= waited_since) {
                return state.outcome();
            }
            // Rate limit: neither unknown kids nor a failing issuer make us fetch
            // more often than this.
            if !state.may_refetch(self.min_refresh_interval) {
                return state.outcome();
            }
            // Within the TTL the jwks_uri is reused; past it, discovery is redone too.
            if state.is_fresh(self.ttl) {
                state.jwks_uri.clone()
            } else {
                None
            }
        };
        let result = match tokio::time::timeout(FETCH_DEADLINE, self.fetch(issuer, jwks_uri)).await {
            Ok(result) => result,
            Err(_) => Err(JwksError::Fetch {
                url: issuer.to_owned(),
                reason: format!("no keys within {} s", FETCH_DEADLINE.as_secs()),
            }),
        };
        let mut state = entry.state.write().await;
        state.attempted_at = Some(Instant::now());
        match result {
            Ok((uri, keys)) => {
                tracing::debug!(issuer, keys = keys.len(), "fetched issuer keys");
                state.keys = keys;
                state.jwks_uri = Some(uri);
                state.fetched_at = state.attempted_at;
                state.last_error = None;
                Ok(())
            }
            Err(err) => {
                tracing::warn!(issuer, error = %err, stale_keys = state.keys.len(), "issuer key fetch failed");
                state.last_error = Some(err.clone());
                if state.keys.is_empty() { Err(err) } else { Ok(()) }
            }
        }
    }

    async fn fetch(&self, issuer: &str, jwks_uri: Option<String>) -> Result<(String, Vec<Arc<Jwk>>), JwksError> {
        let jwks_uri = match jwks_uri {
            Some(uri) => uri,
            None => self.discover(issuer).await?,
        };
        let doc = self.get_json(&jwks_uri).await?;
        let keys = parse_jwks(&doc).ok_or_else(|| JwksError::BadDocument(jwks_uri.clone()))?;
        Ok((jwks_uri, keys))
    }

    /// Find the issuer's `jwks_uri`, trying the well-known locations in order.
    async fn discover(&self, issuer: &str) -> Result<String, JwksError> {
        let mut last = JwksError::NoDiscovery;
        for url in discovery_urls(issuer)? {
            match self.get_json(&url).await {
                Ok(doc) => {
                    if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
                        // RFC 8414 §3.3: the issuer in the document must be exactly ours.
                        last = JwksError::IssuerMismatch;
                        continue;
                    }
                    return doc
                        .get("jwks_uri")
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                        .ok_or(JwksError::NoJwksUri);
                }
                Err(err) => {
                    tracing::debug!(issuer, url, error = %err, "discovery attempt failed");
                    last = err;
                }
            }
        }
        Err(last)
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, JwksError> {
        let fetch_err = |reason: String| JwksError::Fetch {
            url: url.to_owned(),
            reason,
        };
        let mut resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| fetch_err(without_url(&e)))?;
        if !resp.status().is_success() {
            return Err(fetch_err(format!("status {}", resp.status().as_u16())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fetch_err(without_url(&e)))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(fetch_err("document too large".to_owned()));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|_| JwksError::BadDocument(url.to_owned()))
    }
}

impl KeySet {
    fn is_fresh(&self, ttl: Duration) -> bool {
        self.fetched_at.is_some_and(|t| t.elapsed() < ttl)
    }

    fn may_refetch(&self, min_interval: Duration) -> bool {
        self.attempted_at.is_none_or(|t| t.elapsed() >= min_interval)
    }

    fn outcome(&self) -> Result<(), JwksError> {
        match (&self.last_error, self.keys.is_empty()) {
            (Some(err), true) => Err(err.clone()),
            _ => Ok(()),
        }
    }
}

fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    }
}

/// Where to look for an issuer's metadata, in order.
///
/// Without a path component: `<iss>/.well-known/openid-configuration`, then
/// `<iss>/.well-known/oauth-authorization-server`. With a path (`https://h/t`):
/// RFC 8414 §3.1 path insertion for both (`https://h/.well-known/openid-configuration/t`,
/// `https://h/.well-known/oauth-authorization-server/t`), plus OpenID Connect
/// Discovery's path appending (`https://h/t/.well-known/openid-configuration`), which
/// most OIDC providers (Keycloak realms, Entra tenants, Okta auth servers) use.
pub fn discovery_urls(issuer: &str) -> Result<Vec<String>, JwksError> {
    let url = Url::parse(issuer).map_err(|_| JwksError::BadIssuerUrl)?;
    if !matches!(url.scheme(), "http" | "https") || url.query().is_some() || url.fragment().is_some() {
        return Err(JwksError::BadIssuerUrl);
    }
    let path = url.path().trim_end_matches('/');
    let origin = url.origin().ascii_serialization();
    Ok(if path.is_empty() {
        vec![
            format!("{origin}/.well-known/openid-configuration"),
            format!("{origin}/.well-known/oauth-authorization-server"),
        ]
    } else {
        vec![
            format!("{origin}/.well-known/openid-configuration{path}"),
            format!("{origin}{path}/.well-known/openid-configuration"),
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
        ]
    })
}

/// Parse `{"keys": [...]}`, skipping keys this library cannot represent (an
/// encryption key with an unknown `alg` must not make the whole set unusable).
fn parse_jwks(doc: &serde_json::Value) -> Option<Vec<Arc<Jwk>>> {
    let keys = doc.get("keys")?.as_array()?;
    Some(
        keys.iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter(|k| !matches!(k.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature))
            .map(Arc::new)
            .collect(),
    )
}

/// The algorithm a key can verify, from its type and curve: `OKP/Ed25519` → EdDSA,
/// `EC/P-256` → ES256, `RSA` → RS256. Anything else (and every symmetric key) → `None`.
pub fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Some(Algorithm::EdDSA),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Some(Algorithm::ES256),
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        _ => None,
    }
}

/// Does this key verify tokens signed with `alg`? The key's type must fit, and a key
/// that declares its `alg` must declare exactly this one.
pub fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    if key_algorithm(jwk) != Some(alg) {
        return false;
    }
    match jwk.common.key_algorithm {
        None => true,
        Some(declared) => Algorithm::from_str(&declared.to_string()).ok() == Some(alg),
    }
}

fn select(keys: &[Arc<Jwk>], kid: Option<&str>, alg: Algorithm) -> Option<Arc<Jwk>> {
    match kid {
        // A kid names exactly one key; whether it fits `alg` is checked by the caller,
        // so a mismatch is reported as such rather than as an unknown kid.
        Some(kid) => keys.iter().find(|k| k.common.key_id.as_deref() == Some(kid)).cloned(),
        // No kid: only unambiguous when exactly one key fits the algorithm.
        None => {
            let mut fitting = keys.iter().filter(|k| key_fits(k, alg));
            match (fitting.next(), fitting.next()) {
                (Some(k), None) => Some(k.clone()),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn discovery_without_path() {
        assert_eq!(
            discovery_urls("https://id.example.com").unwrap(),
            vec![
                "https://id.example.com/.well-known/openid-configuration",
                "https://id.example.com/.well-known/oauth-authorization-server"
            ]
        );
        assert_eq!(
            discovery_urls("https://id.example.com/").unwrap()[0],
            "https://id.example.com/.well-known/openid-configuration"
        );
    }

    #[test]
    fn discovery_with_path() {
        assert_eq!(
            discovery_urls("https://id.example.com:8443/realms/dev").unwrap(),
            vec![
                "https://id.example.com:8443/.well-known/openid-configuration/realms/dev",
                "https://id.example.com:8443/realms/dev/.well-known/openid-configuration",
                "https://id.example.com:8443/.well-known/oauth-authorization-server/realms/dev"
            ]
        );
    }

    #[test]
    fn discovery_rejects_odd_issuers() {
        assert!(discovery_urls("ftp://x").is_err());
        assert!(discovery_urls("https://x/?a=b").is_err());
        assert!(discovery_urls("not a url").is_err());
    }

    #[test]
    fn key_fit_rules() {
        let ed: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "a"
        }))
        .unwrap();
        assert!(key_fits(&ed, Algorithm::EdDSA));
        assert!(!key_fits(&ed, Algorithm::ES256));
        assert!(!key_fits(&ed, Algorithm::HS256));
        let mut declared = ed.clone();
        declared.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::EdDSA);
        assert!(key_fits(&declared, Algorithm::EdDSA));
        declared.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::RS256);
        assert!(!key_fits(&declared, Algorithm::EdDSA));
        let oct: Jwk = serde_json::from_value(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})).unwrap();
        assert!(!key_fits(&oct, Algorithm::HS256));
    }

    #[test]
    fn jwks_parsing_skips_unusable_keys() {
        let doc = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "a"},
            {"kty": "RSA", "use": "enc", "alg": "RSA-OAEP-999", "n": "AQAB", "e": "AQAB", "kid": "b"},
            {"kty": "OKP", "crv": "Ed25519", "use": "enc", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "c"}
        ]});
        let keys = parse_jwks(&doc).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].common.key_id.as_deref(), Some("a"));
        assert!(parse_jwks(&serde_json::json!({"nokeys": []})).is_none());
    }
}
