//! Test kit for the OAuth server: starts a real nats-server and the auth-service
//! (`server::bind_oauth`, static-users provider) in-process on 127.0.0.1:0, and
//! plays the two other parties over HTTP:
//!
//! - a [`Browser`] that never follows redirects and carries its own cookies, so
//!   every hop of /authorize → consent → /login → redirect_uri can be inspected;
//! - an OAuth client ([`TestClient`]) that registers and calls /token, /revoke and
//!   /introspect with the authentication method it registered.
//!
//! Every request has a timeout and every test body runs under [`bounded`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use auth_service::config::{OAuthArgs, OAuthConfig};
use auth_service::store::Stores;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

/// The MCP resource the test server issues tokens for.
pub const RESOURCE: &str = "http://localhost:8788/mcp";
/// Alice: permission `image_generation` (deploy/local/static-users.json).
pub const ALICE: (&str, &str) = ("alice", "alice-dev-password");
/// Bob: no permissions.
pub const BOB: (&str, &str) = ("bob", "bob-dev-password");
/// Upper bound of one HTTP request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of one test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The cookie HMAC key of the test server.
pub const COOKIE_KEY: &str = "it-cookie-key-0123456789abcdef0123456789";

/// Run a test body with [`TEST_TIMEOUT`]. The body lives on the heap: the futures
/// of a whole flow are large in debug builds and the test thread's stack is not.
pub async fn bounded<F: Future>(f: F) -> F::Output {
    match tokio::time::timeout(TEST_TIMEOUT, Box::pin(f)).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {TEST_TIMEOUT:?}"),
    }
}

fn static_users_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/static-users.json")
}

/// The OAuth settings of a test server (defaults, fresh keys).
pub fn oauth_args(nats_url: &str) -> OAuthArgs {
    OAuthArgs {
        resource_identifier: RESOURCE.into(),
        cookie_encryption_key: COOKIE_KEY.into(),
        register_rate: 1000,
        browser_rate: 100_000,
        ..OAuthArgs::ephemeral(nats_url)
    }
}

/// The operator's machine clients for a test server: `(id, introspect)` each, written
/// to a fresh AUTH_MACHINE_CLIENTS_FILE; the file's path and the clients with their
/// secrets (`client_secret_basic`).
pub fn machine_clients(clients: &[(&str, bool)]) -> (PathBuf, Vec<TestClient>) {
    let mut entries = Vec::new();
    let mut out = Vec::new();
    for (id, introspect) in clients {
        let (secret, entry) = auth_service::clients::machine::new_entry(id, None, *introspect, true);
        entries.push(entry);
        out.push(TestClient {
            client_id: (*id).to_owned(),
            secret: Some(secret),
            method: "client_secret_basic".into(),
            redirect_uri: String::new(),
        });
    }
    let path = std::env::temp_dir().join(format!("machine-clients-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, serde_json::Value::Array(entries).to_string()).unwrap();
    (path, out)
}

/// An HTTP client that never follows redirects.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

/// `application/x-www-form-urlencoded` body of `pairs`.
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// A response, read completely.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    async fn read(r: reqwest::Response) -> Self {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.unwrap();
        Self { status, headers, body }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn location(&self) -> Option<&str> {
        self.header(LOCATION.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not json ({e}): {}", self.body))
    }

    /// The `error` of an RFC 6749 JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }

    /// The query parameters of the `Location` header.
    pub fn redirect_params(&self) -> HashMap<String, String> {
        let loc = self
            .location()
            .unwrap_or_else(|| panic!("no Location ({}): {}", self.status, self.body));
        let url = url::Url::parse(loc).unwrap();
        url.query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// A page shown instead of a redirect: this status, an HTML `#error`, and no
    /// `Location` (no open redirect).
    pub fn assert_shown(&self, status: u16) {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(self.location().is_none(), "must not redirect: {:?}", self.location());
        assert!(self.body.contains("id=\"error\""), "{}", self.body);
    }

    /// A redirect to `redirect_uri` with `error`, the request's `state` and our `iss`.
    pub fn assert_redirect_error(&self, redirect_uri: &str, error: &str, state: &str, issuer: &str) {
        assert_eq!(self.status, 302, "{}", self.body);
        let loc = self.location().unwrap();
        assert!(loc.starts_with(&format!("{redirect_uri}?")), "{loc}");
        let p = self.redirect_params();
        assert_eq!(p.get("error").map(String::as_str), Some(error), "{loc}");
        assert_eq!(p.get("state").map(String::as_str), Some(state), "{loc}");
        assert_eq!(p.get("iss").map(String::as_str), Some(issuer), "{loc}");
        assert!(!p.contains_key("code"), "{loc}");
    }
}

/// The value of `<input type="hidden" name="{name}" value="…">` in a page.
pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no hidden {name} in {html}"))
        + marker.len();
    let len = html[start..].find('"').unwrap();
    html[start..start + len].to_owned()
}

/// A browser: no redirects followed, cookies kept by hand.
pub struct Browser {
    http: reqwest::Client,
    jar: BTreeMap<String, String>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        Self {
            http: http_client(),
            jar: BTreeMap::new(),
        }
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.jar.get(name).map(String::as_str)
    }

    pub fn set_cookie(&mut self, name: &str, value: &str) {
        self.jar.insert(name.to_owned(), value.to_owned());
    }

    fn cookie_header(&self) -> Option<String> {
        (!self.jar.is_empty()).then(|| {
            self.jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn absorb(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            let first = v.split(';').next().unwrap_or_default();
            let Some((name, value)) = first.split_once('=') else {
                continue;
            };
            let expired = v.to_ascii_lowercase().contains("max-age=0");
            if value.is_empty() || expired {
                self.jar.remove(name.trim());
            } else {
                self.jar.insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }

    pub async fn get(&mut self, url: &str) -> Resp {
        let mut req = self.http.get(url);
        if let Some(c) = self.cookie_header() {
            req = req.header(COOKIE, c);
        }
        let resp = Resp::read(req.send().await.unwrap()).await;
        self.absorb(&resp.headers);
        resp
    }

    pub async fn post_form(&mut self, url: &str, pairs: &[(&str, &str)]) -> Resp {
        let mut req = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form_body(pairs));
        if let Some(c) = self.cookie_header() {
            req = req.header(COOKIE, c);
        }
        let resp = Resp::read(req.send().await.unwrap()).await;
        self.absorb(&resp.headers);
        resp
    }
}

/// A PKCE verifier and its S256 challenge.
#[derive(Clone)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

impl Pkce {
    pub fn new() -> Self {
        let bytes: [u8; 32] = rand::random();
        let verifier = B64.encode(bytes);
        let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
        Self { verifier, challenge }
    }
}

/// A registered client.
#[derive(Clone, Debug)]
pub struct TestClient {
    pub client_id: String,
    pub secret: Option<String>,
    /// `none`, `client_secret_basic` or `client_secret_post`.
    pub method: String,
    pub redirect_uri: String,
}

impl TestClient {
    /// The same client presenting another secret.
    pub fn with_secret(&self, secret: &str) -> Self {
        Self {
            secret: Some(secret.to_owned()),
            ..self.clone()
        }
    }
}

/// An authorization request's query, in order; edit with [`set`] and [`unset`].
pub type Params = Vec<(String, String)>;

pub fn set(p: &mut Params, k: &str, v: &str) {
    p.retain(|(key, _)| key != k);
    p.push((k.to_owned(), v.to_owned()));
}

pub fn unset(p: &mut Params, k: &str) {
    p.retain(|(key, _)| key != k);
}

/// Tokens from a successful /token answer.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: Option<String>,
    pub body: Value,
}

impl Tokens {
    pub fn from_resp(r: &Resp) -> Self {
        assert_eq!(r.status, 200, "{}", r.body);
        let body = r.json();
        Self {
            access: body["access_token"].as_str().unwrap().to_owned(),
            refresh: body["refresh_token"].as_str().map(str::to_owned),
            body,
        }
    }

    /// The access token's claims, unverified.
    pub fn claims(&self) -> Value {
        jwt_claims(&self.access)
    }

    /// The grant id (`gid`) of the access token.
    pub fn gid(&self) -> String {
        self.claims()["gid"].as_str().unwrap().to_owned()
    }
}

/// The payload of a JWT, unverified.
pub fn jwt_claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

/// A code from a finished browser flow, and its PKCE verifier.
pub struct Issued {
    pub code: String,
    pub pkce: Pkce,
}

/// The auth-service OAuth server, running until [`OAuthServer::stop`].
pub struct OAuthServer {
    pub issuer: String,
    /// Where requests go (`http://addr`); differs from `issuer` for an https issuer.
    pub base: String,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: String,
    pub cfg: OAuthConfig,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<actix_web::rt::task::JoinHandle<Result<(), auth_service::RunError>>>,
    // Last: dropped (killed) after everything that talks to it.
    pub nats: testkit::NatsServer,
}

impl OAuthServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Start with edited settings (the NATS URL is filled in).
    pub async fn start_with(edit: impl FnOnce(&mut OAuthArgs)) -> Self {
        let nats = testkit::NatsServer::start().unwrap();
        let mut args = oauth_args(&nats.url);
        edit(&mut args);
        let cfg = args.into_config().unwrap();
        Self::start_on(nats, cfg, "http", None).await
    }

    /// Start with a development key (`AUTH_DEV_KEY_FILE`, created if missing) that
    /// `mint-token` signs with and the JWKS publishes next to the rotating keys.
    pub async fn start_with_dev_key(key_file: &std::path::Path) -> Self {
        let nats = testkit::NatsServer::start().unwrap();
        let cfg = oauth_args(&nats.url).into_config().unwrap();
        let key = auth_service::key::load_or_generate(key_file).unwrap();
        Self::start_on(nats, cfg, "http", Some(key)).await
    }

    /// Start with an `https://` issuer (as behind a TLS ingress) while serving plain
    /// http on loopback: requests go to [`OAuthServer::base`].
    pub async fn start_https_issuer() -> Self {
        let nats = testkit::NatsServer::start().unwrap();
        let cfg = oauth_args(&nats.url).into_config().unwrap();
        Self::start_on(nats, cfg, "https", None).await
    }

    async fn start_on(
        nats: testkit::NatsServer,
        cfg: OAuthConfig,
        issuer_scheme: &str,
        dev_key: Option<auth_service::SigningKey>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let issuer = format!("{issuer_scheme}://{addr}");
        let config = auth_service::Config {
            listen: addr,
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            issuer: issuer.clone(),
            dev_key_file: PathBuf::new(),
        };
        let upstream = auth_service::upstream::UpstreamArgs {
            upstream: "static".into(),
            static_users_file: static_users_file(),
            ..Default::default()
        }
        .build(reqwest::Client::new())
        .unwrap();
        let bound = Box::pin(auth_service::server::bind_oauth(
            &config,
            cfg.clone(),
            upstream,
            dev_key,
            listener,
        ))
        .await
        .unwrap();
        let admin = format!("http://{}", bound.admin_addr);
        let (tx, rx) = oneshot::channel::<()>();
        let task = actix_web::rt::spawn(Box::pin(bound.serve(async {
            let _ = rx.await;
        })));
        Self {
            issuer,
            base,
            admin,
            cfg,
            http: http_client(),
            stop: Some(tx),
            task: Some(task),
            nats,
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("server did not stop")
                .unwrap()
                .unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A NATS client of our own and the service's buckets.
    pub async fn stores(&self) -> (async_nats::Client, Stores) {
        let nc = async_nats::connect(&self.nats.url).await.unwrap();
        let js = async_nats::jetstream::new(nc.clone());
        let stores = Box::pin(Stores::open(&js)).await.unwrap();
        (nc, stores)
    }

    /// The revocation entry under `key` in `auth_revocations`, if any.
    pub async fn revocation(&self, key: &str) -> Option<proto::auth::Revocation> {
        let (_nc, stores) = self.stores().await;
        stores
            .revocations
            .get::<proto::auth::Revocation>(key)
            .await
            .unwrap()
            .map(|(r, _)| r)
    }

    pub async fn get(&self, path: &str) -> Resp {
        Resp::read(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    /// `POST /register` with a JSON body.
    pub async fn register(&self, meta: &Value) -> Resp {
        Resp::read(self.http.post(self.url("/register")).json(meta).send().await.unwrap()).await
    }

    pub async fn register_client(&self, meta: Value) -> TestClient {
        let r = self.register(&meta).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let body = r.json();
        TestClient {
            client_id: body["client_id"].as_str().unwrap().to_owned(),
            secret: body["client_secret"].as_str().map(str::to_owned),
            method: body["token_endpoint_auth_method"].as_str().unwrap().to_owned(),
            redirect_uri: body["redirect_uris"][0].as_str().unwrap().to_owned(),
        }
    }

    /// A public client (`none`) with one loopback redirect URI.
    pub async fn register_public(&self) -> TestClient {
        self.register_client(json!({
            "client_name": "IT public client",
            "redirect_uris": ["http://127.0.0.1:33418/callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }))
        .await
    }

    /// A confidential client (`client_secret_basic`).
    pub async fn register_confidential(&self) -> TestClient {
        self.register_client(json!({
            "client_name": "IT confidential client",
            "redirect_uris": ["https://app.example.com/oauth/callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }))
        .await
    }

    /// The query of a normal authorization request.
    pub fn auth_params(&self, client: &TestClient, pkce: &Pkce, state: &str) -> Params {
        [
            ("response_type", "code"),
            ("client_id", client.client_id.as_str()),
            ("redirect_uri", client.redirect_uri.as_str()),
            ("code_challenge", pkce.challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("state", state),
            ("scope", "mcp"),
            ("resource", RESOURCE),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    pub fn authorize_url(&self, params: &Params) -> String {
        let mut url = url::Url::parse(&self.url("/authorize")).unwrap();
        url.query_pairs_mut().extend_pairs(params.iter());
        url.to_string()
    }

    /// `POST /consent` with `action` for the consent page `page`.
    pub async fn consent(&self, browser: &mut Browser, page: &Resp, action: &str) -> Resp {
        assert_eq!(page.status, 200, "not a consent page: {}", page.body);
        let tx = hidden(&page.body, "tx");
        let csrf = hidden(&page.body, "csrf");
        browser
            .post_form(
                &self.url("/consent"),
                &[("tx", &tx), ("csrf", &csrf), ("action", action)],
            )
            .await
    }

    /// Follow a redirect to our /login page and sign in there.
    pub async fn login(&self, browser: &mut Browser, to_login: &Resp, user: (&str, &str)) -> Resp {
        assert_eq!(to_login.status, 302, "{}", to_login.body);
        let loc = to_login.location().unwrap().to_owned();
        assert!(loc.starts_with(&self.url("/login?tx=")), "{loc}");
        let page = browser.get(&loc).await;
        assert_eq!(page.status, 200, "{}", page.body);
        self.submit_login(browser, &page, user).await
    }

    /// Submit the login form of `page`.
    pub async fn submit_login(&self, browser: &mut Browser, page: &Resp, (user, password): (&str, &str)) -> Resp {
        let tx = hidden(&page.body, "tx");
        let csrf = hidden(&page.body, "csrf");
        browser
            .post_form(
                &self.url("/login"),
                &[("tx", &tx), ("csrf", &csrf), ("username", user), ("password", password)],
            )
            .await
    }

    /// The whole browser side in `browser`: authorize, approve (when asked), log in;
    /// returns the final response (302 to the client).
    pub async fn browser_flow(
        &self,
        browser: &mut Browser,
        client: &TestClient,
        pkce: &Pkce,
        state: &str,
        user: (&str, &str),
    ) -> Resp {
        let first = browser
            .get(&self.authorize_url(&self.auth_params(client, pkce, state)))
            .await;
        let to_login = if first.status == 200 {
            Box::pin(self.consent(browser, &first, "approve")).await
        } else {
            first
        };
        Box::pin(self.login(browser, &to_login, user)).await
    }

    /// A fresh browser through the whole flow; the code it ends with.
    pub async fn issue_code(&self, client: &TestClient, user: (&str, &str)) -> Issued {
        let mut browser = Browser::new();
        let pkce = Pkce::new();
        let state = B64.encode(rand::random::<[u8; 16]>());
        let done = Box::pin(self.browser_flow(&mut browser, client, &pkce, &state, user)).await;
        assert_eq!(done.status, 302, "{}", done.body);
        let p = done.redirect_params();
        assert_eq!(p.get("state"), Some(&state));
        let code = p
            .get("code")
            .unwrap_or_else(|| panic!("no code: {:?}", done.location()))
            .clone();
        Issued { code, pkce }
    }

    /// A POST to a token-family endpoint as `client` (its registered method).
    pub async fn client_post(&self, path: &str, client: &TestClient, params: &[(&str, &str)]) -> Resp {
        let mut pairs: Vec<(&str, &str)> = params.to_vec();
        let mut req = self.http.post(self.url(path));
        match (client.method.as_str(), client.secret.as_deref()) {
            ("client_secret_basic", Some(secret)) => {
                let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let basic = STANDARD.encode(format!("{}:{}", enc(&client.client_id), enc(secret)));
                req = req.header(AUTHORIZATION, format!("Basic {basic}"));
            }
            ("client_secret_post", Some(secret)) => {
                pairs.push(("client_id", &client.client_id));
                pairs.push(("client_secret", secret));
            }
            _ => pairs.push(("client_id", &client.client_id)),
        }
        let req = req
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form_body(&pairs));
        Resp::read(req.send().await.unwrap()).await
    }

    /// `grant_type=authorization_code` for `issued`.
    pub async fn redeem(&self, client: &TestClient, issued: &Issued) -> Resp {
        self.client_post(
            "/token",
            client,
            &[
                ("grant_type", "authorization_code"),
                ("code", &issued.code),
                ("code_verifier", &issued.pkce.verifier),
                ("redirect_uri", &client.redirect_uri),
                ("resource", RESOURCE),
            ],
        )
        .await
    }

    /// `grant_type=refresh_token`.
    pub async fn refresh(&self, client: &TestClient, refresh_token: &str) -> Resp {
        self.client_post(
            "/token",
            client,
            &[("grant_type", "refresh_token"), ("refresh_token", refresh_token)],
        )
        .await
    }

    /// Log `user` in for `client` and redeem the code.
    pub async fn tokens(&self, client: &TestClient, user: (&str, &str)) -> Tokens {
        let issued = Box::pin(self.issue_code(client, user)).await;
        Tokens::from_resp(&Box::pin(self.redeem(client, &issued)).await)
    }

    /// The JWKS the server publishes.
    pub async fn jwks(&self) -> Value {
        let r = self.get("/jwks.json").await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }
}
