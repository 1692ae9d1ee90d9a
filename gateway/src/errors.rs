//! Every error the gateway answers with, from one table, mapped to HTTP in
//! exactly one place ([`McpError`]'s `ResponseError`). Bodies are JSON-RPC error
//! objects built by [`jsonrpc_error`]; auth failures have their own OAuth-style
//! bodies in [`crate::auth`].

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Value, json};

/// What went wrong, independent of how it is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ParseError,
    InvalidRequest,
    BatchNotSupported,
    UnsupportedMediaType,
    NotAcceptable,
    PayloadTooLarge,
    RequestTimeout,
    TooManyRequests,
    /// The gateway (or the worker) is at capacity: shed without running, 503.
    Overloaded,
    ForbiddenOrigin,
    ForbiddenHost,
    SessionRequired,
    SessionNotFound,
    UnsupportedProtocolVersion,
    HeaderMismatch,
    InvalidParams,
    MethodNotFound,
    MethodNotAllowed,
    NoWorker,
    WorkerTimeout,
    /// The worker that took the request was declared dead before answering.
    WorkerGone,
    Draining,
    Internal,
}

/// The table: HTTP status, JSON-RPC code, message.
pub fn describe(kind: Kind) -> (StatusCode, i64, &'static str) {
    use Kind::*;
    use proto::mcp::{
        HEADER_MISMATCH, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, OVERLOADED, PARSE_ERROR,
        SERVER_ERROR, SESSION_NOT_FOUND,
    };
    match kind {
        ParseError => (StatusCode::BAD_REQUEST, PARSE_ERROR, "Parse error"),
        InvalidRequest => (StatusCode::BAD_REQUEST, INVALID_REQUEST, "Invalid Request"),
        BatchNotSupported => (
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "Invalid Request: JSON-RPC batches are not supported",
        ),
        UnsupportedMediaType => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            INVALID_REQUEST,
            "Unsupported Media Type: Content-Type must be application/json",
        ),
        NotAcceptable => (StatusCode::NOT_ACCEPTABLE, INVALID_REQUEST, "Not Acceptable"),
        PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, INVALID_REQUEST, "Payload Too Large"),
        RequestTimeout => (
            StatusCode::REQUEST_TIMEOUT,
            INVALID_REQUEST,
            "Request Timeout: the body did not arrive in time",
        ),
        TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, SERVER_ERROR, "Too Many Requests"),
        Overloaded => (
            StatusCode::SERVICE_UNAVAILABLE,
            OVERLOADED,
            "Server overloaded: the request was not run, try again shortly",
        ),
        ForbiddenOrigin => (StatusCode::FORBIDDEN, INVALID_REQUEST, "Forbidden: Origin not allowed"),
        ForbiddenHost => (StatusCode::FORBIDDEN, INVALID_REQUEST, "Forbidden: Host not allowed"),
        SessionRequired => (
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "Bad Request: Mcp-Session-Id header is required",
        ),
        SessionNotFound => (StatusCode::NOT_FOUND, SESSION_NOT_FOUND, "Session not found"),
        UnsupportedProtocolVersion => (
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "Bad Request: Unsupported protocol version",
        ),
        HeaderMismatch => (StatusCode::BAD_REQUEST, HEADER_MISMATCH, "Header mismatch"),
        InvalidParams => (StatusCode::BAD_REQUEST, INVALID_PARAMS, "Invalid params"),
        MethodNotFound => (StatusCode::NOT_FOUND, METHOD_NOT_FOUND, "Method not found"),
        MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, INVALID_REQUEST, "Method Not Allowed"),
        NoWorker => (
            StatusCode::SERVICE_UNAVAILABLE,
            SERVER_ERROR,
            "No session worker is available",
        ),
        WorkerTimeout => (
            StatusCode::GATEWAY_TIMEOUT,
            SERVER_ERROR,
            "Session worker did not answer in time",
        ),
        WorkerGone => (
            StatusCode::BAD_GATEWAY,
            SERVER_ERROR,
            "The session worker serving this request stopped before answering; it may or may not have run",
        ),
        Draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            SERVER_ERROR,
            "Gateway is shutting down",
        ),
        Internal => (StatusCode::INTERNAL_SERVER_ERROR, INTERNAL_ERROR, "Internal error"),
    }
}

/// `Retry-After` of a request shed for overload: bursts pass in seconds.
pub const OVERLOAD_RETRY_AFTER_SECS: u64 = 1;

/// A JSON-RPC error object.
pub fn jsonrpc_error(id: Option<&Value>, code: i64, message: &str) -> Value {
    let mut body = json!({
        "jsonrpc": "2.0",
        "error": { "code": code, "message": message },
    });
    body["id"] = id.cloned().unwrap_or(Value::Null);
    body
}

/// An error answered to an MCP client.
#[derive(Debug, Clone)]
pub struct McpError {
    pub kind: Kind,
    pub id: Option<Value>,
    pub detail: Option<String>,
    /// Overrides the table's JSON-RPC code (errors a worker reported).
    pub code: Option<i64>,
    pub allow: Option<&'static str>,
    /// Seconds for `Retry-After` (429; 503 for overload).
    pub retry_after: Option<u64>,
}

impl McpError {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            id: None,
            detail: None,
            code: None,
            allow: None,
            retry_after: None,
        }
    }

    pub fn with_id(mut self, id: Option<Value>) -> Self {
        self.id = id;
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn code(mut self, code: i64) -> Self {
        self.code = Some(code);
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn allow(mut self, methods: &'static str) -> Self {
        self.allow = Some(methods);
        self
    }

    pub fn message(&self) -> String {
        let (_, _, message) = describe(self.kind);
        match &self.detail {
            Some(d) => format!("{message}: {d}"),
            None => message.to_owned(),
        }
    }
}

impl std::fmt::Display for McpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl ResponseError for McpError {
    fn status_code(&self) -> StatusCode {
        describe(self.kind).0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code, _) = describe(self.kind);
        let body = jsonrpc_error(self.id.as_ref(), self.code.unwrap_or(code), &self.message());
        let mut resp = HttpResponse::build(status);
        if let Some(allow) = self.allow {
            resp.insert_header(("Allow", allow));
        }
        // A shed request always says when to come back.
        let retry_after = self
            .retry_after
            .or((self.kind == Kind::Overloaded).then_some(OVERLOAD_RETRY_AFTER_SECS));
        if let Some(seconds) = retry_after {
            resp.insert_header(("Retry-After", seconds.to_string()));
        }
        resp.content_type("application/json").body(body.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_jsonrpc() {
        let e = McpError::new(Kind::ParseError).with_id(None).detail("eof");
        let resp = e.error_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = jsonrpc_error(Some(&json!(7)), -32601, "nope");
        assert_eq!(body["id"], 7);
        assert_eq!(body["error"]["code"], -32601);
        assert_eq!(body["jsonrpc"], "2.0");
    }
}
