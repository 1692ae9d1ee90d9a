//! From NATS to actors: one subscription per owned shard, one queue
//! subscription for stateless requests.
//!
//! Messages of one shard are handled in order by one task, so the messages of a
//! session reach its actor in the order the gateway sent them. Every envelope
//! gets an immediate [`Ack`]; answers follow on the route the envelope names.
//!
//! Shards are spread over [`Lane`]s: an actor thread with a NATS connection of its
//! own. A shard's subscription is made on its lane's connection and handled on its
//! lane's thread, where the actors of its sessions live and publish: a call stays on
//! one thread from the message that brings it to the answer that leaves.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use futures::StreamExt;
use proto::{Ack, Body, ENVELOPE_VERSION, Envelope, Outbound, Route, SessionRecord, shard, subjects};
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, GetExtensions};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::actor::{SessionHandle, Shared, Start};

use proto::mcp::{HEADER_MISMATCH, INTERNAL_ERROR, INVALID_REQUEST, OVERLOADED, PARSE_ERROR, SESSION_LIMIT};

/// An actor thread and its own NATS connection (see the module's documentation).
#[derive(Clone)]
pub struct Lane {
    pub arbiter: actix::ArbiterHandle,
    pub nats: async_nats::Client,
}

pub struct Router {
    shared: Arc<Shared>,
    /// Never empty.
    lanes: Vec<Lane>,
    stateless_timeout: std::time::Duration,
    stateless_slots: Arc<Semaphore>,
}

impl Router {
    pub fn new(
        shared: Arc<Shared>,
        lanes: Vec<Lane>,
        stateless_timeout: std::time::Duration,
        max_stateless_inflight: usize,
    ) -> anyhow::Result<Arc<Self>> {
        anyhow::ensure!(!lanes.is_empty(), "a worker needs at least one actor thread");
        Ok(Arc::new(Self {
            shared,
            lanes,
            stateless_timeout,
            stateless_slots: Arc::new(Semaphore::new(max_stateless_inflight)),
        }))
    }

    /// Join the stateless queue group on every lane: each lane's connection is a
    /// member, its requests served on its thread. Ends the subscriptions when
    /// `stop` is cancelled.
    pub async fn serve_stateless(self: &Arc<Self>, stop: CancellationToken) -> Result<(), async_nats::SubscribeError> {
        for lane in &self.lanes {
            let mut sub = lane
                .nats
                .queue_subscribe(subjects::STATELESS, subjects::STATELESS_QUEUE.into())
                .await?;
            let router = self.clone();
            let bus = lane.nats.clone();
            let stop = stop.clone();
            lane.arbiter.spawn(async move {
                loop {
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        msg = sub.next() => match msg {
                            Some(msg) => router.handle_stateless_message(msg, &bus).await,
                            None => break,
                        },
                    }
                }
            });
        }
        Ok(())
    }

    /// The lane of shard `n`.
    fn lane_of(&self, n: u16) -> &Lane {
        &self.lanes[usize::from(n) % self.lanes.len()]
    }

    /// The lane of a session: its shard's.
    fn lane(&self, session: &str) -> &Lane {
        self.lane_of(shard(session))
    }

    /// Wait until the server has handled what every lane's connection sent before
    /// (its subscriptions and unsubscriptions): a request nobody answers, on each
    /// connection, comes back as "no responders" only after the server processed
    /// everything that connection sent ahead of it. (`Client::flush` only writes
    /// to the socket.) Bounded by [`LANE_ROUND_TRIP`].
    pub async fn flush(&self) {
        let lanes = self.lanes.iter().map(|l| async move {
            let subject = l.nats.new_inbox();
            tokio::time::timeout(LANE_ROUND_TRIP, l.nats.request(subject, bytes::Bytes::new())).await
        });
        for result in futures::future::join_all(lanes).await {
            match result {
                Err(_) => debug!("lane round trip timed out"),
                Ok(Err(err)) if err.kind() != async_nats::RequestErrorKind::NoResponders => {
                    debug!(error = %err, "lane round trip failed")
                }
                Ok(_) => {}
            }
        }
    }

    /// Handle one message from a shard subject, on that shard's lane (`bus`: its
    /// connection, which acknowledges).
    pub async fn handle_actor_message(self: &Arc<Self>, msg: async_nats::Message, bus: &async_nats::Client) {
        // Fenced (heartbeats failing, or stalled past them): another worker may own
        // this shard by now. Unanswered, the gateway's request goes to whoever
        // answers, or times out; answering could run a request twice.
        if !self.shared.fence.serving() {
            self.shared
                .metrics
                .envelopes
                .with_label_values(&["any", "fenced"])
                .inc();
            debug!(subject = %msg.subject, "fenced: envelope dropped");
            return;
        }
        let Some(reply) = msg.reply.clone() else {
            warn!(subject = %msg.subject, "envelope without reply subject ignored");
            return;
        };
        let (kind, ack) = match Envelope::from_bytes(&msg.payload) {
            Ok(env) => {
                let trace = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(proto::trace::TRACEPARENT))
                    .map(|v| v.as_str().to_owned())
                    .or_else(|| env.trace.clone())
                    .unwrap_or_default();
                let span = envelope_span(&msg, &env, &trace);
                self.dispatch(env, reply.as_str()).instrument(span).await
            }
            Err(err) => {
                warn!(subject = %msg.subject, error = %err, "undecodable envelope");
                (
                    "invalid",
                    Some(Ack::Rejected {
                        code: INVALID_REQUEST,
                        message: err.to_string(),
                    }),
                )
            }
        };
        let outcome = match &ack {
            None | Some(Ack::Accepted) | Some(Ack::First(_)) | Some(Ack::Answer(_)) => "accepted",
            Some(Ack::NotFound) => "not_found",
            Some(Ack::Rejected { .. }) => "rejected",
        };
        self.shared.metrics.envelopes.with_label_values(&[kind, outcome]).inc();
        // `None`: the actor acknowledges, with the first answer when it is quick.
        if let Some(ack) = ack {
            respond_on(bus, &self.shared, reply, &ack).await;
        }
    }

    async fn dispatch(self: &Arc<Self>, env: Envelope, reply: &str) -> (&'static str, Option<Ack>) {
        let (kind, ack) = self.dispatch_inner(env, reply).await;
        (kind, ack)
    }

    async fn dispatch_inner(self: &Arc<Self>, env: Envelope, reply: &str) -> (&'static str, Option<Ack>) {
        match env.body {
            Body::Open {
                message,
                route,
                legacy_sse,
            } => {
                let route_kind = route.clone();
                let initialize = match parse(&message) {
                    Ok(m @ ClientJsonRpcMessage::Request(_)) if is_initialize(&m) => m,
                    Ok(_) => {
                        return (
                            "open",
                            Some(rejected(INVALID_REQUEST, "a session starts with an initialize request")),
                        );
                    }
                    Err(ack) => return ("open", Some(ack)),
                };
                if let Some(handle) = self.shared.registry.get(&env.key)
                    && handle.is_alive()
                {
                    // Someone else's live session: it does not exist for this caller.
                    if !handle.owned_by(&env.principal) {
                        return ("open", Some(Ack::NotFound));
                    }
                    return ("open", Some(rejected(INVALID_REQUEST, "session id already in use")));
                }
                let record = SessionRecord {
                    state: Vec::new(),
                    answers: Vec::new(),
                    v: ENVELOPE_VERSION,
                    owner: env.principal.binding(),
                    principal: env.principal.clone(),
                    initialize: message,
                    protocol_version: String::new(),
                    legacy_sse,
                    created_at: now_secs(),
                };
                // The record is written before the actor starts, and never over
                // another one: a streamable session id is new (`create`); a legacy
                // one must be the caller's reservation from `GET /sse` (`update` at
                // its revision).
                let revision = if legacy_sse {
                    match self.claim_reservation(&env.key, &env.principal, &record).await {
                        Ok(rev) => rev,
                        Err(ack) => return ("open", Some(ack)),
                    }
                } else {
                    match self.create_record(&env.key, &record).await {
                        Ok(rev) => rev,
                        Err(ack) => return ("open", Some(ack)),
                    }
                };
                let handle = SessionHandle::start(
                    self.lane(&env.key),
                    self.shared.clone(),
                    env.key.clone(),
                    record,
                    Start::Open {
                        initialize: Box::new(initialize),
                        ack_to: actor_acks(&route).then(|| reply.to_owned()),
                        route,
                        revision,
                    },
                );
                self.shared.registry.insert_if_absent(&env.key, handle);
                self.shared.metrics.sessions_opened.inc();
                info!(session_id = %env.key, "session opened");
                (
                    "open",
                    if actor_acks(&route_kind) {
                        None
                    } else {
                        Some(Ack::Accepted)
                    },
                )
            }
            Body::Reserve => {
                let record = SessionRecord {
                    state: Vec::new(),
                    answers: Vec::new(),
                    v: ENVELOPE_VERSION,
                    owner: env.principal.binding(),
                    principal: env.principal.clone(),
                    initialize: Vec::new(),
                    protocol_version: String::new(),
                    legacy_sse: true,
                    created_at: now_secs(),
                };
                match self.create_record(&env.key, &record).await {
                    Ok(_) => {
                        debug!(session_id = %env.key, "legacy session id reserved");
                        ("reserve", Some(Ack::Accepted))
                    }
                    Err(ack) => ("reserve", Some(ack)),
                }
            }
            Body::Deliver { message: raw, route } => {
                let message = match parse(&raw) {
                    Ok(m) => m,
                    Err(ack) => return ("deliver", Some(ack)),
                };
                let ack_to = (actor_acks(&route) && matches!(message, ClientJsonRpcMessage::Request(_)))
                    .then(|| reply.to_owned());
                if env.retry {
                    // Only the session's own caller may read its records.
                    if self.session(&env.key, &env.principal).await.is_none() {
                        return ("deliver", Some(Ack::NotFound));
                    }
                    if let Some(answer) = crate::records::lookup(&self.shared, &env.key, &message).await {
                        info!(session_id = %env.key, "retried request answered from its record");
                        return ("retry", Some(Ack::First(Outbound::new(1, answer, true))));
                    }
                    if self.shared.responses.is_none() && crate::records::changes_state(&self.shared, &message) {
                        return (
                            "retry",
                            Some(rejected(
                                -32000,
                                "the worker serving this request stopped before answering; \
                                 not run again (request records are off)",
                            )),
                        );
                    }
                    debug!(session_id = %env.key, "retried request runs again (its first run did not finish)");
                }
                let caller = Arc::new(env.principal);
                // An actor that is just stopping refuses the message (and drops
                // it); the second attempt, parsed again from the raw bytes, goes
                // to a fresh actor from the store (or finds none).
                let mut first = Some(message);
                for _ in 0..2 {
                    let message = match first.take() {
                        Some(m) => m,
                        None => match parse(&raw) {
                            Ok(m) => m,
                            Err(ack) => return ("deliver", Some(ack)),
                        },
                    };
                    let Some(handle) = self.session(&env.key, &caller).await else {
                        return ("deliver", Some(Ack::NotFound));
                    };
                    if handle
                        .deliver(message, route.clone(), ack_to.clone(), caller.clone())
                        .await
                        .is_ok()
                    {
                        return ("deliver", if ack_to.is_some() { None } else { Some(Ack::Accepted) });
                    }
                    self.shared.registry.remove(&env.key);
                }
                ("deliver", Some(rejected(-32000, "session is restarting, retry")))
            }
            Body::Attach => match self.session(&env.key, &env.principal).await {
                Some(handle) => {
                    handle.mark_attached();
                    ("attach", Some(Ack::Accepted))
                }
                None => match self.is_reservation(&env.key, &env.principal).await {
                    true => ("attach", Some(Ack::Accepted)),
                    false => ("attach", Some(Ack::NotFound)),
                },
            },
            Body::Close => ("close", Some(self.close(&env.key, &env.principal, None).await)),
            Body::Release { since_ms } => (
                "release",
                Some(self.close(&env.key, &env.principal, Some(since_ms)).await),
            ),
            Body::Stateless { .. } => (
                "stateless",
                Some(rejected(INVALID_REQUEST, "stateless requests do not go to a shard")),
            ),
            body @ Body::User { .. } => {
                let env = Envelope { body, ..env };
                (
                    "user",
                    self.shared
                        .user_actors
                        .dispatch(&self.shared, env, async_nats::Subject::from(reply)),
                )
            }
        }
    }

    /// End a session for good; with `unless_attached_after`, only when no stream was
    /// attached to it after that time (a legacy session whose stream ended).
    async fn close(&self, id: &str, principal: &proto::Principal, unless_attached_after: Option<u64>) -> Ack {
        match self.session(id, principal).await {
            Some(handle) => {
                if unless_attached_after.is_some_and(|since| handle.attached_ms() > since) {
                    debug!(session_id = %id, "session was resumed: kept");
                    return Ack::Accepted;
                }
                // Delete the record first: messages of this shard are handled
                // in order, so none that follows can bring the session back.
                if let Err(err) = crate::leases::erase(&self.shared.sessions, &subjects::token(id)).await {
                    warn!(session_id = %id, error = %err, "cannot delete session record");
                }
                self.shared.owners.release(&principal.binding(), id).await;
                self.shared.registry.remove(id);
                handle.close();
                Ack::Accepted
            }
            // A legacy reservation whose stream ended before `initialize`.
            None => match self.drop_reservation(id, principal).await {
                true => Ack::Accepted,
                false => Ack::NotFound,
            },
        }
    }

    /// Store a new session record; refuse when the id already has one, when the
    /// record is over `WORKER_MAX_RECORD_BYTES`, or when its principal already holds
    /// `WORKER_MAX_SESSIONS_PER_PRINCIPAL` sessions.
    async fn create_record(&self, id: &str, record: &SessionRecord) -> Result<u64, Ack> {
        let bytes = self.encode_record(id, record)?;
        let admitted = match self.shared.owners.admit(&record.owner, id).await {
            Ok(admitted) => admitted,
            Err(crate::owners::AdmitError::Full(max)) => {
                warn!(session_id = %id, iss = %record.principal.iss, sub = %record.principal.sub, max, "session refused: principal at its session limit");
                return Err(rejected(
                    SESSION_LIMIT,
                    &format!("this principal already holds {max} live sessions; close one first"),
                ));
            }
            Err(crate::owners::AdmitError::Unavailable) => {
                return Err(rejected(INTERNAL_ERROR, "session store unavailable, retry"));
            }
        };
        let created = self.shared.sessions.create(subjects::token(id), bytes.into()).await;
        drop(admitted);
        // Not stored: stop counting it (an id that exists keeps its own entry).
        if created
            .as_ref()
            .is_err_and(|e| e.kind() != kv::CreateErrorKind::AlreadyExists)
        {
            self.shared.owners.release(&record.owner, id).await;
        }
        match created {
            Ok(rev) => Ok(rev),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                warn!(session_id = %id, "session id already has a record; not overwritten");
                Err(rejected(INVALID_REQUEST, "session id already in use"))
            }
            Err(err) => {
                warn!(session_id = %id, error = %err, "cannot store session record");
                Err(rejected(INTERNAL_ERROR, "session store unavailable, retry"))
            }
        }
    }

    /// The record's bytes, if they fit `WORKER_MAX_RECORD_BYTES`.
    fn encode_record(&self, id: &str, record: &SessionRecord) -> Result<Vec<u8>, Ack> {
        let bytes = record
            .to_bytes()
            .map_err(|e| rejected(INTERNAL_ERROR, &e.to_string()))?;
        if bytes.len() > self.shared.max_record_bytes {
            warn!(session_id = %id, bytes = bytes.len(), max = self.shared.max_record_bytes, "session record too large");
            return Err(rejected(
                INVALID_REQUEST,
                &format!(
                    "initialize request too large to keep ({} bytes, at most {})",
                    bytes.len(),
                    self.shared.max_record_bytes
                ),
            ));
        }
        Ok(bytes)
    }

    /// Turn the caller's reservation of a legacy session id into its session
    /// record: the reservation must exist, be the caller's and not be initialized.
    async fn claim_reservation(
        &self,
        id: &str,
        principal: &proto::Principal,
        record: &SessionRecord,
    ) -> Result<u64, Ack> {
        let entry = match self.shared.sessions.entry(subjects::token(id)).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry,
            Ok(_) => return Err(Ack::NotFound),
            Err(err) => {
                warn!(session_id = %id, error = %err, "session store read failed");
                return Err(rejected(INTERNAL_ERROR, "session store unavailable, retry"));
            }
        };
        let stored = SessionRecord::from_bytes(&entry.value).map_err(|err| {
            warn!(session_id = %id, error = %err, "unreadable session record");
            Ack::NotFound
        })?;
        if !stored.owned_by(principal) || !stored.legacy_sse {
            warn!(session_id = %id, "initialize for a legacy session id of someone else refused");
            return Err(Ack::NotFound);
        }
        if !stored.is_reserved() {
            return Err(rejected(INVALID_REQUEST, "session already initialized"));
        }
        let bytes = self.encode_record(id, record)?;
        match self
            .shared
            .sessions
            .update(subjects::token(id), bytes.into(), entry.revision)
            .await
        {
            Ok(rev) => Ok(rev),
            Err(err) => {
                warn!(session_id = %id, error = %err, "legacy session record changed while opening; not overwritten");
                Err(rejected(INVALID_REQUEST, "session id already in use"))
            }
        }
    }

    /// Delete the caller's own not-yet-initialized reservation of `id`, if that is
    /// what the record is.
    /// Whether `id` is a legacy session of `principal` reserved but not yet opened.
    async fn is_reservation(&self, id: &str, principal: &proto::Principal) -> bool {
        matches!(
            self.shared.sessions.entry(subjects::token(id)).await,
            Ok(Some(entry)) if entry.operation == kv::Operation::Put
                && SessionRecord::from_bytes(&entry.value).is_ok_and(|r| r.is_reserved() && r.owned_by(principal))
        )
    }

    async fn drop_reservation(&self, id: &str, principal: &proto::Principal) -> bool {
        let Ok(Some(entry)) = self.shared.sessions.entry(subjects::token(id)).await else {
            return false;
        };
        if entry.operation != kv::Operation::Put {
            return false;
        }
        let reserved = SessionRecord::from_bytes(&entry.value).is_ok_and(|r| r.is_reserved() && r.owned_by(principal));
        if !reserved {
            return false;
        }
        // At the revision read: an `initialize` that got in first keeps its session.
        let deleted = self
            .shared
            .sessions
            .delete_expect_revision(subjects::token(id), Some(entry.revision))
            .await;
        if deleted.is_ok() {
            self.shared.owners.release(&principal.binding(), id).await;
        }
        deleted.is_ok()
    }

    /// The live actor of a session, rehydrated from the store when needed;
    /// `None` when it does not exist, is only reserved, or belongs to someone else
    /// (another issuer, subject or client).
    async fn session(&self, id: &str, principal: &proto::Principal) -> Option<SessionHandle> {
        if let Some(handle) = self.shared.registry.get(id)
            && handle.is_alive()
        {
            return handle.owned_by(principal).then_some(handle);
        }
        let (bytes, revision) = match self.shared.sessions.entry(subjects::token(id)).await {
            Ok(Some(entry)) if entry.operation == async_nats::jetstream::kv::Operation::Put => {
                (entry.value, entry.revision)
            }
            Ok(_) => return None,
            Err(err) => {
                warn!(session_id = %id, error = %err, "session store read failed");
                return None;
            }
        };
        let record = match SessionRecord::from_bytes(&bytes) {
            Ok(r) => r,
            Err(err) => {
                warn!(session_id = %id, error = %err, "unreadable session record");
                return None;
            }
        };
        if !record.owned_by(principal) || record.is_reserved() {
            return None;
        }
        let handle = SessionHandle::start(
            self.lane(id),
            self.shared.clone(),
            id.to_owned(),
            record,
            Start::Restore { revision },
        );
        let handle = self.shared.registry.insert_if_absent(id, handle);
        self.shared.metrics.sessions_restored.inc();
        info!(session_id = %id, "session rehydrated from store");
        Some(handle)
    }

    /// Handle one message from the stateless queue group, on a lane (`bus`: its
    /// connection, where the request arrived and its answers leave).
    pub async fn handle_stateless_message(self: &Arc<Self>, msg: async_nats::Message, bus: &async_nats::Client) {
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        let env = match Envelope::from_bytes(&msg.payload) {
            Ok(env) => env,
            Err(err) => {
                warn!(error = %err, "undecodable stateless envelope");
                respond_on(bus, &self.shared, reply, &rejected(INVALID_REQUEST, &err.to_string())).await;
                return;
            }
        };
        let Body::Stateless { message, route } = env.body else {
            respond_on(
                bus,
                &self.shared,
                reply,
                &rejected(INVALID_REQUEST, "expected a stateless request"),
            )
            .await;
            return;
        };
        let message = match parse(&message) {
            Ok(m) => m,
            Err(ack) => {
                respond_on(bus, &self.shared, reply, &ack).await;
                return;
            }
        };
        if let Err(mismatch) = self.check_param_headers(&env.principal, &env.headers, &message) {
            respond_on(
                bus,
                &self.shared,
                reply,
                &rejected(HEADER_MISMATCH, &mismatch.to_string()),
            )
            .await;
            return;
        }
        let Ok(permit) = self.stateless_slots.clone().try_acquire_owned() else {
            self.shared
                .metrics
                .envelopes
                .with_label_values(&["stateless", "shed"])
                .inc();
            debug!("stateless request shed: WORKER_MAX_STATELESS_INFLIGHT in flight");
            respond_on(bus, &self.shared, reply, &rejected(OVERLOADED, "worker is at capacity")).await;
            return;
        };
        self.shared
            .metrics
            .envelopes
            .with_label_values(&["stateless", "accepted"])
            .inc();
        let mut message = message;
        let trace = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(proto::trace::TRACEPARENT))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let span = message_span(&msg, "stateless", &env.key, &trace);
        if telemetry::otel::enabled()
            && let ClientJsonRpcMessage::Request(request) = &mut message
        {
            request.request.extensions_mut().insert(tools::TraceSpan(span.clone()));
        }
        let shared = self.shared.clone();
        let timeout = self.stateless_timeout;
        let bus = bus.clone();
        // On this lane's thread.
        tokio::spawn(
            async move {
                crate::stateless::serve(shared, bus, env.principal, message, route, timeout, reply).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

impl Router {
    /// SEP-2243: `Mcp-Param-*` headers of a `tools/call` must match the arguments
    /// the tool's schema marks with `x-mcp-header`.
    fn check_param_headers(
        &self,
        principal: &proto::Principal,
        headers: &[(String, String)],
        message: &ClientJsonRpcMessage,
    ) -> Result<(), crate::headers::HeaderMismatch> {
        let ClientJsonRpcMessage::Request(request) = message else {
            return Ok(());
        };
        let ClientRequest::CallToolRequest(call) = &request.request else {
            return Ok(());
        };
        let server = tools::McpServer::new(self.shared.profile, Some(principal.clone()))
            .with_toolbox(self.shared.toolbox.clone());
        let Some(tool) = rmcp::ServerHandler::get_tool(&server, &call.params.name) else {
            return Ok(());
        };
        let arguments = call.params.arguments.clone().map(serde_json::Value::Object);
        crate::headers::check_params(&tool.input_schema, arguments.as_ref(), headers)
    }
}

/// Whether the actor, rather than the router, acknowledges (a request whose
/// answers go to a gateway's reply subject).
fn actor_acks(route: &Route) -> bool {
    matches!(route, Route::Reply { .. })
}

/// The span an envelope is handled under. Always one with the session and the
/// `traceparent` for the logs; while traces are exported, also the server side of
/// the gateway's NATS request: its child (W3C context from the message's headers),
/// with the trace id for the logs.
fn envelope_span(msg: &async_nats::Message, env: &Envelope, trace: &str) -> tracing::Span {
    let kind = match &env.body {
        Body::Open { .. } => "open",
        Body::Deliver { .. } => "deliver",
        Body::Attach => "attach",
        Body::Reserve => "reserve",
        Body::Close => "close",
        Body::Release { .. } => "release",
        Body::Stateless { .. } => "stateless",
        Body::User { .. } => "user",
    };
    message_span(msg, kind, &env.key, trace)
}

/// [`envelope_span`] of an envelope's `kind` for session `key`.
fn message_span(msg: &async_nats::Message, kind: &str, key: &str, trace: &str) -> tracing::Span {
    if !telemetry::otel::enabled() {
        return info_span!("envelope", session_id = %key, traceparent = %trace);
    }
    let span = info_span!(
        "envelope",
        otel.name = %format!("{kind} process"),
        otel.kind = "server",
        messaging.system = "nats",
        messaging.operation.type = "process",
        session_id = %key,
        traceparent = %trace,
        trace_id = tracing::field::Empty,
    );
    let state = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(proto::trace::TRACESTATE))
        .map(|v| v.as_str());
    telemetry::otel::set_parent(&span, trace, state);
    if let Some(id) = telemetry::otel::trace_id(&span) {
        span.record("trace_id", id);
    }
    span
}

fn is_initialize(m: &ClientJsonRpcMessage) -> bool {
    matches!(m, ClientJsonRpcMessage::Request(r) if matches!(r.request, ClientRequest::InitializeRequest(_)))
}

fn parse(bytes: &[u8]) -> Result<ClientJsonRpcMessage, Ack> {
    serde_json::from_slice(bytes).map_err(|err| {
        if serde_json::from_slice::<serde_json::Value>(bytes).is_err() {
            rejected(PARSE_ERROR, &format!("parse error: {err}"))
        } else {
            rejected(INVALID_REQUEST, &format!("invalid request: {err}"))
        }
    })
}

fn rejected(code: i64, message: &str) -> Ack {
    Ack::Rejected {
        code,
        message: message.to_owned(),
    }
}

/// Acknowledge an envelope, naming this worker ([`subjects::WORKER_HEADER`]) so the
/// gateway notices if it dies before answering.
pub(crate) async fn respond(shared: &Shared, reply: async_nats::Subject, ack: &Ack) {
    respond_on(&shared.nats, shared, reply, ack).await
}

/// [`respond`] on a given connection: a lane's, where the session's actor
/// publishes what follows the acknowledgement (one connection keeps their order).
pub(crate) async fn respond_on(nats: &async_nats::Client, shared: &Shared, reply: async_nats::Subject, ack: &Ack) {
    match ack.to_bytes() {
        Ok(bytes) => {
            if let Err(err) = nats
                .publish_with_headers(reply, shared.ack_headers(), bytes.into())
                .await
            {
                warn!(error = %err, "cannot send ack");
            }
        }
        Err(err) => warn!(error = %err, "cannot encode ack"),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The shard subscriptions of this worker, following the leases it holds.
pub struct Subscriptions {
    router: Arc<Router>,
    /// Per shard: a receiver told when its task ended, and what stops it.
    tasks: HashMap<u16, (oneshot::Receiver<()>, CancellationToken)>,
}

/// Longest wait for the server to confirm a lane's subscriptions ([`Router::flush`]).
const LANE_ROUND_TRIP: std::time::Duration = std::time::Duration::from_secs(2);

/// Longest wait for a released shard's buffered messages to be handled.
const SHARD_DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

impl Subscriptions {
    pub fn new(router: Arc<Router>) -> Self {
        Self {
            router,
            tasks: HashMap::new(),
        }
    }

    /// Stop the given shards' subscriptions gracefully: unsubscribe, then handle
    /// (and acknowledge) what was already delivered, so no request is dropped
    /// unanswered; bounded by [`SHARD_DRAIN`].
    async fn stop(&mut self, shards: &[u16]) {
        let mut stopping = Vec::new();
        for n in shards {
            if let Some((task, stop)) = self.tasks.remove(n) {
                stop.cancel();
                stopping.push(task);
            }
        }
        let all = futures::future::join_all(stopping);
        if tokio::time::timeout(SHARD_DRAIN, all).await.is_err() {
            warn!("released shards did not drain in time");
        }
    }

    /// Subscribe to newly owned shards, drop lost ones (evicting their actors).
    pub async fn apply(&mut self, owned: &BTreeSet<u16>) -> Result<(), async_nats::SubscribeError> {
        let lost: Vec<u16> = self.tasks.keys().filter(|s| !owned.contains(s)).copied().collect();
        if !lost.is_empty() {
            self.stop(&lost).await;
            let lost: BTreeSet<u16> = lost.into_iter().collect();
            for handle in self.router.shared.registry.matching(|id| lost.contains(&shard(id))) {
                handle.evict();
            }
            debug!(count = lost.len(), "shards released");
        }
        for n in owned {
            if self.tasks.contains_key(n) {
                continue;
            }
            let lane = self.router.lane_of(*n).clone();
            let mut sub = lane.nats.subscribe(subjects::shard_filter(*n)).await?;
            let router = self.router.clone();
            let stop = CancellationToken::new();
            let stopped = stop.clone();
            let (done, ended) = oneshot::channel();
            let bus = lane.nats;
            let spawned = lane.arbiter.spawn(async move {
                // Told when this future ends or is dropped (its thread stopping).
                let _done = done;
                loop {
                    tokio::select! {
                        biased;
                        _ = stopped.cancelled() => break,
                        msg = sub.next() => match msg {
                            Some(msg) => router.handle_actor_message(msg, &bus).await,
                            None => return,
                        },
                    }
                }
                // Drain, not unsubscribe: unsubscribing closes the receiver at once and
                // drops what the server sent before it saw the UNSUB, leaving those
                // requests unanswered until the gateway's ack timeout. Draining keeps
                // delivering them, then ends the stream (bounded by SHARD_DRAIN).
                // A window remains: async-nats ends a drain once its read buffer runs
                // empty, not at the server's PONG, so under load a request can still be
                // lost at a release; closing that is the shard handover of issue 10.
                if sub.drain().await.is_ok() {
                    while let Some(msg) = sub.next().await {
                        router.handle_actor_message(msg, &bus).await;
                    }
                }
            });
            if !spawned {
                warn!(shard = n, "actor thread stopped: shard not served");
                continue;
            }
            self.tasks.insert(*n, (ended, stop));
        }
        Ok(())
    }

    pub fn owned(&self) -> usize {
        self.tasks.len()
    }

    /// Wait until the server has seen the subscriptions made and ended so far.
    pub async fn flush(&self) {
        self.router.flush().await;
    }

    /// Stop every subscription, handling what was already delivered (drain), and
    /// evict every actor: fenced or declared dead, this worker may see its shards
    /// taken, and an actor kept until they come back would serve a session with
    /// what it held in memory, not what its new owner committed meanwhile.
    pub async fn clear(&mut self) {
        let all: Vec<u16> = self.tasks.keys().copied().collect();
        self.stop(&all).await;
        for handle in self.router.shared.registry.all() {
            handle.evict();
        }
    }
}
