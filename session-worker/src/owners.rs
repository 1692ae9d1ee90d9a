//! Live sessions per principal, across every worker: the `mcp_principal_sessions`
//! KV bucket holds one entry per session, `<principal>.<session>` (the principal as
//! the hex SHA-256 of its binding: issuer, subject, client). Opening a session writes
//! its entry with `create` (no contention between opens, however many run at once),
//! then counts the principal's entries written before it (by revision, the order of
//! the bucket's stream); over `WORKER_MAX_SESSIONS_PER_PRINCIPAL` the entry is
//! withdrawn and the open refused ([`proto::mcp::SESSION_LIMIT`], the gateway
//! answers 429). Entries of sessions whose record is gone (expired, lost) are pruned
//! when a principal is at its limit, so the count is of sessions that still exist;
//! closing a session deletes its entry. A limit of 0 turns the count off (no entry is
//! written).
//!
//! Counting only earlier entries makes a burst admit its first `max` opens in
//! order. An open refused a moment ago may still be counted by a later one (its entry
//! is being withdrawn): the limit is never exceeded, at worst a retry is needed.

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tracing::warn;

use proto::subjects;

/// Longest the count of one principal's sessions may take.
pub const COUNT_TIMEOUT: Duration = Duration::from_secs(2);
/// An entry younger than this is never pruned: its session record may not be
/// written yet (the entry comes first).
pub const PRUNE_MIN_AGE: Duration = Duration::from_secs(30);

/// Why a session cannot be counted.
#[derive(Debug, PartialEq, Eq)]
pub enum AdmitError {
    /// The principal already holds the maximum.
    Full(usize),
    /// The store did not answer.
    Unavailable,
}

/// The key prefix of a principal: hex SHA-256 of its binding (bindings hold
/// characters KV keys cannot).
fn principal_key(binding: &str) -> String {
    let digest = Sha256::digest(binding.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn entry_key(binding: &str, session: &str) -> String {
    format!("{}.{}", principal_key(binding), subjects::token(session))
}

/// Count `session` for `binding`, unless that would make more than `max` sessions
/// that still exist. `max == 0`: no limit, nothing written.
pub async fn admit(
    owners: &kv::Store,
    sessions: &kv::Store,
    binding: &str,
    session: &str,
    max: usize,
) -> Result<(), AdmitError> {
    if max == 0 {
        return Ok(());
    }
    let mine = entry_key(binding, session);
    let my_revision = match owners.create(&mine, bytes::Bytes::new()).await {
        Ok(revision) => revision,
        // Counted already (a retried open): count every entry.
        Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => u64::MAX,
        Err(err) => {
            warn!(error = %err, "principal session index unwritable");
            return Err(AdmitError::Unavailable);
        }
    };
    let withdraw = || async {
        if let Err(err) = owners.purge(&mine).await {
            warn!(error = %err, "cannot withdraw a refused session from the principal index");
        }
    };
    let entries = match list(owners, binding).await {
        Ok(mut entries) => {
            entries.retain(|(_, _, revision)| *revision <= my_revision);
            entries
        }
        Err(e) => {
            withdraw().await;
            return Err(e);
        }
    };
    if entries.len() <= max {
        return Ok(());
    }
    // Over the limit: drop the entries of sessions that no longer exist, count again.
    let mut live = 0usize;
    for (key, created, _) in &entries {
        let Some(id) = key.split_once('.').map(|(_, token)| token) else {
            continue;
        };
        let old = created.elapsed().is_ok_and(|age| age >= PRUNE_MIN_AGE);
        if *key != mine && old && matches!(sessions.get(id).await, Ok(None)) {
            let _ = owners.purge(key).await;
            continue;
        }
        live += 1;
    }
    if live <= max {
        return Ok(());
    }
    withdraw().await;
    Err(AdmitError::Full(max))
}

/// Keys of `binding`'s entries with when each was written and its revision.
async fn list(owners: &kv::Store, binding: &str) -> Result<Vec<(String, std::time::SystemTime, u64)>, AdmitError> {
    let count = async {
        let mut watch = owners
            .watch_with_history(format!("{}.*", principal_key(binding)))
            .await
            .map_err(|e| {
                warn!(error = %e, "principal session index unreadable");
                AdmitError::Unavailable
            })?;
        let mut out = Vec::new();
        // The history holds at least the caller's own entry; the last one has delta 0.
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(|e| {
                warn!(error = %e, "principal session index unreadable");
                AdmitError::Unavailable
            })?;
            if entry.operation == kv::Operation::Put {
                out.push((
                    entry.key.clone(),
                    std::time::SystemTime::from(entry.created),
                    entry.revision,
                ));
            }
            if entry.delta == 0 {
                break;
            }
        }
        Ok(out)
    };
    tokio::time::timeout(COUNT_TIMEOUT, count).await.map_err(|_| {
        warn!("principal session count timed out");
        AdmitError::Unavailable
    })?
}

/// Stop counting `session` for `binding` (it was closed, or never opened). Best
/// effort: a missed removal is pruned later.
pub async fn release(owners: &kv::Store, binding: &str, session: &str) {
    if let Err(err) = owners.purge(entry_key(binding, session)).await {
        warn!(error = %err, "cannot remove a closed session from the principal index");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kv_safe_and_distinct() {
        let a = principal_key("https://issuer#alice#app");
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, principal_key("https://issuer#alice#other"));
        let e = entry_key("https://issuer#alice#app", "0123abcd");
        assert_eq!(e, format!("{a}.0123abcd"));
    }
}
