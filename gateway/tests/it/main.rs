//! The gateway in front of a real nats-server, a real session worker and a real
//! issuer (the auth-service's OAuth server, tokens minted with its development key),
//! all in-process on loopback.

mod forward;
mod revocation;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use auth_service::MintArgs;
use futures::StreamExt;
use serde_json::{Value, json};
use testkit::NatsServer;

struct Issuer {
    url: String,
    key_file: PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The auth-service's OAuth server on `nats`, with a development key that the tests
/// mint tokens with (as `mint-token` does) and that its JWKS publishes.
async fn issuer(nats: &NatsServer) -> anyhow::Result<Issuer> {
    let dir = std::env::temp_dir().join(format!("gateway-it-{}-{}", std::process::id(), rand_suffix()));
    let key_file = dir.join("key.pem");
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let config = auth_service::Config {
        listen: listener.local_addr()?,
        admin_listen: "127.0.0.1:0".parse()?,
        issuer: url.clone(),
        dev_key_file: key_file.clone(),
    };
    let oauth = auth_service::config::OAuthArgs {
        resource_identifier: RESOURCE.into(),
        ..auth_service::config::OAuthArgs::ephemeral(&nats.url)
    }
    .into_config()?;
    let upstream = auth_service::upstream::UpstreamArgs {
        upstream: "static".into(),
        static_users_file: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/static-users.json"),
        ..Default::default()
    }
    .build(reqwest::Client::new())?;
    let key = auth_service::key::load_or_generate(&key_file)?;
    let bound = Box::pin(auth_service::server::bind_oauth(
        &config,
        oauth,
        upstream,
        Some(key),
        listener,
    ))
    .await?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    actix_rt::spawn(bound.serve(async {
        let _ = rx.await;
    }));
    Ok(Issuer {
        url,
        key_file,
        _stop: tx,
    })
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

const RESOURCE: &str = "http://localhost:8788/mcp";

impl Issuer {
    fn token(&self, sub: &str) -> anyhow::Result<String> {
        let args = MintArgs {
            key_file: self.key_file.clone(),
            issuer: self.url.clone(),
            audience: RESOURCE.into(),
            sub: sub.into(),
            email: None,
            name: None,
            scope: None,
            permissions: vec![],
            ttl: 300,
            nbf_offset: None,
            kid: None,
        };
        let key = auth_service::key::load(&args.key_file)?;
        Ok(auth_service::mint::mint(&key, &args)?)
    }

    /// A token for `sub` with the claims of [`Issuer::token`] plus `extra`
    /// (e.g. the `gid` claim of the auth-service's grants, a chosen `jti`).
    fn token_with(&self, sub: &str, extra: Value) -> anyhow::Result<String> {
        let key = auth_service::key::load(&self.key_file)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let mut claims = json!({
            "iss": self.url, "sub": sub, "aud": RESOURCE, "iat": now, "exp": now + 300,
            "jti": uuid::Uuid::new_v4().to_string(), "client_id": "it",
        });
        if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
            claims.extend(extra.clone());
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(key.kid().to_owned());
        Ok(jsonwebtoken::encode(&header, &claims, key.encoding_key())?)
    }
}

fn gateway_config(nats: &NatsServer, issuer: &Issuer) -> gateway::Config {
    use clap::Parser;
    gateway::Config::parse_from([
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--nats-url",
        &nats.url,
        "--allowed-issuers",
        &issuer.url,
        "--resource-identifier",
        RESOURCE,
        "--no-responders-retry-ms",
        "300",
        "--max-body-bytes",
        "65536",
        "--http-workers",
        "1",
    ])
}

fn worker_config(nats: &NatsServer) -> session_worker::Config {
    use clap::Parser;
    session_worker::Config::parse_from([
        "session-worker",
        "--nats-url",
        &nats.url,
        "--admin-listen",
        "127.0.0.1:0",
        "--arbiters",
        "1",
        "--lease-ttl-secs",
        "3",
    ])
}

struct Cluster {
    nats: NatsServer,
    issuer: Issuer,
    worker: Option<session_worker::Worker>,
    gateway: Option<gateway::Gateway>,
    url: String,
    http: reqwest::Client,
}

impl Cluster {
    async fn start(with_worker: bool) -> anyhow::Result<Self> {
        let nats = NatsServer::start()?;
        let issuer = issuer(&nats).await?;
        Self::start_on(nats, issuer, with_worker, |_| {}).await
    }

    /// Start a worker (or not) and a gateway, configured by `configure`, on a
    /// nats-server and issuer the test may already have used.
    async fn start_on(
        nats: NatsServer,
        issuer: Issuer,
        with_worker: bool,
        configure: impl FnOnce(&mut gateway::Config),
    ) -> anyhow::Result<Self> {
        let worker = if with_worker {
            Some(session_worker::start(worker_config(&nats)).await?)
        } else {
            None
        };
        let mut config = gateway_config(&nats, &issuer);
        configure(&mut config);
        let gateway = gateway::start(config).await?;
        let url = format!("http://localhost:{}/mcp", gateway.addr.port());
        Ok(Self {
            nats,
            issuer,
            worker,
            gateway: Some(gateway),
            url,
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
        })
    }

    fn post(&self, token: &str, session: Option<&str>, body: &Value) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .post(&self.url)
            .bearer_auth(token)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(body.to_string());
        if let Some(s) = session {
            req = req.header("Mcp-Session-Id", s);
        }
        req
    }

    /// GET `url` (an MCP endpoint) for `session`'s event stream, through `http`.
    fn stream(&self, http: &reqwest::Client, url: &str, token: &str, session: &str) -> reqwest::RequestBuilder {
        http.get(url)
            .bearer_auth(token)
            .header("Accept", "text/event-stream")
            .header("Mcp-Session-Id", session)
    }

    async fn open(&self, token: &str) -> anyhow::Result<String> {
        let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"it","version":"1"}}});
        let resp = self.post(token, None, &init).send().await?;
        anyhow::ensure!(resp.status() == 200, "initialize: {}", resp.status());
        let session = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow::anyhow!("no session id"))?
            .to_owned();
        let body: Value = resp.json().await?;
        anyhow::ensure!(body["result"]["protocolVersion"] == "2025-06-18", "{body}");
        let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
        let resp = self.post(token, Some(&session), &note).send().await?;
        anyhow::ensure!(resp.status() == 202, "initialized: {}", resp.status());
        Ok(session)
    }

    fn gateway(&self) -> anyhow::Result<&gateway::Gateway> {
        self.gateway.as_ref().ok_or_else(|| anyhow::anyhow!("gateway stopped"))
    }

    /// `http://localhost:<port>`: the gateway's public origin.
    fn origin(&self) -> anyhow::Result<String> {
        Ok(format!("http://localhost:{}", self.gateway()?.addr.port()))
    }

    /// The gateway's `/metrics` text.
    async fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("http://{}/metrics", self.gateway()?.admin_addr);
        Ok(self.http.get(url).send().await?.text().await?)
    }

    async fn stop(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
        if let Some(w) = self.worker.take() {
            w.shutdown().await;
        }
    }
}

fn add(id: u64) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":3}}})
}

#[actix_rt::test]
async fn session_through_the_gateway() -> anyhow::Result<()> {
    let c = Cluster::start(true).await?;
    let alice = c.issuer.token("alice")?;
    let session = c.open(&alice).await?;
    let resp = c.post(&alice, Some(&session), &add(1)).send().await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await?;
    assert_eq!(body["result"]["content"][0]["text"], "5");

    // Bound to its creator: another subject gets 404, as if it did not exist.
    let mallory = c.issuer.token("mallory")?;
    let resp = c.post(&mallory, Some(&session), &add(2)).send().await?;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.json::<Value>().await?["id"], 2);

    // An unknown session is 404 too.
    let resp = c
        .post(&alice, Some("00000000000000000000000000000000"), &add(3))
        .send()
        .await?;
    assert_eq!(resp.status(), 404);

    // DELETE ends it; afterwards the id is unknown.
    let resp = c
        .http
        .delete(&c.url)
        .bearer_auth(&alice)
        .header("Mcp-Session-Id", &session)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let mut gone = false;
    for _ in 0..50 {
        if c.post(&alice, Some(&session), &add(4)).send().await?.status() == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "session still answers after DELETE");
    c.stop().await;
    Ok(())
}

#[actix_rt::test]
async fn bad_input_gets_clear_errors() -> anyhow::Result<()> {
    let c = Cluster::start(true).await?;
    let alice = c.issuer.token("alice")?;
    let session = c.open(&alice).await?;

    let resp = c
        .http
        .post(&c.url)
        .bearer_auth(&alice)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("Mcp-Session-Id", &session)
        .body("{not json")
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await?["error"]["code"], -32700);

    let resp = c
        .http
        .post(&c.url)
        .bearer_auth(&alice)
        .header("Content-Type", "text/plain")
        .header("Accept", "application/json, text/event-stream")
        .body(add(1).to_string())
        .send()
        .await?;
    assert_eq!(resp.status(), 415);

    let resp = c
        .http
        .post(&c.url)
        .bearer_auth(&alice)
        .header("Content-Type", "application/json")
        .header("Accept", "text/html")
        .body(add(1).to_string())
        .send()
        .await?;
    assert_eq!(resp.status(), 406);

    let big = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"pad":"x".repeat(70_000)}}});
    let resp = c.post(&alice, Some(&session), &big).send().await?;
    assert_eq!(resp.status(), 413);

    let resp = c
        .post(&alice, Some(&session), &add(5))
        .header("Origin", "https://evil.example")
        .send()
        .await?;
    assert_eq!(resp.status(), 403);

    let resp = c.post(&alice, None, &add(6)).send().await?;
    assert_eq!(resp.status(), 400, "a request without a session id");

    let resp = c
        .http
        .post(&c.url)
        .header("Content-Type", "application/json")
        .body(add(7).to_string())
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()?
            .contains("resource_metadata=")
    );
    assert_eq!(resp.json::<Value>().await?["error_code"], "MISSING_AUTHORIZATION");

    // Still serving after all that.
    let resp = c.post(&alice, Some(&session), &add(8)).send().await?;
    assert_eq!(resp.status(), 200);
    c.stop().await;
    Ok(())
}

#[actix_rt::test]
async fn no_worker_is_a_clear_error_not_a_hang() -> anyhow::Result<()> {
    let c = Cluster::start(false).await?;
    let alice = c.issuer.token("alice")?;
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"it","version":"1"}}});
    let resp = c.post(&alice, None, &init).send().await?;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await?;
    assert_eq!(body["id"], 0);
    assert_eq!(body["error"]["code"], -32000);
    c.stop().await;
    Ok(())
}

#[actix_rt::test]
async fn drain_ends_sse_streams_with_a_reconnect_hint() -> anyhow::Result<()> {
    let mut c = Cluster::start(true).await?;
    let alice = c.issuer.token("alice")?;
    let session = c.open(&alice).await?;
    let resp = c
        .http
        .get(&c.url)
        .bearer_auth(&alice)
        .header("Accept", "text/event-stream")
        .header("Mcp-Session-Id", &session)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.bytes_stream();
    let gateway = c.gateway.take().ok_or_else(|| anyhow::anyhow!("no gateway"))?;
    let stopping = actix_rt::spawn(gateway.shutdown());
    let mut seen = Vec::new();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(5), body.next()).await {
        seen.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("retry: 1000"), "{text}");
    stopping.await?;
    c.stop().await;
    Ok(())
}

/// The server-sent events of one response, read as JSON messages.
struct Events {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Events {
    fn new(resp: reqwest::Response) -> Self {
        Self {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event carrying a JSON message (keep-alives and priming events skipped).
    async fn next_message(&mut self) -> anyhow::Result<Value> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if let Ok(message) = serde_json::from_str::<Value>(&data) {
                    return Ok(message);
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .map_err(|_| anyhow::anyhow!("no event within 10 s"))?
                .ok_or_else(|| anyhow::anyhow!("stream ended"))??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The value of the next `count` log message on the stream.
    async fn next_count(&mut self) -> anyhow::Result<i64> {
        loop {
            let message = self.next_message().await?;
            if message["method"] == "notifications/message" {
                return message["params"]["data"]["count"]
                    .as_i64()
                    .ok_or_else(|| anyhow::anyhow!("not a count: {message}"));
            }
        }
    }
}

/// Subscriptions the gateway's connections hold at the nats-server (its `/connz`).
async fn gateway_subscriptions(c: &Cluster) -> anyhow::Result<u64> {
    let connz: Value = c
        .http
        .get(format!("{}/connz?subs=1&limit=1000", c.nats.monitor))
        .send()
        .await?
        .json()
        .await?;
    let conns = connz["connections"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no connections in {connz}"))?;
    Ok(conns
        .iter()
        .filter(|conn| conn["name"].as_str().is_some_and(|n| n.starts_with("gateway ")))
        .filter_map(|conn| conn["subscriptions"].as_u64())
        .sum())
}

#[actix_rt::test]
async fn session_streams_share_a_subscription_and_get_only_their_own_events() -> anyhow::Result<()> {
    let c = Cluster::start(true).await?;
    let alice = c.issuer.token("alice")?;
    let get = |session: String| c.stream(&c.http, &c.url, &alice, &session).send();
    let count = |session: String, id: u64, by: i64| {
        let call = json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":"count","arguments":{"by":by}}});
        c.post(&alice, Some(&session), &call).send()
    };
    let first = c.open(&alice).await?;
    let before = gateway_subscriptions(&c).await?;
    // A stream costs the gateway no NATS subscription of its own: ten streams add at
    // most the one they share.
    let mut sessions = vec![first];
    for _ in 1..10 {
        sessions.push(c.open(&alice).await?);
    }
    let mut streams = Vec::new();
    for session in &sessions {
        let resp = get(session.clone()).await?;
        assert_eq!(resp.status(), 200);
        streams.push(Events::new(resp));
    }
    let after = gateway_subscriptions(&c).await?;
    assert!(
        after <= before + 1,
        "{before} subscriptions before ten streams, {after} with them"
    );

    // Each stream gets its own session's events, and only those.
    assert_eq!(count(sessions[0].clone(), 1, 1).await?.status(), 200);
    assert_eq!(count(sessions[1].clone(), 2, 5).await?.status(), 200);
    assert_eq!(count(sessions[0].clone(), 3, 1).await?.status(), 200);
    assert_eq!(streams[0].next_count().await?, 1);
    assert_eq!(streams[0].next_count().await?, 2);
    assert_eq!(streams[1].next_count().await?, 5);

    // What was handed to the streams is counted.
    let metrics = c.metrics().await?;
    let delivered = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mcp_gateway_live_events_total{outcome=\"delivered\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(delivered.is_some_and(|n| n >= 3), "{metrics}");
    c.stop().await;
    Ok(())
}

/// The value of the sample `name{labels}` in a `/metrics` text.
fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[actix_rt::test]
async fn http2_clients_multiplex_sessions_and_streams_and_streams_are_bounded() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let issuer = issuer(&nats).await?;
    let mut c = Cluster::start_on(nats, issuer, true, |g| {
        g.max_streams = 2;
        g.sse_keepalive_secs = 1;
        g.allowed_hosts = vec!["localhost".into()];
        g.h2c_listen = Some("127.0.0.1:0".parse().expect("an address"));
    })
    .await?;
    // The HTTP/1.1 port does not speak HTTP/2, the h2c port does (what follows).
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()?;
    assert!(h2c.get(&c.url).send().await.is_err(), "HTTP/2 on the HTTP/1.1 port");
    let h2c_port = c
        .gateway()?
        .h2c_addr
        .ok_or_else(|| anyhow::anyhow!("no h2c listener"))?
        .port();
    c.url = format!("http://localhost:{h2c_port}/mcp");
    let metrics_client = c.http.clone();
    let metrics_url = format!("http://{}/metrics", c.gateway()?.admin_addr);
    let metrics = || async { anyhow::Ok(metrics_client.get(&metrics_url).send().await?.text().await?) };
    // HTTP/2 without TLS, prior knowledge (h2c): every request below shares one connection.
    c.http = h2c;
    let alice = c.issuer.token("alice")?;
    let session = c.open(&alice).await?;
    let resp = c.post(&alice, Some(&session), &add(1)).send().await?;
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await?["result"]["content"][0]["text"], "5");

    // The Host check reads HTTP/2's :authority.
    let elsewhere = c.url.replace("localhost", "127.0.0.1");
    let resp = c
        .http
        .post(&elsewhere)
        .bearer_auth(&alice)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .body(add(2).to_string())
        .send()
        .await?;
    assert_eq!(resp.status(), 403, "{:?}", resp.text().await);

    let get = |session: String| c.stream(&c.http, &c.url, &alice, &session).send();
    let other = c.open(&alice).await?;
    let first = get(session.clone()).await?;
    assert_eq!(
        (first.version(), first.status()),
        (reqwest::Version::HTTP_2, reqwest::StatusCode::OK)
    );
    let mut first = Events::new(first);
    let second = get(other.clone()).await?;
    assert_eq!(second.status(), 200);
    let call = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"count","arguments":{"by":4}}});
    assert_eq!(c.post(&alice, Some(&session), &call).send().await?.status(), 200);
    assert_eq!(first.next_count().await?, 4);

    // GATEWAY_MAX_STREAMS: a third stream is refused, whatever port or connection it
    // comes on.
    let http1_url = c
        .url
        .replace(&format!(":{h2c_port}/"), &format!(":{}/", c.gateway()?.addr.port()));
    let third = c.stream(&metrics_client, &http1_url, &alice, &session).send().await?;
    assert_eq!(third.version(), reqwest::Version::HTTP_11);
    assert_eq!(third.status(), 503);
    assert!(third.headers().contains_key("retry-after"));
    let m = metrics().await?;
    assert_eq!(
        sample(&m, "mcp_gateway_requests_shed_total{by=\"streams\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "mcp_gateway_sse_streams{kind=\"get\"}"), Some(2.0), "{m}");

    // A stream the client cancels (RST_STREAM, the connection stays) gives its place back
    // by its next keep-alive at the latest.
    drop(second);
    let mut freed = false;
    for _ in 0..100 {
        if sample(&metrics().await?, "mcp_gateway_sse_streams{kind=\"get\"}") == Some(1.0) {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "a cancelled HTTP/2 stream still held its place");
    let again = get(other).await?;
    assert_eq!(again.status(), 200);
    drop((first, again));
    c.stop().await;
    Ok(())
}
