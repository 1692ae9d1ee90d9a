//! Every metric of the gateway, registered on one `prometheus::Registry`.
//! Labels are bounded: route patterns (`oauth_forward` for every forwarded OAuth
//! path), known MCP method names, status codes.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// MCP methods reported by name; anything else is `other`.
const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
];

pub fn method_label(method: Option<&str>) -> &'static str {
    match method {
        None => "response",
        Some(m) => KNOWN_METHODS.iter().find(|k| **k == m).copied().unwrap_or("other"),
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub nats_rtt: HistogramVec,
    pub sse_streams: IntGaugeVec,
    pub auth_failures: IntCounterVec,
    pub sessions_opened: IntGauge,
    /// Revoked grants and tokens this gateway currently refuses.
    pub revocations_held: IntGauge,
    /// Requests whose worker was declared dead before answering, by what followed.
    pub worker_gone: IntCounterVec,
    /// Requests shed for overload (503, not run), by where: `gateway` (its
    /// in-flight bound), `streams` (an SSE stream over `GATEWAY_MAX_STREAMS`) or
    /// `worker` (the worker refused it at capacity).
    pub shed: IntCounterVec,
    /// Requests admitted and not yet answered (`GATEWAY_MAX_INFLIGHT` bounds it).
    pub in_flight: IntGauge,
    /// Live session events received on the shared `mcp.live.*` subscriptions, by
    /// whether a stream of this gateway held the session.
    pub live_events: IntCounterVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "mcp_gateway_requests_total",
                    "HTTP requests by route, MCP method and status",
                ),
                &["route", "mcp_method", "status"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new("mcp_gateway_request_duration_seconds", "time to the response head").buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ]),
                &["route", "mcp_method"],
            )?,
            nats_rtt: HistogramVec::new(
                HistogramOpts::new(
                    "mcp_gateway_nats_roundtrip_seconds",
                    "envelope sent to worker ack received",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
                ]),
                &["kind"],
            )?,
            sse_streams: IntGaugeVec::new(
                Opts::new("mcp_gateway_sse_streams", "open SSE streams by kind"),
                &["kind"],
            )?,
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "mcp_gateway_auth_failures_total",
                    "rejected bearer tokens by error code",
                ),
                &["code"],
            )?,
            sessions_opened: IntGauge::new(
                "mcp_gateway_sessions_opened_total",
                "sessions opened through this gateway",
            )?,
            revocations_held: IntGauge::new(
                "mcp_gateway_revocations_held",
                "revoked grants and access tokens known to this gateway and not yet expired",
            )?,
            worker_gone: IntCounterVec::new(
                Opts::new(
                    "mcp_gateway_worker_gone_total",
                    "requests whose worker died before answering, by outcome (retried, failed)",
                ),
                &["outcome"],
            )?,
            shed: IntCounterVec::new(
                Opts::new(
                    "mcp_gateway_requests_shed_total",
                    "requests shed for overload with 503 and Retry-After, not run, by where (gateway, streams, worker)",
                ),
                &["by"],
            )?,
            in_flight: IntGauge::new(
                "mcp_gateway_requests_in_flight",
                "requests admitted and not yet answered (bounded by GATEWAY_MAX_INFLIGHT)",
            )?,
            live_events: IntCounterVec::new(
                Opts::new(
                    "mcp_gateway_live_events_total",
                    "session events received live, by outcome (delivered to a stream of this gateway, not_held)",
                ),
                &["outcome"],
            )?,
        };
        for by in ["gateway", "streams", "worker"] {
            m.shed.with_label_values(&[by]);
        }
        for outcome in ["delivered", "not_held"] {
            m.live_events.with_label_values(&[outcome]);
        }
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.nats_rtt.clone()))?;
        registry.register(Box::new(m.sse_streams.clone()))?;
        registry.register(Box::new(m.auth_failures.clone()))?;
        registry.register(Box::new(m.sessions_opened.clone()))?;
        registry.register(Box::new(m.revocations_held.clone()))?;
        registry.register(Box::new(m.worker_gone.clone()))?;
        registry.register(Box::new(m.shed.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.live_events.clone()))?;
        Ok(m)
    }
}

/// Keeps an SSE-stream gauge up while alive.
pub struct StreamGuard(IntGauge, Option<crate::limits::Admitted>);

impl StreamGuard {
    pub fn new(metrics: &Metrics, kind: &str) -> Self {
        let g = metrics.sse_streams.with_label_values(&[kind]);
        g.inc();
        Self(g, None)
    }

    /// The stream also holds `slot`, its place under `GATEWAY_MAX_STREAMS`.
    pub fn holding(mut self, slot: crate::limits::Admitted) -> Self {
        self.1 = Some(slot);
        self
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
