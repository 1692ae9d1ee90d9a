//! Where keys come from and how they are fetched: an issuer (its `jwks_uri` found by
//! RFC 8414 / OpenID Connect Discovery) or a JWKS URL known in advance; one bounded
//! JSON GET for both.
//!
//! A GET asks for `application/json`, gives up after [`FETCH_TIMEOUT`], reads at most
//! [`MAX_DOCUMENT_BYTES`] and refuses an answer that a redirect brought from another
//! origin. Errors name no URL and carry no response body.

use std::fmt;
use std::time::Duration;

use reqwest::Url;

/// Timeout of one HTTP request for a discovery document or a JWKS.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest discovery document or JWKS accepted.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// Whose keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// An issuer identifier (`https://id.example.com/tenant`): its metadata is looked
    /// up at the [`discovery_urls`] and must name exactly this issuer; the `jwks_uri`
    /// found is reused until the keys' TTL runs out.
    Issuer(String),
    /// A JWKS URL, configured or found by the caller's own discovery.
    Jwks(Url),
}

impl fmt::Display for KeySource {
    /// For logs: the issuer, or the JWKS URL without query and fragment.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Issuer(issuer) => f.write_str(issuer),
            KeySource::Jwks(url) => {
                let mut url = url.clone();
                url.set_query(None);
                url.set_fragment(None);
                write!(f, "{url}")
            }
        }
    }
}

/// Why no keys could be had from a source. Small and matchable; the details (which
/// URL, which attempt) are logged where they happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    #[error("issuer is not an http(s) url without query or fragment")]
    BadIssuerUrl,
    #[error("discovery document names another issuer")]
    IssuerMismatch,
    #[error("discovery document has no usable jwks_uri")]
    NoJwksUri,
    /// A non-2xx answer (a redirect included: it is not followed here).
    #[error("status {0}")]
    Status(u16),
    /// No answer: connection failure, timeout, an unreadable or too large body, a
    /// redirect to another origin.
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("not a json document")]
    NotJson,
    #[error("not a key set")]
    NotKeySet,
    /// The whole refresh (discovery plus JWKS) took longer than the deadline.
    #[error("no keys within the fetch deadline")]
    TimedOut,
}

impl KeysError {
    /// Worth trying again later (the source is down or overloaded), as opposed to a
    /// source that answers but with something unusable.
    pub fn is_transient(&self) -> bool {
        match self {
            KeysError::Unavailable(_) | KeysError::TimedOut => true,
            KeysError::Status(s) => *s >= 500 || *s == 429,
            _ => false,
        }
    }
}

/// Where to look for an issuer's metadata, in order.
///
/// Without a path component: `<iss>/.well-known/openid-configuration`, then
/// `<iss>/.well-known/oauth-authorization-server`. With a path (`https://h/t`):
/// RFC 8414 §3.1 path insertion for both (`https://h/.well-known/openid-configuration/t`,
/// `https://h/.well-known/oauth-authorization-server/t`), plus OpenID Connect
/// Discovery's path appending (`https://h/t/.well-known/openid-configuration`), which
/// most OIDC providers (Keycloak realms, Entra tenants, Okta auth servers) use.
pub fn discovery_urls(issuer: &str) -> Result<Vec<String>, KeysError> {
    let url = Url::parse(issuer).map_err(|_| KeysError::BadIssuerUrl)?;
    if !matches!(url.scheme(), "http" | "https") || url.query().is_some() || url.fragment().is_some() {
        return Err(KeysError::BadIssuerUrl);
    }
    let path = url.path().trim_end_matches('/');
    let origin = url.origin().ascii_serialization();
    Ok(if path.is_empty() {
        vec![
            format!("{origin}/.well-known/openid-configuration"),
            format!("{origin}/.well-known/oauth-authorization-server"),
        ]
    } else {
        vec![
            format!("{origin}/.well-known/openid-configuration{path}"),
            format!("{origin}{path}/.well-known/openid-configuration"),
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
        ]
    })
}

/// One HTTP client and the headers every request carries.
#[derive(Debug, Clone)]
pub(crate) struct Fetcher {
    pub http: reqwest::Client,
    pub user_agent: Option<String>,
}

impl Fetcher {
    /// Find the issuer's `jwks_uri`, trying the [`discovery_urls`] in order.
    pub async fn discover(&self, issuer: &str) -> Result<Url, KeysError> {
        // Replaced by the first attempt: there are always two or three locations. A
        // document for another issuer is reported rather than a later location's 404.
        let mut last = KeysError::BadIssuerUrl;
        let mut mismatch = false;
        for location in discovery_urls(issuer)? {
            let Ok(url) = Url::parse(&location) else {
                continue;
            };
            match self.get_json(&url).await {
                Ok(doc) => {
                    if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
                        // RFC 8414 §3.3: the issuer in the document must be exactly ours.
                        mismatch = true;
                        continue;
                    }
                    return doc
                        .get("jwks_uri")
                        .and_then(|v| v.as_str())
                        .and_then(|s| Url::parse(s).ok())
                        .filter(|u| matches!(u.scheme(), "http" | "https"))
                        .ok_or(KeysError::NoJwksUri);
                }
                Err(err) => {
                    tracing::debug!(issuer, url = location, error = %err, "discovery attempt failed");
                    last = err;
                }
            }
        }
        Err(if mismatch { KeysError::IssuerMismatch } else { last })
    }

    /// GET a JSON document (see the module documentation for the bounds).
    pub async fn get_json(&self, url: &Url) -> Result<serde_json::Value, KeysError> {
        let mut req = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(FETCH_TIMEOUT);
        if let Some(ua) = &self.user_agent {
            req = req.header(reqwest::header::USER_AGENT, ua.as_str());
        }
        let mut resp = req.send().await.map_err(|e| KeysError::Unavailable(reason(&e)))?;
        // A followed redirect to another origin: do not trust what came back.
        if resp.url().origin() != url.origin() {
            return Err(KeysError::Unavailable("redirected to another origin"));
        }
        if !resp.status().is_success() {
            return Err(KeysError::Status(resp.status().as_u16()));
        }
        if resp.content_length().is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64) {
            return Err(KeysError::Unavailable("document too large"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| KeysError::Unavailable(reason(&e)))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(KeysError::Unavailable("document too large"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|_| KeysError::NotJson)
    }
}

/// A reqwest error in words that name no URL.
fn reason(e: &reqwest::Error) -> &'static str {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    // Moved from gateway/src/auth/jwks.rs.
    #[test]
    fn discovery_without_path() {
        assert_eq!(
            discovery_urls("https://id.example.com").unwrap(),
            vec![
                "https://id.example.com/.well-known/openid-configuration",
                "https://id.example.com/.well-known/oauth-authorization-server"
            ]
        );
        assert_eq!(
            discovery_urls("https://id.example.com/").unwrap()[0],
            "https://id.example.com/.well-known/openid-configuration"
        );
    }

    // Moved from gateway/src/auth/jwks.rs.
    #[test]
    fn discovery_with_path() {
        assert_eq!(
            discovery_urls("https://id.example.com:8443/realms/dev").unwrap(),
            vec![
                "https://id.example.com:8443/.well-known/openid-configuration/realms/dev",
                "https://id.example.com:8443/realms/dev/.well-known/openid-configuration",
                "https://id.example.com:8443/.well-known/oauth-authorization-server/realms/dev"
            ]
        );
    }

    // Moved from gateway/src/auth/jwks.rs.
    #[test]
    fn discovery_rejects_odd_issuers() {
        assert!(discovery_urls("ftp://x").is_err());
        assert!(discovery_urls("https://x/?a=b").is_err());
        assert!(discovery_urls("not a url").is_err());
    }

    #[test]
    fn sources_display_without_query() {
        let jwks = KeySource::Jwks(Url::parse("https://id.example.com/keys?client=secret#x").unwrap());
        assert_eq!(jwks.to_string(), "https://id.example.com/keys");
        assert_eq!(KeySource::Issuer("https://i".into()).to_string(), "https://i");
    }

    #[test]
    fn transient_errors() {
        for e in [
            KeysError::Unavailable("timed out"),
            KeysError::TimedOut,
            KeysError::Status(503),
            KeysError::Status(429),
        ] {
            assert!(e.is_transient(), "{e}");
        }
        for e in [
            KeysError::Status(404),
            KeysError::NotJson,
            KeysError::NotKeySet,
            KeysError::IssuerMismatch,
        ] {
            assert!(!e.is_transient(), "{e}");
        }
    }
}
