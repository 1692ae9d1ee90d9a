//! The worker's token-vault client against a real nats-server, with a tiny
//! responder on `auth.vault.token` standing in for the auth-service (whose own
//! tests cover the server side), and `whoAmI` served by a worker that asks it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::StreamExt;
use proto::auth::{AUTH_WIRE_VERSION, VAULT_QUEUE, VAULT_TOKEN, VaultReply, VaultRequest};
use proto::{Ack, Body, Principal};
use serde_json::{Value, json};
use session_worker::vault::VaultClient;
use testkit::NatsServer;
use tools::vault::VaultError;

use super::{Client, config, text_of};

/// Recognizable, so a test can tell it never left the worker.
const SIGNATURE: &str = "FAKEUPSTREAMSIGxyzzy";

fn upstream_jwt() -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(br#"{"aud":"https://api.upstream.test","sub":"upstream-7"}"#);
    format!("{header}.{payload}.{SIGNATURE}")
}

fn bob(grant_id: Option<&str>) -> Principal {
    Principal {
        iss: "http://issuer.test".into(),
        sub: "bob".into(),
        email: Some("bob@example.test".into()),
        scopes: vec!["mcp".into()],
        expires_at: 1_800_000_000,
        grant_id: grant_id.map(str::to_owned),
        ..Default::default()
    }
}

/// The stand-in vault: answers by grant id and records every request.
struct Responder {
    seen: Arc<Mutex<Vec<VaultRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Responder {
    async fn start(nats: &NatsServer) -> anyhow::Result<Self> {
        let client = async_nats::connect(nats.url.as_str()).await?;
        let mut sub = client.queue_subscribe(VAULT_TOKEN, VAULT_QUEUE.to_owned()).await?;
        client.flush().await?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let (Some(reply_to), Ok(req)) = (msg.reply, rmp_serde::from_slice::<VaultRequest>(&msg.payload)) else {
                    continue;
                };
                let grant = req.grant_id.clone();
                record
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(req);
                let answer = match grant.as_str() {
                    "g-token" => VaultReply::Token {
                        access_token: upstream_jwt(),
                        token_type: "Bearer".into(),
                        expires_at: Some(1_900_000_000),
                    },
                    "g-revoked" => VaultReply::Revoked,
                    "g-unavailable" => VaultReply::Unavailable {
                        message: "upstream said 502".into(),
                    },
                    "g-silent" => continue,
                    "g-garbage" => {
                        let _ = client.publish(reply_to, bytes::Bytes::from_static(b"\xc1")).await;
                        continue;
                    }
                    _ => VaultReply::NotFound,
                };
                let Ok(bytes) = rmp_serde::to_vec_named(&answer) else {
                    continue;
                };
                let _ = client.publish(reply_to, bytes.into()).await;
            }
        });
        Ok(Self { seen, task })
    }

    fn seen(&self) -> Vec<VaultRequest> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn client(nats: &NatsServer) -> anyhow::Result<VaultClient> {
    Ok(VaultClient::new(async_nats::connect(nats.url.as_str()).await?).with_timeout(Duration::from_millis(500)))
}

#[tokio::test]
async fn vault_client_sends_what_the_gateway_verified_and_gets_the_token() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let responder = Responder::start(&nats).await?;
    let vault = client(&nats).await?;
    let token = vault.upstream_token(&bob(Some("g-token")), false).await?;
    assert_eq!(token.access_token, upstream_jwt());
    assert_eq!(token.token_type, "Bearer");
    assert_eq!(token.expires_at, Some(1_900_000_000));
    assert!(!format!("{token:?}").contains(SIGNATURE));
    assert_eq!(
        responder.seen(),
        [VaultRequest {
            v: AUTH_WIRE_VERSION,
            grant_id: "g-token".into(),
            iss: "http://issuer.test".into(),
            sub: "bob".into(),
            refresh: false,
        }]
    );
    Ok(())
}

#[tokio::test]
async fn vault_client_maps_every_reply_kind() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let _responder = Responder::start(&nats).await?;
    let vault = client(&nats).await?;
    let ask = |gid: &'static str| {
        let vault = vault.clone();
        async move { vault.upstream_token(&bob(Some(gid)), false).await }
    };
    assert_eq!(ask("g-unknown").await.unwrap_err(), VaultError::NotFound);
    assert_eq!(ask("g-revoked").await.unwrap_err(), VaultError::Revoked);
    assert_eq!(
        ask("g-unavailable").await.unwrap_err(),
        VaultError::Unavailable("upstream said 502".into())
    );
    assert!(matches!(ask("g-garbage").await, Err(VaultError::Unavailable(_))));
    assert_eq!(ask("g-silent").await.unwrap_err(), VaultError::TimedOut);
    Ok(())
}

#[tokio::test]
async fn vault_client_needs_a_grant_and_a_responder() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let vault = client(&nats).await?;
    // Nobody listens on the vault subject.
    assert_eq!(
        vault.upstream_token(&bob(Some("g-token")), false).await.unwrap_err(),
        VaultError::NoResponders
    );
    // A principal without a grant is answered without asking anyone.
    let responder = Responder::start(&nats).await?;
    assert_eq!(
        vault.upstream_token(&bob(None), false).await.unwrap_err(),
        VaultError::NoGrant
    );
    assert!(responder.seen().is_empty());
    Ok(())
}

fn rpc(id: u64, method: &str, params: Value) -> Vec<u8> {
    json!({"jsonrpc":"2.0","id":id,"method":method,"params":params})
        .to_string()
        .into_bytes()
}

fn stateless_meta() -> Value {
    json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28",
           "io.modelcontextprotocol/clientCapabilities":{}})
}

#[actix_rt::test]
async fn worker_serves_who_am_i_from_the_vault_without_the_token() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let _responder = Responder::start(&nats).await?;
    let worker = session_worker::start(config(&nats)).await?;
    let mut client = Client::new(&nats).await?;

    // The default profile lists exactly `add`, `whoAmI` and (stateless: no `count`) `notes`.
    let message = rpc(1, "tools/list", json!({ "_meta": stateless_meta() }));
    let (ack, msgs) = client
        .call(bob(Some("g-token")), "", |route| Body::Stateless { message, route })
        .await?;
    assert_eq!(ack, Ack::Accepted);
    let tools = &msgs.last().expect("answer")["result"]["tools"];
    let names: Vec<_> = tools
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["add", "whoAmI", "notes"], "{msgs:?}");

    // Stateless: the principal's grant reaches the vault, the audience comes back.
    let message = rpc(
        2,
        "tools/call",
        json!({ "name": "whoAmI", "arguments": {}, "_meta": stateless_meta() }),
    );
    let (_, msgs) = client
        .call(bob(Some("g-token")), "", |route| Body::Stateless { message, route })
        .await?;
    let text = text_of(msgs.last().expect("answer"));
    assert!(!text.contains(SIGNATURE), "{text}");
    assert!(!text.contains("upstream-7"), "{text}");
    let report: Value = serde_json::from_str(&text)?;
    assert_eq!(report["sub"], "bob");
    assert_eq!(report["email"], "bob@example.test");
    assert_eq!(
        report["downstream"],
        json!({ "available": true, "expires_at": 1_900_000_000,
                "audience": "https://api.upstream.test", "error": null })
    );

    // In a session: a revoked grant is reported as such.
    let session = "1234123412341234abcdabcdabcdabcd";
    let principal = bob(Some("g-revoked"));
    let init = rpc(
        0,
        "initialize",
        json!({"protocolVersion":"2025-06-18","capabilities":{},
        "clientInfo":{"name":"it","version":"1"}}),
    );
    let (ack, _) = client
        .call(principal.clone(), session, |route| Body::Open {
            message: init,
            route,
            legacy_sse: false,
        })
        .await?;
    assert_eq!(ack, Ack::Accepted);
    let (ack, _) = client
        .call(principal.clone(), session, |_| Body::Deliver {
            message: br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_vec(),
            route: proto::Route::Nothing,
        })
        .await?;
    assert_eq!(ack, Ack::Accepted);
    let (_, msgs) = client
        .call(principal.clone(), session, |route| Body::Deliver {
            message: rpc(3, "tools/call", json!({ "name": "whoAmI", "arguments": {} })),
            route,
        })
        .await?;
    let report: Value = serde_json::from_str(&text_of(&msgs[0]))?;
    assert_eq!(report["downstream"]["available"], false);
    assert_eq!(report["downstream"]["error"], "revoked");
    worker.shutdown().await;
    Ok(())
}
