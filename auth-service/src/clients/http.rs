//! The HTTP side of clients: `POST /register` and reading client credentials from a
//! token-endpoint request.

use std::collections::HashMap;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use base64::Engine;

use super::{AuthMethod, ClientError, Clients};
use crate::net::{RateLimiter, TrustedProxies, client_ip};

/// Largest registration request accepted.
pub const MAX_REGISTRATION_BYTES: usize = 16 * 1024;

/// `POST /register` (RFC 7591): rate limited per source address ([`client_ip`]),
/// `application/json` only (415 otherwise), 201 with the registration response.
/// Every answer has `Cache-Control: no-store` (it may hold a secret) and
/// `Access-Control-Allow-Origin: *` (browser-based clients such as the MCP Inspector
/// register from another origin; no cookies are involved). Errors are
/// `{"error", "error_description"}`; refusals are logged with their code.
pub async fn register_handler(
    req: HttpRequest,
    body: web::Bytes,
    clients: web::Data<Clients>,
    limiter: web::Data<RateLimiter>,
    trusted: web::Data<TrustedProxies>,
) -> HttpResponse {
    let ip = client_ip(&req, &trusted);
    let mut res = match register(&req, &body, &clients, &limiter, ip).await {
        Ok(body) => HttpResponse::Created()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::PRAGMA, "no-cache"))
            .json(body),
        Err(e) => {
            tracing::info!(code = e.oauth_code(), source = %ip, reason = %e, "client registration refused");
            e.error_response()
        }
    };
    res.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    res
}

async fn register(
    req: &HttpRequest,
    body: &[u8],
    clients: &Clients,
    limiter: &RateLimiter,
    ip: std::net::IpAddr,
) -> Result<serde_json::Value, ClientError> {
    if !limiter.check(ip) {
        return Err(ClientError::RateLimited {
            retry_after_secs: limiter.retry_after().as_secs().max(1),
        });
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ClientError::UnsupportedMediaType(
            "registration requests must be application/json".into(),
        ));
    }
    if body.len() > MAX_REGISTRATION_BYTES {
        return Err(ClientError::InvalidClientMetadata(format!(
            "registration request is larger than {MAX_REGISTRATION_BYTES} bytes"
        )));
    }
    let metadata: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| ClientError::InvalidClientMetadata("request body is not valid JSON".into()))?;
    clients.register(&metadata).await
}

/// CORS preflight for `OPTIONS /register`.
pub async fn register_preflight() -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "POST, OPTIONS"))
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "content-type, authorization, mcp-protocol-version",
        ))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "86400"))
        .finish()
}

/// The client's id, secret and the method it used, from a token-endpoint request:
/// HTTP Basic (id and secret form-urlencoded before base64, RFC 6749 §2.3.1) →
/// `client_secret_basic`; `client_id` + `client_secret` in the form →
/// `client_secret_post`; `client_id` alone → `none`. Both Basic and a form secret, or
/// a form `client_id` that differs from Basic's → `invalid_request` (one method per
/// request); no client id at all, or malformed Basic → `invalid_client`. A
/// non-Basic `Authorization` header is ignored. An empty secret counts as none.
pub fn client_credentials(
    req: &HttpRequest,
    form: &HashMap<String, String>,
) -> Result<(String, Option<String>, AuthMethod), ClientError> {
    let basic = match req.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(value) => parse_basic(value)?,
    };
    let form_id = form.get("client_id").filter(|s| !s.is_empty());
    let form_secret = form.get("client_secret").filter(|s| !s.is_empty());
    match basic {
        Some((id, secret)) => {
            if form_secret.is_some() {
                return Err(ClientError::InvalidRequest(
                    "use one client authentication method: HTTP Basic or client_secret in the body, not both".into(),
                ));
            }
            if form_id.is_some_and(|f| *f != id) {
                return Err(ClientError::InvalidRequest(
                    "client_id in the body differs from the one in HTTP Basic".into(),
                ));
            }
            Ok((id, secret, AuthMethod::ClientSecretBasic))
        }
        None => match (form_id, form_secret) {
            (Some(id), Some(secret)) => Ok((id.clone(), Some(secret.clone()), AuthMethod::ClientSecretPost)),
            (Some(id), None) => Ok((id.clone(), None, AuthMethod::None)),
            (None, Some(_)) => Err(ClientError::InvalidRequest("client_secret without client_id".into())),
            (None, None) => Err(ClientError::InvalidClient("no client authentication".into())),
        },
    }
}

/// `Some((id, secret))` for a `Basic` header, `None` for another scheme.
fn parse_basic(value: &header::HeaderValue) -> Result<Option<(String, Option<String>)>, ClientError> {
    let malformed = || ClientError::InvalidClient("malformed HTTP Basic credentials".into());
    let Ok(value) = value.to_str() else {
        return Err(malformed());
    };
    let value = value.trim();
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return if value.eq_ignore_ascii_case("basic") {
            Err(malformed())
        } else {
            Ok(None)
        };
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let encoded = encoded.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded))
        .map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let id = form_decode(id).ok_or_else(malformed)?;
    let secret = form_decode(secret).ok_or_else(malformed)?;
    if id.is_empty() {
        return Err(malformed());
    }
    Ok(Some((id, (!secret.is_empty()).then_some(secret))))
}

/// `application/x-www-form-urlencoded` decoding of one value (`+` is a space).
fn form_decode(s: &str) -> Option<String> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn basic(id: &str, secret: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        format!("Basic {b64}")
    }

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn client_credentials_methods() {
        let req = TestRequest::default()
            .insert_header(("Authorization", basic("c_1", "s3cret")))
            .to_http_request();
        assert_eq!(
            client_credentials(&req, &form(&[("grant_type", "authorization_code")])).unwrap(),
            ("c_1".into(), Some("s3cret".into()), AuthMethod::ClientSecretBasic)
        );
        // Same id in the body is tolerated.
        assert!(client_credentials(&req, &form(&[("client_id", "c_1")])).is_ok());
        // RFC 6749 §2.3.1: both parts form-urlencoded before base64.
        let req = TestRequest::default()
            .insert_header(("Authorization", basic("https%3A%2F%2Fa.example%2Fc", "a%2Bb+c%3Ad")))
            .to_http_request();
        assert_eq!(
            client_credentials(&req, &HashMap::new()).unwrap(),
            (
                "https://a.example/c".into(),
                Some("a+b c:d".into()),
                AuthMethod::ClientSecretBasic
            )
        );
        let req = TestRequest::default().to_http_request();
        assert_eq!(
            client_credentials(&req, &form(&[("client_id", "c_2"), ("client_secret", "x")])).unwrap(),
            ("c_2".into(), Some("x".into()), AuthMethod::ClientSecretPost)
        );
        assert_eq!(
            client_credentials(&req, &form(&[("client_id", "c_2")])).unwrap(),
            ("c_2".into(), None, AuthMethod::None)
        );
        // A bearer header is not client authentication.
        let req = TestRequest::default()
            .insert_header(("Authorization", "Bearer abc"))
            .to_http_request();
        assert_eq!(
            client_credentials(&req, &form(&[("client_id", "c_2")])).unwrap().2,
            AuthMethod::None
        );
    }

    #[test]
    fn client_credentials_refusals() {
        let req = TestRequest::default()
            .insert_header(("Authorization", basic("c_1", "s3cret")))
            .to_http_request();
        let both = client_credentials(&req, &form(&[("client_id", "c_1"), ("client_secret", "s3cret")])).unwrap_err();
        assert_eq!(both.oauth_code(), "invalid_request");
        let other = client_credentials(&req, &form(&[("client_id", "c_9")])).unwrap_err();
        assert_eq!(other.oauth_code(), "invalid_request");
        let none = client_credentials(&TestRequest::default().to_http_request(), &HashMap::new()).unwrap_err();
        assert_eq!((none.oauth_code(), none.status()), ("invalid_client", 401));
        let secret_only = client_credentials(
            &TestRequest::default().to_http_request(),
            &form(&[("client_secret", "x")]),
        )
        .unwrap_err();
        assert_eq!(secret_only.oauth_code(), "invalid_request");
        for bad in ["Basic", "Basic !!!", "Basic bm9jb2xvbg==", "Basic OnNlY3JldA=="] {
            let req = TestRequest::default()
                .insert_header(("Authorization", bad))
                .to_http_request();
            let e = client_credentials(&req, &HashMap::new()).unwrap_err();
            assert_eq!(e.oauth_code(), "invalid_client", "{bad}");
        }
        // Errors never echo the secret.
        let e = client_credentials(&req, &form(&[("client_id", "c_1"), ("client_secret", "s3cret")])).unwrap_err();
        assert!(!e.to_string().contains("s3cret") && !e.description().contains("s3cret"));
    }
}
