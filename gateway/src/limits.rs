//! The gateway's limits on what one caller can hold or send: requests in flight
//! per principal, unauthenticated requests per client address, and which peers'
//! `X-Forwarded-For` is believed when telling client addresses apart; and on what
//! all callers together can have in flight ([`Admission`]). Every limit is a
//! setting (`GATEWAY_*`, see [`crate::config`]); refusals are 429 (one caller)
//! or 503 (the gateway is full) with `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use ipnet::IpNet;

/// Most client addresses a rate limiter tracks; beyond it the oldest windows go.
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Peers whose `X-Forwarded-For` is believed (`GATEWAY_TRUSTED_PROXIES`): the load
/// balancers in front of the gateway. Empty (the default): the TCP peer is the client.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// `10.0.0.0/8,127.0.0.1`: networks or single addresses.
    pub fn parse(items: &[String]) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(n) => n.trunc(),
                Err(_) => item
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("'{item}' is not an address or network"))?,
            };
            nets.push(net);
        }
        Ok(Self(nets))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the peer, or — when the peer is a trusted proxy — the
    /// rightmost `X-Forwarded-For` entry that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.contains(peer) {
            return Some(peer);
        }
        let chain = forwarded_for.unwrap_or_default();
        for hop in chain.rsplit(',').map(str::trim) {
            match hop.parse::<IpAddr>() {
                Ok(ip) if self.contains(ip) => continue,
                Ok(ip) => return Some(ip.to_canonical()),
                Err(_) => break,
            }
        }
        Some(peer)
    }

    /// The `X-Forwarded-For` to send upstream: the chain so far when the peer is a
    /// trusted proxy (it wrote it), nothing of the client's otherwise; then the peer.
    pub fn forwarded_for(&self, peer: Option<IpAddr>, incoming: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        if peer.is_some_and(|p| self.contains(p)) {
            out.extend(incoming.iter().cloned());
        }
        if let Some(ip) = peer {
            out.push(ip.to_canonical().to_string());
        }
        out
    }

    /// [`TrustedProxies::client_ip`] of a request.
    pub fn client_of(&self, req: &HttpRequest) -> Option<IpAddr> {
        let xff = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
        self.client_ip(req.peer_addr().map(|a| a.ip()), xff)
    }
}

/// At most `per_minute` events per client address in a fixed one-minute window.
pub struct RateLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Count one event of `ip`; `Err(seconds to wait)` when it is over the limit.
    pub fn hit(&self, ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        let mut map = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, (start, _)| now.duration_since(*start) < minute);
            if map.len() >= MAX_TRACKED_ADDRESSES {
                map.clear();
            }
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= minute {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_minute {
            let wait = minute.saturating_sub(now.duration_since(entry.0)).as_secs().max(1);
            return Err(wait);
        }
        entry.1 += 1;
        Ok(())
    }
}

/// Requests in flight per principal (`GATEWAY_MAX_INFLIGHT_PER_PRINCIPAL`).
#[derive(Clone)]
pub struct InflightLimiter {
    max: usize,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

/// One request in flight; dropping it ends it.
pub struct InflightGuard {
    key: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl InflightLimiter {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            counts: Arc::default(),
        }
    }

    /// Start a request of `key`; `None` when it already has `max` in flight.
    pub fn begin(&self, key: &str) -> Option<InflightGuard> {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.to_owned()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(InflightGuard {
            key: key.to_owned(),
            counts: self.counts.clone(),
        })
    }
}

/// Requests in flight through this gateway at once, all callers together
/// (`GATEWAY_MAX_INFLIGHT`): the bounded queue in front of the workers. A request
/// beyond it is shed at once, before any work is spent on it (no token check, no
/// body read), so a burst costs the gateway little and never turns into a queue
/// that grows until requests time out.
#[derive(Clone)]
pub struct Admission {
    max: usize,
    current: Arc<AtomicUsize>,
    /// What `/metrics` shows of `current` (admitted requests only), if anything.
    gauge: Option<prometheus::IntGauge>,
}

/// One admitted request; dropping it frees its place.
pub struct Admitted(Arc<AtomicUsize>, Option<prometheus::IntGauge>);

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(g) = &self.1 {
            g.dec();
        }
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(max: usize, gauge: prometheus::IntGauge) -> Self {
        Self {
            max,
            current: Arc::default(),
            gauge: Some(gauge),
        }
    }

    /// An admission whose count a metric of its holders already shows (the SSE
    /// streams: `mcp_gateway_sse_streams`).
    pub fn unmetered(max: usize) -> Self {
        Self {
            max,
            current: Arc::default(),
            gauge: None,
        }
    }

    /// Admit one request; `None` when `max` are already in flight.
    pub fn try_admit(&self) -> Option<Admitted> {
        // Optimistic increment: a request that finds the gateway full takes its
        // count back, so the count never stays above `max`.
        if self.current.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.current.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        if let Some(g) = &self.gauge {
            g.inc();
        }
        Some(Admitted(self.current.clone(), self.gauge.clone()))
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn client_address_believes_only_trusted_proxies() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(Some(ip("198.51.100.7")), Some("203.0.113.9")),
            Some(ip("198.51.100.7"))
        );
        let lb = TrustedProxies::parse(&["10.0.0.0/8".into(), "127.0.0.1".into()]).unwrap();
        assert_eq!(
            lb.client_ip(Some(ip("10.1.2.3")), Some("203.0.113.9, 10.9.9.9")),
            Some(ip("203.0.113.9"))
        );
        // A client that is not a proxy cannot name another address.
        assert_eq!(
            lb.client_ip(Some(ip("198.51.100.7")), Some("203.0.113.9")),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            lb.client_ip(Some(ip("10.1.2.3")), Some("garbage")),
            Some(ip("10.1.2.3"))
        );
        assert_eq!(lb.client_ip(Some(ip("::ffff:10.1.2.3")), None), Some(ip("10.1.2.3")));
        assert!(TrustedProxies::parse(&["nope".into()]).is_err());
        // Upstream: a client's own X-Forwarded-For is dropped, a proxy's kept.
        assert_eq!(
            none.forwarded_for(Some(ip("127.0.0.1")), &["203.0.113.9".into()]),
            vec!["127.0.0.1"]
        );
        assert_eq!(
            lb.forwarded_for(Some(ip("10.0.0.1")), &["203.0.113.9".into()]),
            vec!["203.0.113.9", "10.0.0.1"]
        );
    }

    #[test]
    fn rate_limit_per_address() {
        let l = RateLimiter::new(2);
        assert!(l.hit(ip("192.0.2.1")).is_ok());
        assert!(l.hit(ip("192.0.2.1")).is_ok());
        let wait = l.hit(ip("192.0.2.1")).unwrap_err();
        assert!((1..=60).contains(&wait));
        assert!(l.hit(ip("192.0.2.2")).is_ok(), "another address has its own window");
    }

    #[test]
    fn inflight_per_key() {
        let l = InflightLimiter::new(2);
        let a = l.begin("alice").unwrap();
        let _b = l.begin("alice").unwrap();
        assert!(l.begin("alice").is_none());
        assert!(l.begin("bob").is_some());
        drop(a);
        assert!(l.begin("alice").is_some());
    }

    fn gauge() -> prometheus::IntGauge {
        prometheus::IntGauge::new("in_flight", "test").unwrap()
    }

    #[test]
    fn admission_is_bounded_and_frees_on_drop() {
        let g = gauge();
        let a = Admission::new(2, g.clone());
        let first = a.try_admit().unwrap();
        let _second = a.try_admit().unwrap();
        assert!(a.try_admit().is_none(), "a third request is shed");
        assert_eq!(a.in_flight(), 2, "a shed request leaves no count behind");
        assert_eq!(g.get(), 2);
        drop(first);
        assert_eq!(a.in_flight(), 1);
        assert_eq!(g.get(), 1);
        assert!(a.try_admit().is_some());
        let streams = Admission::unmetered(1);
        let held = streams.try_admit().unwrap();
        assert!(streams.try_admit().is_none());
        drop(held);
        assert!(streams.try_admit().is_some());
    }

    #[test]
    fn admission_never_admits_more_than_its_max_under_contention() {
        let g = gauge();
        let a = Admission::new(8, g.clone());
        // Counted only while a guard is held: never above the limit if it holds.
        let (held, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (a, held, peak) = (a.clone(), held.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(g) = a.try_admit() {
                            let now = held.fetch_add(1, Ordering::AcqRel) + 1;
                            peak.fetch_max(now, Ordering::AcqRel);
                            held.fetch_sub(1, Ordering::AcqRel);
                            drop(g);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Acquire) <= 8);
        assert_eq!(a.in_flight(), 0);
        assert_eq!(g.get(), 0);
    }
}
