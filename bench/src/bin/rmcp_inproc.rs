//! `rmcp_inproc`: serves [`tools::McpServer`] in-process with rmcp's own
//! Streamable HTTP server, no NATS and no gateway.
//!
//! It is the baseline the cluster's benchmarks compare against, and it lets the
//! conformance suite run against the handler without the real gateway.
//! Sessionful revisions (2025-03-26 … 2025-11-25) get `Mcp-Session-Id`, the GET
//! stream and `Last-Event-ID` resumption from rmcp's in-memory session manager;
//! 2026-07-28 requests are served statelessly, one fresh handler per request.
//!
//! ```text
//! rmcp_inproc --listen 127.0.0.1:8080 --profile conformance
//! # MCP endpoint: http://127.0.0.1:8080/mcp
//! ```
#![forbid(unsafe_code)]

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use hyper::{Request, Response, StatusCode, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use rmcp::transport::{
    StreamableHttpServerConfig, StreamableHttpService, streamable_http_server::session::local::LocalSessionManager,
};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tools::{ListenHub, McpServer, Profile};

/// Path of the MCP endpoint.
const MCP_PATH: &str = "/mcp";
/// Longest a client may take to send request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once; further accepts wait for a free slot.
const MAX_CONNECTIONS: usize = 4096;
/// How long open connections get to finish after Ctrl-C / SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// SSE keep-alive comment interval.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// `retry:` hint in SSE priming events (SEP-1699 polling).
const SSE_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Parser)]
#[command(about = "Serve the MCP handler in-process over rmcp's Streamable HTTP server")]
struct Config {
    /// Address to listen on (loopback only unless you mean otherwise).
    #[arg(long, env = "RMCP_INPROC_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Tool profile: `default` or `conformance`.
    #[arg(long, env = "RMCP_INPROC_PROFILE", default_value = "default")]
    profile: Profile,
}

/// The body type rmcp's service answers with.
type Body = http_body_util::combinators::BoxBody<bytes::Bytes, Infallible>;

fn main() -> std::process::ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return std::process::ExitCode::from(64);
        }
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::SUCCESS;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rmcp_inproc: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, shutdown_signal())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rmcp_inproc: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    // Stdout carries only the URL, so scripts can wait for it.
    println!("http://{local}{MCP_PATH}");
    tracing::info!(%local, profile = %config.profile, "serving MCP");

    let cancel = CancellationToken::new();
    let hub = ListenHub::default();
    let profile = config.profile;
    // One process: the tasks live in its memory.
    let tasks = tools::tasks::Tasks::in_memory(tools::tasks::TaskSettings::default());
    let service = StreamableHttpService::new(
        move || {
            Ok(McpServer::new(profile, Some(bench::inproc_caller()))
                .with_listen_hub(hub.clone())
                .with_tasks(tasks.clone()))
        },
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .with_sse_keep_alive(Some(SSE_KEEP_ALIVE))
            .with_sse_retry(Some(SSE_RETRY))
            .with_cancellation_token(cancel.child_token()),
    );

    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => permit.context("connection limiter closed")?,
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let service = service.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _permit = permit;
            let handler = hyper::service::service_fn(move |req: Request<Incoming>| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(route(&service, req).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), handler);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        // Reap finished connection tasks so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }

    tracing::info!("draining connections");
    cancel.cancel();
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("drain deadline passed; closing remaining connections");
        connections.shutdown().await;
    }
    Ok(())
}

type McpService = StreamableHttpService<McpServer, LocalSessionManager>;

async fn route(service: &McpService, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == MCP_PATH {
        return service.handle(req).await;
    }
    not_found()
}

fn not_found() -> Response<Body> {
    let mut response = Response::new(empty_body());
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

fn empty_body() -> Body {
    use http_body_util::BodyExt as _;
    http_body_util::Full::new(bytes::Bytes::new()).boxed()
}
