//! NATS subject names.
//!
//! | subject | who publishes | who listens |
//! |---|---|---|
//! | `mcp.shard.<n>.<key>` | gateway (request) | the worker owning shard `n` |
//! | `mcp.stateless` | gateway (request) | any worker, queue group [`STATELESS_QUEUE`] |
//! | `mcp.events.<session>` | worker | the JetStream stream [`EVENTS_STREAM`], which stores it |
//! | `mcp.live.<session>` | JetStream (republished from `mcp.events.<session>`, with its sequence) | gateways holding that session's GET or legacy SSE stream |
//! | `mcp.events.<session>.<request>` | worker: the messages of a request answered as an SSE stream | the JetStream stream [`EVENTS_STREAM`] |
//! | `mcp.live.<session>.<request>` | JetStream (republished, with its sequence) | a gateway resuming that request's stream (GET with its `Last-Event-ID`) |
//! | `mcp.reply.<gateway>.<stream>` | worker | the gateway that opened that HTTP response |
//! | `mcp.broadcast.list_changed` | worker | every worker (listen streams) |
//!
//! Keys and ids are reduced to subject-safe tokens with [`token`].

use crate::shard::shard;

pub const SHARD_PREFIX: &str = "mcp.shard";
pub const STATELESS: &str = "mcp.stateless";
pub const STATELESS_QUEUE: &str = "mcp-workers";
pub const EVENTS_PREFIX: &str = "mcp.events";
pub const LIVE_PREFIX: &str = "mcp.live";
/// JetStream stream keeping every session's server→client events (`mcp.events.>`)
/// for a while, so a stream that broke resumes from its `Last-Event-ID` on any
/// gateway. It republishes each stored event on `mcp.live.<session>` with the
/// header [`EVENT_SEQUENCE_HEADER`]: that sequence is the event's SSE id.
pub const EVENTS_STREAM: &str = "MCP_EVENTS";
/// Header of a republished event: its sequence in [`EVENTS_STREAM`].
pub const EVENT_SEQUENCE_HEADER: &str = "Nats-Sequence";
pub const REPLY_PREFIX: &str = "mcp.reply";
/// Cluster-wide "a list changed" notices (`tools` / `prompts`), for the
/// `subscriptions/listen` streams every worker holds.
pub const LIST_CHANGED: &str = "mcp.broadcast.list_changed";

/// JetStream KV bucket holding shard leases (`shard.<n>` → worker id).
pub const LEASE_BUCKET: &str = "mcp_shard_leases";
/// JetStream KV bucket holding live workers (`<worker id>` → heartbeat).
pub const WORKER_BUCKET: &str = "mcp_workers";
/// JetStream KV bucket holding session records (`<session id>` → SessionRecord).
pub const SESSION_BUCKET: &str = "mcp_sessions";
/// JetStream KV bucket of the live session ids of each principal (for the cap).
pub const PRINCIPAL_SESSIONS_BUCKET: &str = "mcp_principal_sessions";
/// NATS header on a worker's acknowledgement: the worker's key in
/// [`WORKER_BUCKET`] (`token(worker id)`), so a gateway can tell when the worker
/// serving its request is declared dead (the key is deleted).
pub const WORKER_HEADER: &str = "Mcp-Worker";

/// JetStream KV bucket of request records (`<session>.<request id>` → the final
/// JSON-RPC answer), for retries after a worker died.
pub const RESPONSE_BUCKET: &str = "mcp_responses";
/// JetStream KV bucket of MCP tasks (`<task id>` → `tools::tasks::TaskRecord`, JSON).
pub const TASK_BUCKET: &str = "mcp_tasks";
/// "The record of task `<id>` changed" (`mcp.task.<id>`), for the worker running it.
pub const TASK_SIGNAL_PREFIX: &str = "mcp.task";

/// The signal subject of a task.
pub fn task_signal(id: &str) -> String {
    format!("{TASK_SIGNAL_PREFIX}.{}", token(id))
}

/// A subject-safe token for an arbitrary key: kept as is when it only uses
/// `[A-Za-z0-9_-]`, hex-encoded with an `x` prefix otherwise.
pub fn token(key: &str) -> String {
    let safe = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if safe {
        key.to_owned()
    } else {
        let mut out = String::with_capacity(1 + key.len() * 2);
        out.push('x');
        for b in key.as_bytes() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

/// JetStream KV bucket of per-user state (`token(user:<sub>)` → the user's record).
pub const USER_BUCKET: &str = "mcp_users";

/// The actor key of user `sub`'s state.
pub fn user_key(sub: &str) -> String {
    format!("user:{sub}")
}

/// The subject a request for actor `key` is sent to.
pub fn actor(key: &str) -> String {
    format!("{SHARD_PREFIX}.{}.{}", shard(key), token(key))
}

/// What the owner of shard `n` subscribes to.
pub fn shard_filter(n: u16) -> String {
    format!("{SHARD_PREFIX}.{n}.>")
}

/// Server→client messages of a session that belong to no request.
pub fn events(session: &str) -> String {
    format!("{EVENTS_PREFIX}.{}", token(session))
}

/// Where gateways follow a session's events live, once stored (see [`EVENTS_STREAM`]).
pub fn live(session: &str) -> String {
    format!("{LIVE_PREFIX}.{}", token(session))
}

/// The stream token of a request's answer stream: its JSON-RPC id (in JSON, as
/// `serde_json` writes it) made subject-safe. A request id is unique within a
/// session, so this names one stream of the session.
pub fn request_stream(id_json: &str) -> String {
    token(id_json)
}

/// Where the messages of request `stream`'s SSE answer are stored (see
/// [`request_stream`]).
pub fn request_events(session: &str, stream: &str) -> String {
    format!("{EVENTS_PREFIX}.{}.{stream}", token(session))
}

/// Where a gateway follows request `stream`'s stored messages live.
pub fn request_live(session: &str, stream: &str) -> String {
    format!("{LIVE_PREFIX}.{}.{stream}", token(session))
}

/// The SSE id of a message of a request's answer stream: `<sequence>.<stream>`,
/// its sequence in [`EVENTS_STREAM`] and the stream it belongs to. A session's
/// own stream (GET /mcp) uses the bare sequence: both are unique in the session
/// (sequences are), and a `Last-Event-ID` tells which stream to resume.
pub fn request_event_id(seq: u64, stream: &str) -> String {
    format!("{seq}.{stream}")
}

/// Which stream of a session a streamable-HTTP event id (`Last-Event-ID`) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventId {
    /// The session's own stream (GET /mcp), after this sequence.
    Session(u64),
    /// A request's answer stream (see [`request_stream`]), after this sequence.
    Request { after: u64, stream: String },
}

impl EventId {
    /// `None` for anything this server did not issue.
    pub fn parse(id: &str) -> Option<Self> {
        let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        match id.split_once('.') {
            None => digits(id).then(|| id.parse().ok().map(Self::Session)).flatten(),
            Some((seq, stream)) => {
                let token = !stream.is_empty()
                    && stream.len() <= 256
                    && stream
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !digits(seq) || !token {
                    return None;
                }
                Some(Self::Request {
                    after: seq.parse().ok()?,
                    stream: stream.to_owned(),
                })
            }
        }
    }
}

/// Where a gateway receives the messages of one of its open HTTP responses.
pub fn reply(gateway: &str, stream: u64) -> String {
    format!("{REPLY_PREFIX}.{}.{stream}", token(gateway))
}

/// What a gateway subscribes to for all its open HTTP responses.
pub fn reply_filter(gateway: &str) -> String {
    format!("{REPLY_PREFIX}.{}.*", token(gateway))
}

/// The KV key of shard `n`'s lease.
pub fn lease_key(n: u16) -> String {
    format!("shard.{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_subject_safe() {
        assert_eq!(token("0b9c-11_ab"), "0b9c-11_ab");
        assert_eq!(token("user:a.b"), "x757365723a612e62");
        assert_eq!(token(""), "x");
        for key in ["a.b", "a*b", "a>b", "a b", "ü"] {
            let t = token(key);
            assert!(!t.contains(['.', '*', '>', ' ']), "{t}");
        }
    }

    #[test]
    fn event_ids_name_their_stream() {
        let stream = request_stream("\"call-1\"");
        let id = request_event_id(42, &stream);
        assert_eq!(
            EventId::parse(&id),
            Some(EventId::Request {
                after: 42,
                stream: stream.clone()
            })
        );
        assert_eq!(EventId::parse("17"), Some(EventId::Session(17)));
        assert_eq!(request_stream("7"), "7");
        assert_eq!(request_events("s1", "7"), "mcp.events.s1.7");
        assert_eq!(request_live("s1", "7"), "mcp.live.s1.7");
        for bad in [
            "",
            "-1",
            "x",
            "1.",
            ".7",
            "1.a.b",
            "1.a b",
            "a.7",
            "1e3",
            "99999999999999999999999",
        ] {
            assert_eq!(EventId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn actor_subject_uses_shard() {
        let s = actor("abc");
        assert_eq!(s, format!("mcp.shard.{}.abc", shard("abc")));
    }
}
