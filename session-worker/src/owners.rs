//! Live sessions per principal, across every worker, in the
//! `mcp_principal_sessions` KV bucket (the principal as the hex SHA-256 of its
//! binding: issuer, subject, client):
//!
//! - `<principal>` holds the principal's count, changed only by compare-and-set
//!   (the revision read), so opens and closes on any number of workers never
//!   lose an update and the limit is never exceeded;
//! - `<principal>.<session>`, one entry per counted session, written before the
//!   count is raised: it makes a retried open count once, a close count down once,
//!   and lets the count be rebuilt.
//!
//! Opening a session is two writes (its entry, the count), whatever the principal's
//! history. Only a principal at `WORKER_MAX_SESSIONS_PER_PRINCIPAL` has its entries
//! listed, at most once per [`RECOUNT_EVERY`] across the cluster: the count is set to
//! the entries whose session record exists (entries of sessions expired, or lost with
//! a crashed open, are removed once older than [`PRUNE_MIN_AGE`]); then the open is
//! counted or refused
//! ([`proto::mcp::SESSION_LIMIT`], the gateway answers 429). A limit of 0 turns the
//! count off (nothing written).
//!
//! Opens of one principal on one worker take turns (a local lock held until the
//! session record is written, so a burst does not spin on compare-and-set and a
//! recount here sees every counted session's record); workers racing for one count
//! retry on a stale revision. Across workers a recount can miss a session counted
//! on another worker whose record is not written yet (one round trip): the limit
//! may then be passed by one session per other worker, until the next recount.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use proto::subjects;

/// Longest a listing of one principal's entries may take.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(2);
/// An entry without a session record younger than this is an open under way
/// (the entry comes first): a recount does not count it, nor remove it.
pub const PRUNE_MIN_AGE: Duration = Duration::from_secs(30);
/// A principal at its limit is recounted at most this often (cluster-wide: the
/// time is kept with the count).
pub const RECOUNT_EVERY: Duration = Duration::from_secs(5);
/// Compare-and-set attempts before an open is answered "unavailable, retry".
const ATTEMPTS: usize = 64;
/// Records checked at once during a recount.
const CHECKS_AT_ONCE: usize = 16;

/// Why a session cannot be counted.
#[derive(Debug, PartialEq, Eq)]
pub enum AdmitError {
    /// The principal already holds the maximum.
    Full(usize),
    /// The store did not answer.
    Unavailable,
}

/// A principal's count as stored: sessions, and when it was last recounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Count {
    sessions: usize,
    recounted_ms: u64,
}

impl Count {
    fn encode(self) -> bytes::Bytes {
        format!("{} {}", self.sessions, self.recounted_ms).into()
    }

    /// A value that does not parse is recounted at once.
    fn decode(value: &[u8]) -> Self {
        let text = std::str::from_utf8(value).unwrap_or_default();
        let mut parts = text.split(' ').map(str::parse::<u64>);
        match (parts.next(), parts.next()) {
            (Some(Ok(sessions)), Some(Ok(recounted_ms))) => Count {
                sessions: usize::try_from(sessions).unwrap_or(usize::MAX),
                recounted_ms,
            },
            _ => Count {
                sessions: usize::MAX,
                recounted_ms: 0,
            },
        }
    }
}

/// The count as last read or written by this worker: its revision (0: no count
/// stored) and value.
type Cached = Option<(u64, Count)>;

/// One lock per principal with an open or close under way on this worker.
type Turns = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Cached>>>>>;

/// The per-principal session count of one worker.
pub struct Index {
    owners: kv::Store,
    sessions: kv::Store,
    max: usize,
    prune_min_age: Duration,
    recount_every: Duration,
    turns: Turns,
}

/// This worker's turn at one principal's count, with the count as last seen.
struct Turn {
    guard: tokio::sync::OwnedMutexGuard<Cached>,
    lock: Arc<tokio::sync::Mutex<Cached>>,
    principal: String,
    turns: Turns,
}

impl Turn {
    fn cached(&mut self) -> &mut Cached {
        &mut self.guard
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        // The map's, ours and our guard's: nobody else waits, forget the principal
        // (one arriving now starts a new turn; the count's revision keeps it right).
        if Arc::strong_count(&self.lock) == 3 {
            turns.remove(&self.principal);
        }
    }
}

/// A counted open. Hold it until the session's record is written: this worker's
/// next open or close of the principal waits for it, so a recount here never
/// misses a session that is counted but not yet stored.
#[must_use]
pub struct Admitted {
    _turn: Option<Turn>,
}

/// The key of a principal's count, and the prefix of its entries: hex SHA-256 of
/// its binding (bindings hold characters KV keys cannot).
fn principal_key(binding: &str) -> String {
    let digest = Sha256::digest(binding.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn entry_key(principal: &str, session: &str) -> String {
    format!("{principal}.{}", subjects::token(session))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether a write failed only because the revision it expected is stale.
fn is_conflict(err: &kv::UpdateError) -> bool {
    err.kind() == kv::UpdateErrorKind::WrongLastRevision
}

impl Index {
    /// `max`: `WORKER_MAX_SESSIONS_PER_PRINCIPAL` (0: no count).
    pub fn new(owners: kv::Store, sessions: kv::Store, max: usize) -> Self {
        Self {
            owners,
            sessions,
            max,
            prune_min_age: PRUNE_MIN_AGE,
            recount_every: RECOUNT_EVERY,
            turns: Turns::default(),
        }
    }

    /// The same, removing entries of any age and recounting at every refusal.
    #[cfg(test)]
    fn eager(mut self) -> Self {
        self.prune_min_age = Duration::ZERO;
        self.recount_every = Duration::ZERO;
        self
    }

    /// Count `session` for `binding`, unless its principal already holds the
    /// maximum of sessions that still exist.
    pub async fn admit(&self, binding: &str, session: &str) -> Result<Admitted, AdmitError> {
        if self.max == 0 {
            return Ok(Admitted { _turn: None });
        }
        let principal = principal_key(binding);
        let mine = entry_key(&principal, session);
        match self.owners.create(&mine, bytes::Bytes::new()).await {
            Ok(_) => {}
            // A retried open: counted with its entry.
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(Admitted { _turn: None }),
            Err(err) => {
                warn!(error = %err, "principal session index unwritable");
                return Err(AdmitError::Unavailable);
            }
        }
        let mut turn = self.turn(&principal).await;
        match self.count_up(&principal, &mine, turn.cached()).await {
            Ok(()) => Ok(Admitted { _turn: Some(turn) }),
            Err(e) => {
                drop(turn);
                if let Err(err) = self.owners.purge(&mine).await {
                    // Left behind, it is removed by a recount once found old and recordless.
                    warn!(error = %err, "cannot withdraw a refused session from the principal index");
                }
                Err(e)
            }
        }
    }

    /// Stop counting `session` for `binding` (it was closed, or never stored). Best
    /// effort: a count left too high is corrected by the next recount.
    pub async fn release(&self, binding: &str, session: &str) {
        if self.max == 0 {
            return;
        }
        let principal = principal_key(binding);
        let key = entry_key(&principal, session);
        let entry = match self.owners.entry(&key).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry,
            // Not counted (opened with no limit, or released already).
            Ok(_) => return,
            Err(err) => {
                warn!(error = %err, "cannot remove a closed session from the principal index");
                return;
            }
        };
        // Only the release that removes the entry counts down.
        if let Err(err) = self.owners.purge_expect_revision(&key, Some(entry.revision)).await {
            debug!(error = %err, "closed session's index entry already removed");
            return;
        }
        let mut turn = self.turn(&principal).await;
        self.count_down(&principal, turn.cached()).await;
    }

    /// Wait for this worker's turn at `principal`'s count.
    async fn turn(&self, principal: &str) -> Turn {
        let lock = {
            let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(turns.entry(principal.to_owned()).or_default())
        };
        Turn {
            guard: Arc::clone(&lock).lock_owned().await,
            lock,
            principal: principal.to_owned(),
            turns: Arc::clone(&self.turns),
        }
    }

    /// The count, from this worker's cache or the store.
    async fn current(&self, principal: &str, cached: &mut Cached) -> Result<(u64, Count), AdmitError> {
        if let Some(c) = *cached {
            return Ok(c);
        }
        let read = match self.owners.entry(principal).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => (entry.revision, Count::decode(&entry.value)),
            // Never counted, or expired with every entry (same age limit): none.
            Ok(Some(entry)) => (
                entry.revision,
                Count {
                    sessions: 0,
                    recounted_ms: 0,
                },
            ),
            Ok(None) => (
                0,
                Count {
                    sessions: 0,
                    recounted_ms: 0,
                },
            ),
            Err(err) => {
                warn!(error = %err, "principal session count unreadable");
                return Err(AdmitError::Unavailable);
            }
        };
        *cached = Some(read);
        Ok(read)
    }

    /// Write `count` over revision `revision`: its new revision, or `None` when
    /// another worker wrote first.
    async fn write(&self, principal: &str, revision: u64, count: Count) -> Result<Option<u64>, AdmitError> {
        match self.owners.update(principal, count.encode(), revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(err) if is_conflict(&err) => Ok(None),
            Err(err) => {
                warn!(error = %err, "principal session count unwritable");
                Err(AdmitError::Unavailable)
            }
        }
    }

    async fn count_up(&self, principal: &str, mine: &str, cached: &mut Cached) -> Result<(), AdmitError> {
        for _ in 0..ATTEMPTS {
            let from_cache = cached.is_some();
            let (revision, count) = self.current(principal, cached).await?;
            let next = if count.sessions < self.max {
                Count {
                    sessions: count.sessions + 1,
                    ..count
                }
            } else if now_ms().saturating_sub(count.recounted_ms) >= millis(self.recount_every) {
                match self.recount(principal, mine).await {
                    // Recounted: the open is counted in the same write if it fits.
                    Ok(live) if live < self.max => Count {
                        sessions: live + 1,
                        recounted_ms: now_ms(),
                    },
                    Ok(live) => {
                        let recounted = Count {
                            sessions: live,
                            recounted_ms: now_ms(),
                        };
                        return match self.write(principal, revision, recounted).await {
                            Ok(Some(rev)) => {
                                *cached = Some((rev, recounted));
                                Err(AdmitError::Full(self.max))
                            }
                            Ok(None) => {
                                *cached = None;
                                continue;
                            }
                            Err(e) => Err(e),
                        };
                    }
                    Err(e) => return Err(e),
                }
            } else if from_cache {
                // Another worker may have counted a close since: read it again.
                *cached = None;
                continue;
            } else {
                return Err(AdmitError::Full(self.max));
            };
            match self.write(principal, revision, next).await {
                Ok(Some(rev)) => {
                    *cached = Some((rev, next));
                    return Ok(());
                }
                Ok(None) => *cached = None,
                Err(e) => return Err(e),
            }
        }
        warn!("principal session count contended: open refused for a retry");
        Err(AdmitError::Unavailable)
    }

    async fn count_down(&self, principal: &str, cached: &mut Cached) {
        for _ in 0..ATTEMPTS {
            let Ok((revision, count)) = self.current(principal, cached).await else {
                return;
            };
            let next = Count {
                sessions: count.sessions.saturating_sub(1),
                ..count
            };
            match self.write(principal, revision, next).await {
                Ok(Some(rev)) => {
                    *cached = Some((rev, next));
                    return;
                }
                Ok(None) => *cached = None,
                Err(_) => return,
            }
        }
        warn!("principal session count contended: a close was not counted down");
    }

    /// How many of the principal's sessions exist besides `mine`: entries with a
    /// session record. An entry with none is an open under way (on another
    /// worker, or waiting for its turn here: not counted yet) or, once older than
    /// the minimum age, one that died before storing its record (removed).
    async fn recount(&self, principal: &str, mine: &str) -> Result<usize, AdmitError> {
        let entries = self.list(principal).await?;
        let checks = entries
            .into_iter()
            .filter(|(key, _)| key != mine)
            .map(|(key, created)| async move {
                let Some((_, id)) = key.split_once('.') else {
                    return false;
                };
                match self.sessions.get(id).await {
                    Ok(Some(_)) => true,
                    Ok(None) => {
                        if created.elapsed().is_ok_and(|age| age >= self.prune_min_age) {
                            let _ = self.owners.purge(&key).await;
                        }
                        false
                    }
                    // Unknown: counted, the limit holds.
                    Err(_) => true,
                }
            });
        let live = futures::stream::iter(checks)
            .buffer_unordered(CHECKS_AT_ONCE)
            .filter(|live| futures::future::ready(*live))
            .count()
            .await;
        debug!(live, "principal at its session limit recounted");
        Ok(live)
    }

    /// Keys of the principal's entries with when each was written.
    async fn list(&self, principal: &str) -> Result<Vec<(String, SystemTime)>, AdmitError> {
        let unreadable = |e: &dyn std::fmt::Display| {
            warn!(error = %e, "principal session index unreadable");
            AdmitError::Unavailable
        };
        let listing = async {
            let mut watch = self
                .owners
                .watch_with_history(format!("{principal}.*"))
                .await
                .map_err(|e| unreadable(&e))?;
            let mut out = Vec::new();
            // The history holds at least the caller's own entry; the last one has delta 0.
            while let Some(entry) = watch.next().await {
                let entry = entry.map_err(|e| unreadable(&e))?;
                if entry.operation == kv::Operation::Put {
                    out.push((entry.key.clone(), SystemTime::from(entry.created)));
                }
                if entry.delta == 0 {
                    break;
                }
            }
            Ok(out)
        };
        tokio::time::timeout(LIST_TIMEOUT, listing).await.map_err(|_| {
            warn!("principal session index listing timed out");
            AdmitError::Unavailable
        })?
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kv_safe_and_distinct() {
        let a = principal_key("https://issuer#alice#app");
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, principal_key("https://issuer#alice#other"));
        let e = entry_key(&a, "0123abcd");
        assert_eq!(e, format!("{a}.0123abcd"));
    }

    #[test]
    fn counts_round_trip_and_garbage_is_recounted() {
        let c = Count {
            sessions: 42,
            recounted_ms: 1_700_000_000_000,
        };
        assert_eq!(Count::decode(&c.encode()), c);
        for bad in [&b""[..], b"x", b"3", b"-1 0", b"\xff\xfe"] {
            assert_eq!(
                Count::decode(bad),
                Count {
                    sessions: usize::MAX,
                    recounted_ms: 0
                },
                "{bad:?}"
            );
        }
    }

    async fn buckets(nats: &testkit::NatsServer) -> anyhow::Result<(kv::Store, kv::Store)> {
        let js = async_nats::jetstream::new(async_nats::connect(nats.url.as_str()).await?);
        let file = async_nats::jetstream::stream::StorageType::File;
        let ttl = Duration::from_secs(600);
        let owners = crate::leases::bucket(&js, subjects::PRINCIPAL_SESSIONS_BUCKET, ttl, file, 1 << 20, 1).await?;
        let sessions = crate::leases::bucket(&js, subjects::SESSION_BUCKET, ttl, file, 1 << 20, 1).await?;
        Ok((owners, sessions))
    }

    const ALICE: &str = "https://issuer#alice#app";

    #[actix_rt::test]
    async fn sessions_that_are_gone_are_recounted_at_the_limit_and_closes_count_once() -> anyhow::Result<()> {
        let nats = testkit::NatsServer::start()?;
        let (owners, sessions) = buckets(&nats).await?;
        let index = Index::new(owners.clone(), sessions.clone(), 2).eager();
        let open = async |index: &Index, binding: &str, id: &str, stored: bool| {
            let admitted = index.admit(binding, id).await?;
            if stored {
                sessions.put(subjects::token(id), "{}".into()).await.expect("record");
            }
            drop(admitted);
            Ok::<_, AdmitError>(())
        };
        open(&index, ALICE, "s1", true).await.expect("s1");
        // s2's open never wrote its record (its worker died): counted until a recount.
        open(&index, ALICE, "s2", false).await.expect("s2");
        assert_eq!(
            open(&index, ALICE, "s2", false).await,
            Ok(()),
            "a retried open counts once"
        );
        assert_eq!(open(&index, ALICE, "s3", true).await, Ok(()), "s2 is gone: recounted");
        assert_eq!(open(&index, ALICE, "s4", true).await, Err(AdmitError::Full(2)));
        assert_eq!(
            owners.get(entry_key(&principal_key(ALICE), "s2")).await?,
            None,
            "s2 removed"
        );
        // Another principal has a count of its own.
        assert_eq!(open(&index, "https://issuer#bob#app", "s4", true).await, Ok(()));
        // A close frees one place, once.
        index.release(ALICE, "s1").await;
        index.release(ALICE, "s1").await;
        index.release(ALICE, "never-opened").await;
        assert_eq!(open(&index, ALICE, "s4", true).await, Ok(()));
        assert_eq!(open(&index, ALICE, "s5", true).await, Err(AdmitError::Full(2)));
        // A count that does not parse is rebuilt from the entries.
        owners.put(principal_key(ALICE), "garbage".into()).await?;
        assert_eq!(open(&index, ALICE, "s5", true).await, Err(AdmitError::Full(2)));
        let stored = owners.get(principal_key(ALICE)).await?.expect("count");
        assert_eq!(Count::decode(&stored).sessions, 2);
        // No limit: nothing counted or written.
        let off = Index::new(owners.clone(), sessions.clone(), 0);
        drop(off.admit(ALICE, "s6").await.expect("no limit"));
        assert_eq!(owners.get(entry_key(&principal_key(ALICE), "s6")).await?, None);
        Ok(())
    }

    #[actix_rt::test]
    async fn two_workers_opening_at_once_never_exceed_the_limit() -> anyhow::Result<()> {
        let nats = testkit::NatsServer::start()?;
        let (owners, sessions) = buckets(&nats).await?;
        // Two workers, each with its own connection and local turns.
        let (owners2, sessions2) = buckets(&nats).await?;
        let a = Index::new(owners, sessions, 30);
        let b = Index::new(owners2, sessions2, 30);
        let opens = (0..120).map(|i| {
            let index = if i % 2 == 0 { &a } else { &b };
            async move {
                let id = format!("s{i}");
                let admitted = index.admit(ALICE, &id).await?;
                index
                    .sessions
                    .put(subjects::token(&id), "{}".into())
                    .await
                    .map_err(|_| AdmitError::Unavailable)?;
                drop(admitted);
                Ok::<_, AdmitError>(())
            }
        });
        let results = futures::future::join_all(opens).await;
        let admitted = results.iter().filter(|r| r.is_ok()).count();
        assert!(
            results.iter().all(|r| matches!(r, Ok(()) | Err(AdmitError::Full(30)))),
            "{results:?}"
        );
        assert_eq!(admitted, 30);
        // Closes on both workers at once count down exactly.
        let admitted_ids: Vec<String> = (0..120)
            .filter(|i| results[*i].is_ok())
            .map(|i| format!("s{i}"))
            .collect();
        let closes = admitted_ids.iter().take(20).enumerate().map(|(n, id)| {
            let index = if n % 2 == 0 { &a } else { &b };
            index.release(ALICE, id)
        });
        futures::future::join_all(closes).await;
        let stored = a.owners.get(principal_key(ALICE)).await?.expect("count");
        assert_eq!(Count::decode(&stored).sessions, 10);
        // No turn is kept once nothing is under way.
        for index in [&a, &b] {
            assert!(index.turns.lock().is_ok_and(|t| t.is_empty()));
        }
        Ok(())
    }
}
