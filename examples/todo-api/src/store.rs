//! Todos in the JetStream KV bucket [`BUCKET`]: one JSON value per todo under the key
//! `<owner>.<todo id>`, so one user's todos are the subjects `$KV.todo_items.<owner>.>`.
//!
//! - Listing reads the latest value of each of the owner's subjects through a short-lived
//!   pull consumer filtered on that prefix (no other user's data is read).
//! - Creating checks the per-user cap first. Two concurrent creates may both pass the
//!   check: the cap guards against runaway use, it is not an exact quota.
//! - Updating is a compare-and-swap on the entry's revision, retried a few times.
//! - Deleting purges the key's subject, so nothing of a deleted todo is left behind
//!   (nothing watches this bucket, so no delete marker is needed).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::Owner;

/// The KV bucket holding every user's todos.
pub const BUCKET: &str = "todo_items";
/// Largest stored todo, in bytes (a 500-character title is at most 2000 bytes).
pub const MAX_VALUE_BYTES: i32 = 8 * 1024;
/// Messages fetched per round trip when listing.
pub const LIST_BATCH: usize = 256;
/// Tries of a compare-and-swap update before giving up with [`StoreError::Conflict`].
pub const UPDATE_ATTEMPTS: usize = 3;
/// Longest wait for the next message of a listing fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// An abandoned listing consumer is removed by the server after this long.
const LIST_CONSUMER_INACTIVE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Todo {
    pub id: Uuid,
    pub title: String,
    pub completed: bool,
    /// RFC 3339 UTC with milliseconds (`2025-01-31T12:00:00.000Z`): sorts as it reads.
    pub created_at: String,
    pub updated_at: String,
}

/// A change to a todo; `None` leaves the field as it is.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    pub title: Option<String>,
    pub completed: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a user may keep at most {0} todos")]
    TooMany(usize),
    #[error("the todo was changed concurrently, try again")]
    Conflict,
    #[error("kv {op} failed: {reason}")]
    Unavailable { op: &'static str, reason: String },
    #[error("a stored todo is not valid: {0}")]
    Corrupt(String),
}

fn unavailable(op: &'static str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        op,
        reason: err.to_string(),
    }
}

/// The todo store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    kv: kv::Store,
    max_per_user: usize,
}

impl Store {
    /// Open the bucket, creating it or applying `max_bytes` to it.
    pub async fn open(js: &jetstream::Context, max_bytes: i64, max_per_user: usize) -> Result<Self, StoreError> {
        let kv = js
            .create_or_update_key_value(kv::Config {
                bucket: BUCKET.to_owned(),
                description: "todo-api: one todo per key <owner>.<id>".to_owned(),
                history: 1,
                max_bytes,
                max_value_size: MAX_VALUE_BYTES,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("open", e))?;
        Ok(Self { kv, max_per_user })
    }

    fn key(owner: &Owner, id: Uuid) -> String {
        format!("{}.{}", owner.as_str(), id.hyphenated())
    }

    /// The owner's todos, oldest first.
    pub async fn list(&self, owner: &Owner) -> Result<Vec<Todo>, StoreError> {
        let consumer: consumer::PullConsumer = self
            .kv
            .stream
            .create_consumer(consumer::pull::Config {
                filter_subject: format!("{}{}.>", self.kv.prefix, owner.as_str()),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: LIST_CONSUMER_INACTIVE,
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("list", e))?;
        let result = self.read_all(&consumer).await;
        let name = consumer.cached_info().name.clone();
        if let Err(err) = self.kv.stream.delete_consumer(&name).await {
            tracing::debug!(error = %err, "listing consumer not deleted (the server will)");
        }
        let mut todos = result?;
        todos.sort_by(|a, b| (&a.created_at, a.id).cmp(&(&b.created_at, b.id)));
        Ok(todos)
    }

    async fn read_all(&self, consumer: &consumer::PullConsumer) -> Result<Vec<Todo>, StoreError> {
        let mut todos = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(todos);
        }
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(LIST_BATCH)
                .messages()
                .await
                .map_err(|e| unavailable("list", e))?;
            let mut remaining = None;
            // Each request of the store is bounded by async-nats's request timeout;
            // the messages of a fetch are bounded here.
            while let Some(message) = tokio::time::timeout(FETCH_TIMEOUT, batch.next())
                .await
                .map_err(|_| unavailable("list", "timed out"))?
            {
                let message = message.map_err(|e| unavailable("list", e))?;
                remaining = Some(message.info().map_err(|e| unavailable("list", e))?.pending);
                // A delete or purge marker, should anyone else have written one.
                if message
                    .headers
                    .as_ref()
                    .is_some_and(|h| h.get("KV-Operation").is_some())
                {
                    continue;
                }
                todos.push(decode(&message.payload)?);
            }
            // Done when the consumer says nothing is left, or the batch came back empty.
            if remaining.is_none_or(|n| n == 0) {
                return Ok(todos);
            }
        }
    }

    /// A new todo for `owner`; `title` is already validated.
    pub async fn create(&self, owner: &Owner, title: String) -> Result<Todo, StoreError> {
        if self.list(owner).await?.len() >= self.max_per_user {
            return Err(StoreError::TooMany(self.max_per_user));
        }
        let now = now_rfc3339();
        let todo = Todo {
            id: Uuid::new_v4(),
            title,
            completed: false,
            created_at: now.clone(),
            updated_at: now,
        };
        self.kv
            .create(Self::key(owner, todo.id), encode(&todo)?.into())
            .await
            .map_err(|e| unavailable("create", e))?;
        Ok(todo)
    }

    /// Apply `patch` to the owner's todo `id`; `None` when the owner has no such todo.
    pub async fn update(&self, owner: &Owner, id: Uuid, patch: &Patch) -> Result<Option<Todo>, StoreError> {
        let key = Self::key(owner, id);
        for _ in 0..UPDATE_ATTEMPTS {
            let entry = self.kv.entry(&key).await.map_err(|e| unavailable("get", e))?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                return Ok(None);
            };
            let mut todo = decode(&entry.value)?;
            if let Some(title) = &patch.title {
                todo.title.clone_from(title);
            }
            if let Some(completed) = patch.completed {
                todo.completed = completed;
            }
            todo.updated_at = now_rfc3339();
            match self.kv.update(&key, encode(&todo)?.into(), entry.revision).await {
                Ok(_) => return Ok(Some(todo)),
                Err(e) if matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision) => continue,
                Err(e) => return Err(unavailable("update", e)),
            }
        }
        Err(StoreError::Conflict)
    }

    /// Remove the owner's todo `id`; `false` when the owner has no such todo.
    pub async fn delete(&self, owner: &Owner, id: Uuid) -> Result<bool, StoreError> {
        let subject = format!("{}{}", self.kv.prefix, Self::key(owner, id));
        let purged = self
            .kv
            .stream
            .purge()
            .filter(subject)
            .await
            .map_err(|e| unavailable("delete", e))?;
        Ok(purged.purged > 0)
    }
}

fn encode(todo: &Todo) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(todo).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode(value: &[u8]) -> Result<Todo, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn now_rfc3339() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    rfc3339_millis(ms)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the epoch (as JavaScript's
/// `toISOString`). Days to a civil date by H. Hinnant's `civil_from_days`.
fn rfc3339_millis(ms: u64) -> String {
    let secs = ms / 1000;
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_to_iso_string() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_millis(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_millis(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }
}
