//! Command line and environment. Every setting has an `ENV_*` name and a `DEFAULT_*`
//! value beside it; `--help` shows both. [`ServeArgs::into_config`] turns the raw
//! strings into a checked [`Config`], or a [`ConfigError`] that names the setting.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub const ENV_LISTEN: &str = "AUTH_LISTEN";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8790";
pub const ENV_ADMIN_LISTEN: &str = "AUTH_ADMIN_LISTEN";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9791";
pub const ENV_ISSUER_URL: &str = "AUTH_ISSUER_URL";
pub const DEFAULT_ISSUER_URL: &str = "http://127.0.0.1:8790";
pub const ENV_DEV_KEY_FILE: &str = "AUTH_DEV_KEY_FILE";
pub const DEFAULT_DEV_KEY_FILE: &str = ".run/dev-issuer-ed25519.pem";
/// The resource a minted token is for (the gateway's `RESOURCE_IDENTIFIER`).
pub const ENV_RESOURCE_IDENTIFIER: &str = "RESOURCE_IDENTIFIER";
/// Lifetime of a minted token, seconds.
pub const DEFAULT_MINT_TTL: i64 = 3600;

/// Exit code for invalid configuration (`EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "auth-service",
    version,
    about = "mcp-cluster authorization server. For now: the local DEVELOPMENT issuer \
             (OAuth/OIDC discovery and a JWKS for a file-based Ed25519 key)."
)]
pub struct Cli {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// DEVELOPMENT ONLY: print a signed EdDSA access token (RFC 9068) made with the dev
    /// issuer key. Anyone holding that key file can mint tokens for any user; never use
    /// it for a real deployment.
    MintToken(MintArgs),
}

/// Settings of the server.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the public HTTP listener (discovery, JWKS).
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Address of the admin listener (/healthz, /readyz, /metrics).
    #[arg(long, env = ENV_ADMIN_LISTEN, default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,
    /// This issuer's identifier, exactly as it appears in `iss` and in the gateways'
    /// ALLOWED_ISSUERS.
    #[arg(long, env = ENV_ISSUER_URL, default_value = DEFAULT_ISSUER_URL)]
    pub issuer_url: String,
    /// Ed25519 PKCS#8 PEM signing key of the DEVELOPMENT issuer; created (mode 0600)
    /// if missing.
    #[arg(long, env = ENV_DEV_KEY_FILE, default_value = DEFAULT_DEV_KEY_FILE)]
    pub dev_key_file: PathBuf,
}

/// Arguments of `mint-token` (development only).
#[derive(Debug, Clone, Args)]
pub struct MintArgs {
    /// The dev issuer's private key (Ed25519 PKCS#8 PEM). Must exist.
    #[arg(long, env = ENV_DEV_KEY_FILE, default_value = DEFAULT_DEV_KEY_FILE)]
    pub key_file: PathBuf,
    /// `iss` of the token.
    #[arg(long, env = ENV_ISSUER_URL, default_value = DEFAULT_ISSUER_URL)]
    pub issuer: String,
    /// `aud` of the token: the MCP resource URL.
    #[arg(long, env = ENV_RESOURCE_IDENTIFIER)]
    pub audience: String,
    /// `sub` of the token.
    #[arg(long)]
    pub sub: String,
    #[arg(long)]
    pub email: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// Space-separated OAuth scopes (`scope` claim).
    #[arg(long)]
    pub scope: Option<String>,
    /// A permission for the `permissions` claim; repeat for more.
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// Lifetime in seconds; negative gives an already-expired token.
    #[arg(long, default_value_t = DEFAULT_MINT_TTL, allow_negative_numbers = true)]
    pub ttl: i64,
    /// Set `nbf` to now plus this many seconds (may be negative).
    #[arg(long, allow_negative_numbers = true)]
    pub nbf_offset: Option<i64>,
    /// `kid` header; defaults to the key's RFC 7638 thumbprint (what /jwks.json serves).
    #[arg(long)]
    pub kid: Option<String>,
}

/// The server's checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Verbatim: `iss` is compared as an exact string.
    pub issuer: String,
    pub dev_key_file: PathBuf,
}

/// A setting has a value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }
}

impl ServeArgs {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let addr = |setting: &'static str, value: &str| {
            value.trim().parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(setting, format!("'{value}' is not an ip:port address"))
            })
        };
        let listen = addr(ENV_LISTEN, &self.listen)?;
        let admin_listen = addr(ENV_ADMIN_LISTEN, &self.admin_listen)?;
        if listen == admin_listen && listen.port() != 0 {
            return Err(ConfigError::new(
                ENV_ADMIN_LISTEN,
                format!("must differ from {ENV_LISTEN}"),
            ));
        }
        let issuer = check_issuer(ENV_ISSUER_URL, &self.issuer_url)?;
        if self.dev_key_file.as_os_str().is_empty() {
            return Err(ConfigError::new(ENV_DEV_KEY_FILE, "must not be empty"));
        }
        Ok(Config {
            listen,
            admin_listen,
            issuer,
            dev_key_file: self.dev_key_file,
        })
    }
}

/// An issuer identifier (RFC 8414 §2): an http(s) URL with no query or fragment.
/// Returned verbatim (not re-serialised: `http://h` must not become `http://h/`).
pub fn check_issuer(setting: &'static str, value: &str) -> Result<String, ConfigError> {
    let url = reqwest::Url::parse(value)
        .map_err(|e| ConfigError::new(setting, format!("'{value}' is not a url ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::new(setting, "scheme must be http or https"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(
            setting,
            "must not have a query or fragment",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(setting, "must have a host"));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            listen: DEFAULT_LISTEN.into(),
            admin_listen: DEFAULT_ADMIN_LISTEN.into(),
            issuer_url: DEFAULT_ISSUER_URL.into(),
            dev_key_file: DEFAULT_DEV_KEY_FILE.into(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = args().into_config().unwrap();
        assert_eq!(c.issuer, "http://127.0.0.1:8790");
        assert_eq!(c.listen.port(), 8790);
        assert_eq!(c.admin_listen.port(), 9791);
    }

    #[test]
    fn errors_name_the_setting() {
        let mut a = args();
        a.listen = "nope".into();
        assert_eq!(a.into_config().unwrap_err().setting, ENV_LISTEN);
        let mut a = args();
        a.admin_listen = DEFAULT_LISTEN.into();
        assert_eq!(a.into_config().unwrap_err().setting, ENV_ADMIN_LISTEN);
        for bad in ["ftp://x", "http://x/?q=1", "http://x/#f", "not a url"] {
            let mut a = args();
            a.issuer_url = bad.into();
            let err = a.into_config().unwrap_err();
            assert_eq!(err.setting, ENV_ISSUER_URL, "{bad}");
            assert!(err.to_string().starts_with("invalid AUTH_ISSUER_URL: "));
        }
        let mut a = args();
        a.dev_key_file = PathBuf::new();
        assert_eq!(a.into_config().unwrap_err().setting, ENV_DEV_KEY_FILE);
    }

    #[test]
    fn mint_token_accepts_negative_ttl() {
        let cli = Cli::try_parse_from([
            "auth-service",
            "mint-token",
            "--audience",
            "http://localhost:8788/mcp",
            "--sub",
            "alice",
            "--ttl",
            "-120",
            "--nbf-offset",
            "-5",
            "--permission",
            "a",
            "--permission",
            "b",
        ])
        .unwrap();
        let Some(Command::MintToken(m)) = cli.command else {
            panic!("no subcommand")
        };
        assert_eq!(m.ttl, -120);
        assert_eq!(m.nbf_offset, Some(-5));
        assert_eq!(m.permissions, vec!["a", "b"]);
    }
}
