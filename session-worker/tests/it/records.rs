//! Request records against a real nats-server: a state-changing call's answer is
//! recorded; a retried request (the envelope's `retry` flag, sent by a gateway
//! after the first worker died) is answered from its record without running, runs
//! when there is no record, and only for the session's own caller.

use async_nats::jetstream;
use proto::{Ack, Body, Envelope, Route, subjects};
use serde_json::Value;
use testkit::NatsServer;

use super::{Client, add, alice, config, mallory, open_session, text_of};

async fn retry(client: &Client, principal: proto::Principal, session: &str, message: Vec<u8>) -> anyhow::Result<Ack> {
    let route = Route::Reply {
        subject: client.reply_subject.clone(),
    };
    let mut env = Envelope::new(principal, session, Body::Deliver { message, route });
    env.retry = true;
    client.send(subjects::actor(session), &env).await
}

fn first_text(ack: &Ack) -> anyhow::Result<String> {
    let Ack::First(out) = ack else {
        anyhow::bail!("expected the answer with the ack, got {ack:?}");
    };
    anyhow::ensure!(out.last && !out.aborted, "{out:?}");
    Ok(text_of(&serde_json::from_slice::<Value>(&out.message)?))
}

#[actix_rt::test]
async fn retried_requests_are_answered_from_their_record() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let mut cfg = config(&nats);
    cfg.tool_profile = "conformance".into(); // every tools/call is recorded there
    let worker = session_worker::start(cfg).await?;
    let mut client = Client::new(&nats).await?;
    let session = "5e55105e55105e55105e55105e551050";
    open_session(&mut client, session).await?;

    // A call's answer is recorded under (session, request id).
    let (_, msgs) = client
        .call(alice(), session, |route| Body::Deliver {
            message: add(1, 2, 3),
            route,
        })
        .await?;
    assert_eq!(text_of(&msgs[0]), "5");
    let kv = jetstream::new(client.nats.clone())
        .get_key_value(subjects::RESPONSE_BUCKET)
        .await?;
    let key = session_worker::records::key(session, &rmcp::model::NumberOrString::Number(1));
    let recorded: Value = serde_json::from_slice(&kv.get(&key).await?.ok_or_else(|| anyhow::anyhow!("no record"))?)?;
    assert_eq!(text_of(&recorded), "5");

    // Retried, with a record: its answer, and the tool does not run (it would say 5).
    let key2 = session_worker::records::key(session, &rmcp::model::NumberOrString::Number(2));
    kv.put(
        &key2,
        br#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"from the record"}]}}"#
            .to_vec()
            .into(),
    )
    .await?;
    let ack = retry(&client, alice(), session, add(2, 2, 3)).await?;
    assert_eq!(first_text(&ack)?, "from the record");

    // Another user retrying it finds no session, let alone the record.
    assert_eq!(retry(&client, mallory(), session, add(2, 2, 3)).await?, Ack::NotFound);

    // Retried without a record (its first run never finished): it runs.
    let ack = retry(&client, alice(), session, add(3, 20, 22)).await?;
    assert_eq!(first_text(&ack)?, "42");
    worker.shutdown().await;
    Ok(())
}

/// The session's TTL counts from its last use, not from its creation: a session
/// used every 1.5 s (its actor stopping in between, so each call rehydrates it from
/// the store) outlives a 3 s TTL several times over, and expires once left alone.
#[actix_rt::test]
async fn a_session_in_use_outlives_its_ttl() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let mut cfg = config(&nats);
    cfg.session_ttl_secs = 3;
    cfg.idle_timeout_secs = 1;
    let worker = session_worker::start(cfg).await?;
    let mut client = Client::new(&nats).await?;
    let session = "77e1177e1177e1177e1177e1177e1170";
    open_session(&mut client, session).await?;
    for i in 0..6u64 {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let (ack, msgs) = client
            .call(alice(), session, |route| Body::Deliver {
                message: add(10 + i, 1, 1),
                route,
            })
            .await?;
        assert_ne!(
            ack,
            Ack::NotFound,
            "call {i} at {:.1}s: session gone",
            1.5 * (i + 1) as f64
        );
        assert_eq!(text_of(&msgs[0]), "2");
    }
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let (ack, _) = client
        .call(alice(), session, |route| Body::Deliver {
            message: add(99, 1, 1),
            route,
        })
        .await?;
    assert_eq!(ack, Ack::NotFound, "an unused session outlived its TTL");
    worker.shutdown().await;
    Ok(())
}
