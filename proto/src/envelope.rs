//! Envelopes: what the gateway sends to workers and what comes back.
//!
//! Every envelope starts with `v`; [`decode_envelope`] reads that first, so a
//! worker meeting a newer envelope answers "unsupported version" instead of a
//! confusing decode error. JSON-RPC payloads travel as the raw JSON bytes the
//! client sent (or the worker produced): they are parsed once, at the receiving
//! end, by rmcp's model types.

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, EncodeError, decode, encode};
use crate::principal::Principal;

/// Version of [`Envelope`] this build writes and reads.
pub const ENVELOPE_VERSION: u16 = 1;

/// A request from the gateway to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u16,
    /// W3C `traceparent` of the sender's span (also in NATS headers).
    #[serde(default)]
    pub trace: Option<String>,
    pub principal: Principal,
    /// The actor key: a session id, `user:<sub>`, or empty for stateless requests.
    pub key: String,
    pub body: Body,
    /// HTTP headers the handler needs to see (lower-case names): the SEP-2243
    /// `mcp-param-*` headers, checked against the tool's input schema.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The gateway sends this envelope again because the worker that took it was
    /// declared dead before answering: answer from the request's record if it has
    /// one (see `session_worker::records`).
    #[serde(default)]
    pub retry: bool,
}

/// Where the worker sends the server→client messages that answer a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Route {
    /// Nothing comes back (the message was a notification or a response).
    Nothing,
    /// A gateway's open HTTP response, subject from [`crate::subjects::reply`].
    Reply { subject: String },
    /// The session's own stream (legacy HTTP+SSE puts every answer there).
    SessionEvents,
}

/// What the gateway asks of an actor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// Create a session from this `initialize` request.
    Open {
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
        route: Route,
        /// `true` for sessions of the legacy HTTP+SSE transport.
        legacy_sse: bool,
    },
    /// Hand a client JSON-RPC message to an existing session.
    Deliver {
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
        route: Route,
    },
    /// Check the session exists and belongs to the caller (GET stream, SSE attach).
    Attach,
    /// Reserve a legacy HTTP+SSE session id the gateway just minted for `GET /sse`:
    /// the worker creates a [`SessionRecord`] bound to the caller with no
    /// `initialize` yet. Only a reserved id of the same caller can then be opened
    /// with [`Body::Open`] `legacy_sse: true`.
    Reserve,
    /// End the session (HTTP DELETE).
    Close,
    /// End a legacy HTTP+SSE session whose stream ended at `since_ms` (Unix
    /// milliseconds), unless a stream was attached to it again since (resumed).
    Release { since_ms: u64 },
    /// Serve one request of the stateless (2026-07-28) revision, no session.
    Stateless {
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
        route: Route,
    },
    /// Apply an operation to a user's state, in the actor `user:<sub>` (key from
    /// [`crate::subjects::user_key`]); sent by a worker running a tool that keeps
    /// per-user state. Answered with [`Ack::Answer`] (the tool's answer, JSON), or
    /// [`Ack::Rejected`]: [`USER_REFUSED`] when the tool refused the operation.
    /// `op_id` names the operation: sent again, it is answered from its record.
    User {
        tool: String,
        /// The operation, JSON.
        #[serde(with = "serde_bytes")]
        op: Vec<u8>,
        op_id: String,
    },
}

/// [`Ack::Rejected`] code of a user-state operation the tool refused.
pub const USER_REFUSED: i64 = -32602;

/// A worker's immediate answer to an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ack {
    /// Taken; answers follow on the route.
    Accepted,
    /// Taken, and here is the first answer (often the only one): the rest, if
    /// any, follow on the route. Saves a NATS message per quick request.
    First(Outbound),
    /// No such session, or it belongs to someone else (the gateway answers 404).
    NotFound,
    /// The message was refused before reaching the MCP handler.
    Rejected { code: i64, message: String },
    /// The answer of a [`Body::User`] operation, JSON.
    Answer(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// One server→client message on a [`Route::Reply`] or session events subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbound {
    pub v: u16,
    /// Position in its stream, from 1.
    pub seq: u64,
    /// JSON-RPC message, serialized JSON.
    #[serde(with = "serde_bytes")]
    pub message: Vec<u8>,
    /// `true` on the final message of a request (its response or error).
    pub last: bool,
    /// The stream is closed without an answer (session ended, worker draining).
    #[serde(default)]
    pub aborted: bool,
    /// With `aborted`: the session lives on, only its actor stopped (its worker
    /// drains, lost the shard, or could not commit the session record). A request
    /// sent again, flagged as a retry, is answered by the session's next actor,
    /// from the request's record when it ran.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
    /// On a final [`crate::mcp::INSUFFICIENT_SCOPE`] error: the scopes to ask for,
    /// so the gateway can answer the HTTP 403 step-up challenge without parsing the
    /// message. Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_up: Vec<String>,
    /// The SSE event id of a message of a request's answer stream, once it is
    /// stored in the event stream ([`crate::subjects::request_event_id`]): a
    /// client that loses the stream resumes it with this `Last-Event-ID`. `None`
    /// for an answer sent as plain JSON (and while the store is unavailable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

/// What a worker stores about a session so that another worker can take it over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub v: u16,
    /// [`Principal::binding`] of the creator (issuer, subject, client).
    pub owner: String,
    pub principal: Principal,
    /// The `initialize` request, replayed to rmcp on rehydration. Empty while a
    /// legacy session is only reserved ([`Body::Reserve`]).
    #[serde(with = "serde_bytes")]
    pub initialize: Vec<u8>,
    pub protocol_version: String,
    pub legacy_sse: bool,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// The handler's state for this session (log level, resource subscriptions,
    /// tools' state: `tools::SessionState::snapshot`, JSON); empty when new.
    #[serde(default, with = "serde_bytes")]
    pub state: Vec<u8>,
    /// The answers of the latest calls that changed `state`, saved with it: a call
    /// retried after a failover is answered from here.
    #[serde(default)]
    pub answers: Vec<SavedAnswer>,
}

/// A request's final answer, kept in its session's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedAnswer {
    /// The request id, as JSON.
    pub id: String,
    #[serde(with = "serde_bytes")]
    pub message: Vec<u8>,
}

impl SessionRecord {
    /// Whether `principal` may use the session: the same issuer, subject and client
    /// as its creator. (Records written before the binding included the client name
    /// the owner by [`Principal::identity`]; the stored principal's client decides.)
    pub fn owned_by(&self, principal: &Principal) -> bool {
        self.owner == principal.binding()
            || (self.owner == principal.identity() && self.principal.client_id == principal.client_id)
    }

    /// Reserved for a legacy session that has not sent `initialize` yet.
    pub fn is_reserved(&self) -> bool {
        self.initialize.is_empty()
    }
}

#[derive(Deserialize)]
struct VersionProbe {
    v: u16,
}

fn check_version(what: &'static str, bytes: &[u8]) -> Result<(), DecodeError> {
    let probe: VersionProbe = decode(what, bytes)?;
    if probe.v != ENVELOPE_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            what,
            found: probe.v,
            supported: ENVELOPE_VERSION,
        });
    }
    Ok(())
}

impl Envelope {
    pub fn new(principal: Principal, key: impl Into<String>, body: Body) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            trace: None,
            principal,
            key: key.into(),
            body,
            headers: Vec::new(),
            retry: false,
        }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        encode("envelope", self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_version("envelope", bytes)?;
        decode("envelope", bytes)
    }
}

impl Ack {
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        encode("ack", self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode("ack", bytes)
    }
}

impl Outbound {
    pub fn new(seq: u64, message: Vec<u8>, last: bool) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            seq,
            message,
            last,
            aborted: false,
            retry: false,
            step_up: Vec::new(),
            event: None,
        }
    }

    /// With the scopes of a step-up challenge (see [`Outbound::step_up`]).
    pub fn with_step_up(mut self, scopes: Vec<String>) -> Self {
        self.step_up = scopes;
        self
    }

    pub fn aborted(seq: u64) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            seq,
            message: Vec::new(),
            last: true,
            aborted: true,
            retry: false,
            step_up: Vec::new(),
            event: None,
        }
    }

    /// Closed without an answer by an actor that stopped while its session lives
    /// on: the request may be sent again (see [`Outbound::retry`]).
    pub fn stopped(seq: u64) -> Self {
        Self {
            retry: true,
            ..Self::aborted(seq)
        }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        encode("outbound", self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_version("outbound", bytes)?;
        decode("outbound", bytes)
    }
}

impl SessionRecord {
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        encode("session record", self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_version("session record", bytes)?;
        decode("session record", bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal {
            iss: "https://issuer.example".into(),
            sub: "alice".into(),
            email: Some("alice@example.com".into()),
            scopes: vec!["mcp".into()],
            permissions: vec!["image_generation".into()],
            ..Default::default()
        }
    }

    #[test]
    fn envelope_round_trips_every_body() {
        let bodies = [
            Body::Open {
                message: br#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#.to_vec(),
                route: Route::Reply {
                    subject: "mcp.reply.gw.1".into(),
                },
                legacy_sse: false,
            },
            Body::Deliver {
                message: b"{}".to_vec(),
                route: Route::SessionEvents,
            },
            Body::Attach,
            Body::Close,
            Body::Stateless {
                message: b"{}".to_vec(),
                route: Route::Nothing,
            },
            Body::User {
                tool: "notes".into(),
                op: br#"{"add":"x"}"#.to_vec(),
                op_id: "op-1".into(),
            },
        ];
        for body in bodies {
            let mut env = Envelope::new(principal(), "sess-1", body);
            env.trace = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
            env.headers = vec![("mcp-param-region".into(), "eu".into())];
            let bytes = env.to_bytes().expect("encode");
            assert_eq!(Envelope::from_bytes(&bytes).expect("decode"), env);
        }
    }

    #[test]
    fn payload_is_binary_not_an_array_of_ints() {
        let message = vec![b'x'; 1000];
        let env = Envelope::new(
            principal(),
            "k",
            Body::Deliver {
                message,
                route: Route::Nothing,
            },
        );
        let bytes = env.to_bytes().expect("encode");
        assert!(bytes.len() < 1400, "{} bytes", bytes.len());
    }

    #[test]
    fn acks_and_outbound_round_trip() {
        for ack in [
            Ack::Accepted,
            Ack::First(Outbound::new(1, b"{}".to_vec(), true)),
            Ack::NotFound,
            Ack::Rejected {
                code: -32600,
                message: "no".into(),
            },
            Ack::Answer(br#"{"notes":[]}"#.to_vec()),
        ] {
            let bytes = ack.to_bytes().expect("encode");
            assert_eq!(Ack::from_bytes(&bytes).expect("decode"), ack);
        }
        for out in [
            Outbound::new(3, b"{}".to_vec(), true),
            Outbound::aborted(4),
            Outbound::stopped(5),
        ] {
            let bytes = out.to_bytes().expect("encode");
            assert_eq!(Outbound::from_bytes(&bytes).expect("decode"), out);
        }
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = Envelope::from_bytes(b"\xc1not msgpack").expect_err("must fail");
        assert!(err.to_string().starts_with("malformed envelope"), "{err}");
    }

    #[test]
    fn newer_version_is_refused_by_name() {
        let mut env = Envelope::new(principal(), "k", Body::Attach);
        env.v = 9;
        let bytes = encode("envelope", &env).expect("encode");
        let err = Envelope::from_bytes(&bytes).expect_err("must fail");
        assert_eq!(err.to_string(), "unsupported envelope version 9 (this build speaks 1)");
    }

    #[test]
    fn session_record_round_trips() {
        let rec = SessionRecord {
            state: Vec::new(),
            answers: Vec::new(),
            v: ENVELOPE_VERSION,
            owner: principal().identity(),
            principal: principal(),
            initialize: b"{}".to_vec(),
            protocol_version: "2025-11-25".into(),
            legacy_sse: false,
            created_at: 1,
        };
        let bytes = rec.to_bytes().expect("encode");
        assert_eq!(SessionRecord::from_bytes(&bytes).expect("decode"), rec);
    }
}
