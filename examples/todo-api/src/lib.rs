//! An example downstream API: a small Todo service that the session worker's MCP tools
//! call on the user's behalf, with the user's upstream OAuth access token. It plays
//! the PingOne seed's Todo API.
//!
//! It owns: checking the bearer token (a JWT from one of the allowed issuers, keys by
//! discovery and JWKS through `jwt-verify`, `aud` containing `API_IDENTIFIER`), the
//! `todo:read` / `todo:write` scopes, and each user's todos in the JetStream KV bucket
//! `todo_items`, kept apart by user (`iss`, `sub`). It never logs or returns a token,
//! and never reads another user's keys.
//!
//! Reading order: [`config`], [`auth`], [`store`], [`routes`], [`error`] (the one
//! table of refusals), then [`start`] below.
//!
//! Settings (flag, env, default):
//!
//! | env                     | default                        |
//! |-------------------------|--------------------------------|
//! | `TODO_API_LISTEN`       | `127.0.0.1:8791`               |
//! | `API_IDENTIFIER`        | `http://localhost:8791/todos`  |
//! | `TODO_API_ISSUERS`      | `http://127.0.0.1:8790`        |
//! | `NATS_URL`              | `nats://127.0.0.1:4222`        |
//! | `TODO_API_MAX_BYTES`    | `67108864` (64 MiB)            |
//! | `TODO_API_MAX_PER_USER` | `500`                          |
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod error;
pub mod routes;
pub mod store;

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tokio::task::JoinHandle;

pub use config::Config;

/// HTTP worker threads.
pub const HTTP_WORKERS: usize = 2;
/// How long in-flight requests may finish at shutdown before they are cut off.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for NATS to take pending writes at shutdown.
const NATS_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// A running Todo API.
pub struct TodoApi {
    /// Where it listens (the real port when the config said 0).
    pub addr: SocketAddr,
    handle: ServerHandle,
    /// The task `http-server`.
    server: JoinHandle<std::io::Result<()>>,
    nats: async_nats::Client,
}

/// Check the config, connect to NATS, open the bucket, bind, serve.
pub async fn start(config: Config) -> anyhow::Result<TodoApi> {
    config.validate()?;
    let issuers = config.allowed_issuers();
    let nats = async_nats::ConnectOptions::new()
        .name("todo-api")
        // One server, or a cluster's servers comma-separated (as the cluster's own NATS_URL).
        .connect(config.nats_url.split(',').map(str::trim).collect::<Vec<_>>())
        .await
        .context("cannot connect to NATS")?;
    let js = async_nats::jetstream::new(nats.clone());
    let store = store::Store::open(&js, config.max_bytes, config.max_per_user)
        .await
        .context("cannot open the todo store")?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(jwt_verify::FETCH_TIMEOUT)
        .build()?;
    let auth = auth::Authenticator::new(issuers.clone(), &config.api_identifier, http);
    let state = web::Data::new(routes::AppState { auth, store });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(routes::configure)
            .default_service(web::to(routes::not_found))
    })
    .workers(HTTP_WORKERS)
    .disable_signals()
    .shutdown_timeout(DRAIN_TIMEOUT.as_secs())
    .bind(config.listen)
    .with_context(|| format!("cannot bind {}", config.listen))?;
    let addr = *server.addrs().first().context("the server bound no address")?;
    let server = server.run();
    let handle = server.handle();
    let server = tokio::spawn(server);
    tracing::info!(%addr, ?issuers, audience = %config.api_identifier, "todo-api listening");
    Ok(TodoApi {
        addr,
        handle,
        server,
        nats,
    })
}

impl TodoApi {
    /// Stop accepting, let in-flight requests finish (at most [`DRAIN_TIMEOUT`]),
    /// flush NATS, and return once everything has stopped.
    pub async fn shutdown(self) {
        tracing::info!("draining");
        self.handle.stop(true).await;
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(task = "http-server", error = %err, "server failed"),
            Err(err) => tracing::warn!(task = "http-server", error = %err, "server task failed"),
        }
        let _ = tokio::time::timeout(NATS_FLUSH_TIMEOUT, self.nats.flush()).await;
        tracing::info!("stopped");
    }
}

/// Run until `shutdown` resolves, then drain.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let api = start(config).await?;
    shutdown.await;
    api.shutdown().await;
    Ok(())
}
