//! Death detection must not depend on having seen a peer's heartbeat *after* the
//! watch opened: a peer that died just before a survivor (re)opened its watch of
//! the workers' bucket (a worker starting, or a nats-server restarted without its
//! memory buckets) left its last heartbeat in the bucket and never writes again.

use std::sync::Arc;
use std::time::Duration;

use proto::subjects;
use session_worker::leases::Leases;
use session_worker::liveness::{self, Event, Fence, Timing};
use testkit::NatsServer;

#[tokio::test]
async fn a_peer_that_died_before_the_watch_opened_is_declared_dead() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let client = async_nats::connect(&nats.url).await?;
    let js = async_nats::jetstream::new(client);
    let (_, workers) = Leases::ensure(&js, Duration::from_secs(30), 1).await?;
    // The peer's last heartbeat: it dies right after writing it.
    workers.put(subjects::token("peer"), "peer".into()).await?;

    let timing = Timing {
        heartbeat: Duration::from_millis(50),
        dead_after: Duration::from_millis(300),
    };
    let fence = Arc::new(Fence::new(timing.fence()));
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let live = liveness::start(&nats.url, "me", timing, fence, tx).await?;
    // Bounded: the fast path takes dead-after (0.3 s); without it, only the key's
    // expiry (30 s here) would end the peer.
    let dead = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.recv().await {
                Some(Event::Dead(id)) => return Some(id),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await;
    live.stop();
    assert_eq!(
        dead.ok().flatten().as_deref(),
        Some("peer"),
        "a peer whose last heartbeat predates the watch must be declared dead"
    );
    let entry = workers.entry(subjects::token("peer")).await?;
    assert!(
        entry.is_none_or(|e| e.operation != async_nats::jetstream::kv::Operation::Put),
        "its key is deleted, so the gateways learn of it"
    );
    Ok(())
}
