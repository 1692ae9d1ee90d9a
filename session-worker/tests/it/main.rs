//! session-worker against a real nats-server: sessions, rehydration,
//! principal binding, shard sharing, stateless requests, bad envelopes.

use std::time::Duration;

use futures::StreamExt;
use proto::{Ack, Body, Envelope, Outbound, Principal, Route, subjects};
use serde_json::{Value, json};
use testkit::{NatsServer, eventually};

mod liveness;
mod principals;
mod records;
mod takeover;
mod tasks;
mod vault;

fn config(nats: &NatsServer) -> session_worker::Config {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    session_worker::Config {
        nats_url: nats.url.clone(),
        nats_replicas: 1,
        admin_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        worker_id: None,
        idle_timeout_secs: 60,
        session_ttl_secs: 600,
        tool_profile: "default".into(),
        lease_ttl_secs: 3,
        arbiters: 1,
        drain_timeout_secs: 2,
        stateless_timeout_secs: 10,
        max_sessions_per_principal: 100,
        max_record_bytes: 64 * 1024,
        sessions_max_bytes: 64 * 1024 * 1024,
        heartbeat_ms: 200,
        request_records: true,
        record_ttl_secs: 600,
        records_max_bytes: 16 * 1024 * 1024,
        dead_after_ms: 1000,
        task_ttl_secs: 600,
        task_poll_interval_ms: 200,
        tasks_max_running: 32,
        max_stateless_inflight: 1024,
        tasks_max_running_per_principal: 4,
        tasks_max_bytes: 16 * 1024 * 1024,
        task_max_record_bytes: 64 * 1024,
        events_max_age_secs: 600,
        events_max_per_session: 1000,
        events_max_bytes: 64 * 1024 * 1024,
        tools: Default::default(),
    }
}

fn alice() -> Principal {
    Principal {
        iss: "http://issuer.test".into(),
        sub: "alice".into(),
        ..Default::default()
    }
}

fn mallory() -> Principal {
    Principal {
        iss: "http://issuer.test".into(),
        sub: "mallory".into(),
        ..Default::default()
    }
}

struct Client {
    nats: async_nats::Client,
    replies: async_nats::Subscriber,
    reply_subject: String,
}

impl Client {
    async fn new(nats: &NatsServer) -> anyhow::Result<Self> {
        let nats = async_nats::connect(nats.url.as_str()).await?;
        let reply_subject = subjects::reply("test-gw", 1);
        let replies = nats.subscribe(reply_subject.clone()).await?;
        Ok(Self {
            nats,
            replies,
            reply_subject,
        })
    }

    async fn send(&self, subject: String, env: &Envelope) -> anyhow::Result<Ack> {
        let msg = tokio::time::timeout(
            Duration::from_secs(5),
            self.nats.request(subject, env.to_bytes()?.into()),
        )
        .await??;
        Ok(Ack::from_bytes(&msg.payload)?)
    }

    /// Send a request and collect its messages up to the final one.
    async fn call(
        &mut self,
        principal: Principal,
        session: &str,
        body: impl FnOnce(Route) -> Body,
    ) -> anyhow::Result<(Ack, Vec<Value>)> {
        let route = Route::Reply {
            subject: self.reply_subject.clone(),
        };
        let body = body(route);
        let expects_answer = matches!(
            &body,
            Body::Open { .. }
                | Body::Stateless { .. }
                | Body::Deliver {
                    route: Route::Reply { .. },
                    ..
                }
        );
        let subject = match &body {
            Body::Stateless { .. } => subjects::STATELESS.to_owned(),
            _ => subjects::actor(session),
        };
        let env = Envelope::new(principal, session, body);
        let mut ack = self.send(subject, &env).await?;
        let mut out = Vec::new();
        if let Ack::First(first) = &ack {
            // A quick first answer rides on the acknowledgement.
            anyhow::ensure!(!first.aborted, "stream aborted");
            out.push(serde_json::from_slice(&first.message)?);
            let last = first.last;
            ack = Ack::Accepted;
            if last {
                return Ok((ack, out));
            }
        }
        if ack != Ack::Accepted || !expects_answer {
            return Ok((ack, out));
        }
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.replies.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("reply subscription ended"))?;
            let o = Outbound::from_bytes(&msg.payload)?;
            anyhow::ensure!(!o.aborted, "stream aborted");
            out.push(serde_json::from_slice(&o.message)?);
            if o.last {
                return Ok((ack, out));
            }
        }
    }
}

fn initialize() -> Vec<u8> {
    json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"it","version":"1"}}})
    .to_string()
    .into_bytes()
}

fn add(id: u64, a: i64, b: i64) -> Vec<u8> {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"add","arguments":{"a":a,"b":b}}})
        .to_string()
        .into_bytes()
}

fn text_of(result: &Value) -> String {
    result["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn open_session(client: &mut Client, session: &str) -> anyhow::Result<()> {
    let (ack, msgs) = client
        .call(alice(), session, |route| Body::Open {
            message: initialize(),
            route,
            legacy_sse: false,
        })
        .await?;
    anyhow::ensure!(ack == Ack::Accepted, "{ack:?}");
    anyhow::ensure!(msgs[0]["result"]["protocolVersion"] == "2025-06-18", "{msgs:?}");
    let (ack, _) = client
        .call(alice(), session, |_| Body::Deliver {
            message: br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_vec(),
            route: Route::Nothing,
        })
        .await?;
    anyhow::ensure!(ack == Ack::Accepted, "{ack:?}");
    Ok(())
}

#[actix_rt::test]
async fn session_lifecycle_and_binding() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let worker = session_worker::start(config(&nats)).await?;
    let mut client = Client::new(&nats).await?;
    let session = "0f0e0d0c0b0a09080706050403020100";
    open_session(&mut client, session).await?;

    let (_, msgs) = client
        .call(alice(), session, |route| Body::Deliver {
            message: add(1, 2, 3),
            route,
        })
        .await?;
    assert_eq!(text_of(&msgs[0]), "5");

    // Another subject presenting the session id is told it does not exist.
    let (ack, _) = client
        .call(mallory(), session, |route| Body::Deliver {
            message: add(2, 1, 1),
            route,
        })
        .await?;
    assert_eq!(ack, Ack::NotFound);

    // Unknown methods are JSON-RPC -32601.
    let (_, msgs) = client
        .call(alice(), session, |route| Body::Deliver {
            message: br#"{"jsonrpc":"2.0","id":3,"method":"no/such"}"#.to_vec(),
            route,
        })
        .await?;
    assert_eq!(msgs[0]["error"]["code"], -32601);

    // Malformed JSON is refused before reaching the session.
    let (ack, _) = client
        .call(alice(), session, |route| Body::Deliver {
            message: b"{nope".to_vec(),
            route,
        })
        .await?;
    assert!(matches!(ack, Ack::Rejected { code: -32700, .. }), "{ack:?}");

    // DELETE ends it for good.
    let (ack, _) = client.call(alice(), session, |_| Body::Close).await?;
    assert_eq!(ack, Ack::Accepted);
    eventually(50, Duration::from_millis(100), || {
        let client = &client;
        async move {
            let env = Envelope::new(alice(), session, Body::Attach);
            let ack = client.send(subjects::actor(session), &env).await?;
            anyhow::ensure!(ack == Ack::NotFound, "{ack:?}");
            Ok(())
        }
    })
    .await?;
    worker.shutdown().await;
    Ok(())
}

#[actix_rt::test]
async fn undecodable_envelope_is_rejected_by_name() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let worker = session_worker::start(config(&nats)).await?;
    let client = Client::new(&nats).await?;
    let msg = tokio::time::timeout(
        Duration::from_secs(5),
        client
            .nats
            .request(subjects::actor("abc"), bytes::Bytes::from_static(b"\xc1garbage")),
    )
    .await??;
    let ack = Ack::from_bytes(&msg.payload)?;
    assert!(
        matches!(&ack, Ack::Rejected { message, .. } if message.contains("malformed envelope")),
        "{ack:?}"
    );
    worker.shutdown().await;
    Ok(())
}

#[actix_rt::test]
async fn session_survives_its_worker() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let first = session_worker::start(config(&nats)).await?;
    let mut client = Client::new(&nats).await?;
    let session = "aaaabbbbccccddddeeeeffff00001111";
    open_session(&mut client, session).await?;
    first.shutdown().await;

    let second = session_worker::start(config(&nats)).await?;
    // The shards come back once the second worker has leased them.
    let mut answer = None;
    for _ in 0..50 {
        match client
            .call(alice(), session, |route| Body::Deliver {
                message: add(7, 20, 22),
                route,
            })
            .await
        {
            Ok(r) => {
                answer = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let (ack, msgs) = answer.ok_or_else(|| anyhow::anyhow!("session never came back"))?;
    assert_eq!(ack, Ack::Accepted);
    assert_eq!(text_of(&msgs[0]), "42");
    second.shutdown().await;
    Ok(())
}

#[actix_rt::test]
async fn two_workers_share_the_shards() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let a = session_worker::start(config(&nats)).await?;
    let b = session_worker::start(config(&nats)).await?;
    let http = reqwest::Client::new();
    let owned = |addr: std::net::SocketAddr| {
        let http = http.clone();
        async move {
            let text = http.get(format!("http://{addr}/metrics")).send().await?.text().await?;
            let line = text
                .lines()
                .find(|l| l.starts_with("mcp_worker_owned_shards "))
                .ok_or_else(|| anyhow::anyhow!("no gauge"))?;
            Ok::<i64, anyhow::Error>(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
        }
    };
    eventually(100, Duration::from_millis(200), || async {
        let (x, y) = (owned(a.admin_addr).await?, owned(b.admin_addr).await?);
        anyhow::ensure!(x > 0 && y > 0 && x + y == 1024, "a={x} b={y}");
        Ok(())
    })
    .await?;
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

#[actix_rt::test]
async fn stateless_request_needs_no_session() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let worker = session_worker::start(config(&nats)).await?;
    let mut client = Client::new(&nats).await?;
    let message = json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{
        "name":"add","arguments":{"a":40,"b":2},
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",
                 "io.modelcontextprotocol/clientCapabilities":{}}}})
    .to_string()
    .into_bytes();
    let (ack, msgs) = client
        .call(alice(), "", |route| Body::Stateless { message, route })
        .await?;
    assert_eq!(ack, Ack::Accepted);
    assert_eq!(text_of(msgs.last().expect("answer")), "42", "{msgs:?}");
    worker.shutdown().await;
    Ok(())
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics")).await?.text().await?;
    let line = text
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .ok_or_else(|| anyhow::anyhow!("no metric {name}"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

#[actix_rt::test]
async fn idle_actor_stops_and_comes_back_on_demand() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let mut cfg = config(&nats);
    cfg.idle_timeout_secs = 1;
    let worker = session_worker::start(cfg).await?;
    let mut client = Client::new(&nats).await?;
    let session = "1234123412341234abcdabcdabcdabcd";
    open_session(&mut client, session).await?;
    assert_eq!(metric(worker.admin_addr, "mcp_worker_actors").await?, 1.0);
    eventually(50, Duration::from_millis(100), || async {
        let live = metric(worker.admin_addr, "mcp_worker_actors").await?;
        anyhow::ensure!(live == 0.0, "{live} actors alive");
        Ok(())
    })
    .await?;
    let (ack, msgs) = client
        .call(alice(), session, |route| Body::Deliver {
            message: add(3, 1, 1),
            route,
        })
        .await?;
    assert_eq!(ack, Ack::Accepted);
    assert_eq!(text_of(&msgs[0]), "2");
    assert_eq!(
        metric(worker.admin_addr, "mcp_worker_sessions_restored_total").await?,
        1.0
    );
    worker.shutdown().await;
    Ok(())
}

/// While a second worker joins and the shards are split, every shard keeps an
/// owner: a message finds a responder within a short retry (the gateway retries
/// no-responders for longer than this).
#[actix_rt::test]
async fn rebalancing_leaves_no_shard_without_owner() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let a = session_worker::start(config(&nats)).await?;
    let client = Client::new(&nats).await?;
    let b = session_worker::start(config(&nats)).await?;
    let started = std::time::Instant::now();
    let mut probes = 0u32;
    let mut split = false;
    while started.elapsed() < Duration::from_secs(12) {
        for i in 0..64u32 {
            let key = format!("{:08x}{i:024x}", probes);
            let env = Envelope::new(alice(), key.clone(), Body::Attach);
            let mut answered = false;
            for _ in 0..5 {
                match client.nats.request(subjects::actor(&key), env.to_bytes()?.into()).await {
                    Ok(msg) => {
                        assert_eq!(Ack::from_bytes(&msg.payload)?, Ack::NotFound);
                        answered = true;
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(40)).await,
                }
            }
            assert!(answered, "shard of {key} had no owner for 200 ms");
            probes += 1;
        }
        let (x, y) = (
            metric(a.admin_addr, "mcp_worker_owned_shards").await?,
            metric(b.admin_addr, "mcp_worker_owned_shards").await?,
        );
        if x > 0.0 && y > 0.0 && x + y == 1024.0 {
            split = true;
            if started.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
    }
    assert!(split, "the shards were never split between the two workers");
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}
