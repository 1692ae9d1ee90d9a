//! HTTP to the identity provider: the URL rule (https, or http on a loopback host),
//! bounded JSON GETs (discovery, JWKS, userinfo, GitHub's API), and [`TokenHttp`], the
//! adapter that lets the `oauth2` crate send its token requests with reqwest 0.13.
//!
//! Token requests carry the client secret, so [`TokenHttp`] uses its own client that
//! never follows a redirect (a 307 would re-post the secret elsewhere) and treats a
//! redirect, a 5xx or a 429 as the provider being unavailable. Error texts never
//! contain a URL's query or a response body: both can hold codes or tokens.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use oauth2::http;
use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};
use reqwest::Url;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};

use super::UpstreamError;

/// Timeout of one request to the identity provider.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body we read from the identity provider.
pub const MAX_RESPONSE_BYTES: usize = 512 * 1024;
/// `User-Agent` of our requests (GitHub's API refuses requests without one).
pub const USER_AGENT: &str = concat!("mcp-cluster-auth-service/", env!("CARGO_PKG_VERSION"));

/// Is `host` a loopback name or address (`localhost`, 127.0.0.0/8, ::1)?
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.eq_ignore_ascii_case("localhost") {
        return true;
    }
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Why a URL is not acceptable for talking to an identity provider.
pub fn url_problem(url: &Url) -> Option<&'static str> {
    if url.host_str().is_none_or(str::is_empty) {
        return Some("must have a host");
    }
    if url.fragment().is_some() {
        return Some("must not have a fragment");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Some("must not contain credentials");
    }
    match url.scheme() {
        "https" => None,
        "http" if url.host_str().is_some_and(is_loopback_host) => None,
        "http" => Some("http is allowed only for loopback hosts; use https"),
        _ => Some("scheme must be https"),
    }
}

/// Parse and check a URL that came from the provider (discovery document).
pub fn provider_url(what: &str, value: &str) -> Result<Url, UpstreamError> {
    let url = Url::parse(value).map_err(|_| UpstreamError::Invalid(format!("{what} is not a url")))?;
    match url_problem(&url) {
        None => Ok(url),
        Some(p) => Err(UpstreamError::Invalid(format!("{what}: {p}"))),
    }
}

/// The URL without query or fragment, for messages and logs.
pub fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

fn reqwest_reason(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body could not be read"
    } else {
        "request failed"
    }
}

/// Read a response body of at most [`MAX_RESPONSE_BYTES`].
async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, &'static str> {
    if resp.content_length().is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
        return Err("response too large");
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| reqwest_reason(&e))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err("response too large");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The outcome of a GET that did not produce a JSON document.
#[derive(Debug)]
pub enum GetError {
    /// The provider answered with this status (4xx other than 429).
    Status(u16),
    /// Network failure, timeout, 5xx, 429, redirect away or an unreadable body.
    Unavailable(String),
    /// A 2xx answer that is not JSON.
    NotJson,
}

impl GetError {
    /// The usual mapping: a 4xx or a bad document means the provider's answer is
    /// unusable (`Invalid`), anything else that it is unavailable.
    pub fn into_upstream(self, what: &str) -> UpstreamError {
        match self {
            GetError::Status(s) => UpstreamError::Invalid(format!("{what}: status {s}")),
            GetError::NotJson => UpstreamError::Invalid(format!("{what}: not a json document")),
            GetError::Unavailable(r) => UpstreamError::Unavailable(format!("{what}: {r}")),
        }
    }
}

/// GET a JSON document, optionally with a bearer token and extra headers.
pub async fn get_json(
    http: &reqwest::Client,
    url: &Url,
    bearer: Option<&str>,
    headers: &[(&'static str, &'static str)],
) -> Result<serde_json::Value, GetError> {
    let mut req = http
        .get(url.clone())
        .header(ACCEPT, "application/json")
        .header(reqwest::header::USER_AGENT, USER_AGENT)
        .timeout(REQUEST_TIMEOUT);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| GetError::Unavailable(reqwest_reason(&e).to_owned()))?;
    // A followed redirect to another origin: do not trust what came back.
    if resp.url().origin() != url.origin() {
        return Err(GetError::Unavailable("redirected to another origin".into()));
    }
    let status = resp.status();
    if status.is_server_error() || status.as_u16() == 429 {
        return Err(GetError::Unavailable(format!("status {}", status.as_u16())));
    }
    if !status.is_success() {
        return Err(GetError::Status(status.as_u16()));
    }
    let body = read_body(resp).await.map_err(|r| GetError::Unavailable(r.to_owned()))?;
    serde_json::from_slice(&body).map_err(|_| GetError::NotJson)
}

/// Why a token request did not produce a response `oauth2` can parse.
#[derive(Debug, thiserror::Error)]
pub enum TokenHttpError {
    #[error("{0}")]
    Transport(&'static str),
    #[error("status {0}")]
    Status(u16),
    #[error("redirect refused")]
    Redirect,
    #[error("cannot build request")]
    Build,
}

/// The `oauth2` crate's HTTP client: a reqwest client that never follows redirects.
#[derive(Clone)]
pub struct TokenHttp {
    client: reqwest::Client,
    /// Send the form parameters as a JSON object instead (WorkOS's
    /// `/user_management/authenticate`).
    json_body: bool,
}

impl std::fmt::Debug for TokenHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenHttp")
            .field("json_body", &self.json_body)
            .finish_non_exhaustive()
    }
}

impl TokenHttp {
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .user_agent(USER_AGENT)
            .build()?;
        Ok(Self {
            client,
            json_body: false,
        })
    }

    pub fn with_json_body(mut self) -> Self {
        self.json_body = true;
        self
    }

    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TokenHttpError> {
        let request = if self.json_body {
            form_to_json(request)?
        } else {
            request
        };
        let request = reqwest::Request::try_from(request).map_err(|_| TokenHttpError::Build)?;
        let resp = self
            .client
            .execute(request)
            .await
            .map_err(|e| TokenHttpError::Transport(reqwest_reason(&e)))?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(TokenHttpError::Redirect);
        }
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(TokenHttpError::Status(status.as_u16()));
        }
        let mut builder = http::Response::builder().status(status);
        if let Some(ct) = resp.headers().get(CONTENT_TYPE) {
            builder = builder.header(CONTENT_TYPE, ct.clone());
        }
        let body = read_body(resp).await.map_err(TokenHttpError::Transport)?;
        builder.body(body).map_err(|_| TokenHttpError::Build)
    }
}

/// Re-encode an `application/x-www-form-urlencoded` body as a JSON object of strings.
fn form_to_json(request: HttpRequest) -> Result<HttpRequest, TokenHttpError> {
    let (mut parts, body) = request.into_parts();
    let map: serde_json::Map<String, serde_json::Value> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
        .collect();
    let body = serde_json::to_vec(&map).map_err(|_| TokenHttpError::Build)?;
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(http::Request::from_parts(parts, body))
}

impl<'c> AsyncHttpClient<'c> for TokenHttp {
    type Error = TokenHttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "[::1]", "::1"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1", "localhost.example.com", "[::2]"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn url_rules() {
        let ok = |s: &str| url_problem(&Url::parse(s).unwrap()).is_none();
        assert!(ok("https://id.example.com/x"));
        assert!(ok("http://127.0.0.1:9000"));
        assert!(ok("http://localhost:9000/x"));
        assert!(ok("http://[::1]:9000/x"));
        assert!(!ok("http://id.example.com"));
        assert!(!ok("ftp://id.example.com"));
        assert!(!ok("https://user:pw@id.example.com"));
        assert!(!ok("https://id.example.com/#f"));
    }

    #[test]
    fn form_becomes_json() {
        let req = http::Request::builder()
            .uri("http://127.0.0.1/t")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(b"grant_type=authorization_code&code=a%2Bb&client_id=c".to_vec())
            .unwrap();
        let req = form_to_json(req).unwrap();
        assert_eq!(req.headers()[CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"grant_type": "authorization_code", "code": "a+b", "client_id": "c"})
        );
    }
}
