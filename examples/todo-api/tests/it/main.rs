//! The Todo API in-process against a real nats-server and two real issuers: actix-web
//! servers on loopback that serve OpenID Connect discovery and a JWKS with one Ed25519
//! key, whose private key the tests sign access tokens with. Driven with reqwest.
//!
//! The keys under `testdata/` were made for these tests with `openssl genpkey
//! -algorithm ed25519`; they sign nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod store;
mod todos;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpResponse, HttpServer, web};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::NatsServer;
use todo_api::{Config, TodoApi};

const ISSUER_A_PEM: &[u8] = include_bytes!("testdata/issuer-a.pem");
const ISSUER_B_PEM: &[u8] = include_bytes!("testdata/issuer-b.pem");
const FORGER_PEM: &[u8] = include_bytes!("testdata/forger.pem");
const AUDIENCE: &str = "http://localhost:8791/todos";
const KID: &str = "test-key";
const BOTH: &str = "todo:read todo:write";
/// Bound on every HTTP exchange of a test.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An OpenID provider reduced to what a resource server fetches.
struct Issuer {
    url: String,
    key: EncodingKey,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Issuer {
    async fn start(pem: &[u8]) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let key = EncodingKey::from_ed_pem(pem).unwrap();
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::EdDSA).unwrap();
        jwk.common.key_id = Some(KID.into());
        let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/jwks.json")});
        let jwks = json!({"keys": [jwk]});
        let server = HttpServer::new(move || {
            let (discovery, jwks) = (discovery.clone(), jwks.clone());
            App::new()
                .route(
                    "/.well-known/openid-configuration",
                    web::get().to(move || {
                        let body = discovery.clone();
                        async move { HttpResponse::Ok().json(body) }
                    }),
                )
                .route(
                    "/jwks.json",
                    web::get().to(move || {
                        let body = jwks.clone();
                        async move { HttpResponse::Ok().json(body) }
                    }),
                )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        Self {
            url,
            key,
            handle,
            task: tokio::spawn(server),
        }
    }

    /// Claims of a good access token for `sub` with `scope`.
    fn claims(&self, sub: &str, scope: &str) -> Value {
        json!({
            "iss": self.url, "sub": sub, "aud": AUDIENCE, "scope": scope,
            "iat": now(), "exp": now() + 300, "client_id": "mcp-server",
        })
    }

    /// A good access token (`typ: at+jwt`).
    fn token(&self, sub: &str, scope: &str) -> String {
        self.sign(&self.claims(sub, scope))
    }

    fn sign(&self, claims: &Value) -> String {
        sign_with(&self.key, Some("at+jwt"), claims)
    }

    async fn stop(self) {
        self.handle.stop(false).await;
        let _ = self.task.await;
    }
}

fn sign_with(key: &EncodingKey, typ: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(KID.into());
    header.typ = typ.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A nats-server, issuers A and B (both allowed), and the API; the client to call it.
struct Harness {
    _nats: NatsServer,
    a: Issuer,
    b: Issuer,
    api: TodoApi,
    http: reqwest::Client,
}

/// What a call returned; `body` is `Null` when empty.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn challenge(&self) -> Option<&str> {
        self.headers.get("www-authenticate").and_then(|v| v.to_str().ok())
    }

    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let nats = NatsServer::start().unwrap();
        let (a, b) = (Issuer::start(ISSUER_A_PEM).await, Issuer::start(ISSUER_B_PEM).await);
        let mut config = Config::for_test(&nats.url, vec![a.url.clone(), b.url.clone()], AUDIENCE);
        tweak(&mut config);
        let api = todo_api::start(config).await.unwrap();
        let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build().unwrap();
        Self {
            _nats: nats,
            a,
            b,
            api,
            http,
        }
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut req = self.http.request(method, format!("http://{}{path}", self.api.addr));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{path}: body is not JSON: {e}"))
        };
        Reply { status, headers, body }
    }

    async fn list(&self, token: &str) -> Vec<Value> {
        let reply = self.call(Method::GET, "/todos", Some(token), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body["todos"].as_array().unwrap().clone()
    }

    async fn create(&self, token: &str, title: &str) -> Value {
        let reply = self
            .call(Method::POST, "/todos", Some(token), Some(json!({ "title": title })))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body
    }

    async fn finish(self) {
        self.api.shutdown().await;
        self.a.stop().await;
        self.b.stop().await;
    }
}
