//! Why a request was refused, and how that refusal looks on the wire.
//!
//! One table ([`AuthError::code`], [`AuthError::status`], [`AuthError::oauth_error`])
//! drives both the JSON body and the RFC 6750 `WWW-Authenticate` challenge, so the two
//! can never disagree. Nothing here ever contains the token itself.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

/// A bearer token was refused. Messages are for the client; they never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    MissingAuthorization,
    #[error("{0}")]
    InvalidToken(String),
    #[error("token signature is invalid")]
    InvalidSignature,
    #[error("token has expired")]
    TokenExpired,
    #[error("token audience does not include this resource")]
    InvalidAudience,
    #[error("token issuer is not allowed")]
    InvalidIssuer,
    #[error("token lacks required scope: {}", .0.join(" "))]
    InsufficientScope(Vec<String>),
    #[error("token issuer is unavailable: {0}")]
    IssuerUnavailable(String),
}

impl AuthError {
    /// The stable, machine-readable code (the SSO seed's cloud-mode codes).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingAuthorization => "MISSING_AUTHORIZATION",
            AuthError::InvalidToken(_) => "INVALID_TOKEN",
            AuthError::InvalidSignature => "INVALID_SIGNATURE",
            AuthError::TokenExpired => "TOKEN_EXPIRED",
            AuthError::InvalidAudience => "INVALID_AUDIENCE",
            AuthError::InvalidIssuer => "INVALID_ISSUER",
            AuthError::InsufficientScope(_) => "INSUFFICIENT_SCOPE",
            AuthError::IssuerUnavailable(_) => "ISSUER_UNAVAILABLE",
        }
    }

    /// HTTP status: 401, except 403 for a missing scope and 503 when the issuer's
    /// keys cannot be fetched (the token may be fine; the client should retry).
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::InsufficientScope(_) => StatusCode::FORBIDDEN,
            AuthError::IssuerUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The RFC 6750 / RFC 6749 error name. `None` for a request with no credentials
    /// at all: RFC 6750 §3.1 says the challenge then carries no error code.
    pub fn oauth_error(&self) -> Option<&'static str> {
        match self {
            AuthError::MissingAuthorization => None,
            AuthError::InsufficientScope(_) => Some("insufficient_scope"),
            AuthError::IssuerUnavailable(_) => Some("temporarily_unavailable"),
            _ => Some("invalid_token"),
        }
    }

    /// The JSON body: `{"error", "error_code", "error_description"}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": self.oauth_error().unwrap_or("invalid_request"),
            "error_code": self.code(),
            "error_description": self.to_string(),
        })
    }

    /// The `WWW-Authenticate` value. `resource_metadata_url` is the RFC 9728 metadata
    /// document of this resource; pass `None` only where it is truly unknown.
    pub fn challenge(&self, resource_metadata_url: Option<&str>) -> String {
        let mut params: Vec<String> = Vec::new();
        if let Some(url) = resource_metadata_url {
            params.push(format!("resource_metadata=\"{}\"", quote_safe(url)));
        }
        // 503 is not a token problem: point the client at the metadata, nothing more.
        if !matches!(self, AuthError::IssuerUnavailable(_))
            && let Some(error) = self.oauth_error()
        {
            params.push(format!("error=\"{error}\""));
            params.push(format!("error_description=\"{}\"", quote_safe(&self.to_string())));
        }
        if let AuthError::InsufficientScope(scopes) = self {
            params.push(format!("scope=\"{}\"", quote_safe(&scopes.join(" "))));
        }
        if params.is_empty() {
            "Bearer".to_owned()
        } else {
            format!("Bearer {}", params.join(", "))
        }
    }

    /// The full response, challenge included. Prefer this (via
    /// [`crate::auth::Validator::reject`]) over the bare [`ResponseError`] impl, which
    /// cannot know the resource metadata URL.
    pub fn to_response(&self, resource_metadata_url: Option<&str>) -> HttpResponse {
        let mut builder = HttpResponse::build(self.status());
        if let Ok(value) = HeaderValue::from_str(&self.challenge(resource_metadata_url)) {
            builder.insert_header((header::WWW_AUTHENTICATE, value));
        }
        if matches!(self, AuthError::IssuerUnavailable(_)) {
            builder.insert_header((header::RETRY_AFTER, "5"));
        }
        builder.insert_header((header::CACHE_CONTROL, "no-store"));
        builder.json(self.body())
    }
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    /// Without the resource metadata URL (an error value does not carry it); use
    /// [`crate::auth::Validator::reject`] to get the complete challenge.
    fn error_response(&self) -> HttpResponse {
        self.to_response(None)
    }
}

/// Make a string safe inside an RFC 7230 quoted-string and a header value: drop
/// control characters, escape `"` and `\`.
fn quote_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() || !c.is_ascii() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let table = [
            (AuthError::MissingAuthorization, "MISSING_AUTHORIZATION", 401),
            (AuthError::InvalidToken("x".into()), "INVALID_TOKEN", 401),
            (AuthError::InvalidSignature, "INVALID_SIGNATURE", 401),
            (AuthError::TokenExpired, "TOKEN_EXPIRED", 401),
            (AuthError::InvalidAudience, "INVALID_AUDIENCE", 401),
            (AuthError::InvalidIssuer, "INVALID_ISSUER", 401),
            (
                AuthError::InsufficientScope(vec!["a".into()]),
                "INSUFFICIENT_SCOPE",
                403,
            ),
            (AuthError::IssuerUnavailable("down".into()), "ISSUER_UNAVAILABLE", 503),
        ];
        for (err, code, status) in table {
            assert_eq!(err.code(), code);
            assert_eq!(err.status().as_u16(), status);
            assert_eq!(err.body()["error_code"], code);
        }
    }

    #[test]
    fn challenge_shapes() {
        let url = Some("http://localhost:8788/.well-known/oauth-protected-resource/mcp");
        assert_eq!(
            AuthError::MissingAuthorization.challenge(url),
            "Bearer resource_metadata=\"http://localhost:8788/.well-known/oauth-protected-resource/mcp\""
        );
        assert_eq!(
            AuthError::TokenExpired.challenge(url),
            "Bearer resource_metadata=\"http://localhost:8788/.well-known/oauth-protected-resource/mcp\", \
             error=\"invalid_token\", error_description=\"token has expired\""
        );
        let scope = AuthError::InsufficientScope(vec!["a".into(), "b".into()]).challenge(None);
        assert!(scope.starts_with("Bearer error=\"insufficient_scope\""));
        assert!(scope.ends_with("scope=\"a b\""));
        let quoted = AuthError::InvalidToken("bad \"thing\"\n".into()).challenge(None);
        assert!(quoted.contains("bad \\\"thing\\\"?"));
        assert_eq!(AuthError::MissingAuthorization.challenge(None), "Bearer");
    }

    #[test]
    fn response_has_header_and_body() {
        let resp = AuthError::InvalidAudience.to_response(Some("http://x/m"));
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let h = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(h.contains("resource_metadata=\"http://x/m\""));
        assert!(h.contains("error=\"invalid_token\""));
        assert_eq!(AuthError::MissingAuthorization.body()["error"], "invalid_request");
    }
}
