//! Validator tests against a real HTTP issuer (discovery + JWKS) on 127.0.0.1:0.
//!
//! The keys under `testdata/` are throw-away keys made for these tests with
//! `openssl genpkey`; they sign nothing outside this file.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;

const ED_PEM: &[u8] = include_bytes!("testdata/ed25519.pem");
const ED_OTHER_PEM: &[u8] = include_bytes!("testdata/ed25519-other.pem");
const P256_PEM: &[u8] = include_bytes!("testdata/p256.pem");
const RSA_PEM: &[u8] = include_bytes!("testdata/rsa.pem");
const RESOURCE: &str = "http://localhost:8788/mcp";
const METADATA_URL: &str = "http://localhost:8788/.well-known/oauth-protected-resource/mcp";

/// A tiny issuer: serves whatever documents the test puts in `docs`, counts requests.
#[derive(Default)]
struct IssuerState {
    docs: Mutex<HashMap<String, serde_json::Value>>,
    hits: Mutex<HashMap<String, usize>>,
    down: AtomicBool,
    /// Accept requests and answer none of them (for a long while).
    hang: AtomicBool,
}

impl IssuerState {
    fn put(&self, path: &str, doc: serde_json::Value) {
        self.docs.lock().unwrap().insert(path.to_owned(), doc);
    }
    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
    fn total_hits(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }
}

async fn serve_doc(req: HttpRequest, state: web::Data<IssuerState>) -> HttpResponse {
    let path = req.path().to_owned();
    *state.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    if state.down.load(Ordering::SeqCst) {
        return HttpResponse::InternalServerError().finish();
    }
    if state.hang.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    match state.docs.lock().unwrap().get(&path) {
        Some(doc) => HttpResponse::Ok().json(doc),
        None => HttpResponse::NotFound().finish(),
    }
}

struct TestIssuer {
    /// `http://127.0.0.1:<port>` (plus a path, for path-issuer tests).
    issuer: String,
    origin: String,
    state: web::Data<IssuerState>,
    handle: actix_web::dev::ServerHandle,
}

impl TestIssuer {
    async fn start() -> Self {
        Self::start_with_path("").await
    }

    /// Start an issuer whose URL has `path`; serves nothing until documents are put.
    async fn start_with_path(path: &str) -> Self {
        let state = web::Data::new(IssuerState::default());
        let data = state.clone();
        let server = HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(serve_doc)))
            .workers(1)
            .disable_signals()
            .bind(("127.0.0.1", 0))
            .unwrap();
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        let origin = format!("http://{addr}");
        TestIssuer {
            issuer: format!("{origin}{path}"),
            origin,
            state,
            handle,
        }
    }

    /// Serve OIDC discovery at the plain location and a JWKS with `keys`.
    async fn standard(keys: &[Jwk]) -> Self {
        let issuer = Self::start().await;
        issuer.state.put(
            "/.well-known/openid-configuration",
            json!({"issuer": issuer.issuer, "jwks_uri": format!("{}/jwks.json", issuer.origin)}),
        );
        issuer.set_keys(keys);
        issuer
    }

    fn set_keys(&self, keys: &[Jwk]) {
        self.state.put(
            "/jwks.json",
            serde_json::to_value(JwkSet { keys: keys.to_vec() }).unwrap(),
        );
    }

    fn config(&self) -> AuthConfig {
        AuthConfig {
            allowed_issuers: vec![self.issuer.clone()],
            resource: RESOURCE.into(),
            resource_metadata_url: METADATA_URL.into(),
            jwks_cache_ttl: Duration::from_secs(300),
            required_scopes: vec![],
            authorization_servers: vec![],
            issuers_without_typ: vec![],
        }
    }

    fn validator(&self) -> Validator {
        Validator::new(self.config(), reqwest::Client::new())
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    kid: String,
}

impl Signer {
    fn new(pem: &[u8], alg: Algorithm, kid: &str) -> Self {
        let key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
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
    fn ed() -> Self {
        Self::new(ED_PEM, Algorithm::EdDSA, "ed-1")
    }
    fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }
    fn sign(&self, claims: &serde_json::Value) -> String {
        self.sign_typ(claims, Some("at+jwt"))
    }
    fn sign_typ(&self, claims: &serde_json::Value, typ: Option<&str>) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn claims(iss: &str) -> serde_json::Value {
    json!({
        "iss": iss,
        "sub": "alice",
        "aud": RESOURCE,
        "iat": now(),
        "exp": now() + 300,
        "email": "alice@example.com",
        "name": "Alice",
        "scope": "mcp:tools checklist.read",
        "permissions": ["image_generation"],
        "groups": ["staff"],
        "client_id": "dev-cli",
    })
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[actix_web::test]
async fn accepts_a_good_eddsa_token_and_builds_the_principal() {
    let signer = Signer::ed();
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let token = signer.sign(&claims(&issuer.issuer));
    let p = issuer.validator().validate(Some(&bearer(&token))).await.unwrap();
    assert_eq!(p.iss, issuer.issuer);
    assert_eq!(p.sub, "alice");
    assert_eq!(p.email.as_deref(), Some("alice@example.com"));
    assert_eq!(p.name.as_deref(), Some("Alice"));
    assert_eq!(p.scopes, vec!["mcp:tools", "checklist.read"]);
    assert_eq!(p.permissions, vec!["image_generation"]);
    assert_eq!(p.groups, vec!["staff"]);
    assert_eq!(p.client_id.as_deref(), Some("dev-cli"));
    assert!(p.expires_at > now() as u64);
    issuer.stop().await;
}

#[actix_web::test]
async fn accepts_es256_and_rs256_with_scp_azp_and_audience_arrays() {
    let es = Signer::new(P256_PEM, Algorithm::ES256, "ec-1");
    let rs = Signer::new(RSA_PEM, Algorithm::RS256, "rsa-1");
    let issuer = TestIssuer::standard(&[es.jwk(), rs.jwk()]).await;
    let v = issuer.validator();
    let c = json!({
        "iss": issuer.issuer, "sub": "bob", "aud": ["https://other", RESOURCE],
        "exp": now() + 60, "scp": ["a", "b"], "azp": "cursor",
        "roles": ["Checklist.Admin"], "tid": "tenant-1",
    });
    for signer in [&es, &rs] {
        let p = v.validate(Some(&bearer(&signer.sign(&c)))).await.unwrap();
        assert_eq!(p.sub, "bob");
        assert_eq!(p.scopes, vec!["a", "b"]);
        assert_eq!(p.client_id.as_deref(), Some("cursor"));
        assert!(p.email.is_none());
        // Entra: app roles are the permissions, the tenant the organization.
        assert_eq!(p.permissions, vec!["Checklist.Admin"]);
        assert_eq!(p.organization.as_deref(), Some("tenant-1"));
    }
    // Both keys came from one JWKS fetch.
    assert_eq!(issuer.state.hits("/jwks.json"), 1);
    issuer.stop().await;
}

#[actix_web::test]
async fn access_tokens_must_say_at_jwt_unless_the_issuer_is_exempt() {
    // Issue 8, defect 5 (RFC 9068 §4): an ID token or any other JWT of the issuer
    // is not an access token.
    let signer = Signer::ed();
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let c = claims(&issuer.issuer);
    let v = issuer.validator();
    for typ in [Some("JWT"), Some("jwt"), None, Some("id+jwt")] {
        let e = v.validate(Some(&bearer(&signer.sign_typ(&c, typ)))).await.unwrap_err();
        assert_eq!(e.code(), "INVALID_TOKEN", "typ {typ:?}");
    }
    for typ in ["at+jwt", "AT+JWT", "application/at+jwt"] {
        assert!(
            v.validate(Some(&bearer(&signer.sign_typ(&c, Some(typ))))).await.is_ok(),
            "typ {typ}"
        );
    }
    let mut cfg = issuer.config();
    cfg.issuers_without_typ = vec![issuer.issuer.clone()];
    let exempt = Validator::new(cfg, reqwest::Client::new());
    assert!(
        exempt
            .validate(Some(&bearer(&signer.sign_typ(&c, Some("JWT")))))
            .await
            .is_ok()
    );
    issuer.stop().await;
}

#[actix_web::test]
async fn machine_tokens_are_told_from_user_tokens() {
    let signer = Signer::ed();
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let v = issuer.validator();
    let mut cases = vec![
        (json!({}), proto::SubjectKind::User),
        (json!({"sub_kind": "user"}), proto::SubjectKind::User),
        (json!({"sub_kind": "machine"}), proto::SubjectKind::Machine),
        (json!({"idtyp": "app"}), proto::SubjectKind::Machine),
        (json!({"idtyp": "user"}), proto::SubjectKind::User),
        (json!({"gty": "client-credentials"}), proto::SubjectKind::Machine),
    ];
    for (i, (extra, kind)) in cases.drain(..).enumerate() {
        let mut c = claims(&issuer.issuer);
        c["jti"] = json!(format!("kind-{i}"));
        for (k, val) in extra.as_object().unwrap() {
            c[k] = val.clone();
        }
        let p = v.validate(Some(&bearer(&signer.sign(&c)))).await.unwrap();
        assert_eq!(p.kind, kind, "{extra}");
    }
    issuer.stop().await;
}

#[actix_web::test]
async fn scheme_is_case_insensitive() {
    let signer = Signer::ed();
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let token = signer.sign(&claims(&issuer.issuer));
    let v = issuer.validator();
    assert!(v.validate(Some(&format!("bearer {token}"))).await.is_ok());
    assert!(v.validate(Some(&format!("BEARER  {token} "))).await.is_ok());
    issuer.stop().await;
}

#[actix_web::test]
async fn missing_or_non_bearer_authorization() {
    let issuer = TestIssuer::standard(&[]).await;
    let v = issuer.validator();
    for header in [None, Some(""), Some("   "), Some("Basic YWxpY2U6c2VjcmV0")] {
        assert_eq!(v.validate(header).await.unwrap_err(), AuthError::MissingAuthorization);
    }
    assert_eq!(issuer.state.total_hits(), 0);
    issuer.stop().await;
}

#[actix_web::test]
async fn malformed_bearer_values_are_invalid_tokens() {
    let issuer = TestIssuer::standard(&[]).await;
    let v = issuer.validator();
    let long = "a".repeat(MAX_TOKEN_BYTES + 1);
    for header in [
        "Bearer",
        "Bearer ",
        "Bearer not-a-jwt",
        "Bearer a.b",
        "Bearer a.b.c d",
        "Bearer a.b.c",
        "Bearer %%%.b.c",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([format!("Bearer {long}")])
    {
        let err = v.validate(Some(&header)).await.unwrap_err();
        assert_eq!(err.code(), "INVALID_TOKEN", "{header:.30}: {err:?}");
    }
    assert_eq!(issuer.state.total_hits(), 0);
    issuer.stop().await;
}

#[actix_web::test]
async fn none_and_hmac_algorithms_are_refused() {
    let signer = Signer::ed();
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let v = issuer.validator();
    let b64 = |v: &serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let body = b64(&claims(&issuer.issuer));
    let none = format!("{}.{body}.", b64(&json!({"alg": "none", "typ": "JWT"})));
    let err = v.validate(Some(&bearer(&none))).await.unwrap_err();
    assert_eq!(err.code(), "INVALID_TOKEN");

    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(&issuer.issuer),
        &EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    let err = v.validate(Some(&bearer(&hs))).await.unwrap_err();
    assert_eq!(err, AuthError::InvalidToken("unsupported token algorithm".into()));
    assert_eq!(issuer.state.total_hits(), 0);
    issuer.stop().await;
}

#[actix_web::test]
async fn algorithm_must_match_the_key() {
    // An ES256 token whose kid names the Ed25519 key.
    let ed = Signer::ed();
    let mut es = Signer::new(P256_PEM, Algorithm::ES256, "ed-1");
    let issuer = TestIssuer::standard(&[ed.jwk()]).await;
    let err = issuer
        .validator()
        .validate(Some(&bearer(&es.sign(&claims(&issuer.issuer)))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_TOKEN");
    assert!(err.to_string().contains("algorithm"));

    // A key that declares its alg must declare the token's alg.
    let mut declared = Signer::new(P256_PEM, Algorithm::ES256, "ec-1").jwk();
    declared.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::ES384);
    issuer.set_keys(&[declared]);
    es.kid = "ec-1".into();
    let v = Validator::new(issuer.config(), reqwest::Client::new());
    let err = v
        .validate(Some(&bearer(&es.sign(&claims(&issuer.issuer)))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_TOKEN");
    issuer.stop().await;
}

#[actix_web::test]
async fn issuer_must_be_allowed_and_is_checked_before_any_fetch() {
    let signer = Signer::ed();
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let v = issuer.validator();
    for iss in [json!("https://evil.example"), json!(format!("{}/", issuer.issuer))] {
        let mut c = claims(&issuer.issuer);
        c["iss"] = iss;
        let err = v.validate(Some(&bearer(&signer.sign(&c)))).await.unwrap_err();
        assert_eq!(err, AuthError::InvalidIssuer);
    }
    let mut c = claims(&issuer.issuer);
    c.as_object_mut().unwrap().remove("iss");
    let err = v.validate(Some(&bearer(&signer.sign(&c)))).await.unwrap_err();
    assert_eq!(err, AuthError::InvalidIssuer);
    assert_eq!(issuer.state.total_hits(), 0);
    issuer.stop().await;
}

#[actix_web::test]
async fn wrong_key_or_tampered_token_is_an_invalid_signature() {
    let signer = Signer::ed();
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let v = issuer.validator();
    // Signed by another key under the published kid.
    let impostor = Signer::new(ED_OTHER_PEM, Algorithm::EdDSA, "ed-1");
    let err = v
        .validate(Some(&bearer(&impostor.sign(&claims(&issuer.issuer)))))
        .await
        .unwrap_err();
    assert_eq!(err, AuthError::InvalidSignature);

    // Payload swapped after signing (sub changed), signature kept.
    let good = signer.sign(&claims(&issuer.issuer));
    let mut other = claims(&issuer.issuer);
    other["sub"] = json!("mallory");
    let forged_body = signer.sign(&other);
    let parts: Vec<&str> = good.split('.').collect();
    let forged_parts: Vec<&str> = forged_body.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], forged_parts[1], parts[2]);
    assert_eq!(
        v.validate(Some(&bearer(&forged))).await.unwrap_err(),
        AuthError::InvalidSignature
    );

    // An expired token with a bad signature is reported as a bad signature.
    let mut expired = claims(&issuer.issuer);
    expired["exp"] = json!(now() - 3600);
    assert_eq!(
        v.validate(Some(&bearer(&impostor.sign(&expired)))).await.unwrap_err(),
        AuthError::InvalidSignature
    );
    issuer.stop().await;
}

#[actix_web::test]
async fn expiry_with_leeway() {
    let signer = Signer::ed();
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let v = issuer.validator();
    let mut c = claims(&issuer.issuer);
    c["exp"] = json!(now() - 120);
    assert_eq!(
        v.validate(Some(&bearer(&signer.sign(&c)))).await.unwrap_err(),
        AuthError::TokenExpired
    );
    // Within the leeway: still accepted.
    c["exp"] = json!(now() - 5);
    assert!(v.validate(Some(&bearer(&signer.sign(&c)))).await.is_ok());
    // No exp at all.
    c.as_object_mut().unwrap().remove("exp");
    let err = v.validate(Some(&bearer(&signer.sign(&c)))).await.unwrap_err();
    assert_eq!(err, AuthError::InvalidToken("token has no exp claim".into()));
    issuer.stop().await;
}

#[actix_web::test]
async fn not_before_in_the_future() {
    let signer = Signer::ed();
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let v = issuer.validator();
    let mut c = claims(&issuer.issuer);
    c["nbf"] = json!(now() + 600);
    assert_eq!(
        v.validate(Some(&bearer(&signer.sign(&c)))).await.unwrap_err(),
        AuthError::InvalidToken("token is not yet valid".into())
    );
    c["nbf"] = json!(now() + 5);
    assert!(v.validate(Some(&bearer(&signer.sign(&c)))).await.is_ok());
    issuer.stop().await;
}

#[actix_web::test]
async fn audience_must_contain_the_resource() {
    let signer = Signer::ed();
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let v = issuer.validator();
    for aud in [
        Some(json!("http://localhost:8788/other")),
        Some(json!(format!("{RESOURCE}/"))),
        Some(json!(["a", "b"])),
        None,
    ] {
        let mut c = claims(&issuer.issuer);
        match aud {
            Some(a) => c["aud"] = a,
            None => {
                c.as_object_mut().unwrap().remove("aud");
            }
        }
        assert_eq!(
            v.validate(Some(&bearer(&signer.sign(&c)))).await.unwrap_err(),
            AuthError::InvalidAudience
        );
    }
    issuer.stop().await;
}

#[actix_web::test]
async fn missing_sub_is_invalid() {
    let signer = Signer::ed();
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let mut c = claims(&issuer.issuer);
    c.as_object_mut().unwrap().remove("sub");
    let err = issuer
        .validator()
        .validate(Some(&bearer(&signer.sign(&c))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_TOKEN");
    issuer.stop().await;
}

#[actix_web::test]
async fn required_scopes() {
    let signer = Signer::ed();
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let mut cfg = issuer.config();
    cfg.required_scopes = vec!["mcp:tools".into(), "admin".into()];
    let v = Validator::new(cfg, reqwest::Client::new());
    let err = v
        .validate(Some(&bearer(&signer.sign(&claims(&issuer.issuer)))))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        AuthError::InsufficientScope(vec!["mcp:tools".into(), "admin".into()])
    );
    assert_eq!(err.status().as_u16(), 403);
    let mut c = claims(&issuer.issuer);
    c["scope"] = json!("admin mcp:tools");
    assert!(v.validate(Some(&bearer(&signer.sign(&c)))).await.is_ok());
    issuer.stop().await;
}

#[actix_web::test]
async fn unknown_kid_refetches_once_then_is_rate_limited() {
    let signer = Signer::ed();
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let v = issuer.validator(); // default MIN_REFRESH_INTERVAL (10 s)
    assert!(
        v.validate(Some(&bearer(&signer.sign(&claims(&issuer.issuer)))))
            .await
            .is_ok()
    );
    assert_eq!(issuer.state.hits("/jwks.json"), 1);
    // A flood of random kids right after a fetch: no further fetch.
    for i in 0..50 {
        let random = Signer::new(ED_OTHER_PEM, Algorithm::EdDSA, &format!("random-{i}"));
        assert_eq!(
            v.validate(Some(&bearer(&random.sign(&claims(&issuer.issuer)))))
                .await
                .unwrap_err(),
            AuthError::InvalidSignature
        );
    }
    assert_eq!(issuer.state.hits("/jwks.json"), 1);
    assert_eq!(issuer.state.hits("/.well-known/openid-configuration"), 1);
    issuer.stop().await;
}

#[actix_web::test]
async fn key_rotation_is_picked_up_on_unknown_kid() {
    let old = Signer::ed();
    let new = Signer::new(ED_OTHER_PEM, Algorithm::EdDSA, "ed-2");
    let issuer = TestIssuer::standard(&[old.jwk()]).await;
    let v = Validator::with_min_refresh_interval(issuer.config(), reqwest::Client::new(), Duration::ZERO);
    assert!(
        v.validate(Some(&bearer(&old.sign(&claims(&issuer.issuer)))))
            .await
            .is_ok()
    );
    issuer.set_keys(&[old.jwk(), new.jwk()]);
    assert!(
        v.validate(Some(&bearer(&new.sign(&claims(&issuer.issuer)))))
            .await
            .is_ok()
    );
    // Within the TTL the jwks_uri is reused: discovery was fetched once.
    assert_eq!(issuer.state.hits("/jwks.json"), 2);
    assert_eq!(issuer.state.hits("/.well-known/openid-configuration"), 1);
    issuer.stop().await;
}

#[actix_web::test]
async fn cache_ttl_expiry_serves_stale_keys_and_revalidates_in_the_background() {
    let signer = Signer::ed();
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let mut cfg = issuer.config();
    cfg.jwks_cache_ttl = Duration::ZERO;
    let v = Validator::with_min_refresh_interval(cfg, reqwest::Client::new(), Duration::ZERO);
    let token = signer.sign(&claims(&issuer.issuer));
    for _ in 0..3 {
        assert!(v.validate(Some(&bearer(&token))).await.is_ok());
    }
    // The first call fetched inline; the stale set is refetched (discovery too) in
    // the background.
    testkit::eventually(50, Duration::from_millis(100), || async {
        let (keys, discovery) = (
            issuer.state.hits("/jwks.json"),
            issuer.state.hits("/.well-known/openid-configuration"),
        );
        anyhow::ensure!(
            keys >= 2 && discovery >= 2,
            "{keys} key fetches, {discovery} discoveries"
        );
        Ok(())
    })
    .await
    .expect("stale keys revalidated in the background");
    issuer.stop().await;
}

#[actix_web::test]
async fn a_hanging_issuer_stalls_no_token_whose_key_is_cached() {
    // Issue 8, defect 6: past the TTL, with the issuer accepting connections and
    // never answering, a token with a cached key is still answered at once.
    let signer = Signer::ed();
    let new = Signer::new(ED_OTHER_PEM, Algorithm::EdDSA, "ed-2");
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let mut cfg = issuer.config();
    cfg.jwks_cache_ttl = Duration::from_millis(200);
    let v = Validator::with_min_refresh_interval(cfg, reqwest::Client::new(), Duration::ZERO);
    let mut c = claims(&issuer.issuer);
    assert!(v.validate(Some(&bearer(&signer.sign(&c)))).await.is_ok());
    issuer.state.hang.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await; // the configured TTL runs out
    for i in 0..5 {
        c["jti"] = json!(format!("stale-{i}"));
        let t0 = std::time::Instant::now();
        assert!(v.validate(Some(&bearer(&signer.sign(&c)))).await.is_ok());
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "waited {:?} on a hanging issuer",
            t0.elapsed()
        );
    }
    // A token naming a key we do not have waits for a fetch, at most FETCH_DEADLINE,
    // and meanwhile known keys are still served at once.
    let v2 = v.clone();
    let unknown = new.sign(&claims(&issuer.issuer));
    let waiting = tokio::spawn(async move { v2.validate(Some(&bearer(&unknown))).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = std::time::Instant::now();
    c["jti"] = json!("while-fetching");
    assert!(v.validate(Some(&bearer(&signer.sign(&c)))).await.is_ok());
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "a known key waited {:?} on an unknown-kid fetch",
        t0.elapsed()
    );
    let t0 = std::time::Instant::now();
    let err = waiting.await.unwrap().unwrap_err();
    assert!(t0.elapsed() <= jwt_verify::FETCH_DEADLINE + Duration::from_secs(1));
    assert_eq!(
        err,
        AuthError::InvalidSignature,
        "stale keys kept, the unknown kid is not among them"
    );
    // The issuer recovers with a rotated set: the background revalidation finds it.
    issuer.state.hang.store(false, Ordering::SeqCst);
    issuer.set_keys(&[signer.jwk(), new.jwk()]);
    let rotated = new.sign(&claims(&issuer.issuer));
    testkit::eventually(150, Duration::from_millis(100), || async {
        v.validate(Some(&bearer(&rotated)))
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))
    })
    .await
    .expect("the rotated key is found once the issuer answers again");
    issuer.stop().await;
}

#[actix_web::test]
async fn issuer_down_is_unavailable_and_stale_keys_survive_an_outage() {
    let signer = Signer::ed();
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let token = signer.sign(&claims(&issuer.issuer));

    issuer.state.down.store(true, Ordering::SeqCst);
    let v = issuer.validator();
    let err = v.validate(Some(&bearer(&token))).await.unwrap_err();
    assert_eq!(err.code(), "ISSUER_UNAVAILABLE");
    assert_eq!(err.status().as_u16(), 503);
    // The failure is remembered: the next request does not hit the issuer again.
    let hits = issuer.state.total_hits();
    assert!(v.validate(Some(&bearer(&token))).await.is_err());
    assert_eq!(issuer.state.total_hits(), hits);

    // With keys cached, an outage past the TTL keeps the old keys working.
    issuer.state.down.store(false, Ordering::SeqCst);
    let mut cfg = issuer.config();
    cfg.jwks_cache_ttl = Duration::ZERO;
    let v = Validator::with_min_refresh_interval(cfg, reqwest::Client::new(), Duration::ZERO);
    assert!(v.validate(Some(&bearer(&token))).await.is_ok());
    issuer.state.down.store(true, Ordering::SeqCst);
    assert!(v.validate(Some(&bearer(&token))).await.is_ok());
    issuer.stop().await;

    // Nothing listening at all.
    let gone = TestIssuer::start().await;
    let cfg = gone.config();
    gone.stop().await;
    let v = Validator::new(cfg, reqwest::Client::new());
    let err = v.validate(Some(&bearer(&token))).await;
    // The token's iss differs from `gone`; sign one for it.
    assert_eq!(err.unwrap_err(), AuthError::InvalidIssuer);
    let mut c = claims(&v.config().allowed_issuers[0]);
    c["sub"] = json!("x");
    let err = v.validate(Some(&bearer(&signer.sign(&c)))).await.unwrap_err();
    assert_eq!(err.code(), "ISSUER_UNAVAILABLE");
}

#[actix_web::test]
async fn discovery_falls_back_to_rfc8414_with_path_insertion() {
    let signer = Signer::ed();
    let issuer = TestIssuer::start_with_path("/tenant/a").await;
    issuer.state.put(
        "/.well-known/oauth-authorization-server/tenant/a",
        json!({"issuer": issuer.issuer, "jwks_uri": format!("{}/keys", issuer.origin)}),
    );
    issuer.state.put(
        "/keys",
        serde_json::to_value(JwkSet {
            keys: vec![signer.jwk()],
        })
        .unwrap(),
    );
    let token = signer.sign(&claims(&issuer.issuer));
    let p = issuer.validator().validate(Some(&bearer(&token))).await.unwrap();
    assert_eq!(p.iss, issuer.issuer);
    assert_eq!(issuer.state.hits("/.well-known/openid-configuration/tenant/a"), 1);
    assert_eq!(issuer.state.hits("/tenant/a/.well-known/openid-configuration"), 1);
    issuer.stop().await;
}

#[actix_web::test]
async fn discovery_document_must_name_the_same_issuer() {
    let signer = Signer::ed();
    let issuer = TestIssuer::start().await;
    issuer.state.put(
        "/.well-known/openid-configuration",
        json!({"issuer": "https://someone-else", "jwks_uri": format!("{}/jwks.json", issuer.origin)}),
    );
    issuer.set_keys(&[signer.jwk()]);
    let err = issuer
        .validator()
        .validate(Some(&bearer(&signer.sign(&claims(&issuer.issuer)))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ISSUER_UNAVAILABLE");
    issuer.stop().await;
}

#[actix_web::test]
async fn token_without_kid_uses_the_single_fitting_key() {
    let signer = Signer::ed();
    let es = Signer::new(P256_PEM, Algorithm::ES256, "ec-1");
    let issuer = TestIssuer::standard(&[signer.jwk(), es.jwk()]).await;
    let v = issuer.validator();
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    let token = jsonwebtoken::encode(&header, &claims(&issuer.issuer), &signer.key).unwrap();
    assert!(v.validate(Some(&bearer(&token))).await.is_ok());
    // Two Ed25519 keys: ambiguous without a kid.
    let other = Signer::new(ED_OTHER_PEM, Algorithm::EdDSA, "ed-2");
    issuer.set_keys(&[signer.jwk(), other.jwk()]);
    let v = issuer.validator();
    assert_eq!(
        v.validate(Some(&bearer(&token))).await.unwrap_err(),
        AuthError::InvalidToken("token has no kid".into())
    );
    issuer.stop().await;
}

#[actix_web::test]
async fn reject_builds_the_full_challenge() {
    let issuer = TestIssuer::standard(&[]).await;
    let v = issuer.validator();
    let resp = v.reject_response(&AuthError::TokenExpired);
    assert_eq!(resp.status().as_u16(), 401);
    let challenge = resp.headers().get("www-authenticate").unwrap().to_str().unwrap();
    assert_eq!(
        challenge,
        format!(
            "Bearer resource_metadata=\"{METADATA_URL}\", error=\"invalid_token\", error_description=\"token has expired\""
        )
    );
    let err = v.reject(AuthError::MissingAuthorization);
    let resp = err.error_response();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.headers().get("www-authenticate").unwrap(),
        &format!("Bearer resource_metadata=\"{METADATA_URL}\"")
    );
    let body = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error_code"], "MISSING_AUTHORIZATION");
    issuer.stop().await;
}

#[test]
fn protected_resource_metadata_document() {
    let cfg = AuthConfig {
        allowed_issuers: vec!["https://a".into(), "https://b".into()],
        resource: RESOURCE.into(),
        resource_metadata_url: METADATA_URL.into(),
        jwks_cache_ttl: Duration::from_secs(60),
        required_scopes: vec![],
        authorization_servers: vec![],
        issuers_without_typ: vec![],
    };
    let doc = protected_resource_metadata(&cfg);
    assert_eq!(doc["resource"], RESOURCE);
    assert_eq!(doc["authorization_servers"], json!(["https://a", "https://b"]));
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    assert!(doc.get("scopes_supported").is_none());
    let cfg = AuthConfig {
        authorization_servers: vec!["https://auth".into()],
        issuers_without_typ: vec![],
        required_scopes: vec!["mcp:tools".into()],
        ..cfg
    };
    let doc = protected_resource_metadata(&cfg);
    assert_eq!(doc["authorization_servers"], json!(["https://auth"]));
    assert_eq!(doc["scopes_supported"], json!(["mcp:tools"]));
}

#[actix_web::test]
async fn revoked_grant_or_jti_is_refused_also_when_remembered() {
    let signer = Signer::ed();
    let issuer = TestIssuer::standard(&[signer.jwk()]).await;
    let v = issuer.validator();
    let mut c = claims(&issuer.issuer);
    c["gid"] = json!("grant-1");
    c["jti"] = json!("jti-1");
    let token = bearer(&signer.sign(&c));
    let p = v.validate(Some(&token)).await.unwrap();
    assert_eq!(p.grant_id.as_deref(), Some("grant-1"));

    // Remembered token, then its grant is revoked.
    let until = now() as u64 + 300;
    v.revocations()
        .insert(&proto::auth::revoked_grant_key("grant-1"), until);
    let err = v.validate(Some(&token)).await.unwrap_err();
    assert_eq!(err, AuthError::InvalidToken(REVOKED.into()));
    assert_eq!(err.code(), "INVALID_TOKEN");

    // A token never seen before, of the same grant: refused on the full path.
    c["jti"] = json!("jti-2");
    let fresh = bearer(&signer.sign(&c));
    assert_eq!(
        v.validate(Some(&fresh)).await.unwrap_err(),
        AuthError::InvalidToken(REVOKED.into())
    );

    // Another grant is unaffected; revoking its jti refuses just that token.
    let mut other = claims(&issuer.issuer);
    other["gid"] = json!("grant-2");
    other["jti"] = json!("jti-3");
    let other_token = bearer(&signer.sign(&other));
    other["jti"] = json!("jti-4");
    let sibling = bearer(&signer.sign(&other));
    assert!(v.validate(Some(&other_token)).await.is_ok());
    v.revocations().insert(&proto::auth::revoked_token_key("jti-3"), until);
    assert_eq!(
        v.validate(Some(&other_token)).await.unwrap_err(),
        AuthError::InvalidToken(REVOKED.into())
    );
    assert!(v.validate(Some(&sibling)).await.is_ok());

    // A revocation past its `until` (and the leeway) no longer counts.
    v.revocations()
        .insert(&proto::auth::revoked_grant_key("grant-1"), now() as u64 - LEEWAY - 5);
    assert!(v.validate(Some(&token)).await.is_ok());
    issuer.stop().await;
}
