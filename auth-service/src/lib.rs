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
//! [`run`] starts it; [`server::bind_oauth`] binds it on a given listener (tests).
//! A development key file (`AUTH_DEV_KEY_FILE`, [`key`]) only adds a published key
//! that `mint-token` ([`mint`]) signs with; there is no second server.
//!
//! It must never log a token, a password, a secret or a private key, and never
//! serve the private half of a key.
#![forbid(unsafe_code)]

pub mod claims;
pub mod clients;
pub mod config;
pub mod crypto;
pub mod errors;
pub mod flow;
pub mod grants;
pub mod key;
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

pub use config::{Cli, Command, Config, ConfigError, MintArgs, OAuthConfig, ServeArgs};
pub use key::{KeyError, SigningKey};

/// Worker threads of the public listener.
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
        Some(key::load_or_generate(&config.dev_key_file)?)
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

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Entry points for the cargo-fuzz targets in `fuzz/`, not an API: what registration
/// makes of a body, without a store or a network.
#[doc(hidden)]
pub mod fuzzing {
    use serde_json::Value;

    use crate::clients::metadata::{self, Origin};
    use crate::clients::{ClientError, ClientRecord};

    /// What `POST /register` makes of a parsed body (before a secret is issued and
    /// it is stored).
    pub fn registration(meta: &Value, scopes: &[String]) -> Result<ClientRecord, ClientError> {
        let v = metadata::validate(meta, Origin::Registration, scopes)?;
        Ok(ClientRecord::from_validated(String::new(), None, v, 0, false))
    }

    pub fn check_redirect_uri(uri: &str) -> Result<(), String> {
        metadata::check_redirect_uri(uri)
    }
}
