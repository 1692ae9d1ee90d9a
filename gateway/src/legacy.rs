//! The legacy HTTP+SSE transport (protocol 2024-11-05), as older clients and
//! the seeds use it: `GET /sse` opens the stream and names the endpoint
//! `/messages?sessionId=…`; every answer, response or not, comes back on that
//! stream. Events carry ids (`<session>:<sequence>`): a client whose stream broke
//! reconnects with `Last-Event-ID` and gets what it missed. A session whose stream
//! ended and was not resumed within `GATEWAY_LEGACY_RESUME_GRACE` is closed.

use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, web};
use proto::{Body, Envelope, Route, subjects};
use serde::Deserialize;
use tracing::{Instrument, info};

use crate::errors::{Kind, McpError};
use crate::mcp::{
    AppState, FrameIds, Incoming, MessageKind, ack_error, admit, admit_load, admit_stream, begin_request,
    check_content_type, event_frames, header, last_event_id, read_body_within, record, relay_error, request_span,
    trace_of,
};
use crate::metrics::{StreamGuard, method_label};
use crate::sse;

/// GET /sse
pub async fn open(req: HttpRequest, st: web::Data<AppState>) -> HttpResponse {
    let span = request_span(&req, "/sse");
    async move {
        let started = Instant::now();
        let resp = match open_inner(&req, &st).await {
            Ok(r) => r,
            Err(e) => actix_web::ResponseError::error_response(&e),
        };
        record(&st, "/sse", started, (resp, "stream"))
    }
    .instrument(span)
    .await
}

async fn open_inner(req: &HttpRequest, st: &web::Data<AppState>) -> Result<HttpResponse, McpError> {
    let principal = match admit(req, st).await {
        Ok(p) => p,
        Err(resp) => return Ok(resp),
    };
    let slot = admit_stream(st)?;
    let trace = trace_of(req);
    // A reconnecting client (an EventSource does it by itself) names the session and
    // the last event it got: `<session>:<sequence>`. Its session goes on, on any
    // gateway, with the events it missed.
    let resume = match last_event_id(req)? {
        None => None,
        Some(id) => Some(
            id.rsplit_once(':')
                .and_then(|(session, seq)| Some((session.to_owned(), seq.parse::<u64>().ok()?)))
                .filter(|(session, _)| !session.is_empty() && session.len() <= 128)
                .ok_or_else(|| {
                    McpError::new(Kind::InvalidRequest).detail("Last-Event-ID is not an event id of this server")
                })?,
        ),
    };
    let (session, after) = match &resume {
        Some((session, seq)) => (session.clone(), Some(*seq)),
        None => (uuid::Uuid::new_v4().simple().to_string(), None),
    };
    let feed = st.relay.event_feed(&session, None, after).await.map_err(relay_error)?;
    // A new id: the worker records it as this caller's before the client learns it,
    // so only an id minted here, by its owner, can be opened on /messages. A resumed
    // one: it must exist and be the caller's.
    let body = if resume.is_some() { Body::Attach } else { Body::Reserve };
    let env = Envelope::new(principal.clone(), session.clone(), body);
    let ack = st
        .relay
        .send(subjects::actor(&session), &env, &trace)
        .await
        .map_err(relay_error)?;
    if let Some(e) = ack_error(ack, None) {
        return Err(e);
    }
    let auth = st.validator.stream_auth(header(req, "authorization"), &principal);
    // The endpoint event carries the stream's cursor so far.
    let cursor = format!("{session}:{}", after.unwrap_or(feed.floor));
    let endpoint = sse::named_event("endpoint", &format!("/messages?sessionId={session}"), Some(&cursor));
    let frames = futures::StreamExt::chain(
        futures::stream::once(async move { endpoint }),
        event_frames(feed, st.sse_buffer, FrameIds::Session(format!("{session}:"))),
    );
    // When the stream ends the session waits for the client to resume it; then it
    // is closed unless a stream was attached to it again meanwhile.
    let relay = st.relay.clone();
    let closing = session.clone();
    let grace = st.legacy_resume_grace;
    let on_close: Box<dyn FnOnce() + Send> = Box::new(move || {
        let since_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let env = Envelope::new(principal, closing.clone(), Body::Release { since_ms });
            let _ = relay.send(subjects::actor(&closing), &env, &trace).await;
        });
    });
    info!(session_id = %session, "legacy SSE stream opened");
    Ok(sse::response(
        frames,
        st.keepalive,
        st.drain.clone(),
        StreamGuard::new(&st.metrics, "legacy").holding(slot),
        Some(on_close),
        vec![],
        Some(auth),
    ))
}

#[derive(Deserialize)]
pub struct MessagesQuery {
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
}

/// POST /messages?sessionId=…
pub async fn message(
    req: HttpRequest,
    query: web::Query<MessagesQuery>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> HttpResponse {
    let span = request_span(&req, "/messages");
    async move {
        let started = Instant::now();
        let answer = match message_inner(&req, query.into_inner(), payload, &st).await {
            Ok(r) => r,
            Err(e) => (actix_web::ResponseError::error_response(&e), "unknown"),
        };
        record(&st, "/messages", started, answer)
    }
    .instrument(span)
    .await
}

async fn message_inner(
    req: &HttpRequest,
    query: MessagesQuery,
    payload: web::Payload,
    st: &AppState,
) -> Result<(HttpResponse, &'static str), McpError> {
    let _admitted = admit_load(st)?;
    let principal = match admit(req, st).await {
        Ok(p) => p,
        Err(resp) => return Ok((resp, "unknown")),
    };
    let _inflight = begin_request(st, &principal)?;
    let Some(session) = query.session_id.filter(|s| !s.is_empty() && s.len() <= 128) else {
        return Err(McpError::new(Kind::InvalidRequest).detail("sessionId query parameter is required"));
    };
    check_content_type(req)?;
    let raw = read_body_within(req, payload, st.max_body, st.body_timeout).await?;
    let msg = Incoming::parse(raw)?;
    let label = method_label(msg.method.as_deref());
    let route = if msg.kind == MessageKind::Request {
        Route::SessionEvents
    } else {
        Route::Nothing
    };
    let message = msg.raw.to_vec();
    let body = if msg.kind == MessageKind::Request && msg.method.as_deref() == Some("initialize") {
        st.metrics.sessions_opened.inc();
        Body::Open {
            message,
            route,
            legacy_sse: true,
        }
    } else {
        Body::Deliver { message, route }
    };
    let env = Envelope::new(principal, session.clone(), body);
    let ack = st
        .relay
        .send(subjects::actor(&session), &env, &trace_of(req))
        .await
        .map_err(|e| relay_error(e).with_id(msg.id.clone()))?;
    match ack_error(ack, msg.id) {
        None => Ok((HttpResponse::Accepted().body("Accepted"), label)),
        Some(e) => Err(e),
    }
}
