//! What every mcp-cluster binary does the same way: JSON logs through
//! `tracing`, OTLP trace export ([`otel`]), the admin HTTP server (`/healthz`, `/readyz`, `/metrics`) and
//! the shutdown signal (SIGTERM or SIGINT).
//!
//! It holds no global state besides the tracing subscriber that `main` installs.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{App, HttpResponse, HttpServer, dev::ServerHandle, web};
use prometheus::{Encoder, TextEncoder};

pub mod otel;

/// Install JSON logging (`RUST_LOG` filters, default `info`) and, when the `OTEL_*` variables ask
/// for it, OTLP trace export of the spans under `service`'s name (see [`otel`]).
/// Call before starting a runtime; keep the returned value until the service ends
/// (dropping it flushes the spans still buffered).
pub fn init(service: &str) -> otel::Tracing {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_writer(std::io::stderr);
    let (provider, problem) = if otel::wanted() {
        match otel::provider(service) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let traces = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(p.tracer(service.to_owned()))
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    if let Some(problem) = problem {
        tracing::warn!(error = %problem, "traces are not exported");
    }
    if installed && provider.is_some() {
        otel::set_enabled();
        tracing::info!("exporting traces over OTLP");
    }
    otel::Tracing { provider }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Readiness probe supplied by the service.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    registry: prometheus::Registry,
    ready: Readiness,
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::Data<AdminState>) -> HttpResponse {
    if (state.ready)() {
        HttpResponse::Ok().content_type("text/plain").body("ready\n")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("not ready\n")
    }
}

async fn metrics(state: web::Data<AdminState>) -> HttpResponse {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut buf) {
        Ok(()) => HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(buf),
        Err(err) => HttpResponse::InternalServerError().body(err.to_string()),
    }
}

/// A bound admin server: run `server` (e.g. spawn it), stop it with `handle`.
pub struct Admin {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub server: actix_web::dev::Server,
}

/// Bind the admin server on `listen` (port 0 picks one).
pub fn admin_server(listen: SocketAddr, registry: prometheus::Registry, ready: Readiness) -> std::io::Result<Admin> {
    let data = web::Data::new(AdminState { registry, ready });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
    })
    .workers(1)
    .disable_signals()
    .bind(listen)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("admin server bound no address"))?;
    let server = server.run();
    Ok(Admin {
        addr,
        handle: server.handle(),
        server,
    })
}

/// Run a service's future on an actix system backed by a multi-threaded tokio
/// runtime (actors and HTTP workers get their own threads; tasks spawned with
/// `tokio::spawn` use the pool). Errors are printed as `program: error`, exit 1;
/// `tracing` (from [`init`]) is flushed first.
pub fn run_system<E: std::fmt::Display>(
    program: &str,
    tracing: otel::Tracing,
    service: impl std::future::Future<Output = Result<(), E>>,
) {
    let system = actix_web::rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|err| {
                eprintln!("cannot start the runtime: {err}");
                std::process::exit(70)
            })
    });
    let outcome = system.block_on(service);
    drop(tracing);
    if let Err(err) = outcome {
        eprintln!("{program}: {err}");
        std::process::exit(1);
    }
}

/// Exit code for invalid configuration (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// Parse the command line and environment; on an error print one line naming
/// the problem and exit with [`EXIT_CONFIG`] (help and version exit 0).
pub fn parse_config<T: clap::Parser>(program: &str) -> T {
    use clap::error::ErrorKind;
    match T::try_parse() {
        Ok(config) => config,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("{program}: {}", one_line(&e.to_string()));
            std::process::exit(EXIT_CONFIG)
        }
    }
}

/// clap's message up to its usage hint, on one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn clap_errors_fit_on_one_line() {
        let msg = "error: the following required arguments were not provided:\n  --allowed-issuers <ALLOWED_ISSUERS>\n\nUsage: gateway --allowed-issuers <ALLOWED_ISSUERS>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            super::one_line(msg),
            "error: the following required arguments were not provided: --allowed-issuers <ALLOWED_ISSUERS>"
        );
    }
}

/// Name of the gauge that is 1 while a service is connected to NATS, 0 while not.
pub const NATS_CONNECTED: &str = "mcp_nats_connected";
/// Name of the counter of a service's NATS disconnections.
pub const NATS_DISCONNECTS_TOTAL: &str = "mcp_nats_disconnects_total";

/// A service's NATS connection as metrics, under the same names in every service
/// ([`NATS_CONNECTED`], [`NATS_DISCONNECTS_TOTAL`]; Prometheus tells them apart by
/// job), for the `NatsDisconnected` alert.
#[derive(Clone)]
pub struct NatsMetrics {
    connected: prometheus::IntGauge,
    disconnects: prometheus::IntCounter,
}

impl NatsMetrics {
    pub fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let connected = prometheus::IntGauge::new(NATS_CONNECTED, "1 while connected to NATS, 0 while not")?;
        let disconnects = prometheus::IntCounter::new(NATS_DISCONNECTS_TOTAL, "times the NATS connection was lost")?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(disconnects.clone()))?;
        Ok(Self { connected, disconnects })
    }

    /// `options` with a callback that follows the connection's state (async-nats
    /// still logs the events itself).
    pub fn follow(&self, options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        let metrics = self.clone();
        options.event_callback(move |event| {
            metrics.observe(&event);
            async {}
        })
    }

    /// Count one connection event.
    pub fn observe(&self, event: &async_nats::Event) {
        match event {
            async_nats::Event::Connected => self.connected.set(1),
            async_nats::Event::Disconnected => {
                self.connected.set(0);
                self.disconnects.inc();
            }
            _ => {}
        }
    }

    /// Mark the connection up (once `connect` returned).
    pub fn connected(&self) {
        self.connected.set(1);
    }
}

#[cfg(test)]
mod nats_metrics_tests {
    use super::*;

    #[test]
    fn follows_connects_and_disconnects() {
        let registry = prometheus::Registry::new();
        let m = NatsMetrics::register(&registry).expect("register");
        m.observe(&async_nats::Event::Connected);
        assert_eq!(m.connected.get(), 1);
        m.observe(&async_nats::Event::Disconnected);
        m.observe(&async_nats::Event::LameDuckMode);
        assert_eq!((m.connected.get(), m.disconnects.get()), (0, 1));
        m.observe(&async_nats::Event::Connected);
        assert_eq!((m.connected.get(), m.disconnects.get()), (1, 1));
    }
}
