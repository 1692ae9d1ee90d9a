//! "One public origin": with `GATEWAY_AUTH_UPSTREAM` set, the gateway forwards the
//! auth-service's public paths ([`proto::auth::PUBLIC_PATHS`], and anything below
//! [`proto::auth::PUBLIC_PREFIXES`]) to it, so a client finds the MCP resource and
//! its authorization server on the same origin.
//!
//! A forwarded request keeps its method, path, query, body (at most the gateway's
//! body limit) and end-to-end headers; hop-by-hop headers are dropped and
//! `X-Forwarded-For`/`-Proto`/`-Host` are set. Redirects are never followed: the
//! auth-service's 302s are meant for the browser. The answer comes back as the
//! auth-service sent it (status, every header but hop-by-hop ones, every
//! `Set-Cookie`, body). Only the Host allow-list applies here, not the Origin
//! check of the MCP endpoints: the consent form posts from our own origin and the
//! token endpoint is called from any origin.
//!
//! This module never reads the requests it forwards (codes, tokens, cookies and
//! passwords pass through) and logs nothing but the path and the failure.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use tracing::warn;

use crate::errors::Kind;
use crate::guard::OriginPolicy;
use crate::metrics::Metrics;

/// The longest a forwarded request may take, answer body included.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer taken from the auth-service (its pages and documents are small).
pub const MAX_UPSTREAM_RESPONSE_BYTES: usize = 1024 * 1024;
/// Metric route label of every forwarded request.
pub const ROUTE_LABEL: &str = "oauth_forward";

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the ones the client library sets
/// itself (`Content-Length`) or this proxy replaces (`Host`).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
];

/// Whether `path` is one the auth-service serves on the public origin.
pub fn is_public_path(path: &str) -> bool {
    proto::auth::PUBLIC_PATHS.contains(&path)
        || proto::auth::PUBLIC_PREFIXES
            .iter()
            .any(|p| path == *p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
}

/// Register the forwarded paths (call only when forwarding is on; needs
/// `web::Data<Forwarder>`).
pub fn routes(cfg: &mut web::ServiceConfig) {
    for path in proto::auth::PUBLIC_PATHS {
        cfg.route(path, web::route().to(forward));
    }
    for prefix in proto::auth::PUBLIC_PREFIXES {
        cfg.route(prefix, web::route().to(forward));
        cfg.route(&format!("{prefix}/{{rest:.*}}"), web::route().to(forward));
    }
}

/// Why a request could not be forwarded. Answered with an OAuth-style body
/// (`{"error", "error_description"}`, `Cache-Control: no-store`): the callers
/// are OAuth clients and browsers, not MCP clients.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("Host not allowed: {0:?}")]
    ForbiddenHost(String),
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("cannot read the request: {0}")]
    BadRequest(String),
    #[error("the authorization server is unreachable")]
    Unreachable,
    #[error("the authorization server did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("the authorization server sent an unusable answer")]
    BadAnswer,
}

impl ForwardError {
    /// The table: HTTP status and RFC 6749 error name.
    pub fn describe(&self) -> (StatusCode, &'static str) {
        match self {
            ForwardError::ForbiddenHost(_) => (StatusCode::FORBIDDEN, "invalid_request"),
            ForwardError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
            ForwardError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ForwardError::Unreachable | ForwardError::BadAnswer => (StatusCode::BAD_GATEWAY, "temporarily_unavailable"),
            ForwardError::TimedOut(_) => (StatusCode::GATEWAY_TIMEOUT, "temporarily_unavailable"),
        }
    }
}

impl ResponseError for ForwardError {
    fn status_code(&self) -> StatusCode {
        self.describe().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, error) = self.describe();
        HttpResponse::build(status)
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(serde_json::json!({ "error": error, "error_description": self.to_string() }))
    }
}

/// What the forwarding handler needs; one per gateway.
pub struct Forwarder {
    upstream: reqwest::Url,
    http: reqwest::Client,
    timeout: Duration,
    max_body: usize,
    policy: OriginPolicy,
    metrics: Metrics,
    trusted_proxies: crate::limits::TrustedProxies,
}

impl Forwarder {
    /// Believe the `X-Forwarded-For` of these peers (`GATEWAY_TRUSTED_PROXIES`);
    /// any other client's is dropped, so it cannot pose as another address to the
    /// auth-service's per-address limits.
    pub fn with_trusted_proxies(mut self, trusted: crate::limits::TrustedProxies) -> Self {
        self.trusted_proxies = trusted;
        self
    }

    pub fn new(
        upstream: reqwest::Url,
        max_body: usize,
        policy: OriginPolicy,
        metrics: Metrics,
    ) -> reqwest::Result<Self> {
        Self::with_timeout(upstream, max_body, policy, metrics, FORWARD_TIMEOUT)
    }

    /// As [`Forwarder::new`] with another timeout than [`FORWARD_TIMEOUT`] (tests).
    pub fn with_timeout(
        upstream: reqwest::Url,
        max_body: usize,
        policy: OriginPolicy,
        metrics: Metrics,
        timeout: Duration,
    ) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            upstream,
            http,
            timeout,
            max_body,
            policy,
            metrics,
            trusted_proxies: crate::limits::TrustedProxies::default(),
        })
    }

    /// The upstream URL for a request's raw path and query; `None` when the
    /// result would not be the same public path (dot segments, `%2e%2e`: the URL
    /// parser resolves them, which must never reach a path we do not forward).
    fn target(&self, req: &HttpRequest) -> Option<reqwest::Url> {
        let base = self.upstream.as_str().trim_end_matches('/');
        let base_path = self.upstream.path().trim_end_matches('/');
        let path_and_query = req.uri().path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
        let url = reqwest::Url::parse(&format!("{base}{path_and_query}")).ok()?;
        let path = url.path().strip_prefix(base_path)?;
        (path == req.uri().path() && is_public_path(path)).then_some(url)
    }
}

/// Every forwarded path: all methods.
pub async fn forward(req: HttpRequest, payload: web::Payload, fwd: web::Data<Forwarder>) -> HttpResponse {
    let started = Instant::now();
    let resp = match forward_inner(&req, payload, &fwd).await {
        Ok(resp) => resp,
        Err(e) => {
            if e.status_code().is_server_error() {
                warn!(path = %req.path(), error = %e, "oauth request not forwarded");
            }
            e.error_response()
        }
    };
    let status = resp.status().as_u16().to_string();
    fwd.metrics
        .requests
        .with_label_values(&[ROUTE_LABEL, "none", &status])
        .inc();
    fwd.metrics
        .duration
        .with_label_values(&[ROUTE_LABEL, "none"])
        .observe(started.elapsed().as_secs_f64());
    resp
}

async fn forward_inner(
    req: &HttpRequest,
    payload: web::Payload,
    fwd: &Forwarder,
) -> Result<HttpResponse, ForwardError> {
    if let Err(e) = fwd.policy.check_host(req) {
        return Err(ForwardError::ForbiddenHost(e.detail.unwrap_or_default()));
    }
    let target = fwd
        .target(req)
        .ok_or_else(|| ForwardError::BadRequest("path is not forwarded".into()))?;
    let body = crate::mcp::read_body(req, payload, fwd.max_body)
        .await
        .map_err(|e| match e.kind {
            Kind::PayloadTooLarge => ForwardError::PayloadTooLarge(fwd.max_body),
            _ => ForwardError::BadRequest(e.detail.unwrap_or_default()),
        })?;
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .map_err(|_| ForwardError::BadRequest("unsupported method".into()))?;
    let scheme = if req.app_config().secure() { "https" } else { "http" };
    let headers = upstream_headers(
        req.headers(),
        req.peer_addr().map(|a| a.ip()),
        &fwd.trusted_proxies,
        scheme,
        authority(req).as_deref(),
    );
    let mut request = fwd.http.request(method, target).headers(headers);
    if !body.is_empty() {
        request = request.body(body);
    }
    let failed = |e| upstream_error(e, fwd.timeout);
    let mut answer = request.send().await.map_err(failed)?;
    let status = StatusCode::from_u16(answer.status().as_u16()).map_err(|_| ForwardError::BadAnswer)?;
    let mut out = HttpResponse::build(status);
    for (name, value) in downstream_headers(answer.headers()) {
        out.append_header((name, value));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = answer.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > MAX_UPSTREAM_RESPONSE_BYTES {
            return Err(ForwardError::BadAnswer);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(out.body(body.freeze()))
}

fn upstream_error(e: reqwest::Error, timeout: Duration) -> ForwardError {
    if e.is_timeout() {
        ForwardError::TimedOut(timeout)
    } else if e.is_connect() || e.is_request() {
        ForwardError::Unreachable
    } else {
        ForwardError::BadAnswer
    }
}

/// The request's authority: the Host header, or the URI's (HTTP/2).
fn authority(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}

/// Header names a `Connection` header lists: hop-by-hop too (RFC 9110 §7.6.1).
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn is_hop_by_hop(name: &str, listed: &[String]) -> bool {
    let name = name.to_ascii_lowercase();
    HOP_BY_HOP.contains(&name.as_str()) || name.starts_with("proxy-") || listed.contains(&name)
}

/// The headers sent upstream: the client's end-to-end headers, `X-Forwarded-For`
/// with the peer appended (the incoming chain kept only from a trusted proxy),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` replaced by what this connection says.
fn upstream_headers(
    incoming: &HeaderMap,
    peer: Option<IpAddr>,
    trusted: &crate::limits::TrustedProxies,
    scheme: &str,
    host: Option<&str>,
) -> reqwest::header::HeaderMap {
    let listed = connection_tokens(incoming);
    let mut out = reqwest::header::HeaderMap::new();
    let mut forwarded_for: Vec<String> = Vec::new();
    for (name, value) in incoming {
        let lower = name.as_str();
        if is_hop_by_hop(lower, &listed) || lower == "x-forwarded-proto" || lower == "x-forwarded-host" {
            continue;
        }
        if lower == "x-forwarded-for" {
            if let Ok(v) = value.to_str() {
                forwarded_for.extend(v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()));
            }
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes()),
            reqwest::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append(n, v);
        }
    }
    let forwarded_for = trusted.forwarded_for(peer, &forwarded_for);
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = reqwest::header::HeaderValue::from_str(value) {
            out.insert(reqwest::header::HeaderName::from_static(name), v);
        }
    };
    if !forwarded_for.is_empty() {
        set("x-forwarded-for", &forwarded_for.join(", "));
    }
    set("x-forwarded-proto", scheme);
    if let Some(host) = host {
        set("x-forwarded-host", host);
    }
    out
}

/// The answer's headers passed back to the client: all but hop-by-hop ones
/// (repeated headers such as `Set-Cookie` stay separate).
fn downstream_headers(answer: &reqwest::header::HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let listed: Vec<String> = answer
        .get_all(reqwest::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    answer
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name.as_str(), &listed))
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.as_str().as_bytes()).ok()?,
                HeaderValue::from_bytes(value.as_bytes()).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn public_paths_exact_and_below_prefixes() {
        for p in ["/token", "/authorize", "/jwks.json", "/callback"] {
            assert!(is_public_path(p), "{p}");
        }
        assert!(is_public_path("/.well-known/oauth-authorization-server"));
        assert!(is_public_path("/.well-known/oauth-authorization-server/tenant"));
        assert!(is_public_path("/.well-known/openid-configuration"));
        for p in [
            "/token/",
            "/tokens",
            "/mcp",
            "/",
            "/.well-known/oauth-authorization-serverx",
            "/.well-known/oauth-protected-resource/mcp",
        ] {
            assert!(!is_public_path(p), "{p}");
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut req = TestRequest::default();
        for (n, v) in pairs {
            req = req.append_header((*n, *v));
        }
        req.to_http_request().headers().clone()
    }

    #[test]
    fn request_headers_drop_hop_by_hop_and_set_forwarded() {
        let incoming = headers(&[
            ("Host", "localhost:8788"),
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("TE", "trailers"),
            ("Upgrade", "websocket"),
            ("Proxy-Authorization", "Basic eA=="),
            ("Proxy-Connection", "keep-alive"),
            ("X-Secret-Hop", "1"),
            ("Content-Length", "12"),
            ("Authorization", "Basic Y2xpZW50OnNlY3JldA=="),
            ("Cookie", "a=1"),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-For", "198.51.100.1, 198.51.100.2"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
        ]);
        let loopback = crate::limits::TrustedProxies::parse(&["127.0.0.1".into()]).unwrap();
        let out = upstream_headers(
            &incoming,
            Some("127.0.0.1".parse().unwrap()),
            &loopback,
            "http",
            Some("localhost:8788"),
        );
        for gone in [
            "host",
            "connection",
            "keep-alive",
            "transfer-encoding",
            "te",
            "upgrade",
            "proxy-authorization",
            "proxy-connection",
            "x-secret-hop",
            "content-length",
        ] {
            assert!(out.get(gone).is_none(), "{gone} forwarded");
        }
        assert_eq!(out["authorization"], "Basic Y2xpZW50OnNlY3JldA==");
        assert_eq!(out["cookie"], "a=1");
        assert_eq!(out["content-type"], "application/x-www-form-urlencoded");
        assert_eq!(
            out["x-forwarded-for"],
            "203.0.113.7, 198.51.100.1, 198.51.100.2, 127.0.0.1"
        );
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-forwarded-host"], "localhost:8788");
        // A client that is not a trusted proxy cannot pass an address along.
        let direct = upstream_headers(
            &incoming,
            Some("127.0.0.1".parse().unwrap()),
            &Default::default(),
            "http",
            None,
        );
        assert_eq!(direct["x-forwarded-for"], "127.0.0.1");
        let bare = upstream_headers(
            &headers(&[]),
            Some("::1".parse().unwrap()),
            &Default::default(),
            "https",
            None,
        );
        assert_eq!(bare["x-forwarded-for"], "::1");
        assert_eq!(bare["x-forwarded-proto"], "https");
        assert!(bare.get("x-forwarded-host").is_none());
    }

    #[test]
    fn response_headers_keep_every_cookie_and_drop_hop_by_hop() {
        let mut answer = reqwest::header::HeaderMap::new();
        for (n, v) in [
            ("location", "http://client.example/cb?code=x"),
            ("set-cookie", "mcp_tx=; Max-Age=0"),
            ("set-cookie", "mcp_approved=abc; HttpOnly"),
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("keep-alive", "timeout=5"),
            ("content-length", "0"),
            ("cache-control", "no-store"),
        ] {
            answer.append(
                reqwest::header::HeaderName::from_static(n),
                reqwest::header::HeaderValue::from_static(v),
            );
        }
        let out = downstream_headers(&answer);
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.iter().filter(|n| **n == "set-cookie").count(), 2);
        for gone in [
            "connection",
            "x-hop",
            "transfer-encoding",
            "keep-alive",
            "content-length",
        ] {
            assert!(!names.contains(&gone), "{gone} passed back");
        }
        assert!(names.contains(&"location") && names.contains(&"cache-control"));
    }

    #[test]
    fn errors_are_oauth_shaped() {
        let table = [
            (ForwardError::ForbiddenHost("x".into()), 403, "invalid_request"),
            (ForwardError::PayloadTooLarge(1), 413, "invalid_request"),
            (ForwardError::BadRequest("x".into()), 400, "invalid_request"),
            (ForwardError::Unreachable, 502, "temporarily_unavailable"),
            (ForwardError::BadAnswer, 502, "temporarily_unavailable"),
            (ForwardError::TimedOut(FORWARD_TIMEOUT), 504, "temporarily_unavailable"),
        ];
        for (e, status, error) in table {
            let resp = e.error_response();
            assert_eq!(resp.status().as_u16(), status, "{e}");
            assert_eq!(resp.headers().get("cache-control").unwrap(), "no-store");
            assert_eq!(e.describe().1, error);
        }
    }

    #[test]
    fn targets_never_leave_the_public_paths() {
        let fwd = |upstream: &str| forwarder(upstream, FORWARD_TIMEOUT);
        let f = fwd("http://127.0.0.1:8790");
        let target = |f: &Forwarder, uri: &str| {
            f.target(&TestRequest::with_uri(uri).to_http_request())
                .map(|u| u.to_string())
        };
        assert_eq!(
            target(&f, "/token?a=1&b=%20"),
            Some("http://127.0.0.1:8790/token?a=1&b=%20".into())
        );
        assert_eq!(
            target(&f, "/.well-known/oauth-authorization-server/t1"),
            Some("http://127.0.0.1:8790/.well-known/oauth-authorization-server/t1".into())
        );
        assert_eq!(target(&f, "/.well-known/oauth-authorization-server/../../admin"), None);
        assert_eq!(
            target(&f, "/.well-known/openid-configuration/%2e%2e/%2e%2e/admin"),
            None
        );
        let prefixed = fwd("http://auth.internal/auth/");
        assert_eq!(
            target(&prefixed, "/authorize?x=1"),
            Some("http://auth.internal/auth/authorize?x=1".into())
        );
    }

    fn forwarder(upstream: &str, timeout: Duration) -> Forwarder {
        Forwarder::with_timeout(
            reqwest::Url::parse(upstream).unwrap(),
            1024,
            OriginPolicy::new(&["*".into()], &[]),
            Metrics::register(&prometheus::Registry::new()).unwrap(),
            timeout,
        )
        .unwrap()
    }

    #[actix_web::test]
    async fn silent_upstream_is_a_gateway_timeout() {
        // Connections complete in the kernel's backlog; nobody ever answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = format!("http://{}", silent.local_addr().unwrap());
        let app = actix_web::test::init_service(
            actix_web::App::new()
                .app_data(web::Data::new(forwarder(&upstream, Duration::from_millis(300))))
                .configure(routes),
        )
        .await;
        let req = TestRequest::post()
            .uri("/token")
            .insert_header(("Host", "localhost"))
            .to_request();
        let resp = actix_web::test::call_service(&app, req).await;
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(resp.headers().get("cache-control").unwrap(), "no-store");
        let body: serde_json::Value = actix_web::test::read_body_json(resp).await;
        assert_eq!(body["error"], "temporarily_unavailable");
        drop(silent);
    }
}
