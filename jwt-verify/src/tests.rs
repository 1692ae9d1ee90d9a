//! The cache and the fetch against a real HTTP server on 127.0.0.1:0: a few lines of
//! HTTP/1.1 over a tokio listener that serves whatever the test puts in its routes and
//! counts the requests.
//!
//! The keys under `testdata/` are throw-away keys made for these tests with
//! `openssl genpkey`; they sign nothing outside this crate's tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{EncodingKey, Header};
use reqwest::Url;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const ED_PEM: &[u8] = include_bytes!("testdata/ed25519.pem");
const ED_OTHER_PEM: &[u8] = include_bytes!("testdata/ed25519-other.pem");

#[derive(Clone)]
enum Reply {
    Json(Value),
    Status(u16),
    Raw(&'static str),
    Redirect(String),
    /// Accept and answer nothing for a long while.
    Hang,
}

#[derive(Default)]
struct Routes {
    replies: HashMap<String, Reply>,
    hits: HashMap<String, usize>,
    user_agents: Vec<Option<String>>,
}

#[derive(Clone)]
struct Server {
    origin: String,
    routes: Arc<Mutex<Routes>>,
}

impl Server {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let routes = Arc::new(Mutex::new(Routes::default()));
        let shared = routes.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let routes = shared.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
                    let ua = text
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("user-agent: ")
                                .or_else(|| l.strip_prefix("User-Agent: "))
                        })
                        .map(str::to_owned);
                    let reply = {
                        let mut r = routes.lock().unwrap();
                        *r.hits.entry(path.clone()).or_default() += 1;
                        r.user_agents.push(ua);
                        r.replies.get(&path).cloned()
                    };
                    let (status, extra, body) = match reply {
                        Some(Reply::Json(v)) => (200, String::new(), v.to_string()),
                        Some(Reply::Raw(s)) => (200, String::new(), s.to_owned()),
                        Some(Reply::Status(s)) => (s, String::new(), String::new()),
                        Some(Reply::Redirect(to)) => (302, format!("location: {to}\r\n"), String::new()),
                        Some(Reply::Hang) => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                        None => (404, String::new(), String::new()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status} X\r\n{extra}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(body.as_bytes()).await;
                });
            }
        });
        Server { origin, routes }
    }

    fn put(&self, path: &str, reply: Reply) {
        self.routes.lock().unwrap().replies.insert(path.to_owned(), reply);
    }

    fn hits(&self, path: &str) -> usize {
        self.routes.lock().unwrap().hits.get(path).copied().unwrap_or(0)
    }

    fn url(&self, path: &str) -> Url {
        Url::parse(&format!("{}{path}", self.origin)).unwrap()
    }

    /// Serve OIDC discovery at the plain location, naming `/jwks.json`.
    fn discovery(&self) {
        self.put(
            "/.well-known/openid-configuration",
            Reply::Json(json!({"issuer": self.origin, "jwks_uri": format!("{}/jwks.json", self.origin)})),
        );
    }

    fn keys(&self, keys: &[Jwk]) {
        self.put("/jwks.json", Reply::Json(json!(JwkSet { keys: keys.to_vec() })));
    }
}

fn jwk(pem: &[u8], kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&EncodingKey::from_ed_pem(pem).unwrap(), Algorithm::EdDSA).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk
}

fn cache(ttl: Duration, min_refresh_interval: Duration) -> KeyCache {
    KeyCache::new(
        reqwest::Client::new(),
        CacheConfig {
            ttl,
            min_refresh_interval,
            user_agent: None,
        },
    )
}

async fn kid_of(cache: &KeyCache, source: &KeySource, kid: &str) -> Result<Option<String>, KeysError> {
    Ok(cache
        .key_for(source, Some(kid), Algorithm::EdDSA)
        .await?
        .and_then(|k| k.common.key_id.clone()))
}

#[tokio::test]
async fn jwks_source_is_cached_and_unknown_kids_are_rate_limited() {
    let s = Server::start().await;
    s.keys(&[jwk(ED_PEM, "a")]);
    let source = KeySource::Jwks(s.url("/jwks.json"));
    let c = KeyCache::new(reqwest::Client::new(), CacheConfig::new(Duration::from_secs(300)));
    for _ in 0..3 {
        assert_eq!(kid_of(&c, &source, "a").await.unwrap().as_deref(), Some("a"));
    }
    for i in 0..20 {
        assert_eq!(kid_of(&c, &source, &format!("random-{i}")).await.unwrap(), None);
    }
    assert_eq!(s.hits("/jwks.json"), 1);
    assert_eq!(
        s.hits("/.well-known/openid-configuration"),
        0,
        "no discovery for a jwks url"
    );
}

#[tokio::test]
async fn rotation_is_picked_up_on_an_unknown_kid() {
    let s = Server::start().await;
    s.discovery();
    s.keys(&[jwk(ED_PEM, "a")]);
    let source = KeySource::Issuer(s.origin.clone());
    let c = cache(Duration::from_secs(300), Duration::ZERO);
    assert!(kid_of(&c, &source, "a").await.unwrap().is_some());
    s.keys(&[jwk(ED_PEM, "a"), jwk(ED_OTHER_PEM, "b")]);
    assert_eq!(kid_of(&c, &source, "b").await.unwrap().as_deref(), Some("b"));
    assert_eq!(s.hits("/jwks.json"), 2);
    // Within the TTL the jwks_uri is reused.
    assert_eq!(s.hits("/.well-known/openid-configuration"), 1);
}

#[tokio::test]
async fn stale_keys_are_served_and_revalidated_in_the_background() {
    let s = Server::start().await;
    s.discovery();
    s.keys(&[jwk(ED_PEM, "a")]);
    let source = KeySource::Issuer(s.origin.clone());
    let c = cache(Duration::ZERO, Duration::ZERO);
    for _ in 0..3 {
        assert!(kid_of(&c, &source, "a").await.unwrap().is_some());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.hits("/jwks.json") < 2 || s.hits("/.well-known/openid-configuration") < 2 {
        assert!(
            Instant::now() < deadline,
            "no background revalidation (discovery redone past the TTL)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_old_keys_and_is_remembered() {
    let s = Server::start().await;
    let source = KeySource::Jwks(s.url("/jwks.json"));
    s.put("/jwks.json", Reply::Status(503));
    let c = cache(Duration::ZERO, Duration::from_secs(300));
    assert_eq!(kid_of(&c, &source, "a").await.unwrap_err(), KeysError::Status(503));
    // Remembered: no second request within the interval.
    assert_eq!(kid_of(&c, &source, "a").await.unwrap_err(), KeysError::Status(503));
    assert_eq!(s.hits("/jwks.json"), 1);

    let c = cache(Duration::ZERO, Duration::ZERO);
    s.keys(&[jwk(ED_PEM, "a")]);
    assert!(kid_of(&c, &source, "a").await.unwrap().is_some());
    s.put("/jwks.json", Reply::Status(500));
    for _ in 0..3 {
        assert!(
            kid_of(&c, &source, "a").await.unwrap().is_some(),
            "stale keys survive an outage"
        );
        assert_eq!(kid_of(&c, &source, "unknown").await.unwrap(), None);
    }
}

#[tokio::test]
async fn bad_answers_are_told_apart() {
    let s = Server::start().await;
    let c = cache(Duration::from_secs(300), Duration::ZERO);
    let other = Server::start().await;
    other.keys(&[jwk(ED_PEM, "a")]);
    let big = Box::leak(format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(MAX_DOCUMENT_BYTES)).into_boxed_str());
    for (path, reply, err) in [
        ("/404", Reply::Status(404), KeysError::Status(404)),
        ("/html", Reply::Raw("<html>"), KeysError::NotJson),
        ("/object", Reply::Json(json!({"no": "keys"})), KeysError::NotKeySet),
        ("/big", Reply::Raw(big), KeysError::Unavailable("document too large")),
        (
            "/elsewhere",
            Reply::Redirect(format!("{}/jwks.json", other.origin)),
            KeysError::Unavailable("redirected to another origin"),
        ),
    ] {
        s.put(path, reply);
        let got = kid_of(&c, &KeySource::Jwks(s.url(path)), "a").await.unwrap_err();
        assert_eq!(got, err, "{path}");
    }
    // A redirect within the origin is followed (by a client that follows redirects).
    s.keys(&[jwk(ED_PEM, "a")]);
    s.put("/moved", Reply::Redirect(format!("{}/jwks.json", s.origin)));
    let source = KeySource::Jwks(s.url("/moved"));
    assert!(kid_of(&c, &source, "a").await.unwrap().is_some());
    // Nothing listening.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/jwks.json", closed.local_addr().unwrap())).unwrap();
    drop(closed);
    let err = kid_of(&c, &KeySource::Jwks(url), "a").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn discovery_checks_the_issuer_and_the_jwks_uri() {
    let s = Server::start().await;
    let c = cache(Duration::from_secs(300), Duration::ZERO);
    let source = KeySource::Issuer(s.origin.clone());
    s.put(
        "/.well-known/openid-configuration",
        Reply::Json(json!({"issuer": "https://someone-else", "jwks_uri": format!("{}/jwks.json", s.origin)})),
    );
    assert_eq!(kid_of(&c, &source, "a").await.unwrap_err(), KeysError::IssuerMismatch);
    s.put(
        "/.well-known/openid-configuration",
        Reply::Json(json!({"issuer": s.origin, "jwks_uri": "file:///etc/passwd"})),
    );
    assert_eq!(kid_of(&c, &source, "a").await.unwrap_err(), KeysError::NoJwksUri);
    // RFC 8414 at the second location.
    s.put("/.well-known/openid-configuration", Reply::Status(404));
    s.put(
        "/.well-known/oauth-authorization-server",
        Reply::Json(json!({"issuer": s.origin, "jwks_uri": format!("{}/jwks.json", s.origin)})),
    );
    s.keys(&[jwk(ED_PEM, "a")]);
    assert!(kid_of(&c, &source, "a").await.unwrap().is_some());
    assert_eq!(
        kid_of(&c, &KeySource::Issuer("ftp://x".into()), "a").await.unwrap_err(),
        KeysError::BadIssuerUrl
    );
}

#[tokio::test]
async fn the_user_agent_is_sent_when_configured() {
    let s = Server::start().await;
    s.keys(&[jwk(ED_PEM, "a")]);
    let c = KeyCache::new(
        reqwest::Client::new(),
        CacheConfig {
            user_agent: Some("jwt-verify-test/1".into()),
            ..CacheConfig::new(Duration::from_secs(300))
        },
    );
    assert!(
        kid_of(&c, &KeySource::Jwks(s.url("/jwks.json")), "a")
            .await
            .unwrap()
            .is_some()
    );
    let agents = s.routes.lock().unwrap().user_agents.clone();
    assert_eq!(agents, vec![Some("jwt-verify-test/1".to_owned())]);
}

#[tokio::test]
async fn a_hanging_source_delays_only_uncached_keys_and_only_until_the_deadline() {
    let s = Server::start().await;
    s.keys(&[jwk(ED_PEM, "a")]);
    let source = KeySource::Jwks(s.url("/jwks.json"));
    let c = cache(Duration::from_millis(100), Duration::ZERO);
    assert!(kid_of(&c, &source, "a").await.unwrap().is_some());
    s.put("/jwks.json", Reply::Hang);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let waiting = {
        let (c, source) = (c.clone(), source.clone());
        tokio::spawn(async move { kid_of(&c, &source, "b").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t0 = Instant::now();
    for _ in 0..5 {
        assert!(kid_of(&c, &source, "a").await.unwrap().is_some());
    }
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "a cached key waited {:?}",
        t0.elapsed()
    );
    let t0 = Instant::now();
    assert_eq!(
        waiting.await.unwrap().unwrap(),
        None,
        "old keys kept, kid b not among them"
    );
    assert!(t0.elapsed() <= FETCH_DEADLINE + Duration::from_secs(1));
}

#[tokio::test]
async fn verify_uses_the_sources_keys() {
    let s = Server::start().await;
    s.discovery();
    s.keys(&[jwk(ED_PEM, "a")]);
    let c = cache(Duration::from_secs(300), Duration::from_secs(300));
    let source = KeySource::Issuer(s.origin.clone());
    let issuer = IssuerRule::Exact(vec![s.origin.clone()]);
    let audience = AudienceRule::Required(vec!["api".into()]);
    let policy = Policy {
        issuer: &issuer,
        audience: &audience,
        required_claims: &[],
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss": s.origin, "sub": "alice", "aud": "api", "exp": now + 60});
    let sign = |pem: &[u8], kid: Option<&str>| {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_pem(pem).unwrap()).unwrap()
    };
    let good = sign(ED_PEM, Some("a"));
    let verified = c.verify(&Token::parse(&good).unwrap(), &source, &policy).await.unwrap();
    assert_eq!(verified["sub"], "alice");
    let no_kid = sign(ED_PEM, None);
    assert!(
        c.verify(&Token::parse(&no_kid).unwrap(), &source, &policy)
            .await
            .is_ok()
    );
    let unknown = sign(ED_OTHER_PEM, Some("b"));
    assert_eq!(
        c.verify(&Token::parse(&unknown).unwrap(), &source, &policy)
            .await
            .unwrap_err(),
        VerifyError::UnknownKid
    );
    s.keys(&[jwk(ED_PEM, "a"), jwk(ED_OTHER_PEM, "b")]);
    let c = cache(Duration::from_secs(300), Duration::from_secs(300));
    assert_eq!(
        c.verify(&Token::parse(&no_kid).unwrap(), &source, &policy)
            .await
            .unwrap_err(),
        VerifyError::NoKid,
        "two keys fit: ambiguous without a kid"
    );
    let down = KeySource::Issuer("http://127.0.0.1:1".into());
    assert!(matches!(
        c.verify(&Token::parse(&good).unwrap(), &down, &policy)
            .await
            .unwrap_err(),
        VerifyError::Keys(_)
    ));
}
