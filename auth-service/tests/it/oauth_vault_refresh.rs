//! The token vault's refresh against a stand-in OpenID provider (actix-web on
//! 127.0.0.1:0: discovery, JWKS, and a token endpoint that answers
//! `grant_type=refresh_token`), with two vault replicas over one real NATS:
//!
//! - a due refresh happens once across replicas (the `auth_locks` record), every
//!   caller gets the new token, the entry keeps it and the lock is gone after —
//!   also when a replica read the entry just before another one's refresh landed
//!   (a [`Relay`] in front of NATS orders the steps);
//! - a fresh token needs no upstream call;
//! - `invalid_grant` revokes the grant (mark, `grant.<gid>` revocation, entry gone),
//!   and every caller waiting for that refresh is told `revoked`;
//! - the provider down (500) is `unavailable` and keeps the entry and the grant;
//! - an entry sealed with an older key is resealed with the current one on read;
//! - garbage on `auth.vault.token` is answered `unavailable`, not dropped.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use auth_service::crypto::Sealer;
use auth_service::grants::{Grant, Grants};
use auth_service::signing::SigningKeys;
use auth_service::store::Stores;
use auth_service::upstream::{Identity, Upstream, UpstreamArgs, UpstreamTokens};
use auth_service::vault::{REFRESH_AHEAD, Secrets, Vault, VaultEntry};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use proto::auth::{VAULT_TOKEN, VaultReply, VaultRequest};
use serde_json::json;

use crate::oauth_kit::{RESOURCE, bounded};

/// Our issuer as the vault knows it (the vault only compares it).
const ISSUER: &str = "http://127.0.0.1:8790";
const CLIENT_ID: &str = "vault-it-client";
const CLIENT_SECRET: &str = "vault-it-secret";
const SUB: &str = "alice";
/// The refresh token the grant's entry starts with.
const FIRST_REFRESH: &str = "rt-0";
/// Seconds the stand-in's access tokens live.
const UPSTREAM_TTL: u64 = 3600;
/// How long the stand-in takes to answer a refresh when asked to be slow.
const SLOW_REFRESH: Duration = Duration::from_millis(300);
/// Upper bound of one vault answer in these tests.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a gated refresh waits for the test at most.
const GATE_TIMEOUT: Duration = Duration::from_secs(20);

/// How the stand-in answers a refresh.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Answer {
    Tokens = 0,
    InvalidGrant = 1,
    ServerError = 2,
}

/// What the stand-in saw and how it answers.
struct IdpState {
    /// Refresh requests received (every answer counts).
    refreshes: AtomicUsize,
    /// Refresh tokens presented, in order.
    presented: Mutex<Vec<String>>,
    slow: AtomicBool,
    answer: AtomicU8,
    /// Hold each refresh until the test adds a permit to `gate`.
    gated: AtomicBool,
    gate: tokio::sync::Semaphore,
    /// Rotate refresh tokens like a provider with reuse detection: only the latest
    /// one works, an older one is `invalid_grant`.
    rotating: AtomicBool,
    latest_refresh: Mutex<String>,
}

impl IdpState {
    fn new() -> Self {
        Self {
            refreshes: AtomicUsize::new(0),
            presented: Mutex::new(Vec::new()),
            slow: AtomicBool::new(false),
            answer: AtomicU8::new(Answer::Tokens as u8),
            gated: AtomicBool::new(false),
            gate: tokio::sync::Semaphore::new(0),
            rotating: AtomicBool::new(false),
            latest_refresh: Mutex::new(FIRST_REFRESH.to_owned()),
        }
    }

    fn set_answer(&self, a: Answer) {
        self.answer.store(a as u8, Ordering::SeqCst);
    }

    fn answer(&self) -> Answer {
        match self.answer.load(Ordering::SeqCst) {
            1 => Answer::InvalidGrant,
            2 => Answer::ServerError,
            _ => Answer::Tokens,
        }
    }

    fn refreshes(&self) -> usize {
        self.refreshes.load(Ordering::SeqCst)
    }

    fn presented(&self) -> Vec<String> {
        self.presented.lock().unwrap().clone()
    }
}

/// The stand-in OpenID provider, stopped by [`StandIn::stop`].
struct StandIn {
    issuer: String,
    state: Arc<IdpState>,
    handle: actix_web::dev::ServerHandle,
    task: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
}

async fn discovery(issuer: web::Data<String>) -> HttpResponse {
    let iss = issuer.get_ref();
    HttpResponse::Ok().json(json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "jwks_uri": format!("{iss}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
    }))
}

async fn jwks() -> HttpResponse {
    // RFC 8037 appendix A.2's public key; a refresh never verifies anything with it.
    HttpResponse::Ok().json(json!({ "keys": [{
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "standin-1",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
    }]}))
}

fn oauth_error(status: u16, error: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "error": error }))
}

async fn token(state: web::Data<IdpState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let expected = format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")));
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(expected.as_str()) {
        return oauth_error(401, "invalid_client");
    }
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return oauth_error(400, "unsupported_grant_type");
    }
    let Some(presented) = form.get("refresh_token") else {
        return oauth_error(400, "invalid_request");
    };
    let n = state.refreshes.fetch_add(1, Ordering::SeqCst) + 1;
    state.presented.lock().unwrap().push(presented.clone());
    if state.slow.load(Ordering::SeqCst) {
        tokio::time::sleep(SLOW_REFRESH).await;
    }
    if state.gated.load(Ordering::SeqCst) {
        match tokio::time::timeout(GATE_TIMEOUT, state.gate.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            _ => return HttpResponse::ServiceUnavailable().body("gate never opened"),
        }
    }
    if state.rotating.load(Ordering::SeqCst) {
        let mut latest = state.latest_refresh.lock().unwrap();
        if *presented != *latest {
            return oauth_error(400, "invalid_grant");
        }
        *latest = format!("rt-{n}");
    }
    match state.answer() {
        Answer::InvalidGrant => oauth_error(400, "invalid_grant"),
        Answer::ServerError => HttpResponse::InternalServerError().body("upstream broke"),
        Answer::Tokens => HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(json!({
                "access_token": format!("at-{n}"),
                "token_type": "Bearer",
                "expires_in": UPSTREAM_TTL,
                "refresh_token": format!("rt-{n}"),
            })),
    }
}

impl StandIn {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(IdpState::new());
        let data = web::Data::from(state.clone());
        let iss = web::Data::new(issuer.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(iss.clone())
                .route("/.well-known/openid-configuration", web::get().to(discovery))
                .route("/jwks", web::get().to(jwks))
                .route("/token", web::post().to(token))
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        let task = actix_web::rt::spawn(server);
        Self {
            issuer,
            state,
            handle,
            task,
        }
    }

    /// An `AUTH_UPSTREAM=oidc` provider pointed at this stand-in (one per replica,
    /// as each replica discovers on its own).
    fn upstream(&self) -> Arc<Upstream> {
        let up = UpstreamArgs {
            upstream: "oidc".into(),
            oidc_issuer: Some(self.issuer.clone()),
            oidc_client_id: Some(CLIENT_ID.into()),
            oidc_client_secret: Some(CLIENT_SECRET.into()),
            ..UpstreamArgs::default()
        }
        .build(
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(up.kind(), "oidc");
        Arc::new(up)
    }

    async fn stop(self) {
        self.handle.stop(true).await;
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("stand-in did not stop")
            .unwrap()
            .unwrap();
    }
}

/// NATS, the stand-in, and one grant of alice's.
struct Fixture {
    idp: StandIn,
    sealer: Sealer,
    /// The test's own view of the buckets.
    stores: Stores,
    _nc: async_nats::Client,
    gid: String,
    // Last: killed after everything that talks to it.
    nats: testkit::NatsServer,
}

async fn connect(url: &str) -> (async_nats::Client, Stores) {
    let nc = Box::pin(async_nats::connect(url)).await.unwrap();
    let js = async_nats::jetstream::new(nc.clone());
    let stores = Box::pin(Stores::open(&js)).await.unwrap();
    (nc, stores)
}

async fn grants_over(stores: &Stores, sealer: &Sealer) -> Grants {
    let keys = Box::pin(SigningKeys::open(
        stores.keys.clone(),
        sealer.clone(),
        Duration::from_secs(auth_service::config::DEFAULT_KEY_ROTATION),
        Duration::from_secs(auth_service::config::DEFAULT_KEY_PUBLISH_LEAD),
        Duration::from_secs(auth_service::config::DEFAULT_ACCESS_TTL),
        None,
    ))
    .await
    .unwrap();
    Grants {
        stores: stores.clone(),
        keys,
        issuer: ISSUER.into(),
        access_ttl: Duration::from_secs(auth_service::config::DEFAULT_ACCESS_TTL),
        refresh_grace: Duration::from_secs(auth_service::config::DEFAULT_REFRESH_GRACE),
        code_ttl: Duration::from_secs(auth_service::config::DEFAULT_CODE_TTL),
    }
}

impl Fixture {
    async fn start() -> Self {
        Box::pin(Self::start_sealed(
            Sealer::from_list(&Sealer::generate_entry("k1")).unwrap(),
        ))
        .await
    }

    async fn start_sealed(sealer: Sealer) -> Self {
        let nats = testkit::NatsServer::start().unwrap();
        let idp = StandIn::start();
        let (nc, stores) = Box::pin(connect(&nats.url)).await;
        let grants = Box::pin(grants_over(&stores, &sealer)).await;
        let identity = Identity {
            sub: SUB.into(),
            email: Some("alice@example.com".into()),
            ..Identity::default()
        };
        let (grant, _code) = Box::pin(grants.create_with_code(
            "some-client",
            identity,
            vec!["mcp".into()],
            RESOURCE,
            "http://127.0.0.1:33418/callback",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        ))
        .await
        .unwrap();
        Self {
            idp,
            sealer,
            stores,
            _nc: nc,
            gid: grant.id,
            nats,
        }
    }

    /// One auth-service replica's vault: its own NATS connection, buckets, signing
    /// keys and upstream provider.
    async fn replica_with(&self, sealer: Sealer) -> (async_nats::Client, Vault) {
        Box::pin(self.replica_at(&self.nats.url, sealer)).await
    }

    /// A replica whose NATS connection goes to `url` (e.g. through a [`Relay`]).
    async fn replica_at(&self, url: &str, sealer: Sealer) -> (async_nats::Client, Vault) {
        let (nc, stores) = Box::pin(connect(url)).await;
        let grants = Box::pin(grants_over(&stores, &sealer)).await;
        let vault = Vault::new(stores, sealer, self.idp.upstream(), grants, ISSUER.into());
        (nc, vault)
    }

    async fn replica(&self) -> (async_nats::Client, Vault) {
        Box::pin(self.replica_with(self.sealer.clone())).await
    }

    /// Keep upstream tokens for the grant that expire at `expires_at`.
    async fn store_tokens(&self, vault: &Vault, expires_at: u64) {
        let secrets = Secrets {
            tokens: Some(UpstreamTokens {
                access_token: "at-0".into(),
                token_type: "Bearer".into(),
                refresh_token: Some(FIRST_REFRESH.into()),
                expires_at: Some(expires_at),
            }),
            claims: json!({ "sub": SUB, "email": "alice@example.com" }),
        };
        Box::pin(vault.store(&self.gid, SUB, &secrets)).await.unwrap();
    }

    fn request(&self) -> VaultRequest {
        VaultRequest {
            v: proto::auth::AUTH_WIRE_VERSION,
            grant_id: self.gid.clone(),
            iss: ISSUER.into(),
            sub: SUB.into(),
            refresh: false,
        }
    }

    async fn grant(&self) -> Grant {
        self.stores.grants.get::<Grant>(&self.gid).await.unwrap().unwrap().0
    }

    async fn raw_entry(&self) -> Option<VaultEntry> {
        self.stores
            .vault
            .get::<VaultEntry>(&self.gid)
            .await
            .unwrap()
            .map(|(e, _)| e)
    }

    async fn lock_exists(&self) -> bool {
        let key = format!("refresh.{}", self.gid);
        self.stores
            .locks
            .get::<serde_json::Value>(&key)
            .await
            .unwrap()
            .is_some()
    }

    async fn revocation(&self) -> Option<proto::auth::Revocation> {
        let key = proto::auth::revoked_grant_key(&self.gid);
        self.stores
            .revocations
            .get::<proto::auth::Revocation>(&key)
            .await
            .unwrap()
            .map(|(r, _)| r)
    }

    async fn stop(self) {
        self.idp.stop().await;
    }
}

/// A token that is due for a refresh (expires within [`REFRESH_AHEAD`]).
fn due() -> u64 {
    auth_service::unix_now() + REFRESH_AHEAD.as_secs() / 2
}

/// A token with a long life ahead.
fn far_ahead() -> u64 {
    auth_service::unix_now() + 24 * 3600
}

async fn answer(vault: &Vault, req: &VaultRequest) -> VaultReply {
    tokio::time::timeout(ANSWER_TIMEOUT, Box::pin(vault.current_token(req)))
        .await
        .expect("the vault did not answer in time")
}

fn access_token(reply: &VaultReply) -> &str {
    match reply {
        VaultReply::Token { access_token, .. } => access_token,
        other => panic!("expected a token, got {other:?}"),
    }
}

#[actix_web::test]
async fn refresh_happens_once_across_replicas() {
    bounded(Box::pin(async {
        let fx = Box::pin(Fixture::start()).await;
        let (_nc_a, a) = Box::pin(fx.replica()).await;
        let (_nc_b, b) = Box::pin(fx.replica()).await;
        Box::pin(fx.store_tokens(&a, due())).await;
        fx.idp.state.slow.store(true, Ordering::SeqCst);

        let req = fx.request();
        let calls = (0..8).map(|i| {
            let vault = if i % 2 == 0 { &a } else { &b };
            let req = &req;
            async move { answer(vault, req).await }
        });
        let replies = futures::future::join_all(calls).await;
        let seen: Vec<String> = replies
            .iter()
            .map(|r| match r {
                VaultReply::Token { access_token, .. } => access_token.clone(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            fx.idp.state.presented(),
            vec![FIRST_REFRESH.to_owned()],
            "one refresh across both replicas; the callers got {seen:?}"
        );

        let now = auth_service::unix_now();
        for reply in &replies {
            let VaultReply::Token {
                access_token,
                token_type,
                expires_at,
            } = reply
            else {
                panic!("expected a token, got {reply:?}");
            };
            assert_eq!(access_token, "at-1", "every caller gets the one new token");
            assert_eq!(token_type, "Bearer");
            let exp = expires_at.expect("the provider said expires_in");
            assert!(
                exp + 30 >= now + UPSTREAM_TTL && exp <= now + UPSTREAM_TTL,
                "expires_in counted from the refresh: {exp}"
            );
        }
        assert_eq!(fx.idp.state.refreshes(), 1, "one refresh across both replicas");
        assert_eq!(fx.idp.state.presented(), vec![FIRST_REFRESH.to_owned()]);
        assert!(!fx.lock_exists().await, "the refresh lock is released");

        // The entry holds the new tokens (the rotated refresh token too)...
        let (entry, secrets, _) = Box::pin(b.load(&fx.gid)).await.unwrap().unwrap();
        assert_eq!(entry.sub, SUB);
        let tokens = secrets.tokens.unwrap();
        assert_eq!(tokens.access_token, "at-1");
        assert_eq!(tokens.refresh_token.as_deref(), Some("rt-1"));
        assert_eq!(secrets.claims["email"], "alice@example.com", "claims survive a refresh");
        assert!(
            !entry.sealed.contains("at-1") && !entry.sealed.contains("rt-1"),
            "sealed, not plain"
        );

        // ...so later calls, on either replica, need no upstream.
        assert_eq!(access_token(&answer(&a, &req).await), "at-1");
        assert_eq!(access_token(&answer(&b, &req).await), "at-1");
        assert_eq!(fx.idp.state.refreshes(), 1);
        Box::pin(fx.stop()).await;
    }))
    .await;
}

#[actix_web::test]
async fn fresh_token_needs_no_refresh() {
    bounded(Box::pin(async {
        let fx = Box::pin(Fixture::start()).await;
        let (_nc, vault) = Box::pin(fx.replica()).await;
        let exp = far_ahead();
        Box::pin(fx.store_tokens(&vault, exp)).await;
        for _ in 0..3 {
            let reply = answer(&vault, &fx.request()).await;
            assert_eq!(
                reply,
                VaultReply::Token {
                    access_token: "at-0".into(),
                    token_type: "Bearer".into(),
                    expires_at: Some(exp)
                }
            );
        }
        assert_eq!(fx.idp.state.refreshes(), 0);
        assert!(!fx.lock_exists().await, "no lock taken for a fresh token");
        Box::pin(fx.stop()).await;
    }))
    .await;
}

#[actix_web::test]
async fn a_token_refused_downstream_is_refreshed_when_asked_even_if_fresh() {
    bounded(Box::pin(async {
        let fx = Box::pin(Fixture::start()).await;
        let (_nc, vault) = Box::pin(fx.replica()).await;
        Box::pin(fx.store_tokens(&vault, far_ahead())).await;
        let forced = VaultRequest {
            refresh: true,
            ..fx.request()
        };
        let reply = answer(&vault, &forced).await;
        assert_ne!(access_token(&reply), "at-0", "{reply:?}");
        assert_eq!(fx.idp.state.refreshes(), 1);
        // The refreshed token is what a plain request now gets, without refreshing again.
        let again = answer(&vault, &fx.request()).await;
        assert_eq!(access_token(&again), access_token(&reply));
        assert_eq!(fx.idp.state.refreshes(), 1);
        Box::pin(fx.stop()).await;
    }))
    .await;
}

#[actix_web::test]
async fn invalid_grant_revokes_the_grant() {
    bounded(Box::pin(async {
        let fx = Box::pin(Fixture::start()).await;
        let (_nc, vault) = Box::pin(fx.replica()).await;
        Box::pin(fx.store_tokens(&vault, due())).await;
        fx.idp.state.set_answer(Answer::InvalidGrant);

        assert_eq!(answer(&vault, &fx.request()).await, VaultReply::Revoked);
        assert_eq!(fx.idp.state.refreshes(), 1);
        assert_eq!(fx.idp.state.presented(), vec![FIRST_REFRESH.to_owned()]);

        let grant = fx.grant().await;
        assert_eq!(grant.revoked.as_deref(), Some("upstream_invalid_grant"));
        assert!(grant.refresh.is_none(), "its refresh tokens die with it");
        let revocation = fx
            .revocation()
            .await
            .expect("a grant.<gid> revocation for the gateways");
        assert_eq!(revocation.v, proto::auth::AUTH_WIRE_VERSION);
        assert!(revocation.until > auth_service::unix_now());
        assert!(fx.raw_entry().await.is_none(), "the sealed upstream tokens are deleted");
        assert!(!fx.lock_exists().await, "the refresh lock is released");

        // Next time: revoked, without asking the provider again.
        fx.idp.state.set_answer(Answer::Tokens);
        assert_eq!(answer(&vault, &fx.request()).await, VaultReply::Revoked);
        assert_eq!(fx.idp.state.refreshes(), 1);
        Box::pin(fx.stop()).await;
    }))
    .await;
}

/// Callers that wait for another replica's refresh learn its outcome: when the
/// provider refused the refresh token, they too are told `revoked` (not `not_found`
/// because the entry vanished with the grant).
#[actix_web::test]
async fn invalid_grant_is_revoked_for_every_waiting_caller() {
    bounded(Box::pin(async {
        let fx = Box::pin(Fixture::start()).await;
        let (_nc_a, a) = Box::pin(fx.replica()).await;
        let (_nc_b, b) = Box::pin(fx.replica()).await;
        Box::pin(fx.store_tokens(&a, due())).await;
        fx.idp.state.set_answer(Answer::InvalidGrant);
        fx.idp.state.slow.store(true, Ordering::SeqCst);

        let req = fx.request();
        let calls = (0..6).map(|i| {
            let vault = if i % 2 == 0 { &a } else { &b };
            let req = &req;
            async move { answer(vault, req).await }
        });
        let replies = futures::future::join_all(calls).await;
        assert_eq!(fx.idp.state.refreshes(), 1, "one refresh, refused");
        assert_eq!(fx.grant().await.revoked.as_deref(), Some("upstream_invalid_grant"));
        assert_eq!(
            replies,
            vec![VaultReply::Revoked; 6],
            "every caller is told the grant is revoked"
        );
        Box::pin(fx.stop()).await;
    }))
    .await;
}

#[actix_web::test]
async fn upstream_down_is_unavailable_and_keeps_the_entry() {
    bounded(Box::pin(async {
        let fx = Box::pin(Fixture::start()).await;
        let (_nc, vault) = Box::pin(fx.replica()).await;
        let exp = due();
        Box::pin(fx.store_tokens(&vault, exp)).await;
        fx.idp.state.set_answer(Answer::ServerError);

        let reply = answer(&vault, &fx.request()).await;
        assert!(matches!(reply, VaultReply::Unavailable { .. }), "{reply:?}");
        assert_eq!(fx.idp.state.refreshes(), 1);

        let grant = fx.grant().await;
        assert!(
            grant.revoked.is_none(),
            "a provider outage does not revoke: {:?}",
            grant.revoked
        );
        assert!(fx.revocation().await.is_none());
        assert!(!fx.lock_exists().await, "the refresh lock is released after a failure");
        let (_, secrets, _) = Box::pin(vault.load(&fx.gid)).await.unwrap().expect("the entry is kept");
        let tokens = secrets.tokens.unwrap();
        assert_eq!(tokens.access_token, "at-0");
        assert_eq!(tokens.refresh_token.as_deref(), Some(FIRST_REFRESH));
        assert_eq!(tokens.expires_at, Some(exp));

        // The provider is back: the same entry refreshes.
        fx.idp.state.set_answer(Answer::Tokens);
        assert_eq!(access_token(&answer(&vault, &fx.request()).await), "at-2");
        assert_eq!(
            fx.idp.state.presented(),
            vec![FIRST_REFRESH.to_owned(), FIRST_REFRESH.to_owned()]
        );
        Box::pin(fx.stop()).await;
    }))
    .await;
}

#[actix_web::test]
async fn stale_key_entry_is_resealed() {
    bounded(Box::pin(async {
        let k1 = Sealer::generate_entry("k1");
        let k2 = Sealer::generate_entry("k2");
        let old = Sealer::from_list(&k1).unwrap();
        let fx = Box::pin(Fixture::start_sealed(old.clone())).await;
        let (_nc_old, before) = Box::pin(fx.replica_with(old)).await;
        let exp = far_ahead();
        Box::pin(fx.store_tokens(&before, exp)).await;
        assert!(fx.raw_entry().await.unwrap().sealed.starts_with("k1."));

        let current = Sealer::from_list(&format!("{k2},{k1}")).unwrap();
        let (_nc_new, after) = Box::pin(fx.replica_with(current.clone())).await;
        let (entry, secrets, rev) = Box::pin(after.load(&fx.gid)).await.unwrap().expect("an entry");
        let tokens = secrets.tokens.unwrap();
        assert_eq!(tokens.access_token, "at-0");
        assert_eq!(tokens.expires_at, Some(exp));
        assert_eq!(secrets.claims["sub"], SUB);

        let stored = fx.raw_entry().await.unwrap();
        assert!(stored.sealed.starts_with("k2."), "resealed with the current key");
        assert!(!current.is_stale(&stored.sealed));
        assert_eq!(stored.sealed, entry.sealed, "load returns what it wrote");
        assert_eq!(stored.sub, SUB);
        let (_, now_rev) = fx.stores.vault.get::<VaultEntry>(&fx.gid).await.unwrap().unwrap();
        assert_eq!(rev, now_rev, "load returns the new revision");

        // Read again: nothing more to reseal.
        let (_, _, rev2) = Box::pin(after.load(&fx.gid)).await.unwrap().unwrap();
        assert_eq!(rev2, rev);
        // And the vault still answers with it.
        assert_eq!(access_token(&answer(&after, &fx.request()).await), "at-0");
        assert_eq!(fx.idp.state.refreshes(), 0);
        Box::pin(fx.stop()).await;
    }))
    .await;
}

/// Ask [`VAULT_TOKEN`] with a raw payload, retrying while no replica listens yet.
async fn ask_raw(nc: &async_nats::Client, payload: Vec<u8>) -> VaultReply {
    let msg = testkit::eventually(50, Duration::from_millis(100), || {
        let (nc, payload) = (nc.clone(), payload.clone());
        async move {
            tokio::time::timeout(Duration::from_secs(10), nc.request(VAULT_TOKEN, payload.into()))
                .await?
                .map_err(anyhow::Error::from)
        }
    })
    .await
    .unwrap();
    rmp_serde::from_slice(&msg.payload).unwrap_or_else(|e| panic!("not a vault reply ({e}): {:?}", msg.payload))
}

#[actix_web::test]
async fn malformed_vault_request_over_nats_gets_unavailable() {
    bounded(Box::pin(async {
        let fx = Box::pin(Fixture::start()).await;
        let (nc, vault) = Box::pin(fx.replica()).await;
        Box::pin(fx.store_tokens(&vault, far_ahead())).await;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let serving = actix_web::rt::spawn(Box::pin(vault.serve(nc.clone(), stop_rx)));

        let garbage = ask_raw(&nc, b"\xc1 this is not msgpack \x00\xff".to_vec()).await;
        assert_eq!(
            garbage,
            VaultReply::Unavailable {
                message: "malformed vault request".into()
            }
        );
        let empty = ask_raw(&nc, Vec::new()).await;
        assert!(matches!(empty, VaultReply::Unavailable { .. }), "{empty:?}");
        let wrong_shape = ask_raw(&nc, rmp_serde::to_vec_named(&json!({ "hello": "world" })).unwrap()).await;
        assert!(matches!(wrong_shape, VaultReply::Unavailable { .. }), "{wrong_shape:?}");
        let future = VaultRequest {
            v: proto::auth::AUTH_WIRE_VERSION + 1,
            ..fx.request()
        };
        let reply = ask_raw(&nc, rmp_serde::to_vec_named(&future).unwrap()).await;
        assert!(
            matches!(&reply, VaultReply::Unavailable { message } if message.contains("version")),
            "{reply:?}"
        );

        // The loop survived all that: a good request still gets its token.
        let good = ask_raw(&nc, rmp_serde::to_vec_named(&fx.request()).unwrap()).await;
        assert_eq!(access_token(&good), "at-0");

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("serve did not stop")
            .unwrap()
            .unwrap();
        Box::pin(fx.stop()).await;
    }))
    .await;
}

/// A TCP relay in front of nats-server for one replica. Armed with a byte pattern,
/// it holds the first chunk the replica sends that contains it (e.g. its publish
/// to `$KV.auth_locks.refresh.<gid>`) until released, so a test can order that
/// step against what another replica does.
struct Relay {
    url: String,
    armed: Arc<Mutex<Option<Vec<u8>>>>,
    holding: Arc<AtomicBool>,
    release: Arc<tokio::sync::Semaphore>,
    accept: actix_web::rt::task::JoinHandle<()>,
}

impl Relay {
    async fn start(nats_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("nats://{}", listener.local_addr().unwrap());
        let armed: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
        let holding = Arc::new(AtomicBool::new(false));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (a, h, r) = (armed.clone(), holding.clone(), release.clone());
        let accept = actix_web::rt::spawn(async move {
            // Dropping the set (when this task is aborted) ends every connection.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", nats_port)).await else {
                    break;
                };
                let (mut client_rd, mut client_wr) = client.into_split();
                let (mut server_rd, mut server_wr) = server.into_split();
                conns.spawn(async move {
                    let _ = tokio::io::copy(&mut server_rd, &mut client_wr).await;
                });
                let (a, h, r) = (a.clone(), h.clone(), r.clone());
                conns.spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut recent: Vec<u8> = Vec::new();
                    loop {
                        let n = match client_rd.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        recent.extend_from_slice(&buf[..n]);
                        let pattern = a.lock().unwrap().clone();
                        if let Some(p) = pattern {
                            if recent.windows(p.len()).any(|w| w == p.as_slice()) {
                                *a.lock().unwrap() = None;
                                h.store(true, Ordering::SeqCst);
                                if let Ok(permit) = r.acquire().await {
                                    permit.forget();
                                }
                                h.store(false, Ordering::SeqCst);
                            }
                            let keep = recent.len().saturating_sub(p.len());
                            recent.drain(..keep);
                        } else {
                            recent.clear();
                        }
                        if server_wr.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self {
            url,
            armed,
            holding,
            release,
            accept,
        }
    }

    fn arm(&self, pattern: &str) {
        *self.armed.lock().unwrap() = Some(pattern.as_bytes().to_vec());
    }

    fn holding(&self) -> bool {
        self.holding.load(Ordering::SeqCst)
    }

    fn release(&self) {
        self.release.add_permits(1);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.release.close();
        self.accept.abort();
    }
}

/// Wait (bounded) until `check` holds.
async fn until(what: &str, check: impl Fn() -> bool) {
    testkit::eventually(200, Duration::from_millis(25), || {
        let ok = check();
        async move { if ok { Ok(()) } else { Err(anyhow::anyhow!("not yet")) } }
    })
    .await
    .unwrap_or_else(|e| panic!("{what}: {e:#}"));
}

/// Replica B read the entry (due) while A was refreshing; by the time B's attempt
/// to take the lock reaches NATS, A has stored the new tokens and released the
/// lock. B takes the free lock — and must then see that the entry changed and use
/// A's tokens, not refresh again with the refresh token A already spent (with a
/// provider that rotates refresh tokens, that is `invalid_grant`, and the user's
/// grant would be revoked for nothing).
#[actix_web::test]
async fn a_replica_that_read_before_anothers_refresh_does_not_refresh_again() {
    bounded(Box::pin(async {
        let fx = Box::pin(Fixture::start()).await;
        let (_nc_a, a) = Box::pin(fx.replica()).await;
        let relay = Relay::start(fx.nats.port).await;
        let (_nc_b, b) = Box::pin(fx.replica_at(&relay.url, fx.sealer.clone())).await;
        Box::pin(fx.store_tokens(&a, due())).await;
        let idp = fx.idp.state.clone();
        idp.rotating.store(true, Ordering::SeqCst);
        idp.gated.store(true, Ordering::SeqCst);
        let req = fx.request();

        // A takes the lock and is at the provider.
        let a_call = {
            let (a, req) = (a.clone(), req.clone());
            actix_web::rt::spawn(Box::pin(async move { answer(&a, &req).await }))
        };
        until("A asks the provider", || idp.refreshes() == 1).await;
        assert!(fx.lock_exists().await);

        // B reads the due entry; its lock attempt is held on the way to NATS.
        relay.arm(&format!("$KV.{}.refresh.{}", auth_service::store::LOCKS_BUCKET, fx.gid));
        let b_call = {
            let (b, req) = (b.clone(), req.clone());
            actix_web::rt::spawn(Box::pin(async move { answer(&b, &req).await }))
        };
        until("B tries to take the lock", || relay.holding()).await;

        // A finishes: new tokens stored, lock released.
        idp.gate.add_permits(1);
        let a_reply = tokio::time::timeout(ANSWER_TIMEOUT, a_call).await.unwrap().unwrap();
        assert_eq!(access_token(&a_reply), "at-1");
        assert!(!fx.lock_exists().await);

        // Now B's lock attempt arrives.
        idp.gate.add_permits(4);
        relay.release();
        let b_reply = tokio::time::timeout(ANSWER_TIMEOUT, b_call).await.unwrap().unwrap();

        let grant = fx.grant().await;
        assert!(
            grant.revoked.is_none(),
            "the grant was revoked ({:?}); B's reply: {b_reply:?}",
            grant.revoked
        );
        assert_eq!(
            idp.presented(),
            vec![FIRST_REFRESH.to_owned()],
            "B refreshed again with the refresh token A had already used"
        );
        assert_eq!(access_token(&b_reply), "at-1", "B answers with A's new token");
        let (_, secrets, _) = Box::pin(a.load(&fx.gid)).await.unwrap().expect("the entry is kept");
        assert_eq!(secrets.tokens.unwrap().access_token, "at-1");
        assert!(!fx.lock_exists().await);
        drop(relay);
        Box::pin(fx.stop()).await;
    }))
    .await;
}
