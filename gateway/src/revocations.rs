//! Keeps the validator's [`RevocationSet`] in step with the auth-service's
//! revocation bucket ([`proto::auth::REVOCATION_BUCKET`]).
//!
//! One task, [`spawn`]ed at start-up and joined at shutdown: it opens the bucket
//! (creating it, with the auth-service's exact configuration, when the gateway
//! comes first), watches every key *with history* so the revocations made before
//! this gateway started are read too, and applies each entry (JSON
//! [`proto::auth::Revocation`]; a delete or purge forgets the key). When the watch
//! breaks it is set up again after a bounded, growing pause; the new watch replays
//! the bucket, so nothing put in between is missed. A delete missed while the
//! watch was down is not seen, which only errs on the side of refusing.
//!
//! The set counts as synced (the gateway's readiness) once the entries that
//! existed when the first watch began have all been applied. Expired entries are
//! pruned every [`PRUNE_INTERVAL`]. This task never refuses or accepts anything
//! itself; [`crate::auth`] does, on every request.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use prometheus::IntGauge;
use proto::auth::{REVOCATION_BUCKET, REVOCATION_MAX_AGE_SECS, Revocation};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::RevocationSet;

/// First pause before the watch is set up again after a failure.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest pause between attempts (the pause doubles up to this).
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often expired revocations are dropped.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(30);

/// Why the watch stopped; the task logs it and starts again.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot open kv bucket {REVOCATION_BUCKET}: {0}")]
    Bucket(String),
    #[error("cannot read the state of kv bucket {REVOCATION_BUCKET}: {0}")]
    Info(String),
    #[error("cannot watch kv bucket {REVOCATION_BUCKET}: {0}")]
    Watch(String),
    #[error("watch of kv bucket {REVOCATION_BUCKET} failed: {0}")]
    Broken(String),
    #[error("watch of kv bucket {REVOCATION_BUCKET} ended")]
    Ended,
}

/// The bucket's configuration; the auth-service creates it with the same.
pub fn bucket_config(replicas: usize) -> kv::Config {
    kv::Config {
        num_replicas: replicas,
        bucket: REVOCATION_BUCKET.to_owned(),
        history: 1,
        max_age: Duration::from_secs(REVOCATION_MAX_AGE_SECS),
        max_bytes: proto::auth::REVOCATION_MAX_BYTES,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// Open the revocation bucket, creating it if nobody has yet.
pub async fn open_bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, WatchError> {
    if let Ok(store) = js.get_key_value(REVOCATION_BUCKET).await {
        return Ok(store);
    }
    match js.create_key_value(bucket_config(replicas)).await {
        Ok(store) => Ok(store),
        // The auth-service (or another gateway) may have created it meanwhile.
        Err(create) => js
            .get_key_value(REVOCATION_BUCKET)
            .await
            .map_err(|_| WatchError::Bucket(create.to_string())),
    }
}

/// Start the revocation watch: the task `revocation-watch`, until `stop`.
pub fn spawn(
    js: jetstream::Context,
    set: RevocationSet,
    held: IntGauge,
    stop: CancellationToken,
    replicas: usize,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        debug!(task = "revocation-watch", "started");
        let mut pause = RETRY_MIN;
        loop {
            let started = Instant::now();
            let outcome = tokio::select! {
                _ = stop.cancelled() => break,
                outcome = watch(&js, &set, &held, &stop, replicas) => outcome,
            };
            let Err(err) = outcome else { break };
            // A watch that lived a while earns a quick retry; repeated quick
            // failures back off.
            if started.elapsed() >= RETRY_MAX {
                pause = RETRY_MIN;
            }
            warn!(task = "revocation-watch", error = %err, retry_in = ?pause, "revocation watch lost");
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(RETRY_MAX);
        }
        debug!(task = "revocation-watch", "stopped");
    })
}

/// One watch, from opening the bucket until it breaks (`Err`) or `stop` (`Ok`).
async fn watch(
    js: &jetstream::Context,
    set: &RevocationSet,
    held: &IntGauge,
    stop: &CancellationToken,
    replicas: usize,
) -> Result<(), WatchError> {
    let store = open_bucket(js, replicas).await?;
    // Counted before the watch starts: when the bucket is empty now, whatever is
    // put later arrives through the watch, so the set is synced at once.
    let existing = bucket_messages(&store).await?;
    let mut entries = store
        .watch_with_history(">")
        .await
        .map_err(|e| WatchError::Watch(e.to_string()))?;
    if existing == 0 {
        mark_synced(set);
    }
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = prune.tick() => {
                held.set(gauge_value(set.prune(unix_now())));
                // Entries counted at the start may all have aged out before the
                // watch delivered them; then nothing would ever mark the set synced.
                if !set.is_synced() && bucket_messages(&store).await? == 0 {
                    mark_synced(set);
                }
            }
            entry = entries.next() => match entry {
                Some(Ok(entry)) => {
                    apply(set, &entry);
                    held.set(gauge_value(set.len()));
                    if entry.seen_current {
                        mark_synced(set);
                    }
                }
                Some(Err(e)) => return Err(WatchError::Broken(e.to_string())),
                None => return Err(WatchError::Ended),
            },
        }
    }
}

async fn bucket_messages(store: &kv::Store) -> Result<u64, WatchError> {
    store
        .stream
        .get_info()
        .await
        .map(|info| info.state.messages)
        .map_err(|e| WatchError::Info(e.to_string()))
}

fn mark_synced(set: &RevocationSet) {
    if !set.is_synced() {
        set.mark_synced();
        info!(revocations = set.len(), "revocations loaded");
    }
}

/// Apply one bucket entry to the set.
fn apply(set: &RevocationSet, entry: &kv::Entry) {
    let key = entry.key.as_str();
    if !(key.starts_with("grant.") || key.starts_with("token.")) {
        debug!(key, "ignoring unknown revocation key");
        return;
    }
    match entry.operation {
        kv::Operation::Put => match serde_json::from_slice::<Revocation>(&entry.value) {
            Ok(revocation) => {
                debug!(key, reason = %revocation.reason, until = revocation.until, "revocation");
                set.insert(key, revocation.until);
            }
            Err(e) => warn!(key, error = %e, "unreadable revocation ignored"),
        },
        kv::Operation::Delete | kv::Operation::Purge => set.remove(key),
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
