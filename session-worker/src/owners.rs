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
//! the entries that may be live (entries without a session record, of sessions
//! expired or lost with a crashed open, are removed once older than
//! [`PRUNE_MIN_AGE`]); then the open is counted or refused
//! ([`proto::mcp::SESSION_LIMIT`], the gateway answers 429). A limit of 0 turns the
//! count off (nothing written).
//!
//! Opens and closes of one principal on one worker are written in batches: while
//! one write of the count is under way the next ones queue, and the following
//! write counts them all (a burst of opens costs a few writes of the count, not one
//! each, and never spins on compare-and-set). Workers racing for one count retry on
//! a stale revision. The limit is never exceeded; a recount during another
//! worker's burst of opens counts that burst's refused opens too, which keeps
//! their places taken until the next recount.

use std::collections::{HashMap, HashSet};
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
/// (the entry comes first): a recount counts it, and does not remove it.
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

/// What an open waiting for the next write of its principal's count is told.
type Answer = tokio::sync::oneshot::Sender<Result<(), AdmitError>>;

/// One principal's opens and closes on this worker.
#[derive(Default)]
struct Local {
    /// Opens waiting for the next write of the count (their entry keys).
    opens: Vec<(String, Answer)>,
    /// Closes waiting for it (their entries are removed already).
    closes: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Whether a task is writing the count: it takes the next batch when done.
    writing: bool,
    cached: Cached,
    /// Entries of opens here that are not counted (being written, queued, or
    /// refused and being withdrawn): a recount must not count them.
    pending: HashSet<String>,
    /// Entries counted whose session record is not written yet.
    unstored: HashSet<String>,
}

impl Local {
    fn idle(&self) -> bool {
        !self.writing
            && self.opens.is_empty()
            && self.closes.is_empty()
            && self.pending.is_empty()
            && self.unstored.is_empty()
    }
}

/// An open's entry while it is not counted; dropping it forgets the entry.
struct Pending {
    inner: Arc<Inner>,
    principal: String,
    key: String,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut principals = self.inner.lock();
        if let Some(local) = principals.get_mut(&self.principal) {
            local.pending.remove(&self.key);
            if local.idle() {
                principals.remove(&self.principal);
            }
        }
    }
}

struct Inner {
    owners: kv::Store,
    sessions: kv::Store,
    max: usize,
    prune_min_age: Duration,
    recount_every: Duration,
    principals: Mutex<HashMap<String, Local>>,
}

/// The per-principal session count of one worker.
#[derive(Clone)]
pub struct Index {
    inner: Arc<Inner>,
}

/// A counted open. Hold it until the session's record is written: until then a
/// recount on this worker counts the session by its entry.
#[must_use]
pub struct Admitted {
    counted: Option<(Arc<Inner>, String, String)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((inner, principal, key)) = self.counted.take() {
            let mut principals = inner.lock();
            if let Some(local) = principals.get_mut(&principal) {
                local.unstored.remove(&key);
                if local.idle() {
                    principals.remove(&principal);
                }
            }
        }
    }
}

/// What one write of a principal's count decided.
struct Outcome {
    admitted: usize,
    error: Option<AdmitError>,
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

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Local>> {
        self.principals.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Index {
    /// `max`: `WORKER_MAX_SESSIONS_PER_PRINCIPAL` (0: no count).
    pub fn new(owners: kv::Store, sessions: kv::Store, max: usize) -> Self {
        Self::with_timing(owners, sessions, max, PRUNE_MIN_AGE, RECOUNT_EVERY)
    }

    fn with_timing(
        owners: kv::Store,
        sessions: kv::Store,
        max: usize,
        prune_min_age: Duration,
        recount_every: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                owners,
                sessions,
                max,
                prune_min_age,
                recount_every,
                principals: Mutex::default(),
            }),
        }
    }

    /// Count `session` for `binding`, unless its principal already holds the
    /// maximum of sessions that still exist.
    pub async fn admit(&self, binding: &str, session: &str) -> Result<Admitted, AdmitError> {
        let inner = &self.inner;
        if inner.max == 0 {
            return Ok(Admitted { counted: None });
        }
        let principal = principal_key(binding);
        let mine = entry_key(&principal, session);
        inner
            .lock()
            .entry(principal.clone())
            .or_default()
            .pending
            .insert(mine.clone());
        let _pending = Pending {
            inner: Arc::clone(inner),
            principal: principal.clone(),
            key: mine.clone(),
        };
        match inner.owners.create(&mine, bytes::Bytes::new()).await {
            Ok(_) => {}
            // A retried open: counted with its entry.
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(Admitted { counted: None }),
            Err(err) => {
                warn!(error = %err, "principal session index unwritable");
                return Err(AdmitError::Unavailable);
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(&principal, |local| local.opens.push((mine.clone(), tx)));
        let answer = rx.await.unwrap_or(Err(AdmitError::Unavailable));
        match answer {
            Ok(()) => Ok(Admitted {
                counted: Some((Arc::clone(inner), principal, mine)),
            }),
            Err(e) => {
                if let Err(err) = inner.owners.purge(&mine).await {
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
        let inner = &self.inner;
        if inner.max == 0 {
            return;
        }
        let principal = principal_key(binding);
        let key = entry_key(&principal, session);
        let entry = match inner.owners.entry(&key).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry,
            // Not counted (opened with no limit, or released already).
            Ok(_) => return,
            Err(err) => {
                warn!(error = %err, "cannot remove a closed session from the principal index");
                return;
            }
        };
        // Only the release that removes the entry counts down; then its purge
        // marker goes too (one per closed session would live a day).
        if let Err(err) = inner.owners.purge_expect_revision(&key, Some(entry.revision)).await {
            debug!(error = %err, "closed session's index entry already removed");
            return;
        }
        if let Err(err) = crate::leases::erase(&inner.owners, &key).await {
            debug!(error = %err, "closed session's index marker left (it expires)");
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(&principal, |local| local.closes.push(tx));
        let _ = rx.await;
    }

    /// Queue an open or close of `principal`; start a writer unless one is at work
    /// (it takes everything queued when its write is done).
    fn enqueue(&self, principal: &str, push: impl FnOnce(&mut Local)) {
        let start = {
            let mut principals = self.inner.lock();
            let local = principals.entry(principal.to_owned()).or_default();
            push(local);
            !std::mem::replace(&mut local.writing, true)
        };
        if start {
            // A task of its own: a caller that stops waiting cannot stall the queue.
            let inner = Arc::clone(&self.inner);
            let principal = principal.to_owned();
            tokio::spawn(async move { inner.write_batches(&principal).await });
        }
    }
}

impl Inner {
    /// Write the principal's count for everything queued, batch after batch,
    /// until the queue is empty.
    async fn write_batches(&self, principal: &str) {
        loop {
            let (opens, closes, mut cached) = {
                let mut principals = self.lock();
                let Some(local) = principals.get_mut(principal) else {
                    return;
                };
                if local.opens.is_empty() && local.closes.is_empty() {
                    local.writing = false;
                    if local.idle() {
                        principals.remove(principal);
                    }
                    return;
                }
                (
                    std::mem::take(&mut local.opens),
                    std::mem::take(&mut local.closes),
                    local.cached.take(),
                )
            };
            let keys: Vec<&str> = opens.iter().map(|(key, _)| key.as_str()).collect();
            let outcome = self.write_count(principal, &keys, closes.len(), &mut cached).await;
            {
                let mut principals = self.lock();
                if let Some(local) = principals.get_mut(principal) {
                    local.cached = cached;
                    for key in &keys[..outcome.admitted] {
                        local.pending.remove(*key);
                        local.unstored.insert((*key).to_owned());
                    }
                }
            }
            let mut abandoned = Vec::new();
            for (n, (key, answer)) in opens.into_iter().enumerate() {
                let result = match &outcome.error {
                    _ if n < outcome.admitted => Ok(()),
                    Some(AdmitError::Unavailable) => Err(AdmitError::Unavailable),
                    _ => Err(AdmitError::Full(self.max)),
                };
                // Counted for an open whose caller is gone: it will never store its
                // record (the entry is removed by a recount once old).
                if answer.send(result).is_err() && n < outcome.admitted {
                    abandoned.push(key);
                }
            }
            if !abandoned.is_empty() {
                let mut principals = self.lock();
                if let Some(local) = principals.get_mut(principal) {
                    for key in &abandoned {
                        local.unstored.remove(key);
                    }
                }
            }
            for done in closes {
                let _ = done.send(());
            }
        }
    }

    /// One compare-and-set write of the count: `closes` fewer sessions, and as many
    /// of `opens` (in order) as fit, after a recount when they do not all fit.
    async fn write_count(&self, principal: &str, opens: &[&str], closes: usize, cached: &mut Cached) -> Outcome {
        let unavailable = Outcome {
            admitted: 0,
            error: Some(AdmitError::Unavailable),
        };
        for _ in 0..ATTEMPTS {
            let from_cache = cached.is_some();
            let Ok((revision, count)) = self.current(principal, cached).await else {
                return unavailable;
            };
            let mut next = Count {
                sessions: count.sessions.saturating_sub(closes),
                ..count
            };
            if opens.len() > self.max.saturating_sub(next.sessions) {
                if from_cache {
                    // Another worker may have counted closes since: read it again.
                    *cached = None;
                    continue;
                }
                if now_ms().saturating_sub(count.recounted_ms) >= millis(self.recount_every) {
                    let Ok(live) = self.recount(principal).await else {
                        return unavailable;
                    };
                    next = Count {
                        sessions: live,
                        recounted_ms: now_ms(),
                    };
                }
            }
            let admitted = opens.len().min(self.max.saturating_sub(next.sessions));
            next.sessions += admitted;
            let full = (admitted < opens.len()).then_some(AdmitError::Full(self.max));
            if next == count && revision != 0 {
                return Outcome { admitted, error: full };
            }
            match self.write(principal, revision, next).await {
                Ok(Some(rev)) => {
                    *cached = Some((rev, next));
                    return Outcome { admitted, error: full };
                }
                Ok(None) => *cached = None,
                Err(_) => return unavailable,
            }
        }
        warn!("principal session count contended: opens refused for a retry");
        unavailable
    }

    /// The count, from this worker's cache or the store.
    async fn current(&self, principal: &str, cached: &mut Cached) -> Result<(u64, Count), AdmitError> {
        if let Some(c) = *cached {
            return Ok(c);
        }
        let none = Count {
            sessions: 0,
            recounted_ms: 0,
        };
        let read = match self.owners.entry(principal).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => (entry.revision, Count::decode(&entry.value)),
            // Never counted, or expired with every entry (same age limit): none.
            Ok(Some(entry)) => (entry.revision, none),
            Ok(None) => (0, none),
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

    /// How many of the principal's sessions exist, besides the opens here not
    /// counted yet (the batch being written among them): entries with a session
    /// record, or counted here and not stored yet, or younger than the minimum age
    /// (an open under way on another worker, counted or not: counted, so the limit
    /// holds; at worst a place stays taken until the next recount). An entry
    /// older than that without a record died before storing it: removed.
    async fn recount(&self, principal: &str) -> Result<usize, AdmitError> {
        let entries = self.list(principal).await?;
        let (pending, unstored) = self
            .lock()
            .get(principal)
            .map(|local| (local.pending.clone(), local.unstored.clone()))
            .unwrap_or_default();
        let (pending, unstored) = (&pending, &unstored);
        let checks = entries
            .into_iter()
            .filter(|(key, _)| !pending.contains(key))
            .map(|(key, created)| async move {
                if unstored.contains(&key) {
                    return true;
                }
                let Some((_, id)) = key.split_once('.') else {
                    return false;
                };
                let young = !created.elapsed().is_ok_and(|age| age >= self.prune_min_age);
                match self.sessions.get(id).await {
                    Ok(Some(_)) => true,
                    Ok(None) if young => true,
                    Ok(None) => {
                        let _ = self.owners.purge(&key).await;
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
        let index = Index::with_timing(owners.clone(), sessions.clone(), 2, Duration::ZERO, Duration::ZERO);
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
        // Two workers, each with its own connection and local queues.
        let (owners2, sessions2) = buckets(&nats).await?;
        // Recount at every refusal (only entries of sessions gone for 30 s are removed).
        let a = Index::with_timing(owners, sessions, 30, PRUNE_MIN_AGE, Duration::ZERO);
        let b = Index::with_timing(owners2, sessions2, 30, PRUNE_MIN_AGE, Duration::ZERO);
        let open = async |index: &Index, id: String| {
            let admitted = index.admit(ALICE, &id).await?;
            index
                .inner
                .sessions
                .put(subjects::token(&id), "{}".into())
                .await
                .map_err(|_| AdmitError::Unavailable)?;
            drop(admitted);
            Ok::<_, AdmitError>(())
        };
        let opens = (0..120).map(|i| open(if i % 2 == 0 { &a } else { &b }, format!("s{i}")));
        let results = futures::future::join_all(opens).await;
        let admitted = results.iter().filter(|r| r.is_ok()).count();
        assert!(
            results.iter().all(|r| matches!(r, Ok(()) | Err(AdmitError::Full(30)))),
            "{results:?}"
        );
        // Never more than the limit. Fewer is possible during the burst: a recount on
        // one worker counts the other's opens under way (young entries), which may be
        // refused in the end (see the module's documentation); their places come back
        // at the next recount, here the next refusal: one by one, on either worker, the
        // opens after the burst fill the limit exactly.
        assert!(admitted <= 30, "{admitted} admitted over a limit of 30");
        let mut admitted_ids: Vec<String> = (0..120)
            .filter(|i| results[*i].is_ok())
            .map(|i| format!("s{i}"))
            .collect();
        for i in 0..40 {
            let id = format!("f{i}");
            if open(if i % 2 == 0 { &a } else { &b }, id.clone()).await.is_ok() {
                admitted_ids.push(id);
            }
        }
        assert_eq!(admitted_ids.len(), 30, "the burst's places did not all come back");
        // Closes on both workers at once give back exactly their places.
        let closes = admitted_ids.iter().take(20).enumerate().map(|(n, id)| {
            let index = if n % 2 == 0 { &a } else { &b };
            index.release(ALICE, id)
        });
        futures::future::join_all(closes).await;
        let mut reopened = 0;
        for i in 0..25 {
            if open(&a, format!("r{i}")).await.is_ok() {
                reopened += 1;
            }
        }
        assert_eq!(reopened, 20);
        let stored = a.inner.owners.get(principal_key(ALICE)).await?.expect("count");
        assert_eq!(Count::decode(&stored).sessions, 30);
        // Nothing is kept of a principal once nothing is under way.
        for index in [&a, &b] {
            assert!(index.inner.lock().is_empty());
        }
        Ok(())
    }
}
