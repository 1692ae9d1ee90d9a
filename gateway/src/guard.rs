//! DNS-rebinding protection: the Host header must name an allowed host, and a
//! browser's Origin must be an allowed origin (the latter only on the MCP
//! endpoints, not on the forwarded OAuth paths).

use actix_web::HttpRequest;

use crate::errors::{Kind, McpError};

#[derive(Debug, Clone)]
pub struct OriginPolicy {
    hosts: Vec<String>,
    origins: Vec<String>,
}

/// `example.com:8788` → `example.com`; `[::1]:8788` → `[::1]`.
fn hostname(authority: &str) -> String {
    let authority = authority.trim().to_ascii_lowercase();
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => authority[..=end].to_owned(),
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_owned(),
        _ => authority,
    }
}

impl OriginPolicy {
    pub fn new(hosts: &[String], origins: &[String]) -> Self {
        Self {
            hosts: hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            origins: origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h == "*" || *h == hostname(host))
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if !self.origins.is_empty() {
            return self.origins.iter().any(|o| o == "*" || *o == origin);
        }
        match origin.split_once("://") {
            Some(("http" | "https", authority)) if !authority.contains('/') => self.host_allowed(authority),
            _ => false,
        }
    }

    /// Check a request's Host and Origin headers (the MCP endpoints).
    pub fn check(&self, req: &HttpRequest) -> Result<(), McpError> {
        self.check_host(req)?;
        if let Some(origin) = req.headers().get(actix_web::http::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !self.origin_allowed(origin) {
                return Err(McpError::new(Kind::ForbiddenOrigin).detail(format!("{origin:?}")));
            }
        }
        Ok(())
    }

    /// Check only the Host header. The forwarded OAuth paths use this: browsers
    /// post the consent form from our own origin and call the token endpoint
    /// from any origin (CORS is the auth-service's business).
    pub fn check_host(&self, req: &HttpRequest) -> Result<(), McpError> {
        let host = req
            .headers()
            .get(actix_web::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        match host {
            Some(h) if self.host_allowed(&h) => {}
            Some(h) => return Err(McpError::new(Kind::ForbiddenHost).detail(format!("{h:?}"))),
            None => return Err(McpError::new(Kind::ForbiddenHost).detail("missing Host header")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn policy(origins: &[&str]) -> OriginPolicy {
        let hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let origins: Vec<String> = origins.iter().map(|s| s.to_string()).collect();
        OriginPolicy::new(&hosts, &origins)
    }

    #[test]
    fn hostnames() {
        assert_eq!(hostname("LocalHost:8788"), "localhost");
        assert_eq!(hostname("[::1]:8788"), "[::1]");
        assert_eq!(hostname("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn hosts_and_origins() {
        let p = policy(&[]);
        let ok = TestRequest::default()
            .insert_header(("Host", "localhost:8788"))
            .to_http_request();
        assert!(p.check(&ok).is_ok());
        let rebinding = TestRequest::default()
            .insert_header(("Host", "evil.example:8788"))
            .to_http_request();
        assert_eq!(p.check(&rebinding).expect_err("host").kind, Kind::ForbiddenHost);
        let browser = TestRequest::default()
            .insert_header(("Host", "localhost:8788"))
            .insert_header(("Origin", "http://localhost:6274"))
            .to_http_request();
        assert!(p.check(&browser).is_ok());
        let evil = TestRequest::default()
            .insert_header(("Host", "localhost:8788"))
            .insert_header(("Origin", "https://evil.example"))
            .to_http_request();
        assert_eq!(p.check(&evil).expect_err("origin").kind, Kind::ForbiddenOrigin);
        let null = TestRequest::default()
            .insert_header(("Host", "localhost:8788"))
            .insert_header(("Origin", "null"))
            .to_http_request();
        assert!(p.check(&null).is_err());
        let listed = policy(&["https://app.example"]);
        let app = TestRequest::default()
            .insert_header(("Host", "localhost"))
            .insert_header(("Origin", "https://app.example"))
            .to_http_request();
        assert!(listed.check(&app).is_ok());
        assert!(listed.check(&browser).is_err());
        assert!(p.check_host(&evil).is_ok(), "check_host ignores Origin");
        assert_eq!(p.check_host(&rebinding).expect_err("host").kind, Kind::ForbiddenHost);
    }
}
