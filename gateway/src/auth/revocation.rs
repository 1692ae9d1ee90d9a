//! Grants and tokens the auth-service revoked, as this gateway knows them.
//!
//! Filled by [`crate::revocations`] from the `proto::auth::REVOCATION_BUCKET` KV
//! watch, read by the validator on every request (the accepted-token fast path
//! too). Entries are kept by their KV key (`grant.<gid>` / `token.<jti>`, built
//! with the `proto::auth` key functions), so a grant id can never match a `jti`.
//! An entry counts until its `until` plus [`super::LEEWAY`] — the clock skew the
//! validator allows on `exp`, so a token accepted late by that leeway is refused
//! late by it too — and is pruned afterwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct RevocationSet {
    inner: Arc<Inner>,
}

struct Inner {
    /// KV key → `until` (seconds since the epoch).
    entries: RwLock<HashMap<String, u64>>,
    /// Set once the bucket's existing entries have all been read.
    synced: AtomicBool,
    /// Counts revocations inserted: long-lived streams wait on it instead of
    /// re-checking their token on a timer ([`RevocationSet::changes`]).
    epoch: tokio::sync::watch::Sender<u64>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            entries: RwLock::default(),
            synced: AtomicBool::default(),
            epoch: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl std::fmt::Debug for RevocationSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationSet")
            .field("len", &self.len())
            .field("synced", &self.is_synced())
            .finish()
    }
}

impl RevocationSet {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, u64>> {
        self.inner.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, u64>> {
        self.inner.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Record a revocation under its KV key (a later one for the same key wins,
    /// as in the bucket).
    pub fn insert(&self, key: &str, until: u64) {
        self.write().insert(key.to_owned(), until);
        self.inner.epoch.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Told of every revocation inserted from now on (a stream then checks its own
    /// token once, instead of polling).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.epoch.subscribe()
    }

    /// Forget a key (deleted or purged in the bucket).
    pub fn remove(&self, key: &str) {
        self.write().remove(key);
    }

    /// Whether a token with this grant id and `jti` is revoked at `now`.
    pub fn is_revoked(&self, grant_id: Option<&str>, jti: Option<&str>, now: u64) -> bool {
        let entries = self.read();
        if entries.is_empty() {
            return false;
        }
        let live = |key: String| {
            entries
                .get(&key)
                .is_some_and(|until| now <= until.saturating_add(super::LEEWAY))
        };
        grant_id.is_some_and(|g| live(proto::auth::revoked_grant_key(g)))
            || jti.is_some_and(|j| live(proto::auth::revoked_token_key(j)))
    }

    /// Drop entries past their `until` (and the leeway); returns how many remain.
    pub fn prune(&self, now: u64) -> usize {
        let mut entries = self.write();
        entries.retain(|_, until| now <= until.saturating_add(super::LEEWAY));
        entries.len()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every revocation that existed when the gateway started is known.
    pub fn is_synced(&self) -> bool {
        self.inner.synced.load(Ordering::Acquire)
    }

    pub fn mark_synced(&self) {
        self.inner.synced.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::auth::{revoked_grant_key, revoked_token_key};

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn grant_and_jti_are_separate() {
        let set = RevocationSet::default();
        assert!(!set.is_revoked(Some("g1"), Some("j1"), NOW));
        set.insert(&revoked_grant_key("g1"), NOW + 60);
        assert!(set.is_revoked(Some("g1"), None, NOW));
        assert!(set.is_revoked(Some("g1"), Some("other"), NOW));
        assert!(!set.is_revoked(None, Some("g1"), NOW), "a grant id is not a jti");
        assert!(!set.is_revoked(Some("g2"), None, NOW));
        set.insert(&revoked_token_key("j.1"), NOW + 60);
        assert!(set.is_revoked(None, Some("j.1"), NOW));
        assert!(set.is_revoked(Some("g2"), Some("j.1"), NOW));
        assert!(!set.is_revoked(Some("j.1"), None, NOW), "a jti is not a grant id");
        assert!(!set.is_revoked(None, None, NOW));
        set.remove(&revoked_grant_key("g1"));
        assert!(!set.is_revoked(Some("g1"), None, NOW));
    }

    #[test]
    fn entries_expire_after_until_and_the_leeway() {
        let set = RevocationSet::default();
        set.insert(&revoked_grant_key("g"), NOW);
        assert!(set.is_revoked(Some("g"), None, NOW));
        assert!(
            set.is_revoked(Some("g"), None, NOW + super::super::LEEWAY),
            "within the exp leeway"
        );
        assert!(!set.is_revoked(Some("g"), None, NOW + super::super::LEEWAY + 1));
        set.insert(&revoked_token_key("j"), NOW + 3600);
        assert_eq!(
            set.prune(NOW + super::super::LEEWAY + 1),
            1,
            "only the expired entry goes"
        );
        assert!(set.is_revoked(None, Some("j"), NOW + 10));
        // A later revocation of the same key replaces the earlier one.
        set.insert(&revoked_token_key("j"), NOW);
        assert_eq!(set.prune(NOW + 3600), 0);
        assert!(set.is_empty());
    }

    #[test]
    fn synced_is_a_one_way_flag_shared_by_clones() {
        let set = RevocationSet::default();
        let clone = set.clone();
        assert!(!clone.is_synced());
        set.mark_synced();
        assert!(clone.is_synced());
    }

    #[tokio::test]
    async fn an_insert_is_told_to_the_waiting_streams() {
        let set = RevocationSet::default();
        let mut changes = set.changes();
        assert!(!changes.has_changed().unwrap());
        set.insert(&revoked_grant_key("g"), NOW + 60);
        tokio::time::timeout(std::time::Duration::from_secs(1), changes.changed())
            .await
            .expect("told at once")
            .unwrap();
    }
}
