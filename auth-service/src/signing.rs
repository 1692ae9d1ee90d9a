//! The access-token signing keys, shared by every replica through the `auth_keys`
//! bucket and rotated with overlap.
//!
//! The key set is one KV document, newest key last; private keys are sealed with the
//! vault key ([`crate::crypto::Sealer`]). Every `key_rotation` one replica adds a new
//! key (compare-and-swap, so two replicas never both rotate) and drops keys that
//! cannot have signed an unexpired token (a newer key existed for longer than the
//! access-token lifetime). A new key is published `publish_lead` before it signs
//! anything (`AUTH_KEY_PUBLISH_LEAD`, longer than a replica's reload interval plus a
//! gateway's JWKS cache lifetime), so every replica serves it in `/jwks.json` and every
//! gateway has fetched it before the first token that names it exists: no gateway
//! refuses a fresh token at a rotation. Tokens are signed with the newest key that has
//! been published that long (the first key ever signs at once); `/jwks.json` serves all
//! kept keys. Replicas reload the set every [`RELOAD_INTERVAL`]; a gateway seeing an
//! unknown `kid` still refetches the JWKS.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::crypto::Sealer;
use crate::key::{self, SigningKey};
use crate::store::{Bucket, Cas, StoreError};

/// KV key of the key set.
pub const KEYSET_KEY: &str = "keyset";
/// How often a replica rereads the key set (and rotates when due).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(30);
/// Extra time a retired key stays published beyond the token lifetime (clock skew,
/// gateway JWKS caches).
pub const RETIRE_MARGIN: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored signing key {kid} cannot be opened: {reason}")]
    Key { kid: String, reason: String },
    #[error("no signing key")]
    NoKey,
    #[error("cannot sign: {0}")]
    Sign(String),
    #[error("key set kept changing under us")]
    Contended,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    alg: String,
    created_at: u64,
    /// PKCS#8 PEM, sealed with context `auth_keys/<kid>`.
    sealed_pem: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KeySet {
    keys: Vec<StoredKey>,
}

struct Loaded {
    /// Newest last.
    keys: Vec<(SigningKey, u64)>,
    /// Index in `keys` of the key new tokens are signed with.
    signing: usize,
    jwks: serde_json::Value,
}

/// The signing keys of this replica's view.
#[derive(Clone)]
pub struct SigningKeys {
    bucket: Bucket,
    sealer: Sealer,
    rotation: Duration,
    publish_lead: Duration,
    access_ttl: Duration,
    dev_key: Option<SigningKey>,
    loaded: Arc<RwLock<Loaded>>,
}

impl SigningKeys {
    /// Load the key set, creating or rotating it when due. A new key signs once it
    /// has been published for `publish_lead` (shorter than `rotation`).
    pub async fn open(
        bucket: Bucket,
        sealer: Sealer,
        rotation: Duration,
        publish_lead: Duration,
        access_ttl: Duration,
        dev_key: Option<SigningKey>,
    ) -> Result<Self, SigningError> {
        let this = Self {
            bucket,
            sealer,
            rotation,
            publish_lead,
            access_ttl,
            dev_key,
            loaded: Arc::new(RwLock::new(Loaded {
                keys: Vec::new(),
                signing: 0,
                jwks: serde_json::json!({ "keys": [] }),
            })),
        };
        this.reload(crate::unix_now()).await?;
        Ok(this)
    }

    /// Reread the set; add a key when the newest is older than the rotation period
    /// (or there is none) and drop retired keys. Call every [`RELOAD_INTERVAL`].
    pub async fn reload(&self, now: u64) -> Result<(), SigningError> {
        for _ in 0..5 {
            let current = self.bucket.get::<KeySet>(KEYSET_KEY).await?;
            let (mut set, revision) = match current {
                Some((set, rev)) => (set, Some(rev)),
                None => (KeySet::default(), None),
            };
            let newest = set.keys.last().map(|k| k.created_at);
            let due = newest.is_none_or(|c| now >= c.saturating_add(self.rotation.as_secs()));
            let retired = retired(&set, now, self.publish_lead, self.access_ttl);
            if !due && retired == 0 {
                self.install(&set, now)?;
                return Ok(());
            }
            set.keys.drain(..retired);
            if due {
                let pem = key::generate_pem();
                let key =
                    SigningKey::from_pem(pem.as_bytes(), "generated".as_ref()).map_err(|e| SigningError::Key {
                        kid: "new".into(),
                        reason: e.to_string(),
                    })?;
                let kid = key.kid().to_owned();
                let sealed_pem = self
                    .sealer
                    .seal(&format!("auth_keys/{kid}"), pem.as_bytes())
                    .map_err(|e| SigningError::Key {
                        kid: kid.clone(),
                        reason: e.to_string(),
                    })?;
                set.keys.push(StoredKey {
                    kid,
                    alg: "EdDSA".into(),
                    created_at: now,
                    sealed_pem,
                });
            }
            let written = match revision {
                Some(rev) => self.bucket.update(KEYSET_KEY, &set, rev).await?,
                None => self.bucket.create(KEYSET_KEY, &set).await?,
            };
            if let Cas::Done(_) = written {
                if due {
                    tracing::info!(
                        kid = set.keys.last().map(|k| k.kid.as_str()).unwrap_or(""),
                        "rotated the signing key"
                    );
                }
                self.install(&set, now)?;
                return Ok(());
            }
            // Another replica rotated first: read theirs.
        }
        Err(SigningError::Contended)
    }

    fn install(&self, set: &KeySet, now: u64) -> Result<(), SigningError> {
        let mut keys = Vec::with_capacity(set.keys.len());
        for k in &set.keys {
            let pem = self
                .sealer
                .open(&format!("auth_keys/{}", k.kid), &k.sealed_pem)
                .map_err(|e| SigningError::Key {
                    kid: k.kid.clone(),
                    reason: e.to_string(),
                })?;
            let key = SigningKey::from_pem(&pem, "stored".as_ref()).map_err(|e| SigningError::Key {
                kid: k.kid.clone(),
                reason: e.to_string(),
            })?;
            keys.push((key, k.created_at));
        }
        let mut jwks: Vec<serde_json::Value> = keys
            .iter()
            .rev()
            .filter_map(|(k, _)| serde_json::to_value(k.jwk()).ok())
            .collect();
        if let Some(dev) = &self.dev_key
            && let Ok(v) = serde_json::to_value(dev.jwk())
        {
            jwks.push(v);
        }
        let signing = signing_index(set, now, self.publish_lead);
        let mut loaded = self.loaded.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        *loaded = Loaded {
            keys,
            signing,
            jwks: serde_json::json!({ "keys": jwks }),
        };
        Ok(())
    }

    /// The JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        self.read().jwks.clone()
    }

    /// The key new tokens are signed with: the newest one published for at least
    /// `publish_lead` at the last reload.
    pub fn current(&self) -> Result<SigningKey, SigningError> {
        let loaded = self.read();
        loaded
            .keys
            .get(loaded.signing)
            .map(|(k, _)| k.clone())
            .ok_or(SigningError::NoKey)
    }

    /// The published key with this `kid` (for introspection and revocation of our
    /// own access tokens).
    pub fn by_kid(&self, kid: &str) -> Option<SigningKey> {
        let loaded = self.read();
        loaded
            .keys
            .iter()
            .map(|(k, _)| k)
            .chain(self.dev_key.iter())
            .find(|k| k.kid() == kid)
            .cloned()
    }

    pub fn kids(&self) -> Vec<String> {
        self.read().keys.iter().map(|(k, _)| k.kid().to_owned()).collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.loaded.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Which key signs at `now`: the newest published for at least `lead`; the oldest
/// when none has been (the very first key signs at once).
fn signing_index(set: &KeySet, now: u64, lead: Duration) -> usize {
    set.keys
        .iter()
        .rposition(|k| now >= k.created_at.saturating_add(lead.as_secs()))
        .unwrap_or(0)
}

/// How many of the oldest keys no unexpired token can carry: key `i` is retired
/// when key `i+1` has been signing (published for `lead`) for longer than the token
/// lifetime plus a margin.
fn retired(set: &KeySet, now: u64, lead: Duration, access_ttl: Duration) -> usize {
    let keep_for = lead.as_secs() + access_ttl.as_secs() + RETIRE_MARGIN.as_secs();
    let mut n = 0;
    for pair in set.keys.windows(2) {
        if now >= pair[1].created_at.saturating_add(keep_for) {
            n += 1;
        } else {
            break;
        }
    }
    n
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key(created_at: u64) -> StoredKey {
        StoredKey {
            kid: format!("k{created_at}"),
            alg: "EdDSA".into(),
            created_at,
            sealed_pem: String::new(),
        }
    }

    #[test]
    fn keys_retire_only_after_their_successor_outlived_a_token() {
        let ttl = Duration::from_secs(900);
        let lead = Duration::from_secs(60);
        let keep = 60 + 900 + RETIRE_MARGIN.as_secs();
        let set = KeySet {
            keys: vec![key(0), key(1000)],
        };
        assert_eq!(retired(&set, 1000, lead, ttl), 0);
        assert_eq!(retired(&set, 1000 + keep - 1, lead, ttl), 0);
        assert_eq!(retired(&set, 1000 + keep, lead, ttl), 1);
        let set = KeySet {
            keys: vec![key(0), key(10), key(5000)],
        };
        assert_eq!(retired(&set, 5000, lead, ttl), 1, "the newest and its predecessor stay");
        assert_eq!(retired(&KeySet { keys: vec![key(0)] }, u64::MAX, lead, ttl), 0);
    }

    #[test]
    fn a_new_key_signs_only_after_it_was_published_for_the_lead() {
        let lead = Duration::from_secs(360);
        assert_eq!(
            signing_index(&KeySet { keys: vec![key(1000)] }, 1000, lead),
            0,
            "the first key signs at once"
        );
        let set = KeySet {
            keys: vec![key(0), key(1000)],
        };
        assert_eq!(signing_index(&set, 1000, lead), 0, "published, not yet signing");
        assert_eq!(signing_index(&set, 1359, lead), 0);
        assert_eq!(signing_index(&set, 1360, lead), 1);
    }
}
