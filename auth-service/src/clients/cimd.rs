//! Client ID Metadata Documents (MCP 2025-11-25 authorization, "Client ID Metadata
//! Documents"; draft-ietf-oauth-client-id-metadata-document).
//!
//! A client id that is an https URL with a path (no fragment, no credentials, no dot
//! segments, in normal form) names a JSON document describing the client. We fetch
//! it with the SSRF-guarded [`GuardedClient`] (no redirects, public addresses only,
//! [`CIMD_MAX_BYTES`] at most — the size the MCP specification suggests), require
//! `200`, a JSON content type, a JSON object whose `client_id` is the URL exactly,
//! no client secret of any kind, and then apply the registration rules
//! ([`super::metadata`]). The outcome is cached in memory per replica: successes for
//! the response's `Cache-Control: max-age` clamped to [[`CIMD_MIN_TTL`],
//! [`CIMD_MAX_TTL`]] ([`CIMD_DEFAULT_TTL`] without one; `no-store`/`no-cache` get the
//! minimum), failures for [`CIMD_NEGATIVE_TTL`], so a flood of authorize requests
//! naming one URL costs one fetch. At most [`CIMD_MAX_CONCURRENT_FETCHES`] fetches run
//! at once; a request waiting for a slot re-reads the cache first, so concurrent
//! requests for one URL usually share a fetch, and gives up (503) after
//! [`CIMD_QUEUE_TIMEOUT`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::Url;
use serde_json::Value;

use super::metadata::{self, Origin, clip};
use super::{ClientError, ClientRecord, Clients, now_secs};
use crate::net::NetError;

/// Largest metadata document read (the MCP specification suggests 5 KB).
pub const CIMD_MAX_BYTES: usize = 5 * 1024;
/// Shortest time a fetched document is kept.
pub const CIMD_MIN_TTL: Duration = Duration::from_secs(60);
/// Longest time a fetched document is kept, whatever its `max-age`.
pub const CIMD_MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a document without `Cache-Control: max-age` is kept.
pub const CIMD_DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);
/// How long a failure (fetch or validation) is remembered.
pub const CIMD_NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// Most documents (and failures) held at once.
pub const CIMD_CACHE_MAX_ENTRIES: usize = 1024;
/// Most fetches in flight at once, across all URLs.
pub const CIMD_MAX_CONCURRENT_FETCHES: usize = 16;
/// Longest wait for a fetch slot before answering 503 (a flood of distinct URLs
/// must not queue requests for minutes).
pub const CIMD_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether this client id is meant as a metadata-document URL (registered ids never
/// contain `:`).
pub fn is_url_client_id(client_id: &str) -> bool {
    client_id.contains(':')
}

/// Check the shape of a metadata-document client id (draft §3): https (plain http
/// only when `allow_http`, for tests), a path other than `/`, no fragment, no user
/// or password, no `.`/`..` segments, and written in normal form (what the URL
/// parser would print), so the string compared with the document's `client_id` is
/// the one fetched.
pub fn parse_client_id_url(client_id: &str, allow_http: bool) -> Result<Url, String> {
    if client_id.contains('#') {
        return Err("client id url must not have a fragment".into());
    }
    let url = Url::parse(client_id).map_err(|_| "client id is not a url".to_owned())?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        _ => return Err("client id url must use https".into()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("client id url must not contain credentials".into());
    }
    let raw_path = client_id
        .split_once("://")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("");
    let raw_path = raw_path.split(['?']).next().unwrap_or("");
    let dot_segment = raw_path.split('/').any(|seg| {
        let seg = seg.to_ascii_lowercase().replace("%2e", ".");
        seg == "." || seg == ".."
    });
    if dot_segment {
        return Err("client id url must not contain dot segments".into());
    }
    if url.path() == "/" || url.path().is_empty() {
        return Err("client id url must have a path".into());
    }
    if url.as_str() != client_id {
        return Err("client id url is not in normal form (lower-case scheme and host, no default port)".into());
    }
    Ok(url)
}

#[derive(Clone)]
struct Entry {
    outcome: Result<Arc<ClientRecord>, String>,
    expires: Instant,
}

/// Fetched documents and recent failures, per replica.
pub(crate) struct Cache {
    entries: Mutex<HashMap<String, Entry>>,
    fetches: tokio::sync::Semaphore,
    /// Fetches made (tests).
    #[cfg(test)]
    pub(crate) fetch_count: std::sync::atomic::AtomicUsize,
}

impl Cache {
    pub(crate) fn new() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            fetches: tokio::sync::Semaphore::new(CIMD_MAX_CONCURRENT_FETCHES),
            #[cfg(test)]
            fetch_count: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn lookup(&self, key: &str, now: Instant) -> Option<Result<Arc<ClientRecord>, String>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(key).filter(|e| e.expires > now).map(|e| e.outcome.clone())
    }

    fn insert(&self, key: &str, outcome: Result<Arc<ClientRecord>, String>, expires: Instant, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if !entries.contains_key(key) && entries.len() >= CIMD_CACHE_MAX_ENTRIES {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= CIMD_CACHE_MAX_ENTRIES
                && let Some(first) = entries.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| k.clone())
            {
                entries.remove(&first);
            }
        }
        entries.insert(key.to_owned(), Entry { outcome, expires });
    }
}

/// How long to keep a document served with these headers.
pub fn cache_ttl(headers: &reqwest::header::HeaderMap) -> Duration {
    let mut max_age: Option<u64> = None;
    let mut no_cache = false;
    for value in headers.get_all(reqwest::header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',').map(str::trim) {
            let lower = directive.to_ascii_lowercase();
            if lower == "no-store" || lower == "no-cache" {
                no_cache = true;
            } else if let Some(n) = lower.strip_prefix("max-age=") {
                max_age = n.trim_matches('"').parse().ok().or(max_age);
            }
        }
    }
    if no_cache {
        return CIMD_MIN_TTL;
    }
    match max_age {
        Some(secs) => Duration::from_secs(secs).clamp(CIMD_MIN_TTL, CIMD_MAX_TTL),
        None => CIMD_DEFAULT_TTL,
    }
}

fn is_json_content_type(headers: &reqwest::header::HeaderMap) -> bool {
    let Some(ct) = headers.get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl Clients {
    /// The client a metadata-document URL describes (see the module docs).
    pub(super) async fn metadata_document(&self, client_id: &str) -> Result<ClientRecord, ClientError> {
        let url = parse_client_id_url(client_id, self.config.allow_private_metadata).map_err(|reason| {
            tracing::info!(reason = %reason, "client id url refused");
            ClientError::MetadataDocument(reason)
        })?;
        let cache = &self.documents;
        let outcome = match cache.lookup(client_id, Instant::now()) {
            Some(hit) => hit,
            None => {
                let _permit = match tokio::time::timeout(CIMD_QUEUE_TIMEOUT, cache.fetches.acquire()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => return Err(ClientError::Unavailable("fetch limiter closed".into())),
                    Err(_) => {
                        tracing::warn!("metadata document fetches saturated");
                        return Err(ClientError::Unavailable("too many metadata document fetches".into()));
                    }
                };
                match cache.lookup(client_id, Instant::now()) {
                    Some(hit) => hit,
                    None => {
                        let (outcome, ttl) = match self.fetch_document(&url, client_id).await {
                            Ok((record, ttl)) => (Ok(Arc::new(record)), ttl),
                            Err(reason) => {
                                tracing::info!(client_id = %clip(client_id), reason = %reason, "client metadata document refused");
                                (Err(reason), CIMD_NEGATIVE_TTL)
                            }
                        };
                        let now = Instant::now();
                        cache.insert(client_id, outcome.clone(), now + ttl, now);
                        outcome
                    }
                }
            }
        };
        outcome
            .map(|record| (*record).clone())
            .map_err(ClientError::MetadataDocument)
    }

    async fn fetch_document(&self, url: &Url, client_id: &str) -> Result<(ClientRecord, Duration), String> {
        #[cfg(test)]
        self.documents
            .fetch_count
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let fetched = self
            .http
            .get(url, "application/json", CIMD_MAX_BYTES)
            .await
            .map_err(|e| match e {
                NetError::TooLarge(n) => format!("document is larger than {n} bytes"),
                NetError::NotPublic => "its host has no public address".to_owned(),
                other => other.to_string(),
            })?;
        if fetched.status != 200 {
            return Err(format!("fetching it returned HTTP {} (200 required)", fetched.status));
        }
        if !is_json_content_type(&fetched.headers) {
            return Err("content type must be application/json".into());
        }
        let record = document_record(client_id, &fetched.body, &self.config.supported_scopes, now_secs())?;
        Ok((record, cache_ttl(&fetched.headers)))
    }
}

/// The client a fetched document (the body of a 200 with a JSON content type)
/// describes: a JSON object whose `client_id` is its URL exactly, with no client
/// secret, and valid client metadata. The refusal is the reason shown to the user.
pub fn document_record(client_id: &str, body: &[u8], scopes: &[String], now: u64) -> Result<ClientRecord, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| "document is not valid JSON".to_owned())?;
    let Some(obj) = doc.as_object() else {
        return Err("document must be a JSON object".into());
    };
    if obj.get("client_id").and_then(Value::as_str) != Some(client_id) {
        return Err("client_id in the document does not equal its url".into());
    }
    if obj.contains_key("client_secret") || obj.contains_key("client_secret_expires_at") {
        return Err("a metadata document must not contain a client secret".into());
    }
    let validated = metadata::validate(&doc, Origin::MetadataDocument, scopes).map_err(|e| e.description())?;
    Ok(ClientRecord::from_validated(
        client_id.to_owned(),
        None,
        validated,
        now,
        true,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn client_id_url_shape() {
        let ok = |s: &str| parse_client_id_url(s, false).is_ok();
        assert!(ok("https://app.example/oauth/client.json"));
        assert!(ok("https://app.example:8443/client"));
        assert!(ok("https://app.example/client?v=1"));
        for bad in [
            "http://app.example/client",
            "https://app.example",
            "https://app.example/",
            "https://app.example/client#x",
            "https://user:pw@app.example/client",
            "https://app.example/a/../client",
            "https://app.example/a/./client",
            "https://app.example/a/%2e%2e/client",
            "https://app.example/a/%2E/client",
            "https://App.Example/client",
            "https://app.example:443/client",
            "HTTPS://app.example/client",
            "ftp://app.example/client",
            "urn:example:client",
        ] {
            assert!(!ok(bad), "{bad}");
        }
        assert!(parse_client_id_url("http://127.0.0.1:8080/client", true).is_ok());
        assert!(is_url_client_id("https://a/b") && !is_url_client_id("c_0123"));
    }

    #[test]
    fn cache_ttl_is_bounded() {
        use reqwest::header::{CACHE_CONTROL, HeaderMap, HeaderValue};
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(cache_ttl(&HeaderMap::new()), CIMD_DEFAULT_TTL);
        assert_eq!(cache_ttl(&h("public, max-age=600")), Duration::from_secs(600));
        assert_eq!(cache_ttl(&h("max-age=5")), CIMD_MIN_TTL);
        assert_eq!(cache_ttl(&h("max-age=31536000")), CIMD_MAX_TTL);
        assert_eq!(cache_ttl(&h("no-store")), CIMD_MIN_TTL);
        assert_eq!(cache_ttl(&h("max-age=600, no-cache")), CIMD_MIN_TTL);
        assert_eq!(cache_ttl(&h("max-age=abc")), CIMD_DEFAULT_TTL);
    }

    #[test]
    fn json_content_types() {
        use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(is_json_content_type(&h("application/json")));
        assert!(is_json_content_type(&h("application/json; charset=utf-8")));
        assert!(is_json_content_type(&h("application/client-metadata+json")));
        assert!(!is_json_content_type(&h("text/html")));
        assert!(!is_json_content_type(&h("text/json")));
        assert!(!is_json_content_type(&HeaderMap::new()));
    }
}
