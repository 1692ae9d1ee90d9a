//! Gateway configuration: one struct, built in `main`, passed down.

use std::net::SocketAddr;
use std::time::Duration;

pub const ENV_LISTEN: &str = "GATEWAY_LISTEN";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8788";
pub const ENV_ADMIN_LISTEN: &str = "GATEWAY_ADMIN_LISTEN";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9788";
pub const ENV_NATS_URL: &str = "NATS_URL";
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const ENV_ALLOWED_ISSUERS: &str = "ALLOWED_ISSUERS";
pub const ENV_RESOURCE_IDENTIFIER: &str = "RESOURCE_IDENTIFIER";
pub const DEFAULT_RESOURCE_IDENTIFIER: &str = "http://localhost:8788/mcp";
pub const ENV_AUTHORIZATION_SERVERS: &str = "AUTHORIZATION_SERVERS";
pub const ENV_REQUIRED_SCOPES: &str = "REQUIRED_SCOPES";
pub const ENV_JWKS_CACHE_TTL: &str = "JWKS_CACHE_TTL";
pub const ENV_ISSUERS_WITHOUT_TYP: &str = "GATEWAY_ISSUERS_WITHOUT_TYP";
pub const DEFAULT_JWKS_CACHE_TTL_SECS: u64 = 300;
pub const ENV_ALLOWED_HOSTS: &str = "GATEWAY_ALLOWED_HOSTS";
pub const DEFAULT_ALLOWED_HOSTS: &str = "localhost,127.0.0.1,[::1]";
pub const ENV_ALLOWED_ORIGINS: &str = "GATEWAY_ALLOWED_ORIGINS";
pub const ENV_MAX_BODY_BYTES: &str = "GATEWAY_MAX_BODY_BYTES";
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
pub const ENV_ACK_TIMEOUT_MS: &str = "GATEWAY_ACK_TIMEOUT_MS";
pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 5_000;
pub const ENV_NO_RESPONDERS_RETRY_MS: &str = "GATEWAY_NO_RESPONDERS_RETRY_MS";
pub const DEFAULT_NO_RESPONDERS_RETRY_MS: u64 = 15_000;
pub const ENV_REQUEST_TIMEOUT: &str = "GATEWAY_REQUEST_TIMEOUT";
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 300;
pub const ENV_SSE_KEEPALIVE: &str = "GATEWAY_SSE_KEEPALIVE";
pub const DEFAULT_SSE_KEEPALIVE_SECS: u64 = 15;
pub const ENV_DRAIN_TIMEOUT: &str = "GATEWAY_DRAIN_TIMEOUT";
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 10;
pub const ENV_WORKERS: &str = "GATEWAY_HTTP_WORKERS";
pub const DEFAULT_WORKERS: usize = 0;
pub const ENV_GATEWAY_ID: &str = "GATEWAY_ID";
pub const ENV_AUTH_UPSTREAM: &str = "GATEWAY_AUTH_UPSTREAM";
pub const ENV_TRUSTED_PROXIES: &str = "GATEWAY_TRUSTED_PROXIES";
pub const ENV_UNAUTH_RATE: &str = "GATEWAY_UNAUTH_RATE";
pub const DEFAULT_UNAUTH_RATE: u32 = 120;
pub const ENV_MAX_INFLIGHT_PER_PRINCIPAL: &str = "GATEWAY_MAX_INFLIGHT_PER_PRINCIPAL";
pub const DEFAULT_MAX_INFLIGHT_PER_PRINCIPAL: usize = 64;
pub const ENV_MAX_INFLIGHT: &str = "GATEWAY_MAX_INFLIGHT";
pub const DEFAULT_MAX_INFLIGHT: usize = 2048;
pub const ENV_MAX_CONNECTIONS: &str = "GATEWAY_MAX_CONNECTIONS";
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
pub const ENV_MAX_STREAMS: &str = "GATEWAY_MAX_STREAMS";
pub const DEFAULT_MAX_STREAMS: usize = 100_000;
pub const ENV_H2C_LISTEN: &str = "GATEWAY_H2C_LISTEN";
pub const ENV_SSE_BUFFER_BYTES: &str = "GATEWAY_SSE_BUFFER_BYTES";
pub const DEFAULT_SSE_BUFFER_BYTES: usize = 2 * 1024 * 1024;
pub const ENV_LEGACY_RESUME_GRACE: &str = "GATEWAY_LEGACY_RESUME_GRACE";
pub const DEFAULT_LEGACY_RESUME_GRACE_SECS: u64 = 30;
pub const ENV_SLOW_READER_TIMEOUT: &str = "GATEWAY_SLOW_READER_TIMEOUT";
pub const DEFAULT_SLOW_READER_TIMEOUT_SECS: u64 = 30;
pub const ENV_BODY_READ_TIMEOUT: &str = "GATEWAY_BODY_READ_TIMEOUT";
pub const DEFAULT_BODY_READ_TIMEOUT_SECS: u64 = 10;
/// Empty: the gateway forwards no OAuth paths.
pub const DEFAULT_AUTH_UPSTREAM: &str = "";

/// Gateway settings (`--help` lists every default).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gateway", version, about = "mcp-cluster gateway")]
pub struct Config {
    /// Public HTTP address (MCP at /mcp, legacy SSE at /sse and /messages).
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Admin address (/healthz, /readyz, /metrics).
    #[arg(long, env = ENV_ADMIN_LISTEN, default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,
    /// NATS server URL, or a comma-separated list of a cluster's servers.
    #[arg(long, env = ENV_NATS_URL, default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,
    /// Servers of a JetStream cluster holding the revocation bucket, when the
    /// gateway is the one creating it (resource-server mode).
    #[arg(long, env = proto::nats::ENV_NATS_REPLICAS, default_value_t = proto::nats::DEFAULT_NATS_REPLICAS)]
    pub nats_replicas: usize,
    /// Comma-separated issuers whose access tokens are accepted.
    #[arg(long, env = ENV_ALLOWED_ISSUERS, value_delimiter = ',', required = true)]
    pub allowed_issuers: Vec<String>,
    /// This MCP server's resource identifier: the `aud` tokens must carry.
    #[arg(long, env = ENV_RESOURCE_IDENTIFIER, default_value = DEFAULT_RESOURCE_IDENTIFIER)]
    pub resource_identifier: String,
    /// Authorization servers named in the protected-resource metadata (default: the allowed issuers).
    #[arg(long, env = ENV_AUTHORIZATION_SERVERS, value_delimiter = ',')]
    pub authorization_servers: Vec<String>,
    /// Scopes every token must carry (comma-separated; none by default).
    #[arg(long, env = ENV_REQUIRED_SCOPES, value_delimiter = ',')]
    pub required_scopes: Vec<String>,
    /// Comma-separated allowed issuers whose access tokens lack the RFC 9068 `typ:
    /// at+jwt` header (Microsoft Entra and others); every other issuer's must have it.
    #[arg(long, env = ENV_ISSUERS_WITHOUT_TYP, value_delimiter = ',')]
    pub issuers_without_typ: Vec<String>,
    /// Seconds an issuer's JWKS is cached.
    #[arg(long, env = ENV_JWKS_CACHE_TTL, default_value_t = DEFAULT_JWKS_CACHE_TTL_SECS)]
    pub jwks_cache_ttl_secs: u64,
    /// Host names accepted in the Host header (DNS-rebinding protection); `*` accepts any.
    #[arg(long, env = ENV_ALLOWED_HOSTS, value_delimiter = ',', default_value = DEFAULT_ALLOWED_HOSTS)]
    pub allowed_hosts: Vec<String>,
    /// Origins accepted from browsers (default: origins whose host is an allowed host).
    #[arg(long, env = ENV_ALLOWED_ORIGINS, value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Load balancers in front of the gateway (addresses or networks, comma-separated)
    /// whose X-Forwarded-For is believed; others' is dropped (default: none).
    #[arg(long, env = ENV_TRUSTED_PROXIES, value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Requests per minute per client address that fail authentication before
    /// further ones are answered 429.
    #[arg(long, env = ENV_UNAUTH_RATE, default_value_t = DEFAULT_UNAUTH_RATE)]
    pub unauth_rate: u32,
    /// Requests one principal (issuer, subject, client) may have in flight at once.
    #[arg(long, env = ENV_MAX_INFLIGHT_PER_PRINCIPAL, default_value_t = DEFAULT_MAX_INFLIGHT_PER_PRINCIPAL)]
    pub max_inflight_per_principal: usize,
    /// Requests the gateway has in flight at once, all callers together (POST /mcp
    /// and /messages); beyond it requests are shed with 503 and Retry-After.
    #[arg(long, env = ENV_MAX_INFLIGHT, default_value_t = DEFAULT_MAX_INFLIGHT)]
    pub max_inflight: usize,
    /// Client connections the gateway holds open at once (idle SSE streams
    /// included); beyond it new connections wait in the listen backlog. Needs an
    /// open-files limit above it (each connection is a file descriptor).
    #[arg(long, env = ENV_MAX_CONNECTIONS, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Long-lived SSE streams (GET /mcp, legacy /sse) the gateway holds at once;
    /// beyond it a new one is refused with 503 and Retry-After. Over HTTP/2 many
    /// streams share one connection, so this, not GATEWAY_MAX_CONNECTIONS, bounds
    /// the memory idle streams take (12 KiB or less each; bench/README.md).
    #[arg(long, env = ENV_MAX_STREAMS, default_value_t = DEFAULT_MAX_STREAMS)]
    pub max_streams: usize,
    /// Address for HTTP/2 without TLS (h2c, prior knowledge), serving what
    /// GATEWAY_LISTEN serves: for a proxy in front that speaks HTTP/2 to its back
    /// ends (Envoy, a load balancer with HTTP/2 back ends), which then carries many
    /// clients' sessions and streams on a few connections. Default: none.
    #[arg(long, env = ENV_H2C_LISTEN)]
    pub h2c_listen: Option<SocketAddr>,
    /// Bytes of events the gateway holds for one SSE stream whose client is not
    /// reading; beyond it the stream ends (the client reconnects).
    #[arg(long, env = ENV_SSE_BUFFER_BYTES, default_value_t = DEFAULT_SSE_BUFFER_BYTES)]
    pub sse_buffer_bytes: usize,
    /// Seconds a legacy `/sse` session outlives its stream, so the client can
    /// resume it with `Last-Event-ID` (on any gateway) before it is closed.
    #[arg(long, env = ENV_LEGACY_RESUME_GRACE, default_value_t = DEFAULT_LEGACY_RESUME_GRACE_SECS)]
    pub legacy_resume_grace_secs: u64,
    /// Seconds a client may leave sent data unread (TCP_USER_TIMEOUT) before its
    /// connection is closed.
    #[arg(long, env = ENV_SLOW_READER_TIMEOUT, default_value_t = DEFAULT_SLOW_READER_TIMEOUT_SECS)]
    pub slow_reader_timeout_secs: u64,
    /// Seconds a request body may take to arrive (slow senders are cut off, 408).
    #[arg(long, env = ENV_BODY_READ_TIMEOUT, default_value_t = DEFAULT_BODY_READ_TIMEOUT_SECS)]
    pub body_read_timeout_secs: u64,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = ENV_MAX_BODY_BYTES, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Milliseconds to wait for a worker to take a message.
    #[arg(long, env = ENV_ACK_TIMEOUT_MS, default_value_t = DEFAULT_ACK_TIMEOUT_MS)]
    pub ack_timeout_ms: u64,
    /// Milliseconds to keep retrying while no worker owns a shard (shards moving).
    #[arg(long, env = ENV_NO_RESPONDERS_RETRY_MS, default_value_t = DEFAULT_NO_RESPONDERS_RETRY_MS)]
    pub no_responders_retry_ms: u64,
    /// Seconds a request may take end to end.
    #[arg(long, env = ENV_REQUEST_TIMEOUT, default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS)]
    pub request_timeout_secs: u64,
    /// Seconds between SSE keep-alive comments.
    #[arg(long, env = ENV_SSE_KEEPALIVE, default_value_t = DEFAULT_SSE_KEEPALIVE_SECS)]
    pub sse_keepalive_secs: u64,
    /// Seconds to drain after SIGTERM before connections are cut.
    #[arg(long, env = ENV_DRAIN_TIMEOUT, default_value_t = DEFAULT_DRAIN_TIMEOUT_SECS)]
    pub drain_timeout_secs: u64,
    /// HTTP worker threads; 0 means one per CPU.
    #[arg(long, env = ENV_WORKERS, default_value_t = DEFAULT_WORKERS)]
    pub http_workers: usize,
    /// This gateway's id on NATS (default: random).
    #[arg(long, env = ENV_GATEWAY_ID)]
    pub gateway_id: Option<String>,
    /// URL of the auth-service; when set, its public paths (/authorize, /token,
    /// metadata, ...) are forwarded there so one origin serves MCP and OAuth.
    #[arg(long, env = ENV_AUTH_UPSTREAM, default_value = DEFAULT_AUTH_UPSTREAM)]
    pub auth_upstream: String,
}

/// A setting is out of range.
#[derive(Debug, thiserror::Error)]
#[error("invalid {setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

fn err(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let issuers: Vec<&String> = self.allowed_issuers.iter().filter(|s| !s.trim().is_empty()).collect();
        if issuers.is_empty() {
            return Err(err(ENV_ALLOWED_ISSUERS, "at least one issuer is required"));
        }
        for issuer in issuers {
            if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
                return Err(err(ENV_ALLOWED_ISSUERS, format!("{issuer:?} is not an http(s) URL")));
            }
        }
        if !(self.resource_identifier.starts_with("https://") || self.resource_identifier.starts_with("http://")) {
            return Err(err(ENV_RESOURCE_IDENTIFIER, "must be an http(s) URL"));
        }
        if self.resource_identifier.contains('#') {
            return Err(err(ENV_RESOURCE_IDENTIFIER, "must not contain a fragment"));
        }
        if self.max_body_bytes < 1024 {
            return Err(err(ENV_MAX_BODY_BYTES, "must be at least 1024"));
        }
        if self.sse_keepalive_secs == 0 {
            return Err(err(ENV_SSE_KEEPALIVE, "must be at least 1 second"));
        }
        if self.unauth_rate == 0 {
            return Err(err(ENV_UNAUTH_RATE, "must be at least 1"));
        }
        if self.max_inflight_per_principal == 0 {
            return Err(err(ENV_MAX_INFLIGHT_PER_PRINCIPAL, "must be at least 1"));
        }
        if self.max_inflight == 0 {
            return Err(err(ENV_MAX_INFLIGHT, "must be at least 1"));
        }
        if self.max_connections == 0 {
            return Err(err(ENV_MAX_CONNECTIONS, "must be at least 1"));
        }
        if self.max_streams == 0 {
            return Err(err(ENV_MAX_STREAMS, "must be at least 1"));
        }
        if self.sse_buffer_bytes < 64 * 1024 {
            return Err(err(ENV_SSE_BUFFER_BYTES, "must be at least 65536"));
        }
        if self.slow_reader_timeout_secs == 0 {
            return Err(err(ENV_SLOW_READER_TIMEOUT, "must be at least 1 second"));
        }
        if self.body_read_timeout_secs == 0 {
            return Err(err(ENV_BODY_READ_TIMEOUT, "must be at least 1 second"));
        }
        if let Err(e) = crate::limits::TrustedProxies::parse(&self.trusted_proxies) {
            return Err(err(ENV_TRUSTED_PROXIES, e));
        }
        if self.ack_timeout_ms == 0 {
            return Err(err(ENV_ACK_TIMEOUT_MS, "must be positive"));
        }
        if let Err(e) = proto::nats::check_url(&self.nats_url) {
            return Err(err(ENV_NATS_URL, e));
        }
        if let Err(e) = proto::nats::check_replicas(self.nats_replicas) {
            return Err(err(proto::nats::ENV_NATS_REPLICAS, e));
        }
        self.auth_upstream()?;
        Ok(())
    }

    /// The auth-service to forward OAuth paths to (`None`: forwarding is off),
    /// without a trailing slash.
    pub fn auth_upstream(&self) -> Result<Option<reqwest::Url>, ConfigError> {
        let raw = self.auth_upstream.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        let url = reqwest::Url::parse(raw).map_err(|e| err(ENV_AUTH_UPSTREAM, format!("{raw:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(err(ENV_AUTH_UPSTREAM, format!("{raw:?} is not an http(s) URL")));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(err(
                ENV_AUTH_UPSTREAM,
                "must not carry credentials, a query or a fragment",
            ));
        }
        Ok(Some(url))
    }

    /// `scheme://host[:port]` of the resource identifier.
    pub fn resource_origin(&self) -> String {
        let rest = self.resource_identifier.split_once("://");
        match rest {
            Some((scheme, rest)) => {
                let host = rest.split('/').next().unwrap_or(rest);
                format!("{scheme}://{host}")
            }
            None => self.resource_identifier.clone(),
        }
    }

    /// The path part of the resource identifier (`/mcp`).
    pub fn resource_path(&self) -> String {
        let origin = self.resource_origin();
        let path = self.resource_identifier.trim_start_matches(&origin);
        if path.is_empty() {
            "/".into()
        } else {
            path.trim_end_matches('/').to_owned()
        }
    }

    /// RFC 9728 metadata URL for this resource (path-suffixed form).
    pub fn resource_metadata_url(&self) -> String {
        let path = self.resource_path();
        let suffix = if path == "/" { String::new() } else { path };
        format!(
            "{}/.well-known/oauth-protected-resource{suffix}",
            self.resource_origin()
        )
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn sse_keepalive(&self) -> Duration {
        Duration::from_secs(self.sse_keepalive_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["gateway", "--allowed-issuers", "http://127.0.0.1:8790"];
        all.extend_from_slice(args);
        Config::parse_from(all)
    }

    #[test]
    fn metadata_url_follows_rfc9728_path_insertion() {
        let c = parse(&["--resource-identifier", "https://mcp.example.com/mcp"]);
        assert_eq!(c.resource_origin(), "https://mcp.example.com");
        assert_eq!(c.resource_path(), "/mcp");
        assert_eq!(
            c.resource_metadata_url(),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        let c = parse(&["--resource-identifier", "https://mcp.example.com"]);
        assert_eq!(
            c.resource_metadata_url(),
            "https://mcp.example.com/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn invalid_settings_name_the_setting() {
        let c = parse(&["--resource-identifier", "ftp://x"]);
        assert!(
            c.validate()
                .expect_err("bad")
                .to_string()
                .contains(ENV_RESOURCE_IDENTIFIER)
        );
        let c = parse(&["--max-body-bytes", "10"]);
        assert!(c.validate().expect_err("bad").to_string().contains(ENV_MAX_BODY_BYTES));
        let c = Config::parse_from(["gateway", "--allowed-issuers", "nope"]);
        assert!(c.validate().expect_err("bad").to_string().contains(ENV_ALLOWED_ISSUERS));
        assert!(parse(&[]).validate().is_ok());
    }

    #[test]
    fn auth_upstream_is_off_by_default_and_checked_when_set() {
        assert!(parse(&[]).auth_upstream().expect("default").is_none());
        assert!(
            parse(&["--auth-upstream", " "])
                .auth_upstream()
                .expect("blank")
                .is_none()
        );
        let c = parse(&["--auth-upstream", "http://127.0.0.1:8790"]);
        assert_eq!(
            c.auth_upstream().expect("ok").map(|u| u.to_string()),
            Some("http://127.0.0.1:8790/".into())
        );
        for bad in [
            "127.0.0.1:8790",
            "ftp://auth",
            "http://auth/?x=1",
            "http://u:p@auth",
            "nonsense",
        ] {
            let c = parse(&["--auth-upstream", bad]);
            assert!(
                c.validate().expect_err(bad).to_string().contains(ENV_AUTH_UPSTREAM),
                "{bad}"
            );
        }
    }
}
