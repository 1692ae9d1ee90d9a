//! OAuth path forwarding: the gateway in front of a small actix-web server
//! standing in for the auth-service, on loopback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use testkit::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Cluster, issuer};

/// A request as the stand-in received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// The stand-in auth-service: records every request, answers by path.
struct StandIn {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    handle: actix_web::dev::ServerHandle,
}

impl StandIn {
    async fn start() -> anyhow::Result<Self> {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let data = web::Data::from(seen.clone());
        let server = HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(answer)))
            .workers(1)
            .disable_signals()
            .bind(("127.0.0.1", 0))?;
        let url = format!("http://{}", server.addrs()[0]);
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Ok(Self { url, seen, handle })
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().filter(|s| s.path == path).cloned().collect()
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

async fn answer(req: HttpRequest, body: web::Bytes, seen: web::Data<Mutex<Vec<Seen>>>) -> HttpResponse {
    let mut headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    headers.sort();
    seen.lock().unwrap_or_else(|e| e.into_inner()).push(Seen {
        method: req.method().to_string(),
        path: req.path().to_owned(),
        query: req.query_string().to_owned(),
        body: body.to_vec(),
        headers,
    });
    match req.path() {
        "/authorize" => HttpResponse::Found()
            // Relative: a client that followed it would come back to the stand-in.
            .insert_header(("Location", "/followed?step=2"))
            .append_header(("Set-Cookie", "mcp_tx=t1; Path=/; HttpOnly; SameSite=Lax"))
            .append_header(("Set-Cookie", "mcp_approved=a1; Path=/; HttpOnly; SameSite=Lax"))
            .insert_header(("Keep-Alive", "timeout=99"))
            .insert_header(("Proxy-Authenticate", "Basic realm=\"x\""))
            .insert_header(("Cache-Control", "no-store"))
            .finish(),
        "/token" | "/register" => HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(json!({"access_token": "opaque", "token_type": "Bearer"})),
        p if p.starts_with("/.well-known/oauth-authorization-server") => {
            HttpResponse::Ok().json(json!({"issuer": "http://localhost:8788", "path": p}))
        }
        _ => HttpResponse::NotFound().json(json!({"error": "not_found"})),
    }
}

/// A cluster (no worker: these requests never reach NATS) whose gateway forwards
/// to `upstream`.
async fn cluster(upstream: &str) -> anyhow::Result<Cluster> {
    let upstream = upstream.to_owned();
    let nats = NatsServer::start()?;
    let issuer = issuer(&nats).await?;
    Cluster::start_on(nats, issuer, false, move |config| {
        config.auth_upstream = upstream;
    })
    .await
}

fn no_redirects() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

#[actix_rt::test]
async fn oauth_paths_reach_the_upstream_with_method_path_query_body_and_headers() -> anyhow::Result<()> {
    let up = StandIn::start().await?;
    let c = cluster(&up.url).await?;
    let origin = c.origin()?;
    let http = no_redirects()?;
    let form = "grant_type=authorization_code&code=abc&code_verifier=v";
    let resp = http
        .post(format!("{origin}/token?x=1&y=a%20b"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Authorization", "Basic Y2xpZW50OnNlY3JldA==")
        .header("Cookie", "mcp_tx=t1")
        // A browser-based client on any origin may call the token endpoint.
        .header("Origin", "https://any-client.example")
        .header("X-Forwarded-For", "203.0.113.9")
        .header("X-Forwarded-Host", "spoofed.example")
        .header("X-Forwarded-Proto", "https")
        .header("Proxy-Authorization", "Basic eDp5")
        .header("Keep-Alive", "timeout=5")
        .header("Connection", "keep-alive, X-Hop")
        .header("X-Hop", "1")
        .body(form)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.json::<Value>().await?["access_token"], "opaque");

    let seen = up.seen("/token");
    assert_eq!(seen.len(), 1, "{seen:?}");
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.query, "x=1&y=a%20b");
    assert_eq!(s.body, form.as_bytes());
    assert_eq!(s.header("content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(s.header("authorization"), Some("Basic Y2xpZW50OnNlY3JldA=="));
    assert_eq!(s.header("cookie"), Some("mcp_tx=t1"));
    assert_eq!(s.header("origin"), Some("https://any-client.example"));
    // The client is not a trusted proxy: its own X-Forwarded-For is dropped, so it
    // cannot pose as another address to the auth-service's per-address limits.
    assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(s.header("x-forwarded-host"), Some(origin.trim_start_matches("http://")));
    assert_eq!(s.header("x-forwarded-proto"), Some("http"));
    for hop in ["proxy-authorization", "keep-alive", "x-hop"] {
        assert!(s.header(hop).is_none(), "{hop} reached the upstream: {s:?}");
    }

    // Any method, and anything below the metadata prefixes.
    let resp = http
        .get(format!("{origin}/.well-known/oauth-authorization-server/tenant?q=1"))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await?["path"],
        "/.well-known/oauth-authorization-server/tenant"
    );
    let resp = http
        .request(reqwest::Method::OPTIONS, format!("{origin}/register"))
        .header("Origin", "https://any-client.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(up.seen("/register")[0].method, "OPTIONS");

    // The gateway's own documents and endpoints stay the gateway's.
    let resp = http
        .get(format!("{origin}/.well-known/oauth-protected-resource/mcp"))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await?["resource"], super::RESOURCE);
    let resp = http.get(format!("{origin}/tokens")).send().await?;
    assert_eq!(resp.status(), 404);
    assert!(up.seen("/tokens").is_empty());
    assert!(up.seen("/.well-known/oauth-protected-resource/mcp").is_empty());

    let metrics = c.metrics().await?;
    assert!(
        metrics.contains(r#"mcp_gateway_requests_total{mcp_method="none",route="oauth_forward",status="200"} 3"#),
        "{metrics}"
    );
    c.stop().await;
    up.stop().await;
    Ok(())
}

#[actix_rt::test]
async fn redirects_and_cookies_come_back_untouched_and_unfollowed() -> anyhow::Result<()> {
    let up = StandIn::start().await?;
    let c = cluster(&up.url).await?;
    let http = no_redirects()?;

    // What the stand-in itself sends, so the assertions below mean something.
    let direct = http.get(format!("{}/authorize", up.url)).send().await?;
    assert!(direct.headers().contains_key("keep-alive") && direct.headers().contains_key("proxy-authenticate"));

    let resp = http
        .get(format!("{}/authorize?client_id=c1&state=s%2F1", c.origin()?))
        // The consent flow runs in a browser, from the gateway's own origin or none.
        .header("Origin", "https://elsewhere.example")
        .send()
        .await?;
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], "/followed?step=2");
    let cookies: Vec<&str> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(
        cookies,
        vec![
            "mcp_tx=t1; Path=/; HttpOnly; SameSite=Lax",
            "mcp_approved=a1; Path=/; HttpOnly; SameSite=Lax"
        ]
    );
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert!(resp.headers().get("keep-alive").is_none());
    assert!(resp.headers().get("proxy-authenticate").is_none());
    assert_eq!(
        up.seen("/authorize").last().map(|s| s.query.clone()),
        Some("client_id=c1&state=s%2F1".into())
    );
    assert!(up.seen("/followed").is_empty(), "the gateway followed the redirect");
    c.stop().await;
    up.stop().await;
    Ok(())
}

#[actix_rt::test]
async fn oversized_body_is_413_and_never_forwarded() -> anyhow::Result<()> {
    let up = StandIn::start().await?;
    let c = cluster(&up.url).await?;
    // The cluster's gateway takes at most 65536 bytes.
    let resp = no_redirects()?
        .post(format!("{}/register", c.origin()?))
        .header("Content-Type", "application/json")
        .body(json!({"client_name": "x".repeat(70_000)}).to_string())
        .send()
        .await?;
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.json::<Value>().await?["error"], "invalid_request");
    assert!(up.seen("/register").is_empty());
    c.stop().await;
    up.stop().await;
    Ok(())
}

#[actix_rt::test]
async fn upstream_down_is_a_502_with_an_oauth_error() -> anyhow::Result<()> {
    // A port nobody listens on any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let upstream = format!("http://{}", closed.local_addr()?);
    drop(closed);
    let c = cluster(&upstream).await?;
    let resp = no_redirects()?
        .post(format!("{}/token", c.origin()?))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await?;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert!(resp.headers()["content-type"].to_str()?.starts_with("application/json"));
    let body: Value = resp.json().await?;
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(
        body["error_description"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    c.stop().await;
    Ok(())
}

/// Send one raw HTTP/1.1 request (paths a URL library would normalise) and
/// return the status code.
async fn raw_status(addr: std::net::SocketAddr, head: &str) -> anyhow::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(head.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line in {text:?}"))?;
    Ok(status)
}

#[actix_rt::test]
async fn foreign_hosts_and_dot_segments_are_refused() -> anyhow::Result<()> {
    let up = StandIn::start().await?;
    let c = cluster(&up.url).await?;
    let addr = c.gateway()?.addr;
    // DNS rebinding: the Host allow-list applies to forwarded paths too.
    let status = raw_status(
        addr,
        "GET /authorize HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert_eq!(status, 403);
    // Dot segments would climb out of the forwarded prefix upstream.
    for path in [
        "/.well-known/oauth-authorization-server/../../admin",
        "/.well-known/openid-configuration/%2e%2e/%2E%2E/admin",
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        assert_eq!(raw_status(addr, &head).await?, 400, "{path}");
    }
    let seen = up.seen.lock().unwrap_or_else(|e| e.into_inner()).len();
    assert_eq!(seen, 0, "nothing reached the upstream");
    c.stop().await;
    up.stop().await;

    // Forwarding is off unless configured: the paths are not the gateway's.
    let c = Cluster::start(false).await?;
    let resp = no_redirects()?.get(format!("{}/authorize", c.origin()?)).send().await?;
    assert_eq!(resp.status(), 404);
    c.stop().await;
    Ok(())
}
