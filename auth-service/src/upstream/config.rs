//! Settings of the upstream identity provider, and [`UpstreamArgs::build`], which
//! checks them and makes the [`Upstream`] without touching the network (OIDC
//! discovery happens at the first login).
//!
//! Variable names follow the seeds where an operator would expect them:
//! Cloudflare's remote-mcp-authkit (`WORKOS_*`), remote-mcp-cf-access (`ACCESS_*`),
//! the PingOne MCP template (`PINGONE_ISSUER`, `MCP_SERVER_CLIENT_*`, `API_IDENTIFIER`).
//!
//! Rules: a missing variable the chosen provider needs is an error naming it; the
//! static provider refuses to start while another provider's client or issuer
//! variables are set (a half-finished switch to a real provider must not silently
//! keep the development users); `AUTH_STATIC_USERS_FILE` is ignored by the others.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use jwt_verify::IssuerRule;
use oauth2::{ClientId, ClientSecret};
use reqwest::Url;

use super::Upstream;
use super::claims::ClaimMapping;
use super::github::{self, GitHubProvider};
use super::http::{TokenHttp, url_problem};
use super::oauth::{ClientAuth, ClientCredentials};
use super::oidc::{Dialect, Endpoints, OidcProvider, OidcSettings, Preset, Resolved};
use super::static_users::StaticUsers;
use crate::config::{ConfigError, check_issuer};

pub const ENV_UPSTREAM: &str = "AUTH_UPSTREAM";
pub const DEFAULT_UPSTREAM: &str = "static";
pub const ENV_STATIC_USERS_FILE: &str = "AUTH_STATIC_USERS_FILE";
pub const DEFAULT_STATIC_USERS_FILE: &str = "deploy/local/static-users.json";

pub const ENV_OIDC_ISSUER: &str = "OIDC_ISSUER";
pub const ENV_OIDC_CLIENT_ID: &str = "OIDC_CLIENT_ID";
pub const ENV_OIDC_CLIENT_SECRET: &str = "OIDC_CLIENT_SECRET";
pub const ENV_OIDC_SCOPES: &str = "OIDC_SCOPES";
pub const DEFAULT_OIDC_SCOPES: &str = "openid email profile";
pub const ENV_OIDC_PERMISSIONS_CLAIM: &str = "OIDC_PERMISSIONS_CLAIM";
pub const DEFAULT_OIDC_PERMISSIONS_CLAIM: &str = "permissions";

pub const ENV_WORKOS_CLIENT_ID: &str = "WORKOS_CLIENT_ID";
pub const ENV_WORKOS_CLIENT_SECRET: &str = "WORKOS_CLIENT_SECRET";
pub const ENV_WORKOS_API_URL: &str = "WORKOS_API_URL";
pub const DEFAULT_WORKOS_API_URL: &str = "https://api.workos.com";

pub const ENV_ACCESS_CLIENT_ID: &str = "ACCESS_CLIENT_ID";
pub const ENV_ACCESS_CLIENT_SECRET: &str = "ACCESS_CLIENT_SECRET";
pub const ENV_ACCESS_TOKEN_URL: &str = "ACCESS_TOKEN_URL";
pub const ENV_ACCESS_AUTHORIZATION_URL: &str = "ACCESS_AUTHORIZATION_URL";
pub const ENV_ACCESS_JWKS_URL: &str = "ACCESS_JWKS_URL";

pub const ENV_PINGONE_ISSUER: &str = "PINGONE_ISSUER";
pub const ENV_PINGONE_CLIENT_ID: &str = "MCP_SERVER_CLIENT_ID";
pub const ENV_PINGONE_CLIENT_SECRET: &str = "MCP_SERVER_CLIENT_SECRET";
pub const ENV_PINGONE_API_IDENTIFIER: &str = "API_IDENTIFIER";

pub const ENV_ENTRA_TENANT_ID: &str = "ENTRA_TENANT_ID";
pub const ENV_ENTRA_CLIENT_ID: &str = "ENTRA_CLIENT_ID";
pub const ENV_ENTRA_CLIENT_SECRET: &str = "ENTRA_CLIENT_SECRET";
/// Entra's v2.0 issuer for a tenant.
pub const ENTRA_AUTHORITY: &str = "https://login.microsoftonline.com";

pub const ENV_GITHUB_CLIENT_ID: &str = "GITHUB_CLIENT_ID";
pub const ENV_GITHUB_CLIENT_SECRET: &str = "GITHUB_CLIENT_SECRET";
pub const ENV_GITHUB_OAUTH_URL: &str = "GITHUB_OAUTH_URL";
pub const ENV_GITHUB_API_URL: &str = "GITHUB_API_URL";

/// Every `AUTH_UPSTREAM` value.
pub const KINDS: [&str; 7] = [
    "static",
    "oidc",
    "workos",
    "cloudflare-access",
    "pingone",
    "entra",
    "github",
];

/// Upstream identity provider settings (flattened into the server's arguments).
#[derive(Clone, Args)]
pub struct UpstreamArgs {
    /// Identity provider: static, oidc, workos, cloudflare-access, pingone, entra, github.
    #[arg(long, env = ENV_UPSTREAM, default_value = DEFAULT_UPSTREAM)]
    pub upstream: String,
    /// Users of the static provider (JSON, argon2id hashes). Ignored by other providers.
    #[arg(long, env = ENV_STATIC_USERS_FILE, default_value = DEFAULT_STATIC_USERS_FILE)]
    pub static_users_file: PathBuf,

    /// Generic OIDC: issuer URL; discovery at {issuer}/.well-known/openid-configuration.
    #[arg(long, env = ENV_OIDC_ISSUER)]
    pub oidc_issuer: Option<String>,
    #[arg(long, env = ENV_OIDC_CLIENT_ID)]
    pub oidc_client_id: Option<String>,
    #[arg(long, env = ENV_OIDC_CLIENT_SECRET, hide_env_values = true)]
    pub oidc_client_secret: Option<String>,
    /// Scopes asked of the OIDC provider (must include openid).
    #[arg(long, env = ENV_OIDC_SCOPES, default_value = DEFAULT_OIDC_SCOPES)]
    pub oidc_scopes: String,
    /// ID-token claim holding permissions (oidc, pingone, cloudflare-access); a dotted
    /// name walks into objects (realm_access.roles).
    #[arg(long, env = ENV_OIDC_PERMISSIONS_CLAIM, default_value = DEFAULT_OIDC_PERMISSIONS_CLAIM)]
    pub oidc_permissions_claim: String,

    /// WorkOS AuthKit client id (client_...).
    #[arg(long, env = ENV_WORKOS_CLIENT_ID)]
    pub workos_client_id: Option<String>,
    /// WorkOS API key (sk_...), the client secret of the User Management API.
    #[arg(long, env = ENV_WORKOS_CLIENT_SECRET, hide_env_values = true)]
    pub workos_client_secret: Option<String>,
    /// WorkOS API base URL.
    #[arg(long, env = ENV_WORKOS_API_URL, default_value = DEFAULT_WORKOS_API_URL)]
    pub workos_api_url: String,

    /// Cloudflare Access for SaaS (OIDC) application client id.
    #[arg(long, env = ENV_ACCESS_CLIENT_ID)]
    pub access_client_id: Option<String>,
    #[arg(long, env = ENV_ACCESS_CLIENT_SECRET, hide_env_values = true)]
    pub access_client_secret: Option<String>,
    /// https://<team>.cloudflareaccess.com/cdn-cgi/access/sso/oidc/<client-id>/token
    #[arg(long, env = ENV_ACCESS_TOKEN_URL)]
    pub access_token_url: Option<String>,
    /// .../authorization on the same team domain.
    #[arg(long, env = ENV_ACCESS_AUTHORIZATION_URL)]
    pub access_authorization_url: Option<String>,
    /// .../jwks on the same team domain.
    #[arg(long, env = ENV_ACCESS_JWKS_URL)]
    pub access_jwks_url: Option<String>,

    /// PingOne issuer: https://auth.pingone.com/<environment-id>/as
    #[arg(long, env = ENV_PINGONE_ISSUER)]
    pub pingone_issuer: Option<String>,
    #[arg(long, env = ENV_PINGONE_CLIENT_ID)]
    pub pingone_client_id: Option<String>,
    #[arg(long, env = ENV_PINGONE_CLIENT_SECRET, hide_env_values = true)]
    pub pingone_client_secret: Option<String>,
    /// PingOne custom resource (audience); sent as `resource` when set.
    #[arg(long, env = ENV_PINGONE_API_IDENTIFIER)]
    pub pingone_api_identifier: Option<String>,

    /// Microsoft Entra ID tenant (directory) id, a GUID.
    #[arg(long, env = ENV_ENTRA_TENANT_ID)]
    pub entra_tenant_id: Option<String>,
    #[arg(long, env = ENV_ENTRA_CLIENT_ID)]
    pub entra_client_id: Option<String>,
    #[arg(long, env = ENV_ENTRA_CLIENT_SECRET, hide_env_values = true)]
    pub entra_client_secret: Option<String>,

    /// GitHub OAuth App (or GitHub App) client id.
    #[arg(long, env = ENV_GITHUB_CLIENT_ID)]
    pub github_client_id: Option<String>,
    #[arg(long, env = ENV_GITHUB_CLIENT_SECRET, hide_env_values = true)]
    pub github_client_secret: Option<String>,
    /// Base of /login/oauth/* (GitHub Enterprise Server: https://<host>).
    #[arg(long, env = ENV_GITHUB_OAUTH_URL, default_value = github::DEFAULT_OAUTH_URL)]
    pub github_oauth_url: String,
    /// REST API base (GitHub Enterprise Server: https://<host>/api/v3).
    #[arg(long, env = ENV_GITHUB_API_URL, default_value = github::DEFAULT_API_URL)]
    pub github_api_url: String,
}

impl Default for UpstreamArgs {
    /// The defaults, with nothing from the environment.
    fn default() -> Self {
        Self {
            upstream: DEFAULT_UPSTREAM.into(),
            static_users_file: DEFAULT_STATIC_USERS_FILE.into(),
            oidc_issuer: None,
            oidc_client_id: None,
            oidc_client_secret: None,
            oidc_scopes: DEFAULT_OIDC_SCOPES.into(),
            oidc_permissions_claim: DEFAULT_OIDC_PERMISSIONS_CLAIM.into(),
            workos_client_id: None,
            workos_client_secret: None,
            workos_api_url: DEFAULT_WORKOS_API_URL.into(),
            access_client_id: None,
            access_client_secret: None,
            access_token_url: None,
            access_authorization_url: None,
            access_jwks_url: None,
            pingone_issuer: None,
            pingone_client_id: None,
            pingone_client_secret: None,
            pingone_api_identifier: None,
            entra_tenant_id: None,
            entra_client_id: None,
            entra_client_secret: None,
            github_client_id: None,
            github_client_secret: None,
            github_oauth_url: github::DEFAULT_OAUTH_URL.into(),
            github_api_url: github::DEFAULT_API_URL.into(),
        }
    }
}

impl std::fmt::Debug for UpstreamArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("UpstreamArgs")
            .field("upstream", &self.upstream)
            .field("static_users_file", &self.static_users_file)
            .field("oidc_issuer", &self.oidc_issuer)
            .field("oidc_client_id", &self.oidc_client_id)
            .field("oidc_client_secret", &secret(&self.oidc_client_secret))
            .field("oidc_scopes", &self.oidc_scopes)
            .field("oidc_permissions_claim", &self.oidc_permissions_claim)
            .field("workos_client_id", &self.workos_client_id)
            .field("workos_client_secret", &secret(&self.workos_client_secret))
            .field("workos_api_url", &self.workos_api_url)
            .field("access_client_id", &self.access_client_id)
            .field("access_client_secret", &secret(&self.access_client_secret))
            .field("access_token_url", &self.access_token_url)
            .field("access_authorization_url", &self.access_authorization_url)
            .field("access_jwks_url", &self.access_jwks_url)
            .field("pingone_issuer", &self.pingone_issuer)
            .field("pingone_client_id", &self.pingone_client_id)
            .field("pingone_client_secret", &secret(&self.pingone_client_secret))
            .field("pingone_api_identifier", &self.pingone_api_identifier)
            .field("entra_tenant_id", &self.entra_tenant_id)
            .field("entra_client_id", &self.entra_client_id)
            .field("entra_client_secret", &secret(&self.entra_client_secret))
            .field("github_client_id", &self.github_client_id)
            .field("github_client_secret", &secret(&self.github_client_secret))
            .field("github_oauth_url", &self.github_oauth_url)
            .field("github_api_url", &self.github_api_url)
            .finish()
    }
}

/// A set, non-blank value (an empty variable counts as unset).
fn present(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn required<'a>(setting: &'static str, v: &'a Option<String>, kind: &str) -> Result<&'a str, ConfigError> {
    present(v).ok_or_else(|| ConfigError::new(setting, format!("is required when {ENV_UPSTREAM}={kind}")))
}

/// An endpoint URL: https, or http on a loopback host.
fn endpoint_url(setting: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|e| ConfigError::new(setting, format!("'{value}' is not a url ({e})")))?;
    match url_problem(&url) {
        None => Ok(url),
        Some(p) => Err(ConfigError::new(setting, p)),
    }
}

/// An issuer identifier, kept verbatim (it is compared as a string).
fn issuer(setting: &'static str, value: &str) -> Result<String, ConfigError> {
    let issuer = check_issuer(setting, value)?;
    endpoint_url(setting, &issuer)?;
    Ok(issuer)
}

fn credentials(
    kind: &str,
    id: (&'static str, &Option<String>),
    secret: (&'static str, &Option<String>),
) -> Result<ClientCredentials, ConfigError> {
    let client_id = required(id.0, id.1, kind)?;
    let client_secret = required(secret.0, secret.1, kind)?;
    Ok(ClientCredentials {
        client_id: ClientId::new(client_id.to_owned()),
        client_secret: Some(ClientSecret::new(client_secret.to_owned())),
    })
}

/// `8-4-4-4-12` hex digits.
fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 4 * 3])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

fn scopes(value: &str) -> Result<Vec<String>, ConfigError> {
    let scopes: Vec<String> = value
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if !scopes.iter().any(|s| s == "openid") {
        return Err(ConfigError::new(ENV_OIDC_SCOPES, "must include openid"));
    }
    Ok(scopes)
}

fn permissions_claim(value: &str) -> Result<String, ConfigError> {
    let v = value.trim();
    if v.is_empty() || v.split('.').any(str::is_empty) {
        return Err(ConfigError::new(
            ENV_OIDC_PERMISSIONS_CLAIM,
            "must be a claim name (dots separate nested names)",
        ));
    }
    Ok(v.to_owned())
}

impl UpstreamArgs {
    /// The client and issuer variables of every remote provider, with their kind.
    /// (`API_IDENTIFIER` is optional and generic-sounding; it alone does not count.)
    fn remote_settings(&self) -> [(&'static str, &'static str, &Option<String>); 18] {
        [
            (ENV_OIDC_ISSUER, "oidc", &self.oidc_issuer),
            (ENV_OIDC_CLIENT_ID, "oidc", &self.oidc_client_id),
            (ENV_OIDC_CLIENT_SECRET, "oidc", &self.oidc_client_secret),
            (ENV_WORKOS_CLIENT_ID, "workos", &self.workos_client_id),
            (ENV_WORKOS_CLIENT_SECRET, "workos", &self.workos_client_secret),
            (ENV_ACCESS_CLIENT_ID, "cloudflare-access", &self.access_client_id),
            (
                ENV_ACCESS_CLIENT_SECRET,
                "cloudflare-access",
                &self.access_client_secret,
            ),
            (ENV_ACCESS_TOKEN_URL, "cloudflare-access", &self.access_token_url),
            (
                ENV_ACCESS_AUTHORIZATION_URL,
                "cloudflare-access",
                &self.access_authorization_url,
            ),
            (ENV_ACCESS_JWKS_URL, "cloudflare-access", &self.access_jwks_url),
            (ENV_PINGONE_ISSUER, "pingone", &self.pingone_issuer),
            (ENV_PINGONE_CLIENT_ID, "pingone", &self.pingone_client_id),
            (ENV_PINGONE_CLIENT_SECRET, "pingone", &self.pingone_client_secret),
            (ENV_ENTRA_TENANT_ID, "entra", &self.entra_tenant_id),
            (ENV_ENTRA_CLIENT_ID, "entra", &self.entra_client_id),
            (ENV_ENTRA_CLIENT_SECRET, "entra", &self.entra_client_secret),
            (ENV_GITHUB_CLIENT_ID, "github", &self.github_client_id),
            (ENV_GITHUB_CLIENT_SECRET, "github", &self.github_client_secret),
        ]
    }

    /// Check the settings and make the provider. No network: OIDC discovery and key
    /// fetches happen when the first login needs them. `http` serves discovery,
    /// JWKS, userinfo and GitHub's API; token requests (which carry the client
    /// secret) go through a client of our own that never follows redirects.
    /// `API_IDENTIFIER` as the RFC 8707 `resource` of the upstream authorization
    /// request (PingOne and generic OIDC), so the access token is for that API.
    fn resource_param(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let Some(resource) = present(&self.pingone_api_identifier) else {
            return Ok(Vec::new());
        };
        let url = Url::parse(resource)
            .map_err(|e| ConfigError::new(ENV_PINGONE_API_IDENTIFIER, format!("'{resource}' is not a url ({e})")))?;
        if url.fragment().is_some() {
            return Err(ConfigError::new(
                ENV_PINGONE_API_IDENTIFIER,
                "must not have a fragment (RFC 8707)",
            ));
        }
        Ok(vec![("resource".to_owned(), resource.to_owned())])
    }

    pub fn build(self, http: reqwest::Client) -> Result<Upstream, ConfigError> {
        let kind = self.upstream.trim().to_ascii_lowercase();
        if !KINDS.contains(&kind.as_str()) {
            return Err(ConfigError::new(
                ENV_UPSTREAM,
                format!("'{}' is not one of {}", self.upstream, KINDS.join(", ")),
            ));
        }
        if kind == "static" {
            if let Some((setting, other, _)) = self
                .remote_settings()
                .into_iter()
                .find(|(_, _, v)| present(v).is_some())
            {
                return Err(ConfigError::new(
                    ENV_UPSTREAM,
                    format!("is 'static' but {setting} is set: choose {ENV_UPSTREAM}={other}, or unset {setting}"),
                ));
            }
            return Ok(Upstream::Static(StaticUsers::load(&self.static_users_file)?));
        }
        let token_http = TokenHttp::new()
            .map_err(|e| ConfigError::new(ENV_UPSTREAM, format!("cannot create the http client ({e})")))?;
        if kind == "github" {
            let creds = credentials(
                &kind,
                (ENV_GITHUB_CLIENT_ID, &self.github_client_id),
                (ENV_GITHUB_CLIENT_SECRET, &self.github_client_secret),
            )?;
            let oauth = endpoint_url(ENV_GITHUB_OAUTH_URL, self.github_oauth_url.trim())?;
            let api = endpoint_url(ENV_GITHUB_API_URL, self.github_api_url.trim())?;
            let provider = GitHubProvider::new(creds, &oauth, &api, http, token_http)
                .map_err(|e| ConfigError::new(ENV_GITHUB_OAUTH_URL, e.to_string()))?;
            return Ok(Upstream::GitHub(provider));
        }
        let settings = self.oidc_settings(&kind)?;
        Ok(Upstream::Oidc(OidcProvider::new(settings, http, token_http)))
    }

    fn oidc_settings(&self, kind: &str) -> Result<OidcSettings, ConfigError> {
        let generic_mapping = || -> Result<ClaimMapping, ConfigError> {
            Ok(ClaimMapping {
                permissions: permissions_claim(&self.oidc_permissions_claim)?,
                ..ClaimMapping::default()
            })
        };
        let default_scopes = || scopes(DEFAULT_OIDC_SCOPES);
        Ok(match kind {
            "oidc" => {
                let issuer = issuer(ENV_OIDC_ISSUER, required(ENV_OIDC_ISSUER, &self.oidc_issuer, kind)?)?;
                OidcSettings {
                    preset: Preset::Generic,
                    dialect: Dialect::Oidc,
                    creds: credentials(
                        kind,
                        (ENV_OIDC_CLIENT_ID, &self.oidc_client_id),
                        (ENV_OIDC_CLIENT_SECRET, &self.oidc_client_secret),
                    )?,
                    endpoints: Endpoints::Discovery { issuer },
                    scopes: scopes(&self.oidc_scopes)?,
                    extra_auth_params: self.resource_param()?,
                    mapping: generic_mapping()?,
                    auth: None,
                }
            }
            "pingone" => {
                let issuer = issuer(
                    ENV_PINGONE_ISSUER,
                    required(ENV_PINGONE_ISSUER, &self.pingone_issuer, kind)?,
                )?;
                let extra = self.resource_param()?;
                OidcSettings {
                    preset: Preset::PingOne,
                    dialect: Dialect::Oidc,
                    creds: credentials(
                        kind,
                        (ENV_PINGONE_CLIENT_ID, &self.pingone_client_id),
                        (ENV_PINGONE_CLIENT_SECRET, &self.pingone_client_secret),
                    )?,
                    endpoints: Endpoints::Discovery { issuer },
                    scopes: scopes(&self.oidc_scopes)?,
                    extra_auth_params: extra,
                    mapping: generic_mapping()?,
                    auth: None,
                }
            }
            "entra" => {
                let tenant = required(ENV_ENTRA_TENANT_ID, &self.entra_tenant_id, kind)?;
                if !is_guid(tenant) {
                    return Err(ConfigError::new(
                        ENV_ENTRA_TENANT_ID,
                        "must be the tenant (directory) id, a GUID; multi-tenant \
                         (common, organizations) and domain names are not supported",
                    ));
                }
                let issuer = format!("{ENTRA_AUTHORITY}/{}/v2.0", tenant.to_ascii_lowercase());
                OidcSettings {
                    preset: Preset::Entra,
                    dialect: Dialect::Oidc,
                    creds: credentials(
                        kind,
                        (ENV_ENTRA_CLIENT_ID, &self.entra_client_id),
                        (ENV_ENTRA_CLIENT_SECRET, &self.entra_client_secret),
                    )?,
                    endpoints: Endpoints::Discovery { issuer },
                    // offline_access: Entra issues refresh tokens only when asked.
                    scopes: scopes("openid email profile offline_access")?,
                    extra_auth_params: Vec::new(),
                    mapping: ClaimMapping {
                        permissions: "roles".into(),
                        groups: "groups".into(),
                    },
                    auth: None,
                }
            }
            "cloudflare-access" => {
                let creds = credentials(
                    kind,
                    (ENV_ACCESS_CLIENT_ID, &self.access_client_id),
                    (ENV_ACCESS_CLIENT_SECRET, &self.access_client_secret),
                )?;
                let url =
                    |setting, v| -> Result<Url, ConfigError> { endpoint_url(setting, required(setting, v, kind)?) };
                let token = url(ENV_ACCESS_TOKEN_URL, &self.access_token_url)?;
                let authorization = url(ENV_ACCESS_AUTHORIZATION_URL, &self.access_authorization_url)?;
                let jwks = url(ENV_ACCESS_JWKS_URL, &self.access_jwks_url)?;
                // The team domain: all three on one origin, and the ID token's iss too.
                let team = token.origin();
                for (setting, u) in [
                    (ENV_ACCESS_AUTHORIZATION_URL, &authorization),
                    (ENV_ACCESS_JWKS_URL, &jwks),
                ] {
                    if u.origin() != team {
                        return Err(ConfigError::new(
                            setting,
                            format!("must be on the same team domain as {ENV_ACCESS_TOKEN_URL}"),
                        ));
                    }
                }
                OidcSettings {
                    preset: Preset::CloudflareAccess,
                    dialect: Dialect::Oidc,
                    creds,
                    endpoints: Endpoints::Fixed(Arc::new(Resolved {
                        authorization,
                        token,
                        jwks,
                        userinfo: None,
                        issuer: IssuerRule::SameOrigin(team),
                        auth: ClientAuth::Post,
                    })),
                    scopes: default_scopes()?,
                    extra_auth_params: Vec::new(),
                    mapping: generic_mapping()?,
                    auth: Some(ClientAuth::Post),
                }
            }
            "workos" => {
                let creds = credentials(
                    kind,
                    (ENV_WORKOS_CLIENT_ID, &self.workos_client_id),
                    (ENV_WORKOS_CLIENT_SECRET, &self.workos_client_secret),
                )?;
                let base = endpoint_url(ENV_WORKOS_API_URL, self.workos_api_url.trim())?;
                let base = base.as_str().trim_end_matches('/').to_owned();
                let client_id = creds.client_id.as_str();
                if !client_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(ConfigError::new(
                        ENV_WORKOS_CLIENT_ID,
                        "must be a WorkOS client id (client_...)",
                    ));
                }
                let at = |path: &str| endpoint_url(ENV_WORKOS_API_URL, &format!("{base}{path}"));
                OidcSettings {
                    preset: Preset::WorkOs,
                    dialect: Dialect::WorkOs,
                    endpoints: Endpoints::Fixed(Arc::new(Resolved {
                        authorization: at("/user_management/authorize")?,
                        token: at("/user_management/authenticate")?,
                        jwks: at(&format!("/sso/jwks/{client_id}"))?,
                        userinfo: None,
                        // WorkOS documents https://api.workos.com; some environments
                        // issue with the client-specific path.
                        issuer: IssuerRule::Exact(vec![base.clone(), format!("{base}/user_management/{client_id}")]),
                        auth: ClientAuth::Post,
                    })),
                    creds,
                    scopes: Vec::new(),
                    extra_auth_params: vec![("provider".to_owned(), "authkit".to_owned())],
                    mapping: ClaimMapping::default(),
                    auth: Some(ClientAuth::Post),
                }
            }
            other => {
                return Err(ConfigError::new(
                    ENV_UPSTREAM,
                    format!("'{other}' is not an OpenID provider"),
                ));
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    const GUID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    fn some(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    fn oidc() -> UpstreamArgs {
        UpstreamArgs {
            upstream: "oidc".into(),
            oidc_issuer: some("https://id.example.com"),
            oidc_client_id: some("cid"),
            oidc_client_secret: some("csecret"),
            ..UpstreamArgs::default()
        }
    }

    fn sample_users() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/local/static-users.json"
        ))
    }

    fn err(args: UpstreamArgs) -> ConfigError {
        args.build(reqwest::Client::new()).unwrap_err()
    }

    #[test]
    fn config_errors_name_the_setting() {
        type Case = (fn(&mut UpstreamArgs), &'static str);
        let cases: Vec<Case> = vec![
            (|a| a.upstream = "okta".into(), ENV_UPSTREAM),
            (|a| a.oidc_issuer = None, ENV_OIDC_ISSUER),
            (|a| a.oidc_issuer = some("  "), ENV_OIDC_ISSUER),
            (|a| a.oidc_issuer = some("http://id.example.com"), ENV_OIDC_ISSUER),
            (|a| a.oidc_issuer = some("https://id.example.com/?x=1"), ENV_OIDC_ISSUER),
            (|a| a.oidc_client_id = None, ENV_OIDC_CLIENT_ID),
            (|a| a.oidc_client_secret = some(""), ENV_OIDC_CLIENT_SECRET),
            (|a| a.oidc_scopes = "email profile".into(), ENV_OIDC_SCOPES),
            (|a| a.oidc_permissions_claim = "a..b".into(), ENV_OIDC_PERMISSIONS_CLAIM),
            (
                |a| {
                    *a = UpstreamArgs {
                        upstream: "workos".into(),
                        workos_client_secret: some("sk"),
                        ..UpstreamArgs::default()
                    }
                },
                ENV_WORKOS_CLIENT_ID,
            ),
            (
                |a| {
                    *a = UpstreamArgs {
                        upstream: "workos".into(),
                        workos_client_id: some("client_1"),
                        ..UpstreamArgs::default()
                    }
                },
                ENV_WORKOS_CLIENT_SECRET,
            ),
            (
                |a| {
                    *a = UpstreamArgs {
                        upstream: "workos".into(),
                        workos_client_id: some("client_1"),
                        workos_client_secret: some("sk"),
                        workos_api_url: "http://api.workos.example".into(),
                        ..UpstreamArgs::default()
                    }
                },
                ENV_WORKOS_API_URL,
            ),
            (
                |a| {
                    *a = UpstreamArgs {
                        upstream: "pingone".into(),
                        pingone_client_id: some("c"),
                        pingone_client_secret: some("s"),
                        ..UpstreamArgs::default()
                    }
                },
                ENV_PINGONE_ISSUER,
            ),
            (
                |a| {
                    *a = UpstreamArgs {
                        upstream: "pingone".into(),
                        pingone_issuer: some("https://auth.pingone.com/env/as"),
                        pingone_client_secret: some("s"),
                        ..UpstreamArgs::default()
                    }
                },
                ENV_PINGONE_CLIENT_ID,
            ),
            (
                |a| {
                    *a = UpstreamArgs {
                        upstream: "pingone".into(),
                        pingone_issuer: some("https://auth.pingone.com/env/as"),
                        pingone_client_id: some("c"),
                        pingone_client_secret: some("s"),
                        pingone_api_identifier: some("not a url"),
                        ..UpstreamArgs::default()
                    }
                },
                ENV_PINGONE_API_IDENTIFIER,
            ),
            (
                |a| {
                    *a = UpstreamArgs {
                        upstream: "entra".into(),
                        entra_tenant_id: some("common"),
                        entra_client_id: some("c"),
                        entra_client_secret: some("s"),
                        ..UpstreamArgs::default()
                    }
                },
                ENV_ENTRA_TENANT_ID,
            ),
            (
                |a| {
                    *a = UpstreamArgs {
                        upstream: "entra".into(),
                        entra_tenant_id: some(GUID),
                        entra_client_secret: some("s"),
                        ..UpstreamArgs::default()
                    }
                },
                ENV_ENTRA_CLIENT_ID,
            ),
            (
                |a| {
                    *a = UpstreamArgs {
                        upstream: "cloudflare-access".into(),
                        access_client_id: some("c"),
                        access_client_secret: some("s"),
                        access_authorization_url: some("https://t.cloudflareaccess.com/a"),
                        access_jwks_url: some("https://t.cloudflareaccess.com/j"),
                        ..UpstreamArgs::default()
                    }
                },
                ENV_ACCESS_TOKEN_URL,
            ),
            (
                |a| {
                    *a = UpstreamArgs {
                        upstream: "cloudflare-access".into(),
                        access_client_id: some("c"),
                        access_client_secret: some("s"),
                        access_token_url: some("https://t.cloudflareaccess.com/t"),
                        access_authorization_url: some("https://t.cloudflareaccess.com/a"),
                        access_jwks_url: some("https://other.cloudflareaccess.com/j"),
                        ..UpstreamArgs::default()
                    }
                },
                ENV_ACCESS_JWKS_URL,
            ),
            (
                |a| {
                    *a = UpstreamArgs {
                        upstream: "github".into(),
                        github_client_id: some("c"),
                        ..UpstreamArgs::default()
                    }
                },
                ENV_GITHUB_CLIENT_SECRET,
            ),
            (
                |a| {
                    *a = UpstreamArgs {
                        upstream: "github".into(),
                        github_client_id: some("c"),
                        github_client_secret: some("s"),
                        github_api_url: "http://ghe.example.com/api/v3".into(),
                        ..UpstreamArgs::default()
                    }
                },
                ENV_GITHUB_API_URL,
            ),
            (
                |a| {
                    *a = UpstreamArgs {
                        static_users_file: "/nonexistent/users.json".into(),
                        ..UpstreamArgs::default()
                    }
                },
                ENV_STATIC_USERS_FILE,
            ),
        ];
        for (i, (mutate, setting)) in cases.into_iter().enumerate() {
            let mut a = oidc();
            mutate(&mut a);
            let e = err(a);
            assert_eq!(e.setting, setting, "case {i}: {e}");
            assert!(e.to_string().starts_with(&format!("invalid {setting}: ")), "{e}");
        }
    }

    #[test]
    fn static_is_refused_while_another_provider_is_configured() {
        for mutate in [
            (|a: &mut UpstreamArgs| a.oidc_issuer = some("https://id.example.com")) as fn(&mut UpstreamArgs),
            |a| a.workos_client_id = some("client_1"),
            |a| a.github_client_secret = some("s"),
            |a| a.access_jwks_url = some("https://t.cloudflareaccess.com/j"),
        ] {
            let mut a = UpstreamArgs {
                static_users_file: sample_users(),
                ..UpstreamArgs::default()
            };
            mutate(&mut a);
            let e = err(a);
            assert_eq!(e.setting, ENV_UPSTREAM, "{e}");
        }
        // Empty variables count as unset; the defaults of other providers do not count.
        let a = UpstreamArgs {
            static_users_file: sample_users(),
            oidc_issuer: some(""),
            ..UpstreamArgs::default()
        };
        let up = a.build(reqwest::Client::new()).unwrap();
        assert_eq!(up.kind(), "static");
    }

    #[test]
    fn static_users_file_is_ignored_by_other_providers() {
        let a = UpstreamArgs {
            static_users_file: "/nonexistent/users.json".into(),
            ..oidc()
        };
        assert_eq!(a.build(reqwest::Client::new()).unwrap().kind(), "oidc");
    }

    #[test]
    fn presets_build_without_network() {
        let entra = UpstreamArgs {
            upstream: "entra".into(),
            entra_tenant_id: some(&GUID.to_uppercase()),
            entra_client_id: some("c"),
            entra_client_secret: some("s"),
            ..UpstreamArgs::default()
        };
        let Upstream::Oidc(p) = entra.build(reqwest::Client::new()).unwrap() else {
            panic!("not oidc")
        };
        assert_eq!(p.preset(), Preset::Entra);
        assert_eq!(
            p.issuer(),
            Some(format!("https://login.microsoftonline.com/{GUID}/v2.0").as_str())
        );
        let workos = UpstreamArgs {
            upstream: "WorkOS".into(),
            workos_client_id: some("client_01"),
            workos_client_secret: some("sk_test"),
            ..UpstreamArgs::default()
        };
        assert_eq!(workos.build(reqwest::Client::new()).unwrap().kind(), "workos");
        let pingone = UpstreamArgs {
            upstream: "pingone".into(),
            pingone_issuer: some("https://auth.pingone.com/4f7e/as"),
            pingone_client_id: some("c"),
            pingone_client_secret: some("s"),
            ..UpstreamArgs::default()
        };
        assert_eq!(pingone.build(reqwest::Client::new()).unwrap().kind(), "pingone");
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let a = UpstreamArgs {
            workos_client_secret: some("sk_live_TOPSECRET"),
            github_client_secret: some("gh-TOPSECRET"),
            ..oidc()
        };
        let dbg = format!("{a:?}");
        assert!(!dbg.contains("TOPSECRET") && !dbg.contains("csecret"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
        let up = oidc().build(reqwest::Client::new()).unwrap();
        let dbg = format!("{up:?}");
        assert!(!dbg.contains("csecret"), "{dbg}");
        assert!(dbg.contains("cid"));
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        upstream: UpstreamArgs,
    }

    #[test]
    fn every_setting_reads_its_variable() {
        let cmd = Cli::command();
        let env_of = |id: &str| {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("no argument {id}"));
            (
                arg.get_env().and_then(|e| e.to_str()).map(str::to_owned),
                arg.is_hide_env_values_set(),
            )
        };
        let expected = [
            ("upstream", ENV_UPSTREAM, false),
            ("static_users_file", ENV_STATIC_USERS_FILE, false),
            ("oidc_issuer", ENV_OIDC_ISSUER, false),
            ("oidc_client_id", ENV_OIDC_CLIENT_ID, false),
            ("oidc_client_secret", ENV_OIDC_CLIENT_SECRET, true),
            ("oidc_scopes", ENV_OIDC_SCOPES, false),
            ("oidc_permissions_claim", ENV_OIDC_PERMISSIONS_CLAIM, false),
            ("workos_client_id", ENV_WORKOS_CLIENT_ID, false),
            ("workos_client_secret", ENV_WORKOS_CLIENT_SECRET, true),
            ("workos_api_url", ENV_WORKOS_API_URL, false),
            ("access_client_id", ENV_ACCESS_CLIENT_ID, false),
            ("access_client_secret", ENV_ACCESS_CLIENT_SECRET, true),
            ("access_token_url", ENV_ACCESS_TOKEN_URL, false),
            ("access_authorization_url", ENV_ACCESS_AUTHORIZATION_URL, false),
            ("access_jwks_url", ENV_ACCESS_JWKS_URL, false),
            ("pingone_issuer", ENV_PINGONE_ISSUER, false),
            ("pingone_client_id", ENV_PINGONE_CLIENT_ID, false),
            ("pingone_client_secret", ENV_PINGONE_CLIENT_SECRET, true),
            ("pingone_api_identifier", ENV_PINGONE_API_IDENTIFIER, false),
            ("entra_tenant_id", ENV_ENTRA_TENANT_ID, false),
            ("entra_client_id", ENV_ENTRA_CLIENT_ID, false),
            ("entra_client_secret", ENV_ENTRA_CLIENT_SECRET, true),
            ("github_client_id", ENV_GITHUB_CLIENT_ID, false),
            ("github_client_secret", ENV_GITHUB_CLIENT_SECRET, true),
            ("github_oauth_url", ENV_GITHUB_OAUTH_URL, false),
            ("github_api_url", ENV_GITHUB_API_URL, false),
        ];
        for (id, env, hidden) in expected {
            assert_eq!(env_of(id), (Some(env.to_owned()), hidden), "{id}");
        }
        let parsed = Cli::try_parse_from(["x", "--upstream", "github", "--github-client-id", "c"]).unwrap();
        assert_eq!(parsed.upstream.upstream, "github");
        assert_eq!(parsed.upstream.github_api_url, "https://api.github.com");
    }
}
