//! Every refusal, and how it looks on the wire: one table ([`ApiError::parts`]) gives
//! the status and the `error` code; the body is always
//! `{"error": "<code>", "error_description": "..."}`. Token refusals carry the RFC 6750
//! challenge: no `error` parameter when no token was offered, `invalid_token` for a bad
//! one, `insufficient_scope` with the needed `scope`.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use crate::auth::AuthError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("no such todo")]
    NoSuchTodo,
    #[error("no such endpoint")]
    NoRoute,
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl ApiError {
    /// The table: HTTP status and `error` code.
    pub fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Auth(AuthError::Missing) => (StatusCode::UNAUTHORIZED, "missing_token"),
            ApiError::Auth(AuthError::Invalid(_) | AuthError::Refused(_)) => {
                (StatusCode::UNAUTHORIZED, "invalid_token")
            }
            ApiError::Auth(AuthError::KeysUnavailable) => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
            ApiError::Auth(AuthError::InsufficientScope(_)) => (StatusCode::FORBIDDEN, "insufficient_scope"),
            ApiError::Store(StoreError::TooMany(_)) => (StatusCode::CONFLICT, "too_many_todos"),
            ApiError::Store(StoreError::Conflict) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Store(StoreError::Unavailable { .. } | StoreError::Corrupt(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::NoSuchTodo | ApiError::NoRoute => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        }
    }

    /// The `WWW-Authenticate` value, for token refusals.
    pub fn challenge(&self) -> Option<String> {
        match self {
            ApiError::Auth(AuthError::Missing) => Some("Bearer".to_owned()),
            ApiError::Auth(e @ (AuthError::Invalid(_) | AuthError::Refused(_))) => {
                let description = e.to_string().replace(['"', '\\'], "");
                Some(format!(
                    "Bearer error=\"invalid_token\", error_description=\"{description}\""
                ))
            }
            ApiError::Auth(AuthError::InsufficientScope(scope)) => Some(format!(
                "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                scope.as_str()
            )),
            _ => None,
        }
    }

    /// What the client is told. A store failure's details stay in the log.
    fn description(&self) -> String {
        match self {
            ApiError::Store(StoreError::Unavailable { .. } | StoreError::Corrupt(_)) => {
                "the todo store is unavailable, try again later".to_owned()
            }
            e => e.to_string(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.parts().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code) = self.parts();
        if status.is_server_error() {
            tracing::warn!(code, error = %self, "request failed");
        }
        let mut response = HttpResponse::build(status);
        if let Some(value) = self.challenge().and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.insert_header((header::WWW_AUTHENTICATE, value));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header((header::RETRY_AFTER, "5"));
        }
        response.insert_header((header::CACHE_CONTROL, "no-store"));
        response.json(serde_json::json!({"error": code, "error_description": self.description()}))
    }
}

#[cfg(test)]
mod tests {
    use jwt_verify::VerifyError;

    use super::*;
    use crate::auth::Scope;

    #[test]
    fn challenges_follow_rfc_6750() {
        assert_eq!(
            ApiError::from(AuthError::Missing).challenge().as_deref(),
            Some("Bearer")
        );
        assert_eq!(
            ApiError::from(AuthError::Refused(VerifyError::Expired))
                .challenge()
                .as_deref(),
            Some("Bearer error=\"invalid_token\", error_description=\"token refused: expired\"")
        );
        assert_eq!(
            ApiError::from(AuthError::InsufficientScope(Scope::Write))
                .challenge()
                .as_deref(),
            Some("Bearer error=\"insufficient_scope\", scope=\"todo:write\"")
        );
        assert_eq!(ApiError::NoSuchTodo.challenge(), None);
    }
}
