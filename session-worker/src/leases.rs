//! Shard leases in JetStream KV: who owns which shard.
//!
//! Each shard `n` has the key `shard.<n>` in [`subjects::LEASE_BUCKET`], whose
//! value is the owning worker's id. Leases are taken with `create` (fails when
//! someone holds it) and renewed with `update` at the revision we hold
//! (compare-and-swap), every third of the bucket's max age; a lease that is not
//! renewed expires with the bucket's max age. Live workers heartbeat in
//! [`subjects::WORKER_BUCKET`]; each worker aims at `ceil(S / workers)` shards,
//! releasing extras and claiming free ones, so shards spread as workers join
//! and move to survivors when one dies. A round also takes every shard nobody
//! holds (workers starting together, a dead worker's expired leases), so no shard
//! stays ownerless for longer than a round; extras go back on the next round and
//! are taken over at once by workers watching the bucket. JetStream is the only
//! source of truth.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::{StreamExt, TryStreamExt};
use proto::{SHARD_COUNT, subjects};
use tracing::{debug, info, warn};

/// Concurrent KV operations while claiming or taking over.
const KV_CONCURRENCY: usize = 64;

/// How long a round waits for a bucket's key listing. On a JetStream cluster that
/// is electing a stream's leader (a NATS node was lost) a listing can hang for
/// seconds; a round must not, since the worker's main loop handles liveness events
/// between rounds, and renewals must not wait behind it.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("cannot open bucket {bucket}: {reason}")]
    Bucket { bucket: &'static str, reason: String },
    #[error("cannot list {bucket}: {reason}")]
    List { bucket: &'static str, reason: String },
    /// The bucket is there but did not answer in time (its stream has no leader).
    #[error("cannot list {bucket}: timed out")]
    TimedOut { bucket: &'static str },
    /// Some renewals got no answer: the round stopped there, to try again soon.
    #[error("{0} lease renewals unanswered")]
    Unanswered(usize),
}

pub struct Leases {
    worker_id: String,
    leases: kv::Store,
    workers: kv::Store,
    /// shard → revision of our lease.
    owned: HashMap<u16, u64>,
    /// Where this worker starts looking for free shards, so workers starting
    /// together do not all fight for shard 0 first.
    offset: u16,
    /// This worker's fair share, from the last round.
    target: usize,
    /// Shards given up by the last round whose leases are still to be deleted.
    releasing: Vec<(u16, u64)>,
    /// The leases' time to live (the bucket's max age).
    ttl: Duration,
    /// shard → when its lease was last renewed (or won).
    renewed_at: HashMap<u16, Instant>,
    /// Leases given up for want of an answer (not served, but maybe still ours):
    /// shard → (revision held, when given up). Each round tries to renew them; one
    /// that still names us is ours again (nobody else can have written it).
    doubtful: HashMap<u16, (u64, Instant)>,
    /// Renewals of the last round that got no answer.
    unanswered: usize,
}

/// What a compare-and-set write of a key naming this worker found ([`update_own`]).
pub(crate) enum Renewal {
    /// Written: the new revision.
    Renewed(u64),
    /// The key is someone else's now, or gone.
    Lost(String),
    /// Unknown: the bucket did not answer (e.g. its stream is electing a leader).
    Unknown(String),
}

/// Most bytes the in-memory lease and worker buckets may hold.
pub const LEASE_BUCKET_MAX_BYTES: i64 = 16 * 1024 * 1024;

/// Open (or create) a KV bucket with the given max age and size limit.
pub async fn bucket(
    js: &jetstream::Context,
    name: &'static str,
    max_age: Duration,
    storage: jetstream::stream::StorageType,
    max_bytes: i64,
    replicas: usize,
) -> Result<kv::Store, LeaseError> {
    let config = kv::Config {
        bucket: name.to_owned(),
        history: 1,
        max_age,
        storage,
        max_bytes,
        num_replicas: replicas,
        ..Default::default()
    };
    match js.get_key_value(name).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_or_update_key_value(config)
            .await
            .map_err(|e| LeaseError::Bucket {
                bucket: name,
                reason: e.to_string(),
            }),
    }
}

/// Remove every message of `key` from its bucket's stream, leaving no tombstone
/// (a KV delete or purge leaves a marker that lives as long as the bucket's max
/// age: a day for session records, one per closed session). Reads then find
/// nothing, `create` succeeds, and an `update` at an older revision fails, as
/// after a delete.
pub async fn erase(store: &kv::Store, key: &str) -> Result<(), String> {
    store
        .stream
        .purge()
        .filter(format!("{}{key}", store.prefix))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl Leases {
    /// Open (creating them if missing) the lease and worker buckets: (leases, workers).
    /// They are memory-backed, so a restarted nats-server has neither until a
    /// worker creates them again.
    pub async fn ensure(
        js: &jetstream::Context,
        ttl: Duration,
        replicas: usize,
    ) -> Result<(kv::Store, kv::Store), LeaseError> {
        let memory = jetstream::stream::StorageType::Memory;
        let leases = bucket(
            js,
            subjects::LEASE_BUCKET,
            ttl,
            memory,
            LEASE_BUCKET_MAX_BYTES,
            replicas,
        )
        .await?;
        let workers = bucket(
            js,
            subjects::WORKER_BUCKET,
            ttl,
            memory,
            LEASE_BUCKET_MAX_BYTES,
            replicas,
        )
        .await?;
        Ok((leases, workers))
    }

    pub async fn open(
        js: &jetstream::Context,
        worker_id: &str,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Self, LeaseError> {
        let (leases, workers) = Self::ensure(js, ttl, replicas).await?;
        Ok(Self {
            worker_id: worker_id.to_owned(),
            leases,
            workers,
            owned: HashMap::new(),
            offset: proto::shard(worker_id),
            target: usize::from(SHARD_COUNT),
            releasing: Vec::new(),
            ttl,
            renewed_at: HashMap::new(),
            doubtful: HashMap::new(),
            unanswered: 0,
        })
    }

    /// Whether the last round left leases in doubt (renewals unanswered, leases
    /// given up that may still be ours): the next round should come soon.
    pub fn unsettled(&self) -> bool {
        self.unanswered > 0 || !self.doubtful.is_empty()
    }

    /// Record shards just won (claimed or taken over) as owned and fresh.
    fn won(&mut self, won: Vec<(u16, u64)>) {
        let now = Instant::now();
        for (n, rev) in won {
            self.doubtful.remove(&n);
            self.owned.insert(n, rev);
            self.renewed_at.insert(n, now);
        }
    }

    pub fn owned(&self) -> BTreeSet<u16> {
        self.owned.keys().copied().collect()
    }

    /// One round: renew, release extras, claim free shards. (Heartbeats are
    /// [`crate::liveness`]'s.) Renewals come first and wait for nothing else: a
    /// lease that is not renewed in time expires and may be taken.
    pub async fn tick(&mut self) -> Result<BTreeSet<u16>, LeaseError> {
        self.renew().await;
        if self.unanswered > 0 {
            // The lease bucket is not answering (e.g. electing its leader): listing
            // and claiming would only wait; the caller tries again soon.
            return Err(LeaseError::Unanswered(self.unanswered));
        }

        // Our fair share. When the workers cannot be counted (their bucket is
        // electing a leader), the last count stands.
        match keys(&self.workers, subjects::WORKER_BUCKET).await {
            Ok(live) => self.target = usize::from(SHARD_COUNT).div_ceil(live.len().max(1)),
            Err(err) => debug!(error = %err, "cannot count the workers: keeping the last share"),
        }
        if self.owned.len() > self.target {
            self.pick_releases(self.owned.len() - self.target);
        }
        // Every shard nobody holds is taken, even past our share: a shard without
        // an owner fails requests, an uneven split only costs balance, and the
        // next round gives extras back (others take them at once from the watch).
        self.claim(usize::from(SHARD_COUNT)).await?;
        debug!(target = self.target, owned = self.owned.len(), "lease round");
        Ok(self.owned())
    }

    /// Renew every lease at once (compare-and-set at the revision held). A lease
    /// whose renewal gets no answer is kept while it was renewed less than half its
    /// time to live ago (the next round comes before it can expire and be claimed);
    /// after that it is given up (no longer served) but tried again each round, and
    /// taken back if it still names us.
    async fn renew(&mut self) {
        let value = bytes::Bytes::from(self.worker_id.clone());
        let leases = &self.leases;
        let wanted: Vec<(u16, u64)> = self
            .owned
            .iter()
            .map(|(n, rev)| (*n, *rev))
            .chain(self.doubtful.iter().map(|(n, (rev, _))| (*n, *rev)))
            .collect();
        let results: Vec<(u16, Renewal)> = futures::stream::iter(wanted)
            .map(|(n, rev)| {
                let value = value.clone();
                async move { (n, update_own(leases, &subjects::lease_key(n), value, rev).await) }
            })
            .buffer_unordered(usize::from(SHARD_COUNT))
            .collect()
            .await;
        let now = Instant::now();
        let (mut unanswered, mut recovered) = (0, 0);
        for (n, renewal) in results {
            let was_doubtful = self.doubtful.remove(&n);
            match renewal {
                Renewal::Renewed(rev) => {
                    recovered += usize::from(was_doubtful.is_some());
                    self.owned.insert(n, rev);
                    self.renewed_at.insert(n, now);
                }
                Renewal::Lost(err) => {
                    if was_doubtful.is_none() {
                        warn!(shard = n, error = %err, "lease lost");
                    }
                    self.owned.remove(&n);
                    self.renewed_at.remove(&n);
                }
                Renewal::Unknown(err) => {
                    unanswered += 1;
                    if let Some((rev, since)) = was_doubtful {
                        // Long expired if it ever comes back: forget it.
                        if now.duration_since(since) < self.ttl * 3 {
                            self.doubtful.insert(n, (rev, since));
                        }
                        continue;
                    }
                    let age = self
                        .renewed_at
                        .get(&n)
                        .map_or(Duration::MAX, |at| now.duration_since(*at));
                    if age >= self.ttl / 2 {
                        debug!(shard = n, error = %err, unrenewed_ms = age.as_millis() as u64, "lease not renewed in time: given up for now");
                        if let Some(rev) = self.owned.remove(&n) {
                            self.doubtful.insert(n, (rev, now));
                        }
                        self.renewed_at.remove(&n);
                    }
                }
            }
        }
        if unanswered > 0 {
            warn!(
                shards = unanswered,
                given_up = self.doubtful.len(),
                "lease renewals unanswered: trying again soon"
            );
        }
        if recovered > 0 {
            info!(
                shards = recovered,
                "leases given up for want of an answer were still ours: taken back"
            );
        }
        self.unanswered = unanswered;
    }

    /// Set aside the shards farthest from our starting offset; they stop counting
    /// as owned now, and their leases go in [`Leases::finish_release`] once the
    /// caller has unsubscribed from them, so two workers never serve one shard.
    fn pick_releases(&mut self, count: usize) {
        let mut mine: Vec<(u16, u64)> = self.owned.iter().map(|(n, r)| (*n, *r)).collect();
        mine.sort_by_key(|(n, _)| (n.wrapping_sub(self.offset)) % SHARD_COUNT);
        for (n, rev) in mine.into_iter().rev().take(count) {
            self.owned.remove(&n);
            self.releasing.push((n, rev));
        }
    }

    /// Delete the leases set aside by the last round (after unsubscribing).
    pub async fn finish_release(&mut self) {
        let releasing = std::mem::take(&mut self.releasing);
        if releasing.is_empty() {
            return;
        }
        let count = releasing.len();
        let leases = &self.leases;
        futures::stream::iter(releasing)
            .for_each_concurrent(KV_CONCURRENCY, |(n, rev)| async move {
                if let Err(err) = leases.delete_expect_revision(subjects::lease_key(n), Some(rev)).await {
                    warn!(shard = n, error = %err, "cannot release lease");
                }
            })
            .await;
        info!(
            released = count,
            owned = self.owned.len(),
            "released shards to rebalance"
        );
    }

    async fn claim(&mut self, want: usize) -> Result<(), LeaseError> {
        let taken: HashSet<String> = keys(&self.leases, subjects::LEASE_BUCKET).await?.into_iter().collect();
        let free: Vec<u16> = (0..SHARD_COUNT)
            .map(|i| (i + self.offset) % SHARD_COUNT)
            .filter(|n| !self.owned.contains_key(n) && !taken.contains(&subjects::lease_key(*n)))
            .take(want)
            .collect();
        let won = self.create_many(free).await;
        if !won.is_empty() {
            info!(claimed = won.len(), "shards claimed");
        }
        self.won(won);
        Ok(())
    }

    /// Watch the lease bucket, to take shards the moment another worker lets go.
    pub async fn watch(&self) -> Result<kv::Watch, LeaseError> {
        let list = |reason: String| LeaseError::List {
            bucket: subjects::LEASE_BUCKET,
            reason,
        };
        tokio::time::timeout(LIST_TIMEOUT, self.leases.watch_all())
            .await
            .map_err(|_| LeaseError::TimedOut {
                bucket: subjects::LEASE_BUCKET,
            })?
            .map_err(|e| list(e.to_string()))
    }

    /// Shards whose leases were just deleted (released by their owner), from watch entries.
    pub fn released(entries: &[kv::Entry]) -> Vec<u16> {
        entries
            .iter()
            .filter(|e| matches!(e.operation, kv::Operation::Delete | kv::Operation::Purge))
            .filter_map(|e| e.key.strip_prefix("shard.")?.parse::<u16>().ok())
            .filter(|n| *n < SHARD_COUNT)
            .collect()
    }

    /// Take released shards while we are below our share. Returns whether the set
    /// of owned shards changed.
    pub async fn take_released(&mut self, shards: Vec<u16>) -> bool {
        let room = self.target.saturating_sub(self.owned.len());
        let wanted: Vec<u16> = shards
            .into_iter()
            .filter(|n| !self.owned.contains_key(n))
            .take(room)
            .collect();
        if wanted.is_empty() {
            return false;
        }
        let won = self.create_many(wanted).await;
        if won.is_empty() {
            return false;
        }
        debug!(taken = won.len(), "released shards taken over");
        self.won(won);
        true
    }

    /// Try to take each shard's lease (create fails when someone holds it);
    /// returns the ones won with their revisions.
    async fn create_many(&self, shards: Vec<u16>) -> Vec<(u16, u64)> {
        let value = bytes::Bytes::from(self.worker_id.clone());
        let leases = &self.leases;
        futures::stream::iter(shards)
            .map(|n| {
                let value = value.clone();
                async move {
                    leases
                        .create(subjects::lease_key(n), value)
                        .await
                        .ok()
                        .map(|rev| (n, rev))
                }
            })
            .buffer_unordered(KV_CONCURRENCY)
            .filter_map(|x| async move { x })
            .collect()
            .await
    }

    /// Take the leases still naming `dead` (a worker presumed dead), each with
    /// compare-and-set at the revision read, so of several survivors one wins each
    /// shard and a lease the owner renewed meanwhile stays its own. Past our share
    /// on purpose: a shard without an owner fails requests; the lease rounds even
    /// the split. Returns whether we won any.
    pub async fn take_from(&mut self, dead: &str) -> bool {
        let Ok(keys) = keys(&self.leases, subjects::LEASE_BUCKET).await else {
            return false;
        };
        let value = bytes::Bytes::from(self.worker_id.clone());
        let leases = &self.leases;
        let won: Vec<(u16, u64)> = futures::stream::iter(keys)
            .map(|key| {
                let value = value.clone();
                async move {
                    let n = key
                        .strip_prefix("shard.")?
                        .parse::<u16>()
                        .ok()
                        .filter(|n| *n < SHARD_COUNT)?;
                    let entry = leases.entry(&key).await.ok()??;
                    if entry.operation != kv::Operation::Put || entry.value != dead.as_bytes() {
                        return None;
                    }
                    leases
                        .update(&key, value, entry.revision)
                        .await
                        .ok()
                        .map(|rev| (n, rev))
                }
            })
            .buffer_unordered(KV_CONCURRENCY)
            .filter_map(|x| async move { x })
            .collect()
            .await;
        if won.is_empty() {
            return false;
        }
        info!(peer = dead, taken = won.len(), "took over a dead worker's shards");
        self.won(won);
        true
    }

    /// Drop every lease without touching the bucket (we were declared dead: others
    /// may hold them now; whatever is still ours expires or is claimed again).
    pub fn forget_all(&mut self) {
        self.owned.clear();
        self.renewed_at.clear();
        self.doubtful.clear();
        self.releasing.clear();
    }

    /// Give every lease back (graceful shutdown) so others take over at once; the
    /// worker key stays until [`Leases::leave`].
    pub async fn release_all(&mut self) {
        let mut owned: Vec<(u16, u64)> = self.owned.drain().collect();
        owned.append(&mut self.releasing);
        owned.extend(self.doubtful.drain().map(|(n, (rev, _))| (n, rev)));
        self.renewed_at.clear();
        let leases = &self.leases;
        futures::stream::iter(owned)
            .for_each_concurrent(KV_CONCURRENCY, |(n, rev)| async move {
                let _ = leases.delete_expect_revision(subjects::lease_key(n), Some(rev)).await;
            })
            .await;
    }

    /// Remove our key from the live workers, last thing in a drain: gateways take
    /// the deletion for "this worker will not answer", so it comes only after the
    /// in-flight requests were answered.
    pub async fn leave(&self) {
        let _ = self.workers.delete(subjects::token(&self.worker_id)).await;
    }
}

/// Write `value` (this worker's id) to `key` by compare-and-set at `rev`: a lease
/// renewal or a heartbeat. A refusal for the revision is not always a loss: an
/// earlier write may have landed though its answer was lost (a timeout while the
/// bucket's stream changed leader). A key that still names this worker is its own
/// (others write their own id, or delete the key), so it is written again at the
/// revision found.
pub(crate) async fn update_own(store: &kv::Store, key: &str, value: bytes::Bytes, rev: u64) -> Renewal {
    let refused = |e: &kv::UpdateError| e.kind() == kv::UpdateErrorKind::WrongLastRevision;
    match store.update(key, value.clone(), rev).await {
        Ok(rev) => Renewal::Renewed(rev),
        Err(err) if refused(&err) => match store.entry(key).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put && entry.value == value => {
                match store.update(key, value, entry.revision).await {
                    Ok(rev) => Renewal::Renewed(rev),
                    Err(err) if refused(&err) => Renewal::Lost(err.to_string()),
                    Err(err) => Renewal::Unknown(err.to_string()),
                }
            }
            Ok(_) => Renewal::Lost(err.to_string()),
            Err(read) => Renewal::Unknown(read.to_string()),
        },
        Err(err) => Renewal::Unknown(err.to_string()),
    }
}

/// Every live key of a bucket, within [`LIST_TIMEOUT`].
async fn keys(store: &kv::Store, bucket: &'static str) -> Result<Vec<String>, LeaseError> {
    let list = |e: &dyn std::fmt::Display| LeaseError::List {
        bucket,
        reason: e.to_string(),
    };
    let listing = async {
        store
            .keys()
            .await
            .map_err(|e| list(&e))?
            .try_collect()
            .await
            .map_err(|e| list(&e))
    };
    tokio::time::timeout(LIST_TIMEOUT, listing)
        .await
        .map_err(|_| LeaseError::TimedOut { bucket })?
}
