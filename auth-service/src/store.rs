//! The auth-service's state, all of it in JetStream KV so any number of replicas can
//! serve any request. Values are JSON documents; secrets inside them are either
//! hashes (codes, refresh tokens, client secrets) or AEAD ciphertext
//! ([`crate::crypto`]) — never plain.
//!
//! | bucket | key | value | lifetime |
//! |---|---|---|---|
//! | `auth_clients` | client id | [`crate::clients::ClientRecord`] | [`CLIENT_IDLE_MAX_AGE`] since last use (touched daily) |
//! | `auth_pending` | login transaction id | [`crate::flow::Pending`] | [`PENDING_MAX_AGE`] |
//! | `auth_codes` | SHA-256 of the code | [`crate::flow::CodeRecord`] | [`CODE_MAX_AGE`] |
//! | `auth_grants` | grant id | [`crate::grants::Grant`] | [`GRANT_MAX_AGE`] since its last refresh |
//! | `auth_keys` | `keyset` | [`crate::signing::KeySet`] | forever |
//! | `auth_vault` | grant id | [`crate::vault::VaultEntry`] | [`GRANT_MAX_AGE`] |
//! | `auth_locks` | `refresh.<grant id>` | holder id | [`LOCK_MAX_AGE`] |
//! | `auth_revocations` | see [`proto::auth`] | [`proto::auth::Revocation`] | [`proto::auth::REVOCATION_MAX_AGE_SECS`] |
//!
//! Compare-and-swap (`create`, `update` at a revision) makes the single-use and
//! rotation rules hold across replicas.
//!
//! Every bucket has a size limit (`max_bytes`; at the limit a write fails and the
//! request that made it gets a server error, the store never grows without bound) and
//! a per-value limit ([`MAX_VALUE_BYTES`]). The buckets that grow with users and
//! clients (`auth_clients`, `auth_grants`, `auth_vault`) get `AUTH_STORE_MAX_BYTES`
//! each; the short-lived ones the fixed sizes below.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub const CLIENTS_BUCKET: &str = "auth_clients";
pub const PENDING_BUCKET: &str = "auth_pending";
pub const CODES_BUCKET: &str = "auth_codes";
pub const GRANTS_BUCKET: &str = "auth_grants";
pub const KEYS_BUCKET: &str = "auth_keys";
pub const VAULT_BUCKET: &str = "auth_vault";
pub const LOCKS_BUCKET: &str = "auth_locks";

/// A registered client nobody used for this long is forgotten.
pub const CLIENT_IDLE_MAX_AGE: Duration = Duration::from_secs(90 * 24 * 3600);
/// A login (authorize → consent → upstream → back) must finish within this.
pub const PENDING_MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// Codes are kept a little longer than they are valid, so a replay is recognised.
pub const CODE_MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// A grant nobody refreshed for this long is gone (as are its refresh tokens).
pub const GRANT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// A refresh lock left by a crashed replica frees itself after this.
pub const LOCK_MAX_AGE: Duration = Duration::from_secs(30);

/// Largest value any auth bucket stores (a client record, a grant, a vault entry).
pub const MAX_VALUE_BYTES: i32 = 256 * 1024;
/// Default `AUTH_STORE_MAX_BYTES`: size of each of the growing buckets.
pub const DEFAULT_STORE_MAX_BYTES: i64 = 1024 * 1024 * 1024;
/// Size of the buckets of ten-minute login transactions and codes.
pub const SHORT_LIVED_MAX_BYTES: i64 = 256 * 1024 * 1024;
/// Size of the signing key set and refresh locks buckets.
pub const SMALL_MAX_BYTES: i64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open kv bucket {bucket}: {reason}")]
    Bucket { bucket: &'static str, reason: String },
    #[error("kv {op} on {bucket} failed: {reason}")]
    Kv {
        op: &'static str,
        bucket: String,
        reason: String,
    },
    #[error("stored value in {bucket} is not valid: {reason}")]
    Corrupt { bucket: String, reason: String },
}

/// One typed KV bucket of JSON values.
#[derive(Clone)]
pub struct Bucket {
    name: String,
    kv: kv::Store,
}

/// Outcome of a compare-and-swap write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// Written; the new revision.
    Done(u64),
    /// Someone else wrote first (or the key exists / is gone).
    Conflict,
}

impl Bucket {
    /// Open (or create) a bucket holding at most `max_bytes`.
    pub async fn open(
        js: &jetstream::Context,
        name: &'static str,
        max_age: Duration,
        max_bytes: i64,
        replicas: usize,
    ) -> Result<Self, StoreError> {
        let kv = match js.get_key_value(name).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_or_update_key_value(kv::Config {
                    bucket: name.to_owned(),
                    history: 1,
                    max_age,
                    max_bytes,
                    max_value_size: MAX_VALUE_BYTES,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| StoreError::Bucket {
                    bucket: name,
                    reason: e.to_string(),
                })?,
        };
        Ok(Self {
            name: name.to_owned(),
            kv,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn raw(&self) -> &kv::Store {
        &self.kv
    }

    fn err(&self, op: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Kv {
            op,
            bucket: self.name.clone(),
            reason: e.to_string(),
        }
    }

    /// The value and its revision, or `None` when absent or deleted.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, u64)>, StoreError> {
        let entry = self.kv.entry(key).await.map_err(|e| self.err("get", e))?;
        let Some(entry) = entry else { return Ok(None) };
        if !matches!(entry.operation, kv::Operation::Put) {
            return Ok(None);
        }
        let value = serde_json::from_slice(&entry.value).map_err(|e| StoreError::Corrupt {
            bucket: self.name.clone(),
            reason: format!("{key}: {e}"),
        })?;
        Ok(Some((value, entry.revision)))
    }

    /// Write unconditionally.
    pub async fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<u64, StoreError> {
        let bytes = self.encode(value)?;
        self.kv.put(key, bytes.into()).await.map_err(|e| self.err("put", e))
    }

    /// Write only if the key does not exist.
    pub async fn create<T: Serialize>(&self, key: &str, value: &T) -> Result<Cas, StoreError> {
        let bytes = self.encode(value)?;
        match self.kv.create(key, bytes.into()).await {
            Ok(rev) => Ok(Cas::Done(rev)),
            Err(e) if matches!(e.kind(), kv::CreateErrorKind::AlreadyExists) => Ok(Cas::Conflict),
            Err(e) => Err(self.err("create", e)),
        }
    }

    /// Write only if the key is still at `revision`.
    pub async fn update<T: Serialize>(&self, key: &str, value: &T, revision: u64) -> Result<Cas, StoreError> {
        let bytes = self.encode(value)?;
        match self.kv.update(key, bytes.into(), revision).await {
            Ok(rev) => Ok(Cas::Done(rev)),
            Err(e) if matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision) => Ok(Cas::Conflict),
            Err(e) => Err(self.err("update", e)),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.kv.delete(key).await.map_err(|e| self.err("delete", e))
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
            bucket: self.name.clone(),
            reason: e.to_string(),
        })
    }
}

/// Every bucket the auth-service uses.
#[derive(Clone)]
pub struct Stores {
    pub clients: Bucket,
    pub pending: Bucket,
    pub codes: Bucket,
    pub grants: Bucket,
    pub keys: Bucket,
    pub vault: Bucket,
    pub locks: Bucket,
    pub revocations: Bucket,
}

impl Stores {
    /// Open every bucket, the growing ones at [`DEFAULT_STORE_MAX_BYTES`].
    pub async fn open(js: &jetstream::Context) -> Result<Self, StoreError> {
        Self::open_with(js, DEFAULT_STORE_MAX_BYTES, 1).await
    }

    /// Open every bucket; `max_bytes` (`AUTH_STORE_MAX_BYTES`) for each growing one,
    /// each held by `replicas` servers of a JetStream cluster (`NATS_REPLICAS`).
    pub async fn open_with(js: &jetstream::Context, max_bytes: i64, replicas: usize) -> Result<Self, StoreError> {
        Ok(Self {
            clients: Bucket::open(js, CLIENTS_BUCKET, CLIENT_IDLE_MAX_AGE, max_bytes, replicas).await?,
            pending: Bucket::open(js, PENDING_BUCKET, PENDING_MAX_AGE, SHORT_LIVED_MAX_BYTES, replicas).await?,
            codes: Bucket::open(js, CODES_BUCKET, CODE_MAX_AGE, SHORT_LIVED_MAX_BYTES, replicas).await?,
            grants: Bucket::open(js, GRANTS_BUCKET, GRANT_MAX_AGE, max_bytes, replicas).await?,
            keys: Bucket::open(js, KEYS_BUCKET, Duration::ZERO, SMALL_MAX_BYTES, replicas).await?,
            vault: Bucket::open(js, VAULT_BUCKET, GRANT_MAX_AGE, max_bytes, replicas).await?,
            locks: Bucket::open(js, LOCKS_BUCKET, LOCK_MAX_AGE, SMALL_MAX_BYTES, replicas).await?,
            revocations: Bucket::open(
                js,
                proto::auth::REVOCATION_BUCKET,
                Duration::from_secs(proto::auth::REVOCATION_MAX_AGE_SECS),
                proto::auth::REVOCATION_MAX_BYTES,
                replicas,
            )
            .await?,
        })
    }
}
