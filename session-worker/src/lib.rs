//! session-worker: the MCP server logic of mcp-cluster.
//!
//! A worker leases a fair share of the shards ([`leases`]), subscribes to their
//! subjects ([`router`]) and runs one actix actor per MCP session ([`actor`]),
//! each serving MCP through the official Rust SDK `rmcp` over a channel
//! transport fed from NATS ([`transport`]). Stateless (2026-07-28) requests
//! arrive through a queue group and are served without a session
//! ([`stateless`]). Session records live in JetStream KV, so another worker can
//! take a session over. Tools reach the auth-service's token vault through a
//! [`vault::VaultClient`].
//!
//! This crate never speaks HTTP to MCP clients (that is the gateway's job) and
//! never validates tokens: it trusts the principal in the envelope, which only
//! the gateway, on the private NATS network, can send.
#![forbid(unsafe_code)]

pub mod actor;
pub mod config;
pub mod events;
pub mod headers;
pub mod leases;
pub mod liveness;
pub mod metrics;
pub mod owners;
pub mod records;
pub mod router;
pub mod stateless;
pub mod tasks;
pub mod transport;
pub mod users;
pub mod vault;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

pub use config::Config;

use crate::actor::{Registry, Shared};
use crate::leases::Leases;
use crate::router::{Router, Subscriptions};

/// A started worker.
pub struct Worker {
    pub worker_id: String,
    pub admin_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Worker {
    /// Drain and stop: release leases, evict actors (their state is in KV),
    /// finish in-flight stateless requests within the drain timeout.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// The worker's buckets and streams (besides the lease buckets of [`Leases`]).
struct Stores {
    sessions: jetstream::kv::Store,
    owners: jetstream::kv::Store,
    tasks: jetstream::kv::Store,
    responses: Option<jetstream::kv::Store>,
    users: jetstream::kv::Store,
}

/// Open every bucket and stream the worker uses, creating those missing. Called at
/// start, and again when a lease round fails: a nats-server restarted without its
/// memory-backed buckets (leases, heartbeats, request records) gets them back, and
/// the handles opened at start work again (a handle names its bucket, not a copy).
async fn open_stores(js: &jetstream::Context, config: &Config) -> anyhow::Result<Stores> {
    let file = jetstream::stream::StorageType::File;
    let r = config.nats_replicas;
    let ttl = Duration::from_secs(config.session_ttl_secs);
    let sessions = leases::bucket(
        js,
        proto::subjects::SESSION_BUCKET,
        ttl,
        file,
        config.sessions_max_bytes,
        r,
    )
    .await?;
    events::ensure(
        js,
        events::Retention {
            max_age: Duration::from_secs(config.events_max_age_secs),
            max_per_session: config.events_max_per_session,
            max_bytes: config.events_max_bytes,
            replicas: r,
        },
    )
    .await?;
    let owners_max = (config.sessions_max_bytes / 4).max(1024 * 1024);
    let owners = leases::bucket(js, proto::subjects::PRINCIPAL_SESSIONS_BUCKET, ttl, file, owners_max, r).await?;
    let task_ttl = Duration::from_secs(config.task_ttl_secs) + tasks::BUCKET_SLACK;
    let tasks = leases::bucket(
        js,
        proto::subjects::TASK_BUCKET,
        task_ttl,
        file,
        config.tasks_max_bytes,
        r,
    )
    .await?;
    let responses = if config.request_records {
        let ttl = Duration::from_secs(config.record_ttl_secs);
        let memory = jetstream::stream::StorageType::Memory;
        Some(
            leases::bucket(
                js,
                proto::subjects::RESPONSE_BUCKET,
                ttl,
                memory,
                config.records_max_bytes,
                r,
            )
            .await?,
        )
    } else {
        None
    };
    // A user's state lasts until the operator's bucket limits say otherwise.
    let users = leases::bucket(js, proto::subjects::USER_BUCKET, Duration::ZERO, file, owners_max, r).await?;
    Leases::ensure(js, config.lease_ttl(), r).await?;
    Ok(Stores {
        sessions,
        owners,
        tasks,
        responses,
        users,
    })
}

/// When the next lease round comes after one that left leases in doubt.
const UNSETTLED_ROUND: Duration = Duration::from_millis(500);

/// How long a failed lease round may spend creating missing buckets again.
const OPEN_STORES_BOUND: Duration = Duration::from_secs(2);

/// How long a starting worker keeps trying to open its buckets and streams.
const OPEN_STORES_PATIENCE: Duration = Duration::from_secs(30);

/// [`open_stores`], tried again for a while: a JetStream cluster that has just
/// elected its leader, or is busy creating the same streams for other services,
/// may time a request out.
async fn open_stores_patiently(js: &jetstream::Context, config: &Config) -> anyhow::Result<Stores> {
    let give_up = Instant::now() + OPEN_STORES_PATIENCE;
    loop {
        match open_stores(js, config).await {
            Ok(stores) => return Ok(stores),
            Err(err) if Instant::now() < give_up => {
                warn!(error = %err, "cannot open the buckets yet: trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Run until `shutdown` resolves, then drain.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let worker = start(config).await?;
    shutdown.await;
    worker.shutdown().await;
    Ok(())
}

/// Connect, take leases, subscribe and serve. Must run inside an actix `System`.
pub async fn start(config: Config) -> anyhow::Result<Worker> {
    let profile = config.validate()?;
    let toolbox = tools::shipped::toolbox(&config.tools.settings()).context("tool settings")?;
    let worker_id = config
        .worker_id
        .clone()
        .unwrap_or_else(|| format!("worker-{}", uuid::Uuid::new_v4().simple()));
    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::register(&registry)?;
    let nats_metrics = telemetry::NatsMetrics::register(&registry)?;
    let nats = nats_metrics
        .follow(async_nats::ConnectOptions::new())
        .name(format!("session-worker {worker_id}"))
        .connect(proto::nats::servers(&config.nats_url))
        .await
        .with_context(|| format!("cannot connect to NATS at {}", config.nats_url))?;
    nats_metrics.connected();
    let js = jetstream::new(nats.clone());
    let Stores {
        sessions,
        owners,
        tasks: task_bucket,
        responses,
        users,
    } = open_stores_patiently(&js, &config).await?;
    let task_runtime = tools::tasks::Tasks::new(
        Arc::new(tasks::KvTaskStore::new(
            task_bucket,
            nats.clone(),
            config.task_max_record_bytes,
        )),
        config.task_settings(),
    );
    let mut leases = Leases::open(&js, &worker_id, config.lease_ttl(), config.nats_replicas).await?;
    let timing = config.liveness();
    let fence = Arc::new(liveness::Fence::new(timing.fence()));
    let (live_tx, mut live_rx) = tokio::sync::mpsc::channel(64);
    let liveness = liveness::start(&config.nats_url, &worker_id, timing, fence.clone(), live_tx).await?;

    let threads = if config.arbiters == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    } else {
        config.arbiters
    };
    let arbiters: Vec<actix::Arbiter> = (0..threads).map(|_| actix::Arbiter::new()).collect();
    // Each actor thread gets a NATS connection of its own, made on that thread so
    // the connection's task runs there too (see `router::Lane`).
    let mut lanes = Vec::with_capacity(arbiters.len());
    for (n, arbiter) in arbiters.iter().enumerate() {
        let options = nats_metrics
            .follow(async_nats::ConnectOptions::new())
            .name(format!("session-worker {worker_id} lane-{n}"));
        let url = config.nats_url.clone();
        let (tx, rx) = oneshot::channel();
        arbiter.spawn(async move {
            let _ = tx.send(options.connect(proto::nats::servers(&url)).await);
        });
        let nats = rx
            .await
            .context("an actor thread stopped while starting")?
            .with_context(|| format!("cannot connect to NATS at {}", config.nats_url))?;
        lanes.push(router::Lane {
            arbiter: arbiter.handle(),
            nats,
        });
    }
    let listen = tools::ListenHub::default();
    let publisher = nats.clone();
    listen.set_broadcast(Arc::new(move |what: tools::ListChanged| {
        let nats = publisher.clone();
        tokio::spawn(async move {
            if let Err(err) = nats.publish(proto::subjects::LIST_CHANGED, what.as_str().into()).await {
                warn!(error = %err, "cannot broadcast list change");
            }
        });
    }));
    let mut changes = nats.subscribe(proto::subjects::LIST_CHANGED).await?;
    let local = listen.clone();
    let changes_task = tokio::spawn(async move {
        while let Some(msg) = changes.next().await {
            if let Some(what) = std::str::from_utf8(&msg.payload)
                .ok()
                .and_then(tools::ListChanged::parse)
            {
                local.deliver(what).await;
            }
        }
    });
    let owners = owners::Index::new(owners, sessions.clone(), config.max_sessions_per_principal);
    let shared = Arc::new(Shared {
        nats: nats.clone(),
        js: js.clone(),
        sessions,
        profile,
        metrics: metrics.clone(),
        registry: Registry::default(),
        idle_timeout: config.idle_timeout(),
        listen,
        vault: Arc::new(vault::VaultClient::new(nats.clone())),
        toolbox,
        owners,
        max_record_bytes: config.max_record_bytes,
        tasks: task_runtime,
        fence: fence.clone(),
        worker_key: proto::subjects::token(&worker_id),
        session_ttl: Duration::from_secs(config.session_ttl_secs),
        responses,
        users,
        user_actors: users::UserActors::default(),
        user_client: Arc::new(users::UserClient::new(nats.clone())),
    });
    let router = Router::new(
        shared.clone(),
        lanes,
        Duration::from_secs(config.stateless_timeout_secs),
        config.max_stateless_inflight,
    )?;

    let stateless_stop = tokio_util::sync::CancellationToken::new();
    router.serve_stateless(stateless_stop.clone()).await?;

    let ready = Arc::new(AtomicBool::new(false));
    let probe_ready = ready.clone();
    let probe_nats = nats.clone();
    let admin = telemetry::admin_server(
        config.admin_listen,
        registry,
        Arc::new(move || {
            probe_ready.load(Ordering::Relaxed)
                && matches!(probe_nats.connection_state(), async_nats::connection::State::Connected)
        }),
    )?;
    let (admin_addr, admin_handle, admin_server) = (admin.addr, admin.handle, admin.server);
    let admin_task = tokio::spawn(async move {
        if let Err(err) = admin_server.await {
            warn!(error = %err, "admin server failed");
        }
    });

    let mut subs = Subscriptions::new(router.clone());
    let owned = leases.tick().await?;
    subs.apply(&owned).await?;
    nats.flush().await?;
    subs.flush().await;
    metrics.owned_shards.set(subs.owned() as i64);
    ready.store(!owned.is_empty(), Ordering::Relaxed);
    info!(%worker_id, %admin_addr, shards = owned.len(), "session worker started");

    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let renew_every = config.lease_ttl() / 3;
    let drain_timeout = Duration::from_secs(config.drain_timeout_secs);
    let id = worker_id.clone();
    let mut lease_changes = leases.watch().await?;
    let task = tokio::spawn(async move {
        let mut interval = tokio::time::interval(renew_every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                Some(event) = live_rx.recv() => {
                    let serve = match event {
                        liveness::Event::Fenced => false,
                        liveness::Event::Restored => {
                            // Back after an outage: the lease bucket may be a new one (a
                            // restarted nats-server), so watch it afresh and claim now.
                            match leases.watch().await {
                                Ok(watch) => lease_changes = watch,
                                Err(err) => warn!(error = %err, "cannot watch the leases"),
                            }
                            interval.reset_immediately();
                            true
                        }
                        liveness::Event::Evicted => {
                            subs.clear().await;
                            // Leases still at our revision were never taken over (e.g. all
                            // of them after a nats-server restart): give them back now, so
                            // they are claimed at once instead of after expiring. Bounded:
                            // NATS may still be out of reach.
                            let _ = tokio::time::timeout(Duration::from_secs(1), leases.release_all()).await;
                            leases.forget_all();
                            false
                        }
                        liveness::Event::Dead(peer) => {
                            if !leases.take_from(&peer).await {
                                continue;
                            }
                            fence.serving()
                        }
                    };
                    if serve {
                        if let Err(err) = subs.apply(&leases.owned()).await {
                            warn!(error = %err, "cannot subscribe to shards");
                        }
                        subs.flush().await;
                    } else {
                        subs.clear().await;
                    }
                    metrics.owned_shards.set(subs.owned() as i64);
                    ready.store(subs.owned() > 0, Ordering::Relaxed);
                }
                Some(Ok(entry)) = lease_changes.next() => {
                    // Another worker released shards: take them now rather than at
                    // our next round, so none is long without an owner. Releases
                    // come in bursts; take the whole burst at once.
                    let mut entries = vec![entry];
                    while entries.len() < usize::from(proto::SHARD_COUNT) {
                        match futures::FutureExt::now_or_never(lease_changes.next()) {
                            Some(Some(Ok(e))) => entries.push(e),
                            _ => break,
                        }
                    }
                    if leases.take_released(Leases::released(&entries)).await && fence.serving() {
                        if let Err(err) = subs.apply(&leases.owned()).await {
                            warn!(error = %err, "cannot subscribe to shards");
                        }
                        subs.flush().await;
                        metrics.owned_shards.set(subs.owned() as i64);
                        ready.store(subs.owned() > 0, Ordering::Relaxed);
                    }
                }
                _ = interval.tick() => {
                    metrics.tasks_running.set(shared.tasks.running() as i64);
                    match leases.tick().await {
                        Ok(owned) => {
                            // Fenced: hold the leases (renewed if still ours), serve none.
                            if !fence.serving() {
                                subs.clear().await;
                            } else if let Err(err) = subs.apply(&owned).await {
                                warn!(error = %err, "cannot subscribe to shards");
                            }
                            subs.flush().await;
                            // Unsubscribed first, so the next owner never shares a shard with us.
                            leases.finish_release().await;
                            metrics.owned_shards.set(subs.owned() as i64);
                            ready.store(subs.owned() > 0, Ordering::Relaxed);
                            if leases.unsettled() {
                                // Renewals went unanswered (a lease bucket electing its
                                // leader): try again well before the leases can expire.
                                interval.reset_after(UNSETTLED_ROUND.min(renew_every));
                            }
                        }
                        Err(err) => {
                            if !matches!(err, leases::LeaseError::Unanswered(_)) {
                                warn!(error = %err, "lease round failed");
                            }
                            // Leases given up meanwhile (renewals unanswered too long) are
                            // served no more.
                            if !fence.serving() {
                                subs.clear().await;
                            } else if let Err(err) = subs.apply(&leases.owned()).await {
                                warn!(error = %err, "cannot subscribe to shards");
                            }
                            subs.flush().await;
                            metrics.owned_shards.set(subs.owned() as i64);
                            ready.store(subs.owned() > 0, Ordering::Relaxed);
                            // A nats-server restarted without its memory buckets: create
                            // them again; the watch must start over on the new bucket. Not
                            // when a bucket only answered late (its stream is electing a
                            // leader), and bounded: liveness events wait meanwhile.
                            if !matches!(err, leases::LeaseError::TimedOut { .. }) {
                                match tokio::time::timeout(OPEN_STORES_BOUND, open_stores(&js, &config)).await {
                                    Ok(Ok(_)) => match leases.watch().await {
                                        Ok(watch) => lease_changes = watch,
                                        Err(err) => warn!(error = %err, "cannot watch the leases"),
                                    },
                                    Ok(Err(err)) => debug!(error = %err, "cannot open the buckets yet"),
                                    Err(_) => debug!("cannot open the buckets yet: timed out"),
                                }
                            }
                            if leases.unsettled() {
                                interval.reset_after(UNSETTLED_ROUND.min(renew_every));
                            }
                        }
                    }
                }
            }
        }
        info!(worker_id = %id, "draining");
        ready.store(false, Ordering::Relaxed);
        stateless_stop.cancel();
        changes_task.abort();
        // Heartbeats go on until the in-flight requests are answered (below).
        subs.clear().await;
        // Bounded: with NATS gone the KV deletes would each wait for a timeout.
        let _ = tokio::time::timeout(drain_timeout, leases.release_all()).await;
        metrics.owned_shards.set(0);
        for handle in shared.registry.all() {
            handle.evict();
        }
        let deadline = Instant::now() + drain_timeout;
        while Instant::now() < deadline && (!shared.registry.is_empty() || metrics.stateless_inflight.get() > 0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Tasks still running here end as failed, saying why, rather than going stale.
        let _ = tokio::time::timeout(drain_timeout, shared.tasks.shutdown()).await;
        liveness.stop();
        drop(live_rx);
        let _ = tokio::time::timeout(Duration::from_secs(2), leases.leave()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), shared.nats.flush()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), subs.flush()).await;
        admin_handle.stop(true).await;
        let _ = admin_task.await;
        for arbiter in arbiters {
            arbiter.stop();
            let _ = arbiter.join();
        }
        info!(worker_id = %id, "stopped");
    });
    Ok(Worker {
        worker_id,
        admin_addr,
        stop: Some(stop_tx),
        task,
    })
}
