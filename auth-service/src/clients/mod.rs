//! OAuth clients: who may ask for tokens, and how they prove it.
//!
//! Two kinds of client, one [`ClientRecord`]:
//! - **Registered** (RFC 7591 dynamic registration, `POST /register`): stored as JSON in
//!   the `auth_clients` bucket under a server-chosen id (`c_` + 32 hex digits). A
//!   confidential client gets a secret once, in the registration response; only its
//!   SHA-256 is stored. The bucket's max age forgets clients nobody used for
//!   [`crate::store::CLIENT_IDLE_MAX_AGE`]; [`Clients::touch`] re-puts a used client at
//!   most once per [`TOUCH_INTERVAL`] to keep it.
//! - **Client ID Metadata Documents** (MCP 2025-11-25 authorization,
//!   draft-ietf-oauth-client-id-metadata-document): the client id is an https URL
//!   whose JSON document describes the client; fetched with the SSRF-guarded client of
//!   [`crate::net`], held in memory per replica ([`cimd`]), never stored. Always
//!   public clients (no shared secret can exist).
//!
//! - **Machine clients** ([`machine`]): created by the operator in
//!   `AUTH_MACHINE_CLIENTS_FILE`, held in memory; the only clients that may use
//!   `client_credentials` or `/introspect`. Registration never creates one.
//!
//! Redirect URIs match exactly, except that a loopback `http` URI may come back with
//! any port (RFC 8252 §7.3). At the token endpoint a client uses exactly the method it
//! registered; public clients send no secret. Errors carry RFC 6749/7591 codes and
//! never a secret.

pub mod cimd;
mod http;
pub mod machine;
pub mod metadata;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::crypto::{ct_eq, random_token, sha256_b64};
use crate::net::{GuardedClient, RateLimiter};
use crate::store::{Bucket, Cas, StoreError};

pub use http::{MAX_REGISTRATION_BYTES, client_credentials, register_handler, register_preflight};
use metadata::{Origin, Validated};

/// A registered client's `last_used_at` (and with it the bucket entry's age) is
/// refreshed at most this often.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Prefix of the ids of registered clients (never a URL, so never a metadata document).
pub const CLIENT_ID_PREFIX: &str = "c_";
/// Longest client id looked up at all.
pub const MAX_CLIENT_ID_LEN: usize = 2048;

/// How a client authenticates at the token endpoint (RFC 7591
/// `token_endpoint_auth_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// Public client: no secret (PKCE protects the code).
    None,
    /// HTTP Basic with the form-urlencoded id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(AuthMethod::None),
            "client_secret_basic" => Some(AuthMethod::ClientSecretBasic),
            "client_secret_post" => Some(AuthMethod::ClientSecretPost),
            _ => None,
        }
    }

    /// The values for `token_endpoint_auth_methods_supported`.
    pub const ALL: [AuthMethod; 3] = [
        AuthMethod::None,
        AuthMethod::ClientSecretBasic,
        AuthMethod::ClientSecretPost,
    ];
}

/// One client, as stored in the `auth_clients` bucket (JSON).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub client_id: String,
    /// [`sha256_b64`] of the secret; `None` for public clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub response_types: Vec<String>,
    pub token_endpoint_auth_method: AuthMethod,
    /// Space-separated scopes it may ask for; `None`: all supported scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logo_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software_version: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds; refreshed at most once per [`TOUCH_INTERVAL`].
    pub last_used_at: u64,
    /// Described by a Client ID Metadata Document (the id is its URL), not registered.
    #[serde(default)]
    pub metadata_document: bool,
    /// An operator-made machine client ([`machine`]): acts for itself
    /// (`client_credentials`), never stored in the bucket.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub machine: bool,
    /// May call `/introspect` (only machine clients the operator marked so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub introspect: bool,
}

impl std::fmt::Debug for ClientRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRecord")
            .field("client_id", &self.client_id)
            .field("client_name", &self.client_name)
            .field("token_endpoint_auth_method", &self.token_endpoint_auth_method)
            .field("redirect_uris", &self.redirect_uris)
            .field("grant_types", &self.grant_types)
            .field("scope", &self.scope)
            .field("metadata_document", &self.metadata_document)
            .field("machine", &self.machine)
            .field("introspect", &self.introspect)
            .finish_non_exhaustive()
    }
}

impl ClientRecord {
    /// The record of checked metadata (`secret_hash`: SHA-256 of the issued secret).
    pub(crate) fn from_validated(
        client_id: String,
        secret_hash: Option<String>,
        v: Validated,
        now: u64,
        document: bool,
    ) -> Self {
        Self {
            client_id,
            client_secret_hash: secret_hash,
            client_name: v.client_name,
            redirect_uris: v.redirect_uris,
            grant_types: v.grant_types,
            response_types: v.response_types,
            token_endpoint_auth_method: v.auth_method,
            scope: v.scope,
            client_uri: v.client_uri,
            logo_uri: v.logo_uri,
            software_id: v.software_id,
            software_version: v.software_version,
            created_at: now,
            last_used_at: now,
            metadata_document: document,
            machine: false,
            introspect: false,
        }
    }

    /// No secret: PKCE is its only protection.
    pub fn is_public(&self) -> bool {
        self.token_endpoint_auth_method == AuthMethod::None
    }

    pub fn allows_grant(&self, grant_type: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant_type)
    }

    /// The registered client metadata (RFC 7591 §3.2.1 fields, no secret).
    pub fn metadata_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("client_id".into(), json!(self.client_id));
        m.insert("redirect_uris".into(), json!(self.redirect_uris));
        m.insert("grant_types".into(), json!(self.grant_types));
        m.insert("response_types".into(), json!(self.response_types));
        m.insert(
            "token_endpoint_auth_method".into(),
            json!(self.token_endpoint_auth_method.as_str()),
        );
        let optional = [
            ("client_name", &self.client_name),
            ("scope", &self.scope),
            ("client_uri", &self.client_uri),
            ("logo_uri", &self.logo_uri),
            ("software_id", &self.software_id),
            ("software_version", &self.software_version),
        ];
        for (k, v) in optional {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        Value::Object(m)
    }
}

/// Settings of [`Clients`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientsConfig {
    /// Registrations per minute per source address (`AUTH_REGISTER_RATE`); see
    /// [`Clients::register_limiter`].
    pub register_per_minute: u32,
    /// `AUTH_CIMD_ALLOW_PRIVATE` (tests only): metadata document URLs may be plain
    /// http and resolve to private addresses. The [`GuardedClient`] must be built
    /// with the same flag.
    pub allow_private_metadata: bool,
    /// `AUTH_SCOPES`: what a client may register in `scope`.
    pub supported_scopes: Vec<String>,
    /// `AUTH_MACHINE_CLIENTS_FILE`, loaded.
    pub machines: machine::MachineClients,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        Self {
            register_per_minute: 20,
            allow_private_metadata: false,
            supported_scopes: vec!["mcp".to_owned()],
            machines: machine::MachineClients::default(),
        }
    }
}

/// Why a client request was refused. Messages name the problem, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("invalid redirect uri: {0}")]
    InvalidRedirectUri(String),
    #[error("invalid client metadata: {0}")]
    InvalidClientMetadata(String),
    /// Unknown client, failed or missing authentication, wrong method.
    #[error("invalid client: {0}")]
    InvalidClient(String),
    /// A metadata-document client id whose document could not be used.
    #[error("client metadata document refused: {0}")]
    MetadataDocument(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    /// NATS/KV failed; the detail is logged, not shown.
    #[error("client store unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for ClientError {
    fn from(e: StoreError) -> Self {
        ClientError::Unavailable(e.to_string())
    }
}

impl ClientError {
    /// The OAuth error code (RFC 6749 §5.2, RFC 7591 §3.2.2), from the one table
    /// in [`crate::errors`].
    pub fn oauth_code(&self) -> &'static str {
        crate::errors::OAuthError::from(self).code.name()
    }

    /// HTTP status: 400, 401 (`invalid_client`; an authorize page shows it as 400),
    /// 415, 429, 503 ([`crate::errors`]).
    pub fn status(&self) -> u16 {
        crate::errors::OAuthError::from(self).code.status().as_u16()
    }

    /// The `error_description` shown to the client (internals left out).
    pub fn description(&self) -> String {
        match self {
            ClientError::InvalidRedirectUri(d)
            | ClientError::InvalidClientMetadata(d)
            | ClientError::InvalidClient(d)
            | ClientError::InvalidRequest(d)
            | ClientError::UnsupportedMediaType(d) => d.clone(),
            ClientError::MetadataDocument(d) => format!("client metadata document: {d}"),
            ClientError::RateLimited { .. } => "too many requests; retry later".to_owned(),
            ClientError::Unavailable(_) => "the service is temporarily unavailable".to_owned(),
        }
    }
}

impl actix_web::ResponseError for ClientError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        crate::errors::OAuthError::from(self).code.status()
    }

    /// As [`crate::errors::OAuthError`] answers it (the one table of OAuth errors).
    fn error_response(&self) -> actix_web::HttpResponse {
        let err = crate::errors::OAuthError::from(self).basic(matches!(self, ClientError::InvalidClient(_)));
        actix_web::ResponseError::error_response(&err)
    }
}

/// Registered clients (KV) and metadata-document clients (fetched, cached).
pub struct Clients {
    bucket: Bucket,
    http: GuardedClient,
    config: ClientsConfig,
    documents: cimd::Cache,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Ids we issue: `c_` and hex; anything else is not a KV key we could hold.
fn is_registered_id(id: &str) -> bool {
    id.len() <= 128
        && id.starts_with(CLIENT_ID_PREFIX)
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Clients {
    /// `bucket` is the `auth_clients` bucket; `http` is built with
    /// `GuardedClient::new(config.allow_private_metadata)`.
    pub fn new(bucket: Bucket, http: GuardedClient, config: ClientsConfig) -> Self {
        if http.allow_private() != config.allow_private_metadata {
            tracing::warn!(
                client = http.allow_private(),
                config = config.allow_private_metadata,
                "metadata document fetcher and clients config disagree on private addresses"
            );
        }
        Self {
            bucket,
            http,
            config,
            documents: cimd::Cache::new(),
        }
    }

    pub fn config(&self) -> &ClientsConfig {
        &self.config
    }

    /// A limiter for `POST /register` at the configured rate.
    pub fn register_limiter(&self) -> RateLimiter {
        RateLimiter::new(self.config.register_per_minute)
    }

    /// RFC 7591 registration: check `metadata`, store the client, and return the
    /// 201 response body (`client_id`, `client_id_issued_at`, the registered metadata,
    /// and for a confidential client `client_secret` — shown this once — with
    /// `client_secret_expires_at: 0`).
    pub async fn register(&self, metadata: &Value) -> Result<Value, ClientError> {
        let validated = metadata::validate(metadata, Origin::Registration, &self.config.supported_scopes)?;
        let secret = (validated.auth_method != AuthMethod::None).then(random_token);
        let now = now_secs();
        let mut record =
            ClientRecord::from_validated(String::new(), secret.as_deref().map(sha256_b64), validated, now, false);
        // A collision of 122 random bits will not happen; one retry covers it anyway.
        let mut stored = false;
        for _ in 0..2 {
            record.client_id = format!("{CLIENT_ID_PREFIX}{}", uuid::Uuid::new_v4().simple());
            if let Cas::Done(_) = self.bucket.create(&record.client_id, &record).await? {
                stored = true;
                break;
            }
        }
        if !stored {
            return Err(ClientError::Unavailable("client id collision".into()));
        }
        tracing::info!(
            client_id = %record.client_id,
            method = record.token_endpoint_auth_method.as_str(),
            client_name = record.client_name.as_deref().unwrap_or(""),
            "client registered"
        );
        let mut body = record.metadata_json();
        if let Value::Object(m) = &mut body {
            m.insert("client_id_issued_at".into(), json!(now));
            if let Some(secret) = secret {
                m.insert("client_secret".into(), json!(secret));
                m.insert("client_secret_expires_at".into(), json!(0));
            }
        }
        Ok(body)
    }

    /// The client `client_id` names: a registered client, or — when the id is a URL —
    /// the client its metadata document describes (fetched or cached). `Ok(None)`:
    /// no such registered client. A URL whose document cannot be used is
    /// [`ClientError::MetadataDocument`].
    pub async fn get(&self, client_id: &str) -> Result<Option<ClientRecord>, ClientError> {
        if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID_LEN {
            return Ok(None);
        }
        if let Some(m) = self.config.machines.get(client_id) {
            return Ok(Some(m.clone()));
        }
        if cimd::is_url_client_id(client_id) {
            return self.metadata_document(client_id).await.map(Some);
        }
        if !is_registered_id(client_id) {
            return Ok(None);
        }
        Ok(self.bucket.get::<ClientRecord>(client_id).await?.map(|(r, _)| r))
    }

    /// Token-endpoint client authentication. A confidential client must use its
    /// registered method with the right secret (compared in constant time); a public
    /// client must send no secret. Every failure is `invalid_client`.
    pub async fn authenticate(
        &self,
        client_id: &str,
        secret: Option<&str>,
        method_used: AuthMethod,
    ) -> Result<ClientRecord, ClientError> {
        let found = match self.get(client_id).await {
            Ok(found) => found,
            Err(ClientError::MetadataDocument(d)) => return Err(ClientError::InvalidClient(d)),
            Err(e) => return Err(e),
        };
        let client = found.ok_or_else(|| ClientError::InvalidClient("unknown client".into()))?;
        let registered = client.token_endpoint_auth_method;
        if registered == AuthMethod::None {
            if secret.is_some() || method_used != AuthMethod::None {
                return Err(ClientError::InvalidClient(
                    "public client: send client_id without a client secret".into(),
                ));
            }
            return Ok(client);
        }
        if method_used != registered {
            return Err(ClientError::InvalidClient(format!(
                "client must authenticate with {}",
                registered.as_str()
            )));
        }
        let Some(secret) = secret else {
            return Err(ClientError::InvalidClient("client secret required".into()));
        };
        let matches = client
            .client_secret_hash
            .as_deref()
            .is_some_and(|hash| ct_eq(&sha256_b64(secret), hash));
        if !matches {
            return Err(ClientError::InvalidClient("client authentication failed".into()));
        }
        Ok(client)
    }

    /// Note that `record` was used: rewrite it (which restarts the bucket's max age)
    /// when its `last_used_at` is older than [`TOUCH_INTERVAL`]. Compare-and-swap, so
    /// replicas racing to touch the same client write once. No-op for metadata
    /// documents.
    pub async fn touch(&self, record: &ClientRecord) -> Result<(), ClientError> {
        let now = now_secs();
        if record.metadata_document
            || record.machine
            || now < record.last_used_at.saturating_add(TOUCH_INTERVAL.as_secs())
        {
            return Ok(());
        }
        if !is_registered_id(&record.client_id) {
            return Ok(());
        }
        let Some((mut stored, revision)) = self.bucket.get::<ClientRecord>(&record.client_id).await? else {
            return Ok(());
        };
        if now < stored.last_used_at.saturating_add(TOUCH_INTERVAL.as_secs()) {
            return Ok(());
        }
        stored.last_used_at = now;
        // Conflict: another replica touched it first.
        let _ = self.bucket.update(&record.client_id, &stored, revision).await?;
        Ok(())
    }
}

/// Whether `uri` may receive this client's authorization response: exactly one of
/// its registered redirect URIs, or — for a loopback `http` URI (127.0.0.1, [::1],
/// localhost) — a registered loopback URI with the same scheme, host, path and query
/// on any port (RFC 8252 §7.3: native apps get an ephemeral port).
pub fn redirect_uri_allowed(client: &ClientRecord, uri: &str) -> bool {
    if client.redirect_uris.iter().any(|r| r == uri) {
        return true;
    }
    if uri.contains('#') || uri.contains(|c: char| c.is_control() || c.is_whitespace()) {
        return false;
    }
    let Ok(asked) = reqwest::Url::parse(uri) else {
        return false;
    };
    if !metadata::is_loopback_url(&asked) || !asked.username().is_empty() || asked.password().is_some() {
        return false;
    }
    // Only a URI written in normal form (no dot segments or escapes the parser would
    // rewrite), so the string we redirect to is the one that was compared.
    let canonical = asked.as_str() == uri
        || (asked.path() == "/" && asked.query().is_none() && asked.as_str().strip_suffix('/') == Some(uri));
    if !canonical {
        return false;
    }
    client.redirect_uris.iter().any(|registered| {
        let Ok(reg) = reqwest::Url::parse(registered) else {
            return false;
        };
        metadata::is_loopback_url(&reg)
            && reg.scheme() == asked.scheme()
            && reg.host() == asked.host()
            && reg.path() == asked.path()
            && reg.query() == asked.query()
    })
}

#[cfg(test)]
mod tests;
