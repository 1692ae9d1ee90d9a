//! Streamable HTTP at `/mcp` (POST, GET, DELETE), every MCP revision the
//! cluster serves:
//!
//! - sessionful 2025-03-26 / 2025-06-18 / 2025-11-25: `initialize` opens a
//!   session whose id the gateway mints (`Mcp-Session-Id`) and whose shard picks
//!   the worker; later requests carry the id; GET opens the session's stream;
//!   DELETE ends it.
//! - stateless 2026-07-28: no session; requests carry
//!   `_meta.io.modelcontextprotocol/protocolVersion` (and `server/discover`
//!   needs none) and go to any worker through a queue group.
//!
//! The gateway parses just enough of each message to route it (method, id,
//! protocol version) and relays the client's bytes unchanged; the worker's
//! rmcp server does the rest. A request's answer comes back as one JSON body
//! when the first thing the worker sends is the final response, or as an SSE
//! stream when notifications or server requests come first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use proto::trace::TraceParent;
use proto::{Ack, Body, Envelope, Outbound, Principal, Route, subjects};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use crate::auth::Validator;
use crate::errors::{Kind, McpError, jsonrpc_error};
use crate::guard::OriginPolicy;
use crate::metrics::{Metrics, StreamGuard, method_label};
use crate::relay::{Next, Relay, RelayError, ReplyStream};
use crate::sse;

pub use proto::mcp::{
    HEADER_METHOD, HEADER_NAME, HEADER_PROTOCOL_VERSION, HEADER_SESSION_ID, META_CLIENT_CAPABILITIES,
    META_PROTOCOL_VERSION, STATELESS_VERSION, SUPPORTED_VERSIONS,
};
/// Longest session id accepted (ours are 32 hex digits).
const MAX_SESSION_ID: usize = 128;

/// What the handlers of one HTTP worker thread share. Every field but `relay`
/// is shared by all of them (cheap clones of the same limits, caches and
/// metrics); `relay` is the thread's own NATS connection (see [`crate::run`]).
#[derive(Clone)]
pub struct AppState {
    pub relay: Arc<Relay>,
    pub validator: Validator,
    pub metrics: Metrics,
    pub policy: OriginPolicy,
    pub drain: CancellationToken,
    pub max_body: usize,
    pub request_timeout: Duration,
    pub keepalive: Duration,
    /// `GATEWAY_BODY_READ_TIMEOUT`.
    pub body_timeout: Duration,
    /// `GATEWAY_SSE_BUFFER_BYTES`.
    pub sse_buffer: usize,
    /// How long a legacy session outlives its stream (`GATEWAY_LEGACY_RESUME_GRACE`).
    pub legacy_resume_grace: Duration,
    pub trusted_proxies: crate::limits::TrustedProxies,
    /// Failed authentications per client address (`GATEWAY_UNAUTH_RATE`).
    pub unauthenticated: Arc<crate::limits::RateLimiter>,
    /// `GATEWAY_MAX_INFLIGHT_PER_PRINCIPAL`.
    pub inflight: crate::limits::InflightLimiter,
    /// `GATEWAY_MAX_INFLIGHT`: every caller's requests together.
    pub admission: crate::limits::Admission,
    /// `GATEWAY_MAX_STREAMS`: long-lived SSE streams, every caller's together.
    pub streams: crate::limits::Admission,
}

/// A client JSON-RPC message, parsed just enough to route it.
pub struct Incoming {
    pub raw: Bytes,
    pub value: Value,
    pub id: Option<Value>,
    pub method: Option<String>,
    pub kind: MessageKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Request,
    Notification,
    Response,
}

impl Incoming {
    pub fn parse(raw: Bytes) -> Result<Self, McpError> {
        let value: Value =
            serde_json::from_slice(&raw).map_err(|e| McpError::new(Kind::ParseError).detail(e.to_string()))?;
        if value.is_array() {
            return Err(McpError::new(Kind::BatchNotSupported));
        }
        let Some(obj) = value.as_object() else {
            return Err(McpError::new(Kind::InvalidRequest).detail("expected a JSON-RPC object"));
        };
        let id = obj.get("id").cloned();
        // JSON-RPC 2.0 §5: an error names the request's id only when it is a valid
        // one (string or number); otherwise the id is null, never echoed back.
        let valid_id = matches!(&id, Some(Value::String(_)) | Some(Value::Number(_)));
        let answer_id = id.clone().filter(|_| valid_id);
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(McpError::new(Kind::InvalidRequest)
                .detail("jsonrpc must be \"2.0\"")
                .with_id(answer_id));
        }
        let method = match obj.get("method") {
            None => None,
            Some(Value::String(m)) => Some(m.clone()),
            Some(_) => {
                return Err(McpError::new(Kind::InvalidRequest)
                    .detail("method must be a string")
                    .with_id(answer_id));
            }
        };
        let kind = match (&method, &id) {
            (Some(_), None) => MessageKind::Notification,
            (Some(_), Some(_)) if valid_id => MessageKind::Request,
            (None, Some(_)) if valid_id && (obj.contains_key("result") || obj.contains_key("error")) => {
                MessageKind::Response
            }
            _ => {
                return Err(McpError::new(Kind::InvalidRequest)
                    .detail("not a JSON-RPC request, notification or response")
                    .with_id(answer_id));
            }
        };
        Ok(Self {
            raw,
            value,
            id,
            method,
            kind,
        })
    }

    fn meta_protocol_version(&self) -> Option<&str> {
        self.value
            .get("params")
            .and_then(|p| p.get("_meta"))
            .and_then(|m| m.get(META_PROTOCOL_VERSION))
            .and_then(Value::as_str)
    }

    fn is(&self, method: &str) -> bool {
        self.method.as_deref() == Some(method)
    }

    /// The `Mcp-Name` a request names: tool or prompt name, resource URI.
    fn name(&self) -> Option<&str> {
        let params = self.value.get("params")?;
        match self.method.as_deref()? {
            "tools/call" | "prompts/get" => params.get("name")?.as_str(),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => params.get("uri")?.as_str(),
            "tasks/get" | "tasks/update" | "tasks/cancel" => params.get("taskId")?.as_str(),
            _ => None,
        }
    }
}

pub(crate) fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// W3C trace context: the client's, or a new trace.
pub fn trace_of(req: &HttpRequest) -> TraceParent {
    let span: u64 = rand::random::<u64>() | 1;
    match header(req, proto::trace::TRACEPARENT).and_then(TraceParent::parse) {
        Some(parent) => parent.child(span),
        None => TraceParent {
            trace_id: rand::random::<u128>() | 1,
            span_id: span,
            sampled: false,
        },
    }
}

/// The server span of an HTTP request while traces are exported (none otherwise):
/// the child of the client's `traceparent` if it sent one. Its trace id goes into
/// the logs of everything done under it.
pub fn request_span(req: &HttpRequest, route: &'static str) -> tracing::Span {
    if !telemetry::otel::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format!("{} {route}", req.method()),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if let Some(parent) = header(req, proto::trace::TRACEPARENT) {
        telemetry::otel::set_parent(&span, parent, header(req, proto::trace::TRACESTATE));
    }
    if let Some(id) = telemetry::otel::trace_id(&span) {
        span.record("trace_id", id);
    }
    span
}

/// The span of one MCP message while traces are exported. A message carrying
/// `params._meta.traceparent` (how 2026-07-28 clients pass their context) with no
/// `traceparent` header continues that context, linked to the HTTP request's span.
fn message_span(req: &HttpRequest, msg: &Incoming) -> tracing::Span {
    if !telemetry::otel::enabled() {
        return tracing::Span::none();
    }
    let method = msg.method.as_deref().unwrap_or("response");
    let span = tracing::info_span!(
        "mcp.message",
        otel.name = %method,
        otel.kind = "internal",
        rpc.system = "jsonrpc",
        rpc.method = %method,
        trace_id = tracing::field::Empty,
    );
    let meta = msg.value.get("params").and_then(|p| p.get("_meta"));
    let meta_parent = meta.and_then(|m| m.get("traceparent")).and_then(Value::as_str);
    if header(req, proto::trace::TRACEPARENT).is_none()
        && let Some(parent) = meta_parent
    {
        let state = meta.and_then(|m| m.get("tracestate")).and_then(Value::as_str);
        if telemetry::otel::set_parent(&span, parent, state) {
            telemetry::otel::add_link(&span, &tracing::Span::current());
        }
    }
    if let Some(id) = telemetry::otel::trace_id(&span) {
        span.record("trace_id", id);
    }
    span
}

/// Host/Origin, bearer token, drain: what every MCP endpoint checks first.
pub async fn admit(req: &HttpRequest, st: &AppState) -> Result<Principal, HttpResponse> {
    if let Err(e) = st.policy.check(req) {
        warn!(error = %e, "request refused by origin policy");
        return Err(actix_web::ResponseError::error_response(&e));
    }
    let authorization = header(req, "authorization");
    let verify = if telemetry::otel::enabled() {
        tracing::info_span!(
            "auth.verify",
            otel.name = "bearer token check",
            otel.kind = "internal",
            otel.status_code = tracing::field::Empty,
        )
    } else {
        tracing::Span::none()
    };
    let checked = st.validator.validate(authorization).instrument(verify.clone()).await;
    if checked.is_err() {
        verify.record("otel.status_code", "ERROR");
    }
    drop(verify);
    match checked {
        Ok(p) => {
            if st.drain.is_cancelled() {
                return Err(actix_web::ResponseError::error_response(&McpError::new(Kind::Draining)));
            }
            Ok(p)
        }
        Err(e) => {
            st.metrics.auth_failures.with_label_values(&[e.code()]).inc();
            if let Some(ip) = st.trusted_proxies.client_of(req)
                && let Err(wait) = st.unauthenticated.hit(ip)
            {
                warn!(client = %ip, "unauthenticated requests over the per-address limit");
                st.metrics.auth_failures.with_label_values(&["RATE_LIMITED"]).inc();
                return Err(actix_web::ResponseError::error_response(
                    &McpError::new(Kind::TooManyRequests)
                        .detail("too many unauthenticated requests from this address")
                        .retry_after(wait),
                ));
            }
            info!(code = e.code(), "bearer token refused");
            if crate::auth::LEGACY_PATHS.contains(&req.path()) {
                Err(st.validator.reject_legacy_response(&e))
            } else {
                Err(st.validator.reject_response(&e))
            }
        }
    }
}

/// Take a place for one request in the gateway's bounded queue, or shed the
/// request at once: 503 with `Retry-After`, before its token is checked or its
/// body read. Logged at most once a second (a burst sheds thousands).
pub fn admit_load(st: &AppState) -> Result<crate::limits::Admitted, McpError> {
    st.admission.try_admit().ok_or_else(|| {
        st.metrics.shed.with_label_values(&["gateway"]).inc();
        if shed_log_due() {
            warn!(
                in_flight = st.admission.in_flight(),
                "gateway at capacity (GATEWAY_MAX_INFLIGHT): shedding requests with 503"
            );
        }
        McpError::new(Kind::Overloaded)
    })
}

/// Take a place for one long-lived SSE stream (GET /mcp, legacy /sse), or refuse
/// it: 503 with `Retry-After`. Asked after the token check, so only a caller
/// who may open a stream can find the gateway full.
pub fn admit_stream(st: &AppState) -> Result<crate::limits::Admitted, McpError> {
    st.streams.try_admit().ok_or_else(|| {
        st.metrics.shed.with_label_values(&["streams"]).inc();
        if shed_log_due() {
            warn!(
                streams = st.streams.in_flight(),
                "gateway holds its most SSE streams (GATEWAY_MAX_STREAMS): refusing new ones with 503"
            );
        }
        McpError::new(Kind::Overloaded).detail("the gateway holds as many SSE streams as it may")
    })
}

/// Whether a shed request should be logged: the first in each second.
fn shed_log_due() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    LAST.swap(now, Ordering::Relaxed) != now
}

/// Count a request of `principal` in flight until the guard drops; 429 over
/// `GATEWAY_MAX_INFLIGHT_PER_PRINCIPAL`.
pub fn begin_request(st: &AppState, principal: &Principal) -> Result<crate::limits::InflightGuard, McpError> {
    st.inflight.begin(&principal.binding()).ok_or_else(|| {
        warn!(iss = %principal.iss, sub = %principal.sub, "requests in flight over the per-principal limit");
        McpError::new(Kind::TooManyRequests)
            .detail("too many requests in flight for this principal")
            .retry_after(1)
    })
}

/// Read the body, refusing more than `limit` bytes or a body that takes longer
/// than `timeout` to arrive (408: a slow sender holds no connection for long).
pub async fn read_body_within(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, McpError> {
    match tokio::time::timeout(timeout, read_body(req, payload, limit)).await {
        Ok(result) => result,
        Err(_) => {
            warn!(seconds = timeout.as_secs(), "request body not received in time");
            Err(McpError::new(Kind::RequestTimeout))
        }
    }
}

/// Read the body, refusing more than `limit` bytes.
pub async fn read_body(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<Bytes, McpError> {
    if let Some(len) = header(req, "content-length").and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(McpError::new(Kind::PayloadTooLarge).detail(format!("body exceeds {limit} bytes")));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| McpError::new(Kind::InvalidRequest).detail(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(McpError::new(Kind::PayloadTooLarge).detail(format!("body exceeds {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

pub fn check_content_type(req: &HttpRequest) -> Result<(), McpError> {
    let ok = header(req, "content-type").is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
    });
    if ok {
        Ok(())
    } else {
        Err(McpError::new(Kind::UnsupportedMediaType))
    }
}

/// Media types the client accepts (`*/*` counts as any).
fn accepts(req: &HttpRequest, media: &str) -> bool {
    req.headers()
        .get_all("accept")
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',').any(|part| {
                let essence = part.split(';').next().unwrap_or("").trim();
                essence.eq_ignore_ascii_case(media) || essence == "*/*"
            })
        })
}

fn session_id(req: &HttpRequest) -> Result<Option<String>, McpError> {
    match header(req, HEADER_SESSION_ID) {
        None => Ok(None),
        Some(id) if !id.is_empty() && id.len() <= MAX_SESSION_ID && id.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(id.to_owned()))
        }
        Some(_) => Err(McpError::new(Kind::SessionNotFound)),
    }
}

pub(crate) fn relay_error(err: RelayError) -> McpError {
    warn!(error = %err, "worker unreachable");
    match err {
        RelayError::NoResponders(_) => McpError::new(Kind::NoWorker),
        RelayError::Disconnected => McpError::new(Kind::NoWorker).detail("the message bus is unreachable"),
        RelayError::TimedOut(_) => McpError::new(Kind::WorkerTimeout),
        RelayError::TooLarge { max, .. } => McpError::new(Kind::PayloadTooLarge)
            .detail(format!("the message bus carries at most {max} bytes per message")),
        RelayError::Encode(_) | RelayError::Decode(_) | RelayError::Nats(_) => McpError::new(Kind::Internal),
    }
}

pub(crate) fn ack_error(ack: Ack, id: Option<Value>) -> Option<McpError> {
    match ack {
        Ack::Accepted | Ack::First(_) => None,
        Ack::NotFound => Some(McpError::new(Kind::SessionNotFound).with_id(id)),
        // Only user-state operations, which gateways never send, are answered so.
        Ack::Answer(_) => Some(McpError::new(Kind::Internal).with_id(id)),
        Ack::Rejected { code, message } => {
            let kind = match code {
                proto::mcp::PARSE_ERROR => Kind::ParseError,
                proto::mcp::SESSION_LIMIT => Kind::TooManyRequests,
                proto::mcp::OVERLOADED => Kind::Overloaded,
                // The worker's store is out of reach for now: 503, try again.
                proto::mcp::INTERNAL_ERROR => Kind::NoWorker,
                _ => Kind::InvalidRequest,
            };
            Some(McpError::new(kind).code(code).detail(message).with_id(id))
        }
    }
}

/// HTTP status for a stateless request's final answer (2026-07-28 maps some
/// JSON-RPC errors to HTTP errors; sessionful revisions always use 200).
fn stateless_status(message: &[u8], meta_malformed: bool) -> StatusCode {
    let Ok(v) = serde_json::from_slice::<Value>(message) else {
        return StatusCode::OK;
    };
    match v.get("error").and_then(|e| e.get("code")).and_then(Value::as_i64) {
        Some(-32022..=-32020) => StatusCode::BAD_REQUEST,
        Some(-32602) if meta_malformed => StatusCode::BAD_REQUEST,
        Some(-32601) => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    }
}

/// Status to answer with, and the metric label for the MCP method.
pub(crate) type Answer = (HttpResponse, &'static str);

pub(crate) fn record(st: &AppState, route: &str, started: Instant, (resp, method): Answer) -> HttpResponse {
    let span = tracing::Span::current();
    if !span.is_none() {
        span.record("http.response.status_code", i64::from(resp.status().as_u16()));
        if resp.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
    let status = resp.status().as_u16().to_string();
    st.metrics.requests.with_label_values(&[route, method, &status]).inc();
    st.metrics
        .duration
        .with_label_values(&[route, method])
        .observe(started.elapsed().as_secs_f64());
    resp
}

fn err_answer(e: McpError, method: &'static str) -> Answer {
    (actix_web::ResponseError::error_response(&e), method)
}

/// POST /mcp
pub async fn post(req: HttpRequest, payload: web::Payload, st: web::Data<AppState>) -> HttpResponse {
    let span = request_span(&req, "/mcp");
    async move {
        let started = Instant::now();
        let answer = post_inner(&req, payload, &st).await;
        record(&st, "/mcp", started, answer)
    }
    .instrument(span)
    .await
}

async fn post_inner(req: &HttpRequest, payload: web::Payload, st: &AppState) -> Answer {
    let _admitted = match admit_load(st) {
        Ok(a) => a,
        Err(e) => return err_answer(e, "unknown"),
    };
    let principal = match admit(req, st).await {
        Ok(p) => p,
        Err(resp) => return (resp, "unknown"),
    };
    let _inflight = match begin_request(st, &principal) {
        Ok(g) => g,
        Err(e) => return err_answer(e, "unknown"),
    };
    if let Err(e) = check_content_type(req) {
        return err_answer(e, "unknown");
    }
    if !(accepts(req, "application/json") && accepts(req, "text/event-stream")) {
        return err_answer(
            McpError::new(Kind::NotAcceptable).detail("client must accept both application/json and text/event-stream"),
            "unknown",
        );
    }
    let raw = match read_body_within(req, payload, st.max_body, st.body_timeout).await {
        Ok(b) => b,
        Err(e) => return err_answer(e, "unknown"),
    };
    let msg = match Incoming::parse(raw) {
        Ok(m) => m,
        Err(e) => {
            info!(error = %e, "malformed message refused");
            return err_answer(e, "unknown");
        }
    };
    let label = method_label(msg.method.as_deref());
    let span = message_span(req, &msg);
    match route_post(req, st, principal, msg).instrument(span).await {
        Ok(resp) => (resp, label),
        Err(e) => err_answer(e, label),
    }
}

async fn route_post(
    req: &HttpRequest,
    st: &AppState,
    principal: Principal,
    msg: Incoming,
) -> Result<HttpResponse, McpError> {
    let header_version = header(req, HEADER_PROTOCOL_VERSION);
    let meta_version = msg.meta_protocol_version().map(str::to_owned);
    let id = msg.id.clone();
    if let Some(v) = header_version
        && meta_version.is_none()
        && !SUPPORTED_VERSIONS.contains(&v)
    {
        return Err(McpError::new(Kind::UnsupportedProtocolVersion)
            .detail(format!("{v:?}; supported: {}", SUPPORTED_VERSIONS.join(", ")))
            .with_id(id));
    }
    // SEP-2243: routing headers must agree with the body (and from 2026-07-28 on
    // they are required).
    let standard_headers = header_version.is_some_and(|v| v >= STATELESS_VERSION);
    if let Err(reason) = check_standard_headers(req, &msg, standard_headers) {
        return Err(McpError::new(Kind::HeaderMismatch).detail(reason).with_id(id));
    }
    if msg.is("initialize") && meta_version.as_deref().is_some_and(|v| v >= STATELESS_VERSION) {
        // The handshake does not exist in the stateless revision.
        return Err(McpError::new(Kind::MethodNotFound)
            .detail("initialize is not a method of protocol revision 2026-07-28")
            .with_id(id));
    }
    let trace = trace_of(req);
    let session = session_id(req)?;

    if msg.is("initialize") && msg.kind == MessageKind::Request {
        if session.is_some() {
            return Err(McpError::new(Kind::InvalidRequest)
                .detail("initialize must not carry a session id")
                .with_id(id));
        }
        let requested = msg
            .value
            .get("params")
            .and_then(|p| p.get("protocolVersion"))
            .and_then(Value::as_str);
        if let (Some(h), Some(b)) = (header_version, requested)
            && h != b
        {
            return Err(McpError::new(Kind::InvalidRequest)
                .detail(format!(
                    "{HEADER_PROTOCOL_VERSION} header ({h}) does not match initialize params.protocolVersion ({b})"
                ))
                .with_id(id));
        }
        let session = new_session_id();
        st.metrics.sessions_opened.inc();
        let raw = msg.raw.to_vec();
        return relay_request(
            st,
            principal,
            session.clone(),
            |route| Body::Open {
                message: raw,
                route,
                legacy_sse: false,
            },
            id,
            &trace,
            None,
            vec![(HEADER_SESSION_ID, session)],
            vec![],
            false,
        )
        .await;
    }

    if let Some(session) = session {
        let raw = msg.raw.to_vec();
        return match msg.kind {
            MessageKind::Request => {
                relay_request(
                    st,
                    principal,
                    session,
                    |route| Body::Deliver { message: raw, route },
                    id,
                    &trace,
                    None,
                    vec![],
                    vec![],
                    primes(header_version),
                )
                .await
            }
            _ => {
                let env = Envelope::new(
                    principal,
                    session.clone(),
                    Body::Deliver {
                        message: raw,
                        route: Route::Nothing,
                    },
                );
                let ack = st
                    .relay
                    .send(subjects::actor(&session), &env, &trace)
                    .await
                    .map_err(relay_error)?;
                match ack_error(ack, None) {
                    Some(e) => Err(e),
                    None => Ok(HttpResponse::Accepted().finish()),
                }
            }
        };
    }

    // No session: the stateless revision, or a client that forgot its session.
    let stateless =
        msg.is("server/discover") || meta_version.is_some() || header_version.is_some_and(|v| v >= STATELESS_VERSION);
    if !stateless {
        return Err(McpError::new(Kind::SessionRequired).with_id(id));
    }
    if msg.kind != MessageKind::Request {
        // Nothing to do with a notification or response outside a session.
        return Ok(HttpResponse::Accepted().finish());
    }
    let meta_malformed;
    match (&meta_version, header_version) {
        (None, _) => {
            meta_malformed = true;
            if msg.is("server/discover") || header_version.is_some_and(|v| v >= STATELESS_VERSION) {
                return Err(McpError::new(Kind::InvalidParams)
                    .detail(format!(
                        "request _meta is missing or has malformed required fields: {META_PROTOCOL_VERSION}"
                    ))
                    .with_id(id));
            }
        }
        (Some(_), None) => {
            return Err(McpError::new(Kind::HeaderMismatch)
                .detail(format!(
                    "request _meta protocolVersion requires the {HEADER_PROTOCOL_VERSION} header"
                ))
                .with_id(id));
        }
        (Some(m), Some(h)) if m != h => {
            return Err(McpError::new(Kind::HeaderMismatch)
                .detail(format!(
                    "{HEADER_PROTOCOL_VERSION} header ({h}) does not match request _meta protocolVersion ({m})"
                ))
                .with_id(id));
        }
        _ => {
            meta_malformed = !msg
                .value
                .get("params")
                .and_then(|p| p.get("_meta"))
                .and_then(|m| m.get(META_CLIENT_CAPABILITIES))
                .is_some_and(Value::is_object);
        }
    }
    let raw = msg.raw.to_vec();
    let forwarded = param_headers(req);
    relay_request(
        st,
        principal,
        String::new(),
        |route| Body::Stateless { message: raw, route },
        id,
        &trace,
        Some(meta_malformed),
        vec![],
        forwarded,
        false,
    )
    .await
}

/// Whether a client on protocol `version` gets priming events (an id, no data) on
/// the SSE answers of its requests: from 2025-11-25 on, which expects them; an
/// older client may take an empty `data` for a malformed message.
fn primes(version: Option<&str>) -> bool {
    version.is_some_and(|v| v >= PRIMING_VERSION)
}

/// The first protocol revision whose clients expect priming events.
const PRIMING_VERSION: &str = "2025-11-25";

/// The `Mcp-Param-*` headers, for the worker to check against the tool schema.
fn param_headers(req: &HttpRequest) -> Vec<(String, String)> {
    req.headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("mcp-param-"))
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.trim().to_owned())))
        .collect()
}

/// Undo SEP-2243's `=?base64?…?=` wrapping; plain values are taken literally.
fn decode_header_value(value: &str) -> Option<String> {
    use base64::Engine as _;
    match value.strip_prefix("=?base64?").and_then(|v| v.strip_suffix("?=")) {
        Some(inner) => String::from_utf8(base64::engine::general_purpose::STANDARD.decode(inner).ok()?).ok(),
        None => Some(value.to_owned()),
    }
}

/// The single value of a header, trimmed; an error when it repeats or is not text.
fn single_header(req: &HttpRequest, name: &str) -> Result<Option<String>, String> {
    let mut values = req.headers().get_all(name);
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!("duplicate {name} header"));
    }
    first
        .to_str()
        .map(|v| Some(v.trim().to_owned()))
        .map_err(|_| format!("{name} header contains invalid characters"))
}

/// SEP-2243 `Mcp-Method` / `Mcp-Name`: when present they must match the body;
/// when `required` (2026-07-28) they must be present too.
fn check_standard_headers(req: &HttpRequest, msg: &Incoming, required: bool) -> Result<(), String> {
    let Some(method) = msg.method.as_deref() else {
        return Ok(());
    };
    match single_header(req, HEADER_METHOD)? {
        None if required && method != "initialize" => return Err(format!("missing required {HEADER_METHOD} header")),
        None => {}
        Some(v) if v != method => {
            return Err(format!(
                "{HEADER_METHOD} header `{v}` does not match body method `{method}`"
            ));
        }
        Some(_) => {}
    }
    if msg.kind != MessageKind::Request {
        return Ok(());
    }
    if let Some(expected) = msg.name() {
        match single_header(req, HEADER_NAME)? {
            None if required => return Err(format!("missing required {HEADER_NAME} header for `{method}`")),
            None => {}
            Some(raw) => {
                let decoded =
                    decode_header_value(&raw).ok_or_else(|| format!("{HEADER_NAME} header is not valid Base64"))?;
                if decoded != expected {
                    return Err(format!("{HEADER_NAME} header does not match the body"));
                }
            }
        }
    }
    Ok(())
}

/// Send a request to its actor (or the stateless queue) and answer with the
/// worker's messages: JSON when the first one is final, SSE otherwise (started
/// with a priming event when `prime`, see [`primes`]).
#[allow(clippy::too_many_arguments)]
async fn relay_request(
    st: &AppState,
    principal: Principal,
    key: String,
    body: impl FnOnce(Route) -> Body,
    id: Option<Value>,
    trace: &TraceParent,
    stateless: Option<bool>,
    mut headers: Vec<(&'static str, String)>,
    forwarded: Vec<(String, String)>,
    prime: bool,
) -> Result<HttpResponse, McpError> {
    let mut stream = st.relay.open_stream();
    let mut subject = if stateless.is_some() {
        subjects::STATELESS.to_owned()
    } else {
        subjects::actor(&key)
    };
    let mut env = Envelope {
        trace: Some(trace.header_value()),
        headers: forwarded,
        ..Envelope::new(
            principal,
            key,
            body(Route::Reply {
                subject: stream.subject.clone(),
            }),
        )
    };
    // Listen for deaths before sending, so one right after the acknowledgement counts.
    let mut deaths = st.relay.deaths();
    // A session's request whose worker died is sent again, flagged: the new owner
    // answers from the request's record, or runs it if its first run never finished
    // (see session_worker::records). Stateless requests are not retried.
    let retryable = matches!(env.body, Body::Deliver { .. });
    let mut retries = Retries::new(st.relay.retry_window());
    // A new streamable session whose `initialize` was not acknowledged (it may have
    // been lost while its shard changed owner) is opened again under a new id: the
    // same id could meet a session the first attempt did create, unanswered. Such a
    // session is never told to the client; it expires with the session TTL.
    let mut opens_left = if matches!(env.body, Body::Open { legacy_sse: false, .. }) {
        OPEN_AGAIN
    } else {
        0
    };
    let (mut ack, mut worker) = loop {
        match send_acked(st, &subject, &mut env, trace, &mut deaths, retryable, &mut retries).await {
            Err(RelayError::TimedOut(_)) if opens_left > 0 => {
                opens_left -= 1;
                let fresh = new_session_id();
                warn!(abandoned = %env.key, session_id = %fresh, "initialize not acknowledged: opening the session again under a new id");
                subject = subjects::actor(&fresh);
                for (name, value) in headers.iter_mut() {
                    if *name == HEADER_SESSION_ID {
                        value.clone_from(&fresh);
                    }
                }
                env.key = fresh;
            }
            sent => break sent.map_err(|e| relay_error(e).with_id(id.clone()))?,
        }
    };
    let deadline = tokio::time::Instant::now() + st.request_timeout;
    let first = loop {
        let next = match ack {
            // A quick answer comes with the acknowledgement.
            Ack::First(first) => Next::Message(first),
            other => {
                if let Some(e) = ack_error(other, id.clone()) {
                    return Err(e);
                }
                stream.next_from(worker.as_deref(), &mut deaths, deadline).await
            }
        };
        let why = match next {
            // The session's actor stopped before answering (its worker drains, lost
            // the shard, or could not commit the session record), the session lives on.
            Next::Message(first) if first.aborted && first.retry && retryable => {
                "the session's actor stopped before answering"
            }
            Next::Message(first) => break first,
            Next::Closed => return Err(McpError::new(Kind::Internal).with_id(id)),
            Next::TimedOut => return Err(McpError::new(Kind::WorkerTimeout).with_id(id)),
            Next::WorkerGone => "worker died before answering a request",
        };
        warn!(
            worker = worker.as_deref().unwrap_or(""),
            retries = retries.count,
            reason = why,
            "request not answered"
        );
        let again = retryable && retries.left();
        st.metrics
            .worker_gone
            .with_label_values(&[if again { "retried" } else { "failed" }])
            .inc();
        if !again {
            return Err(McpError::new(Kind::WorkerGone).with_id(id));
        }
        retries.pause().await;
        env.retry = true;
        (ack, worker) = send_acked(st, &subject, &mut env, trace, &mut deaths, retryable, &mut retries)
            .await
            .map_err(|e| relay_error(e).with_id(id.clone()))?;
    };
    if first.aborted {
        return Err(McpError::new(Kind::NoWorker)
            .detail("the session ended before answering")
            .with_id(id));
    }
    if first.last && !first.step_up.is_empty() {
        // A tool needs scopes the token lacks: the MCP authorization spec's step-up
        // challenge, so the client authorizes again for them.
        st.metrics
            .auth_failures
            .with_label_values(&["INSUFFICIENT_SCOPE"])
            .inc();
        return Ok(st
            .validator
            .reject_response(&crate::auth::AuthError::InsufficientScope(first.step_up)));
    }
    if first.last {
        let status = match stateless {
            Some(meta_malformed) => stateless_status(&first.message, meta_malformed),
            None => StatusCode::OK,
        };
        let mut resp = HttpResponse::build(status);
        for (name, value) in headers {
            resp.insert_header((name, value));
        }
        return Ok(resp.content_type("application/json").body(first.message));
    }
    // The messages of a session's answer stream carry event ids (the worker stored
    // them): the stream can be resumed with GET and `Last-Event-ID`.
    let priming = first
        .event
        .as_deref()
        .filter(|_| prime)
        .and_then(subjects::EventId::parse)
        .and_then(|e| match e {
            subjects::EventId::Request { after, stream } => Some(sse::priming_event(&subjects::request_event_id(
                after.saturating_sub(1),
                &stream,
            ))),
            subjects::EventId::Session(_) => None,
        });
    let frames = futures::stream::iter(priming).chain(reply_frames(first, stream, id, deadline, worker, deaths));
    Ok(sse::response(
        frames,
        st.keepalive,
        st.drain.clone(),
        StreamGuard::new(&st.metrics, "post"),
        None,
        headers,
        None,
    ))
}

/// Times a new session's unacknowledged `initialize` is sent again, under a new id.
const OPEN_AGAIN: u32 = 2;

/// A new streamable session's id.
fn new_session_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Most times a session's request is sent again.
const MAX_RETRIES: u32 = 20;
/// Pause before the first resend; it doubles up to [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE: Duration = Duration::from_millis(50);
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// What is left of a session's request's retries: at most [`MAX_RETRIES`] resends,
/// none after the retry window (from the first sending) closes, each after a
/// back-off, so a session whose store fails for a few seconds (a NATS stream
/// electing its leader) is waited for, not hammered.
#[derive(Debug)]
struct Retries {
    count: u32,
    until: tokio::time::Instant,
}

impl Retries {
    fn new(window: Duration) -> Self {
        Self {
            count: 0,
            until: tokio::time::Instant::now() + window,
        }
    }

    fn left(&self) -> bool {
        self.count < MAX_RETRIES && tokio::time::Instant::now() < self.until
    }

    /// Count one resend and wait its back-off.
    async fn pause(&mut self) {
        let pause = RETRY_PAUSE.saturating_mul(1 << self.count.min(10)).min(RETRY_PAUSE_MAX);
        self.count += 1;
        tokio::time::sleep(pause).await;
    }
}

/// Send `env` and wait for its acknowledgement. A session's request (`retryable`)
/// may have reached a worker that died before acknowledging it (it sat unread in
/// the worker's socket): then no acknowledgement names the worker, and no death can
/// be matched to it. So when any worker is declared dead while the request waits
/// for its acknowledgement, or none comes in time, it is sent again, flagged as a
/// retry (while [`Retries`] allow): the shard's owner answers it from its
/// record, joins the run in flight (same session, same id), or runs it once.
async fn send_acked(
    st: &AppState,
    subject: &str,
    env: &mut Envelope,
    trace: &TraceParent,
    deaths: &mut tokio::sync::broadcast::Receiver<String>,
    retryable: bool,
    retries: &mut Retries,
) -> Result<(Ack, Option<String>), RelayError> {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let outcome = {
            let send = st.relay.send_from(subject.to_owned(), env, trace);
            tokio::pin!(send);
            tokio::select! {
                biased;
                sent = &mut send => Some(sent),
                dead = deaths.recv(), if retryable && retries.left() => match dead {
                    Ok(_) | Err(RecvError::Lagged(_)) => None,
                    Err(RecvError::Closed) => Some((&mut send).await),
                },
            }
        };
        let why = match outcome {
            Some(Err(RelayError::TimedOut(_))) if retryable && retries.left() => "no acknowledgement in time",
            Some(sent) => return sent,
            None => "a worker died while the request waited for its acknowledgement",
        };
        warn!(
            retries = retries.count,
            reason = why,
            "sending a request again, flagged as a retry"
        );
        st.metrics.worker_gone.with_label_values(&["retried"]).inc();
        retries.pause().await;
        env.retry = true;
    }
}

/// The SSE frames of one request's answer, ending after its final message.
fn reply_frames(
    first: Outbound,
    stream: ReplyStream,
    id: Option<Value>,
    deadline: tokio::time::Instant,
    worker: Option<String>,
    deaths: tokio::sync::broadcast::Receiver<String>,
) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    let first_frame = sse::message_event(&first.message, first.event.as_deref());
    let rest = futures::stream::unfold(Some((stream, id, deaths)), move |state| {
        let worker = worker.clone();
        async move {
            let (mut stream, id, mut deaths) = state?;
            let end = |message: &str| {
                let err = jsonrpc_error(id.as_ref(), -32000, message);
                Some((sse::message_event(err.to_string().as_bytes(), None), None))
            };
            match stream.next_from(worker.as_deref(), &mut deaths, deadline).await {
                Next::Message(out) if out.aborted => end("the session ended before answering"),
                Next::Message(out) => {
                    let frame = sse::message_event(&out.message, out.event.as_deref());
                    let next = if out.last { None } else { Some((stream, id, deaths)) };
                    Some((frame, next))
                }
                Next::Closed => None,
                Next::TimedOut => end("request timed out"),
                Next::WorkerGone => {
                    end("the session worker serving this request stopped before answering; it may or may not have run")
                }
            }
        }
    });
    futures::stream::once(async move { first_frame }).chain(rest)
}

/// GET /mcp: the session's own stream of server→client messages.
pub async fn get(req: HttpRequest, st: web::Data<AppState>) -> HttpResponse {
    let span = request_span(&req, "/mcp");
    async move {
        let started = Instant::now();
        let answer = match get_inner(&req, &st).await {
            Ok(resp) => (resp, "stream"),
            Err(e) => err_answer(e, "stream"),
        };
        record(&st, "/mcp", started, answer)
    }
    .instrument(span)
    .await
}

async fn get_inner(req: &HttpRequest, st: &AppState) -> Result<HttpResponse, McpError> {
    let principal = match admit(req, st).await {
        Ok(p) => p,
        Err(resp) => return Ok(resp),
    };
    if !accepts(req, "text/event-stream") {
        return Err(McpError::new(Kind::NotAcceptable).detail("client must accept text/event-stream"));
    }
    let Some(session) = session_id(req)? else {
        if header(req, HEADER_PROTOCOL_VERSION).is_some_and(|v| v >= STATELESS_VERSION) {
            return Err(McpError::new(Kind::MethodNotAllowed).allow("POST"));
        }
        return Err(McpError::new(Kind::SessionRequired));
    };
    let resume = last_event_id(req)?
        .map(|id| {
            subjects::EventId::parse(&id).ok_or_else(|| {
                McpError::new(Kind::InvalidRequest).detail("Last-Event-ID is not an event id of this server")
            })
        })
        .transpose()?;
    let after = match resume {
        None => None,
        Some(subjects::EventId::Session(after)) => Some(after),
        Some(subjects::EventId::Request { after, stream }) => {
            return resume_answer(req, st, principal, &session, after, stream).await;
        }
    };
    let slot = admit_stream(st)?;
    let trace = trace_of(req);
    // Follow first so nothing published after the check is missed.
    let feed = st.relay.event_feed(&session, None, after).await.map_err(relay_error)?;
    let auth = st.validator.stream_auth(header(req, "authorization"), &principal);
    attach(st, principal, &session, &trace).await?;
    // A new stream starts with a priming event (an id, no data: SSE's cursor for
    // a reconnect, as the 2025-11-25 transport describes); a resumed one with what
    // the client missed.
    let priming = after.is_none().then(|| sse::priming_event(&feed.floor.to_string()));
    Ok(sse::response(
        futures::StreamExt::chain(
            futures::stream::iter(priming),
            event_frames(feed, st.sse_buffer, FrameIds::Session(String::new())),
        ),
        st.keepalive,
        st.drain.clone(),
        StreamGuard::new(&st.metrics, "get").holding(slot),
        None,
        vec![],
        Some(auth),
    ))
}

/// Check that `session` exists and is the caller's (its actor answers), before a
/// stream of it is opened.
async fn attach(st: &AppState, principal: Principal, session: &str, trace: &TraceParent) -> Result<(), McpError> {
    let env = Envelope::new(principal, session.to_owned(), Body::Attach);
    let ack = st
        .relay
        .send(subjects::actor(session), &env, trace)
        .await
        .map_err(relay_error)?;
    match ack_error(ack, None) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// GET /mcp with the `Last-Event-ID` of a request's SSE answer (the POST's stream
/// broke: the client or its gateway went away): the answer's messages after it,
/// read back from the event stream, then the rest live, until the final one. The
/// request is not run again; it went on while the client was away. Nothing of
/// another stream is replayed. A stream whose end does not come (its request was
/// lost with its worker and its gateway) closes after `GATEWAY_REQUEST_TIMEOUT`.
async fn resume_answer(
    req: &HttpRequest,
    st: &AppState,
    principal: Principal,
    session: &str,
    after: u64,
    stream: String,
) -> Result<HttpResponse, McpError> {
    let trace = trace_of(req);
    let feed = st
        .relay
        .event_feed(session, Some(&stream), Some(after))
        .await
        .map_err(relay_error)?;
    let auth = st.validator.stream_auth(header(req, "authorization"), &principal);
    attach(st, principal, session, &trace).await?;
    info!(session_id = %session, "answer stream resumed");
    let until = tokio::time::sleep(st.request_timeout);
    Ok(sse::response(
        event_frames(feed, st.sse_buffer, FrameIds::Answer(stream)).take_until(until),
        st.keepalive,
        st.drain.clone(),
        StreamGuard::new(&st.metrics, "post"),
        None,
        vec![],
        Some(auth),
    ))
}

/// How [`event_frames`] names its events.
pub enum FrameIds {
    /// A session's stream: `<prefix><sequence>` (legacy `/sse`: `<session>:`).
    Session(String),
    /// A request's answer stream ([`subjects::request_event_id`]); it ends after
    /// the answer's final message.
    Answer(String),
}

/// The JSON-RPC id of the request whose answer stream is `stream` (see
/// [`subjects::request_stream`]).
fn answer_id(stream: &str) -> Option<Value> {
    let json = match stream.strip_prefix('x') {
        Some(hex) if hex.len() % 2 == 0 => {
            let bytes: Option<Vec<u8>> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect();
            String::from_utf8(bytes?).ok()?
        }
        _ => stream.to_owned(),
    };
    serde_json::from_str::<Value>(&json)
        .ok()
        .filter(|v| v.is_string() || v.is_number())
}

/// The `Last-Event-ID` a reconnecting SSE client sends, if any.
pub fn last_event_id(req: &HttpRequest) -> Result<Option<String>, McpError> {
    match header(req, "last-event-id") {
        None | Some("") => Ok(None),
        Some(v) if v.len() > 256 => Err(McpError::new(Kind::InvalidRequest).detail("Last-Event-ID is too long")),
        Some(v) => Ok(Some(v.to_owned())),
    }
}

/// Frames of a session's events, each with its id (`id_prefix` + its sequence in
/// the event stream): the stored ones the client missed, then the live ones,
/// until the session ends.
pub fn event_frames(
    feed: crate::relay::EventFeed,
    budget: usize,
    ids: FrameIds,
) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    let crate::relay::EventFeed { live, replay, floor } = feed;
    // Each stored message becomes at most two items: its frame, and `None` when the
    // stream ends after it (a session closed, an answer complete).
    let frame = move |seq: u64, payload: &[u8]| -> Vec<Option<Bytes>> {
        match (Outbound::from_bytes(payload), &ids) {
            (Ok(out), FrameIds::Session(_)) if out.aborted => vec![None],
            (Ok(out), FrameIds::Session(prefix)) => {
                vec![Some(sse::message_event(&out.message, Some(&format!("{prefix}{seq}"))))]
            }
            (Ok(out), FrameIds::Answer(stream)) if out.aborted => {
                // Ended without an answer (its session or its actor stopped).
                let err = jsonrpc_error(
                    answer_id(stream).as_ref(),
                    -32000,
                    "the session worker serving this request stopped before answering; it may or may not have run",
                );
                vec![Some(sse::message_event(err.to_string().as_bytes(), None)), None]
            }
            (Ok(out), FrameIds::Answer(stream)) => {
                let id = subjects::request_event_id(seq, stream);
                let frame = Some(sse::message_event(&out.message, Some(&id)));
                if out.last { vec![frame, None] } else { vec![frame] }
            }
            (Err(err), _) => {
                warn!(error = %err, "undecodable session event");
                vec![]
            }
        }
    };
    let replayed: Vec<Option<Bytes>> = replay.iter().flat_map(|(seq, payload)| frame(*seq, payload)).collect();
    let live = futures::StreamExt::flat_map(live, move |msg| {
        let seq = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(subjects::EVENT_SEQUENCE_HEADER))
            .and_then(|v| v.as_str().parse::<u64>().ok());
        let items = match seq {
            Some(seq) if seq > floor => frame(seq, &msg.payload),
            // Read back already, or older than the stream.
            Some(_) => vec![],
            None => {
                warn!("session event without its sequence");
                vec![]
            }
        };
        futures::stream::iter(items)
    });
    bounded_frames(futures::StreamExt::chain(futures::stream::iter(replayed), live), budget)
}

/// A session's events, pulled from `source` (a NATS subscription) by a task of their
/// own so the subscription never backs up, and held for the HTTP response up to
/// `budget` bytes (`GATEWAY_SSE_BUFFER_BYTES`). A client that stops reading makes
/// the queue grow; past the budget the task ends (the subscription is dropped) and the
/// stream ends after what it holds, so a slow reader costs at most the budget; its
/// connection is then closed by the kernel (`GATEWAY_SLOW_READER_TIMEOUT`). One event
/// larger than the budget still passes when nothing else is queued. A `None` item
/// ends the stream (the session was closed). The task also ends as soon as the
/// response is dropped (the client went away).
pub fn bounded_frames(
    source: impl futures::Stream<Item = Option<Bytes>> + Send + 'static,
    budget: usize,
) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    // A queue of its own rather than a channel: nothing is allocated while the
    // stream is idle (most streams are), which keeps an idle stream small.
    let queue = Arc::new(FrameQueue::default());
    let pump = queue.clone();
    tokio::spawn(async move {
        let mut source = std::pin::pin!(source);
        loop {
            let item = tokio::select! {
                () = pump.reader_gone.notified() => None,
                item = futures::StreamExt::next(&mut source) => item.flatten(),
            };
            let Some(frame) = item else { break };
            if !pump.push(frame, budget) {
                warn!(budget, "SSE client is not reading: stream ended");
                break;
            }
        }
        pump.finish();
    });
    futures::stream::unfold(QueueReader(queue), |reader| async move {
        let frame = reader.0.pop().await?;
        Some((frame, reader))
    })
}

/// Frames between a stream's pump task and its HTTP response.
#[derive(Default)]
struct FrameQueue {
    /// Frames and their total size.
    state: std::sync::Mutex<(std::collections::VecDeque<Bytes>, usize, bool)>,
    /// The pump pushed a frame or ended.
    ready: tokio::sync::Notify,
    /// The response was dropped.
    reader_gone: tokio::sync::Notify,
}

impl FrameQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, (std::collections::VecDeque<Bytes>, usize, bool)> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queue a frame unless the queue already holds something and would pass the
    /// budget (then `false`: the reader is too slow).
    fn push(&self, frame: Bytes, budget: usize) -> bool {
        {
            let mut state = self.lock();
            if state.1 > 0 && state.1 + frame.len() > budget {
                return false;
            }
            state.1 += frame.len();
            state.0.push_back(frame);
        }
        self.ready.notify_one();
        true
    }

    /// No more frames will come.
    fn finish(&self) {
        self.lock().2 = true;
        self.ready.notify_one();
    }

    /// The next frame; `None` once the pump ended and the queue is empty.
    async fn pop(&self) -> Option<Bytes> {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.lock();
                if let Some(frame) = state.0.pop_front() {
                    state.1 -= frame.len();
                    return Some(frame);
                }
                if state.2 {
                    return None;
                }
            }
            notified.await;
        }
    }
}

/// The response side of a [`FrameQueue`]; dropping it stops the pump.
struct QueueReader(Arc<FrameQueue>);

impl Drop for QueueReader {
    fn drop(&mut self) {
        self.0.reader_gone.notify_one();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod bounded_tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn refusals_never_echo_an_invalid_id() {
        // Found by the jsonrpc_intake fuzz target: an object or array id came back.
        for body in [
            r#"{"jsonrpc":"1.0","id":{"x":1},"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":[1],"method":7}"#,
            r#"{"jsonrpc":"2.0","id":true}"#,
        ] {
            let e = Incoming::parse(Bytes::from(body)).err().unwrap();
            assert_eq!(e.id, None, "{body}");
        }
        let e = Incoming::parse(Bytes::from(r#"{"jsonrpc":"1.0","id":7,"method":"ping"}"#))
            .err()
            .unwrap();
        assert_eq!(e.id, Some(Value::from(7)), "a valid id is named");
    }

    #[tokio::test]
    async fn a_reader_keeping_up_gets_everything_in_order() {
        let items: Vec<Option<Bytes>> = (0..100).map(|i| Some(Bytes::from(format!("{i:03}")))).collect();
        let got: Vec<Bytes> = bounded_frames(futures::stream::iter(items), 4096).collect().await;
        assert_eq!(got.len(), 100);
        assert_eq!(got[42], Bytes::from("042"));
    }

    #[tokio::test]
    async fn a_reader_that_stops_costs_at_most_the_budget_and_the_stream_ends() {
        // An endless source of 1 KiB events; nobody reads until the pump gave up.
        let pulled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let p = pulled.clone();
        let source = futures::stream::repeat_with(move || {
            p.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(Bytes::from(vec![b'x'; 1024]))
        })
        .then(|x| async move {
            tokio::task::yield_now().await;
            x
        });
        let stream = bounded_frames(source, 16 * 1024);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let n = pulled.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            n <= 17,
            "the pump kept pulling ({n} events) for a reader that does not read"
        );
        let got: Vec<Bytes> = stream.collect().await;
        assert!(got.len() <= 16, "held {} events over a 16 KiB budget", got.len());
    }

    #[tokio::test]
    async fn one_oversized_event_passes_when_nothing_is_queued_and_none_ends_it() {
        let items = vec![Some(Bytes::from(vec![b'x'; 4096])), None, Some(Bytes::from("after"))];
        let got: Vec<Bytes> = bounded_frames(futures::stream::iter(items), 1024).collect().await;
        assert_eq!(got.len(), 1);
    }
}

/// DELETE /mcp: end the session.
pub async fn delete(req: HttpRequest, st: web::Data<AppState>) -> HttpResponse {
    let span = request_span(&req, "/mcp");
    async move {
        let started = Instant::now();
        let answer = match delete_inner(&req, &st).await {
            Ok(resp) => (resp, "delete"),
            Err(e) => err_answer(e, "delete"),
        };
        record(&st, "/mcp", started, answer)
    }
    .instrument(span)
    .await
}

async fn delete_inner(req: &HttpRequest, st: &AppState) -> Result<HttpResponse, McpError> {
    let principal = match admit(req, st).await {
        Ok(p) => p,
        Err(resp) => return Ok(resp),
    };
    let Some(session) = session_id(req)? else {
        return Err(McpError::new(Kind::SessionRequired));
    };
    let env = Envelope::new(principal, session.clone(), Body::Close);
    let ack = st
        .relay
        .send(subjects::actor(&session), &env, &trace_of(req))
        .await
        .map_err(relay_error)?;
    match ack_error(ack, None) {
        Some(e) => Err(e),
        None => Ok(HttpResponse::Ok().finish()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Result<Incoming, McpError> {
        Incoming::parse(Bytes::from(s.to_owned()))
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_and_stop_when_their_window_closes() {
        let started = tokio::time::Instant::now();
        let mut retries = Retries::new(Duration::from_secs(3));
        let mut pauses = Vec::new();
        while retries.left() {
            let before = tokio::time::Instant::now();
            retries.pause().await;
            pauses.push(before.elapsed().as_millis());
        }
        // 50, 100, 200, 400, 800 ms, then 1 s each until 3 s have passed.
        assert_eq!(pauses, vec![50, 100, 200, 400, 800, 1000, 1000]);
        assert!(started.elapsed() >= Duration::from_secs(3));
        // However long the window, no more than MAX_RETRIES resends.
        let mut retries = Retries::new(Duration::from_secs(3600));
        while retries.left() {
            retries.pause().await;
        }
        assert_eq!(retries.count, MAX_RETRIES);
        assert!(!Retries::new(Duration::ZERO).left());
    }

    #[test]
    fn a_worker_whose_store_is_unavailable_is_a_retryable_503_not_a_bad_request() {
        // e.g. a JetStream stream electing a new leader after a NATS node was lost
        let ack = Ack::Rejected {
            code: proto::mcp::INTERNAL_ERROR,
            message: "session store unavailable, retry".into(),
        };
        let err = ack_error(ack, Some(serde_json::json!(1))).expect("an error");
        assert_eq!(err.kind, Kind::NoWorker);
        let bad = Ack::Rejected {
            code: proto::mcp::INVALID_REQUEST,
            message: "a session starts with an initialize request".into(),
        };
        assert_eq!(ack_error(bad, None).map(|e| e.kind), Some(Kind::InvalidRequest));
    }

    #[test]
    fn an_answer_stream_names_its_request() {
        for id in [json!(7), json!("call-1"), json!("a.b c"), json!(-3)] {
            let stream = subjects::request_stream(&id.to_string());
            assert_eq!(answer_id(&stream), Some(id));
        }
        assert_eq!(answer_id("xzz"), None);
        assert_eq!(answer_id("x7b7d"), None, "an object is no request id");
    }

    #[test]
    fn priming_events_go_to_clients_that_expect_them() {
        assert!(primes(Some("2025-11-25")));
        assert!(!primes(Some("2025-06-18")));
        assert!(!primes(None));
    }

    #[test]
    fn classifies_messages() {
        let r = parse(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).expect("request");
        assert_eq!(r.kind, MessageKind::Request);
        let n = parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).expect("notification");
        assert_eq!(n.kind, MessageKind::Notification);
        let resp = parse(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#).expect("response");
        assert_eq!(resp.kind, MessageKind::Response);
    }

    #[test]
    fn refuses_bad_messages_with_clear_kinds() {
        assert_eq!(parse("{").err().map(|e| e.kind), Some(Kind::ParseError));
        assert_eq!(parse("[]").err().map(|e| e.kind), Some(Kind::BatchNotSupported));
        assert_eq!(parse("3").err().map(|e| e.kind), Some(Kind::InvalidRequest));
        assert_eq!(
            parse(r#"{"id":1,"method":"x"}"#).err().map(|e| e.kind),
            Some(Kind::InvalidRequest)
        );
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#)
                .err()
                .map(|e| e.kind),
            Some(Kind::InvalidRequest)
        );
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","id":1}"#).err().map(|e| e.kind),
            Some(Kind::InvalidRequest)
        );
    }

    #[test]
    fn names_for_routing_headers() {
        let r = parse(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}"#).expect("ok");
        assert_eq!(r.name(), Some("add"));
        let r = parse(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"x://y"}}"#).expect("ok");
        assert_eq!(r.name(), Some("x://y"));
    }

    #[test]
    fn stateless_status_mapping() {
        let e = |code: i64| format!(r#"{{"jsonrpc":"2.0","id":1,"error":{{"code":{code},"message":"m"}}}}"#);
        assert_eq!(stateless_status(e(-32601).as_bytes(), false), StatusCode::NOT_FOUND);
        assert_eq!(stateless_status(e(-32022).as_bytes(), false), StatusCode::BAD_REQUEST);
        assert_eq!(stateless_status(e(-32602).as_bytes(), true), StatusCode::BAD_REQUEST);
        assert_eq!(stateless_status(e(-32602).as_bytes(), false), StatusCode::OK);
        assert_eq!(
            stateless_status(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#, false),
            StatusCode::OK
        );
    }
}
