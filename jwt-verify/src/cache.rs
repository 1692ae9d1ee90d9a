//! The key cache: one key set per [`KeySource`], kept for a TTL, refreshed without
//! making anyone wait who does not have to.
//!
//! - Nothing a cached key can verify ever waits on the source: past the TTL the cached
//!   keys are still served while one background task per source revalidates them
//!   (stale-while-revalidate).
//! - Only a token whose key is not cached waits for a fetch (key rotation, or the first
//!   token of a source), and at most [`FETCH_DEADLINE`] however many discovery
//!   locations are tried; an unknown-`kid` refetch holds no lock that readers of known
//!   keys need.
//! - One fetch per source at a time (single flight), and a fetch not forced by the TTL
//!   (an unknown `kid`, a retry after a failure) at most once per
//!   `min_refresh_interval` ([`MIN_REFRESH_INTERVAL`] outside tests): a flood of tokens
//!   with random `kid`s costs one fetch per source per interval.
//! - A failed fetch keeps the previous keys; its error is reported only while there
//!   are no keys at all.
//! - For an issuer, the `jwks_uri` found by discovery is reused within the TTL and
//!   discovered again past it.
//!
//! The callers bound the number of sources (the gateway's `allowed_issuers`, the
//! auth-service's one provider); the cache keeps at most [`MAX_SOURCES`] and forgets
//! the oldest beyond that (a provider whose `jwks_uri` changed leaves its old URL
//! behind).
//!
//! The background revalidation is a plain `tokio::spawn` that ends by itself within
//! [`FETCH_DEADLINE`]; nothing waits for it at shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::Jwk;
use reqwest::Url;

use crate::algorithms::{parse_jwks, select};
use crate::source::{Fetcher, KeySource, KeysError};

/// Shortest time between two fetches of one source's keys that were not forced by the
/// TTL (an unknown `kid`, or a retry after a failed fetch).
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Longest time one refresh (discovery plus JWKS) may take: a hanging source delays
/// only its own uncached tokens, and only this long.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(6);
/// Most sources one cache keeps.
pub const MAX_SOURCES: usize = 64;

/// How a [`KeyCache`] behaves. What differs between its users is here; everything
/// else is this crate's policy.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// How long fetched keys are fresh. Past it they are still served, and refreshed
    /// in the background.
    pub ttl: Duration,
    /// See [`MIN_REFRESH_INTERVAL`]; tests use zero to exercise rotation without waiting.
    pub min_refresh_interval: Duration,
    /// `User-Agent` sent with every request (none by default: the client's own).
    pub user_agent: Option<String>,
}

impl CacheConfig {
    /// Keys fresh for `ttl`, refetched at most once per [`MIN_REFRESH_INTERVAL`].
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            min_refresh_interval: MIN_REFRESH_INTERVAL,
            user_agent: None,
        }
    }
}

#[derive(Default)]
struct KeySet {
    keys: Vec<Arc<Jwk>>,
    jwks_uri: Option<Url>,
    /// When `keys` were fetched successfully.
    fetched_at: Option<Instant>,
    /// When a fetch was last attempted, successful or not.
    attempted_at: Option<Instant>,
    last_error: Option<KeysError>,
}

struct Entry {
    state: tokio::sync::RwLock<KeySet>,
    /// Single flight: one fetch per source at a time.
    refresh: tokio::sync::Mutex<()>,
    /// A background revalidation of stale keys is under way.
    revalidating: AtomicBool,
    /// Order of creation: the smallest is forgotten first.
    seq: u64,
}

impl Entry {
    fn new(seq: u64) -> Self {
        Self {
            state: tokio::sync::RwLock::new(KeySet::default()),
            refresh: tokio::sync::Mutex::new(()),
            revalidating: AtomicBool::new(false),
            seq,
        }
    }
}

#[derive(Default)]
struct Sources {
    map: HashMap<KeySource, Arc<Entry>>,
    created: u64,
}

/// Per-source key cache, shared by every task. Cheap to clone.
#[derive(Clone)]
pub struct KeyCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    fetcher: Fetcher,
    ttl: Duration,
    min_refresh_interval: Duration,
    sources: Mutex<Sources>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("ttl", &self.inner.ttl)
            .field("min_refresh_interval", &self.inner.min_refresh_interval)
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    pub fn new(http: reqwest::Client, config: CacheConfig) -> Self {
        Self {
            inner: Arc::new(CacheInner {
                fetcher: Fetcher {
                    http,
                    user_agent: config.user_agent,
                },
                ttl: config.ttl,
                min_refresh_interval: config.min_refresh_interval,
                sources: Mutex::new(Sources::default()),
            }),
        }
    }

    /// The key for a token from `source` with header `kid` and `alg` (chosen by
    /// [`select`]), or `None` when the source's current keys have none. A cached key
    /// is returned at once, stale or not (a stale set is revalidated in the
    /// background); otherwise the keys are fetched, unless that was tried within the
    /// refresh interval. An error only when there are no keys at all.
    pub async fn key_for(
        &self,
        source: &KeySource,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Option<Arc<Jwk>>, KeysError> {
        let inner = &self.inner;
        let entry = inner.entry(source);
        {
            let state = entry.state.read().await;
            if let Some(key) = select(&state.keys, kid, alg) {
                if !state.is_fresh(inner.ttl) {
                    self.revalidate(source, &entry);
                }
                return Ok(Some(key));
            }
            // Unknown kid (or no keys yet): a fetch is allowed only so often.
            if !state.may_refetch(inner.min_refresh_interval) {
                return state.outcome().map(|()| None);
            }
        }
        inner.refresh(source, &entry).await?;
        let state = entry.state.read().await;
        Ok(select(&state.keys, kid, alg))
    }

    /// Refresh `source`'s stale keys in a background task (one at a time per source).
    fn revalidate(&self, source: &KeySource, entry: &Arc<Entry>) {
        if entry.revalidating.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        let entry = entry.clone();
        let source = source.clone();
        tokio::spawn(async move {
            if let Err(err) = inner.refresh(&source, &entry).await {
                tracing::debug!(%source, error = %err, "background key revalidation failed");
            }
            entry.revalidating.store(false, Ordering::Release);
        });
    }
}

impl CacheInner {
    fn entry(&self, source: &KeySource) -> Arc<Entry> {
        let mut sources = self.sources.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = sources.map.get(source) {
            return entry.clone();
        }
        if sources.map.len() >= MAX_SOURCES
            && let Some(oldest) = sources.map.iter().min_by_key(|(_, e)| e.seq).map(|(k, _)| k.clone())
        {
            sources.map.remove(&oldest);
        }
        sources.created += 1;
        let entry = Arc::new(Entry::new(sources.created));
        sources.map.insert(source.clone(), entry.clone());
        entry
    }

    /// Fetch the source's keys unless another task just did, or a fetch failed too
    /// recently. A failed fetch keeps the previous keys (if any) usable.
    async fn refresh(&self, source: &KeySource, entry: &Entry) -> Result<(), KeysError> {
        let waited_since = Instant::now();
        let _flight = entry.refresh.lock().await;
        let jwks_uri = {
            let state = entry.state.read().await;
            // Another task fetched while we waited for the lock.
            if state.attempted_at.is_some_and(|t| t >= waited_since) {
                return state.outcome();
            }
            // Rate limit: neither unknown kids nor a failing source make us fetch
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
        let result = match tokio::time::timeout(FETCH_DEADLINE, self.fetch(source, jwks_uri)).await {
            Ok(result) => result,
            Err(_) => Err(KeysError::TimedOut),
        };
        let mut state = entry.state.write().await;
        state.attempted_at = Some(Instant::now());
        match result {
            Ok((uri, keys)) => {
                tracing::debug!(%source, keys = keys.len(), "fetched signing keys");
                state.keys = keys;
                state.jwks_uri = Some(uri);
                state.fetched_at = state.attempted_at;
                state.last_error = None;
                Ok(())
            }
            Err(err) => {
                tracing::warn!(%source, error = %err, stale_keys = state.keys.len(), "signing key fetch failed");
                state.last_error = Some(err.clone());
                if state.keys.is_empty() { Err(err) } else { Ok(()) }
            }
        }
    }

    async fn fetch(&self, source: &KeySource, jwks_uri: Option<Url>) -> Result<(Url, Vec<Arc<Jwk>>), KeysError> {
        let jwks_uri = match (source, jwks_uri) {
            (KeySource::Jwks(url), _) => url.clone(),
            (KeySource::Issuer(_), Some(uri)) => uri,
            (KeySource::Issuer(issuer), None) => self.fetcher.discover(issuer).await?,
        };
        let doc = self.fetcher.get_json(&jwks_uri).await?;
        let keys = parse_jwks(&doc).ok_or(KeysError::NotKeySet)?;
        Ok((jwks_uri, keys))
    }
}

impl KeySet {
    fn is_fresh(&self, ttl: Duration) -> bool {
        self.fetched_at.is_some_and(|t| t.elapsed() < ttl)
    }

    fn may_refetch(&self, min_interval: Duration) -> bool {
        self.attempted_at.is_none_or(|t| t.elapsed() >= min_interval)
    }

    fn outcome(&self) -> Result<(), KeysError> {
        match (&self.last_error, self.keys.is_empty()) {
            (Some(err), true) => Err(err.clone()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_bounded_and_the_oldest_is_forgotten() {
        let cache = KeyCache::new(reqwest::Client::new(), CacheConfig::new(Duration::from_secs(1)));
        let first = KeySource::Issuer("https://0".into());
        let kept = cache.inner.entry(&first);
        assert!(Arc::ptr_eq(&kept, &cache.inner.entry(&first)), "one entry per source");
        for i in 1..=MAX_SOURCES {
            cache.inner.entry(&KeySource::Issuer(format!("https://{i}")));
        }
        let sources = cache.inner.sources.lock().unwrap();
        assert_eq!(sources.map.len(), MAX_SOURCES);
        assert!(!sources.map.contains_key(&first));
        assert!(
            sources
                .map
                .contains_key(&KeySource::Issuer(format!("https://{MAX_SOURCES}")))
        );
    }
}
