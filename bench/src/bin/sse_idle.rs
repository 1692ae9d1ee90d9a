//! `sse_idle`: what idle standalone SSE streams cost a server's memory.
//!
//! Opens `--streams` MCP sessions (their `initialize` connections closed
//! again), then one `GET /mcp` stream per session, each on its own connection,
//! and holds them `--hold` seconds while reading their (keep-alive only)
//! bytes. With `--pid` it reads that process's VmRSS at each phase:
//!
//! - `rss_start_kib`: before anything,
//! - `rss_sessions_kib`: with the sessions open and no connection held,
//! - `rss_streams_kib`: at the end of the hold, every stream open,
//! - `rss_closed_kib`: a second after the streams were dropped,
//!
//! and reports `kib_per_stream = (rss_streams - rss_sessions) / streams`, the
//! cost of the stream alone, and `kib_per_session` for the sessions before it.
//!
//! ```text
//! sse_idle --url http://127.0.0.1:8788/mcp --token "$T" --streams 1000 --hold 5 --pid "$GATEWAY_PID"
//! ```
//! Prints one JSON line on stdout and a human summary on stderr; exits
//! non-zero if any session or stream failed or a stream ended early.
#![forbid(unsafe_code)]

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use bench::{
    client::{Session, Target},
    rss::rss_kib,
};
use clap::Parser;
use futures::{StreamExt as _, stream};
use http_body_util::BodyExt as _;
use serde::Serialize;
use tokio::task::JoinSet;

/// Time given to the server to settle (connections closed, buffers freed)
/// before an RSS reading.
const SETTLE: Duration = Duration::from_secs(1);
/// Longest one session or stream may take to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(about = "Measure what idle SSE streams cost an MCP server's memory")]
struct Config {
    /// MCP endpoint, e.g. http://127.0.0.1:8788/mcp (plain HTTP only).
    #[arg(long)]
    url: String,
    /// Bearer token sent on every request.
    #[arg(long, env = "BENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Idle streams to open (one session each).
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Seconds to hold the streams open.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Sessions or streams being opened at once.
    #[arg(long, default_value_t = 32)]
    open_concurrency: usize,
    /// Process whose VmRSS is read (the server's PID); without it no memory figures.
    #[arg(long)]
    pid: Option<u32>,
    /// Name for this run in the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Debug, Serialize)]
struct Report {
    label: String,
    url: String,
    streams: usize,
    opened: usize,
    failed: usize,
    ended_early: usize,
    hold_s: f64,
    rss_start_kib: Option<u64>,
    rss_sessions_kib: Option<u64>,
    rss_streams_kib: Option<u64>,
    rss_closed_kib: Option<u64>,
    kib_per_session: Option<f64>,
    kib_per_stream: Option<f64>,
    first_error: Option<String>,
}

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
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sse_idle: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sse_idle: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn rss(pid: Option<u32>) -> anyhow::Result<Option<u64>> {
    pid.map(|p| rss_kib(p).with_context(|| format!("reading the RSS of pid {p}")))
        .transpose()
}

fn per(after: Option<u64>, before: Option<u64>, n: usize) -> Option<f64> {
    match (after, before) {
        (Some(a), Some(b)) if n > 0 => Some((a as f64 - b as f64) / n as f64),
        _ => None,
    }
}

async fn run(config: Config) -> anyhow::Result<bool> {
    anyhow::ensure!(config.open_concurrency > 0, "--open-concurrency must be at least 1");
    let hold = Duration::try_from_secs_f64(config.hold).context("--hold is not a duration")?;
    let target = Arc::new(Target::new(&config.url, config.token.as_deref())?);
    let mut failed = 0;
    let mut first_error: Option<String> = None;
    let rss_start = rss(config.pid)?;

    // Sessions first; each Session is dropped once opened, closing its connection.
    let opened: Vec<_> = stream::iter(0..config.streams)
        .map(|_| {
            let target = target.clone();
            async move {
                match tokio::time::timeout(OPEN_TIMEOUT, Session::open(target)).await {
                    Ok(Ok(s)) => s
                        .id()
                        .cloned()
                        .ok_or_else(|| "the server issued no session id".to_owned()),
                    Ok(Err(e)) => Err(format!("opening a session: {e}")),
                    Err(_) => Err("opening a session timed out".to_owned()),
                }
            }
        })
        .buffer_unordered(config.open_concurrency)
        .collect()
        .await;
    let mut ids = Vec::with_capacity(opened.len());
    for o in opened {
        match o {
            Ok(id) => ids.push(id),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    tokio::time::sleep(SETTLE).await;
    let rss_sessions = rss(config.pid)?;

    // Then one GET stream per session, each drained by its own task.
    let streams: Vec<_> = stream::iter(ids.iter())
        .map(|id| {
            let target = target.clone();
            async move {
                tokio::time::timeout(OPEN_TIMEOUT, bench::client::open_stream(target, id))
                    .await
                    .map_err(|_| "opening a stream timed out".to_owned())?
                    .map_err(|e| format!("opening a stream: {e}"))
            }
        })
        .buffer_unordered(config.open_concurrency)
        .collect()
        .await;
    let mut drains = JoinSet::new();
    let mut opened = 0;
    for s in streams {
        match s {
            Ok((conn, resp)) => {
                opened += 1;
                drains.spawn(async move {
                    let _conn = conn;
                    let mut body = resp.into_body();
                    while let Some(frame) = body.frame().await {
                        if frame.is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    tokio::time::sleep(hold).await;
    let rss_streams = rss(config.pid)?;
    let mut ended_early = 0;
    while let Some(done) = drains.try_join_next() {
        if done.is_ok() {
            ended_early += 1;
        }
    }
    if ended_early > 0 {
        first_error.get_or_insert_with(|| format!("{ended_early} streams ended during the hold"));
    }
    drains.shutdown().await;
    tokio::time::sleep(SETTLE).await;
    let rss_closed = rss(config.pid)?;

    let report = Report {
        label: config.label,
        url: config.url,
        streams: config.streams,
        opened,
        failed,
        ended_early,
        hold_s: hold.as_secs_f64(),
        rss_start_kib: rss_start,
        rss_sessions_kib: rss_sessions,
        rss_streams_kib: rss_streams,
        rss_closed_kib: rss_closed,
        kib_per_session: per(rss_sessions, rss_start, ids.len()),
        kib_per_stream: per(rss_streams, rss_sessions, opened),
        first_error,
    };
    println!("{}", serde_json::to_string(&report)?);
    let kib = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2} KiB"));
    eprintln!(
        "sse_idle {label}: {opened}/{n} idle streams held {hold:.1} s ({failed} failed, {early} ended early); \
         per stream {stream}, per session {session}; RSS KiB start {s0:?} sessions {s1:?} streams {s2:?} closed {s3:?}",
        label = report.label,
        opened = report.opened,
        n = report.streams,
        hold = report.hold_s,
        failed = report.failed,
        early = report.ended_early,
        stream = kib(report.kib_per_stream),
        session = kib(report.kib_per_session),
        s0 = report.rss_start_kib,
        s1 = report.rss_sessions_kib,
        s2 = report.rss_streams_kib,
        s3 = report.rss_closed_kib,
    );
    if let Some(e) = &report.first_error {
        eprintln!("sse_idle {}: first error: {e}", report.label);
    }
    Ok(report.failed == 0 && report.ended_early == 0 && report.opened > 0)
}
