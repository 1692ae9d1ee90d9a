//! Fast failover: worker heartbeats, death detection and fencing.
//!
//! Shard leases (see [`crate::leases`]) live for `WORKER_LEASE_TTL` (10 s) and are
//! renewed every third of it; waiting for a crashed worker's leases to expire would
//! leave its sessions unserved for up to that long. Instead every worker writes its
//! key in [`proto::subjects::WORKER_BUCKET`] every `WORKER_HEARTBEAT_MS` (compare-
//! and-set on the key's revision) and watches the others' keys:
//!
//! - a peer not heard of for `WORKER_DEAD_AFTER_MS` is dead: its key is deleted (at
//!   the revision last seen, so a late heartbeat of a live peer wins) and the
//!   survivor whose delete landed takes its leases with compare-and-set at each
//!   lease's revision (the lease rounds even the split afterwards);
//! - **fencing**: a worker serves its shards only while its last *successful*
//!   heartbeat was *sent* less than [`Fence::limit`] (0.6 × dead-after) ago. The
//!   peers' clocks start when they *receive* that heartbeat, which is later, so the
//!   worker stops serving (requests are dropped unanswered, subscriptions closed)
//!   before any peer can take its shards. A worker that finds its key deleted
//!   (declared dead while stalled, e.g. `SIGSTOP` or a partition) forgets all its
//!   leases and starts over.
//!
//! JetStream is the only source of truth: every decision is a compare-and-set.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures::StreamExt;
use proto::subjects;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// When this worker may serve: set by successful heartbeats.
#[derive(Debug)]
pub struct Fence {
    start: Instant,
    /// Milliseconds since `start` at which the last successful heartbeat was sent.
    last_ok_ms: AtomicU64,
    limit: Duration,
}

impl Fence {
    /// A fence that serves for `limit` after each successful heartbeat.
    pub fn new(limit: Duration) -> Self {
        Self {
            start: Instant::now(),
            last_ok_ms: AtomicU64::new(0),
            limit,
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Whether the worker may serve its shards now.
    pub fn serving(&self) -> bool {
        self.now_ms().saturating_sub(self.last_ok_ms.load(Ordering::Relaxed)) < self.limit.as_millis() as u64
    }

    fn renewed(&self, sent_ms: u64) {
        self.last_ok_ms.fetch_max(sent_ms, Ordering::Relaxed);
    }

    /// Never serve again until the next successful heartbeat.
    fn revoke(&self) {
        self.last_ok_ms.store(0, Ordering::Relaxed);
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }
}

/// How long one attempt to open the workers' watch again may take.
const REWATCH_PATIENCE: Duration = Duration::from_secs(5);

/// One heartbeat ([`crate::leases::update_own`]: an earlier beat whose answer was
/// lost is not taken for an eviction). `Err(None)`: evicted; `Err(Some(_))`: no answer.
async fn heartbeat(workers: &kv::Store, key: &str, value: &bytes::Bytes, rev: u64) -> Result<u64, Option<String>> {
    match crate::leases::update_own(workers, key, value.clone(), rev).await {
        crate::leases::Renewal::Renewed(rev) => Ok(rev),
        crate::leases::Renewal::Lost(_) => Err(None),
        crate::leases::Renewal::Unknown(err) => Err(Some(err)),
    }
}

/// Watch every worker's key, starting with each key's newest entry. A watch of new
/// entries only would never learn of a peer whose last heartbeat predates it (one
/// that died just before this worker started, or before the watch was opened again
/// on a bucket a restarted nats-server lost): such a peer would never be declared
/// dead, and its shards would wait for their leases to expire.
async fn watch_peers(workers: &kv::Store) -> Result<kv::Watch, kv::WatchError> {
    workers.watch_with_history(">").await
}

/// How long a starting worker tries to write its first heartbeat.
const FIRST_BEAT_PATIENCE: Duration = Duration::from_secs(10);

/// What the liveness task tells the worker's main loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Heartbeats failed for longer than the fence: stop serving (keep the leases;
    /// those nobody took are renewed when heartbeats work again).
    Fenced,
    /// Heartbeats work again after a fence.
    Restored,
    /// Our key was deleted: others declared us dead and may hold our shards. Forget
    /// every lease and start over.
    Evicted,
    /// This peer (worker id) is dead: take its shards.
    Dead(String),
}

/// Settings of [`start`].
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub dead_after: Duration,
}

impl Timing {
    /// How long after its last successful heartbeat a worker still serves.
    pub fn fence(&self) -> Duration {
        self.dead_after * 6 / 10
    }
}

/// The heartbeat thread; [`Liveness::stop`] ends it.
pub struct Liveness {
    stop: tokio_util::sync::CancellationToken,
}

impl Liveness {
    /// Stop beating (the key stays until deleted or expired).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Start heartbeating on a thread of its own, with its own NATS connection, so a
/// busy worker (its runtime and connection full of requests) is not declared dead;
/// returns once the first heartbeat is written.
pub async fn start(
    nats_url: &str,
    worker_id: &str,
    timing: Timing,
    fence: Arc<Fence>,
    events: mpsc::Sender<Event>,
) -> anyhow::Result<Liveness> {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let (url, id) = (nats_url.to_owned(), worker_id.to_owned());
    std::thread::Builder::new().name("liveness".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(err) => {
                let _ = first_tx.send(Err(err.into()));
                return;
            }
        };
        runtime.block_on(async move {
            let workers = async {
                let nats = async_nats::ConnectOptions::new()
                    .name(format!("session-worker {id} liveness"))
                    .connect(proto::nats::servers(&url))
                    .await?;
                let kv = async_nats::jetstream::new(nats)
                    .get_key_value(subjects::WORKER_BUCKET)
                    .await?;
                anyhow::Ok(kv)
            };
            let workers = match workers.await {
                Ok(kv) => kv,
                Err(err) => {
                    let _ = first_tx.send(Err(err));
                    return;
                }
            };
            run(workers, id, timing, fence, events, stopped, first_tx).await;
        });
    })?;
    first_rx
        .await
        .map_err(|_| anyhow::anyhow!("the liveness thread ended"))??;
    Ok(Liveness { stop })
}

async fn run(
    workers: kv::Store,
    me: String,
    timing: Timing,
    fence: Arc<Fence>,
    events: mpsc::Sender<Event>,
    stop: tokio_util::sync::CancellationToken,
    first: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
) {
    let key = subjects::token(&me);
    let value = bytes::Bytes::from(me.clone());
    // Tried for a while: on a JetStream cluster a bucket just created may not be
    // known yet to the node this connection uses.
    let give_up = Instant::now() + FIRST_BEAT_PATIENCE;
    let (sent, rev, mut watch) = loop {
        let sent = fence.now_ms();
        let first_beat = async {
            let rev = workers.put(&key, value.clone()).await?;
            let watch = watch_peers(&workers).await?;
            anyhow::Ok((rev, watch))
        };
        match first_beat.await {
            Ok((rev, watch)) => break (sent, rev, watch),
            Err(err) if Instant::now() < give_up => {
                debug!(error = %err, "first heartbeat failed: trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => {
                let _ = first.send(Err(err));
                return;
            }
        }
    };
    fence.renewed(sent);
    let _ = first.send(Ok(()));
    {
        let mut rev = Some(rev);
        let mut fenced = false;
        // Whether the last heartbeat failed.
        let mut failing = false;
        // Whether the watch must be opened again (it follows a bucket that may be gone),
        // and whether that is under way.
        let mut stale_watch = false;
        let mut rewatching = false;
        let (rewatch_tx, mut rewatch_rx) = mpsc::channel::<Result<kv::Watch, ()>>(1);
        // key → (worker id, revision, when last heard of)
        let mut peers: HashMap<String, (String, u64, Instant)> = HashMap::new();
        let mut beat = tokio::time::interval(timing.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = beat.tick() => {}
                Some(opened) = rewatch_rx.recv() => {
                    rewatching = false;
                    match opened {
                        Ok(w) => {
                            watch = w;
                            stale_watch = false;
                            peers.clear();
                        }
                        Err(()) => debug!("cannot watch the workers yet: trying again"),
                    }
                    continue;
                }
                entry = watch.next(), if !stale_watch => {
                    match entry {
                        Some(Ok(e)) if e.key != key => match e.operation {
                            kv::Operation::Put => {
                                let id = String::from_utf8_lossy(&e.value).into_owned();
                                peers.insert(e.key.clone(), (id, e.revision, Instant::now()));
                            }
                            _ => {
                                peers.remove(&e.key);
                            }
                        },
                        Some(_) => {}
                        None => {
                            // The watch ended (NATS reconnect): open it again on the
                            // next successful beat.
                            stale_watch = true;
                            peers.clear();
                        }
                    }
                    continue;
                }
            }
            if events.is_closed() {
                break;
            }
            // (During a drain nobody reads the events: beating goes on regardless.)
            // Our heartbeat.
            let sent = fence.now_ms();
            let outcome = match rev {
                Some(r) => heartbeat(&workers, &key, &value, r).await,
                None => workers.put(&key, value.clone()).await.map_err(|e| Some(e.to_string())),
            };
            let failed_before = std::mem::replace(&mut failing, outcome.is_err());
            match outcome {
                Ok(r) => {
                    rev = Some(r);
                    fence.renewed(sent);
                    if fenced {
                        fenced = false;
                        info!("heartbeats work again: serving");
                        send(&events, Event::Restored);
                    }
                    // After an outage the bucket may be a new one (a nats-server
                    // restarted without its memory buckets): a watch still open on
                    // the old one would wait for sequences the new one lacks. Opened
                    // again beside the beats (a JetStream cluster that just lost a
                    // node can take seconds to create a consumer, and the beats must
                    // go on); meanwhile nobody is declared dead (no peer is known).
                    if (failed_before || stale_watch) && !rewatching {
                        peers.clear();
                        stale_watch = true;
                        rewatching = true;
                        let (workers, tx) = (workers.clone(), rewatch_tx.clone());
                        tokio::spawn(async move {
                            let opened = tokio::time::timeout(REWATCH_PATIENCE, watch_peers(&workers)).await;
                            let _ = tx.send(opened.map_err(|_| ()).and_then(|w| w.map_err(|_| ()))).await;
                        });
                    }
                }
                Err(None) => {
                    warn!(worker_id = %me, "declared dead by the other workers: giving up every shard");
                    fence.revoke();
                    rev = None;
                    fenced = true;
                    send(&events, Event::Evicted);
                }
                Err(Some(err)) => {
                    debug!(error = %err, "heartbeat failed");
                    if !fenced && !fence.serving() {
                        fenced = true;
                        warn!(error = %err, "heartbeats failing: fenced, not serving");
                        send(&events, Event::Fenced);
                    }
                }
            }
            // The peers.
            let dead: Vec<String> = peers
                .iter()
                .filter(|(_, (_, _, seen))| seen.elapsed() > timing.dead_after)
                .map(|(k, _)| k.clone())
                .collect();
            for k in dead {
                if let Some((id, r, seen)) = peers.remove(&k) {
                    info!(peer = %id, silent_ms = seen.elapsed().as_millis() as u64, "worker presumed dead");
                    // At the revision last seen: a live peer's newer heartbeat wins, and
                    // of several survivors only the one whose delete lands takes over.
                    match workers.delete_expect_revision(&k, Some(r)).await {
                        Ok(()) => {
                            send(&events, Event::Dead(id));
                        }
                        Err(err) => debug!(peer = %id, error = %err, "not ours to declare dead"),
                    }
                }
            }
        }
    }
}

/// Never wait on the main loop: a heartbeat late because the loop is busy (or gone,
/// in a drain) would get this worker declared dead.
fn send(events: &mpsc::Sender<Event>, event: Event) {
    if let Err(err) = events.try_send(event) {
        warn!(error = %err, "liveness event not delivered");
    }
}
