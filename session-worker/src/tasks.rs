//! The task store of the cluster: [`tools::tasks::TaskStore`] over the JetStream
//! KV bucket [`proto::subjects::TASK_BUCKET`] (records, compare-and-set by
//! revision) and core NATS subjects [`proto::subjects::task_signal`] (the "record
//! changed" signal to the worker running the task). Any worker answers
//! `tasks/get`, `tasks/update` and `tasks/cancel` from the bucket; only the runner
//! listens on the signal subject.

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio::sync::mpsc;
use tools::tasks::{StoreError, StoreFuture, TaskRecord, TaskStore};

/// How long records stay in the bucket after their last write, beyond the tasks'
/// own TTL (which the runtime enforces on read).
pub const BUCKET_SLACK: Duration = Duration::from_secs(600);

pub struct KvTaskStore {
    kv: kv::Store,
    nats: async_nats::Client,
    max_record_bytes: usize,
}

impl KvTaskStore {
    pub fn new(kv: kv::Store, nats: async_nats::Client, max_record_bytes: usize) -> Self {
        Self {
            kv,
            nats,
            max_record_bytes,
        }
    }

    fn encode(&self, record: &TaskRecord) -> Result<bytes::Bytes, StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        if bytes.len() > self.max_record_bytes {
            return Err(StoreError::TooLarge(bytes.len()));
        }
        Ok(bytes.into())
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl TaskStore for KvTaskStore {
    fn create<'a>(&'a self, record: &'a TaskRecord) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let bytes = self.encode(record)?;
            self.kv.create(&record.id, bytes).await.map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => StoreError::Exists,
                _ => unavailable(e),
            })
        })
    }

    fn load<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<(TaskRecord, u64)>> {
        Box::pin(async move {
            let Some(entry) = self.kv.entry(id).await.map_err(unavailable)? else {
                return Ok(None);
            };
            if entry.operation != kv::Operation::Put {
                return Ok(None);
            }
            match serde_json::from_slice::<TaskRecord>(&entry.value) {
                Ok(record) => Ok(Some((record, entry.revision))),
                Err(e) => {
                    tracing::warn!(task = id, error = %e, "unreadable task record");
                    Ok(None)
                }
            }
        })
    }

    fn replace<'a>(&'a self, record: &'a TaskRecord, revision: u64) -> StoreFuture<'a, Option<u64>> {
        Box::pin(async move {
            let bytes = self.encode(record)?;
            match self.kv.update(&record.id, bytes, revision).await {
                Ok(rev) => Ok(Some(rev)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(unavailable(e)),
            }
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.kv.purge(id).await.map_err(unavailable) })
    }

    fn signal<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.nats
                .publish(proto::subjects::task_signal(id), bytes::Bytes::new())
                .await
                .map_err(unavailable)
        })
    }

    fn signals<'a>(&'a self, id: &'a str) -> StoreFuture<'a, mpsc::Receiver<()>> {
        Box::pin(async move {
            let mut sub = self
                .nats
                .subscribe(proto::subjects::task_signal(id))
                .await
                .map_err(unavailable)?;
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        msg = sub.next() => match msg {
                            Some(_) => { let _ = tx.try_send(()); }
                            None => break,
                        },
                        _ = tx.closed() => break,
                    }
                }
                let _ = sub.unsubscribe().await;
            });
            Ok(rx)
        })
    }
}
