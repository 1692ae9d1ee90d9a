//! The mcp-cluster authorization server.
//!
//! To MCP clients it is an OAuth 2.1 authorization server ([`server`]): metadata,
//! dynamic registration and client metadata documents ([`clients`]), the browser
//! flow with consent ([`flow`]), the token, revocation and introspection endpoints
//! ([`token`], [`grants`]), JWT access tokens signed with rotating keys
//! ([`signing`]). To the identity provider it is an OAuth/OIDC client
//! ([`upstream`]); the provider's tokens are kept sealed in the [`vault`], which
//! workers ask over NATS. All state is in JetStream KV ([`store`]), so replicas are
//! interchangeable.
//!
//! [`bind`] alone starts only the DEVELOPMENT issuer (discovery and the JWKS of a
//! file key, for `mint-token`), which the gateway's tests use as a plain issuer.
//!
//! It must never log a token, a password, a secret or a private key, and never
//! serve the private half of a key.
#![forbid(unsafe_code)]

pub mod clients;
pub mod config;
pub mod crypto;
pub mod errors;
pub mod flow;
pub mod grants;
pub mod keys;
pub mod metrics;
pub mod mint;
pub mod net;
pub mod pages;
pub mod server;
pub mod signing;
pub mod store;
pub mod token;
pub mod upstream;
pub mod vault;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::dev::Service;
use actix_web::{App, HttpResponse, HttpServer, http::header, web};

pub use config::{Cli, Command, Config, ConfigError, MintArgs, OAuthConfig, ServeArgs};
pub use keys::{DevKey, KeyError};

/// Worker threads of the public listener (discovery and JWKS are tiny).
pub const HTTP_WORKERS: usize = 2;
/// How long in-flight requests may finish after shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// `Cache-Control: max-age` of the discovery documents and the JWKS.
pub const METADATA_MAX_AGE_SECS: u32 = 300;
/// How long start-up waits for NATS.
pub const NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest form or registration body accepted.
pub const MAX_FORM_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid {setting}: {source}", setting = config::ENV_DEV_KEY_FILE)]
    Key {
        #[from]
        source: KeyError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("nats: {0}")]
    Nats(String),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("server failed: {0}")]
    Server(std::io::Error),
}

impl RunError {
    /// Process exit code: 64 for configuration (the key file), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Key { .. } => config::EXIT_CONFIG,
            _ => 1,
        }
    }
}

/// Run the OAuth server: load the development key if one is configured, connect to
/// NATS, bind both listeners, serve until `shutdown` resolves, then drain.
pub async fn run(
    config: Config,
    oauth: OAuthConfig,
    upstream: upstream::Upstream,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let dev_key = if config.dev_key_file.as_os_str().is_empty() {
        None
    } else {
        tracing::warn!(path = %config.dev_key_file.display(), "DEVELOPMENT key published in the JWKS: anyone holding it can mint tokens");
        Some(keys::load_or_generate(&config.dev_key_file)?)
    };
    let listener = TcpListener::bind(config.listen).map_err(|source| RunError::Bind {
        addr: config.listen,
        source,
    })?;
    server::bind_oauth(&config, oauth, upstream, dev_key, listener)
        .await?
        .serve(shutdown)
        .await
}

/// Background work of a server: a stop signal and the named tasks to join.
type Tasks = (
    tokio::sync::watch::Sender<bool>,
    Vec<(&'static str, actix_web::rt::task::JoinHandle<()>)>,
);

/// Both servers, bound and started, waiting for [`Bound::serve`] to drive them.
pub struct Bound {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    server: actix_web::dev::Server,
    admin: telemetry::Admin,
    draining: Arc<AtomicBool>,
    tasks: Option<Tasks>,
}

/// Start serving on an already-bound public `listener` (tests bind port 0 first to
/// learn the issuer URL); the admin listener is bound from `config.admin_listen`.
/// Must be called inside an actix system (`#[actix_web::main]`/`#[actix_web::test]`).
pub fn bind(config: &Config, key: DevKey, listener: TcpListener) -> Result<Bound, RunError> {
    let public_addr = listener.local_addr().map_err(RunError::Server)?;
    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::register(&registry)?;
    let draining = Arc::new(AtomicBool::new(false));
    let ready: telemetry::Readiness = {
        let draining = draining.clone();
        Arc::new(move || !draining.load(Ordering::SeqCst))
    };
    let admin = telemetry::admin_server(config.admin_listen, registry, ready).map_err(|source| RunError::Bind {
        addr: config.admin_listen,
        source,
    })?;

    let state = web::Data::new(Issuer::new(&config.issuer, key));
    let server = HttpServer::new(move || {
        let metrics = metrics.clone();
        App::new()
            .app_data(state.clone())
            .wrap_fn(move |req, srv| {
                let fut = srv.call(req);
                let metrics = metrics.clone();
                async move {
                    let res = fut.await?;
                    let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
                    metrics
                        .http_requests
                        .with_label_values(&[route.as_str(), res.status().as_str()])
                        .inc();
                    Ok(res)
                }
            })
            .configure(|cfg| routes(cfg, &state))
    })
    .workers(HTTP_WORKERS)
    .disable_signals()
    .shutdown_timeout(DRAIN_TIMEOUT.as_secs())
    .listen(listener)
    .map_err(|source| RunError::Bind {
        addr: public_addr,
        source,
    })?
    .run();
    tracing::info!(
        listen = %public_addr,
        admin = %admin.addr,
        issuer = %config.issuer,
        "auth-service listening (development issuer)"
    );
    Ok(Bound::new(public_addr, server, admin, draining, None))
}

impl Bound {
    pub(crate) fn new(
        public_addr: SocketAddr,
        server: actix_web::dev::Server,
        admin: telemetry::Admin,
        draining: Arc<AtomicBool>,
        tasks: Option<Tasks>,
    ) -> Self {
        Self {
            public_addr,
            admin_addr: admin.addr,
            server,
            admin,
            draining,
            tasks,
        }
    }

    /// Stop and join the background tasks.
    async fn stop_tasks(tasks: Option<Tasks>) {
        if let Some((stop, handles)) = tasks {
            let _ = stop.send(true);
            for (name, handle) in handles {
                if let Err(e) = handle.await {
                    tracing::error!(task = name, error = %e, "task failed");
                }
            }
        }
    }

    /// Serve until `shutdown` resolves, then drain: /readyz turns 503, the public
    /// listener stops accepting, in-flight requests get [`DRAIN_TIMEOUT`], then the
    /// admin server stops.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        let handle = self.server.handle();
        let admin_handle = self.admin.handle;
        let mut public = std::pin::pin!(self.server);
        let mut admin_server = std::pin::pin!(self.admin.server);
        let mut shutdown = std::pin::pin!(shutdown);
        let early = tokio::select! {
            r = &mut public => Some(("public", r)),
            r = &mut admin_server => Some(("admin", r)),
            () = &mut shutdown => None,
        };
        if let Some((which, result)) = early {
            tracing::error!(server = which, "server stopped on its own; shutting down");
            handle.stop(false).await;
            admin_handle.stop(false).await;
            Self::stop_tasks(self.tasks).await;
            return result.map_err(RunError::Server);
        }

        tracing::info!("shutdown: draining");
        self.draining.store(true, Ordering::SeqCst);
        let stop = async {
            handle.stop(true).await;
            admin_handle.stop(true).await;
        };
        let ((), public_result, admin_result) = tokio::join!(stop, public, admin_server);
        Self::stop_tasks(self.tasks).await;
        tracing::info!("shutdown: done");
        public_result.and(admin_result).map_err(RunError::Server)
    }
}

/// What the public routes serve.
struct Issuer {
    issuer: String,
    /// The issuer URL's path without a trailing slash ("" for `http://host:port`).
    path: String,
    jwks_uri: String,
    jwks: serde_json::Value,
}

impl Issuer {
    fn new(issuer: &str, key: DevKey) -> Self {
        let base = issuer.trim_end_matches('/');
        let path = reqwest::Url::parse(issuer)
            .map(|u| u.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let jwks = serde_json::json!({ "keys": [key.jwk()] });
        Self {
            issuer: issuer.to_owned(),
            path,
            jwks_uri: format!("{base}/jwks.json"),
            jwks,
        }
    }

    /// RFC 8414 authorization server metadata (also served as OIDC discovery). Only
    /// what exists today; the OAuth endpoints are added with the OAuth server.
    fn metadata(&self) -> serde_json::Value {
        serde_json::json!({
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
        })
    }
}

fn routes(cfg: &mut web::ServiceConfig, state: &web::Data<Issuer>) {
    let mut metadata_paths = vec![
        "/.well-known/openid-configuration".to_owned(),
        "/.well-known/oauth-authorization-server".to_owned(),
    ];
    let mut jwks_paths = vec!["/jwks.json".to_owned()];
    let p = &state.path;
    // An issuer with a path (behind a path-routing ingress): the RFC 8414 inserted and
    // the OIDC appended locations, and the jwks_uri under that path.
    if !p.is_empty() && !p.contains(['{', '}']) {
        metadata_paths.push(format!("/.well-known/openid-configuration{p}"));
        metadata_paths.push(format!("/.well-known/oauth-authorization-server{p}"));
        metadata_paths.push(format!("{p}/.well-known/openid-configuration"));
        metadata_paths.push(format!("{p}/.well-known/oauth-authorization-server"));
        jwks_paths.push(format!("{p}/jwks.json"));
    }
    for path in metadata_paths {
        cfg.route(&path, web::get().to(metadata));
    }
    for path in jwks_paths {
        cfg.route(&path, web::get().to(jwks));
    }
}

fn cacheable_json(body: &serde_json::Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CACHE_CONTROL,
            format!("public, max-age={METADATA_MAX_AGE_SECS}"),
        ))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .json(body)
}

async fn metadata(state: web::Data<Issuer>) -> HttpResponse {
    cacheable_json(&state.metadata())
}

async fn jwks(state: web::Data<Issuer>) -> HttpResponse {
    cacheable_json(&state.jwks)
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Entry points for the cargo-fuzz targets in `fuzz/`, not an API: the checks of
/// registration bodies and client metadata documents, without a store or a network.
#[doc(hidden)]
pub mod fuzzing {
    use serde_json::Value;

    use crate::clients::metadata::{self, Origin};
    use crate::clients::{ClientError, ClientRecord};

    /// What `POST /register` makes of a parsed body (before storing it).
    pub fn registration(meta: &Value, scopes: &[String]) -> Result<ClientRecord, ClientError> {
        record(meta, Origin::Registration, scopes, String::new())
    }

    /// What a fetched client metadata document for `client_id` becomes once it passed
    /// the document checks of `clients::cimd`.
    pub fn metadata_document(client_id: &str, doc: &Value, scopes: &[String]) -> Result<ClientRecord, ClientError> {
        record(doc, Origin::MetadataDocument, scopes, client_id.to_owned())
    }

    pub fn check_redirect_uri(uri: &str) -> Result<(), String> {
        metadata::check_redirect_uri(uri)
    }

    fn record(meta: &Value, origin: Origin, scopes: &[String], client_id: String) -> Result<ClientRecord, ClientError> {
        let v = metadata::validate(meta, origin, scopes)?;
        Ok(ClientRecord {
            client_id,
            client_secret_hash: None,
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
            created_at: 0,
            last_used_at: 0,
            metadata_document: origin == Origin::MetadataDocument,
            machine: false,
            introspect: false,
        })
    }
}
