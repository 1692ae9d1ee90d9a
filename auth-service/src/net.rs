//! The network edge of the auth-service: who is calling, and how we call out.
//!
//! - [`client_ip`]: the caller's address, believing `X-Forwarded-For` only when the
//!   peer is one of the [`TrustedProxies`] (`AUTH_TRUSTED_PROXIES`).
//! - [`is_public`] and [`GuardedClient`]: fetching URLs that an untrusted party chose
//!   (Client ID Metadata Documents) without letting them reach internal hosts (SSRF).
//!   Host names are resolved by [`GuardedResolver`], which drops every non-public
//!   address, and reqwest connects only to what it returned — so a name that resolves
//!   to a public address when checked and to `127.0.0.1` a moment later (DNS
//!   rebinding) still cannot reach loopback. Literal IP hosts never reach a resolver
//!   and are checked in [`GuardedClient::check_url`]. No redirects, no proxies, no
//!   compression, https only, a connect and a total timeout, and a body limit that is
//!   enforced while reading.
//! - [`RateLimiter`]: a token bucket per source address (IPv6 by /64).
//!
//! Limits of this module: the rate limiter is in memory, so each replica counts on
//! its own (N replicas allow N times the rate; good enough to stop a single client
//! from filling the clients bucket, not a cluster-wide quota). `Forwarded`
//! (RFC 7239) is not read, only `X-Forwarded-For`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Longest wait for a TCP (and TLS) connection to an untrusted URL.
pub const FETCH_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time a whole fetch of an untrusted URL may take, body included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default largest body read from an untrusted URL.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// `User-Agent` of outgoing fetches.
pub const USER_AGENT: &str = concat!("mcp-cluster-auth-service/", env!("CARGO_PKG_VERSION"));
/// Most source addresses a [`RateLimiter`] remembers at once.
pub const RATE_LIMITER_MAX_ENTRIES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("url refused: {0}")]
    UrlRefused(String),
    #[error("host has no public address")]
    NotPublic,
    #[error("request failed: {0}")]
    Request(String),
    #[error("response is larger than {0} bytes")]
    TooLarge(usize),
    #[error("cannot build http client: {0}")]
    Build(String),
    #[error("'{0}' is not an ip address or cidr network")]
    BadProxy(String),
}

// ---------------------------------------------------------------------------
// Who is calling
// ---------------------------------------------------------------------------

/// Peers whose `X-Forwarded-For` is believed (`AUTH_TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    /// Parse `127.0.0.1,::1,10.0.0.0/8`: addresses or CIDR networks, comma separated.
    /// An empty list trusts nobody.
    pub fn parse(list: &str) -> Result<Self, NetError> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => item
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| NetError::BadProxy(item.to_owned()))?,
            };
            nets.push(net);
        }
        Ok(Self(nets))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        is_trusted(&self.0, ip)
    }
}

impl From<Vec<IpAddr>> for TrustedProxies {
    /// Single addresses as host networks (/32, /128).
    fn from(addrs: Vec<IpAddr>) -> Self {
        Self(addrs.into_iter().map(|ip| IpNet::from(ip.to_canonical())).collect())
    }
}

impl std::ops::Deref for TrustedProxies {
    type Target = [IpNet];
    fn deref(&self) -> &[IpNet] {
        &self.0
    }
}

fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|net| net.contains(&ip))
}

/// The caller's address: the TCP peer, or — when the peer is a trusted proxy — the
/// right-most address in `X-Forwarded-For` that is not itself a trusted proxy. Every
/// proxy appends the address it received the request from, so only the entries
/// appended by trusted proxies can be believed; anything further left was written by
/// the client. IPv4-mapped IPv6 addresses are returned as IPv4. A request without a
/// peer address (only in tests) counts as `0.0.0.0`.
pub fn client_ip(req: &HttpRequest, trusted_proxies: &[IpNet]) -> IpAddr {
    let peer = req
        .peer_addr()
        .map(|a| a.ip().to_canonical())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if !is_trusted(trusted_proxies, peer) {
        return peer;
    }
    let entries: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut current = peer;
    for entry in entries.iter().rev() {
        // Written by a trusted hop (`current`); unreadable means we stop at that hop.
        let Some(ip) = parse_forwarded_ip(entry) else {
            return current;
        };
        if !is_trusted(trusted_proxies, ip) {
            return ip;
        }
        current = ip;
    }
    current
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443`.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim().trim_matches('"');
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sock) = entry.parse::<SocketAddr>() {
        return Some(sock.ip().to_canonical());
    }
    let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<Ipv6Addr>().ok().map(|ip| IpAddr::V6(ip).to_canonical())
}

// ---------------------------------------------------------------------------
// SSRF guard
// ---------------------------------------------------------------------------

/// Whether `ip` is a globally reachable unicast address: what an untrusted URL may
/// make us connect to. Refused: unspecified, "this network" 0/8, loopback, RFC 1918
/// private, CGNAT 100.64/10, link-local, IETF protocol assignments 192.0.0/24, the
/// documentation and benchmarking ranges, the 6to4 relay anycast, multicast,
/// reserved 240/4 and broadcast; for IPv6 everything outside global unicast 2000::/3
/// (so also unique-local fc00::/7, link-local fe80::/10, multicast, discard
/// 100::/64, IPv4-compatible ::/96), the IETF 2001::/23 block (Teredo among it),
/// documentation 2001:db8::/32 and 3fff::/20. IPv4 embedded in IPv6 (mapped
/// `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is judged as that IPv4
/// address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0 // "this network", incl. 0.0.0.0
        || a == 10 // private
        || (a == 100 && (64..=127).contains(&b)) // CGNAT 100.64/10
        || a == 127 // loopback
        || (a == 169 && b == 254) // link-local (cloud metadata lives here)
        || (a == 172 && (16..=31).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168) // private
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast 224/4, reserved 240/4, broadcast
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return is_public_v4(embedded(s[1], s[2]));
    }
    if s[0] & 0xe000 != 0x2000 {
        return false; // not global unicast 2000::/3
    }
    // 2001::/23 IETF assignments (Teredo, ORCHID, …) and 2001:db8::/32 documentation.
    let ietf_or_doc = s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8);
    let doc_3fff = s[0] == 0x3fff && s[1] < 0x1000; // documentation 3fff::/20
    let refused = ietf_or_doc || doc_3fff;
    !refused
}

/// A [`reqwest::dns::Resolve`] that resolves with the system resolver and keeps only
/// public addresses (all of them when `allow_private`). When nothing is left the
/// lookup fails, so no connection is attempted.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allow_private: bool,
    /// Fixed answers instead of the system resolver (tests: a name that resolves to
    /// loopback without depending on the machine's DNS).
    fixed: Option<Arc<HashMap<String, Vec<IpAddr>>>>,
}

impl GuardedResolver {
    pub fn new(allow_private: bool) -> Self {
        Self {
            allow_private,
            fixed: None,
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let allow_private = self.allow_private;
        let fixed = self.fixed.clone();
        Box::pin(async move {
            let found: Vec<SocketAddr> = match fixed {
                Some(map) => map
                    .get(&host.to_ascii_lowercase())
                    .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect())
                    .unwrap_or_default(),
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if kept.is_empty() {
                tracing::info!(host = %host, "refused to connect: no public address");
                return Err(Box::new(NetError::NotPublic) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// A reqwest client builder for URLs an untrusted party chose: [`GuardedResolver`],
/// no redirects, no proxy, [`FETCH_CONNECT_TIMEOUT`], [`FETCH_TIMEOUT`], https only
/// unless `allow_private` (tests serve plain http on 127.0.0.1). Use it through
/// [`GuardedClient`], which also checks literal IP hosts and limits the body.
pub fn guarded_client_builder(allow_private: bool) -> reqwest::ClientBuilder {
    builder_with(GuardedResolver::new(allow_private))
}

fn builder_with(resolver: GuardedResolver) -> reqwest::ClientBuilder {
    let allow_private = resolver.allow_private;
    reqwest::Client::builder()
        .dns_resolver(Arc::new(resolver))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(FETCH_CONNECT_TIMEOUT)
        .timeout(FETCH_TIMEOUT)
        .https_only(!allow_private)
        .user_agent(USER_AGENT)
}

/// What a guarded fetch returned.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

/// An HTTP client for untrusted URLs (see the module docs).
#[derive(Debug, Clone)]
pub struct GuardedClient {
    client: reqwest::Client,
    allow_private: bool,
}

impl GuardedClient {
    /// `allow_private` (`AUTH_CIMD_ALLOW_PRIVATE`, tests only) lets URLs use plain
    /// http and reach private and loopback addresses.
    pub fn new(allow_private: bool) -> Result<Self, NetError> {
        Self::with_resolver(GuardedResolver::new(allow_private))
    }

    fn with_resolver(resolver: GuardedResolver) -> Result<Self, NetError> {
        let allow_private = resolver.allow_private;
        let client = builder_with(resolver)
            .build()
            .map_err(|e| NetError::Build(e.to_string()))?;
        Ok(Self { client, allow_private })
    }

    /// A client whose resolver answers from `hosts` only (tests).
    #[cfg(test)]
    pub(crate) fn with_fixed_hosts(allow_private: bool, hosts: &[(&str, IpAddr)]) -> Result<Self, NetError> {
        let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, ip) in hosts {
            map.entry(name.to_ascii_lowercase()).or_default().push(*ip);
        }
        Self::with_resolver(GuardedResolver {
            allow_private,
            fixed: Some(Arc::new(map)),
        })
    }

    pub fn allow_private(&self) -> bool {
        self.allow_private
    }

    /// Refuse before connecting: a scheme other than https (http too with
    /// `allow_private`), credentials in the URL, no host, or a literal IP host that
    /// is not [`is_public`]. Host names are checked when resolved.
    pub fn check_url(&self, url: &Url) -> Result<(), NetError> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_private => {}
            other => return Err(NetError::UrlRefused(format!("scheme '{other}' is not allowed"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(NetError::UrlRefused("credentials in the url".into()));
        }
        let ip = match url.host() {
            None => return Err(NetError::UrlRefused("no host".into())),
            Some(url::Host::Domain("")) => return Err(NetError::UrlRefused("no host".into())),
            Some(url::Host::Domain(_)) => return Ok(()),
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        };
        if !self.allow_private && !is_public(ip) {
            return Err(NetError::NotPublic);
        }
        Ok(())
    }

    /// GET `url` with `Accept: accept`, reading at most `max_bytes` of body (the
    /// fetch fails as soon as more arrives). Any status is returned; the caller
    /// decides what is acceptable. Redirects are returned, never followed.
    pub async fn get(&self, url: &Url, accept: &str, max_bytes: usize) -> Result<Fetched, NetError> {
        self.check_url(url)?;
        let mut resp = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .map_err(request_error)?;
        if resp.content_length().is_some_and(|n| n > max_bytes as u64) {
            return Err(NetError::TooLarge(max_bytes));
        }
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(request_error)? {
            if body.len() + chunk.len() > max_bytes {
                return Err(NetError::TooLarge(max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched { status, headers, body })
    }
}

/// A reqwest error as ours; the resolver's refusal comes back as [`NetError::NotPublic`].
fn request_error(e: reqwest::Error) -> NetError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(NetError::NotPublic) = s.downcast_ref::<NetError>() {
            return NetError::NotPublic;
        }
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_timeout() {
        return NetError::Request("timed out".into());
    }
    NetError::Request(text)
}

// ---------------------------------------------------------------------------
// Rate limiting
// ---------------------------------------------------------------------------

/// A token bucket per source address: `per_minute` requests at once, refilled at
/// `per_minute` a minute. IPv6 sources count per /64 (one host usually holds a whole
/// /64). In memory, per replica (see the module docs). At most
/// [`RATE_LIMITER_MAX_ENTRIES`] sources are remembered: when full, sources whose
/// bucket has refilled are forgotten (they are indistinguishable from new ones),
/// then the least recently seen.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    max_entries: usize,
    slots: Mutex<HashMap<IpAddr, Slot>>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// `per_minute` is at least 1.
    pub fn new(per_minute: u32) -> Self {
        Self::with_capacity(per_minute, RATE_LIMITER_MAX_ENTRIES)
    }

    fn with_capacity(per_minute: u32, max_entries: usize) -> Self {
        Self {
            per_minute: per_minute.max(1),
            max_entries: max_entries.max(1),
            slots: Mutex::new(HashMap::new()),
        }
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// Take one token for `ip`; `false` when its bucket is empty.
    pub fn check(&self, ip: IpAddr) -> bool {
        self.check_at(ip, Instant::now())
    }

    /// How long until a refused source has a token again (for `Retry-After`).
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs(60u64.div_ceil(u64::from(self.per_minute)))
    }

    /// How many sources are remembered.
    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn capacity(&self) -> f64 {
        f64::from(self.per_minute)
    }

    fn refill(&self, slot: Slot, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(slot.updated).as_secs_f64();
        (slot.tokens + elapsed * self.capacity() / 60.0).min(self.capacity())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> bool {
        let key = rate_key(ip);
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if !slots.contains_key(&key) && slots.len() >= self.max_entries {
            let cap = self.capacity();
            slots.retain(|_, s| self.refill(*s, now) < cap);
            if slots.len() >= self.max_entries
                && let Some(oldest) = slots.iter().min_by_key(|(_, s)| s.updated).map(|(k, _)| *k)
            {
                slots.remove(&oldest);
            }
        }
        let slot = slots.entry(key).or_insert(Slot {
            tokens: self.capacity(),
            updated: now,
        });
        let tokens = self.refill(*slot, now);
        slot.updated = now;
        if tokens >= 1.0 {
            slot.tokens = tokens - 1.0;
            true
        } else {
            slot.tokens = tokens;
            false
        }
    }
}

/// IPv4 as is; IPv6 by its /64.
fn rate_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn is_public_table() {
        let cases = [
            // public
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("93.184.216.34", true),
            ("100.63.255.255", true),
            ("100.128.0.1", true),
            ("172.15.0.1", true),
            ("172.32.0.1", true),
            ("192.0.1.1", true),
            ("198.20.0.1", true),
            ("223.255.255.255", true),
            ("2606:4700:4700::1111", true),
            ("2001:4860:4860::8888", true),
            ("::ffff:8.8.8.8", true),
            ("64:ff9b::808:808", true),
            ("2002:808:808::1", true),
            // IPv4 refused
            ("0.0.0.0", false),
            ("0.1.2.3", false),
            ("10.0.0.1", false),
            ("100.64.0.1", false),
            ("100.127.255.254", false),
            ("127.0.0.1", false),
            ("127.255.255.254", false),
            ("169.254.169.254", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("192.0.0.8", false),
            ("192.0.2.1", false),
            ("192.88.99.1", false),
            ("192.168.1.1", false),
            ("198.18.0.1", false),
            ("198.19.255.255", false),
            ("198.51.100.7", false),
            ("203.0.113.9", false),
            ("224.0.0.1", false),
            ("239.255.255.250", false),
            ("240.0.0.1", false),
            ("255.255.255.255", false),
            // IPv6 refused
            ("::", false),
            ("::1", false),
            ("::127.0.0.1", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.1.2.3", false),
            ("::ffff:169.254.169.254", false),
            ("64:ff9b::a00:1", false),
            ("64:ff9b:1::1", false),
            ("100::1", false),
            ("2001::1", false),
            ("2001:db8::1", false),
            ("2002:7f00:1::1", false),
            ("2002:a00:1::1", false),
            ("3fff::1", false),
            ("fc00::1", false),
            ("fd12:3456::1", false),
            ("fe80::1", false),
            ("fec0::1", false),
            ("ff02::1", false),
            ("5f00::1", false),
        ];
        for (addr, public) in cases {
            assert_eq!(is_public(ip(addr)), public, "{addr}");
        }
    }

    #[test]
    fn trusted_proxies_parse() {
        let t = TrustedProxies::parse(" 127.0.0.1, ::1 ,10.0.0.0/8,").unwrap();
        assert_eq!(t.len(), 3);
        assert!(t.contains(ip("127.0.0.1")));
        assert!(!t.contains(ip("127.0.0.2")));
        assert!(t.contains(ip("::1")));
        assert!(t.contains(ip("10.200.3.4")));
        assert!(t.contains(ip("::ffff:10.1.1.1")), "mapped addresses count as IPv4");
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        assert!(matches!(
            TrustedProxies::parse("10.0.0.0/33"),
            Err(NetError::BadProxy(_))
        ));
        assert!(matches!(
            TrustedProxies::parse("proxy.local"),
            Err(NetError::BadProxy(_))
        ));
    }

    #[test]
    fn client_ip_without_trusted_proxy_is_the_peer() {
        let trusted = TrustedProxies::parse("127.0.0.1").unwrap();
        let req = TestRequest::default()
            .peer_addr("203.0.113.5:4000".parse().unwrap())
            .insert_header(("X-Forwarded-For", "198.51.100.1"))
            .to_http_request();
        assert_eq!(
            client_ip(&req, &trusted),
            ip("203.0.113.5"),
            "untrusted peer's header ignored"
        );
        let req = TestRequest::default()
            .peer_addr("[::ffff:203.0.113.5]:4000".parse().unwrap())
            .to_http_request();
        assert_eq!(client_ip(&req, &[]), ip("203.0.113.5"));
        let req = TestRequest::default().to_http_request();
        assert_eq!(client_ip(&req, &[]), ip("0.0.0.0"));
    }

    #[test]
    fn client_ip_behind_trusted_proxies_is_rightmost_untrusted() {
        let trusted = TrustedProxies::parse("127.0.0.1,10.0.0.0/8").unwrap();
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let with = |values: &[&str]| {
            let mut r = TestRequest::default().peer_addr(peer);
            for v in values {
                r = r.append_header(("X-Forwarded-For", *v));
            }
            client_ip(&r.to_http_request(), &trusted)
        };
        // The client forged the left-most entry; the right-most untrusted one is real.
        assert_eq!(with(&["6.6.6.6, 198.51.100.7, 10.1.2.3"]), ip("198.51.100.7"));
        // Split over several header lines.
        assert_eq!(with(&["6.6.6.6", "198.51.100.7", "10.1.2.3"]), ip("198.51.100.7"));
        // Ports and brackets.
        assert_eq!(with(&["198.51.100.7:1234"]), ip("198.51.100.7"));
        assert_eq!(with(&["[2001:db8::7]:443"]), ip("2001:db8::7"));
        assert_eq!(with(&["2001:db8::7"]), ip("2001:db8::7"));
        // Only trusted hops: the left-most of them.
        assert_eq!(with(&["10.0.0.9, 10.0.0.8"]), ip("10.0.0.9"));
        // No header: the proxy itself.
        assert_eq!(with(&[]), ip("127.0.0.1"));
        // Garbage written by a trusted hop stops the walk at that hop.
        assert_eq!(with(&["6.6.6.6, unknown, 10.0.0.8"]), ip("10.0.0.8"));
    }

    #[test]
    fn rate_limiter_refuses_the_n_plus_first_and_refills() {
        let rl = RateLimiter::new(3);
        let t0 = Instant::now();
        let a = ip("198.51.100.1");
        for _ in 0..3 {
            assert!(rl.check_at(a, t0));
        }
        assert!(!rl.check_at(a, t0), "4th in the same instant is refused");
        assert!(rl.check_at(ip("198.51.100.2"), t0), "other sources are not affected");
        // One token every 20 s.
        assert!(!rl.check_at(a, t0 + Duration::from_secs(19)));
        assert!(rl.check_at(a, t0 + Duration::from_secs(21)));
        assert!(!rl.check_at(a, t0 + Duration::from_secs(21)));
        assert_eq!(rl.retry_after(), Duration::from_secs(20));
        // IPv6 by /64.
        let rl = RateLimiter::new(1);
        assert!(rl.check_at(ip("2001:db8:1:2::1"), t0));
        assert!(!rl.check_at(ip("2001:db8:1:2::ffff"), t0));
        assert!(rl.check_at(ip("2001:db8:1:3::1"), t0));
        assert_eq!(RateLimiter::new(0).per_minute(), 1);
    }

    #[test]
    fn rate_limiter_map_is_bounded() {
        let rl = RateLimiter::with_capacity(2, 3);
        let t0 = Instant::now();
        for i in 1..=3 {
            assert!(rl.check_at(ip(&format!("198.51.100.{i}")), t0));
        }
        assert_eq!(rl.len(), 3);
        // Full, nobody refilled: the least recently seen (…1) goes.
        assert!(rl.check_at(ip("198.51.100.4"), t0 + Duration::from_millis(1)));
        assert_eq!(rl.len(), 3);
        // A minute later everyone refilled: all forgotten but the newcomer.
        assert!(rl.check_at(ip("198.51.100.5"), t0 + Duration::from_secs(61)));
        assert_eq!(rl.len(), 1);
    }

    #[test]
    fn check_url_refuses_before_connecting() {
        let strict = GuardedClient::new(false).unwrap();
        let url = |s: &str| Url::parse(s).unwrap();
        for bad in [
            "http://example.com/x",
            "ftp://example.com/x",
            "https://user:pw@example.com/x",
            "https://127.0.0.1/x",
            "https://0x7f.1/x",
            "https://10.0.0.1/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://[fd00::1]/x",
            "https://0.0.0.0/x",
        ] {
            assert!(strict.check_url(&url(bad)).is_err(), "{bad}");
        }
        assert!(strict.check_url(&url("https://example.com/x")).is_ok());
        assert!(strict.check_url(&url("https://93.184.216.34/x")).is_ok());
        let lax = GuardedClient::new(true).unwrap();
        assert!(lax.check_url(&url("http://127.0.0.1:8080/x")).is_ok());
        assert!(lax.check_url(&url("ftp://127.0.0.1/x")).is_err());
    }

    /// A TCP listener that counts connections (and answers a tiny HTTP response).
    async fn counting_listener() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let _ = sock
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                        .await;
                });
            }
        });
        (port, count)
    }

    #[tokio::test]
    async fn ssrf_refused_without_a_connection() {
        use std::sync::atomic::Ordering;
        let (port, count) = counting_listener().await;
        let strict = GuardedClient::with_fixed_hosts(
            false,
            &[("rebind.test", ip("127.0.0.1")), ("localhost", ip("127.0.0.1"))],
        )
        .unwrap();
        for u in [
            format!("http://127.0.0.1:{port}/cimd"),
            format!("https://127.0.0.1:{port}/cimd"),
            format!("https://10.0.0.1:{port}/cimd"),
            format!("https://localhost:{port}/cimd"),
            format!("https://rebind.test:{port}/cimd"),
        ] {
            let err = strict.get(&Url::parse(&u).unwrap(), "application/json", 1024).await;
            assert!(err.is_err(), "{u} must be refused");
        }
        // The system resolver's "localhost" is refused the same way.
        let system = GuardedClient::new(false).unwrap();
        let err = system
            .get(
                &Url::parse(&format!("https://localhost:{port}/cimd")).unwrap(),
                "*/*",
                1024,
            )
            .await;
        assert!(matches!(err, Err(NetError::NotPublic)), "{err:?}");
        let err = strict
            .get(
                &Url::parse(&format!("https://rebind.test:{port}/cimd")).unwrap(),
                "*/*",
                1024,
            )
            .await;
        assert!(matches!(err, Err(NetError::NotPublic)), "{err:?}");
        assert_eq!(count.load(Ordering::SeqCst), 0, "nothing reached the listener");

        // Control: the same listener is reachable when private addresses are allowed,
        // through the resolver too.
        let lax = GuardedClient::with_fixed_hosts(true, &[("rebind.test", ip("127.0.0.1"))]).unwrap();
        let got = lax
            .get(
                &Url::parse(&format!("http://rebind.test:{port}/cimd")).unwrap(),
                "*/*",
                1024,
            )
            .await
            .unwrap();
        assert_eq!((got.status, got.body.as_slice()), (200, &b"{}"[..]));
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[actix_web::test]
    async fn fetch_limits_size_and_never_follows_redirects() {
        use actix_web::{App, HttpResponse, HttpServer, web};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(|| {
            App::new()
                .route(
                    "/big",
                    web::get().to(|| async { HttpResponse::Ok().body(vec![b'a'; 5000]) }),
                )
                .route(
                    "/stream",
                    web::get().to(|| async {
                        // No content-length: the limit applies while reading.
                        let chunks = (0..10).map(|_| Ok::<_, actix_web::Error>(web::Bytes::from(vec![b'b'; 1000])));
                        HttpResponse::Ok().streaming(futures::stream::iter(chunks))
                    }),
                )
                .route(
                    "/redirect",
                    web::get().to(|| async { HttpResponse::Found().insert_header(("Location", "/big")).finish() }),
                )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        let c = GuardedClient::new(true).unwrap();
        let url = |p: &str| Url::parse(&format!("http://127.0.0.1:{port}{p}")).unwrap();
        assert!(matches!(
            c.get(&url("/big"), "*/*", 4096).await,
            Err(NetError::TooLarge(4096))
        ));
        assert!(matches!(
            c.get(&url("/stream"), "*/*", 4096).await,
            Err(NetError::TooLarge(4096))
        ));
        assert_eq!(c.get(&url("/big"), "*/*", 8192).await.unwrap().body.len(), 5000);
        let r = c.get(&url("/redirect"), "*/*", 4096).await.unwrap();
        assert_eq!(r.status, 302, "redirects are returned, not followed");
        handle.stop(false).await;
    }
}
