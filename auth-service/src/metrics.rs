//! Metric names of the auth-service, all in one place, registered in the process's
//! own [`prometheus::Registry`] (never the global default one). Labels are small
//! fixed sets (route patterns, OAuth error codes, grant types), never ids.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

pub const HTTP_REQUESTS_TOTAL: &str = "auth_http_requests_total";
pub const AUTHORIZE_TOTAL: &str = "auth_authorize_total";
pub const LOGINS_TOTAL: &str = "auth_logins_total";
pub const TOKEN_REQUESTS_TOTAL: &str = "auth_token_requests_total";
pub const UPSTREAM_SECONDS: &str = "auth_upstream_request_duration_seconds";
pub const VAULT_REQUESTS_TOTAL: &str = "auth_vault_requests_total";
pub const VAULT_REFRESHES_TOTAL: &str = "auth_vault_refreshes_total";
pub const REFRESH_REUSE_TOTAL: &str = "auth_refresh_reuse_total";

/// The service's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    /// Requests on the public listener by route pattern (never the raw path) and status.
    pub http_requests: IntCounterVec,
    /// Authorization requests by outcome (`code_issued` or the OAuth error code).
    pub authorize: IntCounterVec,
    /// Logins by outcome (`ok`, `bad_credentials`, `upstream_denied`, ...).
    pub logins: IntCounterVec,
    /// Token, revocation and introspection requests by grant type/endpoint and outcome.
    pub token_requests: IntCounterVec,
    /// Latency of the upstream identity provider (code exchange).
    pub upstream: Histogram,
    /// Vault requests by answer kind.
    pub vault: IntCounterVec,
    /// Upstream refreshes the vault made, by outcome (`ok`, `invalid_grant`, `unavailable`).
    pub vault_refreshes: IntCounterVec,
    /// Refresh tokens presented again after their rotation (RFC 9700 §4.14.2): each
    /// revoked its grant. A stolen token, or a client that lost a response.
    pub refresh_reuse: IntCounter,
}

/// Known label values, so a client cannot create series with arbitrary strings.
fn bounded(v: &str) -> &str {
    const KNOWN: &[&str] = &[
        "ok",
        "code_issued",
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "invalid_scope",
        "invalid_target",
        "unauthorized_client",
        "unsupported_grant_type",
        "unsupported_response_type",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
        "bad_credentials",
        "upstream_denied",
        "upstream_unavailable",
        "upstream_rejected",
        "authorization_code",
        "refresh_token",
        "client_credentials",
        "revoke",
        "introspect",
        "token",
        "none",
        "token_ok",
        "not_found",
        "revoked",
        "unavailable",
        "invalid_redirect_uri",
        "invalid_client_metadata",
    ];
    KNOWN.iter().find(|k| **k == v).copied().unwrap_or("other")
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let http_requests = counter(
            HTTP_REQUESTS_TOTAL,
            "HTTP requests served by the auth-service, by route pattern and status.",
            &["route", "status"],
        )?;
        let authorize = counter(AUTHORIZE_TOTAL, "Authorization requests by outcome.", &["outcome"])?;
        let logins = counter(LOGINS_TOTAL, "Upstream logins by outcome.", &["outcome"])?;
        let token_requests = counter(
            TOKEN_REQUESTS_TOTAL,
            "Token endpoint grants, revocations and introspections by kind and outcome.",
            &["grant_type", "outcome"],
        )?;
        let vault = counter(VAULT_REQUESTS_TOTAL, "Token-vault requests by answer.", &["answer"])?;
        let vault_refreshes = counter(
            VAULT_REFRESHES_TOTAL,
            "Upstream token refreshes made by the vault, by outcome.",
            &["outcome"],
        )?;
        let upstream = Histogram::with_opts(
            HistogramOpts::new(UPSTREAM_SECONDS, "Latency of identity provider code exchanges.")
                .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )?;
        registry.register(Box::new(upstream.clone()))?;
        let refresh_reuse = IntCounter::new(
            REFRESH_REUSE_TOTAL,
            "Refresh tokens used again after rotation (each revoked its grant).",
        )?;
        registry.register(Box::new(refresh_reuse.clone()))?;
        Ok(Self {
            refresh_reuse,
            http_requests,
            authorize,
            logins,
            token_requests,
            upstream,
            vault,
            vault_refreshes,
        })
    }

    pub fn authorize(&self, outcome: &str) {
        self.authorize.with_label_values(&[bounded(outcome)]).inc();
    }

    pub fn login(&self, outcome: &str) {
        self.logins.with_label_values(&[bounded(outcome)]).inc();
    }

    pub fn token(&self, grant_type: &str, outcome: &str) {
        self.token_requests
            .with_label_values(&[bounded(grant_type), bounded(outcome)])
            .inc();
    }

    pub fn upstream_latency(&self, d: Duration) {
        self.upstream.observe(d.as_secs_f64());
    }

    pub fn vault(&self, answer: &str) {
        self.vault.with_label_values(&[bounded(answer)]).inc();
    }
}
