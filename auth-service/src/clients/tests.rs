//! Clients against a real nats-server (testkit) and, for metadata documents, a real
//! HTTP server on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use testkit::NatsServer;

use super::*;
use crate::net::{GuardedClient, RateLimiter, TrustedProxies};
use crate::store::{CLIENT_IDLE_MAX_AGE, CLIENTS_BUCKET};

struct Env {
    _nats: NatsServer,
    bucket: Bucket,
    clients: Clients,
}

async fn env_with(config: ClientsConfig, http: GuardedClient) -> Env {
    let nats = NatsServer::start().unwrap();
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let bucket = Bucket::open(
        &js,
        CLIENTS_BUCKET,
        CLIENT_IDLE_MAX_AGE,
        crate::store::DEFAULT_STORE_MAX_BYTES,
        1,
    )
    .await
    .unwrap();
    let clients = Clients::new(bucket.clone(), http, config);
    Env {
        _nats: nats,
        bucket,
        clients,
    }
}

fn config(allow_private: bool) -> ClientsConfig {
    ClientsConfig {
        register_per_minute: 3,
        allow_private_metadata: allow_private,
        supported_scopes: vec!["mcp".into(), "checklist.read".into()],
        machines: Default::default(),
    }
}

async fn env() -> Env {
    env_with(config(false), GuardedClient::new(false).unwrap()).await
}

fn public_meta() -> Value {
    json!({
        "client_name": "MCP Inspector",
        "redirect_uris": ["http://localhost:6274/oauth/callback"],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "scope": "mcp",
        "client_uri": "https://github.com/modelcontextprotocol/inspector",
    })
}

// ---------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------

#[tokio::test]
async fn register_public_client_with_none() {
    let env = env().await;
    let resp = env.clients.register(&public_meta()).await.unwrap();
    let id = resp["client_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with(CLIENT_ID_PREFIX));
    assert!(resp.get("client_secret").is_none());
    assert!(resp.get("client_secret_expires_at").is_none());
    assert!(resp["client_id_issued_at"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(resp["token_endpoint_auth_method"], "none");
    assert_eq!(resp["redirect_uris"], json!(["http://localhost:6274/oauth/callback"]));
    assert_eq!(resp["grant_types"], json!(["authorization_code", "refresh_token"]));
    assert_eq!(resp["scope"], "mcp");
    assert_eq!(resp["client_name"], "MCP Inspector");

    let got = env.clients.get(&id).await.unwrap().unwrap();
    assert!(got.is_public() && !got.metadata_document && got.client_secret_hash.is_none());
    assert_eq!(
        got.client_uri.as_deref(),
        Some("https://github.com/modelcontextprotocol/inspector")
    );
    // A public client authenticates with its id alone.
    let ok = env.clients.authenticate(&id, None, AuthMethod::None).await.unwrap();
    assert_eq!(ok.client_id, id);
}

#[tokio::test]
async fn register_confidential_client_gets_a_secret_that_authenticates() {
    let env = env().await;
    let meta = json!({
        "redirect_uris": ["https://app.example/cb"],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "client_secret_post",
    });
    let resp = env.clients.register(&meta).await.unwrap();
    let id = resp["client_id"].as_str().unwrap();
    let secret = resp["client_secret"].as_str().unwrap();
    assert!(secret.len() >= 43);
    assert_eq!(resp["client_secret_expires_at"], 0);

    // Stored: the hash, never the secret.
    let (stored, _) = env.bucket.get::<ClientRecord>(id).await.unwrap().unwrap();
    let hash = stored.client_secret_hash.clone().unwrap();
    assert_ne!(hash, secret);
    assert_eq!(hash, crate::crypto::sha256_b64(secret));
    let raw = env.bucket.raw().get(id).await.unwrap().unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains(secret));
    assert!(!format!("{stored:?}").contains(&hash), "Debug leaves the hash out");

    let ok = env
        .clients
        .authenticate(id, Some(secret), AuthMethod::ClientSecretPost)
        .await
        .unwrap();
    assert!(ok.allows_grant("refresh_token"));
    assert!(!ok.allows_grant("client_credentials") && !ok.machine && !ok.introspect);
}

#[tokio::test]
async fn registration_never_makes_a_machine_client() {
    let env = env().await;
    for method in ["client_secret_post", "client_secret_basic", "none"] {
        let meta = json!({"grant_types": ["client_credentials"], "token_endpoint_auth_method": method});
        let e = env.clients.register(&meta).await.unwrap_err();
        assert_eq!(e.oauth_code(), "invalid_client_metadata", "{method}: {e}");
    }
}

#[tokio::test]
async fn machine_clients_come_from_the_operator_file() {
    let (secret, entry) = super::machine::new_entry("m_nightly", Some("mcp"), false, true);
    let mut cfg = config(false);
    cfg.machines = super::machine::MachineClients::parse(&json!([entry]).to_string(), &cfg.supported_scopes).unwrap();
    let env = env_with(cfg, GuardedClient::new(false).unwrap()).await;
    let c = env
        .clients
        .authenticate("m_nightly", Some(&secret), AuthMethod::ClientSecretBasic)
        .await
        .unwrap();
    assert!(c.machine && c.allows_grant("client_credentials"));
    let e = env
        .clients
        .authenticate("m_nightly", Some("wrong"), AuthMethod::ClientSecretBasic)
        .await
        .unwrap_err();
    assert_eq!(e.oauth_code(), "invalid_client");
    // Nothing of it is written to the bucket (touch is a no-op for it).
    env.clients.touch(&c).await.unwrap();
    assert!(env.bucket.get::<ClientRecord>("m_nightly").await.unwrap().is_none());
}

#[tokio::test]
async fn register_defaults_to_client_secret_basic() {
    let env = env().await;
    let resp = env
        .clients
        .register(&json!({"redirect_uris": ["https://app.example/cb"]}))
        .await
        .unwrap();
    assert_eq!(resp["token_endpoint_auth_method"], "client_secret_basic");
    let secret = resp["client_secret"].as_str().unwrap();
    let id = resp["client_id"].as_str().unwrap();
    env.clients
        .authenticate(id, Some(secret), AuthMethod::ClientSecretBasic)
        .await
        .unwrap();
}

#[tokio::test]
async fn register_rejections() {
    let env = env().await;
    let r = json!(["https://app.example/cb"]);
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"redirect_uris": ["http://app.example/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["https://app.example/cb#frag"]}),
            "invalid_redirect_uri",
        ),
        (json!({"redirect_uris": ["/cb"]}), "invalid_redirect_uri"),
        (
            json!({"redirect_uris": ["javascript:alert(document.cookie)"]}),
            "invalid_redirect_uri",
        ),
        (json!({"client_name": "no redirect"}), "invalid_redirect_uri"),
        (
            json!({"redirect_uris": r, "grant_types": ["implicit"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": r, "grant_types": ["urn:ietf:params:oauth:grant-type:device_code"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": r, "response_types": ["token"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": r, "token_endpoint_auth_method": "private_key_jwt"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": r, "token_endpoint_auth_method": "none", "grant_types": ["client_credentials"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": r, "scope": "mcp admin"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": r, "client_name": "n".repeat(500)}),
            "invalid_client_metadata",
        ),
        (json!(["not", "an", "object"]), "invalid_client_metadata"),
    ];
    for (meta, code) in cases {
        let e = env.clients.register(&meta).await.unwrap_err();
        assert_eq!(e.oauth_code(), code, "{meta}: {e}");
        assert_eq!(e.status(), 400);
    }
    // Nothing was stored.
    let keys = env.bucket.raw().keys().await.unwrap();
    use futures::StreamExt;
    assert_eq!(keys.count().await, 0);
}

// ---------------------------------------------------------------------------
// Redirect URIs
// ---------------------------------------------------------------------------

fn record_with(uris: &[&str]) -> ClientRecord {
    ClientRecord {
        client_id: "c_test".into(),
        client_secret_hash: None,
        client_name: None,
        redirect_uris: uris.iter().map(|s| (*s).to_owned()).collect(),
        grant_types: vec!["authorization_code".into()],
        response_types: vec!["code".into()],
        token_endpoint_auth_method: AuthMethod::None,
        scope: None,
        client_uri: None,
        logo_uri: None,
        software_id: None,
        software_version: None,
        created_at: 0,
        last_used_at: 0,
        metadata_document: false,
        machine: false,
        introspect: false,
    }
}

#[test]
fn redirect_matching_exact_and_loopback_any_port() {
    let c = record_with(&[
        "https://app.example/cb",
        "http://127.0.0.1:3000/callback?x=1",
        "http://[::1]/cb",
        "http://localhost:6274/oauth/callback",
        "com.example.app:/oauth",
    ]);
    // Exact.
    for ok in [
        "https://app.example/cb",
        "http://127.0.0.1:3000/callback?x=1",
        "com.example.app:/oauth",
    ] {
        assert!(redirect_uri_allowed(&c, ok), "{ok}");
    }
    // Loopback: any port, same scheme/host/path/query.
    for ok in [
        "http://127.0.0.1:51234/callback?x=1",
        "http://127.0.0.1/callback?x=1",
        "http://[::1]:8080/cb",
        "http://localhost:1234/oauth/callback",
    ] {
        assert!(redirect_uri_allowed(&c, ok), "{ok}");
    }
    for bad in [
        // non-loopback: exact only
        "https://app.example:8443/cb",
        "https://app.example/cb/",
        "https://app.example/CB",
        "https://app.example/cb?x=1",
        "https://evil.example/cb",
        // loopback but something other than the port differs
        "http://127.0.0.1:3000/callback",
        "http://127.0.0.1:3000/callback?x=2",
        "http://127.0.0.1:3000/other?x=1",
        "https://127.0.0.1:3000/callback?x=1",
        "http://localhost:3000/callback?x=1",
        "http://127.0.0.1:3000/callback?x=1#f",
        "http://user@127.0.0.1:3000/callback?x=1",
        "http://127.0.0.1:3000/a/../callback?x=1",
        "http://[::1]:8080/cb/",
        "http://localhost:1234/oauth/callback/../callback",
        "com.example.app:/oauth2",
    ] {
        assert!(!redirect_uri_allowed(&c, bad), "{bad}");
    }
}

// ---------------------------------------------------------------------------
// Authentication, touch
// ---------------------------------------------------------------------------

#[tokio::test]
async fn authenticate_refusals() {
    let env = env().await;
    let conf = env
        .clients
        .register(&json!({"redirect_uris": ["https://app.example/cb"]}))
        .await
        .unwrap();
    let conf_id = conf["client_id"].as_str().unwrap();
    let secret = conf["client_secret"].as_str().unwrap();
    let public = env.clients.register(&public_meta()).await.unwrap();
    let public_id = public["client_id"].as_str().unwrap();

    let refused = |r: Result<ClientRecord, ClientError>| {
        let e = r.unwrap_err();
        assert_eq!((e.oauth_code(), e.status()), ("invalid_client", 401), "{e}");
        assert!(!e.to_string().contains(secret) && !e.description().contains(secret));
    };
    let basic = AuthMethod::ClientSecretBasic;
    refused(env.clients.authenticate(conf_id, Some("wrong"), basic).await);
    refused(env.clients.authenticate(conf_id, Some(&secret[1..]), basic).await);
    refused(env.clients.authenticate(conf_id, None, basic).await);
    refused(env.clients.authenticate(conf_id, None, AuthMethod::None).await);
    // Right secret, wrong method.
    refused(
        env.clients
            .authenticate(conf_id, Some(secret), AuthMethod::ClientSecretPost)
            .await,
    );
    // A public client must not present a secret, by any method.
    refused(
        env.clients
            .authenticate(public_id, Some("anything"), AuthMethod::ClientSecretPost)
            .await,
    );
    refused(env.clients.authenticate(public_id, Some("anything"), basic).await);
    refused(env.clients.authenticate(public_id, None, basic).await);
    // Unknown ids.
    refused(
        env.clients
            .authenticate("c_00000000000000000000000000000000", None, AuthMethod::None)
            .await,
    );
    refused(env.clients.authenticate("not a key!", None, AuthMethod::None).await);
    refused(env.clients.authenticate("", None, AuthMethod::None).await);
    // A URL id that is not a valid metadata document URL.
    refused(
        env.clients
            .authenticate("https://app.example/", None, AuthMethod::None)
            .await,
    );
}

#[tokio::test]
async fn touch_rewrites_at_most_once_a_day() {
    let env = env().await;
    let resp = env.clients.register(&public_meta()).await.unwrap();
    let id = resp["client_id"].as_str().unwrap();
    let (fresh, rev) = env.bucket.get::<ClientRecord>(id).await.unwrap().unwrap();
    env.clients.touch(&fresh).await.unwrap();
    let (_, rev_after) = env.bucket.get::<ClientRecord>(id).await.unwrap().unwrap();
    assert_eq!(rev, rev_after, "used today: not rewritten");

    let mut old = fresh.clone();
    old.last_used_at -= 2 * TOUCH_INTERVAL.as_secs();
    env.bucket.put(id, &old).await.unwrap();
    env.clients.touch(&old).await.unwrap();
    let (touched, rev2) = env.bucket.get::<ClientRecord>(id).await.unwrap().unwrap();
    assert!(touched.last_used_at >= fresh.last_used_at);
    // The caller's stale copy cannot cause a second write.
    env.clients.touch(&old).await.unwrap();
    let (_, rev3) = env.bucket.get::<ClientRecord>(id).await.unwrap().unwrap();
    assert_eq!(rev2, rev3);
}

// ---------------------------------------------------------------------------
// POST /register
// ---------------------------------------------------------------------------

async fn call_register(
    env_clients: &web::Data<Clients>,
    limiter: &web::Data<RateLimiter>,
    content_type: &str,
    body: &str,
    peer: &str,
) -> (u16, actix_web::http::header::HeaderMap, Value) {
    let req = actix_web::test::TestRequest::post()
        .uri("/register")
        .insert_header(("Content-Type", content_type))
        .peer_addr(peer.parse().unwrap())
        .to_http_request();
    let trusted = web::Data::new(TrustedProxies::parse("127.0.0.1").unwrap());
    let res = register_handler(
        req,
        web::Bytes::from(body.to_owned()),
        env_clients.clone(),
        limiter.clone(),
        trusted,
    )
    .await;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = actix_web::body::to_bytes(res.into_body()).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, json)
}

#[tokio::test]
async fn register_handler_statuses_and_rate_limit() {
    let env = env().await;
    let limiter = web::Data::new(env.clients.register_limiter());
    let clients = web::Data::new(env.clients);
    let body = public_meta().to_string();

    let (status, headers, json) =
        call_register(&clients, &limiter, "application/json", &body, "198.51.100.1:1000").await;
    assert_eq!(status, 201);
    assert_eq!(headers.get("cache-control").unwrap(), "no-store");
    assert_eq!(headers.get("access-control-allow-origin").unwrap(), "*");
    assert!(json["client_id"].is_string());

    let (status, headers, json) = call_register(&clients, &limiter, "text/plain", &body, "198.51.100.2:1000").await;
    assert_eq!((status, json["error"].as_str()), (415, Some("invalid_request")));
    assert_eq!(headers.get("cache-control").unwrap(), "no-store");

    let (status, _, json) = call_register(
        &clients,
        &limiter,
        "application/json; charset=utf-8",
        "{not json",
        "198.51.100.3:1000",
    )
    .await;
    assert_eq!((status, json["error"].as_str()), (400, Some("invalid_client_metadata")));
    assert!(json["error_description"].is_string());

    let big = format!("{{\"client_name\": \"{}\"}}", "x".repeat(MAX_REGISTRATION_BYTES));
    let (status, _, json) = call_register(&clients, &limiter, "application/json", &big, "198.51.100.4:1000").await;
    assert_eq!((status, json["error"].as_str()), (400, Some("invalid_client_metadata")));

    let bad = json!({"redirect_uris": ["http://evil.example/cb"]}).to_string();
    let (status, _, json) = call_register(&clients, &limiter, "application/json", &bad, "198.51.100.5:1000").await;
    assert_eq!((status, json["error"].as_str()), (400, Some("invalid_redirect_uri")));

    // The limit is 3 a minute per source: the 4th is refused, others still pass.
    for _ in 0..3 {
        let (status, _, _) = call_register(&clients, &limiter, "application/json", &body, "203.0.113.7:1").await;
        assert_eq!(status, 201);
    }
    let (status, headers, json) = call_register(&clients, &limiter, "application/json", &body, "203.0.113.7:2").await;
    assert_eq!(status, 429);
    assert_eq!(json["error"], "temporarily_unavailable");
    assert_eq!(headers.get("retry-after").unwrap(), "20");
    let (status, _, _) = call_register(&clients, &limiter, "application/json", &body, "203.0.113.8:1").await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn register_preflight_allows_cross_origin_json() {
    let res = register_preflight().await;
    assert_eq!(res.status().as_u16(), 204);
    assert_eq!(res.headers().get("access-control-allow-origin").unwrap(), "*");
    assert!(
        res.headers()
            .get("access-control-allow-headers")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("content-type")
    );
}

// ---------------------------------------------------------------------------
// Client ID Metadata Documents
// ---------------------------------------------------------------------------

/// A document server on 127.0.0.1:0. Each path serves a variant; requests are counted.
struct DocServer {
    port: u16,
    hits: Arc<AtomicUsize>,
    handle: actix_web::dev::ServerHandle,
}

impl DocServer {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn document(req: HttpRequest, hits: web::Data<AtomicUsize>) -> HttpResponse {
    hits.fetch_add(1, Ordering::SeqCst);
    let own = format!("http://{}{}", req.connection_info().host(), req.path());
    let doc = |extra: Value| {
        let mut d = json!({
            "client_id": own,
            "client_name": "Doc Client",
            "redirect_uris": ["http://127.0.0.1/callback", "https://doc.example/cb"],
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none",
        });
        if let (Value::Object(d), Value::Object(e)) = (&mut d, extra) {
            d.extend(e);
        }
        d
    };
    let json_ok = |v: Value| {
        HttpResponse::Ok()
            .insert_header(("Cache-Control", "public, max-age=600"))
            .json(v)
    };
    match req.path() {
        "/good" | "/good2" => json_ok(doc(json!({}))),
        "/mismatch" => json_ok(doc(json!({"client_id": "https://other.example/client"}))),
        "/large" => json_ok(doc(json!({"padding": "x".repeat(6000)}))),
        "/notjson" => HttpResponse::Ok()
            .content_type("application/json")
            .body("<html>hi</html>"),
        "/html" => HttpResponse::Ok().content_type("text/html").body("{}"),
        "/array" => json_ok(json!([1, 2])),
        "/secret" => json_ok(doc(json!({"client_secret": "shh"}))),
        "/secret-expiry" => json_ok(doc(json!({"client_secret_expires_at": 0}))),
        "/basic" => json_ok(doc(json!({"token_endpoint_auth_method": "client_secret_basic"}))),
        "/badredirect" => json_ok(doc(json!({"redirect_uris": ["http://evil.example/cb"]}))),
        "/ccgrant" => json_ok(doc(json!({"grant_types": ["client_credentials"]}))),
        "/redirect" => HttpResponse::Found().insert_header(("Location", "/good")).finish(),
        _ => HttpResponse::NotFound().finish(),
    }
}

fn doc_server() -> DocServer {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = web::Data::new(AtomicUsize::new(0));
    let counter = hits.clone().into_inner();
    let server = HttpServer::new(move || App::new().app_data(hits.clone()).default_service(web::to(document)))
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    DocServer {
        port,
        hits: counter,
        handle,
    }
}

async fn private_env() -> Env {
    env_with(config(true), GuardedClient::new(true).unwrap()).await
}

#[actix_web::test]
async fn cimd_good_document_is_a_cached_public_client() {
    let srv = doc_server();
    let env = private_env().await;
    let id = srv.url("/good");
    let c = env.clients.get(&id).await.unwrap().unwrap();
    assert!(c.metadata_document && c.is_public() && c.client_secret_hash.is_none());
    assert_eq!(c.client_id, id);
    assert_eq!(c.client_name.as_deref(), Some("Doc Client"));
    assert_eq!(c.response_types, vec!["code"]);
    assert!(redirect_uri_allowed(&c, "http://127.0.0.1:49152/callback"));
    assert!(redirect_uri_allowed(&c, "https://doc.example/cb"));
    assert!(!redirect_uri_allowed(&c, "https://doc.example/other"));
    assert_eq!(srv.hits(), 1);

    // Cached: neither get nor authenticate fetches again; nothing is stored in KV.
    env.clients.get(&id).await.unwrap().unwrap();
    env.clients.authenticate(&id, None, AuthMethod::None).await.unwrap();
    assert_eq!(srv.hits(), 1);
    assert_eq!(env.clients.documents.fetch_count.load(Ordering::SeqCst), 1);
    use futures::StreamExt;
    assert_eq!(env.bucket.raw().keys().await.unwrap().count().await, 0);
    // touch is a no-op for documents.
    env.clients.touch(&c).await.unwrap();

    // A secret for a document client is refused.
    let e = env
        .clients
        .authenticate(&id, Some("x"), AuthMethod::ClientSecretPost)
        .await
        .unwrap_err();
    assert_eq!(e.oauth_code(), "invalid_client");

    // Another URL is another fetch.
    env.clients.get(&srv.url("/good2")).await.unwrap().unwrap();
    assert_eq!(srv.hits(), 2);
    srv.handle.stop(false).await;
}

#[actix_web::test]
async fn cimd_bad_documents_are_refused_and_briefly_cached() {
    let srv = doc_server();
    let env = private_env().await;
    let cases = [
        ("/mismatch", "does not equal"),
        ("/large", "larger than"),
        ("/notjson", "not valid JSON"),
        ("/html", "content type"),
        ("/array", "JSON object"),
        ("/secret", "client secret"),
        ("/secret-expiry", "client secret"),
        ("/basic", "token_endpoint_auth_method must be none"),
        ("/badredirect", "http is only allowed"),
        ("/ccgrant", "client_credentials"),
        ("/redirect", "HTTP 302"),
        ("/missing", "HTTP 404"),
    ];
    for (path, why) in cases {
        let before = srv.hits();
        let e = env.clients.get(&srv.url(path)).await.unwrap_err();
        assert!(matches!(e, ClientError::MetadataDocument(_)), "{path}: {e:?}");
        assert_eq!(e.oauth_code(), "invalid_client");
        assert!(e.description().contains(why), "{path}: {}", e.description());
        assert_eq!(srv.hits(), before + 1, "{path}: fetched once");
        // The failure is remembered: no second fetch.
        let again = env.clients.get(&srv.url(path)).await.unwrap_err();
        assert_eq!(again, e);
        assert_eq!(srv.hits(), before + 1, "{path}: negative result cached");
    }
    // The redirect was not followed (only /redirect itself was requested).
    srv.handle.stop(false).await;
}

#[actix_web::test]
async fn cimd_url_shape_refused_without_fetching() {
    let srv = doc_server();
    let env = private_env().await;
    for bad in [
        format!("{}#frag", srv.url("/good")),
        srv.url("/"),
        srv.url("/a/../good"),
        format!("http://user:pw@127.0.0.1:{}/good", srv.port),
        format!("ftp://127.0.0.1:{}/good", srv.port),
    ] {
        let e = env.clients.get(&bad).await.unwrap_err();
        assert!(matches!(e, ClientError::MetadataDocument(_)), "{bad}: {e:?}");
    }
    assert_eq!(srv.hits(), 0);
    srv.handle.stop(false).await;
}

#[actix_web::test]
async fn cimd_ssrf_refused_without_a_request() {
    let srv = doc_server();
    // Production settings: https only, public addresses only. "rebind.test" resolves
    // to loopback, as a rebinding attacker's name would.
    let http = GuardedClient::with_fixed_hosts(false, &[("rebind.test", "127.0.0.1".parse().unwrap())]).unwrap();
    let env = env_with(config(false), http).await;
    let port = srv.port;
    for id in [
        format!("http://127.0.0.1:{port}/good"),
        format!("https://127.0.0.1:{port}/good"),
        format!("https://10.0.0.1:{port}/good"),
        format!("https://[::1]:{port}/good"),
        format!("https://localhost:{port}/good"),
        format!("https://rebind.test:{port}/good"),
        "https://169.254.169.254/latest/meta-data".to_owned(),
    ] {
        let e = env.clients.get(&id).await.unwrap_err();
        assert!(matches!(e, ClientError::MetadataDocument(_)), "{id}: {e:?}");
    }
    assert_eq!(srv.hits(), 0, "no request reached the server");
    // The system resolver refuses localhost as well.
    let env = env_with(config(false), GuardedClient::new(false).unwrap()).await;
    let e = env
        .clients
        .get(&format!("https://localhost:{port}/good"))
        .await
        .unwrap_err();
    assert!(e.description().contains("no public address"), "{}", e.description());
    assert_eq!(srv.hits(), 0);
    srv.handle.stop(false).await;
}
