//! The Todo API's settings: one struct, built in `main` (or by a test), passed down.

use std::net::SocketAddr;

pub const ENV_LISTEN: &str = "TODO_API_LISTEN";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8791";
pub const ENV_API_IDENTIFIER: &str = "API_IDENTIFIER";
/// This API's URL as a resource identifier (RFC 8707): what `aud` must contain.
pub const DEFAULT_API_IDENTIFIER: &str = "http://localhost:8791/todos";
pub const ENV_ISSUERS: &str = "TODO_API_ISSUERS";
/// The local auth-service.
pub const DEFAULT_ISSUERS: &str = "http://127.0.0.1:8790";
pub const ENV_NATS_URL: &str = "NATS_URL";
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const ENV_MAX_BYTES: &str = "TODO_API_MAX_BYTES";
pub const DEFAULT_MAX_BYTES: i64 = 64 * 1024 * 1024;
pub const ENV_MAX_PER_USER: &str = "TODO_API_MAX_PER_USER";
pub const DEFAULT_MAX_PER_USER: usize = 500;

/// Todo API settings (`--help` lists every default).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "todo-api", version, about = "Example downstream Todo API for mcp-cluster")]
pub struct Config {
    /// HTTP address (port 0 picks a free one).
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// This API's identifier: the audience every access token must name in `aud`.
    #[arg(long, env = ENV_API_IDENTIFIER, default_value = DEFAULT_API_IDENTIFIER)]
    pub api_identifier: String,
    /// Comma-separated issuers whose access tokens are accepted (keys found by discovery).
    #[arg(long, env = ENV_ISSUERS, value_delimiter = ',', default_value = DEFAULT_ISSUERS)]
    pub issuers: Vec<String>,
    /// NATS server URL (JetStream must be enabled).
    #[arg(long, env = ENV_NATS_URL, default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,
    /// Largest size of the `todo_items` bucket, in bytes; a full bucket refuses new writes.
    #[arg(long, env = ENV_MAX_BYTES, default_value_t = DEFAULT_MAX_BYTES)]
    pub max_bytes: i64,
    /// Most todos one user may keep.
    #[arg(long, env = ENV_MAX_PER_USER, default_value_t = DEFAULT_MAX_PER_USER)]
    pub max_per_user: usize,
}

/// An invalid setting: `<ENV>: <problem>`, on one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

fn err(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
}

impl Config {
    /// Settings for a test: listen on a free loopback port, this NATS, these issuers.
    pub fn for_test(nats_url: &str, issuers: Vec<String>, api_identifier: &str) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_identifier: api_identifier.to_owned(),
            issuers,
            nats_url: nats_url.to_owned(),
            max_bytes: DEFAULT_MAX_BYTES,
            max_per_user: DEFAULT_MAX_PER_USER,
        }
    }

    /// The issuers, trimmed, empty entries dropped.
    pub fn allowed_issuers(&self) -> Vec<String> {
        self.issuers
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Check what clap cannot; the error names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let issuers = self.allowed_issuers();
        if issuers.is_empty() {
            return Err(err(ENV_ISSUERS, "at least one issuer is required"));
        }
        for issuer in &issuers {
            // Also keeps `#` out of issuers, so `iss#sub` names one user.
            if jwt_verify::discovery_urls(issuer).is_err() {
                return Err(err(
                    ENV_ISSUERS,
                    format!("{issuer:?} is not an http(s) URL without query or fragment"),
                ));
            }
        }
        let id = self.api_identifier.trim();
        if id.is_empty() || id != self.api_identifier {
            return Err(err(ENV_API_IDENTIFIER, "must be non-empty, without surrounding spaces"));
        }
        if self.max_bytes < 1024 * 1024 {
            return Err(err(ENV_MAX_BYTES, "must be at least 1048576 (1 MiB)"));
        }
        if self.max_per_user == 0 {
            return Err(err(ENV_MAX_PER_USER, "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::try_parse_from(["todo-api"]).unwrap();
        assert_eq!(c.listen.port(), 8791);
        assert_eq!(c.issuers, vec![DEFAULT_ISSUERS]);
        assert_eq!(c.max_per_user, 500);
        assert_eq!(c.max_bytes, 64 * 1024 * 1024);
        c.validate().unwrap();
    }

    #[test]
    fn bad_settings_are_named() {
        let base = Config::try_parse_from(["todo-api", "--issuers", "https://a, https://b/t,"]).unwrap();
        assert_eq!(base.allowed_issuers(), vec!["https://a", "https://b/t"]);
        for (args, setting) in [
            (vec!["--issuers", ","], ENV_ISSUERS),
            (vec!["--issuers", "https://a#x"], ENV_ISSUERS),
            (vec!["--issuers", "ftp://a"], ENV_ISSUERS),
            (vec!["--api-identifier", ""], ENV_API_IDENTIFIER),
            (vec!["--max-bytes", "1000"], ENV_MAX_BYTES),
            (vec!["--max-per-user", "0"], ENV_MAX_PER_USER),
        ] {
            let c = Config::try_parse_from(std::iter::once("todo-api").chain(args.iter().copied())).unwrap();
            assert_eq!(c.validate().unwrap_err().setting, setting, "{args:?}");
        }
    }
}
