//! One actix actor per MCP session: the Durable-Object analogue.
//!
//! The actor owns an rmcp server (run with `serve_server` over a
//! [`ChannelTransport`]) and the routing table that sends each server→client
//! message to where the client waits for it: the HTTP response of the request
//! it answers (a gateway reply subject), or the session's own event subject.
//! Routing follows rmcp's own streamable HTTP session manager: responses and
//! errors by request id, progress by progress token, server requests by
//! their originating request (SEP-2260), everything else to the session stream.
//!
//! The session record (principal, initialize request) is created in JetStream KV
//! by the router before the actor starts (never over another record); the actor
//! adds the negotiated protocol version at the record's revision before the
//! initialize response is published, so any worker that later owns the shard can
//! rehydrate the session.
//!
//! Every request runs with the principal of the token it came with
//! ([`tools::Caller`] in its extensions), not the one of `initialize`.
//!
//! Callers use [`SessionHandle`]; nothing outside this module touches actix.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use proto::{Outbound, Route, SessionRecord, subjects};
use rmcp::model::{
    ClientJsonRpcMessage, ClientNotification, ClientRequest, GetExtensions, GetMeta, ProgressToken, RequestId,
    ServerJsonRpcMessage, ServerNotification, ServerResult, ToolListChangedNotification,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::{GaugeGuard, Metrics};
pub use crate::transport::Closed;
use crate::transport::{ChannelTransport, FromServer, Outlet};

/// How long the worker holds a request's acknowledgement hoping to send the
/// first answer with it; after that a plain "accepted" goes out.
pub const ACK_DELAY: Duration = Duration::from_millis(20);

/// How often an actor checks whether it has been idle too long, at most.
const IDLE_CHECK_MAX: Duration = Duration::from_secs(30);

impl Shared {
    /// Headers of an acknowledgement: which worker took the envelope.
    pub fn ack_headers(&self) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        h.insert(subjects::WORKER_HEADER, self.worker_key.as_str());
        h
    }
}

/// What every actor shares: connections, settings, metrics, the registry.
pub struct Shared {
    pub nats: async_nats::Client,
    /// JetStream on `nats`: the answer streams of requests are stored through it.
    pub js: async_nats::jetstream::Context,
    pub sessions: async_nats::jetstream::kv::Store,
    pub profile: tools::Profile,
    pub metrics: Metrics,
    pub registry: Registry,
    pub idle_timeout: Duration,
    /// Open `subscriptions/listen` streams of this worker; changes cross
    /// workers on [`subjects::LIST_CHANGED`].
    pub listen: tools::ListenHub,
    /// The auth-service's token vault, for tools that act on the user's behalf.
    pub vault: Arc<dyn tools::vault::TokenVault>,
    /// The tools of the default profile, with the operator's policy.
    pub toolbox: tools::Toolbox,
    /// Live sessions per principal, `WORKER_MAX_SESSIONS_PER_PRINCIPAL` ([`crate::owners`]).
    pub owners: crate::owners::Index,
    /// The MCP tasks this worker runs, over [`crate::tasks::KvTaskStore`].
    pub tasks: tools::tasks::Tasks,
    /// Whether heartbeats allow serving the shards now ([`crate::liveness`]).
    pub fence: Arc<crate::liveness::Fence>,
    /// This worker's key in [`subjects::WORKER_BUCKET`], sent with every
    /// acknowledgement ([`subjects::WORKER_HEADER`]).
    pub worker_key: String,
    /// `WORKER_SESSION_TTL`: records are rewritten every tenth of it while in use.
    pub session_ttl: Duration,
    /// [`subjects::RESPONSE_BUCKET`] when request records are on ([`crate::records`]).
    pub responses: Option<async_nats::jetstream::kv::Store>,
    /// `WORKER_MAX_RECORD_BYTES`.
    pub max_record_bytes: usize,
    /// [`subjects::USER_BUCKET`]: per-user state ([`crate::users`]).
    pub users: async_nats::jetstream::kv::Store,
    /// The user actors of this worker.
    pub user_actors: crate::users::UserActors,
    /// How tools reach user actors (on this worker or another).
    pub user_client: Arc<dyn tools::user::UserStore>,
}

/// Live session actors of this process, by session id.
#[derive(Default, Clone)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<String, SessionHandle>>>,
}

impl Registry {
    pub fn get(&self, id: &str) -> Option<SessionHandle> {
        self.lock().get(id).cloned()
    }

    /// Insert `handle` unless a live actor already has the id; returns the one in place.
    pub fn insert_if_absent(&self, id: &str, handle: SessionHandle) -> SessionHandle {
        let mut map = self.lock();
        match map.get(id) {
            Some(existing) if existing.addr.connected() => existing.clone(),
            _ => {
                map.insert(id.to_owned(), handle.clone());
                handle
            }
        }
    }

    /// Forget a session's actor (it is being closed).
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    fn remove_if(&self, id: &str, generation: u64) {
        let mut map = self.lock();
        if map.get(id).is_some_and(|h| h.generation == generation) {
            map.remove(id);
        }
    }

    /// Handles of the sessions whose shard satisfies `pred`.
    pub fn matching(&self, pred: impl Fn(&str) -> bool) -> Vec<SessionHandle> {
        self.lock()
            .iter()
            .filter(|(id, _)| pred(id))
            .map(|(_, h)| h.clone())
            .collect()
    }

    pub fn all(&self) -> Vec<SessionHandle> {
        self.lock().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionHandle>> {
        // A poisoned lock only means another thread panicked while holding it;
        // the map itself is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A cheap handle to a session actor.
#[derive(Clone)]
pub struct SessionHandle {
    addr: Addr<SessionActor>,
    /// The session record's `owner` and the client of its principal.
    owner: String,
    owner_client: Option<String>,
    generation: u64,
    /// When a stream was last attached (Unix ms; the actor's start at first).
    attached_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl SessionHandle {
    /// Start an actor for a new session (from `initialize`) or a stored one.
    pub fn start(
        lane: &crate::router::Lane,
        shared: Arc<Shared>,
        id: String,
        record: SessionRecord,
        start: Start,
    ) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static GENERATION: AtomicU64 = AtomicU64::new(1);
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        let owner = record.owner.clone();
        let owner_client = record.principal.client_id.clone();
        let actor_id = id.clone();
        let state = match tools::SessionState::restore(&record.state) {
            Ok(state) => state,
            Err(err) => {
                warn!(session_id = %id, error = %err, "stored session state is unreadable; starting without it");
                tools::SessionState::default()
            }
        };
        let bus = lane.nats.clone();
        let addr = SessionActor::start_in_arbiter(&lane.arbiter, move |_ctx| SessionActor {
            bus,
            state: Arc::new(state),
            saved_version: 0,
            stateful: None,
            stateful_queue: std::collections::VecDeque::new(),
            id: actor_id,
            generation,
            record,
            start: Some(start),
            shared,
            input: None,
            publisher: None,
            routes: HashMap::new(),
            progress: HashMap::new(),
            events_seq: 0,
            init_id: None,
            persisted: false,
            last_persist: Instant::now(),
            last_activity: Instant::now(),
            ct: CancellationToken::new(),
            closing: false,
            last_caller: None,
            _live: None,
        });
        Self {
            addr,
            owner,
            owner_client,
            generation,
            attached_ms: Arc::new(std::sync::atomic::AtomicU64::new(unix_ms())),
        }
    }

    /// A stream (GET, legacy SSE) was attached to the session just now.
    pub fn mark_attached(&self) {
        self.attached_ms.store(unix_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// When a stream was last attached, or the actor started (Unix ms).
    pub fn attached_ms(&self) -> u64 {
        self.attached_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `principal` may use this session (see [`SessionRecord::owned_by`]).
    pub fn owned_by(&self, principal: &proto::Principal) -> bool {
        self.owner == principal.binding()
            || (self.owner == principal.identity() && self.owner_client == principal.client_id)
    }

    /// Hand a message to the actor; fails when the actor has stopped or is
    /// stopping (the caller then starts a new one from the store).
    /// `ack_to`: the NATS reply subject the acknowledgement goes to, when the
    /// actor (not the caller) acknowledges.
    pub async fn deliver(
        &self,
        message: ClientJsonRpcMessage,
        route: Route,
        ack_to: Option<String>,
        caller: Arc<proto::Principal>,
    ) -> Result<(), Closed> {
        match self
            .addr
            .send(Inbound {
                message,
                route,
                ack_to,
                caller,
                span: tracing::Span::current(),
            })
            .await
        {
            Ok(result) => result,
            Err(_) => Err(Closed),
        }
    }

    /// End the session for good (DELETE; the router removes the record first).
    pub fn close(&self) {
        self.addr.do_send(Shutdown { delete: true });
    }

    /// Stop the actor but keep the record (shard moved away, worker draining).
    pub fn evict(&self) {
        self.addr.do_send(Shutdown { delete: false });
    }

    pub fn is_alive(&self) -> bool {
        self.addr.connected()
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How an actor begins.
pub enum Start {
    /// A client's `initialize`; its answer goes to `route`. `revision`: of the
    /// session record the router wrote.
    Open {
        initialize: Box<ClientJsonRpcMessage>,
        route: Route,
        ack_to: Option<String>,
        revision: u64,
    },
    /// Rehydration: replay the stored `initialize`, drop its answer. `revision`:
    /// of the record read.
    Restore { revision: u64 },
}

#[derive(Message)]
#[rtype(result = "Result<(), Closed>")]
struct Inbound {
    message: ClientJsonRpcMessage,
    route: Route,
    ack_to: Option<String>,
    caller: Arc<proto::Principal>,
    /// The span the router received it under (the actor runs elsewhere).
    span: tracing::Span,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Shutdown {
    delete: bool,
}

/// Where the messages belonging to one client request go.
enum Target {
    Drop,
    /// `ack`: the NATS reply subject still waiting for the acknowledgement.
    Reply {
        subject: String,
        seq: u64,
        ack: Option<String>,
        /// The key of the request's record, when its answer is recorded.
        record: Option<String>,
    },
    Events,
}

enum Dest {
    Drop,
    /// The reply subject, the message's position, the acknowledgement still owed,
    /// and, when the answer is an SSE stream, its stream token ([`answer_stream`]).
    Subject(String, u64, Option<String>, Option<String>),
    Events,
}

/// Whether the message at `seq` of request `id`'s answer (`last`: its final one)
/// goes on an SSE stream, and then that stream's token
/// ([`subjects::request_stream`]): every message but a lone final one (sent as
/// plain JSON) is stored in the event stream so a client that loses the stream
/// resumes it, on any gateway, with `Last-Event-ID`.
fn answer_stream(id: &RequestId, seq: u64, last: bool) -> Option<String> {
    if seq == 1 && last {
        return None;
    }
    Some(subjects::request_stream(&serde_json::to_string(id).unwrap_or_default()))
}

enum PubOp {
    Publish {
        subject: String,
        payload: Vec<u8>,
    },
    /// A final answer to record (`create`) before it is published; if a record is
    /// there already, that one is published instead.
    Final {
        key: String,
        message: Vec<u8>,
        seq: u64,
        step_up: Vec<String>,
        subject: String,
        ack: Option<String>,
        /// The answer's stream token when the answer is an SSE stream.
        stream: Option<String>,
    },
    /// A message of a request's SSE answer: stored under `stream`
    /// ([`subjects::request_events`]) first, then sent with its event id to
    /// `subject`, or on the acknowledgement (`ack`) still owed.
    Stream {
        stream: String,
        out: Outbound,
        subject: String,
        ack: Option<String>,
    },
    /// An acknowledgement: published with [`Shared::ack_headers`].
    Ack {
        subject: String,
        payload: Vec<u8>,
    },
    /// Write the session record; then, only if it was written, `then`; if it
    /// was not, `otherwise`.
    Persist {
        payload: Vec<u8>,
        then: Option<Box<PubOp>>,
        otherwise: Option<Box<PubOp>>,
    },
}

/// How many answers of calls with session state a record keeps.
const SAVED_ANSWERS: usize = 16;

/// `value` encoded into the op `make` builds (`None`, logged, if it cannot be).
fn encode_op<T: ToBytes>(session: &str, value: &T, make: impl FnOnce(Vec<u8>) -> PubOp) -> Option<PubOp> {
    match value.to_bytes() {
        Ok(payload) => Some(make(payload)),
        Err(err) => {
            warn!(session_id = session, error = %err, "cannot encode outbound");
            None
        }
    }
}

/// What [`encode_op`] encodes.
trait ToBytes {
    fn to_bytes(&self) -> Result<Vec<u8>, proto::EncodeError>;
}

impl ToBytes for Outbound {
    fn to_bytes(&self) -> Result<Vec<u8>, proto::EncodeError> {
        Outbound::to_bytes(self)
    }
}

impl ToBytes for proto::Ack {
    fn to_bytes(&self) -> Result<Vec<u8>, proto::EncodeError> {
        proto::Ack::to_bytes(self)
    }
}

pub struct SessionActor {
    /// The connection of this actor's lane: what the actor sends goes out on it,
    /// in order with the acknowledgements of its shard ([`crate::router::Lane`]).
    bus: async_nats::Client,
    id: String,
    generation: u64,
    record: SessionRecord,
    start: Option<Start>,
    shared: Arc<Shared>,
    input: Option<mpsc::UnboundedSender<ClientJsonRpcMessage>>,
    publisher: Option<mpsc::UnboundedSender<PubOp>>,
    routes: HashMap<RequestId, Target>,
    progress: HashMap<ProgressToken, RequestId>,
    events_seq: u64,
    /// The handler's session state, restored from the record.
    state: Arc<tools::SessionState>,
    /// The [`tools::SessionState::version`] last saved.
    saved_version: u64,
    /// The call of a tool with session state now running: such calls run one at a
    /// time, each saved with its answer (`McpTool::uses_session_state`).
    stateful: Option<RequestId>,
    /// Calls of tools with session state waiting for `stateful` to finish.
    stateful_queue: std::collections::VecDeque<(RequestId, ClientJsonRpcMessage)>,
    init_id: Option<RequestId>,
    persisted: bool,
    /// When the record was last written (or handed to the publisher to write).
    last_persist: Instant,
    last_activity: Instant,
    ct: CancellationToken,
    /// Set once the actor decided to stop: it takes no more messages.
    closing: bool,
    /// The principal of the latest request: when the next one's differs in what
    /// tools it may see, the client is told the list changed.
    last_caller: Option<Arc<proto::Principal>>,
    _live: Option<GaugeGuard>,
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self._live = Some(GaugeGuard::new(&self.shared.metrics.actors));
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        let transport = ChannelTransport::new(input_rx, Outlet::Actor(ctx.address().recipient()));
        let server = tools::McpServer::new(self.shared.profile, Some(self.record.principal.clone()))
            .with_toolbox(self.shared.toolbox.clone())
            .with_listen_hub(self.shared.listen.clone())
            .with_vault(self.shared.vault.clone())
            .with_users(self.shared.user_client.clone())
            .with_tasks(self.shared.tasks.clone())
            .with_session_state(self.state.clone());
        let ct = self.ct.clone();
        let me = ctx.address();
        let id = self.id.clone();
        actix_rt::spawn(async move {
            match rmcp::service::serve_server_with_ct(server, transport, ct).await {
                Ok(running) => {
                    let _ = running.waiting().await;
                }
                Err(err) => warn!(session_id = %id, error = %err, "session ended during initialize"),
            }
            me.do_send(Shutdown { delete: false });
        });
        self.input = Some(input_tx);
        let revision = match &self.start {
            Some(Start::Open { revision, .. }) | Some(Start::Restore { revision }) => Some(*revision),
            None => None,
        };
        self.publisher = Some(spawn_publisher(
            self.shared.clone(),
            self.bus.clone(),
            self.id.clone(),
            revision,
            ctx.address(),
        ));

        let idle = self.shared.idle_timeout;
        ctx.run_interval(
            (idle / 4).min(IDLE_CHECK_MAX).max(Duration::from_millis(100)),
            move |act, ctx| {
                if act.routes.is_empty() && act.last_activity.elapsed() >= idle {
                    debug!(session_id = %act.id, "idle session actor stops");
                    act.closing = true;
                    act.shared.registry.remove_if(&act.id, act.generation);
                    ctx.stop();
                }
            },
        );

        match self.start.take() {
            Some(Start::Open {
                initialize,
                route,
                ack_to,
                ..
            }) => {
                if let ClientJsonRpcMessage::Request(req) = initialize.as_ref() {
                    self.init_id = Some(req.id.clone());
                }
                let caller = Arc::new(self.record.principal.clone());
                self.accept(*initialize, route, ack_to, caller, tracing::Span::none(), ctx);
            }
            Some(Start::Restore { .. }) => {
                // Written again on rehydration: the session's TTL counts from its use.
                self.persist();
                match serde_json::from_slice::<ClientJsonRpcMessage>(&self.record.initialize) {
                    Ok(initialize) => {
                        let caller = Arc::new(self.record.principal.clone());
                        self.accept(initialize, Route::Nothing, None, caller, tracing::Span::none(), ctx)
                    }
                    Err(err) => {
                        warn!(session_id = %self.id, error = %err, "stored initialize request is unreadable");
                        ctx.stop();
                    }
                }
            }
            None => {}
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.ct.cancel();
        // The session lives on (its record is committed): requests still waiting
        // are sent again by their gateway, to the session's next actor.
        self.abort_routes(true);
        self.shared.registry.remove_if(&self.id, self.generation);
    }
}

impl SessionActor {
    /// Register where the answers to `message` go, then hand it to rmcp with its
    /// caller in the request's extensions.
    fn accept(
        &mut self,
        mut message: ClientJsonRpcMessage,
        route: Route,
        ack_to: Option<String>,
        caller: Arc<proto::Principal>,
        span: tracing::Span,
        ctx: &mut Context<Self>,
    ) {
        self.last_activity = Instant::now();
        // A session in use keeps its record fresh: the store's TTL counts from the
        // last write, so rewrite it every tenth of the TTL while there is traffic.
        if self.persisted && self.last_persist.elapsed() >= self.shared.session_ttl / 10 {
            self.persist();
        }
        self.follow_caller(&caller);
        if let ClientJsonRpcMessage::Request(req) = &message
            && self.is_stateful(&message)
            && let Some(saved) = self.saved_answer(&req.id)
        {
            // A client that lost the answer and sent the call again (same id):
            // answered from the record, never run twice.
            info!(session_id = %self.id, "repeated call answered from the session's record");
            self.answer_again(saved, route, ack_to);
            return;
        }
        if let ClientJsonRpcMessage::Request(req) = &mut message {
            req.request.extensions_mut().insert(tools::Caller(caller));
            if !span.is_none() && telemetry::otel::enabled() {
                // Traced while exported: the actor's handling, child of the envelope
                // the router received; what the request runs (a tool) is its child.
                let handling = tracing::info_span!(
                    parent: &span,
                    "actor.handle",
                    otel.name = %format!("session actor {}", req.request.method()),
                    otel.kind = "internal",
                    session_id = %self.id,
                );
                req.request.extensions_mut().insert(tools::TraceSpan(handling));
            }
        }
        // The same request again while its first run is in flight (a gateway that
        // got no acknowledgement sent it again): its answers go to the new route,
        // and it does not run twice.
        let in_flight = matches!(&message, ClientJsonRpcMessage::Request(req) if self.routes.contains_key(&req.id));
        match &message {
            ClientJsonRpcMessage::Request(req) => {
                let target = match route {
                    Route::Nothing => Target::Drop,
                    Route::Reply { subject } => {
                        if ack_to.is_some() {
                            let id = req.id.clone();
                            ctx.run_later(ACK_DELAY, move |act, _| act.flush_ack(&id));
                        }
                        Target::Reply {
                            subject,
                            seq: 0,
                            ack: ack_to,
                            // A call with session state is saved with the session instead.
                            record: crate::records::wanted(&self.shared, &self.id, &message)
                                .filter(|_| !self.is_stateful(&message)),
                        }
                    }
                    Route::SessionEvents => Target::Events,
                };
                let mut target = target;
                if let (Target::Reply { seq, .. }, Some(Target::Reply { seq: sent, .. })) =
                    (&mut target, self.routes.get(&req.id))
                {
                    *seq = *sent; // the same reply stream goes on where it was
                }
                self.routes.insert(req.id.clone(), target);
                if let Some(token) = req.request.get_meta().get_progress_token() {
                    self.progress.insert(token, req.id.clone());
                }
            }
            ClientJsonRpcMessage::Notification(n) => {
                if let ClientNotification::CancelledNotification(c) = &n.notification
                    && let Some(request_id) = c.params.request_id.clone()
                {
                    // The client gave up on it: end its HTTP response now.
                    if let Some(target) = self.routes.remove(&request_id) {
                        self.abort(&request_id, target, false);
                    }
                    self.progress.retain(|_, id| *id != request_id);
                }
            }
            _ => {}
        }
        if in_flight {
            info!(session_id = %self.id, "request sent again while in flight: its answer goes to the new route");
            return;
        }
        if let ClientJsonRpcMessage::Request(req) = &message
            && self.is_stateful(&message)
        {
            if self.stateful.is_some() {
                self.stateful_queue.push_back((req.id.clone(), message));
                return;
            }
            self.stateful = Some(req.id.clone());
        }
        self.hand_over(message);
    }

    /// The saved answer of call `id` (calls with session state keep theirs in the record).
    fn saved_answer(&self, id: &RequestId) -> Option<Vec<u8>> {
        let id = serde_json::to_string(id).unwrap_or_default();
        self.record
            .answers
            .iter()
            .find(|a| a.id == id)
            .map(|a| a.message.clone())
    }

    /// Send an answer given before to where this request's answers go.
    fn answer_again(&mut self, payload: Vec<u8>, route: Route, ack_to: Option<String>) {
        match (route, ack_to) {
            (Route::Reply { .. }, Some(ack)) => self.send_ack(ack, &proto::Ack::First(Outbound::new(1, payload, true))),
            (Route::Reply { subject }, None) => self.send(subject, Outbound::new(1, payload, true)),
            (Route::SessionEvents, _) => {
                self.events_seq += 1;
                self.send(
                    subjects::events(&self.id),
                    Outbound::new(self.events_seq, payload, false),
                );
            }
            (Route::Nothing, _) => {}
        }
    }

    fn hand_over(&self, message: ClientJsonRpcMessage) {
        if let Some(input) = &self.input
            && input.send(message).is_err()
        {
            warn!(session_id = %self.id, "rmcp server is gone; message dropped");
        }
    }

    /// Whether `message` calls a tool that keeps state in the session.
    fn is_stateful(&self, message: &ClientJsonRpcMessage) -> bool {
        matches!(message, ClientJsonRpcMessage::Request(req)
            if matches!(&req.request, ClientRequest::CallToolRequest(call)
                if self.shared.profile == tools::Profile::Default
                    && self.shared.toolbox.uses_session_state(&call.params.name)))
    }

    /// The running call with session state finished: the next waiting one runs
    /// (one the client cancelled meanwhile is skipped).
    fn next_stateful(&mut self) {
        self.stateful = None;
        while let Some((id, message)) = self.stateful_queue.pop_front() {
            if self.routes.contains_key(&id) {
                self.stateful = Some(id);
                self.hand_over(message);
                return;
            }
        }
    }

    /// The request a server message belongs to, and whether it is the last one.
    fn owner_of(&self, message: &ServerJsonRpcMessage) -> (Option<RequestId>, bool) {
        match message {
            ServerJsonRpcMessage::Response(r) => (Some(r.id.clone()), true),
            ServerJsonRpcMessage::Error(e) => (e.id.clone(), true),
            ServerJsonRpcMessage::Request(r) => (
                r.request
                    .extensions()
                    .get::<rmcp::service::OriginatingRequestId>()
                    .map(|o| o.0.clone()),
                false,
            ),
            ServerJsonRpcMessage::Notification(n) => match &n.notification {
                ServerNotification::ProgressNotification(p) => {
                    (self.progress.get(&p.params.progress_token).cloned(), false)
                }
                ServerNotification::CancelledNotification(c) => (c.params.request_id.clone(), false),
                _ => (None, false),
            },
        }
    }

    /// A request with another principal than the last (a refreshed token with new
    /// claims, a narrower token): if the tools it may see differ, send
    /// `notifications/tools/list_changed` on the session's stream.
    fn follow_caller(&mut self, caller: &Arc<proto::Principal>) {
        let previous = self.last_caller.replace(caller.clone());
        let Some(previous) = previous else {
            return;
        };
        if Arc::ptr_eq(&previous, caller) || *previous == **caller || self.shared.profile != tools::Profile::Default {
            return;
        }
        let toolbox = &self.shared.toolbox;
        if toolbox.listed_names(Some(&previous)) != toolbox.listed_names(Some(caller)) {
            debug!(session_id = %self.id, "tools visible to the caller changed");
            let changed = ServerNotification::ToolListChangedNotification(ToolListChangedNotification {
                method: Default::default(),
                extensions: Default::default(),
            });
            self.route_out(ServerJsonRpcMessage::notification(changed));
        }
    }

    fn route_out(&mut self, message: ServerJsonRpcMessage) {
        let (owner, last) = self.owner_of(&message);
        if let (Some(init_id), ServerJsonRpcMessage::Response(r)) = (&self.init_id, &message)
            && &r.id == init_id
            && !self.persisted
        {
            if let ServerResult::InitializeResult(result) = &r.result {
                self.record.protocol_version = result.protocol_version.as_str().to_owned();
            }
            self.persist();
        }
        let payload = match serde_json::to_vec(&message) {
            Ok(p) => p,
            Err(err) => {
                warn!(session_id = %self.id, error = %err, "cannot serialize server message");
                return;
            }
        };
        let Some(payload) = fit_bus(&self.bus, &self.id, &message, payload) else {
            return;
        };
        let mut record = None;
        let dest = match &owner {
            Some(id) if last => match self.routes.remove(id) {
                Some(Target::Reply {
                    subject,
                    seq,
                    ack,
                    record: key,
                }) => {
                    record = key;
                    Dest::Subject(subject, seq + 1, ack, answer_stream(id, seq + 1, true))
                }
                Some(Target::Drop) => Dest::Drop,
                Some(Target::Events) | None => Dest::Events,
            },
            Some(id) => match self.routes.get_mut(id) {
                Some(Target::Reply { subject, seq, ack, .. }) => {
                    *seq += 1;
                    Dest::Subject(subject.clone(), *seq, ack.take(), answer_stream(id, *seq, false))
                }
                Some(Target::Drop) => Dest::Drop,
                Some(Target::Events) | None => Dest::Events,
            },
            None => Dest::Events,
        };
        if last && let Some(id) = &owner {
            self.progress.retain(|_, rid| rid != id);
        }
        // The answer of a call with session state is saved with the state first.
        let commit = match (&owner, &self.stateful) {
            (Some(id), Some(running)) if last && id == running => Some(id.clone()),
            _ => None,
        };
        let saved_answer = commit.as_ref().map(|id| proto::SavedAnswer {
            id: serde_json::to_string(id).unwrap_or_default(),
            message: payload.clone(),
        });
        // What the client's gateway hears if the answer's commit fails: this actor
        // stopped, the session lives on, send the request again.
        let on_failure = match (&dest, &saved_answer) {
            (Dest::Subject(subject, seq, ack, _), Some(_)) => match ack {
                Some(reply) => encode_op(&self.id, &proto::Ack::First(Outbound::stopped(*seq)), |payload| {
                    PubOp::Ack {
                        subject: reply.clone(),
                        payload,
                    }
                }),
                None => encode_op(&self.id, &Outbound::stopped(*seq), |payload| PubOp::Publish {
                    subject: subject.clone(),
                    payload,
                }),
            },
            _ => None,
        };
        let op = match dest {
            Dest::Drop => None,
            Dest::Subject(subject, seq, ack, stream) if record.is_some() => {
                self.shared.metrics.outbound.with_label_values(&["reply"]).inc();
                record.map(|key| PubOp::Final {
                    key,
                    step_up: tools::step_up_scopes(&message),
                    message: payload,
                    seq,
                    subject,
                    ack,
                    stream,
                })
            }
            Dest::Subject(subject, seq, ack, stream) => {
                self.shared.metrics.outbound.with_label_values(&["reply"]).inc();
                let out = Outbound::new(seq, payload, last).with_step_up(tools::step_up_scopes(&message));
                match (ack, stream) {
                    (ack, Some(stream)) => Some(PubOp::Stream {
                        stream,
                        out,
                        subject,
                        ack,
                    }),
                    // The first answer rides on the acknowledgement.
                    (Some(reply), None) => encode_op(&self.id, &proto::Ack::First(out), |payload| PubOp::Ack {
                        subject: reply,
                        payload,
                    }),
                    (None, None) => encode_op(&self.id, &out, |payload| PubOp::Publish { subject, payload }),
                }
            }
            Dest::Events => {
                self.shared.metrics.outbound.with_label_values(&["events"]).inc();
                self.events_seq += 1;
                let subject = subjects::events(&self.id);
                encode_op(&self.id, &Outbound::new(self.events_seq, payload, false), |payload| {
                    PubOp::Publish { subject, payload }
                })
            }
        };
        match saved_answer {
            Some(answer) => {
                self.save_state(Some(answer), op, on_failure);
                self.next_stateful();
            }
            None => {
                if let (Some(op), Some(p)) = (op, &self.publisher) {
                    let _ = p.send(op);
                }
                // Other changes of the session state (log level, subscriptions)
                // are saved once the request that made them is answered.
                if last && self.persisted && self.state.version() != self.saved_version {
                    self.save_state(None, None, None);
                }
            }
        }
    }

    /// Write the record with the session state as it is now (and `answer`, kept
    /// among the latest [`SAVED_ANSWERS`]); `then` is published once it is written,
    /// and not at all when it cannot be (another worker owns the session now, or
    /// the store did not answer): then `otherwise` is.
    fn save_state(&mut self, answer: Option<proto::SavedAnswer>, then: Option<PubOp>, otherwise: Option<PubOp>) {
        let (state, version) = self.state.snapshot();
        self.record.state = state;
        self.saved_version = version;
        if let Some(answer) = answer {
            if self.record.answers.len() >= SAVED_ANSWERS {
                self.record.answers.remove(0);
            }
            self.record.answers.push(answer);
        }
        self.persist_then(then, otherwise);
    }

    fn send(&self, subject: String, out: Outbound) {
        match out.to_bytes() {
            Ok(payload) => {
                if let Some(p) = &self.publisher {
                    let _ = p.send(PubOp::Publish { subject, payload });
                }
            }
            Err(err) => warn!(session_id = %self.id, error = %err, "cannot encode outbound"),
        }
    }

    fn persist(&mut self) {
        self.persist_then(None, None);
    }

    fn persist_then(&mut self, then: Option<PubOp>, otherwise: Option<PubOp>) {
        self.persisted = true;
        self.last_persist = Instant::now();
        match self.record.to_bytes() {
            Ok(payload) => {
                if let Some(p) = &self.publisher {
                    let _ = p.send(PubOp::Persist {
                        payload,
                        then: then.map(Box::new),
                        otherwise: otherwise.map(Box::new),
                    });
                }
            }
            Err(err) => warn!(session_id = %self.id, error = %err, "cannot encode session record"),
        }
    }

    /// Close request `id`'s stream without an answer; `retry`: the session lives on.
    /// An answer that was an SSE stream already ends in the event stream too, so a
    /// client resuming it is not left waiting.
    fn abort(&mut self, id: &RequestId, target: Target, retry: bool) {
        if let Target::Reply { subject, seq, ack, .. } = target {
            let out = if retry {
                Outbound::stopped(seq + 1)
            } else {
                Outbound::aborted(seq + 1)
            };
            match (ack, seq) {
                (Some(reply), 0) => self.send_ack(reply, &proto::Ack::First(out)),
                (None, 0) => self.send(subject, out),
                (ack, _) => {
                    if let (Some(stream), Some(p)) = (answer_stream(id, seq + 1, true), &self.publisher) {
                        let _ = p.send(PubOp::Stream {
                            stream,
                            out,
                            subject,
                            ack,
                        });
                    }
                }
            }
        }
    }

    /// The first answer did not come within [`ACK_DELAY`]: acknowledge alone.
    fn flush_ack(&mut self, id: &RequestId) {
        let pending = match self.routes.get_mut(id) {
            Some(Target::Reply { ack, .. }) => ack.take(),
            _ => None,
        };
        if let Some(reply) = pending {
            self.send_ack(reply, &proto::Ack::Accepted);
        }
    }

    fn send_ack(&self, reply: String, ack: &proto::Ack) {
        match ack.to_bytes() {
            Ok(payload) => {
                if let Some(p) = &self.publisher {
                    let _ = p.send(PubOp::Ack {
                        subject: reply,
                        payload,
                    });
                }
            }
            Err(err) => warn!(session_id = %self.id, error = %err, "cannot encode ack"),
        }
    }

    fn abort_routes(&mut self, retry: bool) {
        let routes: Vec<_> = self.routes.drain().collect();
        for (id, target) in routes {
            self.abort(&id, target, retry);
        }
        self.progress.clear();
    }
}

impl Handler<Inbound> for SessionActor {
    type Result = Result<(), Closed>;

    fn handle(&mut self, msg: Inbound, ctx: &mut Self::Context) -> Self::Result {
        if self.closing || ctx.state() != actix::ActorState::Running {
            return Err(Closed);
        }
        self.accept(msg.message, msg.route, msg.ack_to, msg.caller, msg.span, ctx);
        Ok(())
    }
}

impl Handler<FromServer> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: FromServer, _ctx: &mut Self::Context) {
        self.route_out(msg.0);
    }
}

impl Handler<Shutdown> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) {
        self.closing = true;
        if msg.delete {
            info!(session_id = %self.id, "session closed by client");
            self.shared.metrics.sessions_closed.inc();
            self.abort_routes(false);
            self.events_seq += 1;
            self.send(subjects::events(&self.id), Outbound::aborted(self.events_seq));
        }
        ctx.stop();
    }
}

/// Room kept in a NATS message for the framing around a JSON-RPC message
/// ([`Outbound`], an acknowledgement around it).
pub const BUS_OVERHEAD: usize = 4096;

/// A server message as it can cross the bus: itself when it fits the server's
/// payload limit; for a response or error that does not, a JSON-RPC error for the
/// same request ([`proto::mcp::RESPONSE_TOO_LARGE`]) so the client never waits for
/// an answer that cannot arrive; `None` (dropped, logged) for anything else.
pub(crate) fn fit_bus(
    nats: &async_nats::Client,
    session: &str,
    message: &ServerJsonRpcMessage,
    payload: Vec<u8>,
) -> Option<Vec<u8>> {
    let max = nats.server_info().max_payload;
    if max == 0 || payload.len() + BUS_OVERHEAD <= max {
        return Some(payload);
    }
    let id = match message {
        ServerJsonRpcMessage::Response(r) => Some(r.id.clone()),
        ServerJsonRpcMessage::Error(e) => e.id.clone(),
        _ => None,
    };
    warn!(session_id = %session, bytes = payload.len(), max, "server message larger than the message bus carries");
    let id = id?;
    let error = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": proto::mcp::RESPONSE_TOO_LARGE,
            "message": format!(
                "the answer ({} bytes) is larger than the cluster can carry ({} bytes)",
                payload.len(),
                max.saturating_sub(BUS_OVERHEAD)
            ),
        },
    });
    serde_json::to_vec(&error).ok()
}

/// Record `message` as the final answer under `key`, unless an answer is recorded
/// already (another execution of the same request finished first): then that one
/// is the answer. A record that cannot be written does not hold the answer back.
async fn record_final(shared: &Shared, session: &str, key: &str, message: Vec<u8>) -> Vec<u8> {
    let Some(kv) = &shared.responses else {
        return message;
    };
    match kv.create(key, message.clone().into()).await {
        Ok(_) => message,
        Err(err) if err.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
            match kv.get(key).await {
                Ok(Some(recorded)) => {
                    debug!(
                        session_id = session,
                        "request answered by an earlier execution's record"
                    );
                    recorded.to_vec()
                }
                _ => message,
            }
        }
        Err(err) => {
            warn!(session_id = session, error = %err, "cannot record the answer; answering anyway");
            message
        }
    }
}

/// How long a message of an SSE answer waits for the event stream to store it;
/// past that it is sent without an event id (it cannot be resumed from), never
/// held back.
const STORE_EVENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Store `out` as the next message of answer stream `stream`; its SSE event id,
/// or `None` (logged) when the event stream did not take it in time.
async fn store_event(shared: &Shared, session: &str, stream: &str, out: &Outbound) -> Option<String> {
    let payload = match out.to_bytes() {
        Ok(b) => b,
        Err(err) => {
            warn!(session_id = session, error = %err, "cannot encode outbound");
            return None;
        }
    };
    let subject = subjects::request_events(session, stream);
    let stored = tokio::time::timeout(STORE_EVENT_TIMEOUT, async {
        shared.js.publish(subject, payload.into()).await?.await
    })
    .await;
    match stored {
        Ok(Ok(ack)) => Some(subjects::request_event_id(ack.sequence, stream)),
        Ok(Err(err)) => {
            warn!(session_id = session, error = %err, "answer stream message not stored: sent without an event id");
            None
        }
        Err(_) => {
            warn!(
                session_id = session,
                "answer stream message not stored in time: sent without an event id"
            );
            None
        }
    }
}

/// Send `out` to the gateway: on the acknowledgement still owed (`ack`), else to
/// the request's reply `subject`.
async fn deliver(
    shared: &Shared,
    bus: &async_nats::Client,
    session: &str,
    out: Outbound,
    subject: String,
    ack: Option<String>,
) {
    let sent = match ack {
        Some(reply) => match proto::Ack::First(out).to_bytes() {
            Ok(b) => bus
                .publish_with_headers(reply, shared.ack_headers(), b.into())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        None => match out.to_bytes() {
            Ok(b) => bus.publish(subject, b.into()).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
    };
    if let Err(err) = sent {
        warn!(session_id = session, error = %err, "publish failed");
    }
}

/// One task per session publishes in order: a record write completes before
/// the reply that follows it is sent. Record writes are compare-and-swap at the
/// revision this actor last wrote (`revision`), so a record someone else wrote in
/// between is never overwritten.
fn spawn_publisher(
    shared: Arc<Shared>,
    bus: async_nats::Client,
    id: String,
    mut revision: Option<u64>,
    actor: actix::Addr<SessionActor>,
) -> mpsc::UnboundedSender<PubOp> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PubOp>();
    actix_rt::spawn(async move {
        while let Some(op) = rx.recv().await {
            let mut next = Some(op);
            while let Some(op) = next.take() {
                match op {
                    PubOp::Publish { subject, payload } => {
                        if let Err(err) = bus.publish(subject, payload.into()).await {
                            warn!(session_id = %id, error = %err, "publish failed");
                        }
                    }
                    PubOp::Final {
                        key,
                        message,
                        seq,
                        step_up,
                        subject,
                        ack,
                        stream,
                    } => {
                        let message = record_final(&shared, &id, &key, message).await;
                        let mut out = Outbound::new(seq, message, true).with_step_up(step_up);
                        if let Some(stream) = stream {
                            out.event = store_event(&shared, &id, &stream, &out).await;
                        }
                        deliver(&shared, &bus, &id, out, subject, ack).await;
                    }
                    PubOp::Stream {
                        stream,
                        mut out,
                        subject,
                        ack,
                    } => {
                        out.event = store_event(&shared, &id, &stream, &out).await;
                        deliver(&shared, &bus, &id, out, subject, ack).await;
                    }
                    PubOp::Ack { subject, payload } => {
                        if let Err(err) = bus
                            .publish_with_headers(subject, shared.ack_headers(), payload.into())
                            .await
                        {
                            warn!(session_id = %id, error = %err, "ack publish failed");
                        }
                    }
                    PubOp::Persist {
                        payload,
                        then,
                        otherwise,
                    } => {
                        let Some(rev) = revision else {
                            warn!(session_id = %id, withheld = then.is_some(), "no record revision to write at; session record not updated");
                            next = otherwise.map(|op| *op);
                            continue;
                        };
                        match shared.sessions.update(subjects::token(&id), payload.into(), rev).await {
                            Ok(new) => {
                                revision = Some(new);
                                next = then.map(|op| *op);
                            }
                            Err(err) => {
                                revision = None;
                                // Another worker owns the session now, or the write may not
                                // have landed: what depended on it is not sent, and the
                                // actor stops, its memory no longer the committed state.
                                // The gateway sends the request again (told so by
                                // `otherwise`, or for want of an acknowledgement) and the
                                // session is rehydrated from what was committed.
                                warn!(session_id = %id, error = %err, withheld = then.is_some(), "session record changed or unwritable; not overwritten, actor stops");
                                actor.do_send(Shutdown { delete: false });
                                next = otherwise.map(|op| *op);
                            }
                        }
                    }
                }
            }
        }
    });
    tx
}
