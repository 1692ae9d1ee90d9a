//! gateway: the edge of mcp-cluster.
//!
//! It holds client connections — Streamable HTTP at `/mcp` ([`mcp`]) and the
//! legacy HTTP+SSE transport at `/sse` + `/messages` ([`legacy`]) — checks
//! Host/Origin ([`guard`]) and bearer tokens ([`auth`], honouring the
//! auth-service's revocations, [`revocations`]), and relays every message to the
//! worker that owns its session over NATS ([`relay`]). With an auth upstream set
//! it also forwards the auth-service's public paths ([`forward`]).
//!
//! The gateway keeps no session state: any replica serves any request of any
//! session. It never runs MCP handlers and never sees a worker's memory; it
//! never relays an MCP message without a validated principal (the forwarded
//! OAuth paths carry no principal: the auth-service authenticates those).
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod errors;
pub mod forward;
pub mod guard;
pub mod legacy;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod relay;
pub mod revocations;
pub mod sse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpResponse, web};
use anyhow::Context as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;

use crate::auth::{AuthConfig, Validator};
use crate::errors::{Kind, McpError};
use crate::mcp::AppState;

/// Connections the kernel queues for the gateway while it accepts (a burst of new
/// clients); capped again by the kernel's `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;
/// What actix-web's HttpServer gives a client to send its request head, and to
/// close after a shutdown began (its defaults).
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A started gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    /// The HTTP/2-without-TLS listener (`GATEWAY_H2C_LISTEN`), when configured.
    pub h2c_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub gateway_id: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Gateway {
    /// Drain: refuse new work, end SSE streams with a reconnect hint, wait for
    /// in-flight requests up to the drain timeout, then stop.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Run until `shutdown` resolves, then drain.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let gateway = start(config).await?;
    shutdown.await;
    gateway.shutdown().await;
    Ok(())
}

async fn not_found() -> HttpResponse {
    actix_web::ResponseError::error_response(&McpError::new(Kind::InvalidRequest).detail("no such endpoint"))
        .customize_status(actix_web::http::StatusCode::NOT_FOUND)
}

trait Customize {
    fn customize_status(self, status: actix_web::http::StatusCode) -> HttpResponse;
}

impl Customize for HttpResponse {
    fn customize_status(mut self, status: actix_web::http::StatusCode) -> HttpResponse {
        *self.status_mut() = status;
        self
    }
}

async fn mcp_method_not_allowed() -> HttpResponse {
    actix_web::ResponseError::error_response(&McpError::new(Kind::MethodNotAllowed).allow("GET, POST, DELETE"))
}

/// Connect to NATS, bind the public and admin servers, serve.
pub async fn start(config: Config) -> anyhow::Result<Gateway> {
    config.validate()?;
    let gateway_id = config
        .gateway_id
        .clone()
        .unwrap_or_else(|| format!("gw-{}", uuid::Uuid::new_v4().simple()));
    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::register(&registry)?;
    let nats_metrics = telemetry::NatsMetrics::register(&registry)?;
    let connect = {
        let nats_metrics = nats_metrics.clone();
        let url = config.nats_url.clone();
        let ack_timeout = config.ack_timeout();
        move |name: String| {
            let nats_metrics = nats_metrics.clone();
            let url = url.clone();
            async move {
                let nats = nats_metrics
                    .follow(async_nats::ConnectOptions::new())
                    .name(name)
                    .request_timeout(Some(ack_timeout))
                    .connect(proto::nats::servers(&url))
                    .await
                    .with_context(|| format!("cannot connect to NATS at {url}"))?;
                nats_metrics.connected();
                anyhow::Ok(nats)
            }
        }
    };
    let nats = connect(format!("gateway {gateway_id}")).await?;
    let start_relay = {
        let gateway_id = gateway_id.clone();
        let ack_timeout = config.ack_timeout();
        let retry = Duration::from_millis(config.no_responders_retry_ms);
        let metrics = metrics.clone();
        move |nats: async_nats::Client, thread: Option<usize>| {
            let id = match thread {
                Some(n) => format!("{gateway_id}-{n}"),
                None => gateway_id.clone(),
            };
            relay::Relay::start(nats, id, ack_timeout, retry, metrics.clone())
        }
    };
    let (relay, relay_task) = start_relay(nats.clone(), None).await?;
    let auth_config = AuthConfig {
        allowed_issuers: config
            .allowed_issuers
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        resource: config.resource_identifier.clone(),
        resource_metadata_url: config.resource_metadata_url(),
        jwks_cache_ttl: Duration::from_secs(config.jwks_cache_ttl_secs),
        required_scopes: config
            .required_scopes
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect(),
        authorization_servers: config
            .authorization_servers
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect(),
        issuers_without_typ: config
            .issuers_without_typ
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
    };
    let metadata = auth::protected_resource_metadata(&auth_config);
    let legacy_metadata = web::Data::new(LegacyMetadata(auth::legacy_protected_resource_metadata(&auth_config)));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let validator = Validator::new(auth_config, http);
    let revoked = validator.revocations().clone();
    let policy = guard::OriginPolicy::new(&config.allowed_hosts, &config.allowed_origins);
    let forwarder = match config.auth_upstream()? {
        Some(upstream) => {
            info!(%upstream, "forwarding the auth-service's public paths");
            Some(web::Data::new(
                forward::Forwarder::new(upstream, config.max_body_bytes, policy.clone(), metrics.clone())?
                    .with_trusted_proxies(limits::TrustedProxies::parse(&config.trusted_proxies).unwrap_or_default()),
            ))
        }
        None => None,
    };
    let drain = CancellationToken::new();
    let state = AppState {
        relay,
        validator,
        metrics: metrics.clone(),
        policy,
        drain: drain.clone(),
        max_body: config.max_body_bytes,
        request_timeout: config.request_timeout(),
        keepalive: config.sse_keepalive(),
        body_timeout: Duration::from_secs(config.body_read_timeout_secs),
        sse_buffer: config.sse_buffer_bytes,
        legacy_resume_grace: std::time::Duration::from_secs(config.legacy_resume_grace_secs),
        trusted_proxies: limits::TrustedProxies::parse(&config.trusted_proxies).unwrap_or_default(),
        unauthenticated: Arc::new(limits::RateLimiter::new(config.unauth_rate)),
        inflight: limits::InflightLimiter::new(config.max_inflight_per_principal),
        admission: limits::Admission::new(config.max_inflight, metrics.in_flight.clone()),
        streams: limits::Admission::unmetered(config.max_streams),
    };
    let metadata = web::Data::new(metadata);
    let mcp_path = config.resource_path();
    let mcp_path = if mcp_path == "/" { "/mcp".to_owned() } else { mcp_path };
    let metadata_path = format!("/.well-known/oauth-protected-resource{mcp_path}");
    let workers = if config.http_workers == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    } else {
        config.http_workers
    };
    let slow_reader = Duration::from_secs(config.slow_reader_timeout_secs);
    // Each HTTP worker thread gets its own NATS connection, whose tasks run on that
    // thread: a request and its answer never cross threads inside the gateway (a
    // shared connection lives on the runtime's pool and costs two thread wake-ups
    // per call, a third of the gateway's CPU per call in `bench/profile.sh`).
    let threads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let id = gateway_id.clone();
    let app = move || {
        let forwarder = forwarder.clone();
        let (base, connect, start_relay, threads, gateway_id) = (
            state.clone(),
            connect.clone(),
            start_relay.clone(),
            threads.clone(),
            id.clone(),
        );
        App::new()
            .data_factory(move || {
                let (base, connect, start_relay) = (base.clone(), connect.clone(), start_relay.clone());
                let n = threads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let name = format!("gateway {gateway_id} http-{n}");
                async move {
                    let nats = connect(name).await?;
                    // Ends with the connection, when the worker thread stops.
                    let (relay, _task) = start_relay(nats, Some(n)).await?;
                    anyhow::Ok(AppState { relay, ..base })
                }
            })
            .app_data(metadata.clone())
            .app_data(legacy_metadata.clone())
            .configure(|cfg| {
                if let Some(forwarder) = forwarder {
                    cfg.app_data(forwarder);
                    forward::routes(cfg);
                }
            })
            .route(&mcp_path, web::post().to(mcp::post))
            .route(&mcp_path, web::get().to(mcp::get))
            .route(&mcp_path, web::delete().to(mcp::delete))
            .route(&mcp_path, web::route().to(mcp_method_not_allowed))
            .route("/sse", web::get().to(legacy::open))
            .route("/messages", web::post().to(legacy::message))
            .route(
                "/.well-known/oauth-protected-resource",
                web::get().to(resource_metadata),
            )
            .route(&metadata_path, web::get().to(resource_metadata))
            .route(
                "/.well-known/oauth-protected-resource/sse",
                web::get().to(legacy_resource_metadata),
            )
            .route(
                "/.well-known/oauth-protected-resource/messages",
                web::get().to(legacy_resource_metadata),
            )
            .default_service(web::to(not_found))
    };
    // What actix-web's HttpServer builds for a listener, less its HTTP/2 detection:
    // HttpServer's connection type holds an HTTP/2 dispatcher inline, which made every
    // HTTP/1.1 connection (an idle SSE stream) 1.8 KiB larger once HTTP/2 was compiled
    // in (bench/README.md, "Fleet scale"). HTTP/1.1 connections get actix-http's
    // HTTP/1-only service; HTTP/2 has a port of its own (GATEWAY_H2C_LISTEN).
    macro_rules! http_service {
        ($addr:expr, $shutdown:expr) => {{
            let shutdown = $shutdown.clone();
            actix_http::HttpService::build()
                .graceful_shutdown_signal(move || {
                    let shutdown = shutdown.clone();
                    async move { shutdown.notified().await }
                })
                .keep_alive(actix_http::KeepAlive::default())
                .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
                .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
                .local_addr($addr)
                // SSE answers go out in several writes; without this the kernel may hold
                // the last one for the client's delayed ACK (~40 ms).
                .tcp_nodelay(true)
                .on_connect_ext(move |io: &actix_rt::net::TcpStream, _| close_slow_readers(io, slow_reader))
        }};
    }
    macro_rules! app_service {
        ($app:expr) => {
            actix_service::map_config(
                actix_service::ServiceFactoryExt::map_err(
                    actix_service::IntoServiceFactory::into_factory($app()),
                    |err: actix_web::Error| err.error_response(),
                ),
                |_| actix_web::dev::AppConfig::default(),
            )
        };
    }
    let per_thread = config.max_connections.div_ceil(workers);
    let mut servers = actix_server::Server::build()
        .workers(workers)
        // Per HTTP worker thread in actix: the gateway's total split evenly.
        .max_concurrent_connections(per_thread)
        .backlog(LISTEN_BACKLOG)
        .disable_signals()
        .shutdown_timeout(config.drain_timeout_secs);
    let shutdown = servers.graceful_shutdown_signal();
    let listener = listen(config.listen).with_context(|| format!("cannot bind {}", config.listen))?;
    let addr = listener.local_addr()?;
    {
        let (app, shutdown) = (app.clone(), shutdown.clone());
        servers = servers.listen("mcp-http1", listener, move || {
            http_service!(addr, shutdown).h1(app_service!(app)).tcp()
        })?;
    }
    let h2c_addr = match config.h2c_listen {
        None => None,
        Some(want) => {
            let listener = listen(want).with_context(|| format!("cannot bind {want}"))?;
            let h2c_addr = listener.local_addr()?;
            servers = servers.listen("mcp-h2c", listener, move || {
                http_service!(h2c_addr, shutdown).h2(app_service!(app)).tcp()
            })?;
            Some(h2c_addr)
        }
    };
    let server = servers.run();
    let server_handle = server.handle();
    let server_task = tokio::spawn(server);

    let probe_nats = nats.clone();
    let probe_drain = drain.clone();
    let probe_revoked = revoked.clone();
    let admin = telemetry::admin_server(
        config.admin_listen,
        registry,
        // Not ready before the revocations made before this gateway started are
        // known: a fresh gateway must never accept a revoked token.
        Arc::new(move || {
            !probe_drain.is_cancelled()
                && matches!(probe_nats.connection_state(), async_nats::connection::State::Connected)
                && probe_revoked.is_synced()
        }),
    )?;
    let admin_addr = admin.addr;
    let admin_handle = admin.handle;
    let admin_task = tokio::spawn(admin.server);
    // Started once nothing can fail any more, so it is always joined below.
    let stop_revocations = CancellationToken::new();
    let revocation_task = revocations::spawn(
        async_nats::jetstream::new(nats.clone()),
        revoked,
        metrics.revocations_held.clone(),
        stop_revocations.clone(),
        config.nats_replicas,
    );
    info!(%gateway_id, %addr, h2c_addr = ?h2c_addr, %admin_addr, "gateway listening");

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let id = gateway_id.clone();
    let task = tokio::spawn(async move {
        let _ = stop_rx.await;
        info!(gateway_id = %id, "draining");
        drain.cancel();
        server_handle.stop(true).await;
        if let Err(err) = server_task.await {
            warn!(error = %err, "public server task failed");
        }
        // Bounded: with NATS gone a flush would wait for a reconnect.
        let _ = tokio::time::timeout(Duration::from_secs(1), nats.flush()).await;
        relay_task.abort();
        stop_revocations.cancel();
        if let Err(err) = revocation_task.await {
            warn!(error = %err, "revocation watch task failed");
        }
        admin_handle.stop(true).await;
        let _ = admin_task.await;
        info!(gateway_id = %id, "stopped");
    });
    Ok(Gateway {
        addr,
        h2c_addr,
        admin_addr,
        gateway_id,
        stop: Some(stop_tx),
        task,
    })
}

/// A client that leaves sent data unread (a full receive window) for `timeout` has
/// its connection closed by the kernel (TCP_USER_TIMEOUT also covers data held back
/// by a zero window): a stalled SSE reader holds no socket and no buffers for long.
fn close_slow_readers(tcp: &actix_rt::net::TcpStream, timeout: Duration) {
    if let Err(err) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(timeout)) {
        tracing::debug!(error = %err, "cannot set TCP_USER_TIMEOUT");
    }
}

/// A listening socket on `addr` (`SO_REUSEADDR`, backlog [`LISTEN_BACKLOG`]), as
/// actix-web's HttpServer makes it.
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(LISTEN_BACKLOG).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// The protected-resource metadata of the legacy endpoints (resource: the origin).
struct LegacyMetadata(serde_json::Value);

async fn legacy_resource_metadata(metadata: web::Data<LegacyMetadata>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "public, max-age=300"))
        .json(&metadata.0)
}

async fn resource_metadata(metadata: web::Data<serde_json::Value>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "public, max-age=300"))
        .json(metadata.get_ref())
}
