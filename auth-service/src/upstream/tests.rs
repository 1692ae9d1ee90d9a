//! The providers against a stand-in identity provider: a small actix-web server on
//! 127.0.0.1:0 serving discovery, JWKS, token, userinfo, WorkOS's authenticate and
//! GitHub's API, signing ID tokens with an Ed25519 key made in the test (the RSA and
//! P-256 keys under `testdata/` are throw-away keys made with `openssl genpkey` for
//! the algorithm tests). The real npm `oidc-provider` is exercised end to end
//! elsewhere; this server exists to produce every bad answer on demand.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};
use sha2::Digest;

use super::oauth::now_secs;
use super::*;

const CLIENT_ID: &str = "mcp-cluster-test";
const CLIENT_SECRET: &str = "s3cret-client-secret";
const CALLBACK: &str = "http://127.0.0.1:8790/callback";
const RSA_PEM: &[u8] = include_bytes!("testdata/rsa.pem");
const P256_PEM: &[u8] = include_bytes!("testdata/p256.pem");
/// RFC 8410 PKCS#8 v1 prefix of an Ed25519 private key; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    kid: String,
}

impl Signer {
    /// A fresh Ed25519 key.
    fn ed25519(kid: &str) -> Self {
        let seed: [u8; 32] = rand::random();
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        Signer {
            key: EncodingKey::from_ed_der(&der),
            alg: Algorithm::EdDSA,
            kid: kid.into(),
        }
    }

    fn pem(pem: &[u8], alg: Algorithm, kid: &str) -> Self {
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
            _ => EncodingKey::from_rsa_pem(pem),
        }
        .unwrap();
        Signer {
            key,
            alg,
            kid: kid.into(),
        }
    }

    fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

/// One token request as the stand-in saw it.
#[derive(Debug, Clone)]
struct Recorded {
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    params: HashMap<String, String>,
}

struct Grant {
    challenge: String,
    nonce: Option<String>,
}

struct IdpInner {
    /// `issuer` in the discovery document.
    discovery_issuer: String,
    auth_methods: Option<Vec<String>>,
    /// Served at /userinfo (and advertised) when set.
    userinfo: Option<Value>,
    keys: Vec<Jwk>,
    signer: Arc<Signer>,
    codes: HashMap<String, Grant>,
    /// Claims of the ID token besides iss/aud/iat/exp/nonce.
    claims: Map<String, Value>,
    /// Applied last; `null` removes a claim.
    patch: Map<String, Value>,
    /// The next token request gets this status and body.
    token_failure: Option<(u16, Value)>,
    rotate_refresh: bool,
    hits: HashMap<String, usize>,
    requests: Vec<Recorded>,
}

/// The stand-in identity provider.
struct Idp {
    origin: String,
    inner: Mutex<IdpInner>,
}

impl Idp {
    fn with<R>(&self, f: impl FnOnce(&mut IdpInner) -> R) -> R {
        f(&mut self.inner.lock().unwrap())
    }
    fn hits(&self, path: &str) -> usize {
        self.with(|i| i.hits.get(path).copied().unwrap_or(0))
    }
    fn last_request(&self) -> Recorded {
        self.with(|i| i.requests.last().cloned().unwrap())
    }
    fn patch(&self, patch: Value) {
        self.with(|i| i.patch = patch.as_object().unwrap().clone());
    }
    /// Sign with `signer` from now on and publish `keys`.
    fn use_keys(&self, signer: Signer, keys: Vec<Jwk>) {
        self.with(|i| {
            i.signer = Arc::new(signer);
            i.keys = keys;
        });
    }
    fn issue_code(&self, challenge: &str, nonce: Option<String>) -> String {
        let code = format!("code-{}", rand::random::<u64>());
        self.with(|i| {
            i.codes.insert(
                code.clone(),
                Grant {
                    challenge: challenge.to_owned(),
                    nonce,
                },
            )
        });
        code
    }
}

struct TestIdp {
    idp: web::Data<Idp>,
    handle: actix_web::dev::ServerHandle,
}

impl std::ops::Deref for TestIdp {
    type Target = Idp;
    fn deref(&self) -> &Idp {
        &self.idp
    }
}

impl TestIdp {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let signer = Signer::ed25519("k1");
        let idp = web::Data::new(Idp {
            inner: Mutex::new(IdpInner {
                discovery_issuer: origin.clone(),
                auth_methods: None,
                userinfo: None,
                keys: vec![signer.jwk()],
                signer: Arc::new(signer),
                codes: HashMap::new(),
                claims: json!({
                    "sub": "user-1",
                    "email": "ada@example.com",
                    "email_verified": true,
                    "name": "Ada Lovelace",
                    "permissions": ["image_generation"],
                    "groups": ["engineering"],
                    "org_id": "org-1",
                })
                .as_object()
                .unwrap()
                .clone(),
                patch: Map::new(),
                token_failure: None,
                rotate_refresh: false,
                hits: HashMap::new(),
                requests: Vec::new(),
            }),
            origin,
        });
        let data = idp.clone();
        let server = HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(serve)))
            .workers(1)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        TestIdp { idp, handle }
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

fn json_response(status: u16, body: &Value) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .content_type("application/json")
        .body(body.to_string())
}

async fn serve(req: HttpRequest, body: web::Bytes, idp: web::Data<Idp>) -> HttpResponse {
    let path = req.path().to_owned();
    idp.with(|i| *i.hits.entry(path.clone()).or_default() += 1);
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/.well-known/openid-configuration") => idp.with(|i| {
            let o = &idp.origin;
            let mut doc = json!({
                "issuer": i.discovery_issuer,
                "authorization_endpoint": format!("{o}/authorize"),
                "token_endpoint": format!("{o}/token"),
                "jwks_uri": format!("{o}/jwks"),
            });
            if i.userinfo.is_some() {
                doc["userinfo_endpoint"] = json!(format!("{o}/userinfo"));
            }
            if let Some(m) = &i.auth_methods {
                doc["token_endpoint_auth_methods_supported"] = json!(m);
            }
            json_response(200, &doc)
        }),
        ("GET", p) if p == "/jwks" || p.starts_with("/sso/jwks/") => {
            idp.with(|i| json_response(200, &json!({ "keys": i.keys })))
        }
        ("GET", "/userinfo") => idp.with(|i| match (&i.userinfo, bearer) {
            (Some(info), Some(_)) => json_response(200, info),
            _ => json_response(401, &json!({"error": "invalid_token"})),
        }),
        ("GET", "/user") if bearer.as_deref() == Some("gho_token") => json_response(
            200,
            &json!({"login": "octocat", "id": 583231, "name": null, "email": null}),
        ),
        ("GET", "/user/emails") if bearer.as_deref() == Some("gho_token") => json_response(
            200,
            &json!([
                {"email": "octo@users.noreply.example.com", "primary": false, "verified": true},
                {"email": "octocat@example.com", "primary": true, "verified": true}
            ]),
        ),
        ("GET", "/user" | "/user/emails") => json_response(401, &json!({"message": "Bad credentials"})),
        ("POST", "/token" | "/user_management/authenticate" | "/login/oauth/access_token") => token(&req, &body, &idp),
        _ => HttpResponse::NotFound().finish(),
    }
}

fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}

fn token(req: &HttpRequest, body: &[u8], idp: &Idp) -> HttpResponse {
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let content_type = header("content-type");
    let params: HashMap<String, String> = if content_type.as_deref() == Some("application/json") {
        serde_json::from_slice(body).unwrap()
    } else {
        url::form_urlencoded::parse(body).into_owned().collect()
    };
    let path = req.path().to_owned();
    let authorization = header("authorization");
    let github = path == "/login/oauth/access_token";
    let workos = path == "/user_management/authenticate";
    let mut i = idp.inner.lock().unwrap();
    i.requests.push(Recorded {
        path: path.clone(),
        authorization: authorization.clone(),
        content_type,
        params: params.clone(),
    });
    if let Some((status, body)) = i.token_failure.take() {
        return json_response(status, &body);
    }
    // Client authentication: Basic or in the body.
    let (cid, secret) = match authorization.as_deref().and_then(|a| a.strip_prefix("Basic ")) {
        Some(b) => {
            let decoded = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
            let decoded = String::from_utf8(decoded).unwrap();
            let (id, secret) = decoded.split_once(':').unwrap();
            (Some(id.to_owned()), Some(secret.to_owned()))
        }
        None => (params.get("client_id").cloned(), params.get("client_secret").cloned()),
    };
    if cid.as_deref() != Some(CLIENT_ID) || secret.as_deref() != Some(CLIENT_SECRET) {
        return json_response(401, &json!({"error": "invalid_client"}));
    }
    let bad_grant = |github_error: &str| {
        if github {
            json_response(200, &json!({"error": github_error}))
        } else {
            json_response(400, &json!({"error": "invalid_grant"}))
        }
    };
    let p = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
    match p("grant_type") {
        "refresh_token" => {
            if p("refresh_token") != "rt-1" {
                return bad_grant("bad_refresh_token");
            }
            let mut resp = json!({"access_token": "at-2", "token_type": "Bearer", "expires_in": 600});
            if i.rotate_refresh {
                resp["refresh_token"] = json!("rt-2");
            }
            json_response(200, &resp)
        }
        "authorization_code" => {
            let Some(grant) = i.codes.remove(p("code")) else {
                return bad_grant("bad_verification_code");
            };
            if s256(p("code_verifier")) != grant.challenge {
                return bad_grant("bad_verification_code");
            }
            if !workos && p("redirect_uri") != CALLBACK {
                return bad_grant("redirect_uri_mismatch");
            }
            let now = now_secs();
            if github {
                return json_response(
                    200,
                    &json!({"access_token": "gho_token", "token_type": "bearer", "scope": "read:user,user:email"}),
                );
            }
            if workos {
                let at = i.signer.sign(&json!({
                    "iss": idp.origin, "sub": "user_01", "sid": "session_01", "org_id": "org_01",
                    "role": "member", "permissions": ["image_generation"], "iat": now, "exp": now + 300,
                }));
                return json_response(
                    200,
                    &json!({
                        "user": {"object": "user", "id": "user_01", "email": "wendy@example.com",
                                 "email_verified": true, "first_name": "Wendy", "last_name": "Works"},
                        "organization_id": "org_01",
                        "access_token": at,
                        "refresh_token": "rt-1",
                        "authentication_method": "Password",
                    }),
                );
            }
            let mut claims = i.claims.clone();
            claims.insert("iss".into(), json!(idp.origin));
            claims.insert("aud".into(), json!(CLIENT_ID));
            claims.insert("iat".into(), json!(now));
            claims.insert("exp".into(), json!(now + 300));
            if let Some(n) = grant.nonce {
                claims.insert("nonce".into(), json!(n));
            }
            for (k, v) in &i.patch {
                if v.is_null() {
                    claims.remove(k);
                } else {
                    claims.insert(k.clone(), v.clone());
                }
            }
            let id_token = i.signer.sign(&Value::Object(claims));
            json_response(
                200,
                &json!({
                    "access_token": "at-1", "token_type": "Bearer", "expires_in": 3600,
                    "refresh_token": "rt-1", "id_token": id_token, "scope": "openid email profile",
                }),
            )
        }
        _ => json_response(400, &json!({"error": "unsupported_grant_type"})),
    }
}

fn query(url: &str) -> HashMap<String, String> {
    reqwest::Url::parse(url).unwrap().query_pairs().into_owned().collect()
}

fn oidc_args(idp: &Idp) -> UpstreamArgs {
    UpstreamArgs {
        upstream: "oidc".into(),
        oidc_issuer: Some(idp.origin.clone()),
        oidc_client_id: Some(CLIENT_ID.into()),
        oidc_client_secret: Some(CLIENT_SECRET.into()),
        ..UpstreamArgs::default()
    }
}

fn build(args: UpstreamArgs) -> Upstream {
    args.build(reqwest::Client::new()).unwrap()
}

/// The browser's part: follow `begin`, let the provider issue a code for the
/// challenge and nonce it was sent, come back with it.
async fn login(up: &Upstream, idp: &Idp) -> Result<Completed, UpstreamError> {
    let start = up.begin("state-1", CALLBACK).await?;
    let q = query(&start.redirect_to);
    assert_eq!(q["state"], "state-1");
    assert_eq!(q["redirect_uri"], CALLBACK);
    assert_eq!(q["code_challenge_method"], "S256");
    let code = idp.issue_code(&q["code_challenge"], q.get("nonce").cloned());
    up.complete(&code, CALLBACK, &start.secrets).await
}

fn invalid(r: Result<Completed, UpstreamError>) -> String {
    match r {
        Err(UpstreamError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[actix_web::test]
async fn oidc_good_login() {
    let idp = TestIdp::start().await;
    let up = build(oidc_args(&idp));
    assert_eq!(up.kind(), "oidc");
    let start = up.begin("st", CALLBACK).await.unwrap();
    let q = query(&start.redirect_to);
    assert!(start.redirect_to.starts_with(&format!("{}/authorize?", idp.origin)));
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["scope"], "openid email profile");
    assert_eq!(Some(&q["nonce"]), start.secrets.nonce.as_ref());
    // A fresh verifier and nonce every time.
    let again = up.begin("st", CALLBACK).await.unwrap();
    assert_ne!(again.secrets.pkce_verifier, start.secrets.pkce_verifier);
    assert_ne!(again.secrets.nonce, start.secrets.nonce);

    let done = login(&up, &idp).await.unwrap();
    assert_eq!(
        done.identity,
        Identity {
            sub: "user-1".into(),
            email: Some("ada@example.com".into()),
            name: Some("Ada Lovelace".into()),
            permissions: vec!["image_generation".into()],
            groups: vec!["engineering".into()],
            org: Some("org-1".into()),
        }
    );
    let tokens = done.tokens.unwrap();
    assert_eq!(tokens.access_token, "at-1");
    assert_eq!(tokens.refresh_token.as_deref(), Some("rt-1"));
    assert!(tokens.expires_at.unwrap() > now_secs() + 3500);
    assert_eq!(done.claims["iss"], json!(idp.origin));
    // Discovery without auth methods: client_secret_basic; discovery and keys cached.
    let r = idp.last_request();
    assert!(r.authorization.unwrap().starts_with("Basic "));
    assert!(!r.params.contains_key("client_secret"));
    login(&up, &idp).await.unwrap();
    assert_eq!(idp.hits("/.well-known/openid-configuration"), 1);
    assert_eq!(idp.hits("/jwks"), 1);
    assert_eq!(idp.hits("/userinfo"), 0);
    idp.stop().await;
}

#[actix_web::test]
async fn oidc_calls_userinfo_when_email_is_missing() {
    let idp = TestIdp::start().await;
    idp.patch(json!({"email": null}));
    idp.with(|i| i.userinfo = Some(json!({"sub": "user-1", "email": "ada@userinfo.example.com"})));
    let up = build(oidc_args(&idp));
    let done = login(&up, &idp).await.unwrap();
    assert_eq!(done.identity.email.as_deref(), Some("ada@userinfo.example.com"));
    assert_eq!(idp.hits("/userinfo"), 1);
    // Userinfo about someone else is refused.
    idp.with(|i| i.userinfo = Some(json!({"sub": "mallory", "email": "m@example.com"})));
    assert!(invalid(login(&up, &idp).await).contains("userinfo"));
    idp.stop().await;
}

#[actix_web::test]
async fn oidc_rejects_wrong_nonce() {
    let idp = TestIdp::start().await;
    let up = build(oidc_args(&idp));
    idp.patch(json!({"nonce": "replayed-nonce"}));
    assert!(invalid(login(&up, &idp).await).contains("nonce"));
    idp.patch(json!({"nonce": null}));
    assert!(invalid(login(&up, &idp).await).contains("nonce"));
    idp.stop().await;
}

#[actix_web::test]
async fn oidc_rejects_wrong_issuer() {
    let idp = TestIdp::start().await;
    let up = build(oidc_args(&idp));
    idp.patch(json!({"iss": "https://evil.example.com"}));
    assert!(invalid(login(&up, &idp).await).contains("issuer"));
    idp.patch(json!({"iss": format!("{}/", idp.origin)}));
    assert!(invalid(login(&up, &idp).await).contains("issuer"));
    idp.stop().await;
}

#[actix_web::test]
async fn oidc_rejects_discovery_for_another_issuer() {
    let idp = TestIdp::start().await;
    idp.with(|i| i.discovery_issuer = "https://other.example.com".into());
    let up = build(oidc_args(&idp));
    match up.begin("st", CALLBACK).await {
        Err(UpstreamError::Invalid(m)) => assert!(m.contains("another issuer"), "{m}"),
        other => panic!("{other:?}"),
    }
    idp.stop().await;
}

#[actix_web::test]
async fn oidc_rejects_wrong_audience() {
    let idp = TestIdp::start().await;
    let up = build(oidc_args(&idp));
    idp.patch(json!({"aud": "another-client"}));
    assert!(invalid(login(&up, &idp).await).contains("audience"));
    // Several audiences: azp must name us.
    idp.patch(json!({"aud": [CLIENT_ID, "another-client"]}));
    assert!(invalid(login(&up, &idp).await).contains("azp"));
    idp.patch(json!({"aud": [CLIENT_ID, "another-client"], "azp": "another-client"}));
    assert!(invalid(login(&up, &idp).await).contains("azp"));
    idp.patch(json!({"aud": [CLIENT_ID, "another-client"], "azp": CLIENT_ID}));
    login(&up, &idp).await.unwrap();
    idp.stop().await;
}

#[actix_web::test]
async fn oidc_rejects_expired_and_future_tokens() {
    let idp = TestIdp::start().await;
    let up = build(oidc_args(&idp));
    let now = now_secs();
    idp.patch(json!({"exp": now - 600, "iat": now - 1200}));
    assert!(invalid(login(&up, &idp).await).contains("expired"));
    // Within the leeway is fine.
    idp.patch(json!({"exp": now - 10}));
    login(&up, &idp).await.unwrap();
    idp.patch(json!({"iat": now + 3600}));
    assert!(invalid(login(&up, &idp).await).contains("future"));
    idp.patch(json!({"iat": null}));
    assert!(invalid(login(&up, &idp).await).contains("iat"));
    idp.stop().await;
}

#[actix_web::test]
async fn oidc_rejects_bad_signature() {
    let idp = TestIdp::start().await;
    let up = build(oidc_args(&idp));
    let published = idp.with(|i| i.keys.clone());
    // Same kid, another key: what a forger would do.
    idp.use_keys(Signer::ed25519("k1"), published);
    assert!(invalid(login(&up, &idp).await).contains("signature"));
    idp.stop().await;
}

#[actix_web::test]
async fn oidc_rejects_hmac_tokens() {
    let idp = TestIdp::start().await;
    let up = build(oidc_args(&idp));
    let published = idp.with(|i| i.keys.clone());
    let hmac = Signer {
        key: EncodingKey::from_secret(b"guessable"),
        alg: Algorithm::HS256,
        kid: "k1".into(),
    };
    idp.use_keys(hmac, published);
    assert!(invalid(login(&up, &idp).await).contains("not accepted"));
    idp.stop().await;
}

#[actix_web::test]
async fn oidc_unknown_kid_refetches_keys() {
    let idp = TestIdp::start().await;
    let up = build(oidc_args(&idp));
    let Upstream::Oidc(p) = up else { panic!() };
    let up = Upstream::Oidc(p.with_jwks_min_refetch(Duration::ZERO));
    login(&up, &idp).await.unwrap();
    assert_eq!(idp.hits("/jwks"), 1);
    // The provider rotates: a new key, published beside the old one.
    let next = Signer::ed25519("k2");
    let mut keys = idp.with(|i| i.keys.clone());
    keys.push(next.jwk());
    idp.use_keys(next, keys);
    let done = login(&up, &idp).await.unwrap();
    assert_eq!(done.identity.sub, "user-1");
    assert_eq!(idp.hits("/jwks"), 2);
    // Known kid again: no fetch.
    login(&up, &idp).await.unwrap();
    assert_eq!(idp.hits("/jwks"), 2);
    idp.stop().await;
}

#[actix_web::test]
async fn oidc_unknown_kid_refetch_is_rate_limited() {
    let idp = TestIdp::start().await;
    let up = build(oidc_args(&idp));
    login(&up, &idp).await.unwrap();
    assert_eq!(idp.hits("/jwks"), 1);
    // Tokens signed with keys nobody published: at most one refetch per interval.
    let published = idp.with(|i| i.keys.clone());
    idp.use_keys(Signer::ed25519("random-1"), published.clone());
    assert!(invalid(login(&up, &idp).await).contains("unknown key"));
    idp.use_keys(Signer::ed25519("random-2"), published);
    assert!(invalid(login(&up, &idp).await).contains("unknown key"));
    assert_eq!(idp.hits("/jwks"), 1);
    idp.stop().await;
}

#[actix_web::test]
async fn oidc_accepts_rs256_ps256_es256() {
    let idp = TestIdp::start().await;
    let up = build(oidc_args(&idp));
    let Upstream::Oidc(p) = up else { panic!() };
    let up = Upstream::Oidc(p.with_jwks_min_refetch(Duration::ZERO));
    for (pem, alg, kid) in [
        (RSA_PEM, Algorithm::RS256, "rsa"),
        (RSA_PEM, Algorithm::PS256, "rsa-pss"),
        (P256_PEM, Algorithm::ES256, "ec"),
    ] {
        let signer = Signer::pem(pem, alg, kid);
        let jwk = signer.jwk();
        idp.use_keys(signer, vec![jwk]);
        let done = login(&up, &idp).await;
        assert!(done.is_ok(), "{alg:?}: {done:?}");
    }
    idp.stop().await;
}

#[actix_web::test]
async fn code_exchange_refused_is_invalid() {
    let idp = TestIdp::start().await;
    let up = build(oidc_args(&idp));
    let start = up.begin("st", CALLBACK).await.unwrap();
    let r = up.complete("never-issued", CALLBACK, &start.secrets).await;
    assert!(invalid(r).contains("invalid_grant"));
    // A verifier that does not match the challenge.
    let q = query(&start.redirect_to);
    let code = idp.issue_code(&q["code_challenge"], q.get("nonce").cloned());
    let wrong = LoginSecrets {
        pkce_verifier: Some("x".repeat(43)),
        nonce: start.secrets.nonce.clone(),
    };
    assert!(invalid(up.complete(&code, CALLBACK, &wrong).await).contains("invalid_grant"));
    idp.stop().await;
}

#[actix_web::test]
async fn callback_error_access_denied_is_denied() {
    let idp = TestIdp::start().await;
    let up = build(oidc_args(&idp));
    let params = CallbackParams {
        error: Some("access_denied".into()),
        error_description: Some("The user said no\n".into()),
        state: Some("st".into()),
        ..CallbackParams::default()
    };
    match up.callback_code(&params) {
        Err(UpstreamError::Denied { error, description }) => {
            assert_eq!(error, "access_denied");
            assert_eq!(description.as_deref(), Some("The user said no"));
        }
        other => panic!("{other:?}"),
    }
    // RFC 9207: a callback naming another issuer is a mix-up.
    let params = CallbackParams {
        code: Some("c".into()),
        iss: Some("https://evil.example.com".into()),
        ..CallbackParams::default()
    };
    assert!(matches!(up.callback_code(&params), Err(UpstreamError::Invalid(_))));
    let params = CallbackParams {
        code: Some("c".into()),
        iss: Some(idp.origin.clone()),
        ..CallbackParams::default()
    };
    assert_eq!(up.callback_code(&params).unwrap(), "c");
    assert!(matches!(
        up.callback_code(&CallbackParams::default()),
        Err(UpstreamError::Invalid(_))
    ));
    idp.stop().await;
}

#[actix_web::test]
async fn refresh_keeps_or_rotates_the_refresh_token() {
    let idp = TestIdp::start().await;
    let up = build(oidc_args(&idp));
    let t = up.refresh("rt-1").await.unwrap();
    assert_eq!(t.access_token, "at-2");
    assert_eq!(t.refresh_token.as_deref(), Some("rt-1"));
    assert!(t.expires_at.unwrap() >= now_secs() + 590);
    assert_eq!(idp.last_request().params["grant_type"], "refresh_token");
    idp.with(|i| i.rotate_refresh = true);
    let t = up.refresh("rt-1").await.unwrap();
    assert_eq!(t.refresh_token.as_deref(), Some("rt-2"));
    idp.stop().await;
}

#[actix_web::test]
async fn refresh_invalid_grant_is_invalid_grant() {
    let idp = TestIdp::start().await;
    let up = build(oidc_args(&idp));
    assert!(matches!(up.refresh("revoked").await, Err(UpstreamError::InvalidGrant)));
    idp.with(|i| i.token_failure = Some((400, json!({"error": "invalid_grant", "error_description": "expired"}))));
    assert!(matches!(up.refresh("rt-1").await, Err(UpstreamError::InvalidGrant)));
    // Other refusals are not a dead grant.
    idp.with(|i| i.token_failure = Some((401, json!({"error": "invalid_client"}))));
    assert!(matches!(up.refresh("rt-1").await, Err(UpstreamError::Invalid(_))));
    idp.stop().await;
}

#[actix_web::test]
async fn refresh_server_error_is_unavailable() {
    let idp = TestIdp::start().await;
    let up = build(oidc_args(&idp));
    for (status, body) in [
        (500, json!({"error": "server_error"})),
        (503, json!({})),
        (429, json!({"error": "slow_down"})),
        (307, json!({})),
    ] {
        idp.with(|i| i.token_failure = Some((status, body)));
        let r = up.refresh("rt-1").await;
        assert!(matches!(r, Err(UpstreamError::Unavailable(_))), "{status}: {r:?}");
    }
    idp.stop().await;
}

#[actix_web::test]
async fn refresh_network_failure_is_unavailable() {
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let base = format!("http://{closed}");
    let up = build(UpstreamArgs {
        upstream: "cloudflare-access".into(),
        access_client_id: Some(CLIENT_ID.into()),
        access_client_secret: Some(CLIENT_SECRET.into()),
        access_token_url: Some(format!("{base}/token")),
        access_authorization_url: Some(format!("{base}/authorize")),
        access_jwks_url: Some(format!("{base}/jwks")),
        ..UpstreamArgs::default()
    });
    assert!(matches!(up.refresh("rt-1").await, Err(UpstreamError::Unavailable(_))));
    // Discovery that cannot be reached makes begin unavailable too.
    let up = build(UpstreamArgs {
        upstream: "oidc".into(),
        oidc_issuer: Some(base),
        oidc_client_id: Some(CLIENT_ID.into()),
        oidc_client_secret: Some(CLIENT_SECRET.into()),
        ..UpstreamArgs::default()
    });
    assert!(matches!(
        up.begin("s", CALLBACK).await,
        Err(UpstreamError::Unavailable(_))
    ));
}

#[actix_web::test]
async fn client_secret_post_when_discovery_says_so() {
    let idp = TestIdp::start().await;
    idp.with(|i| i.auth_methods = Some(vec!["client_secret_post".into()]));
    let up = build(oidc_args(&idp));
    login(&up, &idp).await.unwrap();
    let r = idp.last_request();
    assert_eq!(r.authorization, None);
    assert_eq!(r.params["client_id"], CLIENT_ID);
    assert_eq!(r.params["client_secret"], CLIENT_SECRET);
    assert_eq!(r.params["redirect_uri"], CALLBACK);
    assert!(r.params.contains_key("code_verifier"));
    idp.stop().await;
}

#[actix_web::test]
async fn pingone_sends_resource_and_uses_basic_auth() {
    let idp = TestIdp::start().await;
    idp.with(|i| i.auth_methods = Some(vec!["client_secret_basic".into(), "client_secret_post".into()]));
    let up = build(UpstreamArgs {
        upstream: "pingone".into(),
        pingone_issuer: Some(idp.origin.clone()),
        pingone_client_id: Some(CLIENT_ID.into()),
        pingone_client_secret: Some(CLIENT_SECRET.into()),
        pingone_api_identifier: Some("https://mcp.example.com/mcp".into()),
        ..UpstreamArgs::default()
    });
    assert_eq!(up.kind(), "pingone");
    let start = up.begin("st", CALLBACK).await.unwrap();
    assert_eq!(query(&start.redirect_to)["resource"], "https://mcp.example.com/mcp");
    let done = login(&up, &idp).await.unwrap();
    assert_eq!(done.identity.permissions, vec!["image_generation"]);
    let r = idp.last_request();
    assert!(r.authorization.unwrap().starts_with("Basic "));
    assert!(!r.params.contains_key("client_secret"));
    idp.stop().await;
}

fn access_args(idp: &Idp) -> UpstreamArgs {
    let o = &idp.origin;
    UpstreamArgs {
        upstream: "cloudflare-access".into(),
        access_client_id: Some(CLIENT_ID.into()),
        access_client_secret: Some(CLIENT_SECRET.into()),
        access_token_url: Some(format!("{o}/token")),
        access_authorization_url: Some(format!("{o}/authorize")),
        access_jwks_url: Some(format!("{o}/jwks")),
        ..UpstreamArgs::default()
    }
}

#[actix_web::test]
async fn cloudflare_access_login_without_discovery() {
    let idp = TestIdp::start().await;
    let up = build(access_args(&idp));
    assert_eq!(up.kind(), "cloudflare-access");
    // Access for SaaS issues as a path on the team domain.
    idp.patch(json!({"iss": format!("{}/cdn-cgi/access/sso/oidc/{CLIENT_ID}", idp.origin)}));
    let done = login(&up, &idp).await.unwrap();
    assert_eq!(done.identity.email.as_deref(), Some("ada@example.com"));
    assert_eq!(idp.hits("/.well-known/openid-configuration"), 0);
    let r = idp.last_request();
    assert_eq!(r.params["client_secret"], CLIENT_SECRET);
    // An issuer on another domain is not the team's.
    idp.patch(json!({"iss": format!("https://evil.example.com/cdn-cgi/access/sso/oidc/{CLIENT_ID}")}));
    assert!(invalid(login(&up, &idp).await).contains("issuer"));
    idp.stop().await;
}

#[actix_web::test]
async fn workos_permissions_come_from_the_access_token() {
    let idp = TestIdp::start().await;
    let up = build(UpstreamArgs {
        upstream: "workos".into(),
        workos_client_id: Some(CLIENT_ID.into()),
        workos_client_secret: Some(CLIENT_SECRET.into()),
        workos_api_url: idp.origin.clone(),
        ..UpstreamArgs::default()
    });
    assert_eq!(up.kind(), "workos");
    let start = up.begin("st", CALLBACK).await.unwrap();
    let q = query(&start.redirect_to);
    assert!(
        start
            .redirect_to
            .starts_with(&format!("{}/user_management/authorize?", idp.origin))
    );
    assert_eq!(q["provider"], "authkit");
    assert!(!q.contains_key("nonce") && !q.contains_key("scope"));
    let done = login(&up, &idp).await.unwrap();
    assert_eq!(
        done.identity,
        Identity {
            sub: "user_01".into(),
            email: Some("wendy@example.com".into()),
            name: Some("Wendy Works".into()),
            permissions: vec!["image_generation".into()],
            groups: vec![],
            org: Some("org_01".into()),
        }
    );
    assert_eq!(done.claims["role"], "member");
    assert_eq!(done.claims["user"]["id"], "user_01");
    let r = idp.last_request();
    assert_eq!(r.path, "/user_management/authenticate");
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(r.params["client_secret"], CLIENT_SECRET);
    assert_eq!(idp.hits(&format!("/sso/jwks/{CLIENT_ID}")), 1);
    // A forged access token (same kid, other key) is refused.
    let published = idp.with(|i| i.keys.clone());
    idp.use_keys(Signer::ed25519("k1"), published);
    assert!(invalid(login(&up, &idp).await).contains("signature"));
    // Refresh goes to the same endpoint, as JSON.
    let t = up.refresh("rt-1").await.unwrap();
    assert_eq!(t.access_token, "at-2");
    assert_eq!(idp.last_request().content_type.as_deref(), Some("application/json"));
    idp.stop().await;
}

fn github_args(idp: &Idp) -> UpstreamArgs {
    UpstreamArgs {
        upstream: "github".into(),
        github_client_id: Some(CLIENT_ID.into()),
        github_client_secret: Some(CLIENT_SECRET.into()),
        github_oauth_url: idp.origin.clone(),
        github_api_url: idp.origin.clone(),
        ..UpstreamArgs::default()
    }
}

#[actix_web::test]
async fn github_sub_is_the_numeric_id() {
    let idp = TestIdp::start().await;
    let up = build(github_args(&idp));
    assert_eq!(up.kind(), "github");
    let start = up.begin("st", CALLBACK).await.unwrap();
    assert!(
        start
            .redirect_to
            .starts_with(&format!("{}/login/oauth/authorize?", idp.origin))
    );
    assert_eq!(query(&start.redirect_to)["scope"], "read:user user:email");
    assert_eq!(start.secrets.nonce, None);
    let done = login(&up, &idp).await.unwrap();
    assert_eq!(done.identity.sub, "583231");
    assert_eq!(done.identity.name.as_deref(), Some("octocat"));
    assert_eq!(done.identity.email.as_deref(), Some("octocat@example.com"));
    assert_eq!(done.identity.org, None);
    assert_eq!(done.claims["login"], "octocat");
    assert_eq!(done.tokens.unwrap().access_token, "gho_token");
    assert_eq!(idp.hits("/user/emails"), 1);
    idp.stop().await;
}

#[actix_web::test]
async fn github_errors_in_200_answers() {
    let idp = TestIdp::start().await;
    let up = build(github_args(&idp));
    let start = up.begin("st", CALLBACK).await.unwrap();
    let r = up.complete("stale-code", CALLBACK, &start.secrets).await;
    assert!(invalid(r).contains("bad_verification_code"));
    assert!(matches!(up.refresh("stale").await, Err(UpstreamError::InvalidGrant)));
    idp.stop().await;
}

#[actix_web::test]
async fn static_provider_has_no_redirect() {
    let up = build(UpstreamArgs {
        static_users_file: concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local/static-users.json").into(),
        ..UpstreamArgs::default()
    });
    assert_eq!(up.kind(), "static");
    assert_eq!(up.static_users().map(StaticUsers::len), Some(2));
    assert!(matches!(up.begin("s", CALLBACK).await, Err(UpstreamError::Unsupported)));
    assert!(matches!(
        up.complete("c", CALLBACK, &LoginSecrets::default()).await,
        Err(UpstreamError::Unsupported)
    ));
    assert!(matches!(up.refresh("r").await, Err(UpstreamError::Unsupported)));
}

#[actix_web::test]
async fn generic_oidc_sends_api_identifier_as_resource_and_its_scopes() {
    let idp = TestIdp::start().await;
    let up = build(UpstreamArgs {
        pingone_api_identifier: Some("https://todo.example.com".into()),
        oidc_scopes: "openid profile todo:read".into(),
        ..oidc_args(&idp)
    });
    let start = up.begin("st", CALLBACK).await.unwrap();
    let q = query(&start.redirect_to);
    assert_eq!(q["resource"], "https://todo.example.com");
    assert_eq!(q["scope"], "openid profile todo:read");
    // Without it, no resource parameter.
    let plain = build(oidc_args(&idp)).begin("st", CALLBACK).await.unwrap();
    assert!(!query(&plain.redirect_to).contains_key("resource"));
    idp.stop().await;
}
