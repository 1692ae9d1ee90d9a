//! `bench`: the load generators behind `bench/run.sh`, and the in-process
//! rmcp baseline server (`rmcp_inproc`).
//!
//! This library is the small MCP Streamable HTTP client both generators share:
//! one HTTP/1.1 connection per virtual client (hyper's connection API, no pool,
//! so the generator adds as little as it can), a sessionful handshake
//! (`initialize` + `notifications/initialized`), `tools/call add` with the sum
//! checked, and the standalone GET stream. It also reads a process's RSS from
//! `/proc`. It never starts or stops servers; `bench/run.sh` does that.
#![forbid(unsafe_code)]

pub mod client;
pub mod rss;
pub mod stats;

/// The caller the in-process baselines serve, as the cluster's worker serves the
/// principal a gateway verified: the tools decide on it in both, so the ratios compare
/// like with like.
pub fn inproc_caller() -> proto::Principal {
    proto::Principal {
        iss: "http://bench.invalid".into(),
        sub: "bench".into(),
        ..Default::default()
    }
}
