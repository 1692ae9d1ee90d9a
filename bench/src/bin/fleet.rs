//! `fleet`: what a fleet of mostly idle MCP clients costs the cluster.
//!
//! `fleet streams`: `--streams` idle SSE streams on one gateway, a `--legacy-share`
//! of them legacy HTTP+SSE (`GET /sse`, then `initialize` through `/messages`), the
//! rest Streamable HTTP (`initialize`, then `GET /mcp` on the same connection),
//! every connection from one of `--sources` loopback addresses (127.0.1.1,
//! 127.0.1.2, …: one address reaches one server port ~28k times at most).
//! `--callers` of the Streamable HTTP clients also call `tools/call add` at
//! `--call-rate` per second each, on a connection of their own, once before any
//! stream is open and once with every stream open: the p99 of both runs, and
//! their ratio, say what the idle streams cost the busy clients. The streams are
//! held `--hold` seconds (longer than the gateway's keep-alive interval) and every
//! one must see a keep-alive. RSS of the gateway and the workers is read before
//! and after the streams: KiB per stream (gateway), KiB per session (workers).
//! With `--h2c-url` (the gateway's GATEWAY_H2C_LISTEN) the sessions and streams go
//! over HTTP/2 without TLS (prior knowledge), `--streams-per-connection` on each
//! connection, as a proxy in front of the gateway carries them (the connections are
//! opened after the first RSS reading: their cost is in the figure per stream).
//!
//! `fleet sessions`: `--sessions` sessions opened over `--connections` kept-alive
//! connections (the `initialize` rate), worker RSS per live session actor; then,
//! once the workers stopped the idle actors (`WORKER_IDLE_TIMEOUT`; `mcp_worker_actors`
//! back to zero), one `tools/call` per session brings every actor back from the
//! session store: the rehydration rate, and the workers' CPU per rehydration.
//!
//! ```text
//! fleet streams --url http://127.0.0.1:8788/mcp --token "$T" --streams 18000 --gateway-pid 123 --worker-pid 124
//! fleet sessions --url http://127.0.0.1:8788/mcp --token "$T" --sessions 100000 \
//!       --worker-admin http://127.0.0.1:9101 --worker-pid 124
//! ```
//! Each prints one JSON line on stdout and a summary on stderr.
#![forbid(unsafe_code)]

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bench::{
    client::{Conn, Session, Target, open_stream_on},
    rss::rss_kib,
    stats::{Latency, histogram},
};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::{StreamExt as _, stream};
use http_body_util::BodyExt as _;
use hyper::{Method, header::HeaderValue};
use serde::Serialize;
use tokio::task::JoinSet;

/// Time given to the servers to settle before an RSS reading.
const SETTLE: Duration = Duration::from_secs(2);
/// Longest one session, stream or call may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(about = "What a fleet of mostly idle MCP clients costs the cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Streams(StreamsConfig),
    Sessions(SessionsConfig),
}

#[derive(Debug, clap::Args)]
struct Common {
    /// MCP endpoint of the gateway, e.g. http://127.0.0.1:8788/mcp (plain HTTP).
    #[arg(long)]
    url: String,
    /// Bearer token sent on every request.
    #[arg(long, env = "BENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Session workers' PIDs (RSS is read; repeatable).
    #[arg(long = "worker-pid")]
    worker_pids: Vec<u32>,
    /// Sessions or streams being opened at once.
    #[arg(long, default_value_t = 64)]
    open_concurrency: usize,
    /// Loopback source addresses the connections are spread over (127.0.1.1, …).
    #[arg(long, default_value_t = 64)]
    sources: usize,
    /// Name for this run in the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Debug, clap::Args)]
struct StreamsConfig {
    #[command(flatten)]
    common: Common,
    /// Idle streams to hold, legacy and Streamable HTTP together.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Share of the streams that use the legacy HTTP+SSE transport.
    #[arg(long, default_value_t = 0.5)]
    legacy_share: f64,
    /// Clients (among the Streamable HTTP ones) that call tools.
    #[arg(long, default_value_t = 100)]
    callers: usize,
    /// Calls per second of each caller.
    #[arg(long, default_value_t = 1.0)]
    call_rate: f64,
    /// Seconds each calling run lasts.
    #[arg(long, default_value_t = 10.0)]
    call_duration: f64,
    /// Seconds the streams are held (keep-alives must flow in it).
    #[arg(long, default_value_t = 20.0)]
    hold: f64,
    /// The gateway's PID (its RSS is read).
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// The gateway's HTTP/2-without-TLS endpoint (GATEWAY_H2C_LISTEN), e.g.
    /// http://127.0.0.1:8789/mcp: the streams and their sessions go there over HTTP/2
    /// (prior knowledge), as a proxy in front of the gateway would carry them,
    /// `--streams-per-connection` on each connection (the callers' calls stay on
    /// HTTP/1.1 connections of their own, to `--url`).
    #[arg(long)]
    h2c_url: Option<String>,
    /// With `--h2c-url`: streams multiplexed on one connection.
    #[arg(long, default_value_t = 100)]
    streams_per_connection: usize,
}

#[derive(Debug, clap::Args)]
struct SessionsConfig {
    #[command(flatten)]
    common: Common,
    /// Sessions to open.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Kept-alive connections the sessions are opened (and later called) over.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Workers' admin URLs, to see their actors stop when idle (repeatable).
    #[arg(long = "worker-admin")]
    worker_admins: Vec<String>,
    /// Longest wait for the idle actors to stop, in seconds.
    #[arg(long, default_value_t = 600.0)]
    idle_wait: f64,
}

/// The `n`th source address: 127.0.1.1 … 127.0.1.254, 127.0.2.1, …
fn source(n: usize, sources: usize) -> Option<IpAddr> {
    if sources == 0 {
        return None;
    }
    let i = n % sources;
    Some(IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1 + (i / 254) as u8,
        1 + (i % 254) as u8,
    )))
}

fn rss_sum(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|p| rss_kib(*p).ok()).sum()
}

fn per(after: Option<u64>, before: Option<u64>, n: usize) -> Option<f64> {
    match (after, before) {
        (Some(a), Some(b)) if n > 0 => Some((a as f64 - b as f64) / n as f64),
        _ => None,
    }
}

/// CPU seconds (user + system) `pid` has used so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Streams(c) => streams(c).await,
        Command::Sessions(c) => sessions(c).await,
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fleet: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

// --- streams ---------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct StreamsReport {
    label: String,
    /// Streams over HTTP/2 (prior knowledge), `connections` of them.
    http2: bool,
    /// Client connections the streams came on.
    connections: usize,
    streams: usize,
    mcp_streams: usize,
    legacy_streams: usize,
    failed: usize,
    ended_early: usize,
    without_keepalive: usize,
    sources: usize,
    hold_s: f64,
    callers: usize,
    call_rate: f64,
    calls_without_streams: Option<Latency>,
    calls_with_streams: Option<Latency>,
    call_errors: usize,
    /// p99 with the streams open over p99 without.
    p99_ratio: Option<f64>,
    /// `initialize` (with `notifications/initialized`) per second, Streamable HTTP clients.
    initialize_per_s: Option<f64>,
    gateway_rss_kib_before: Option<u64>,
    gateway_rss_kib_streams: Option<u64>,
    gateway_kib_per_stream: Option<f64>,
    workers_rss_kib_before: Option<u64>,
    workers_rss_kib_streams: Option<u64>,
    workers_kib_per_session: Option<f64>,
    first_error: Option<String>,
}

/// One open stream's reader: counts keep-alives once `counting` is set, hands
/// out the legacy `endpoint` and the first message, ends with the stream.
struct Reader {
    saw_keepalive: Arc<AtomicBool>,
}

fn spawn_reader(
    set: &mut JoinSet<()>,
    conn: Conn,
    resp: hyper::Response<hyper::body::Incoming>,
    counting: Arc<AtomicBool>,
    endpoint: Option<tokio::sync::oneshot::Sender<String>>,
    first_message: Option<tokio::sync::oneshot::Sender<()>>,
) -> Reader {
    let saw = Arc::new(AtomicBool::new(false));
    let flag = saw.clone();
    set.spawn(async move {
        let _conn = conn;
        let (mut endpoint, mut first_message) = (endpoint, first_message);
        let mut body = resp.into_body();
        let mut pending = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else { continue };
            pending.extend_from_slice(&data);
            // Whole events only: they end with a blank line.
            while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                if text.starts_with(':') {
                    if counting.load(Ordering::Relaxed) {
                        flag.store(true, Ordering::Relaxed);
                    }
                } else if text.contains("event: endpoint") {
                    let path = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or_default();
                    if let Some(tx) = endpoint.take() {
                        let _ = tx.send(path.to_owned());
                    }
                } else if text.contains("event: message")
                    && let Some(tx) = first_message.take()
                {
                    let _ = tx.send(());
                }
            }
        }
    });
    Reader { saw_keepalive: saw }
}

async fn timed<T>(what: &str, f: impl Future<Output = Result<T, bench::client::Error>>) -> Result<T, String> {
    match tokio::time::timeout(STEP_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out")),
    }
}

/// A legacy HTTP+SSE client: `GET /sse` on `conn`, `initialize` and
/// `notifications/initialized` through the endpoint it names on `post` (HTTP/1.1: a
/// connection of their own, closed after).
async fn open_legacy(
    mut conn: Conn,
    mut post: Conn,
    set_tx: tokio::sync::mpsc::UnboundedSender<(Conn, hyper::Response<hyper::body::Incoming>, LegacyHooks)>,
) -> Result<Arc<AtomicBool>, String> {
    let accept = [("accept", HeaderValue::from_static("text/event-stream"))];
    let resp = timed("GET /sse", conn.request(Method::GET, "/sse", &accept, Bytes::new())).await?;
    if resp.status() != 200 {
        return Err(format!("GET /sse: {}", resp.status()));
    }
    let (ep_tx, ep_rx) = tokio::sync::oneshot::channel();
    let (msg_tx, msg_rx) = tokio::sync::oneshot::channel();
    let (saw_tx, saw_rx) = tokio::sync::oneshot::channel();
    set_tx
        .send((conn, resp, LegacyHooks { ep_tx, msg_tx, saw_tx }))
        .map_err(|_| "reader gone".to_owned())?;
    let saw = saw_rx.await.map_err(|_| "reader gone".to_owned())?;
    let endpoint = tokio::time::timeout(STEP_TIMEOUT, ep_rx)
        .await
        .map_err(|_| "no endpoint event".to_owned())?
        .map_err(|_| "stream ended before its endpoint event".to_owned())?;
    let init = Bytes::from_static(
        br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"mcp-cluster-fleet","version":"0.1.0"}}}"#,
    );
    let r = timed("POST initialize", post.request(Method::POST, &endpoint, &[], init)).await?;
    if r.status() != 202 {
        return Err(format!("legacy initialize: {}", r.status()));
    }
    drop(r);
    tokio::time::timeout(STEP_TIMEOUT, msg_rx)
        .await
        .map_err(|_| "no initialize result on the stream".to_owned())?
        .map_err(|_| "stream ended before the initialize result".to_owned())?;
    let done = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    let r = timed("POST initialized", post.request(Method::POST, &endpoint, &[], done)).await?;
    if r.status() != 202 {
        return Err(format!("legacy notifications/initialized: {}", r.status()));
    }
    Ok(saw)
}

struct LegacyHooks {
    ep_tx: tokio::sync::oneshot::Sender<String>,
    msg_tx: tokio::sync::oneshot::Sender<()>,
    saw_tx: tokio::sync::oneshot::Sender<Arc<AtomicBool>>,
}

/// Every caller calls `tools/call add` `rate` times a second for `duration`;
/// their latencies, and the number of failed calls.
async fn call_run(
    callers: Vec<Session>,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<(Vec<Session>, Option<Latency>, usize)> {
    let n = callers.len().max(1);
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut set = JoinSet::new();
    for (i, mut s) in callers.into_iter().enumerate() {
        // Spread the callers' phases over one period.
        let offset = period.mul_f64(i as f64 / n as f64);
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut errors: Vec<String> = Vec::new();
            tokio::time::sleep(offset).await;
            let start = Instant::now();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut k = 0i64;
            while start.elapsed() < duration {
                tick.tick().await;
                k += 1;
                // The server closes a connection idle past its keep-alive (between the
                // runs): connect again first, as a client would, outside the timing.
                if s.is_closed() && s.reconnect().await.is_err() {
                    errors.push("reconnect failed".to_owned());
                    continue;
                }
                let t = Instant::now();
                match tokio::time::timeout(STEP_TIMEOUT, s.call_add(k, 1)).await {
                    Ok(Ok(())) => lat.push(t.elapsed().as_micros() as u64),
                    Ok(Err(e)) => errors.push(e.to_string()),
                    Err(_) => errors.push("timed out".to_owned()),
                }
            }
            (s, lat, errors)
        });
    }
    let mut h = histogram()?;
    let (mut back, mut errors) = (Vec::new(), 0);
    while let Some(done) = set.join_next().await {
        let (s, lat, e) = done?;
        for us in lat {
            h.saturating_record(us.max(1));
        }
        if let Some(first) = e.first()
            && errors == 0
        {
            eprintln!("fleet: a caller's call failed: {first}");
        }
        errors += e.len();
        back.push(s);
    }
    Ok((back, (!h.is_empty()).then(|| Latency::of(&h)), errors))
}

/// The connection the `i`th client's requests go on: one of its own from its source
/// address (HTTP/1.1), or a share of one of the HTTP/2 connections.
async fn connection(target: &Arc<Target>, shared: &[Conn], i: usize, sources: usize) -> Result<Conn, String> {
    match shared.get(i % shared.len().max(1)) {
        Some(conn) => conn.share().ok_or_else(|| "not an HTTP/2 connection".to_owned()),
        None => timed("connect", Conn::connect_from(target.clone(), source(i, sources))).await,
    }
}

async fn streams(cfg: StreamsConfig) -> anyhow::Result<bool> {
    let c = &cfg.common;
    anyhow::ensure!((0.0..=1.0).contains(&cfg.legacy_share), "--legacy-share is a fraction");
    let target = Arc::new(Target::new(&c.url, c.token.as_deref())?);
    let legacy_n = (cfg.streams as f64 * cfg.legacy_share).round() as usize;
    let mcp_n = cfg.streams - legacy_n;
    anyhow::ensure!(
        cfg.callers <= mcp_n,
        "--callers must not exceed the Streamable HTTP streams"
    );
    let mut failed = 0;
    let mut first_error: Option<String> = None;
    let mut fail = |e: String, first: &mut Option<String>| {
        failed += 1;
        first.get_or_insert(e);
    };

    // The callers: sessions of their own, measured before any stream exists.
    eprintln!(
        "fleet streams: {} callers, {} s without streams",
        cfg.callers, cfg.call_duration
    );
    let mut callers = Vec::new();
    for i in 0..cfg.callers {
        let conn = Conn::connect_from(target.clone(), source(i, c.sources)).await?;
        callers.push(Session::open_on(conn).await.context("opening a caller's session")?);
    }
    let duration = Duration::from_secs_f64(cfg.call_duration);
    let (callers, without, errors_a) = call_run(callers, cfg.call_rate, duration).await?;

    tokio::time::sleep(SETTLE).await;
    let gw_before = cfg.gateway_pid.and_then(|p| rss_kib(p).ok());
    let workers_before = rss_sum(&c.worker_pids);
    // HTTP/2: the connections are opened after the reading above, so what they cost
    // is in the figure per stream.
    let mut shared = Vec::new();
    if let Some(url) = &cfg.h2c_url {
        let h2c = Arc::new(Target::new(url, c.token.as_deref())?);
        let n = cfg.streams.div_ceil(cfg.streams_per_connection.max(1));
        for i in 0..n {
            shared.push(Conn::connect_h2_from(h2c.clone(), source(i, c.sources)).await?);
        }
    }
    let shared = Arc::new(shared);

    // Streamable HTTP: initialize (timed), then GET /mcp on the same connection.
    eprintln!("fleet streams: {mcp_n} Streamable HTTP sessions and streams, {legacy_n} legacy");
    let started = Instant::now();
    let new_sessions = mcp_n - cfg.callers;
    let opened: Vec<Result<(Conn, HeaderValue), String>> = stream::iter(0..new_sessions)
        .map(|i| {
            let (target, shared) = (target.clone(), shared.clone());
            async move {
                let conn = connection(&target, &shared, cfg.callers + i, c.sources).await?;
                let s = timed("initialize", Session::open_on(conn)).await?;
                let (conn, id) = s.into_parts();
                Ok((conn, id.ok_or("no session id")?))
            }
        })
        .buffer_unordered(c.open_concurrency)
        .collect()
        .await;
    let init_secs = started.elapsed().as_secs_f64();
    let initialized = opened.iter().filter(|o| o.is_ok()).count();
    let counting = Arc::new(AtomicBool::new(false));
    let mut readers = JoinSet::new();
    let mut flags = Vec::new();
    let mut conns = Vec::new();
    for o in opened {
        match o {
            Ok(pair) => conns.push(pair),
            Err(e) => fail(e, &mut first_error),
        }
    }
    // The callers' own streams (their sessions exist), on new connections.
    for (i, s) in callers.iter().enumerate() {
        if let Some(id) = s.id() {
            conns.push((
                connection(&target, &shared, i, c.sources)
                    .await
                    .map_err(anyhow::Error::msg)?,
                id.clone(),
            ));
        }
    }
    let streams: Vec<_> = stream::iter(conns)
        .map(|(conn, id)| async move { timed("GET /mcp", open_stream_on(conn, &id)).await })
        .buffer_unordered(c.open_concurrency)
        .collect()
        .await;
    let mut mcp_open = 0;
    for s in streams {
        match s {
            Ok((conn, resp)) => {
                mcp_open += 1;
                flags.push(spawn_reader(&mut readers, conn, resp, counting.clone(), None, None).saw_keepalive);
            }
            Err(e) => fail(e, &mut first_error),
        }
    }

    // Legacy: the readers are spawned here (they own the set); the opening tasks
    // hand them their stream and wait for its endpoint.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let legacy_target = target.clone();
    let sources = c.sources;
    let legacy_shared = shared.clone();
    // The closure owns the sender: the channel closes when the last opening ends.
    let legacy = stream::iter(0..legacy_n)
        .map(move |i| {
            let (target, shared, tx) = (legacy_target.clone(), legacy_shared.clone(), tx.clone());
            async move {
                let get = connection(&target, &shared, mcp_n + i, sources).await?;
                let post = connection(&target, &shared, mcp_n + i, sources).await?;
                open_legacy(get, post, tx).await
            }
        })
        .buffer_unordered(c.open_concurrency)
        .collect::<Vec<_>>();
    tokio::pin!(legacy);
    let legacy_results = loop {
        tokio::select! {
            Some((conn, resp, hooks)) = rx.recv() => {
                let reader = spawn_reader(&mut readers, conn, resp, counting.clone(), Some(hooks.ep_tx), Some(hooks.msg_tx));
                let _ = hooks.saw_tx.send(reader.saw_keepalive);
            }
            done = &mut legacy => break done,
        }
    };
    let mut legacy_open = 0;
    for r in legacy_results {
        match r {
            Ok(flag) => {
                legacy_open += 1;
                flags.push(flag);
            }
            Err(e) => fail(e, &mut first_error),
        }
    }

    tokio::time::sleep(SETTLE).await;
    let gw_streams = cfg.gateway_pid.and_then(|p| rss_kib(p).ok());
    let workers_streams = rss_sum(&c.worker_pids);
    counting.store(true, Ordering::Relaxed);
    let hold_started = Instant::now();
    eprintln!(
        "fleet streams: {mcp_open} + {legacy_open} streams open; callers again, {} s",
        cfg.call_duration
    );
    let (_callers, with, errors_b) = call_run(callers, cfg.call_rate, duration).await?;
    let hold = Duration::from_secs_f64(cfg.hold);
    if let Some(rest) = hold.checked_sub(hold_started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let mut ended_early = 0;
    while let Some(done) = readers.try_join_next() {
        if done.is_ok() {
            ended_early += 1;
        }
    }
    let without_keepalive = flags.iter().filter(|f| !f.load(Ordering::Relaxed)).count();
    readers.shutdown().await;

    let report = StreamsReport {
        label: c.label.clone(),
        http2: cfg.h2c_url.is_some(),
        connections: if cfg.h2c_url.is_some() {
            shared.len()
        } else {
            mcp_open + legacy_open
        },
        streams: cfg.streams,
        mcp_streams: mcp_open,
        legacy_streams: legacy_open,
        failed,
        ended_early,
        without_keepalive,
        sources: c.sources,
        hold_s: hold_started.elapsed().as_secs_f64(),
        callers: cfg.callers,
        call_rate: cfg.call_rate,
        p99_ratio: match (with, without) {
            (Some(w), Some(o)) if o.p99_ms > 0.0 => Some(w.p99_ms / o.p99_ms),
            _ => None,
        },
        calls_without_streams: without,
        calls_with_streams: with,
        call_errors: errors_a + errors_b,
        initialize_per_s: (init_secs > 0.0).then(|| initialized as f64 / init_secs),
        gateway_rss_kib_before: gw_before,
        gateway_rss_kib_streams: gw_streams,
        gateway_kib_per_stream: per(gw_streams, gw_before, mcp_open + legacy_open),
        workers_rss_kib_before: workers_before,
        workers_rss_kib_streams: workers_streams,
        workers_kib_per_session: per(workers_streams, workers_before, new_sessions + legacy_open),
        first_error,
    };
    println!("{}", serde_json::to_string(&report)?);
    let f = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.2}"));
    eprintln!(
        "fleet streams {}: {}+{} streams ({} failed, {} ended early, {} without keep-alive) on {} {} connections from {} addresses; \
         gateway {} KiB/stream, workers {} KiB/session; calls p99 {} ms without streams, {} ms with (x{}), {} errors; \
         initialize {}/s",
        report.label,
        report.mcp_streams,
        report.legacy_streams,
        report.failed,
        report.ended_early,
        report.without_keepalive,
        report.connections,
        if report.http2 { "HTTP/2" } else { "HTTP/1.1" },
        report.sources,
        f(report.gateway_kib_per_stream),
        f(report.workers_kib_per_session),
        f(report.calls_without_streams.map(|l| l.p99_ms)),
        f(report.calls_with_streams.map(|l| l.p99_ms)),
        f(report.p99_ratio),
        report.call_errors,
        f(report.initialize_per_s),
    );
    if let Some(e) = &report.first_error {
        eprintln!("fleet streams: first error: {e}");
    }
    Ok(report.failed == 0 && report.ended_early == 0 && report.without_keepalive == 0 && report.call_errors == 0)
}

// --- sessions --------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct SessionsReport {
    label: String,
    sessions: usize,
    opened: usize,
    failed: usize,
    connections: usize,
    initialize_per_s: f64,
    workers_rss_kib_before: Option<u64>,
    workers_rss_kib_live: Option<u64>,
    workers_kib_per_live_actor: Option<f64>,
    workers_rss_kib_idle: Option<u64>,
    idle_stop_s: Option<f64>,
    rehydrated: usize,
    rehydrate_failed: usize,
    rehydrate_per_s: f64,
    /// Rehydrations per second of worker CPU (all workers' CPU together).
    rehydrate_per_worker_cpu_s: Option<f64>,
    workers_rss_kib_rehydrated: Option<u64>,
    first_error: Option<String>,
}

async fn actors(admins: &[String]) -> Option<f64> {
    let mut total = 0.0;
    for a in admins {
        let text = get_text(&format!("{a}/metrics")).await?;
        let line = text.lines().find(|l| l.starts_with("mcp_worker_actors "))?;
        total += line.rsplit_once(' ')?.1.parse::<f64>().ok()?;
    }
    Some(total)
}

/// GET a plain-HTTP URL's body (the workers' `/metrics`), without a token.
async fn get_text(url: &str) -> Option<String> {
    let target = Arc::new(Target::new(url, None).ok()?);
    let path = url.split_once("://")?.1.split_once('/').map(|(_, p)| format!("/{p}"))?;
    let mut conn = Conn::connect(target).await.ok()?;
    let resp = conn.request(Method::GET, &path, &[], Bytes::new()).await.ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

async fn sessions(cfg: SessionsConfig) -> anyhow::Result<bool> {
    let c = &cfg.common;
    anyhow::ensure!(cfg.connections > 0, "--connections must be at least 1");
    let target = Arc::new(Target::new(&c.url, c.token.as_deref())?);
    let workers_before = rss_sum(&c.worker_pids);
    let cpu = |pids: &[u32]| pids.iter().filter_map(|p| cpu_seconds(*p)).sum::<f64>();

    // Open: `connections` tasks, each opening its share of sessions one after another.
    eprintln!(
        "fleet sessions: opening {} sessions over {} connections",
        cfg.sessions, cfg.connections
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for k in 0..cfg.connections {
        let (target, next, total, src) = (target.clone(), next.clone(), cfg.sessions, source(k, c.sources));
        set.spawn(async move {
            let mut ids = Vec::new();
            let mut errors = Vec::new();
            let mut conn = None;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let c = match conn.take() {
                    Some(c) => c,
                    None => match timed("connect", Conn::connect_from(target.clone(), src)).await {
                        Ok(c) => c,
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    },
                };
                match timed("initialize", Session::open_on(c)).await {
                    Ok(s) => {
                        let (c, id) = s.into_parts();
                        if !c.is_closed() {
                            conn = Some(c);
                        }
                        ids.extend(id);
                    }
                    Err(e) => errors.push(e),
                }
            }
            (ids, errors)
        });
    }
    let mut ids = Vec::with_capacity(cfg.sessions);
    let mut first_error = None;
    let mut failed = 0;
    while let Some(done) = set.join_next().await {
        let (got, errors) = done?;
        ids.extend(got);
        failed += errors.len();
        if let Some(e) = errors.into_iter().next() {
            first_error.get_or_insert(e);
        }
    }
    let initialize_per_s = ids.len() as f64 / started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let workers_live = rss_sum(&c.worker_pids);
    eprintln!(
        "fleet sessions: {} opened ({initialize_per_s:.0}/s), {failed} failed; waiting for the idle actors to stop",
        ids.len()
    );

    // Idle: the workers stop the actors; wait until none is left.
    let idle_started = Instant::now();
    let mut idle_stop_s = None;
    if !cfg.worker_admins.is_empty() {
        while idle_started.elapsed().as_secs_f64() < cfg.idle_wait {
            if actors(&cfg.worker_admins).await == Some(0.0) {
                idle_stop_s = Some(idle_started.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    tokio::time::sleep(SETTLE).await;
    let workers_idle = rss_sum(&c.worker_pids);

    // Back: one call per session brings its actor back from the store.
    eprintln!("fleet sessions: one call per session, rehydrating every actor");
    let cpu_before = cpu(&c.worker_pids);
    let started = Instant::now();
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for k in 0..cfg.connections {
        let (target, ids, next, src) = (target.clone(), ids.clone(), next.clone(), source(k, c.sources));
        set.spawn(async move {
            let (mut ok, mut errors) = (0usize, Vec::new());
            let mut conn: Option<Conn> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                let mut c = match conn.take() {
                    Some(c) if !c.is_closed() => c,
                    _ => match timed("connect", Conn::connect_from(target.clone(), src)).await {
                        Ok(c) => c,
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    },
                };
                // Id 0 was the session's initialize: a request id is never used twice in a session.
                let body = Bytes::from(format!(
                    r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"add","arguments":{{"a":{i},"b":1}}}}}}"#
                ));
                let headers = [
                    ("mcp-session-id", id.clone()),
                    ("mcp-protocol-version", HeaderValue::from_static(bench::client::PROTOCOL_VERSION)),
                    ("accept", HeaderValue::from_static("application/json, text/event-stream")),
                ];
                match timed("tools/call", c.request(Method::POST, target.path(), &headers, body)).await {
                    Ok(resp) if resp.status() == 200 => {
                        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                        match body {
                            Ok(b) if memchr_sum(&b, i + 1) => ok += 1,
                            Ok(b) => errors.push(format!("unexpected answer: {}", String::from_utf8_lossy(&b))),
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                    Ok(resp) => errors.push(format!("tools/call: {}", resp.status())),
                    Err(e) => errors.push(e),
                }
                conn = Some(c);
            }
            (ok, errors)
        });
    }
    let (mut rehydrated, mut rehydrate_failed) = (0, 0);
    while let Some(done) = set.join_next().await {
        let (ok, errors) = done?;
        rehydrated += ok;
        rehydrate_failed += errors.len();
        if let Some(e) = errors.into_iter().next() {
            first_error.get_or_insert(e);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_used = cpu(&c.worker_pids) - cpu_before;
    tokio::time::sleep(SETTLE).await;
    let report = SessionsReport {
        label: c.label.clone(),
        sessions: cfg.sessions,
        opened: ids.len(),
        failed,
        connections: cfg.connections,
        initialize_per_s,
        workers_rss_kib_before: workers_before,
        workers_rss_kib_live: workers_live,
        workers_kib_per_live_actor: per(workers_live, workers_before, ids.len()),
        workers_rss_kib_idle: workers_idle,
        idle_stop_s,
        rehydrated,
        rehydrate_failed,
        rehydrate_per_s: rehydrated as f64 / secs,
        rehydrate_per_worker_cpu_s: (cpu_used > 0.0).then(|| rehydrated as f64 / cpu_used),
        workers_rss_kib_rehydrated: rss_sum(&c.worker_pids),
        first_error,
    };
    println!("{}", serde_json::to_string(&report)?);
    let f = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1}"));
    eprintln!(
        "fleet sessions {}: {} opened at {:.0}/s; {} KiB per live actor; idle stop after {} s (RSS {:?} → {:?} KiB); \
         rehydrated {} ({} failed) at {:.0}/s, {} per worker-CPU second",
        report.label,
        report.opened,
        report.initialize_per_s,
        f(report.workers_kib_per_live_actor),
        f(report.idle_stop_s),
        report.workers_rss_kib_live,
        report.workers_rss_kib_idle,
        report.rehydrated,
        report.rehydrate_failed,
        report.rehydrate_per_s,
        f(report.rehydrate_per_worker_cpu_s),
    );
    if let Some(e) = &report.first_error {
        eprintln!("fleet sessions: first error: {e}");
    }
    Ok(report.failed == 0 && report.rehydrate_failed == 0 && report.opened == cfg.sessions)
}

/// Whether an answer's body carries the expected sum as the tool's text.
fn memchr_sum(body: &[u8], sum: usize) -> bool {
    let needle = format!(r#""text":"{sum}""#);
    body.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_over_loopback() {
        assert_eq!(source(0, 64), Some("127.0.1.1".parse().unwrap()));
        assert_eq!(source(65, 64), Some("127.0.1.2".parse().unwrap()));
        assert_eq!(source(254, 1000), Some("127.0.2.1".parse().unwrap()));
        assert_eq!(source(5, 0), None);
    }

    #[test]
    fn finds_the_sum() {
        assert!(memchr_sum(
            br#"{"result":{"content":[{"type":"text","text":"42"}]}}"#,
            42
        ));
        assert!(!memchr_sum(
            br#"{"result":{"content":[{"type":"text","text":"421"}]}}"#,
            42
        ));
    }
}
