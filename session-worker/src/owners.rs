//! Live sessions per principal, across every worker: the `mcp_principal_sessions`
//! KV bucket holds, per principal binding (issuer, subject, client), the ids of the
//! sessions it opened. Opening one more than `WORKER_MAX_SESSIONS_PER_PRINCIPAL` is
//! refused ([`proto::mcp::SESSION_LIMIT`], the gateway answers 429). Ids whose
//! session record is gone (closed, expired) are pruned when the list is full, so the
//! count is of sessions that still exist. Updates are compare-and-swap.

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::warn;

use proto::subjects;

/// The index entry of one principal.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Owned {
    sessions: Vec<String>,
}

/// Why a session cannot be counted.
#[derive(Debug, PartialEq, Eq)]
pub enum AdmitError {
    /// The principal already holds the maximum.
    Full(usize),
    /// The store did not answer or kept changing.
    Unavailable,
}

/// The key of a principal's entry: hex SHA-256 of its binding (bindings hold
/// characters KV keys cannot).
fn key(binding: &str) -> String {
    let digest = Sha256::digest(binding.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Count `session` for `binding`, unless it holds `max` sessions that still exist.
pub async fn admit(
    owners: &kv::Store,
    sessions: &kv::Store,
    binding: &str,
    session: &str,
    max: usize,
) -> Result<(), AdmitError> {
    let key = key(binding);
    for _ in 0..5 {
        let entry = owners.entry(key.clone()).await.map_err(|e| {
            warn!(error = %e, "principal session index unreadable");
            AdmitError::Unavailable
        })?;
        let (mut owned, revision) = match entry {
            Some(e) if e.operation == kv::Operation::Put => (
                serde_json::from_slice::<Owned>(&e.value).unwrap_or_default(),
                Some(e.revision),
            ),
            Some(e) => (Owned::default(), Some(e.revision)),
            None => (Owned::default(), None),
        };
        if owned.sessions.len() >= max {
            let mut live = Vec::with_capacity(owned.sessions.len());
            for id in owned.sessions.drain(..) {
                match sessions.get(subjects::token(&id)).await {
                    Ok(Some(_)) => live.push(id),
                    Ok(None) => {}
                    // Unknown: keep counting it.
                    Err(_) => live.push(id),
                }
            }
            owned.sessions = live;
            if owned.sessions.len() >= max {
                return Err(AdmitError::Full(max));
            }
        }
        owned.sessions.push(session.to_owned());
        let bytes = serde_json::to_vec(&owned).map_err(|_| AdmitError::Unavailable)?;
        let written = match revision {
            Some(rev) => owners.update(&key, bytes.into(), rev).await.is_ok(),
            None => owners.create(&key, bytes.into()).await.is_ok(),
        };
        if written {
            return Ok(());
        }
    }
    Err(AdmitError::Unavailable)
}

/// Stop counting `session` for `binding` (it was closed). Best effort: a missed
/// removal is pruned later.
pub async fn release(owners: &kv::Store, binding: &str, session: &str) {
    let key = key(binding);
    for _ in 0..5 {
        let Ok(Some(entry)) = owners.entry(key.clone()).await else {
            return;
        };
        if entry.operation != kv::Operation::Put {
            return;
        }
        let mut owned = serde_json::from_slice::<Owned>(&entry.value).unwrap_or_default();
        let before = owned.sessions.len();
        owned.sessions.retain(|s| s != session);
        if owned.sessions.len() == before {
            return;
        }
        let Ok(bytes) = serde_json::to_vec(&owned) else { return };
        if owners.update(&key, bytes.into(), entry.revision).await.is_ok() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kv_safe_and_distinct() {
        let a = key("https://issuer#alice#app");
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, key("https://issuer#alice#other"));
    }
}
