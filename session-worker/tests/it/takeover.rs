//! Issue 8, defects 2 and 3: a session id can be taken only by the caller the
//! gateway minted it for, a stored record is never overwritten, and every request
//! runs with the principal of its own token.

use proto::{Ack, Body, Principal, Route};
use serde_json::{Value, json};
use testkit::NatsServer;

use crate::{Client, alice, config, initialize, mallory, open_session, text_of};

fn who_am_i(id: u64) -> Vec<u8> {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"whoAmI","arguments":{}}})
        .to_string()
        .into_bytes()
}

fn report(msgs: &[Value]) -> Value {
    serde_json::from_str(&text_of(&msgs[0])).unwrap_or(Value::Null)
}

fn legacy_open(route: Route) -> Body {
    Body::Open {
        message: initialize(),
        route,
        legacy_sse: true,
    }
}

#[actix_rt::test]
async fn legacy_sessions_open_only_on_their_owners_reservation() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let worker = session_worker::start(config(&nats)).await?;
    let mut client = Client::new(&nats).await?;

    // An id nobody reserved (GET /sse never minted it): no such session.
    let unminted = "1111111111111111111111111111aaaa";
    let (ack, _) = client.call(mallory(), unminted, legacy_open).await?;
    assert_eq!(ack, Ack::NotFound);

    // Alice's reservation: mallory cannot open it, alice can, once.
    let id = "2222222222222222222222222222bbbb";
    let (ack, _) = client.call(alice(), id, |_| Body::Reserve).await?;
    assert_eq!(ack, Ack::Accepted);
    let (ack, _) = client.call(mallory(), id, |_| Body::Reserve).await?;
    assert!(
        matches!(ack, Ack::Rejected { .. }),
        "a reserved id is not reserved again: {ack:?}"
    );
    let (ack, _) = client.call(mallory(), id, legacy_open).await?;
    assert_eq!(ack, Ack::NotFound);
    let (ack, msgs) = client.call(alice(), id, legacy_open).await?;
    assert_eq!(ack, Ack::Accepted);
    assert_eq!(msgs[0]["result"]["protocolVersion"], "2025-06-18", "{msgs:?}");
    let (ack, _) = client.call(mallory(), id, legacy_open).await?;
    assert_eq!(
        ack,
        Ack::NotFound,
        "a live session of someone else does not exist for mallory"
    );
    let (ack, _) = client.call(alice(), id, legacy_open).await?;
    assert!(matches!(ack, Ack::Rejected { .. }), "{ack:?}");

    // A reservation nobody initialized goes away when its stream closes.
    let idle = "3333333333333333333333333333cccc";
    client.call(alice(), idle, |_| Body::Reserve).await?;
    let (ack, _) = client.call(mallory(), idle, |_| Body::Close).await?;
    assert_eq!(ack, Ack::NotFound);
    let (ack, _) = client.call(alice(), idle, |_| Body::Close).await?;
    assert_eq!(ack, Ack::Accepted);
    let (ack, _) = client.call(alice(), idle, legacy_open).await?;
    assert_eq!(ack, Ack::NotFound);
    worker.shutdown().await;
    Ok(())
}

#[actix_rt::test]
async fn a_stored_session_is_never_overwritten_after_its_worker_restarts() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let first = session_worker::start(config(&nats)).await?;
    let mut client = Client::new(&nats).await?;
    let id = "4444444444444444444444444444dddd";
    open_session(&mut client, id).await?;
    // No worker holds the actor any more; the record is in KV.
    first.shutdown().await;
    let second = session_worker::start(config(&nats)).await?;

    let mut attempts = Vec::new();
    for legacy in [false, true] {
        let (ack, _) = client
            .call(mallory(), id, |route| Body::Open {
                message: initialize(),
                route,
                legacy_sse: legacy,
            })
            .await?;
        attempts.push(ack);
    }
    assert!(
        matches!(attempts[0], Ack::Rejected { .. }),
        "streamable re-open: {:?}",
        attempts[0]
    );
    assert_eq!(attempts[1], Ack::NotFound, "legacy re-open");
    // The session is still alice's: it rehydrates for her, with her identity.
    let (ack, msgs) = client
        .call(alice(), id, |route| Body::Deliver {
            message: who_am_i(5),
            route,
        })
        .await?;
    assert_eq!(ack, Ack::Accepted);
    assert_eq!(report(&msgs)["sub"], "alice", "{msgs:?}");
    let (ack, _) = client
        .call(mallory(), id, |route| Body::Deliver {
            message: who_am_i(6),
            route,
        })
        .await?;
    assert_eq!(ack, Ack::NotFound);
    second.shutdown().await;
    Ok(())
}

#[actix_rt::test]
async fn each_request_runs_with_its_own_principal() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let worker = session_worker::start(config(&nats)).await?;
    let mut client = Client::new(&nats).await?;
    let id = "5555555555555555555555555555eeee";
    let opener = Principal {
        scopes: vec!["mcp".into()],
        client_id: Some("app-1".into()),
        ..alice()
    };
    let (ack, _) = client
        .call(opener.clone(), id, |route| Body::Open {
            message: initialize(),
            route,
            legacy_sse: false,
        })
        .await?;
    assert_eq!(ack, Ack::Accepted);
    let (_, msgs) = client
        .call(opener.clone(), id, |route| Body::Deliver {
            message: who_am_i(1),
            route,
        })
        .await?;
    assert_eq!(report(&msgs)["scopes"], json!(["mcp"]));

    let wider = Principal {
        scopes: vec!["mcp".into(), "extra".into()],
        permissions: vec!["image_generation".into()],
        ..opener.clone()
    };
    let (_, msgs) = client
        .call(wider, id, |route| Body::Deliver {
            message: who_am_i(2),
            route,
        })
        .await?;
    assert_eq!(report(&msgs)["scopes"], json!(["mcp", "extra"]), "{msgs:?}");
    assert_eq!(report(&msgs)["permissions"], json!(["image_generation"]));

    let narrower = Principal {
        scopes: vec![],
        ..opener.clone()
    };
    let (_, msgs) = client
        .call(narrower, id, |route| Body::Deliver {
            message: who_am_i(3),
            route,
        })
        .await?;
    assert_eq!(report(&msgs)["scopes"], json!([]), "{msgs:?}");

    // The same user through another client is another owner.
    let other_client = Principal {
        client_id: Some("app-2".into()),
        ..opener
    };
    let (ack, _) = client
        .call(other_client, id, |route| Body::Deliver {
            message: who_am_i(4),
            route,
        })
        .await?;
    assert_eq!(ack, Ack::NotFound);
    worker.shutdown().await;
    Ok(())
}

#[actix_rt::test]
async fn live_sessions_per_principal_are_capped_and_records_are_bounded() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let mut cfg = config(&nats);
    cfg.max_sessions_per_principal = 3;
    cfg.max_record_bytes = 8 * 1024;
    let worker = session_worker::start(cfg).await?;
    let mut client = Client::new(&nats).await?;
    let open = |route| Body::Open {
        message: initialize(),
        route,
        legacy_sse: false,
    };
    let ids: Vec<String> = (0..4).map(|i| format!("{i:0>32}")).collect();
    for id in &ids[..3] {
        let (ack, _) = client.call(alice(), id, open).await?;
        assert_eq!(ack, Ack::Accepted, "{id}");
    }
    // A fourth, and a legacy reservation, are refused for alice; mallory is not affected.
    let (ack, _) = client.call(alice(), &ids[3], open).await?;
    assert!(
        matches!(
            ack,
            Ack::Rejected {
                code: proto::mcp::SESSION_LIMIT,
                ..
            }
        ),
        "{ack:?}"
    );
    let (ack, _) = client
        .call(alice(), "6666666666666666666666666666ffff", |_| Body::Reserve)
        .await?;
    assert!(
        matches!(
            ack,
            Ack::Rejected {
                code: proto::mcp::SESSION_LIMIT,
                ..
            }
        ),
        "{ack:?}"
    );
    let (ack, _) = client.call(mallory(), &ids[3], open).await?;
    assert_eq!(ack, Ack::Accepted);
    // Closing one frees a place.
    let (ack, _) = client.call(alice(), &ids[0], |_| Body::Close).await?;
    assert_eq!(ack, Ack::Accepted);
    let (ack, _) = client.call(alice(), "7777777777777777777777777777aaaa", open).await?;
    assert_eq!(ack, Ack::Accepted);

    // An initialize too large to keep is refused, and nothing is stored.
    let big = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},
        "clientInfo":{"name":"x".repeat(16 * 1024),"version":"1"}}})
    .to_string()
    .into_bytes();
    let (ack, _) = client
        .call(mallory(), "8888888888888888888888888888bbbb", |route| Body::Open {
            message: big,
            route,
            legacy_sse: false,
        })
        .await?;
    assert!(
        matches!(
            ack,
            Ack::Rejected {
                code: proto::mcp::INVALID_REQUEST,
                ..
            }
        ),
        "{ack:?}"
    );
    worker.shutdown().await;
    Ok(())
}
