//! The cluster's task store (`session_worker::tasks::KvTaskStore`) against a real
//! nats-server: compare-and-set by revision, records over the size bound refused,
//! signals reaching a listener, and two runtimes on one bucket (one runs the
//! task, the other answers `tasks/get` and `tasks/cancel`, as two workers do).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use rmcp::model::{CallToolResult, ContentBlock, TaskStatus};
use session_worker::tasks::KvTaskStore;
use testkit::NatsServer;
use tools::tasks::{StoreError, TaskRecord, TaskSettings, TaskStore, Tasks};

async fn store(nats: &NatsServer, max_record_bytes: usize) -> KvTaskStore {
    let client = async_nats::connect(nats.url.as_str()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let kv = session_worker::leases::bucket(
        &js,
        proto::subjects::TASK_BUCKET,
        Duration::from_secs(600),
        jetstream::stream::StorageType::File,
        16 * 1024 * 1024,
        1,
    )
    .await
    .expect("bucket");
    KvTaskStore::new(kv, client, max_record_bytes)
}

fn record(id: &str) -> TaskRecord {
    serde_json::from_value(serde_json::json!({
        "id": id, "owner": "iss alice", "status": "working",
        "created_at": "2026-12-05T00:00:00Z", "updated_at": "2026-12-05T00:00:00Z",
        "created_ms": 1, "alive_ms": 1, "ttl_ms": 60000, "poll_ms": 100
    }))
    .expect("record")
}

#[tokio::test]
async fn records_change_only_at_their_revision() {
    let nats = NatsServer::start().expect("nats-server");
    let store = store(&nats, 4096).await;
    let rev = store.create(&record("t1")).await.unwrap();
    assert_eq!(store.create(&record("t1")).await.unwrap_err(), StoreError::Exists);
    let (mut r, at) = store.load("t1").await.unwrap().unwrap();
    assert_eq!(at, rev);
    r.status = TaskStatus::Cancelled;
    let next = store.replace(&r, rev).await.unwrap().expect("at its revision");
    r.status = TaskStatus::Completed;
    assert_eq!(store.replace(&r, rev).await.unwrap(), None, "a stale revision loses");
    assert_eq!(
        store.load("t1").await.unwrap().unwrap(),
        (record_with(TaskStatus::Cancelled), next)
    );
    r.message = Some("x".repeat(8192));
    assert!(matches!(store.replace(&r, next).await, Err(StoreError::TooLarge(_))));
    store.delete("t1").await.unwrap();
    assert!(store.load("t1").await.unwrap().is_none());
    assert!(store.load("never").await.unwrap().is_none());
}

fn record_with(status: TaskStatus) -> TaskRecord {
    let mut r = record("t1");
    r.status = status;
    r
}

#[tokio::test]
async fn signals_reach_the_listener() {
    let nats = NatsServer::start().expect("nats-server");
    let store = store(&nats, 4096).await;
    let mut rx = store.signals("t2").await.unwrap();
    // The subscription is registered asynchronously: signal until one arrives (bounded).
    let got = async {
        loop {
            store.signal("t2").await.unwrap();
            if tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_ok()
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), got)
        .await
        .expect("no signal arrived");
}

#[tokio::test]
async fn one_runtime_runs_the_task_another_answers_for_it() {
    let nats = NatsServer::start().expect("nats-server");
    let runner = Tasks::new(Arc::new(store(&nats, 64 * 1024).await), TaskSettings::default());
    let other = Tasks::new(Arc::new(store(&nats, 64 * 1024).await), TaskSettings::default());
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let task = runner
        .start(
            "iss alice".into(),
            Box::new(move |h| {
                Box::pin(async move {
                    let _ = started_tx.send(());
                    h.cancellation().cancelled().await;
                    Ok(CallToolResult::success(vec![ContentBlock::text("never")]))
                })
            }),
        )
        .await
        .unwrap();
    started_rx.await.unwrap();
    let got = serde_json::to_value(other.get("iss alice", &task.task_id).await.unwrap()).unwrap();
    assert_eq!(got["status"], "working");
    assert!(other.get("iss mallory", &task.task_id).await.is_err());
    other.cancel("iss alice", &task.task_id).await.unwrap();
    // The runner hears of it (signal, or its next reload) and stops the work.
    tokio::time::timeout(Duration::from_secs(5), async {
        while runner.running() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the runner kept running a cancelled task");
    let got = serde_json::to_value(runner.get("iss alice", &task.task_id).await.unwrap()).unwrap();
    assert_eq!(got["status"], "cancelled");
}
