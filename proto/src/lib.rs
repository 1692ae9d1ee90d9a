//! The wire contract of mcp-cluster.
//!
//! Everything that crosses NATS between the gateway, the session workers and the
//! auth-service is defined here: the versioned [`Envelope`] and its bodies, the
//! subject names ([`subjects`]), the [`shard`] function that maps an actor key to
//! a shard, the principal that travels with every message, W3C trace context
//! headers, and the rmp-serde [`codec`].
//!
//! This crate must never do I/O, spawn tasks or depend on actix/tokio: it is a
//! set of types and pure functions that both sides agree on.
#![forbid(unsafe_code)]

pub mod auth;
pub mod codec;
pub mod envelope;
pub mod mcp;
pub mod nats;
pub mod principal;
pub mod shard;
pub mod subjects;
pub mod trace;

pub use codec::{DecodeError, EncodeError, decode, encode};
pub use envelope::*;
pub use principal::{Principal, SubjectKind};
pub use shard::{SHARD_COUNT, shard};
