//! The browser side of the authorization code flow:
//!
//! ```text
//! GET /authorize ──validate──▶ consent page ──POST /consent──▶ upstream login
//!   (errors that cannot be         (or skipped: client        (static users: GET/POST /login;
//!    redirected are shown)          approved before)           others: IdP → GET /callback)
//!                                                   ──▶ grant + code ──▶ 302 redirect_uri?code&state&iss
//! ```
//!
//! A login in progress is a [`Pending`] record in the `auth_pending` bucket (TTL
//! [`crate::store::PENDING_MAX_AGE`]), keyed by a random id that also serves as the
//! upstream `state`. It is bound to the browser that started it by the hash of the
//! browser cookie, and every form carries a CSRF token checked in constant time.
//!
//! Redirects to the client happen only after the client and its redirect URI were
//! validated; until then errors are shown as a page (no open redirect). Redirects
//! carry `iss` (RFC 9207).

use std::collections::HashMap;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::clients::ClientRecord;
use crate::crypto::{ct_eq, random_token, sha256_b64};
use crate::pages;
use crate::server::OAuth;
use crate::upstream::{Completed, Identity, LoginSecrets};
use crate::vault::Secrets;

/// Wrong passwords allowed per login before it is abandoned.
pub const MAX_LOGIN_FAILURES: u32 = 5;
/// Clients remembered in the approval cookie.
pub const MAX_APPROVED_CLIENTS: usize = 20;
/// Lifetime of the approval cookie.
pub const APPROVAL_MAX_AGE_DAYS: i64 = 30;
/// Longest accepted `state`.
pub const MAX_STATE_LEN: usize = 1024;

/// The validated authorization request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub scopes: Vec<String>,
    pub resource: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The consent page is shown.
    Consent,
    /// Approved (or remembered); the user is logging in upstream.
    Upstream,
    /// Logged in, but the remembered approval was another user's: asking again.
    ConsentAfterLogin,
}

/// A login in progress.
#[derive(Clone, Serialize, Deserialize)]
pub struct Pending {
    /// SHA-256 of the browser cookie of the browser that started it.
    pub browser: String,
    pub csrf: String,
    pub request: AuthRequest,
    pub client_name: String,
    pub stage: Stage,
    /// Consent was skipped because this user approved the client before; checked
    /// against who actually logs in.
    pub remembered_for: Option<String>,
    pub secrets: LoginSecrets,
    pub identity: Option<Identity>,
    /// [`Secrets`] of the upstream login, sealed (context `auth_pending/<id>`).
    pub sealed_upstream: Option<String>,
    pub login_failures: u32,
    pub created_at: u64,
}

/// The approval cookie's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Approved {
    sub: String,
    clients: Vec<ApprovedClient>,
    exp: u64,
}

/// A client the user approved, and for which scopes: a request for any other scope
/// (a step-up) shows the consent page again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ApprovedClient {
    id: String,
    scopes: Vec<String>,
}

impl Approved {
    /// Whether this approval covers `client_id` asking for `scopes`.
    fn covers(&self, client_id: &str, scopes: &[String]) -> bool {
        self.clients
            .iter()
            .any(|c| c.id == client_id && scopes.iter().all(|s| c.scopes.contains(s)))
    }
}

const APPROVED_PURPOSE: &str = "approved-clients";

impl OAuth {
    fn cookie_name(&self, base: &str) -> String {
        if self.secure_cookies {
            format!("__Host-{base}")
        } else {
            base.to_owned()
        }
    }

    fn cookie<'c>(&self, base: &str, value: String) -> Cookie<'c> {
        let mut c = Cookie::new(self.cookie_name(base), value);
        c.set_path("/");
        c.set_http_only(true);
        c.set_same_site(SameSite::Lax);
        c.set_secure(self.secure_cookies);
        c
    }

    /// The browser's id cookie, and whether it must be set.
    fn browser_id(&self, req: &HttpRequest) -> (String, bool) {
        match req.cookie(&self.cookie_name("mcp_browser")) {
            Some(c) if c.value().len() >= 32 => (c.value().to_owned(), false),
            _ => (random_token(), true),
        }
    }

    fn approved(&self, req: &HttpRequest) -> Option<Approved> {
        let c = req.cookie(&self.cookie_name("mcp_approved"))?;
        let raw = self.cfg.signer.open_value(APPROVED_PURPOSE, c.value())?;
        let a: Approved = serde_json::from_slice(&raw).ok()?;
        (a.exp > crate::unix_now()).then_some(a)
    }

    fn approved_cookie<'c>(
        &self,
        previous: Option<Approved>,
        sub: &str,
        client_id: &str,
        scopes: &[String],
    ) -> Cookie<'c> {
        let mut clients = match previous {
            Some(a) if a.sub == sub => a.clients,
            _ => Vec::new(),
        };
        clients.retain(|c| c.id != client_id);
        clients.push(ApprovedClient {
            id: client_id.to_owned(),
            scopes: scopes.to_vec(),
        });
        if clients.len() > MAX_APPROVED_CLIENTS {
            clients.drain(..clients.len() - MAX_APPROVED_CLIENTS);
        }
        let a = Approved {
            sub: sub.to_owned(),
            clients,
            exp: crate::unix_now() + u64::try_from(APPROVAL_MAX_AGE_DAYS).unwrap_or(30) * 86_400,
        };
        let value = self
            .cfg
            .signer
            .sign_value(APPROVED_PURPOSE, &serde_json::to_vec(&a).unwrap_or_default());
        let mut c = self.cookie("mcp_approved", value);
        c.set_max_age(actix_web::cookie::time::Duration::days(APPROVAL_MAX_AGE_DAYS));
        c
    }

    fn issuer_url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer.trim_end_matches('/'))
    }
}

/// `redirect_uri` with `params` appended to its query (existing ones kept).
fn redirect_to(uri: &str, params: &[(&str, &str)]) -> HttpResponse {
    let location = match url::Url::parse(uri) {
        Ok(mut u) => {
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in params {
                    q.append_pair(k, v);
                }
            }
            u.to_string()
        }
        Err(_) => uri.to_owned(),
    };
    HttpResponse::Found()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// An error for the client, sent to its (validated) redirect URI.
fn redirect_error(oauth: &OAuth, r: &AuthRequest, error: &str, description: &str) -> HttpResponse {
    tracing::info!(client_id = %r.client_id, error, description, "authorization request refused");
    oauth.metrics.authorize(error);
    let mut params = vec![("error", error), ("error_description", description)];
    if let Some(s) = &r.state {
        params.push(("state", s));
    }
    params.push(("iss", &oauth.issuer));
    redirect_to(&r.redirect_uri, &params)
}

/// An error shown to the person (never redirected).
fn show_error(oauth: &OAuth, status: StatusCode, code: &str, message: &str) -> HttpResponse {
    tracing::info!(
        error = code,
        message,
        "authorization request refused (shown, not redirected)"
    );
    oauth.metrics.authorize(code);
    pages::error(status, "Sign-in cannot continue", message)
}

fn single_params(pairs: &[(String, String)]) -> Result<HashMap<&str, &str>, String> {
    let mut map = HashMap::new();
    for (k, v) in pairs {
        if map.insert(k.as_str(), v.as_str()).is_some() {
            return Err(format!("parameter {k} appears more than once"));
        }
    }
    Ok(map)
}

fn is_b64url_43(s: &str) -> bool {
    s.len() == 43 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `asked` names this deployment's resource (a trailing slash is tolerated).
pub fn resource_matches(ours: &str, asked: &str) -> bool {
    let asked = asked.trim_end_matches('/');
    // The origin names the same server: MCP clients given the legacy `/sse` URL ask
    // for it (their resource check wants a prefix of the URL; the gateway's
    // metadata for /sse says so). Tokens still carry `aud` = our resource.
    asked == ours.trim_end_matches('/') || asked == origin_of(ours)
}

/// The scheme and authority of a URL (`http://h:1` of `http://h:1/mcp`).
fn origin_of(url: &str) -> &str {
    match url.split_once("://") {
        Some((scheme, rest)) => &url[..scheme.len() + 3 + rest.find('/').unwrap_or(rest.len())],
        None => url,
    }
}

/// Scopes of a request. None asked: the client's registered scopes (or all
/// supported ones). Asked: each must be supported (`AUTH_SCOPES`); an operator's
/// machine client is also held to its configured scopes, while a registered client's
/// `scope` is only its default, so that it can authorize again for a scope a tool
/// needs (the MCP step-up: a 403 `insufficient_scope` names it).
pub fn requested_scopes(oauth: &OAuth, client: &ClientRecord, asked: Option<&str>) -> Result<Vec<String>, String> {
    let registered: Option<Vec<String>> = client.scope.as_deref().filter(|s| !s.trim().is_empty()).map(|s| {
        s.split_whitespace()
            .filter(|x| oauth.cfg.scopes.iter().any(|y| y == x))
            .map(str::to_owned)
            .collect()
    });
    let default = registered.clone().unwrap_or_else(|| oauth.cfg.scopes.clone());
    let allowed: &[String] = match (&registered, client.machine) {
        (Some(registered), true) => registered,
        _ => &oauth.cfg.scopes,
    };
    match asked.map(str::split_whitespace) {
        None => Ok(default),
        Some(words) => {
            let mut out: Vec<String> = Vec::new();
            for w in words {
                if !allowed.iter().any(|a| a == w) {
                    return Err(format!("scope '{w}' is not available to this client"));
                }
                if !out.iter().any(|o| o == w) {
                    out.push(w.to_owned());
                }
            }
            if out.is_empty() { Ok(default) } else { Ok(out) }
        }
    }
}

/// The per-address limit on the browser endpoints (`AUTH_BROWSER_RATE`): a 429 page
/// with `Retry-After` once an address is over it.
fn over_browser_limit(oauth: &OAuth, req: &HttpRequest) -> Option<HttpResponse> {
    let ip = crate::net::client_ip(req, &oauth.trusted_proxies);
    if oauth.browser_limiter.check(ip) {
        return None;
    }
    tracing::warn!(source = %ip, path = req.path(), "browser requests over the per-address limit");
    oauth.metrics.authorize("rate_limited");
    let mut resp = pages::error(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests",
        "too many sign-in requests from this address; try again in a minute",
    );
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(
        &oauth.browser_limiter.retry_after().as_secs().max(1).to_string(),
    ) {
        resp.headers_mut().insert(actix_web::http::header::RETRY_AFTER, v);
    }
    Some(resp)
}

/// `GET /authorize`.
pub async fn authorize(
    req: HttpRequest,
    query: web::Query<Vec<(String, String)>>,
    oauth: web::Data<OAuth>,
) -> HttpResponse {
    if let Some(resp) = over_browser_limit(&oauth, &req) {
        return resp;
    }
    let params = match single_params(&query) {
        Ok(p) => p,
        Err(e) => return show_error(&oauth, StatusCode::BAD_REQUEST, "invalid_request", &e),
    };
    // 1. Client and redirect URI: until both are known good, errors are shown.
    let Some(client_id) = params.get("client_id").filter(|c| !c.is_empty()) else {
        return show_error(
            &oauth,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id is missing",
        );
    };
    let client = match oauth.clients.get(client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return show_error(&oauth, StatusCode::BAD_REQUEST, "invalid_client", "unknown client_id");
        }
        Err(e) => {
            // A page, not an API answer: 401 would invite a login prompt.
            let status = match e.status() {
                401 => StatusCode::BAD_REQUEST,
                s => StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST),
            };
            return show_error(&oauth, status, e.oauth_code(), &e.description());
        }
    };
    let redirect_uri = match params.get("redirect_uri") {
        Some(uri) if crate::clients::redirect_uri_allowed(&client, uri) => (*uri).to_owned(),
        Some(_) => {
            return show_error(
                &oauth,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "redirect_uri is not registered for this client",
            );
        }
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => {
            return show_error(
                &oauth,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "redirect_uri is missing",
            );
        }
    };
    let state = params.get("state").map(|s| (*s).to_owned());
    let mut request = AuthRequest {
        client_id: client.client_id.clone(),
        redirect_uri,
        state,
        code_challenge: String::new(),
        scopes: Vec::new(),
        resource: oauth.cfg.resource.clone(),
    };
    if request.state.as_ref().is_some_and(|s| s.len() > MAX_STATE_LEN) {
        request.state = None;
        return redirect_error(&oauth, &request, "invalid_request", "state is too long");
    }
    // 2. Everything else goes back to the client.
    match params.get("response_type") {
        Some(&"code") => {}
        Some(_) => {
            return redirect_error(
                &oauth,
                &request,
                "unsupported_response_type",
                "only response_type=code is supported",
            );
        }
        None => return redirect_error(&oauth, &request, "invalid_request", "response_type is missing"),
    }
    if !client.grant_types.iter().any(|g| g == "authorization_code") {
        return redirect_error(
            &oauth,
            &request,
            "unauthorized_client",
            "client is not registered for authorization_code",
        );
    }
    match (params.get("code_challenge"), params.get("code_challenge_method")) {
        (None, _) => {
            return redirect_error(
                &oauth,
                &request,
                "invalid_request",
                "code_challenge is required (PKCE S256)",
            );
        }
        (Some(_), Some(&"S256")) => {}
        (Some(_), Some(&"plain") | None) => {
            return redirect_error(
                &oauth,
                &request,
                "invalid_request",
                "code_challenge_method must be S256; plain is not accepted",
            );
        }
        (Some(_), Some(_)) => {
            return redirect_error(&oauth, &request, "invalid_request", "unsupported code_challenge_method");
        }
    }
    let challenge = params.get("code_challenge").copied().unwrap_or_default();
    if !is_b64url_43(challenge) {
        return redirect_error(
            &oauth,
            &request,
            "invalid_request",
            "code_challenge must be a base64url SHA-256 (43 characters)",
        );
    }
    request.code_challenge = challenge.to_owned();
    if let Some(resource) = params.get("resource")
        && !resource_matches(&oauth.cfg.resource, resource)
    {
        return redirect_error(
            &oauth,
            &request,
            "invalid_target",
            "resource does not name this MCP server",
        );
    }
    match requested_scopes(&oauth, &client, params.get("scope").copied()) {
        Ok(s) => request.scopes = s,
        Err(e) => return redirect_error(&oauth, &request, "invalid_scope", &e),
    }

    // 3. A pending login bound to this browser.
    let (browser, set_browser) = oauth.browser_id(&req);
    let remembered = oauth
        .approved(&req)
        .filter(|a| a.covers(&client.client_id, &request.scopes));
    let pending = Pending {
        browser: sha256_b64(&browser),
        csrf: random_token(),
        client_name: client.client_name.clone().unwrap_or_else(|| client.client_id.clone()),
        request,
        stage: if remembered.is_some() {
            Stage::Upstream
        } else {
            Stage::Consent
        },
        remembered_for: remembered.map(|a| a.sub),
        secrets: LoginSecrets::default(),
        identity: None,
        sealed_upstream: None,
        login_failures: 0,
        created_at: crate::unix_now(),
    };
    let id = random_token();
    if let Err(e) = oauth.stores.pending.put(&id, &pending).await {
        tracing::error!(error = %e, "cannot store a pending login");
        return pages::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Temporarily unavailable",
            "try again in a moment",
        );
    }
    let mut resp = if pending.stage == Stage::Upstream {
        go_upstream(&oauth, &id, pending).await
    } else {
        learn_upstream_origin(&oauth).await;
        consent_page(&oauth, &id, &pending, &client)
    };
    if set_browser {
        let _ = resp.add_cookie(&oauth.cookie("mcp_browser", browser));
    }
    resp
}

/// The consent page's `form-action` must allow the identity provider's origin
/// (approving redirects there, and browsers apply `form-action` to redirects).
/// Learnt once from an authorization URL (after discovery); retried while unknown.
async fn learn_upstream_origin(oauth: &OAuth) {
    if oauth.upstream_origin.initialized() || oauth.upstream.static_users().is_some() {
        return;
    }
    if let Ok(start) = oauth
        .upstream
        .begin("origin-probe", &oauth.issuer_url("/callback"))
        .await
    {
        let _ = oauth.upstream_origin.set(pages::csp_source(&start.redirect_to));
    }
}

fn consent_page(oauth: &OAuth, id: &str, p: &Pending, client: &ClientRecord) -> HttpResponse {
    let page = pages::consent(&pages::Consent {
        issuer: &oauth.issuer,
        tx: id,
        csrf: &p.csrf,
        client_name: &p.client_name,
        client_id: &client.client_id,
        client_uri: client.client_uri.as_deref(),
        redirect_uri: &p.request.redirect_uri,
        scopes: &p.request.scopes,
        resource: &p.request.resource,
        user: p
            .identity
            .as_ref()
            .map(|i| i.email.as_deref().or(i.name.as_deref()).unwrap_or(&i.sub)),
        verified_client: client.metadata_document,
    });
    let mut targets: Vec<String> = pages::csp_source(&p.request.redirect_uri).into_iter().collect();
    targets.extend(oauth.upstream_origin.get().cloned().flatten());
    pages::html(StatusCode::OK, page, &targets)
}

/// Send the browser to the identity provider (or our login page).
async fn go_upstream(oauth: &OAuth, id: &str, mut p: Pending) -> HttpResponse {
    p.stage = Stage::Upstream;
    if oauth.upstream.static_users().is_some() {
        if let Err(e) = oauth.stores.pending.put(id, &p).await {
            tracing::error!(error = %e, "cannot store a pending login");
            return pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Temporarily unavailable",
                "try again in a moment",
            );
        }
        let url = format!("{}?tx={}", oauth.issuer_url("/login"), id);
        return HttpResponse::Found()
            .insert_header((header::LOCATION, url))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish();
    }
    match oauth.upstream.begin(id, &oauth.issuer_url("/callback")).await {
        Ok(start) => {
            let _ = oauth.upstream_origin.set(pages::csp_source(&start.redirect_to));
            p.secrets = start.secrets;
            if let Err(e) = oauth.stores.pending.put(id, &p).await {
                tracing::error!(error = %e, "cannot store a pending login");
                return pages::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Temporarily unavailable",
                    "try again in a moment",
                );
            }
            HttpResponse::Found()
                .insert_header((header::LOCATION, start.redirect_to))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .finish()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start the upstream login");
            let _ = oauth.stores.pending.delete(id).await;
            redirect_error(
                oauth,
                &p.request,
                "temporarily_unavailable",
                "the identity provider is unavailable",
            )
        }
    }
}

/// Load a pending login and check it belongs to this browser.
async fn load_bound(oauth: &OAuth, req: &HttpRequest, id: &str) -> Result<Pending, HttpResponse> {
    load_bound_rev(oauth, req, id).await.map(|(p, _)| p)
}

/// [`load_bound`], with the record's revision for a compare-and-swap.
async fn load_bound_rev(oauth: &OAuth, req: &HttpRequest, id: &str) -> Result<(Pending, u64), HttpResponse> {
    if id.is_empty() || id.len() > 64 {
        return Err(show_error(
            oauth,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "this sign-in is unknown or has expired; start again from your application",
        ));
    }
    let (pending, rev) = match oauth.stores.pending.get::<Pending>(id).await {
        Ok(Some(x)) => x,
        Ok(None) => {
            return Err(show_error(
                oauth,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "this sign-in is unknown or has expired; start again from your application",
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read a pending login");
            return Err(pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Temporarily unavailable",
                "try again in a moment",
            ));
        }
    };
    let browser = req
        .cookie(&oauth.cookie_name("mcp_browser"))
        .map(|c| sha256_b64(c.value()))
        .unwrap_or_default();
    if !ct_eq(&browser, &pending.browser) {
        return Err(show_error(
            oauth,
            StatusCode::FORBIDDEN,
            "access_denied",
            "this sign-in was started in another browser",
        ));
    }
    Ok((pending, rev))
}

fn csrf_ok(p: &Pending, form: &HashMap<String, String>) -> bool {
    form.get("csrf").is_some_and(|c| ct_eq(c, &p.csrf))
}

/// `POST /consent`.
pub async fn consent(
    req: HttpRequest,
    form: web::Form<HashMap<String, String>>,
    oauth: web::Data<OAuth>,
) -> HttpResponse {
    let id = form.get("tx").cloned().unwrap_or_default();
    let mut p = match load_bound(&oauth, &req, &id).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    if !csrf_ok(&p, &form) {
        return show_error(
            &oauth,
            StatusCode::FORBIDDEN,
            "access_denied",
            "the form's CSRF token is missing or wrong; start again",
        );
    }
    if !matches!(p.stage, Stage::Consent | Stage::ConsentAfterLogin) {
        return show_error(
            &oauth,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "this sign-in is not waiting for consent",
        );
    }
    match form.get("action").map(String::as_str) {
        Some("approve") => {}
        Some("deny") => {
            let _ = oauth.stores.pending.delete(&id).await;
            return redirect_error(&oauth, &p.request, "access_denied", "the user denied the request");
        }
        _ => {
            return show_error(
                &oauth,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "action must be approve or deny",
            );
        }
    }
    if p.stage == Stage::ConsentAfterLogin {
        let Some(identity) = p.identity.clone() else {
            return show_error(
                &oauth,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "this sign-in has no user",
            );
        };
        let secrets = match p.sealed_upstream.as_deref().map(|s| open_pending(&oauth, &id, s)) {
            Some(Ok(s)) => Some(s),
            Some(Err(())) => {
                return pages::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Sign-in failed",
                    "stored login cannot be read",
                );
            }
            None => None,
        };
        p.remembered_for = None;
        return issue(&oauth, &req, &id, &p, identity, secrets).await;
    }
    p.stage = Stage::Upstream;
    p.csrf = random_token();
    go_upstream(&oauth, &id, p).await
}

fn open_pending(oauth: &OAuth, id: &str, sealed: &str) -> Result<Secrets, ()> {
    let plain = oauth
        .cfg
        .sealer
        .open(&format!("auth_pending/{id}"), sealed)
        .map_err(|_| ())?;
    serde_json::from_slice(&plain).map_err(|_| ())
}

#[derive(Deserialize)]
pub struct TxQuery {
    tx: Option<String>,
}

/// `GET /login?tx=…` (static-users provider).
pub async fn login_page(req: HttpRequest, q: web::Query<TxQuery>, oauth: web::Data<OAuth>) -> HttpResponse {
    if oauth.upstream.static_users().is_none() {
        return HttpResponse::NotFound().finish();
    }
    if let Some(resp) = over_browser_limit(&oauth, &req) {
        return resp;
    }
    let id = q.tx.clone().unwrap_or_default();
    let p = match load_bound(&oauth, &req, &id).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    if p.stage != Stage::Upstream {
        return show_error(
            &oauth,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "this sign-in is not waiting for a login",
        );
    }
    let targets: Vec<String> = pages::csp_source(&p.request.redirect_uri).into_iter().collect();
    pages::html(
        StatusCode::OK,
        pages::login(&oauth.issuer, &id, &p.csrf, &p.client_name, None),
        &targets,
    )
}

/// `POST /login` (static-users provider).
pub async fn login_submit(
    req: HttpRequest,
    form: web::Form<HashMap<String, String>>,
    oauth: web::Data<OAuth>,
) -> HttpResponse {
    let Some(users) = oauth.upstream.static_users() else {
        return HttpResponse::NotFound().finish();
    };
    if let Some(resp) = over_browser_limit(&oauth, &req) {
        return resp;
    }
    let id = form.get("tx").cloned().unwrap_or_default();
    // Argon2 costs tens of milliseconds and ~20 MiB: only so many at once. A login
    // over the cap is refused before it counts as an attempt.
    let Ok(slot) = oauth.password_checks.clone().try_acquire_owned() else {
        oauth.metrics.login("busy");
        tracing::warn!("password checks at their limit (AUTH_MAX_PASSWORD_CHECKS); login refused");
        let mut resp = pages::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "too many sign-ins at once; try again in a moment",
        );
        resp.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from_static("1"),
        );
        return resp;
    };
    // Each attempt is counted before the password is checked, by compare-and-swap, so
    // parallel guesses cannot share one count: the MAX_LOGIN_FAILURES-th ends the login.
    let mut reserved = None;
    for _ in 0..10 {
        let (mut p, rev) = match load_bound_rev(&oauth, &req, &id).await {
            Ok(x) => x,
            Err(resp) => return resp,
        };
        if !csrf_ok(&p, &form) {
            return show_error(
                &oauth,
                StatusCode::FORBIDDEN,
                "access_denied",
                "the form's CSRF token is missing or wrong; start again",
            );
        }
        if p.stage != Stage::Upstream {
            return show_error(
                &oauth,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "this sign-in is not waiting for a login",
            );
        }
        if p.login_failures >= MAX_LOGIN_FAILURES {
            let _ = oauth.stores.pending.delete(&id).await;
            return show_error(
                &oauth,
                StatusCode::FORBIDDEN,
                "access_denied",
                "too many failed sign-in attempts; start again",
            );
        }
        p.login_failures += 1;
        match oauth.stores.pending.update(&id, &p, rev).await {
            Ok(crate::store::Cas::Done(_)) => {
                reserved = Some(p);
                break;
            }
            Ok(crate::store::Cas::Conflict) => continue,
            Err(e) => {
                tracing::error!(error = %e, "cannot store a pending login");
                return pages::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Temporarily unavailable",
                    "try again in a moment",
                );
            }
        }
    }
    let Some(p) = reserved else {
        return pages::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Temporarily unavailable",
            "try again in a moment",
        );
    };
    let username = form.get("username").map(String::as_str).unwrap_or_default();
    let password = form.get("password").map(String::as_str).unwrap_or_default();
    let users = users.clone();
    let (u, pw) = (username.to_owned(), password.to_owned());
    // Argon2 is deliberately slow: keep it off the async workers.
    let verified = web::block(move || {
        let _slot = slot;
        users.verify(&u, &pw)
    })
    .await
    .ok()
    .flatten();
    match verified {
        Some(identity) => {
            oauth.metrics.login("ok");
            finish_login(
                &oauth,
                &req,
                &id,
                p,
                Completed {
                    identity,
                    tokens: None,
                    claims: serde_json::Value::Null,
                },
            )
            .await
        }
        None => {
            oauth.metrics.login("bad_credentials");
            tracing::info!(client_id = %p.request.client_id, "wrong username or password");
            if p.login_failures >= MAX_LOGIN_FAILURES {
                let _ = oauth.stores.pending.delete(&id).await;
                return show_error(
                    &oauth,
                    StatusCode::FORBIDDEN,
                    "access_denied",
                    "too many failed sign-in attempts; start again",
                );
            }
            let targets: Vec<String> = pages::csp_source(&p.request.redirect_uri).into_iter().collect();
            pages::html(
                StatusCode::UNAUTHORIZED,
                pages::login(
                    &oauth.issuer,
                    &id,
                    &p.csrf,
                    &p.client_name,
                    Some("Wrong username or password."),
                ),
                &targets,
            )
        }
    }
}

/// `GET /callback` from the upstream identity provider.
pub async fn callback(
    req: HttpRequest,
    query: web::Query<HashMap<String, String>>,
    oauth: web::Data<OAuth>,
) -> HttpResponse {
    let id = query.get("state").cloned().unwrap_or_default();
    let p = match load_bound(&oauth, &req, &id).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    if p.stage != Stage::Upstream || oauth.upstream.static_users().is_some() {
        return show_error(
            &oauth,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "this sign-in is not waiting for the identity provider",
        );
    }
    // The login is single-use from here on.
    let _ = oauth.stores.pending.delete(&id).await;
    let params = crate::upstream::CallbackParams {
        code: query.get("code").cloned(),
        state: query.get("state").cloned(),
        error: query.get("error").cloned(),
        error_description: query.get("error_description").cloned(),
        iss: query.get("iss").cloned(),
    };
    let code = match oauth.upstream.callback_code(&params) {
        Ok(code) => code,
        Err(crate::upstream::UpstreamError::Denied { error, .. }) => {
            oauth.metrics.login("upstream_denied");
            tracing::info!(error = %error, "identity provider returned an error");
            let (code, desc) = match error.as_str() {
                "access_denied" => (
                    "access_denied",
                    "the sign-in was cancelled or refused at the identity provider",
                ),
                "temporarily_unavailable" => ("temporarily_unavailable", "the identity provider is unavailable"),
                _ => ("server_error", "the identity provider returned an error"),
            };
            return redirect_error(&oauth, &p.request, code, desc);
        }
        Err(e) => {
            oauth.metrics.login("upstream_rejected");
            tracing::warn!(error = %e, "upstream callback rejected");
            return redirect_error(
                &oauth,
                &p.request,
                "access_denied",
                "the identity provider's answer was not accepted",
            );
        }
    };
    let started = std::time::Instant::now();
    let completed = oauth
        .upstream
        .complete(code, &oauth.issuer_url("/callback"), &p.secrets)
        .await;
    oauth.metrics.upstream_latency(started.elapsed());
    match completed {
        Ok(c) => {
            oauth.metrics.login("ok");
            finish_login(&oauth, &req, &id, p, c).await
        }
        Err(crate::upstream::UpstreamError::Unavailable(e)) => {
            oauth.metrics.login("upstream_unavailable");
            tracing::warn!(error = %e, "identity provider unavailable");
            redirect_error(
                &oauth,
                &p.request,
                "temporarily_unavailable",
                "the identity provider is unavailable",
            )
        }
        Err(e) => {
            oauth.metrics.login("upstream_rejected");
            tracing::warn!(error = %e, "upstream login rejected");
            redirect_error(
                &oauth,
                &p.request,
                "access_denied",
                "the identity provider's answer was not accepted",
            )
        }
    }
}

/// The user is known: ask again if a remembered approval was someone else's,
/// otherwise create the grant and send the code.
async fn finish_login(oauth: &OAuth, req: &HttpRequest, id: &str, mut p: Pending, c: Completed) -> HttpResponse {
    let secrets = (c.tokens.is_some() || !c.claims.is_null()).then(|| Secrets {
        tokens: c.tokens.clone(),
        claims: c.claims.clone(),
    });
    if p.remembered_for.as_deref().is_some_and(|s| s != c.identity.sub) {
        p.stage = Stage::ConsentAfterLogin;
        p.csrf = random_token();
        p.identity = Some(c.identity.clone());
        p.sealed_upstream = match &secrets {
            Some(s) => match serde_json::to_vec(s)
                .ok()
                .and_then(|plain| oauth.cfg.sealer.seal(&format!("auth_pending/{id}"), &plain).ok())
            {
                Some(sealed) => Some(sealed),
                None => {
                    return pages::error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Sign-in failed",
                        "cannot keep the login",
                    );
                }
            },
            None => None,
        };
        if let Err(e) = oauth.stores.pending.put(id, &p).await {
            tracing::error!(error = %e, "cannot store a pending login");
            return pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Temporarily unavailable",
                "try again in a moment",
            );
        }
        let client = match oauth.clients.get(&p.request.client_id).await {
            Ok(Some(c)) => c,
            _ => return show_error(oauth, StatusCode::BAD_REQUEST, "invalid_client", "the client is gone"),
        };
        learn_upstream_origin(oauth).await;
        return consent_page(oauth, id, &p, &client);
    }
    issue(oauth, req, id, &p, c.identity, secrets).await
}

async fn issue(
    oauth: &OAuth,
    req: &HttpRequest,
    id: &str,
    p: &Pending,
    identity: Identity,
    secrets: Option<Secrets>,
) -> HttpResponse {
    let _ = oauth.stores.pending.delete(id).await;
    let r = &p.request;
    let sub = identity.sub.clone();
    let (grant, code) = match oauth
        .grants
        .create_with_code(
            &r.client_id,
            identity,
            r.scopes.clone(),
            &r.resource,
            &r.redirect_uri,
            &r.code_challenge,
        )
        .await
    {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the grant");
            return redirect_error(oauth, r, "server_error", "cannot create the grant");
        }
    };
    if let Some(s) = secrets
        && let Err(e) = oauth.vault.store(&grant.id, &sub, &s).await
    {
        tracing::error!(error = %e, "cannot store upstream tokens in the vault");
    }
    oauth.metrics.authorize("code_issued");
    tracing::info!(client_id = %r.client_id, grant = %grant.id, "authorization code issued");
    let mut params = vec![("code", code.as_str())];
    if let Some(s) = &r.state {
        params.push(("state", s));
    }
    params.push(("iss", &oauth.issuer));
    let mut resp = redirect_to(&r.redirect_uri, &params);
    let _ = resp.add_cookie(&oauth.approved_cookie(oauth.approved(req), &sub, &r.client_id, &r.scopes));
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn params_must_be_single() {
        let pairs = vec![("a".to_owned(), "1".to_owned()), ("a".to_owned(), "2".to_owned())];
        assert!(single_params(&pairs).is_err());
        let pairs = vec![("a".to_owned(), "1".to_owned()), ("b".to_owned(), "2".to_owned())];
        assert_eq!(single_params(&pairs).unwrap().len(), 2);
    }

    #[test]
    fn redirect_appends_to_an_existing_query() {
        let r = redirect_to("http://127.0.0.1:9/cb?x=1", &[("code", "c d"), ("iss", "http://i")]);
        let loc = r.headers().get(header::LOCATION).unwrap().to_str().unwrap();
        assert_eq!(loc, "http://127.0.0.1:9/cb?x=1&code=c+d&iss=http%3A%2F%2Fi");
    }

    #[test]
    fn resources_and_challenges() {
        assert!(resource_matches(
            "http://localhost:8788/mcp",
            "http://localhost:8788/mcp/"
        ));
        assert!(!resource_matches(
            "http://localhost:8788/mcp",
            "http://localhost:8788/other"
        ));
        assert!(resource_matches("http://localhost:8788/mcp", "http://localhost:8788"));
        assert!(resource_matches("http://localhost:8788/mcp", "http://localhost:8788/"));
        assert!(!resource_matches("http://localhost:8788/mcp", "http://localhost:8789"));
        assert!(!resource_matches("http://localhost:8788/mcp", "http://localhost"));
        assert!(is_b64url_43("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
        assert!(!is_b64url_43("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw+cM"));
        assert!(!is_b64url_43("short"));
    }
}
