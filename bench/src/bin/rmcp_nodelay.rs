//! `rmcp_nodelay`: the in-process rmcp baseline of `rmcp_inproc`, with
//! `TCP_NODELAY` set on every accepted connection.
//!
//! `rmcp_inproc` leaves Nagle's algorithm on. rmcp answers a sessionful POST
//! with an SSE stream written in several small pieces (head, priming event,
//! message, end), so each answer waits for the client's delayed ACK, about
//! 40 ms on Linux loopback. That measures the kernel, not rmcp, so
//! `bench/run.sh` uses this binary as the in-process baseline and reports
//! `rmcp_inproc` beside it. Everything else matches `rmcp_inproc`: the same
//! `tools::McpServer` (default profile), `LocalSessionManager`, SSE keep-alive
//! and retry, hyper HTTP/1.1.
//!
//! ```text
//! rmcp_nodelay --listen 127.0.0.1:8080   # prints http://127.0.0.1:8080/mcp
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
/// How long open connections get to finish after Ctrl-C / SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// SSE keep-alive comment interval (as `rmcp_inproc`).
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// `retry:` hint in SSE priming events (as `rmcp_inproc`).
const SSE_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Parser)]
#[command(about = "rmcp_inproc with TCP_NODELAY: the in-process baseline of bench/run.sh")]
struct Config {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, Infallible>;
type McpService = StreamableHttpService<McpServer, LocalSessionManager>;

fn main() -> std::process::ExitCode {
    let config = match Config::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                std::process::ExitCode::from(64)
            } else {
                std::process::ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rmcp_nodelay: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rmcp_nodelay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
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

async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    println!("http://{local}{MCP_PATH}");

    let cancel = CancellationToken::new();
    let hub = ListenHub::default();
    let service: McpService = StreamableHttpService::new(
        move || Ok(McpServer::new(Profile::Default, Some(bench::inproc_caller())).with_listen_hub(hub.clone())),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .with_sse_keep_alive(Some(SSE_KEEP_ALIVE))
            .with_sse_retry(Some(SSE_RETRY))
            .with_cancellation_token(cancel.child_token()),
    );

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        // The one difference from rmcp_inproc.
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let handler = hyper::service::service_fn(move |req: Request<Incoming>| {
                let service = service.clone();
                async move {
                    Ok::<_, Infallible>(if req.uri().path() == MCP_PATH {
                        service.handle(req).await
                    } else {
                        not_found()
                    })
                }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), handler);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    cancel.cancel();
    if tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        connections.shutdown().await;
    }
    Ok(())
}

fn not_found() -> Response<Body> {
    use http_body_util::BodyExt as _;
    let mut response = Response::new(http_body_util::Full::new(bytes::Bytes::new()).boxed());
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}
