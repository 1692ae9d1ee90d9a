//! `burst`: open-loop `tools/call` load with a burst in the middle, and what
//! happened to every call over time.
//!
//! Calls arrive at `--base-rate` per second for `--before` seconds, at
//! `--burst-rate` for `--burst` seconds, then at `--base-rate` again for
//! `--after` seconds, whatever the server does (open loop: a slow server does not
//! slow the arrivals down). Each call runs on one of `--sessions` MCP sessions
//! opened beforehand (one connection each); an arrival that finds every session
//! busy is counted `unsent` (the client's own limit, reported, never hidden).
//!
//! Every call is classified: `ok` (the right sum), `shed` (503 or 429: refused at
//! once, with `Retry-After`), `error` (any other answer or failure), `timeout` (no
//! answer within `--timeout`). The JSON report (`--out`) holds a timeline in
//! buckets of `--bucket` seconds (by arrival time: counts per class, latency
//! percentiles of the ok calls, and the RSS of each `--pid` process) and a summary:
//! p99 before the burst, during it, and how long after it ended the p99 was back
//! for good within the before-burst envelope (the larger of 2x its p99 and its
//! worst bucket).
//!
//! ```text
//! burst --url http://127.0.0.1:8788/mcp --token "$T" --base-rate 2000 --burst-rate 40000 \
//!       --pid gateway=1234 --pid worker=1240 --out burst.json
//! ```
#![forbid(unsafe_code)]

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bench::{
    client::{Error as ClientError, Session, Target},
    rss::rss_kib,
    stats::{Latency, histogram},
};
use clap::Parser;
use serde::Serialize;

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Shed,
    Error,
    Timeout,
    Unsent,
}

#[derive(Debug, Parser)]
#[command(about = "Open-loop tools/call load with a burst; latency and outcomes over time")]
struct Config {
    /// MCP endpoint, e.g. http://127.0.0.1:8788/mcp (plain HTTP only).
    #[arg(long)]
    url: String,
    /// Bearer token sent on every request.
    #[arg(long, env = "BENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Calls per second before and after the burst.
    #[arg(long)]
    base_rate: f64,
    /// Calls per second during the burst.
    #[arg(long)]
    burst_rate: f64,
    /// Seconds at the base rate before the burst.
    #[arg(long, default_value_t = 10.0)]
    before: f64,
    /// Seconds of burst.
    #[arg(long, default_value_t = 5.0)]
    burst: f64,
    /// Seconds at the base rate after the burst.
    #[arg(long, default_value_t = 15.0)]
    after: f64,
    /// Sessions (one connection each) opened before the run: the most calls the
    /// client can have in flight.
    #[arg(long, default_value_t = 4096)]
    sessions: usize,
    /// Sessions being opened at once while preparing.
    #[arg(long, default_value_t = 64)]
    open_concurrency: usize,
    /// Width of a timeline bucket, in seconds.
    #[arg(long, default_value_t = 0.25)]
    bucket: f64,
    /// A call without an answer after this many seconds counts as a timeout.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// A process whose RSS is sampled every bucket: NAME=PID (repeatable).
    #[arg(long = "pid", value_parser = parse_pid)]
    pids: Vec<(String, u32)>,
    /// Write the full report (timeline included) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Name for this run in the report.
    #[arg(long, default_value = "")]
    label: String,
}

fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    Ok((name.to_owned(), pid.parse().map_err(|_| format!("bad pid in {s}"))?))
}

impl Config {
    fn total(&self) -> f64 {
        self.before + self.burst + self.after
    }

    /// Calls due by `t` seconds into the run (the integral of the rate).
    fn due_by(&self, t: f64) -> u64 {
        let base_before = self.base_rate * t.min(self.before);
        let burst = self.burst_rate * (t - self.before).clamp(0.0, self.burst);
        let base_after = self.base_rate * (t - self.before - self.burst).clamp(0.0, self.after);
        (base_before + burst + base_after) as u64
    }
}

/// One call: when it arrived (seconds into the run), how long it took, how it ended.
#[derive(Debug, Clone, Copy)]
struct Record {
    at: f64,
    micros: u64,
    outcome: Outcome,
    /// Arrivals this record stands for (more than one only for `Unsent`).
    count: u64,
}

#[derive(Debug, Default, Serialize)]
struct Bucket {
    start_s: f64,
    ok: u64,
    shed: u64,
    error: u64,
    timeout: u64,
    unsent: u64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    rss_kib: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct Phase {
    offered_per_s: f64,
    ok_per_s: f64,
    shed_per_s: f64,
    ok: u64,
    shed: u64,
    error: u64,
    timeout: u64,
    unsent: u64,
    latency_ok: Option<Latency>,
}

#[derive(Debug, Serialize)]
struct Report {
    label: String,
    url: String,
    base_rate: f64,
    burst_rate: f64,
    before_s: f64,
    burst_s: f64,
    after_s: f64,
    sessions: usize,
    bucket_s: f64,
    /// Before the burst (its first second left out: warm-up).
    before: Phase,
    burst: Phase,
    /// After the burst, from its end to the end of the run.
    after: Phase,
    /// Seconds from the burst's end until every later bucket's p99 was within the
    /// before-burst envelope (the larger of 2x its p99 and its worst bucket) and no
    /// later call was shed; `None`: never in the run.
    recovered_after_s: Option<f64>,
    /// Seconds from the burst's end to the first bucket back within that envelope.
    first_normal_after_s: Option<f64>,
    rss_kib_before_burst: std::collections::BTreeMap<String, u64>,
    rss_kib_peak: std::collections::BTreeMap<String, u64>,
    rss_kib_end: std::collections::BTreeMap<String, u64>,
    timeline: Vec<Bucket>,
}

fn classify(result: Result<Result<(), ClientError>, tokio::time::error::Elapsed>) -> Outcome {
    match result {
        Err(_) => Outcome::Timeout,
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(ClientError::Status { status, .. })) if status.as_u16() == 503 || status.as_u16() == 429 => {
            Outcome::Shed
        }
        Ok(Err(_)) => Outcome::Error,
    }
}

fn phase(records: &[Record], from: f64, to: f64) -> anyhow::Result<Phase> {
    let mut h = histogram()?;
    let (mut ok, mut shed, mut error, mut timeout, mut unsent) = (0, 0, 0, 0, 0);
    for r in records.iter().filter(|r| r.at >= from && r.at < to) {
        match r.outcome {
            Outcome::Ok => {
                ok += 1;
                h.saturating_record(r.micros.max(1));
            }
            Outcome::Shed => shed += 1,
            Outcome::Error => error += 1,
            Outcome::Timeout => timeout += 1,
            Outcome::Unsent => unsent += r.count,
        }
    }
    let secs = (to - from).max(f64::EPSILON);
    Ok(Phase {
        offered_per_s: (ok + shed + error + timeout + unsent) as f64 / secs,
        ok_per_s: ok as f64 / secs,
        shed_per_s: shed as f64 / secs,
        ok,
        shed,
        error,
        timeout,
        unsent,
        latency_ok: (ok > 0).then(|| Latency::of(&h)),
    })
}

fn rss_all(pids: &[(String, u32)]) -> std::collections::BTreeMap<String, u64> {
    pids.iter()
        .filter_map(|(name, pid)| rss_kib(*pid).ok().map(|kib| (name.clone(), kib)))
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Arc::new(Config::parse());
    anyhow::ensure!(cfg.base_rate > 0.0 && cfg.burst_rate > 0.0, "rates must be positive");
    anyhow::ensure!(
        cfg.bucket > 0.0 && cfg.sessions > 0,
        "bucket and sessions must be positive"
    );
    let target = Arc::new(Target::new(&cfg.url, cfg.token.as_deref())?);

    // Sessions first, so the run measures calls, not handshakes.
    eprintln!("burst: opening {} sessions", cfg.sessions);
    let opened: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
        futures::stream::iter((0..cfg.sessions).map(|_| Session::open(target.clone()))),
        cfg.open_concurrency,
    ))
    .await;
    let sessions: Vec<Session> = opened
        .into_iter()
        .collect::<Result<_, _>>()
        .context("opening sessions")?;
    let pool = Arc::new(Mutex::new(sessions));
    let records = Arc::new(Mutex::new(Vec::<Record>::with_capacity(
        (cfg.base_rate * (cfg.before + cfg.after) + cfg.burst_rate * cfg.burst) as usize + 1024,
    )));
    let rss_samples = Arc::new(Mutex::new(Vec::<(f64, std::collections::BTreeMap<String, u64>)>::new()));

    eprintln!(
        "burst: {} /s for {} s, {} /s for {} s, {} /s for {} s",
        cfg.base_rate, cfg.before, cfg.burst_rate, cfg.burst, cfg.base_rate, cfg.after
    );
    let start = Instant::now();
    let call_timeout = Duration::from_secs_f64(cfg.timeout);
    let mut sent: u64 = 0;
    let mut next_sample = 0.0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64();
        if t >= cfg.total() {
            break;
        }
        if t >= next_sample {
            rss_samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((t, rss_all(&cfg.pids)));
            next_sample += cfg.bucket;
        }
        let due = cfg.due_by(t);
        if sent < due {
            // The calls due now, each on a free session; the rest find the client full and
            // are counted, not spawned (a spawn per arrival would load the machine that the
            // servers share with this client).
            let want = (due - sent) as usize;
            let taken: Vec<Session> = {
                let mut p = pool.lock().unwrap_or_else(|e| e.into_inner());
                let keep = p.len().saturating_sub(want);
                p.split_off(keep)
            };
            let at = start.elapsed().as_secs_f64();
            let unsent = (want - taken.len()) as u64;
            if unsent > 0 {
                records.lock().unwrap_or_else(|e| e.into_inner()).push(Record {
                    at,
                    micros: 0,
                    outcome: Outcome::Unsent,
                    count: unsent,
                });
            }
            for mut s in taken {
                sent += 1;
                let (pool, records) = (pool.clone(), records.clone());
                let n = sent as i64;
                tasks.spawn(async move {
                    let began = Instant::now();
                    let (outcome, back) = if s.is_closed() && s.reconnect().await.is_err() {
                        (Outcome::Error, None)
                    } else {
                        let outcome = classify(tokio::time::timeout(call_timeout, s.call_add(n, 1)).await);
                        // A timed-out call leaves its connection mid-answer: not reused.
                        (outcome, (outcome != Outcome::Timeout).then_some(s))
                    };
                    let micros = began.elapsed().as_micros() as u64;
                    if let Some(s) = back {
                        pool.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                    }
                    records.lock().unwrap_or_else(|e| e.into_inner()).push(Record {
                        at,
                        micros,
                        outcome,
                        count: 1,
                    });
                });
            }
            sent = due;
        }
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    let waited = tokio::time::timeout(call_timeout + Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if waited.is_err() {
        eprintln!("burst: {} calls still unanswered at the end", tasks.len());
        tasks.abort_all();
    }
    let end_rss = rss_all(&cfg.pids);

    let records = std::mem::take(&mut *records.lock().unwrap_or_else(|e| e.into_inner()));
    let rss_samples = std::mem::take(&mut *rss_samples.lock().unwrap_or_else(|e| e.into_inner()));
    let n_buckets = (cfg.total() / cfg.bucket).ceil() as usize;
    let mut timeline: Vec<Bucket> = (0..n_buckets)
        .map(|i| Bucket {
            start_s: i as f64 * cfg.bucket,
            ..Bucket::default()
        })
        .collect();
    let mut hists = (0..n_buckets).map(|_| histogram()).collect::<Result<Vec<_>, _>>()?;
    for r in &records {
        let i = ((r.at / cfg.bucket) as usize).min(n_buckets.saturating_sub(1));
        let b = &mut timeline[i];
        match r.outcome {
            Outcome::Ok => {
                b.ok += 1;
                hists[i].saturating_record(r.micros.max(1));
            }
            Outcome::Shed => b.shed += 1,
            Outcome::Error => b.error += 1,
            Outcome::Timeout => b.timeout += 1,
            Outcome::Unsent => b.unsent += r.count,
        }
    }
    for (b, h) in timeline.iter_mut().zip(&hists) {
        if !h.is_empty() {
            let l = Latency::of(h);
            (b.p50_ms, b.p99_ms, b.max_ms) = (Some(l.p50_ms), Some(l.p99_ms), Some(l.max_ms));
        }
    }
    for (t, rss) in &rss_samples {
        let i = ((t / cfg.bucket) as usize).min(n_buckets.saturating_sub(1));
        timeline[i].rss_kib = rss.clone();
    }

    let burst_start = cfg.before;
    let burst_end = cfg.before + cfg.burst;
    let before = phase(&records, cfg.before.min(1.0), burst_start)?;
    let burst = phase(&records, burst_start, burst_end)?;
    let after = phase(&records, burst_end, cfg.total())?;
    // Normal: within the before-burst envelope, the larger of twice its p99 and its worst
    // bucket (a shared machine has spikes of its own).
    let worst_before = timeline
        .iter()
        .filter(|b| b.start_s >= cfg.before.min(1.0) && b.start_s + cfg.bucket <= burst_start)
        .filter_map(|b| b.p99_ms)
        .fold(0.0, f64::max);
    let base_p99 = before.latency_ok.map(|l| (2.0 * l.p99_ms).max(worst_before));
    // The first bucket after the burst from which on every bucket is back to normal.
    let normal = |b: &Bucket, limit: f64| b.shed == 0 && b.timeout == 0 && b.p99_ms.is_some_and(|p| p <= limit);
    let after_burst: Vec<&Bucket> = timeline.iter().filter(|b| b.start_s >= burst_end).collect();
    let recovered_after_s = base_p99.and_then(|limit| {
        (0..after_burst.len())
            .find(|&i| after_burst[i..].iter().all(|b| normal(b, limit)))
            .map(|i| (after_burst[i].start_s - burst_end).max(0.0))
    });
    let first_normal_after_s = base_p99.and_then(|limit| {
        after_burst
            .iter()
            .find(|b| normal(b, limit))
            .map(|b| (b.start_s - burst_end).max(0.0))
    });
    let rss_before = rss_samples
        .iter()
        .rev()
        .find(|(t, _)| *t < burst_start)
        .map(|(_, r)| r.clone())
        .unwrap_or_default();
    let mut rss_peak = std::collections::BTreeMap::new();
    for (_, rss) in &rss_samples {
        for (k, v) in rss {
            let e = rss_peak.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }

    let report = Report {
        label: cfg.label.clone(),
        url: cfg.url.clone(),
        base_rate: cfg.base_rate,
        burst_rate: cfg.burst_rate,
        before_s: cfg.before,
        burst_s: cfg.burst,
        after_s: cfg.after,
        sessions: cfg.sessions,
        bucket_s: cfg.bucket,
        before,
        burst,
        after,
        recovered_after_s,
        first_normal_after_s,
        rss_kib_before_burst: rss_before,
        rss_kib_peak: rss_peak,
        rss_kib_end: end_rss,
        timeline,
    };
    let p99 = |p: &Phase| p.latency_ok.map(|l| format!("{:.2}", l.p99_ms)).unwrap_or("n/a".into());
    eprintln!(
        "burst: before {:.0} ok/s p99 {} ms | burst offered {:.0}/s: {:.0} ok/s, {:.0} shed/s, {} errors, {} timeouts, {} unsent, ok p99 {} ms | after p99 {} ms, recovered {}",
        report.before.ok_per_s,
        p99(&report.before),
        report.burst.offered_per_s,
        report.burst.ok_per_s,
        report.burst.shed_per_s,
        report.burst.error + report.after.error,
        report.burst.timeout + report.after.timeout,
        report.burst.unsent,
        p99(&report.burst),
        p99(&report.after),
        report
            .recovered_after_s
            .map(|s| format!("{s:.2} s after the burst"))
            .unwrap_or("never".into()),
    );
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &cfg.out {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    // stdout: the report without its timeline, one line.
    let mut summary = serde_json::to_value(&report)?;
    if let Some(o) = summary.as_object_mut() {
        o.remove("timeline");
    }
    println!("{summary}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_follow_the_rates() {
        let cfg = Config::parse_from([
            "burst",
            "--url",
            "http://127.0.0.1:1/mcp",
            "--base-rate",
            "100",
            "--burst-rate",
            "1000",
            "--before",
            "2",
            "--burst",
            "1",
            "--after",
            "3",
        ]);
        assert_eq!(cfg.due_by(0.0), 0);
        assert_eq!(cfg.due_by(1.0), 100);
        assert_eq!(cfg.due_by(2.0), 200);
        assert_eq!(cfg.due_by(2.5), 700);
        assert_eq!(cfg.due_by(3.0), 1200);
        assert_eq!(cfg.due_by(6.0), 1500);
        assert_eq!(cfg.due_by(60.0), 1500, "nothing after the end");
    }
}
