//! rmp-serde codec for everything in this crate.
//!
//! Messages are encoded as MessagePack *maps* (`rmp_serde::to_vec_named`), not
//! arrays: field names cost a few bytes but let an old reader skip fields a newer
//! writer added, which is what the `v` field in every envelope relies on.

use serde::{Serialize, de::DeserializeOwned};

/// A value could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {what}: {source}")]
pub struct EncodeError {
    what: &'static str,
    #[source]
    source: rmp_serde::encode::Error,
}

/// Bytes received from NATS could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed {what} ({len} bytes): {source}")]
    Malformed {
        what: &'static str,
        len: usize,
        #[source]
        source: rmp_serde::decode::Error,
    },
    #[error("unsupported {what} version {found} (this build speaks {supported})")]
    UnsupportedVersion {
        what: &'static str,
        found: u16,
        supported: u16,
    },
}

/// Encode a value as a MessagePack map.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, EncodeError> {
    rmp_serde::to_vec_named(value).map_err(|source| EncodeError { what, source })
}

/// Decode a MessagePack value.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(bytes).map_err(|source| DecodeError::Malformed {
        what,
        len: bytes.len(),
        source,
    })
}
