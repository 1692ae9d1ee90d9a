//! The development key (`AUTH_DEV_KEY_FILE`) on the OAuth server: discovery, the
//! JWKS publishing it next to the rotating keys, admin endpoints, drain; tokens from
//! `mint-token` verify with jsonwebtoken against the served JWKS and pass the
//! gateway's `Validator`.

use std::path::PathBuf;
use std::time::Duration;

use auth_service::MintArgs;
use gateway::auth::{AuthConfig, AuthError, Validator};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::oauth_kit::OAuthServer;

const RESOURCE: &str = "http://localhost:8788/mcp";

struct Running {
    issuer: String,
    admin: String,
    key_file: PathBuf,
    dir: PathBuf,
    server: OAuthServer,
}

impl Running {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("auth-service-it-{}", uuid_like()));
        Self::start_in(dir).await
    }

    async fn start_in(dir: PathBuf) -> Self {
        let key_file = dir.join("dev-issuer-ed25519.pem");
        let server = OAuthServer::start_with_dev_key(&key_file).await;
        Running {
            issuer: server.issuer.clone(),
            admin: server.admin.clone(),
            key_file,
            dir,
            server,
        }
    }

    /// The development key's id, as `mint-token` names it.
    fn dev_kid(&self) -> String {
        auth_service::key::load(&self.key_file).unwrap().kid().to_owned()
    }

    fn mint(&self, edit: impl FnOnce(&mut MintArgs)) -> String {
        let mut args = MintArgs {
            key_file: self.key_file.clone(),
            issuer: self.issuer.clone(),
            audience: RESOURCE.into(),
            sub: "alice".into(),
            email: Some("alice@example.com".into()),
            name: Some("Alice".into()),
            scope: Some("openid profile".into()),
            permissions: vec!["image_generation".into()],
            ttl: 300,
            nbf_offset: None,
            kid: None,
        };
        edit(&mut args);
        let key = auth_service::key::load(&args.key_file).unwrap();
        auth_service::mint::mint(&key, &args).unwrap()
    }

    fn validator(&self) -> Validator {
        Validator::new(
            AuthConfig {
                allowed_issuers: vec![self.issuer.clone()],
                resource: RESOURCE.into(),
                resource_metadata_url: "http://localhost:8788/.well-known/oauth-protected-resource/mcp".into(),
                jwks_cache_ttl: Duration::from_secs(60),
                required_scopes: vec![],
                authorization_servers: vec![],
                issuers_without_typ: vec![],
            },
            reqwest::Client::new(),
        )
    }

    async fn stop(self) {
        self.server.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

async fn get_json(url: &str) -> serde_json::Value {
    let resp = reqwest::get(url).await.unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.json().await.unwrap()
}

#[actix_web::test]
async fn discovery_jwks_and_minted_tokens_verify() {
    let svc = Running::start().await;

    for doc in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let meta = get_json(&format!("{}{doc}", svc.issuer)).await;
        assert_eq!(meta["issuer"], svc.issuer);
        assert_eq!(meta["jwks_uri"], format!("{}/jwks.json", svc.issuer));
    }
    // The JWKS serves the rotating key and, next to it, the development key.
    let jwks_value = get_json(&format!("{}/jwks.json", svc.issuer)).await;
    let served = jwks_value["keys"].as_array().unwrap();
    assert_eq!(served.len(), 2, "{jwks_value}");
    for key in served {
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert!(key.get("d").is_none(), "private key must not be served");
    }
    let jwks: JwkSet = serde_json::from_value(jwks_value.clone()).unwrap();
    let kid = svc.dev_kid();
    let jwk = jwks.find(&kid).expect("the development key is published");
    assert_eq!(kid, jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256).unwrap());

    // A minted token verifies with plain jsonwebtoken against the served JWKS.
    let token = svc.mint(|_| {});
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&[RESOURCE]);
    v.set_issuer(&[&svc.issuer]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap(),
        &v,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["client_id"], "dev-cli");

    // And the gateway's validator accepts it, fetching discovery + JWKS over HTTP.
    let validator = svc.validator();
    let p = validator.validate(Some(&format!("Bearer {token}"))).await.unwrap();
    assert_eq!(p.iss, svc.issuer);
    assert_eq!(p.sub, "alice");
    assert_eq!(p.email.as_deref(), Some("alice@example.com"));
    assert_eq!(p.name.as_deref(), Some("Alice"));
    assert_eq!(p.scopes, vec!["openid", "profile"]);
    assert_eq!(p.permissions, vec!["image_generation"]);
    assert_eq!(p.client_id.as_deref(), Some("dev-cli"));

    // The refusals an e2e suite relies on, end to end.
    let expired = svc.mint(|a| a.ttl = -120);
    assert_eq!(
        validator
            .validate(Some(&format!("Bearer {expired}")))
            .await
            .unwrap_err(),
        AuthError::TokenExpired
    );
    let wrong_aud = svc.mint(|a| a.audience = "http://127.0.0.1:1/other".into());
    assert_eq!(
        validator
            .validate(Some(&format!("Bearer {wrong_aud}")))
            .await
            .unwrap_err(),
        AuthError::InvalidAudience
    );
    let early = svc.mint(|a| a.nbf_offset = Some(600));
    assert_eq!(
        validator
            .validate(Some(&format!("Bearer {early}")))
            .await
            .unwrap_err()
            .code(),
        "INVALID_TOKEN"
    );
    let unknown_kid = svc.mint(|a| a.kid = Some("rotated-away".into()));
    assert_eq!(
        validator
            .validate(Some(&format!("Bearer {unknown_kid}")))
            .await
            .unwrap_err(),
        AuthError::InvalidSignature
    );

    svc.stop().await;
}

#[actix_web::test]
async fn admin_endpoints_count_requests_by_route_and_drain() {
    let svc = Running::start().await;
    let client = reqwest::Client::new();
    let ok = client.get(format!("{}/healthz", svc.admin)).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        client
            .get(format!("{}/readyz", svc.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    get_json(&format!("{}/jwks.json", svc.issuer)).await;
    get_json(&format!("{}/jwks.json", svc.issuer)).await;
    let missing = client
        .get(format!("{}/no/such/{}", svc.issuer, "path"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let metrics = client
        .get(format!("{}/metrics", svc.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"auth_http_requests_total{route="/jwks.json",status="200"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"auth_http_requests_total{route="unmatched",status="404"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains("/no/such"), "raw paths must not be labels");

    let public = svc.issuer.clone();
    svc.stop().await;
    // After shutdown nothing listens any more.
    assert!(
        client
            .get(format!("{public}/jwks.json"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_err()
    );
}

#[actix_web::test]
async fn key_is_created_once_and_survives_restarts() {
    let a = Running::start().await;
    let kid_a = a.dev_kid();
    let dir = a.dir.clone();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&a.key_file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    a.server.stop().await;
    // A second server on the same key file (another cluster, even): same key, served.
    let b = Running::start_in(dir).await;
    assert_eq!(b.dev_kid(), kid_a);
    let jwks = get_json(&format!("{}/jwks.json", b.issuer)).await;
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid_a.as_str()),
        "{jwks}"
    );
    b.stop().await;
}
