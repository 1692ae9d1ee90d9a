//! Metric names of the auth-service, all in one place, registered in the process's
//! own [`prometheus::Registry`] (never the global default one).

use prometheus::{IntCounterVec, Opts, Registry};

pub const HTTP_REQUESTS_TOTAL: &str = "auth_http_requests_total";

/// The service's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    /// Requests on the public listener by route pattern (never the raw path) and status.
    pub http_requests: IntCounterVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let http_requests = IntCounterVec::new(
            Opts::new(
                HTTP_REQUESTS_TOTAL,
                "HTTP requests served by the auth-service, by route pattern and status.",
            ),
            &["route", "status"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        Ok(Self { http_requests })
    }
}
