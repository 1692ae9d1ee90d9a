//! `loadgen`: closed-loop load on an MCP server's `tools/call add`.
//!
//! Each of `--concurrency` virtual clients opens its own MCP session on its own
//! HTTP/1.1 connection (`initialize` + `notifications/initialized`, not
//! timed; with `--stateless VERSION` only the connection: every call stands
//! alone at that revision, e.g. 2026-07-28 with its `_meta`), then, once every session is open, calls `add(a, b)` back to back and
//! checks the sum in every answer. Answers completing in the `--warmup` seconds
//! are dropped; the rest, up to `--duration` seconds or `--requests` answers,
//! give the throughput and the latency percentiles. Any failed or wrong answer
//! is counted and makes the exit status non-zero.
//!
//! ```text
//! loadgen --url http://127.0.0.1:8788/mcp --token "$T" --concurrency 16 --warmup 2 --duration 10
//! ```
//! Prints one JSON line on stdout and a human summary on stderr.
#![forbid(unsafe_code)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bench::{
    client::{Session, Target},
    stats::{Latency, histogram},
};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Barrier, OnceCell};

/// Measured seconds when neither `--duration` nor `--requests` is given.
const DEFAULT_DURATION_SECS: f64 = 10.0;
/// Longest a session may take to close after the run (best effort).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(about = "Closed-loop load on an MCP server's tools/call add")]
struct Config {
    /// MCP endpoint, e.g. http://127.0.0.1:8788/mcp (plain HTTP only).
    #[arg(long)]
    url: String,
    /// Bearer token sent on every request.
    #[arg(long, env = "BENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Virtual clients, each with its own session and connection.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds measured after the warm-up (default 10 unless --requests is given).
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many measured answers (all clients together).
    #[arg(long)]
    requests: Option<u64>,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Runtime threads of the generator itself (1 = a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Longest one request may take, in seconds, before it counts as an error.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Name for this run in the JSON line.
    #[arg(long, default_value = "")]
    label: String,
    /// No sessions: every call stands alone at this protocol revision (2026-07-28
    /// for the stateless revision; 2025-06-18 for a server in stateless mode).
    #[arg(long, value_name = "VERSION")]
    stateless: Option<String>,
}

/// What every client shares.
struct Plan {
    target: Arc<Target>,
    warmup: Duration,
    duration: Option<Duration>,
    requests: Option<u64>,
    claimed: AtomicU64,
    timeout: Duration,
    ready: Barrier,
    start: OnceCell<Instant>,
    stateless: Option<String>,
}

struct ClientReport {
    latencies: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    last_answer: Option<Instant>,
}

#[derive(Debug, Serialize)]
struct Report {
    label: String,
    url: String,
    concurrency: usize,
    warmup_s: f64,
    duration_s: f64,
    requests: u64,
    errors: u64,
    rps: f64,
    #[serde(flatten)]
    latency: Latency,
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
    match run(config) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `Ok(false)` when the run saw errors or measured nothing.
fn run(config: Config) -> anyhow::Result<bool> {
    anyhow::ensure!(config.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(config.warmup >= 0.0, "--warmup must not be negative");
    let duration = match (config.duration, config.requests) {
        (None, None) => Some(DEFAULT_DURATION_SECS),
        (d, _) => d,
    };
    let secs =
        |s: f64, name: &str| Duration::try_from_secs_f64(s).with_context(|| format!("--{name} {s} is not a duration"));
    let plan = Arc::new(Plan {
        target: Arc::new(Target::new(&config.url, config.token.as_deref())?),
        warmup: secs(config.warmup, "warmup")?,
        duration: duration.map(|d| secs(d, "duration")).transpose()?,
        requests: config.requests,
        claimed: AtomicU64::new(0),
        timeout: secs(config.timeout, "timeout")?,
        ready: Barrier::new(config.concurrency),
        start: OnceCell::new(),
        stateless: config.stateless.clone(),
    });
    let runtime = if config.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads)
            .enable_all()
            .build()
    }
    .context("starting the runtime")?;

    let reports = runtime.block_on(async {
        let mut clients = tokio::task::JoinSet::new();
        for n in 0..config.concurrency {
            clients.spawn(client(n, plan.clone()));
        }
        let mut reports = Vec::with_capacity(config.concurrency);
        while let Some(joined) = clients.join_next().await {
            reports.push(joined.context("a client task panicked")??);
        }
        anyhow::Ok(reports)
    })?;

    let mut latencies = histogram()?;
    let mut errors = 0;
    let mut first_error = None;
    let mut last_answer = None;
    for r in reports {
        latencies.add(&r.latencies).context("merging histograms")?;
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
        last_answer = last_answer.max(r.last_answer);
    }
    let measured_from = plan.start.get().map(|s| *s + plan.warmup);
    let elapsed = match (plan.duration, measured_from, last_answer) {
        (Some(d), _, _) => d.as_secs_f64(),
        (None, Some(from), Some(last)) => last.saturating_duration_since(from).as_secs_f64(),
        _ => 0.0,
    };
    let requests = latencies.len();
    let report = Report {
        label: config.label,
        url: config.url,
        concurrency: config.concurrency,
        warmup_s: plan.warmup.as_secs_f64(),
        duration_s: elapsed,
        requests,
        errors,
        rps: if elapsed > 0.0 { requests as f64 / elapsed } else { 0.0 },
        latency: Latency::of(&latencies),
        first_error,
    };
    println!("{}", serde_json::to_string(&report)?);
    let l = &report.latency;
    eprintln!(
        "loadgen {label} c={c}: {n} answers in {d:.2} s = {rps:.0} req/s, {e} errors; \
         latency ms p50 {p50:.3} p90 {p90:.3} p99 {p99:.3} p99.9 {p999:.3} max {max:.3}",
        label = report.label,
        c = report.concurrency,
        n = report.requests,
        d = report.duration_s,
        rps = report.rps,
        e = report.errors,
        p50 = l.p50_ms,
        p90 = l.p90_ms,
        p99 = l.p99_ms,
        p999 = l.p999_ms,
        max = l.max_ms,
    );
    if let Some(e) = &report.first_error {
        eprintln!("loadgen {}: first error: {e}", report.label);
    }
    Ok(report.errors == 0 && report.requests > 0)
}

async fn client(n: usize, plan: Arc<Plan>) -> anyhow::Result<ClientReport> {
    let mut report = ClientReport {
        latencies: histogram()?,
        errors: 0,
        first_error: None,
        last_answer: None,
    };
    let open = async {
        match &plan.stateless {
            Some(version) => Session::stateless(plan.target.clone(), version).await,
            None => Session::open(plan.target.clone()).await,
        }
    };
    let opened = tokio::time::timeout(plan.timeout, open).await;
    // Every client reaches the barrier, opened or not, so none waits forever.
    plan.ready.wait().await;
    let mut session = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Ok(failed(report, format!("opening a session: {e}"))),
        Err(_) => return Ok(failed(report, "opening a session timed out".to_owned())),
    };
    // The first client past the barrier starts the clock for all.
    let start = *plan.start.get_or_init(|| async { Instant::now() }).await;
    let measure_from = start + plan.warmup;
    let end = plan.duration.map(|d| measure_from + d);
    let a = i64::try_from(n).unwrap_or(i64::MAX / 2);
    let mut b: i64 = 0;
    loop {
        let now = Instant::now();
        if end.is_some_and(|end| now >= end) {
            break;
        }
        if let Some(limit) = plan.requests
            && now >= measure_from
            && plan.claimed.fetch_add(1, Ordering::Relaxed) >= limit
        {
            break;
        }
        b += 1;
        let sent = Instant::now();
        let answer = tokio::time::timeout(plan.timeout, session.call_add(a, b)).await;
        let done = Instant::now();
        let timed_out = answer.is_err();
        let error = match answer {
            Ok(Ok(())) => {
                if done >= measure_from && end.is_none_or(|end| done <= end) {
                    let us = u64::try_from(done.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                    report.latencies.saturating_record(us.max(1));
                    report.last_answer = Some(done);
                }
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", plan.timeout),
        };
        report.errors += 1;
        report.first_error.get_or_insert(error);
        // A timed-out request leaves its connection busy; a closed one is gone.
        if (session.is_closed() || timed_out)
            && let Err(e) = session.reconnect().await
        {
            report.errors += 1;
            report.first_error.get_or_insert(format!("reconnecting: {e}"));
            break;
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close()).await;
    Ok(report)
}

fn failed(mut report: ClientReport, error: String) -> ClientReport {
    report.errors += 1;
    report.first_error = Some(error);
    report
}
