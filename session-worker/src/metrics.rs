//! Every metric of the worker, registered on one `prometheus::Registry`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    /// Session actors alive in this process.
    pub actors: IntGauge,
    pub sessions_opened: IntCounter,
    pub sessions_restored: IntCounter,
    pub sessions_closed: IntCounter,
    /// Envelopes handled, by body kind and outcome.
    pub envelopes: IntCounterVec,
    pub owned_shards: IntGauge,
    pub stateless_inflight: IntGauge,
    /// Server→client messages published, by route.
    pub outbound: IntCounterVec,
    /// MCP tasks running in this worker (sampled every lease round).
    pub tasks_running: IntGauge,
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            actors: IntGauge::new("mcp_worker_actors", "session actors alive in this worker")?,
            sessions_opened: IntCounter::new("mcp_worker_sessions_opened_total", "sessions created by initialize")?,
            sessions_restored: IntCounter::new(
                "mcp_worker_sessions_restored_total",
                "sessions rehydrated from the session store",
            )?,
            sessions_closed: IntCounter::new("mcp_worker_sessions_closed_total", "sessions ended by DELETE")?,
            envelopes: IntCounterVec::new(
                Opts::new("mcp_worker_envelopes_total", "envelopes handled"),
                &["kind", "outcome"],
            )?,
            owned_shards: IntGauge::new("mcp_worker_owned_shards", "shards leased by this worker")?,
            stateless_inflight: IntGauge::new("mcp_worker_stateless_inflight", "stateless requests being served")?,
            outbound: IntCounterVec::new(
                Opts::new("mcp_worker_outbound_messages_total", "server to client messages"),
                &["route"],
            )?,
            tasks_running: IntGauge::new("mcp_worker_tasks_running", "MCP tasks running in this worker")?,
        };
        registry.register(Box::new(m.actors.clone()))?;
        registry.register(Box::new(m.sessions_opened.clone()))?;
        registry.register(Box::new(m.sessions_restored.clone()))?;
        registry.register(Box::new(m.sessions_closed.clone()))?;
        registry.register(Box::new(m.envelopes.clone()))?;
        registry.register(Box::new(m.owned_shards.clone()))?;
        registry.register(Box::new(m.stateless_inflight.clone()))?;
        registry.register(Box::new(m.outbound.clone()))?;
        registry.register(Box::new(m.tasks_running.clone()))?;
        Ok(m)
    }
}

/// Decrements a gauge when dropped, so errors cannot make it drift.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
