//! The per-principal session count (`WORKER_MAX_SESSIONS_PER_PRINCIPAL`) under
//! bursts of opens: every open under the limit succeeds, the limit holds exactly,
//! and counting an open costs no JetStream consumer (a listing of the principal's
//! sessions happens only at the limit, to find sessions that are gone).

use futures::{FutureExt, StreamExt};
use proto::{Ack, Body, Envelope, Route, subjects};
use testkit::NatsServer;

use crate::{Client, alice, config, initialize};

/// Open `n` sessions of alice at once; the answers go to the session streams.
async fn open_at_once(client: &Client, n: usize, tag: &str) -> anyhow::Result<Vec<Ack>> {
    let opens = (0..n).map(|i| {
        let id = format!("{tag}{i:0>28}");
        let env = Envelope::new(
            alice(),
            id.clone(),
            Body::Open {
                message: initialize(),
                route: Route::SessionEvents,
                legacy_sse: false,
            },
        );
        async move { client.send(subjects::actor(&id), &env).await }
    });
    futures::future::join_all(opens).await.into_iter().collect()
}

async fn close(client: &Client, id: &str) -> anyhow::Result<Ack> {
    client
        .send(subjects::actor(id), &Envelope::new(alice(), id, Body::Close))
        .await
}

fn is_limit(ack: &Ack) -> bool {
    matches!(
        ack,
        Ack::Rejected {
            code: proto::mcp::SESSION_LIMIT,
            ..
        }
    )
}

#[actix_rt::test]
async fn a_burst_of_opens_under_the_limit_all_succeed() -> anyhow::Result<()> {
    // A fleet of agents sharing one client and one user opens its sessions at once.
    let nats = NatsServer::start()?;
    let mut cfg = config(&nats);
    cfg.max_sessions_per_principal = 5000;
    let worker = session_worker::start(cfg).await?;
    let client = Client::new(&nats).await?;
    let acks = open_at_once(&client, 1000, "b0").await?;
    let refused: Vec<_> = acks.iter().filter(|a| **a != Ack::Accepted).collect();
    assert!(
        refused.is_empty(),
        "{} of 1000 refused: {:?}",
        refused.len(),
        refused.first()
    );
    worker.shutdown().await;
    Ok(())
}

#[actix_rt::test]
async fn a_burst_over_the_limit_gets_exactly_the_limit() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let mut cfg = config(&nats);
    cfg.max_sessions_per_principal = 10;
    let worker = session_worker::start(cfg).await?;
    let client = Client::new(&nats).await?;
    let acks = open_at_once(&client, 60, "b1").await?;
    assert!(acks.iter().all(|a| *a == Ack::Accepted || is_limit(a)), "{acks:?}");
    let accepted = acks.iter().filter(|a| **a == Ack::Accepted).count();
    assert_eq!(accepted, 10, "accepted with a limit of 10");
    // Closing three frees exactly three places.
    let open: Vec<String> = (0..60)
        .map(|i| format!("b1{i:0>28}"))
        .zip(&acks)
        .filter(|(_, a)| **a == Ack::Accepted)
        .map(|(id, _)| id)
        .collect();
    for id in &open[..3] {
        assert_eq!(close(&client, id).await?, Ack::Accepted);
    }
    let acks = open_at_once(&client, 20, "b2").await?;
    assert_eq!(acks.iter().filter(|a| **a == Ack::Accepted).count(), 3, "{acks:?}");
    worker.shutdown().await;

    // No limit (0): nothing counted, every open accepted.
    let mut cfg = config(&nats);
    cfg.max_sessions_per_principal = 0;
    let worker = session_worker::start(cfg).await?;
    let acks = open_at_once(&client, 40, "nolimit").await?;
    assert!(acks.iter().all(|a| *a == Ack::Accepted), "{acks:?}");
    worker.shutdown().await;
    Ok(())
}

/// JetStream consumer requests on the principal index's stream, as seen by a
/// subscriber of the JetStream API.
struct ConsumerRequests {
    raw: async_nats::Client,
    sub: async_nats::Subscriber,
    stream: String,
}

impl ConsumerRequests {
    async fn watch(nats: &NatsServer) -> anyhow::Result<Self> {
        let raw = async_nats::connect(nats.url.as_str()).await?;
        let sub = raw.subscribe("$JS.API.CONSUMER.>").await?;
        raw.flush().await?;
        Ok(Self {
            raw,
            sub,
            stream: format!("KV_{}", subjects::PRINCIPAL_SESSIONS_BUCKET),
        })
    }

    /// How many were made since the last call. The worker waits for the answer to
    /// each request before it answers the open, and the server delivers in order,
    /// so after a round trip of our own every earlier request is buffered here.
    async fn since_last(&mut self) -> anyhow::Result<usize> {
        self.raw.flush().await?;
        let mut n = 0;
        while let Some(Some(msg)) = self.sub.next().now_or_never() {
            if msg.subject.split('.').any(|t| t == self.stream) {
                n += 1;
            }
        }
        Ok(n)
    }
}

#[actix_rt::test]
async fn counting_an_open_lists_nothing_until_the_limit() -> anyhow::Result<()> {
    // Each open under the limit is one counter update, whatever the principal's
    // history: no consumer on the index (they are limited per stream, and a listing
    // reads every session the principal ever closed).
    let nats = NatsServer::start()?;
    let mut cfg = config(&nats);
    cfg.max_sessions_per_principal = 5;
    let worker = session_worker::start(cfg).await?;
    let client = Client::new(&nats).await?;
    let mut consumers = ConsumerRequests::watch(&nats).await?;
    let acks = open_at_once(&client, 5, "c0").await?;
    assert!(acks.iter().all(|a| *a == Ack::Accepted), "{acks:?}");
    for i in 0..2 {
        assert_eq!(close(&client, &format!("c0{i:0>28}")).await?, Ack::Accepted);
    }
    let acks = open_at_once(&client, 2, "c1").await?;
    assert!(acks.iter().all(|a| *a == Ack::Accepted), "{acks:?}");
    assert_eq!(consumers.since_last().await?, 0, "consumers made under the limit");
    // At the limit the index is listed once, to find sessions that are gone (none
    // here); a second refusal right after does not list it again.
    let acks = open_at_once(&client, 1, "c2").await?;
    assert!(is_limit(&acks[0]), "{acks:?}");
    assert!(consumers.since_last().await? >= 1, "the index was listed at the limit");
    let acks = open_at_once(&client, 1, "c3").await?;
    assert!(is_limit(&acks[0]), "{acks:?}");
    assert_eq!(consumers.since_last().await?, 0, "listed again right after");
    worker.shutdown().await;
    Ok(())
}

#[actix_rt::test]
async fn a_closed_session_leaves_nothing_in_the_stores() -> anyhow::Result<()> {
    // Tombstones of closed sessions would pile up for the buckets' max age (a day):
    // at a few sessions a second, millions of markers in nats-server's memory.
    let nats = NatsServer::start()?;
    let worker = session_worker::start(config(&nats)).await?;
    let client = Client::new(&nats).await?;
    let acks = open_at_once(&client, 1, "gone").await?;
    assert_eq!(acks, vec![Ack::Accepted]);
    let id = format!("gone{:0>28}", 0);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url.as_str()).await?);
    let subjects_of = async |bucket: &str| -> anyhow::Result<usize> {
        let stream = js.get_stream(format!("KV_{bucket}")).await?;
        let info = stream.info_with_subjects(format!("$KV.{bucket}.>")).await?;
        Ok(info.count().await)
    };
    // Its record, its place in the principal's index and the principal's count.
    assert_eq!(subjects_of(subjects::SESSION_BUCKET).await?, 1);
    assert_eq!(subjects_of(subjects::PRINCIPAL_SESSIONS_BUCKET).await?, 2);
    assert_eq!(close(&client, &id).await?, Ack::Accepted);
    assert_eq!(
        subjects_of(subjects::SESSION_BUCKET).await?,
        0,
        "session record or its tombstone left"
    );
    assert_eq!(
        subjects_of(subjects::PRINCIPAL_SESSIONS_BUCKET).await?,
        1,
        "index entry or its tombstone left (only the count stays)"
    );
    worker.shutdown().await;
    Ok(())
}
