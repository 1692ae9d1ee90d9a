//! The gateway's side of NATS: sends envelopes to workers and receives the
//! server→client messages that answer them.
//!
//! All HTTP responses a gateway has open share one wildcard subscription,
//! `mcp.reply.<gateway>.*`; each response registers a stream number and gets
//! its messages through an in-process channel. Session event streams (GET,
//! legacy SSE) likewise share one subscription, `mcp.live.*` (every session's
//! live events: a stream costs a map entry, not a NATS subscription of its own),
//! registered before reading back from the event stream what a resuming client
//! missed. A resumed request's answer stream subscribes to its own subject.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::{HeaderMap, RequestErrorKind};
use futures::StreamExt;
use proto::trace::TraceParent;
use proto::{Ack, Envelope, Outbound, subjects};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, warn};

use crate::metrics::Metrics;

/// Pause between attempts while no worker answers a shard (shards moving).
const NO_RESPONDERS_PAUSE: Duration = Duration::from_millis(100);
/// How often a request waiting for NATS to reconnect looks again.
const RECONNECT_POLL: Duration = Duration::from_millis(25);

/// Why a worker could not be reached; small and matchable so callers can decide.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RelayError {
    #[error("no worker is subscribed to {0}")]
    NoResponders(String),
    #[error("worker did not acknowledge within {0:?}")]
    TimedOut(Duration),
    #[error("cannot encode envelope: {0}")]
    Encode(String),
    #[error("unreadable answer from worker: {0}")]
    Decode(String),
    #[error("nats: {0}")]
    Nats(String),
    #[error("not connected to NATS")]
    Disconnected,
    /// The envelope is larger than the NATS server's payload limit.
    #[error("message of {size} bytes exceeds the message bus limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
}

pub struct Relay {
    nats: async_nats::Client,
    gateway_id: String,
    streams: Mutex<HashMap<u64, mpsc::UnboundedSender<Outbound>>>,
    next: AtomicU64,
    ack_timeout: Duration,
    no_responders_retry: Duration,
    metrics: Metrics,
    /// Keys of workers declared dead (deleted from [`subjects::WORKER_BUCKET`]).
    deaths: broadcast::Sender<String>,
    events_stream: tokio::sync::OnceCell<async_nats::jetstream::stream::Stream>,
    /// Open session event streams by session token, fed by the one `mcp.live.*`
    /// subscription (made at the first stream: a relay that serves none has none).
    taps: Mutex<Taps>,
    live: tokio::sync::OnceCell<()>,
}

type Taps = HashMap<String, Vec<(u64, futures::channel::mpsc::UnboundedSender<async_nats::Message>)>>;

/// What ended the wait for a request's next message.
#[derive(Debug)]
pub enum Next {
    Message(Outbound),
    /// The worker serving the request was declared dead.
    WorkerGone,
    TimedOut,
    Closed,
}

/// The messages answering one request, until the last one.
pub struct ReplyStream {
    id: u64,
    pub subject: String,
    rx: mpsc::UnboundedReceiver<Outbound>,
    relay: Arc<Relay>,
}

impl ReplyStream {
    pub async fn next(&mut self) -> Option<Outbound> {
        self.rx.recv().await
    }

    /// The next message, unless the deadline passes or the worker that acknowledged
    /// the request (`worker`, its key) is declared dead first.
    pub async fn next_from(
        &mut self,
        worker: Option<&str>,
        deaths: &mut broadcast::Receiver<String>,
        deadline: tokio::time::Instant,
    ) -> Next {
        let timeout = tokio::time::sleep_until(deadline);
        tokio::pin!(timeout);
        loop {
            tokio::select! {
                biased;
                m = self.rx.recv() => return m.map_or(Next::Closed, Next::Message),
                _ = &mut timeout => return Next::TimedOut,
                dead = deaths.recv(), if worker.is_some() => match dead {
                    Ok(key) if Some(key.as_str()) == worker => return Next::WorkerGone,
                    Err(broadcast::error::RecvError::Closed) => return self.rx.recv().await.map_or(Next::Closed, Next::Message),
                    _ => {}
                },
            }
        }
    }
}

impl Drop for ReplyStream {
    fn drop(&mut self) {
        self.relay.lock().remove(&self.id);
    }
}

impl Relay {
    /// Subscribe to this gateway's reply subjects; returns the relay and the
    /// dispatcher task (ends when the subscription does).
    pub async fn start(
        nats: async_nats::Client,
        gateway_id: String,
        ack_timeout: Duration,
        no_responders_retry: Duration,
        metrics: Metrics,
    ) -> Result<(Arc<Self>, JoinHandle<()>), async_nats::SubscribeError> {
        let mut sub = nats.subscribe(subjects::reply_filter(&gateway_id)).await?;
        let (deaths, _) = broadcast::channel(256);
        let relay = Arc::new(Self {
            nats,
            gateway_id,
            streams: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            ack_timeout,
            no_responders_retry,
            metrics,
            deaths,
            events_stream: tokio::sync::OnceCell::new(),
            taps: Mutex::new(HashMap::new()),
            live: tokio::sync::OnceCell::new(),
        });
        tokio::spawn(watch_deaths(Arc::downgrade(&relay)));
        let weak = Arc::downgrade(&relay);
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(relay) = weak.upgrade() else { break };
                let Some(id) = msg.subject.rsplit('.').next().and_then(|s| s.parse::<u64>().ok()) else {
                    continue;
                };
                let out = match Outbound::from_bytes(&msg.payload) {
                    Ok(out) => out,
                    Err(err) => {
                        warn!(error = %err, "undecodable message from worker");
                        Outbound::aborted(0)
                    }
                };
                let sender = relay.lock().get(&id).cloned();
                match sender {
                    Some(tx) => {
                        let _ = tx.send(out);
                    }
                    None => debug!(stream = id, "message for a closed response dropped"),
                }
            }
        });
        Ok((relay, task))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<Outbound>>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn taps(&self) -> std::sync::MutexGuard<'_, Taps> {
        self.taps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follow a session's live events (`mcp.live.<session>`) on the shared
    /// subscription, which is made the first time; the returned tap unregisters
    /// when dropped.
    async fn tap(self: &Arc<Self>, session: &str) -> Result<LiveTap, RelayError> {
        self.live
            .get_or_try_init(|| async {
                let sub = self
                    .nats
                    .subscribe(format!("{}.*", subjects::LIVE_PREFIX))
                    .await
                    .map_err(|e| RelayError::Nats(e.to_string()))?;
                // On this relay's thread; ends with the subscription (the connection).
                tokio::spawn(dispatch_live(Arc::downgrade(self), sub));
                Ok::<(), RelayError>(())
            })
            .await?;
        let token = subjects::token(session);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = futures::channel::mpsc::unbounded();
        self.taps().entry(token.clone()).or_default().push((id, tx));
        Ok(LiveTap {
            rx,
            relay: Arc::downgrade(self),
            token,
            id,
        })
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// Register a new response stream; its subject goes in the envelope's route.
    pub fn open_stream(self: &Arc<Self>) -> ReplyStream {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(id, tx);
        ReplyStream {
            id,
            subject: subjects::reply(&self.gateway_id, id),
            rx,
            relay: self.clone(),
        }
    }

    /// How long a session's request may be sent again (and wait for an owner).
    pub fn retry_window(&self) -> Duration {
        self.no_responders_retry
    }

    /// Workers declared dead from now on (their keys).
    pub fn deaths(&self) -> broadcast::Receiver<String> {
        self.deaths.subscribe()
    }

    /// Send an envelope and wait for the worker's acknowledgement.
    pub async fn send(&self, subject: String, env: &Envelope, trace: &TraceParent) -> Result<Ack, RelayError> {
        self.send_from(subject, env, trace).await.map(|(ack, _)| ack)
    }

    /// [`Relay::send`], also returning which worker acknowledged (its key).
    pub async fn send_from(
        &self,
        subject: String,
        env: &Envelope,
        trace: &TraceParent,
    ) -> Result<(Ack, Option<String>), RelayError> {
        let payload: bytes::Bytes = env.to_bytes().map_err(|e| RelayError::Encode(e.to_string()))?.into();
        let max = self.nats.server_info().max_payload;
        if max > 0 && payload.len() > max {
            return Err(RelayError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        let kind = match &env.body {
            proto::Body::Open { .. } => "open",
            proto::Body::Deliver { .. } => "deliver",
            proto::Body::Attach => "attach",
            proto::Body::Reserve => "reserve",
            proto::Body::Close => "close",
            proto::Body::Release { .. } => "release",
            proto::Body::Stateless { .. } => "stateless",
            proto::Body::User { .. } => "user",
        };
        // The hop to the worker, while traces are exported: the worker's span is the
        // child of this one (W3C context in the NATS headers).
        let span = if telemetry::otel::enabled() {
            tracing::info_span!(
                "nats.request",
                otel.name = %format!("{kind} send"),
                otel.kind = "client",
                messaging.system = "nats",
                messaging.operation.type = "send",
                messaging.destination.name = %subject,
            )
        } else {
            tracing::Span::none()
        };
        let mut headers = HeaderMap::new();
        match telemetry::otel::context_of(&span) {
            Some((parent, state)) => {
                headers.insert(proto::trace::TRACEPARENT, parent.as_str());
                if let Some(state) = state {
                    headers.insert(proto::trace::TRACESTATE, state.as_str());
                }
            }
            None => headers.insert(proto::trace::TRACEPARENT, trace.header_value().as_str()),
        }
        self.request_acked(subject, headers, payload, kind)
            .instrument(span)
            .await
    }

    async fn request_acked(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: bytes::Bytes,
        kind: &'static str,
    ) -> Result<(Ack, Option<String>), RelayError> {
        let started = Instant::now();
        // Reconnecting (e.g. the NATS node this gateway used is gone and it moves to
        // another): nothing was sent yet, so wait for the connection as for an owner.
        while !matches!(self.nats.connection_state(), async_nats::connection::State::Connected) {
            if started.elapsed() + RECONNECT_POLL > self.no_responders_retry {
                return Err(RelayError::Disconnected);
            }
            tokio::time::sleep(RECONNECT_POLL).await;
        }
        loop {
            let attempt = tokio::time::timeout(
                self.ack_timeout,
                self.nats
                    .request_with_headers(subject.clone(), headers.clone(), payload.clone()),
            )
            .await;
            match attempt {
                Err(_) => return Err(RelayError::TimedOut(self.ack_timeout)),
                Ok(Ok(msg)) => {
                    self.metrics
                        .nats_rtt
                        .with_label_values(&[kind])
                        .observe(started.elapsed().as_secs_f64());
                    let worker = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(subjects::WORKER_HEADER))
                        .map(|v| v.as_str().to_owned());
                    let ack = Ack::from_bytes(&msg.payload).map_err(|e| RelayError::Decode(e.to_string()))?;
                    if matches!(
                        ack,
                        Ack::Rejected {
                            code: proto::mcp::OVERLOADED,
                            ..
                        }
                    ) {
                        self.metrics.shed.with_label_values(&["worker"]).inc();
                    }
                    return Ok((ack, worker));
                }
                Ok(Err(err)) => match err.kind() {
                    RequestErrorKind::NoResponders => {
                        if started.elapsed() + NO_RESPONDERS_PAUSE > self.no_responders_retry {
                            return Err(RelayError::NoResponders(subject));
                        }
                        tokio::time::sleep(NO_RESPONDERS_PAUSE).await;
                    }
                    RequestErrorKind::TimedOut => return Err(RelayError::TimedOut(self.ack_timeout)),
                    _ => return Err(RelayError::Nats(err.to_string())),
                },
            }
        }
    }

    /// Open a session's event feed: follow its events live, and read back the
    /// stored ones after `after` (a client's `Last-Event-ID`). Without `after` the
    /// feed starts after the session's newest stored event (its sequence is the
    /// stream's priming id). `answer`: the feed of that request's answer stream
    /// ([`subjects::request_stream`]) instead of the session's own.
    pub async fn event_feed(
        self: &Arc<Self>,
        session: &str,
        answer: Option<&str>,
        after: Option<u64>,
    ) -> Result<EventFeed, RelayError> {
        let (live_subject, subject) = match answer {
            None => (subjects::live(session), subjects::events(session)),
            Some(stream) => (
                subjects::request_live(session, stream),
                subjects::request_events(session, stream),
            ),
        };
        if !matches!(self.nats.connection_state(), async_nats::connection::State::Connected) {
            return Err(RelayError::Disconnected);
        }
        // Follow first so nothing stored after the read-back is missed. The read-back
        // below is a request on this same connection: the server has handled the
        // subscription (sent before it) by the time it answers.
        let live: futures::stream::BoxStream<'static, async_nats::Message> = match answer {
            None => Box::pin(self.tap(session).await?),
            Some(_) => Box::pin(
                self.nats
                    .subscribe(live_subject)
                    .await
                    .map_err(|e| RelayError::Nats(e.to_string()))?,
            ),
        };
        let stream = self.events_stream().await?;
        let nats_err = |e: async_nats::jetstream::stream::DirectGetError| RelayError::Nats(e.to_string());
        let mut replay = Vec::new();
        let floor = match after {
            None => match stream.direct_get_last_for_subject(subject).await {
                Ok(m) => m.sequence,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => 0,
                Err(e) => return Err(nats_err(e)),
            },
            Some(mut seq) => {
                while replay.len() < MAX_REPLAY {
                    match stream
                        .direct_get_next_for_subject(subject.clone(), Some(seq.saturating_add(1)))
                        .await
                    {
                        Ok(m) => {
                            seq = m.sequence;
                            replay.push((m.sequence, m.payload));
                        }
                        Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                        Err(e) => return Err(nats_err(e)),
                    }
                }
                seq
            }
        };
        Ok(EventFeed { live, replay, floor })
    }

    /// The session event stream (created by the workers), looked up once.
    async fn events_stream(&self) -> Result<async_nats::jetstream::stream::Stream, RelayError> {
        self.events_stream
            .get_or_try_init(|| async {
                async_nats::jetstream::new(self.nats.clone())
                    .get_stream(subjects::EVENTS_STREAM)
                    .await
                    .map_err(|e| RelayError::Nats(format!("event stream {}: {e}", subjects::EVENTS_STREAM)))
            })
            .await
            .cloned()
    }
}

/// Most stored events one resume reads back (the stream keeps fewer per session
/// by default: `WORKER_EVENTS_MAX_PER_SESSION`).
const MAX_REPLAY: usize = 10_000;

/// How often the deaths watcher checks that the workers' bucket is still the one it
/// watches.
const BUCKET_CHECK: Duration = Duration::from_secs(2);

/// A session's events for one SSE stream: what was stored after the client's
/// `Last-Event-ID`, then what arrives live above `floor`.
pub struct EventFeed {
    pub live: futures::stream::BoxStream<'static, async_nats::Message>,
    /// Stored events after the client's last one, oldest first: (sequence, payload).
    pub replay: Vec<(u64, bytes::Bytes)>,
    /// Live events at or below this sequence were replayed or predate the stream.
    pub floor: u64,
}

/// One stream's share of the relay's `mcp.live.*` subscription: its session's
/// live events, in the order they arrived. Unregisters when dropped.
pub struct LiveTap {
    rx: futures::channel::mpsc::UnboundedReceiver<async_nats::Message>,
    relay: std::sync::Weak<Relay>,
    token: String,
    id: u64,
}

impl futures::Stream for LiveTap {
    type Item = async_nats::Message;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_next_unpin(cx)
    }
}

impl Drop for LiveTap {
    fn drop(&mut self) {
        let Some(relay) = self.relay.upgrade() else { return };
        let mut taps = relay.taps();
        if let Some(list) = taps.get_mut(&self.token) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                taps.remove(&self.token);
            }
        }
    }
}

/// Hand each message of the shared `mcp.live.*` subscription to the streams of its
/// session on this relay; the others' events are dropped here (every gateway
/// thread receives every session's live events: see bench/README.md).
async fn dispatch_live(relay: std::sync::Weak<Relay>, mut sub: async_nats::Subscriber) {
    let prefix = format!("{}.", subjects::LIVE_PREFIX);
    let Some((delivered, not_held)) = relay.upgrade().map(|r| {
        let counter = |outcome| r.metrics.live_events.with_label_values(&[outcome]);
        (counter("delivered"), counter("not_held"))
    }) else {
        return;
    };
    while let Some(msg) = sub.next().await {
        let Some(relay) = relay.upgrade() else { return };
        let Some(token) = msg.subject.strip_prefix(prefix.as_str()) else {
            continue;
        };
        let taps = relay.taps();
        match taps.get(token).and_then(|list| list.split_last()) {
            // A tap whose stream ended is removed by its drop; a failed send only
            // means that drop is under way. The last (usually the only) tap takes
            // the message itself.
            Some(((_, last), others)) => {
                for (_, tx) in others {
                    let _ = tx.unbounded_send(msg.clone());
                }
                let _ = last.unbounded_send(msg);
                delivered.inc();
            }
            None => not_held.inc(),
        }
    }
}

/// Follow [`subjects::WORKER_BUCKET`]: a deleted key is a worker declared dead (or
/// one that finished draining); tell the requests it was serving. The bucket is
/// the workers'; until it exists, look again every second.
/// Ends once the relay is dropped (checked at every entry: heartbeats come often).
async fn watch_deaths(relay: std::sync::Weak<Relay>) {
    let Some(js) = relay.upgrade().map(|r| async_nats::jetstream::new(r.nats.clone())) else {
        return;
    };
    let stream = format!("KV_{}", subjects::WORKER_BUCKET);
    // When the bucket's stream was created: another time means another bucket.
    let created = |js: async_nats::jetstream::Context| {
        let stream = stream.clone();
        async move { js.get_stream(stream).await.ok().map(|s| s.cached_info().created) }
    };
    loop {
        if let Some(born) = created(js.clone()).await
            && let Ok(kv) = js.get_key_value(subjects::WORKER_BUCKET).await
            // From each key's newest entry: a worker deleted before this watch opened
            // (while it followed a bucket that a restarted nats-server lost, until the
            // check below saw the new one) is still told to the requests waiting on it.
            && let Ok(mut watch) = kv.watch_with_history(">").await
        {
            // The bucket is memory-backed: a restarted nats-server loses it and the
            // workers create it again. The watch would follow the old one's sequence
            // numbers and miss every death, so it starts over on the new bucket.
            let mut check = tokio::time::interval(BUCKET_CHECK);
            check.tick().await;
            loop {
                tokio::select! {
                    entry = watch.next() => {
                        let Some(entry) = entry else { break };
                        let Some(relay) = relay.upgrade() else { return };
                        if let Ok(e) = entry
                            && matches!(
                                e.operation,
                                async_nats::jetstream::kv::Operation::Delete | async_nats::jetstream::kv::Operation::Purge
                            )
                        {
                            debug!(worker = %e.key, "worker gone");
                            let _ = relay.deaths.send(e.key);
                        }
                    }
                    _ = check.tick() => {
                        if relay.strong_count() == 0 {
                            return;
                        }
                        match tokio::time::timeout(BUCKET_CHECK, js.get_stream(&stream)).await {
                            Ok(Ok(s)) if s.cached_info().created != born => {
                                info!("the workers' bucket was created anew: watching it afresh");
                                break;
                            }
                            Ok(Err(err)) if matches!(err.kind(), async_nats::jetstream::context::GetStreamErrorKind::JetStream(_)) => {
                                debug!(error = %err, "the workers' bucket is gone");
                                break;
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        if relay.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
