//! The one table of the auth-service's OAuth endpoint errors (`/token`, `/revoke`,
//! `/introspect`, `/register`): each [`Code`] has its HTTP status and its RFC 6749
//! §5.2 / RFC 7009 / RFC 7591 §3.2.2 / RFC 8707 name, which is also the label of the
//! `outcome` metric. [`OAuthError`] is the single `ResponseError` that turns one into
//! a body: `{"error", "error_description"}`, `Cache-Control: no-store`, a `Basic`
//! challenge on a 401 when the client tried HTTP Basic, `Retry-After` on a 429.
//! Browser-facing refusals (`/authorize`, consent, login) are HTML pages
//! ([`crate::pages`]), not this.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::clients::ClientError;
use crate::grants::GrantError;

/// An OAuth error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    /// RFC 8707: the `resource` is not this server's.
    InvalidTarget,
    InvalidRedirectUri,
    InvalidClientMetadata,
    /// A body that is not the media type the endpoint takes.
    UnsupportedMediaType,
    /// Too many requests from one address (429).
    SlowDown,
    TemporarilyUnavailable,
}

impl Code {
    /// Every code, for tests and documentation.
    pub const ALL: [Code; 12] = [
        Code::InvalidRequest,
        Code::InvalidClient,
        Code::InvalidGrant,
        Code::UnauthorizedClient,
        Code::UnsupportedGrantType,
        Code::InvalidScope,
        Code::InvalidTarget,
        Code::InvalidRedirectUri,
        Code::InvalidClientMetadata,
        Code::UnsupportedMediaType,
        Code::SlowDown,
        Code::TemporarilyUnavailable,
    ];

    /// The table: HTTP status and the error's name on the wire (and in metrics).
    pub fn entry(self) -> (StatusCode, &'static str) {
        use Code::*;
        match self {
            InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
            InvalidClient => (StatusCode::UNAUTHORIZED, "invalid_client"),
            InvalidGrant => (StatusCode::BAD_REQUEST, "invalid_grant"),
            UnauthorizedClient => (StatusCode::BAD_REQUEST, "unauthorized_client"),
            UnsupportedGrantType => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            InvalidScope => (StatusCode::BAD_REQUEST, "invalid_scope"),
            InvalidTarget => (StatusCode::BAD_REQUEST, "invalid_target"),
            InvalidRedirectUri => (StatusCode::BAD_REQUEST, "invalid_redirect_uri"),
            InvalidClientMetadata => (StatusCode::BAD_REQUEST, "invalid_client_metadata"),
            UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request"),
            SlowDown => (StatusCode::TOO_MANY_REQUESTS, "temporarily_unavailable"),
            TemporarilyUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
        }
    }

    pub fn status(self) -> StatusCode {
        self.entry().0
    }

    /// The RFC name (`invalid_grant`, ...), also the metric label.
    pub fn name(self) -> &'static str {
        self.entry().1
    }
}

/// An OAuth endpoint refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {description}", code.name())]
pub struct OAuthError {
    pub code: Code,
    /// `error_description`: says what is wrong, never a secret or an internal detail.
    pub description: String,
    /// The client tried HTTP Basic: a 401 carries `WWW-Authenticate: Basic`.
    pub basic: bool,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
}

impl OAuthError {
    pub fn new(code: Code, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            basic: false,
            retry_after: None,
        }
    }

    /// Note that the client authenticated (or tried to) with HTTP Basic.
    pub fn basic(mut self, basic: bool) -> Self {
        self.basic = basic;
        self
    }

    /// The 503 whose cause is logged, not shown.
    pub fn unavailable() -> Self {
        Self::new(Code::TemporarilyUnavailable, "try again")
    }

    /// The metric label of this refusal.
    pub fn label(&self) -> &'static str {
        self.code.name()
    }
}

impl From<&ClientError> for OAuthError {
    fn from(e: &ClientError) -> Self {
        let code = match e {
            ClientError::InvalidRedirectUri(_) => Code::InvalidRedirectUri,
            ClientError::InvalidClientMetadata(_) => Code::InvalidClientMetadata,
            ClientError::InvalidClient(_) | ClientError::MetadataDocument(_) => Code::InvalidClient,
            ClientError::InvalidRequest(_) => Code::InvalidRequest,
            ClientError::UnsupportedMediaType(_) => Code::UnsupportedMediaType,
            ClientError::RateLimited { .. } => Code::SlowDown,
            ClientError::Unavailable(_) => Code::TemporarilyUnavailable,
        };
        let mut err = OAuthError::new(code, e.description());
        if let ClientError::RateLimited { retry_after_secs } = e {
            err.retry_after = Some(*retry_after_secs);
        }
        err
    }
}

impl From<&GrantError> for OAuthError {
    fn from(e: &GrantError) -> Self {
        match e {
            GrantError::Invalid(reason) => OAuthError::new(Code::InvalidGrant, *reason),
            _ => OAuthError::unavailable(),
        }
    }
}

impl ResponseError for OAuthError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        resp.insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::PRAGMA, "no-cache"));
        if self.code == Code::InvalidClient && self.basic {
            resp.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"oauth\""));
        }
        if let Some(seconds) = self.retry_after {
            resp.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        resp.json(json!({ "error": self.code.name(), "error_description": self.description }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_registered_name_and_a_client_or_server_status() {
        for code in Code::ALL {
            let (status, name) = code.entry();
            assert!(status.is_client_error() || status.is_server_error(), "{code:?}");
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}");
        }
        assert_eq!(Code::InvalidClient.status(), StatusCode::UNAUTHORIZED);
    }

    #[actix_web::test]
    async fn responses_are_no_store_with_challenge_and_retry_after_where_due() {
        let r = OAuthError::new(Code::InvalidClient, "bad secret")
            .basic(true)
            .error_response();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers().get(header::CACHE_CONTROL).unwrap(), "no-store");
        assert_eq!(
            r.headers().get(header::WWW_AUTHENTICATE).unwrap(),
            "Basic realm=\"oauth\""
        );
        let r = OAuthError::new(Code::InvalidClient, "bad secret").error_response();
        assert!(
            r.headers().get(header::WWW_AUTHENTICATE).is_none(),
            "no Basic challenge for a post client"
        );
        let r = OAuthError::from(&ClientError::RateLimited { retry_after_secs: 7 }).error_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers().get(header::RETRY_AFTER).unwrap(), "7");
        let body = actix_web::body::to_bytes(
            OAuthError::from(&GrantError::Invalid("grant revoked"))
                .error_response()
                .into_body(),
        )
        .await
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"error": "invalid_grant", "error_description": "grant revoked"})
        );
    }
}
