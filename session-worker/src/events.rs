//! The session event stream: every server→client message of a session that
//! belongs to no request (the GET /mcp and legacy `/sse` streams) is published on
//! `mcp.events.<session>` and kept by the JetStream stream
//! [`subjects::EVENTS_STREAM`] for `WORKER_EVENTS_MAX_AGE`, at most
//! `WORKER_EVENTS_MAX_PER_SESSION` per session and `WORKER_EVENTS_MAX_BYTES` in
//! all. The stream republishes each stored event on `mcp.live.<session>` with its
//! sequence, which gateways send as the SSE event id; a client that lost its
//! stream resumes on any gateway with `Last-Event-ID` and gets exactly the
//! events after it (the gateway reads them back from the stream).
//!
//! The SSE answer of a POST (messages before a request's result) is kept the same
//! way, one subject per request: `mcp.events.<session>.<request>`
//! ([`subjects::request_events`]), stored by the session's publisher before each
//! message goes to the gateway with its event id, so that answer resumes with
//! `Last-Event-ID` too.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use proto::subjects;

/// The event stream's limits.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_per_session: i64,
    pub max_bytes: i64,
    /// Servers of a JetStream cluster holding the stream.
    pub replicas: usize,
}

pub fn config(retention: Retention) -> stream::Config {
    stream::Config {
        name: subjects::EVENTS_STREAM.to_owned(),
        subjects: vec![format!("{}.>", subjects::EVENTS_PREFIX)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: retention.max_age,
        max_messages_per_subject: retention.max_per_session,
        max_bytes: retention.max_bytes,
        allow_direct: true,
        num_replicas: retention.replicas,
        republish: Some(stream::Republish {
            source: format!("{}.>", subjects::EVENTS_PREFIX),
            destination: format!("{}.>", subjects::LIVE_PREFIX),
            headers_only: false,
        }),
        ..Default::default()
    }
}

/// Create the event stream, or bring an existing one to these limits.
pub async fn ensure(js: &jetstream::Context, retention: Retention) -> anyhow::Result<()> {
    js.create_or_update_stream(config(retention))
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the event stream {}: {e}", subjects::EVENTS_STREAM))?;
    Ok(())
}
