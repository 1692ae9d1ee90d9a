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

pub const ENV_NATS_URL: &str = "NATS_URL";
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_RESOURCE_IDENTIFIER: &str = "http://localhost:8788/mcp";
pub const ENV_VAULT_KEYS: &str = "AUTH_VAULT_KEYS";
pub const ENV_COOKIE_KEY: &str = "COOKIE_ENCRYPTION_KEY";
pub const ENV_SCOPES: &str = "AUTH_SCOPES";
pub const DEFAULT_SCOPES: &str = "mcp";
pub const ENV_ACCESS_TTL: &str = "AUTH_ACCESS_TOKEN_TTL";
pub const DEFAULT_ACCESS_TTL: u64 = 900;
pub const ENV_REFRESH_GRACE: &str = "AUTH_REFRESH_GRACE";
pub const DEFAULT_REFRESH_GRACE: u64 = 30;
pub const ENV_CODE_TTL: &str = "AUTH_CODE_TTL";
pub const DEFAULT_CODE_TTL: u64 = 60;
pub const ENV_KEY_ROTATION: &str = "AUTH_KEY_ROTATION";
pub const DEFAULT_KEY_ROTATION: u64 = 7 * 24 * 3600;
/// Seconds a new signing key is published before it signs: above a replica's key
/// reload (30 s) plus a gateway's default JWKS cache lifetime (300 s).
pub const ENV_KEY_PUBLISH_LEAD: &str = "AUTH_KEY_PUBLISH_LEAD";
pub const DEFAULT_KEY_PUBLISH_LEAD: u64 = 360;
pub const ENV_TRUSTED_PROXIES: &str = "AUTH_TRUSTED_PROXIES";
pub const DEFAULT_TRUSTED_PROXIES: &str = "127.0.0.1,::1";
pub const ENV_CIMD_ALLOW_PRIVATE: &str = "AUTH_CIMD_ALLOW_PRIVATE";
pub const ENV_REGISTER_RATE: &str = "AUTH_REGISTER_RATE";
pub const DEFAULT_REGISTER_RATE: u32 = 20;
/// `/authorize` and `/login` requests per minute per client address.
pub const ENV_BROWSER_RATE: &str = "AUTH_BROWSER_RATE";
pub const DEFAULT_BROWSER_RATE: u32 = 600;
/// Password checks (argon2, ~20 MiB and tens of ms each) running at once.
pub const ENV_MAX_PASSWORD_CHECKS: &str = "AUTH_MAX_PASSWORD_CHECKS";
pub const DEFAULT_MAX_PASSWORD_CHECKS: usize = 4;
pub const ENV_DOWNSTREAM_AUDIENCE: &str = "API_IDENTIFIER";
pub const ENV_DOWNSTREAM_SCOPES: &str = "AUTH_DOWNSTREAM_SCOPES";
pub const DEFAULT_DOWNSTREAM_SCOPES: &str = "todo:read todo:write";
/// Size limit of each growing KV bucket (clients, grants, vault), bytes.
pub const ENV_STORE_MAX_BYTES: &str = "AUTH_STORE_MAX_BYTES";
/// JSON file of the operator's machine clients (see `crate::clients::machine`).
pub const ENV_MACHINE_CLIENTS_FILE: &str = "AUTH_MACHINE_CLIENTS_FILE";

/// Exit code for invalid configuration (`EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "auth-service",
    version,
    about = "mcp-cluster authorization server: OAuth 2.1 for MCP clients, OAuth/OIDC client of \
             the identity provider, token vault. State in NATS JetStream KV."
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
    MintToken(Box<MintArgs>),
    /// Print fresh random values for AUTH_VAULT_KEYS and COOKIE_ENCRYPTION_KEY, as
    /// shell assignments.
    GenKeys,
    /// Read a password on stdin and print its argon2id hash for the static-users file.
    HashPassword,
    /// Print a new machine client secret (stderr) and its AUTH_MACHINE_CLIENTS_FILE
    /// entry (stdout). Machine clients use client_credentials and, with
    /// --introspect, /introspect; registration can never create one.
    MachineClient(MachineClientArgs),
}

/// Arguments of `machine-client`.
#[derive(Debug, Clone, Args)]
pub struct MachineClientArgs {
    /// The client id (not starting with `c_`, the prefix of registered clients).
    #[arg(long)]
    pub id: String,
    /// Space-separated scopes it may ask for (default: all of AUTH_SCOPES).
    #[arg(long)]
    pub scope: Option<String>,
    /// Let it call /introspect (a resource server you run).
    #[arg(long, default_value_t = false)]
    pub introspect: bool,
    /// Only introspection: no client_credentials tokens.
    #[arg(long, default_value_t = false)]
    pub no_tokens: bool,
}

/// Settings of the server.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the public HTTP listener (metadata, JWKS, authorize, token, ...).
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Address of the admin listener (/healthz, /readyz, /metrics).
    #[arg(long, env = ENV_ADMIN_LISTEN, default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,
    /// This issuer's identifier, exactly as it appears in `iss` and in the gateways'
    /// ALLOWED_ISSUERS.
    #[arg(long, env = ENV_ISSUER_URL, default_value = DEFAULT_ISSUER_URL)]
    pub issuer_url: String,
    /// DEVELOPMENT ONLY: an Ed25519 PKCS#8 PEM key (created mode 0600 if missing) that
    /// is also published in the JWKS, so `mint-token` tokens verify. Empty: none.
    #[arg(long, env = ENV_DEV_KEY_FILE)]
    pub dev_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub oauth: OAuthArgs,
    #[command(flatten)]
    pub upstream: crate::upstream::UpstreamArgs,
}

/// Settings of the OAuth server (authorize, token, vault).
#[derive(Debug, Clone, Args)]
pub struct OAuthArgs {
    /// NATS server holding the state (JetStream KV) and serving vault requests.
    #[arg(long, env = ENV_NATS_URL, default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,
    /// The MCP resource tokens are issued for; `resource` in requests must name it.
    #[arg(long = "resource", env = ENV_RESOURCE_IDENTIFIER, default_value = DEFAULT_RESOURCE_IDENTIFIER)]
    pub resource_identifier: String,
    /// AEAD keys for secrets at rest: `id:base64url(32 bytes)[,id2:...]`, the first
    /// encrypts, all decrypt. Required.
    #[arg(long, env = ENV_VAULT_KEYS, default_value = "", hide_env_values = true)]
    pub vault_keys: String,
    /// HMAC key (at least 32 characters) for cookies and CSRF tokens. Required.
    #[arg(long, env = ENV_COOKIE_KEY, default_value = "", hide_env_values = true)]
    pub cookie_encryption_key: String,
    /// Space-separated scopes clients may request (all of them when none is asked).
    #[arg(long, env = ENV_SCOPES, default_value = DEFAULT_SCOPES)]
    pub scopes: String,
    /// Access token lifetime, seconds.
    #[arg(long, env = ENV_ACCESS_TTL, default_value_t = DEFAULT_ACCESS_TTL)]
    pub access_token_ttl: u64,
    /// Seconds a just-rotated refresh token still works (a lost token response).
    #[arg(long, env = ENV_REFRESH_GRACE, default_value_t = DEFAULT_REFRESH_GRACE)]
    pub refresh_grace: u64,
    /// Authorization code lifetime, seconds.
    #[arg(long, env = ENV_CODE_TTL, default_value_t = DEFAULT_CODE_TTL)]
    pub code_ttl: u64,
    /// Seconds between signing-key rotations (the previous key stays published).
    #[arg(long, env = ENV_KEY_ROTATION, default_value_t = DEFAULT_KEY_ROTATION)]
    pub key_rotation: u64,
    /// Seconds a new signing key is published in /jwks.json before tokens are signed
    /// with it (at least the gateways' JWKS_CACHE_TTL; less than AUTH_KEY_ROTATION).
    #[arg(long, env = ENV_KEY_PUBLISH_LEAD, default_value_t = DEFAULT_KEY_PUBLISH_LEAD)]
    pub key_publish_lead: u64,
    /// Comma-separated peer addresses or networks whose X-Forwarded-For is believed.
    #[arg(long, env = ENV_TRUSTED_PROXIES, default_value = DEFAULT_TRUSTED_PROXIES)]
    pub trusted_proxies: String,
    /// Let client metadata document URLs reach private and loopback addresses
    /// (tests only; SSRF guard off).
    #[arg(long, env = ENV_CIMD_ALLOW_PRIVATE, default_value_t = false)]
    pub cimd_allow_private: bool,
    /// Dynamic registrations per minute per source address.
    #[arg(long, env = ENV_REGISTER_RATE, default_value_t = DEFAULT_REGISTER_RATE)]
    pub register_rate: u32,
    /// The operator's machine clients (client_credentials, introspection); none when
    /// unset. See `auth-service machine-client`.
    #[arg(long, env = ENV_MACHINE_CLIENTS_FILE)]
    pub machine_clients_file: Option<PathBuf>,
    /// Most bytes each growing KV bucket (clients, grants, vault) may hold.
    #[arg(long, env = ENV_STORE_MAX_BYTES, default_value_t = crate::store::DEFAULT_STORE_MAX_BYTES)]
    pub store_max_bytes: i64,
    /// Servers of a JetStream cluster holding each bucket (3 on a three-node cluster).
    #[arg(long, env = proto::nats::ENV_NATS_REPLICAS, default_value_t = proto::nats::DEFAULT_NATS_REPLICAS)]
    pub nats_replicas: usize,
    /// Password checks (argon2) of the static-users login running at once; more get 503.
    #[arg(long, env = ENV_MAX_PASSWORD_CHECKS, default_value_t = DEFAULT_MAX_PASSWORD_CHECKS)]
    pub max_password_checks: usize,
    /// `/authorize` and `/login` requests per minute per client address; more get 429.
    #[arg(long, env = ENV_BROWSER_RATE, default_value_t = DEFAULT_BROWSER_RATE)]
    pub browser_rate: u32,
    /// The downstream API's audience (the seeds' `API_IDENTIFIER`). With the
    /// static-users provider the vault issues tokens for it itself.
    #[arg(long = "downstream-audience", env = ENV_DOWNSTREAM_AUDIENCE)]
    pub downstream_audience: Option<String>,
    /// Scopes of those downstream tokens.
    #[arg(long, env = ENV_DOWNSTREAM_SCOPES, default_value = DEFAULT_DOWNSTREAM_SCOPES)]
    pub downstream_scopes: String,
}

/// The OAuth server's checked settings.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub nats_url: String,
    pub resource: String,
    pub sealer: crate::crypto::Sealer,
    pub signer: crate::crypto::Signer,
    pub scopes: Vec<String>,
    pub access_ttl: std::time::Duration,
    pub refresh_grace: std::time::Duration,
    pub code_ttl: std::time::Duration,
    pub key_rotation: std::time::Duration,
    pub key_publish_lead: std::time::Duration,
    pub trusted_proxies: crate::net::TrustedProxies,
    pub cimd_allow_private: bool,
    pub register_rate: u32,
    pub machine_clients: crate::clients::machine::MachineClients,
    pub store_max_bytes: i64,
    pub nats_replicas: usize,
    pub max_password_checks: usize,
    pub browser_rate: u32,
    /// Downstream tokens the vault issues for static users (`API_IDENTIFIER`).
    pub downstream: Option<crate::vault::Downstream>,
}

impl OAuthArgs {
    /// The defaults, on `nats_url`, with fresh random vault and cookie keys: a server
    /// for tests or embedding whose sealed state and cookies die with it.
    pub fn ephemeral(nats_url: &str) -> Self {
        let random = || crate::crypto::Sealer::generate_entry("k1");
        Self {
            nats_url: nats_url.to_owned(),
            resource_identifier: DEFAULT_RESOURCE_IDENTIFIER.into(),
            vault_keys: random(),
            cookie_encryption_key: random(),
            scopes: DEFAULT_SCOPES.into(),
            access_token_ttl: DEFAULT_ACCESS_TTL,
            refresh_grace: DEFAULT_REFRESH_GRACE,
            code_ttl: DEFAULT_CODE_TTL,
            key_rotation: DEFAULT_KEY_ROTATION,
            key_publish_lead: DEFAULT_KEY_PUBLISH_LEAD,
            trusted_proxies: DEFAULT_TRUSTED_PROXIES.into(),
            cimd_allow_private: false,
            register_rate: DEFAULT_REGISTER_RATE,
            machine_clients_file: None,
            store_max_bytes: crate::store::DEFAULT_STORE_MAX_BYTES,
            nats_replicas: proto::nats::DEFAULT_NATS_REPLICAS,
            max_password_checks: DEFAULT_MAX_PASSWORD_CHECKS,
            browser_rate: DEFAULT_BROWSER_RATE,
            downstream_audience: None,
            downstream_scopes: DEFAULT_DOWNSTREAM_SCOPES.into(),
        }
    }

    pub fn into_config(self) -> Result<OAuthConfig, ConfigError> {
        use std::time::Duration;
        let nats_url = self.nats_url.trim().to_owned();
        if let Err(e) = proto::nats::check_url(&nats_url) {
            return Err(ConfigError::new(ENV_NATS_URL, e));
        }
        if let Err(e) = proto::nats::check_replicas(self.nats_replicas) {
            return Err(ConfigError::new(proto::nats::ENV_NATS_REPLICAS, e));
        }
        let resource = self.resource_identifier.trim().to_owned();
        match reqwest::Url::parse(&resource) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.fragment().is_none() => {}
            _ => {
                return Err(ConfigError::new(
                    ENV_RESOURCE_IDENTIFIER,
                    "must be an http(s) URL without a fragment",
                ));
            }
        }
        if self.vault_keys.trim().is_empty() {
            return Err(ConfigError::new(
                ENV_VAULT_KEYS,
                "is required (id:base64url of 32 random bytes; e.g. `auth-service gen-keys`)",
            ));
        }
        let sealer = crate::crypto::Sealer::from_list(&self.vault_keys)
            .map_err(|e| ConfigError::new(ENV_VAULT_KEYS, e.to_string()))?;
        let signer = crate::crypto::Signer::new(&self.cookie_encryption_key)
            .map_err(|_| ConfigError::new(ENV_COOKIE_KEY, "is required: at least 32 characters"))?;
        let scopes: Vec<String> = self.scopes.split_whitespace().map(str::to_owned).collect();
        if scopes
            .iter()
            .any(|s| !s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'))
        {
            return Err(ConfigError::new(
                ENV_SCOPES,
                "scopes must be printable ASCII without quotes",
            ));
        }
        let positive = |setting: &'static str, v: u64| {
            if v == 0 {
                Err(ConfigError::new(setting, "must be greater than 0"))
            } else {
                Ok(Duration::from_secs(v))
            }
        };
        let access_ttl = positive(ENV_ACCESS_TTL, self.access_token_ttl)?;
        if access_ttl > Duration::from_secs(proto::auth::REVOCATION_MAX_AGE_SECS) {
            return Err(ConfigError::new(
                ENV_ACCESS_TTL,
                "must be at most 86400 (revocations are kept 24 h)",
            ));
        }
        let code_ttl = positive(ENV_CODE_TTL, self.code_ttl)?;
        if code_ttl > crate::store::CODE_MAX_AGE {
            return Err(ConfigError::new(ENV_CODE_TTL, "must be at most 600"));
        }
        let key_rotation = positive(ENV_KEY_ROTATION, self.key_rotation)?;
        if self.key_publish_lead >= self.key_rotation {
            return Err(ConfigError::new(
                ENV_KEY_PUBLISH_LEAD,
                "must be less than AUTH_KEY_ROTATION",
            ));
        }
        let key_publish_lead = std::time::Duration::from_secs(self.key_publish_lead);
        let trusted_proxies = crate::net::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| ConfigError::new(ENV_TRUSTED_PROXIES, e.to_string()))?;
        if self.register_rate == 0 {
            return Err(ConfigError::new(ENV_REGISTER_RATE, "must be greater than 0"));
        }
        if self.browser_rate == 0 {
            return Err(ConfigError::new(ENV_BROWSER_RATE, "must be greater than 0"));
        }
        if self.max_password_checks == 0 {
            return Err(ConfigError::new(ENV_MAX_PASSWORD_CHECKS, "must be at least 1"));
        }
        if self.store_max_bytes < 1024 * 1024 {
            return Err(ConfigError::new(ENV_STORE_MAX_BYTES, "must be at least 1048576"));
        }
        let machine_clients = match self
            .machine_clients_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            None => crate::clients::machine::MachineClients::default(),
            Some(path) => crate::clients::machine::MachineClients::load(path, &scopes)
                .map_err(|e| ConfigError::new(ENV_MACHINE_CLIENTS_FILE, e))?,
        };
        let downstream = match self
            .downstream_audience
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            None => None,
            Some(audience) => {
                match reqwest::Url::parse(audience) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.fragment().is_none() => {}
                    _ => {
                        return Err(ConfigError::new(
                            ENV_DOWNSTREAM_AUDIENCE,
                            "must be an http(s) URL without a fragment",
                        ));
                    }
                }
                Some(crate::vault::Downstream {
                    audience: audience.to_owned(),
                    scopes: self.downstream_scopes.split_whitespace().map(str::to_owned).collect(),
                })
            }
        };
        Ok(OAuthConfig {
            nats_url,
            resource,
            sealer,
            signer,
            scopes,
            access_ttl,
            refresh_grace: Duration::from_secs(self.refresh_grace),
            code_ttl,
            key_rotation,
            key_publish_lead,
            trusted_proxies,
            cimd_allow_private: self.cimd_allow_private,
            register_rate: self.register_rate,
            machine_clients,
            store_max_bytes: self.store_max_bytes,
            nats_replicas: self.nats_replicas,
            max_password_checks: self.max_password_checks,
            browser_rate: self.browser_rate,
            downstream,
        })
    }
}

/// Arguments of `mint-token` (development only).
#[derive(Debug, Clone, Args)]
pub struct MintArgs {
    /// The development signing key (Ed25519 PKCS#8 PEM) the server publishes. Must exist.
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
    /// Empty: no development key.
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
    /// The listener/issuer part and the OAuth server part.
    pub fn into_configs(self) -> Result<(Config, OAuthConfig), ConfigError> {
        let oauth = self.oauth.clone().into_config()?;
        Ok((self.into_config()?, oauth))
    }

    pub fn into_config(self) -> Result<Config, ConfigError> {
        let addr = |setting: &'static str, value: &str| {
            value
                .trim()
                .parse::<SocketAddr>()
                .map_err(|_| ConfigError::new(setting, format!("'{value}' is not an ip:port address")))
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
        Ok(Config {
            listen,
            admin_listen,
            issuer,
            dev_key_file: self.dev_key_file.unwrap_or_default(),
        })
    }
}

/// An issuer identifier (RFC 8414 §2): an http(s) URL with no query or fragment.
/// Returned verbatim (not re-serialised: `http://h` must not become `http://h/`).
pub fn check_issuer(setting: &'static str, value: &str) -> Result<String, ConfigError> {
    let url =
        reqwest::Url::parse(value).map_err(|e| ConfigError::new(setting, format!("'{value}' is not a url ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::new(setting, "scheme must be http or https"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(setting, "must not have a query or fragment"));
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
            dev_key_file: Some(DEFAULT_DEV_KEY_FILE.into()),
            oauth: oauth_args(),
            upstream: crate::upstream::UpstreamArgs::default(),
        }
    }

    fn oauth_args() -> OAuthArgs {
        OAuthArgs::ephemeral(DEFAULT_NATS_URL)
    }

    #[test]
    fn oauth_errors_name_the_setting() {
        let (_, o) = args().into_configs().unwrap();
        assert_eq!(o.scopes, vec!["mcp"]);
        assert_eq!(o.trusted_proxies.0.len(), 2);
        type Edit = Box<dyn Fn(&mut OAuthArgs)>;
        let cases: Vec<(&str, Edit)> = vec![
            (ENV_NATS_URL, Box::new(|a| a.nats_url = "http://x".into())),
            (
                ENV_RESOURCE_IDENTIFIER,
                Box::new(|a| a.resource_identifier = "nope".into()),
            ),
            (ENV_VAULT_KEYS, Box::new(|a| a.vault_keys = String::new())),
            (ENV_VAULT_KEYS, Box::new(|a| a.vault_keys = "k1:short".into())),
            (ENV_COOKIE_KEY, Box::new(|a| a.cookie_encryption_key = "short".into())),
            (ENV_ACCESS_TTL, Box::new(|a| a.access_token_ttl = 0)),
            (ENV_ACCESS_TTL, Box::new(|a| a.access_token_ttl = 100_000)),
            (ENV_CODE_TTL, Box::new(|a| a.code_ttl = 3600)),
            (
                ENV_TRUSTED_PROXIES,
                Box::new(|a| a.trusted_proxies = "10.0.0.0/8,nope".into()),
            ),
            (ENV_REGISTER_RATE, Box::new(|a| a.register_rate = 0)),
            (ENV_KEY_PUBLISH_LEAD, Box::new(|a| a.key_publish_lead = a.key_rotation)),
            (ENV_STORE_MAX_BYTES, Box::new(|a| a.store_max_bytes = 1000)),
            (ENV_MAX_PASSWORD_CHECKS, Box::new(|a| a.max_password_checks = 0)),
            (ENV_BROWSER_RATE, Box::new(|a| a.browser_rate = 0)),
            (
                ENV_MACHINE_CLIENTS_FILE,
                Box::new(|a| a.machine_clients_file = Some("/nonexistent/machines.json".into())),
            ),
        ];
        for (setting, edit) in cases {
            let mut a = oauth_args();
            edit(&mut a);
            let err = a.into_config().unwrap_err();
            assert_eq!(err.setting, setting);
            assert!(!err.to_string().contains("0123456789abcdef"), "no secrets in errors");
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
