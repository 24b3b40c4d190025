//! Upstream pools: a set of peers, how one is picked for a request, and their health.

pub mod compile;
pub mod dns;
pub mod health;

pub use health::{HealthCheck, HealthKind};

use arc_swap::ArcSwap;
use pingora_load_balancing::selection::{BackendIter, BackendSelection, Consistent, RoundRobin};
use pingora_load_balancing::Backend;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The largest weight one peer may have (the selector repeats a peer `weight` times).
pub const MAX_WEIGHT: u32 = 1000;

/// What a consistent-hash pool hashes (a claim key needs every route to the pool to have auth).
pub use crate::request_key::RequestKey as HashKey;

/// TLS to the peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Server name sent and verified; empty: the peer's address.
    pub sni: String,
    /// Verify the peer's certificate against the system roots (`SSL_CERT_FILE` is honoured).
    pub verify: bool,
}

/// Connection settings for a pool's peers.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerSettings {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub tls: Option<Tls>,
    /// Attempts per request: the first plus retries after a failed connection.
    pub tries: usize,
    pub protocol: crate::config::UpstreamProtocol,
    /// Concurrent streams per HTTP/2 connection.
    pub max_streams: usize,
}

/// Streams per upstream HTTP/2 connection unless `max_streams` says otherwise.
pub const DEFAULT_MAX_STREAMS: usize = 100;

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            tls: None,
            tries: 2,
            protocol: crate::config::UpstreamProtocol::H1,
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

/// Pingora's selection algorithms on their own: the health they would look up by a hashed key
/// is ours (`Members::health`, by position), so their `LoadBalancer` wrapper is not used.
enum Selector {
    RoundRobin(Arc<RoundRobin>),
    Hash(Arc<Consistent>),
}

/// Health of one peer as the checks see it.
struct PeerHealth {
    healthy: AtomicBool,
    successes: AtomicU32,
    failures: AtomicU32,
}

impl PeerHealth {
    fn new(healthy: bool) -> PeerHealth {
        PeerHealth {
            healthy: AtomicBool::new(healthy),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
        }
    }
}

/// The peers of a pool at one time, and what picks among them. Replaced whole when DNS
/// re-resolution finds other addresses (requests in flight keep the set they started with).
struct Members {
    peers: Vec<(SocketAddr, u32)>,
    selector: Selector,
    health: Vec<PeerHealth>,
}

impl Members {
    fn index(&self, addr: &SocketAddr) -> Option<usize> {
        self.peers.iter().position(|(a, _)| a == addr)
    }

    fn is_healthy(&self, addr: &SocketAddr) -> bool {
        self.index(addr)
            .is_some_and(|i| self.health[i].healthy.load(Ordering::Relaxed))
    }
}

/// A named pool of peers.
pub struct Pool {
    pub name: String,
    members: ArcSwap<Members>,
    /// Set for consistent hashing.
    pub hash_key: Option<HashKey>,
    pub settings: PeerSettings,
    pub health_check: Option<HealthCheck>,
    /// Set when the peers' names are looked up again while the pool is in use.
    pub resolve: Option<dns::Resolve>,
    /// `portcullis_upstream_duration_seconds{upstream=name}`.
    pub duration: prometheus::Histogram,
}

/// Which pool a route's requests go to.
#[derive(Debug)]
pub enum Choice {
    /// `upstream`: always this one.
    Fixed(Arc<Pool>),
    /// `upstream_by`: the pool a claim of the verified token names.
    ByClaim(ByClaim),
}

/// `upstream_by`, compiled: claim value -> pool.
#[derive(Debug)]
pub struct ByClaim {
    pub claim: crate::auth::ClaimPath,
    pub map: std::collections::HashMap<String, Arc<Pool>>,
    /// For a token without the claim or with a value not in `map`; none: 403.
    pub default: Option<Arc<Pool>>,
}

impl ByClaim {
    /// The pool for these claims. A string claim is looked up as it is; a number or boolean by
    /// its JSON text (`7`, `true`); an array, object or null never matches (the default applies).
    pub fn pick(&self, claims: &crate::auth::Claims) -> Option<&Arc<Pool>> {
        use serde_json::Value;
        let mapped = match claims.at(&self.claim) {
            Some(Value::String(s)) => self.map.get(s.as_str()),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => self.map.get(&v.to_string()),
            _ => None,
        };
        mapped.or(self.default.as_ref())
    }
}

impl Choice {
    /// The pool when it does not depend on the token.
    pub fn fixed(&self) -> Option<&Arc<Pool>> {
        match self {
            Choice::Fixed(p) => Some(p),
            Choice::ByClaim(_) => None,
        }
    }

    /// The pool's name, or `by <claim>: a|b|*default`.
    pub fn describe(&self) -> String {
        match self {
            Choice::Fixed(p) => p.name.clone(),
            Choice::ByClaim(b) => {
                let mut names: Vec<&str> = b.map.values().map(|p| p.name.as_str()).collect();
                names.sort_unstable();
                names.dedup();
                let mut s = format!("by {}: {}", b.claim.as_str(), names.join("|"));
                if let Some(d) = &b.default {
                    s.push_str(&format!(" (default {})", d.name));
                }
                s
            }
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("peers", &self.peers())
            .field("hash_key", &self.hash_key)
            .finish_non_exhaustive()
    }
}

fn selection<S: BackendSelection>(peers: &[(SocketAddr, u32)]) -> Arc<S> {
    let backends: BTreeSet<Backend> = peers
        .iter()
        .map(|(addr, w)| {
            Backend::new_with_weight(&addr.to_string(), *w as usize)
                .expect("a SocketAddr is a valid backend address")
        })
        .collect();
    Arc::new(S::build(&backends))
}

/// The first of at most `limit` candidates the selection offers that `accept` takes.
fn first(
    mut candidates: impl BackendIter,
    limit: usize,
    accept: impl Fn(&SocketAddr) -> bool,
) -> Option<SocketAddr> {
    for _ in 0..limit {
        let b = candidates.next()?;
        if let Some(addr) = b.addr.as_inet().filter(|a| accept(a)) {
            return Some(*addr);
        }
    }
    None
}

impl Pool {
    /// A weighted round-robin pool with default settings.
    pub fn new(name: &str, peers: Vec<(SocketAddr, u32)>) -> Pool {
        Pool::with(name, peers, None, PeerSettings::default(), None)
    }

    /// A pool; `hash_key` set means consistent hashing (ketama) on that key.
    pub fn with(
        name: &str,
        peers: Vec<(SocketAddr, u32)>,
        hash_key: Option<HashKey>,
        settings: PeerSettings,
        health_check: Option<HealthCheck>,
    ) -> Pool {
        let members = Pool::members(peers, hash_key.is_some(), None);
        Pool {
            name: name.to_string(),
            members: ArcSwap::from_pointee(members),
            hash_key,
            settings,
            health_check,
            resolve: None,
            duration: crate::observe::metrics()
                .upstream_duration
                .with_label_values(&[name]),
        }
    }

    /// A member set; peers that were in `before` keep their health.
    fn members(peers: Vec<(SocketAddr, u32)>, hashed: bool, before: Option<&Members>) -> Members {
        let selector = match hashed {
            false => Selector::RoundRobin(selection(&peers)),
            true => Selector::Hash(selection(&peers)),
        };
        let health = peers
            .iter()
            .map(|(a, _)| {
                let old = before.and_then(|m| m.index(a).map(|i| &m.health[i]));
                let h = PeerHealth::new(old.is_none_or(|h| h.healthy.load(Ordering::Relaxed)));
                if let Some(old) = old {
                    h.successes
                        .store(old.successes.load(Ordering::Relaxed), Ordering::Relaxed);
                    h.failures
                        .store(old.failures.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                h
            })
            .collect();
        Members {
            peers,
            selector,
            health,
        }
    }

    /// The peers now, with their weights, in configuration order.
    pub fn peers(&self) -> Vec<(SocketAddr, u32)> {
        self.members.load().peers.clone()
    }

    /// Replace the peers (after a DNS lookup found others); true if they changed. New
    /// connections go to the new set; those open or in flight to a removed peer finish.
    pub fn set_peers(&self, peers: Vec<(SocketAddr, u32)>) -> bool {
        let now = self.members.load();
        if now.peers == peers {
            return false;
        }
        let next = Pool::members(peers, self.hash_key.is_some(), Some(&now));
        self.members.store(Arc::new(next));
        true
    }

    /// Is this peer in service (as far as health checks know)?
    pub fn is_healthy(&self, addr: &SocketAddr) -> bool {
        self.members.load().is_healthy(addr)
    }

    /// Record one health check result for the peer `addr`; returns the peer's new state
    /// when it changed.
    pub fn record_check(&self, addr: &SocketAddr, ok: bool) -> Option<bool> {
        let members = self.members.load();
        let i = members.index(addr)?;
        let (h, hc) = (&members.health[i], self.health_check.as_ref()?);
        if ok {
            h.failures.store(0, Ordering::Relaxed);
            let n = h.successes.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= hc.healthy_after && !h.healthy.swap(true, Ordering::Relaxed) {
                return Some(true);
            }
        } else {
            h.successes.store(0, Ordering::Relaxed);
            let n = h.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= hc.unhealthy_after && h.healthy.swap(false, Ordering::Relaxed) {
                return Some(false);
            }
        }
        None
    }

    /// Pick a healthy peer, skipping those in `avoid` (peers that already failed this request).
    /// `key` is hashed for consistent hashing and ignored by round robin.
    pub fn select(&self, key: &[u8], avoid: &[SocketAddr]) -> Option<SocketAddr> {
        let members = self.members.load();
        let limit = 16 + members.peers.len() * 2;
        let accept = |a: &SocketAddr| !avoid.contains(a) && members.is_healthy(a);
        match &members.selector {
            Selector::RoundRobin(s) => first(s.iter(b""), limit, accept),
            Selector::Hash(s) => first(s.iter(key), limit, accept),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1000 + i))
    }

    #[test]
    fn weighted_round_robin_follows_weights() {
        let (a, b) = (addr(1), addr(2));
        let pool = Pool::new("p", vec![(a, 1), (b, 3)]);
        let mut counts = [0; 2];
        for _ in 0..400 {
            let p = pool.select(b"", &[]).unwrap();
            counts[usize::from(p == b)] += 1;
        }
        assert_eq!(counts, [100, 300]);
    }

    #[test]
    fn avoids_peers_that_failed() {
        let (a, b) = (addr(1), addr(2));
        let pool = Pool::new("p", vec![(a, 1), (b, 1)]);
        for _ in 0..10 {
            assert_eq!(pool.select(b"", &[a]), Some(b));
        }
        assert_eq!(pool.select(b"", &[a, b]), None);
    }

    fn hashed(n: u16) -> Pool {
        Pool::with(
            "h",
            (0..n).map(|i| (addr(i), 1)).collect(),
            Some(HashKey::Ip),
            PeerSettings::default(),
            None,
        )
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_about_one_nth_on_removal() {
        let five = hashed(5);
        let four = Pool::with(
            "h",
            (0..4).map(|i| (addr(i), 1)).collect(),
            Some(HashKey::Ip),
            PeerSettings::default(),
            None,
        );
        let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
        let mut moved = 0;
        let mut per_peer = std::collections::HashMap::new();
        for k in &keys {
            let a = five.select(k.as_bytes(), &[]).unwrap();
            assert_eq!(five.select(k.as_bytes(), &[]), Some(a), "not sticky");
            *per_peer.entry(a).or_insert(0) += 1;
            let b = four.select(k.as_bytes(), &[]).unwrap();
            if a != b {
                moved += 1;
                // Only keys of the removed peer move.
                assert_eq!(a, addr(4), "{k} moved from a peer that stayed");
            }
        }
        let share = moved as f64 / keys.len() as f64;
        assert!((0.12..=0.28).contains(&share), "moved {share}");
        assert_eq!(per_peer.len(), 5);
        for n in per_peer.values() {
            assert!(*n > 1000, "{per_peer:?}");
        }
    }

    #[test]
    fn health_thresholds() {
        let hc = HealthCheck {
            kind: HealthKind::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_after: 2,
            healthy_after: 3,
        };
        let pool = Pool::with(
            "p",
            vec![(addr(1), 1), (addr(2), 1)],
            None,
            PeerSettings::default(),
            Some(hc),
        );
        assert_eq!(pool.record_check(&addr(1), false), None);
        assert!(pool.is_healthy(&addr(1)));
        assert_eq!(pool.record_check(&addr(1), false), Some(false));
        assert!(!pool.is_healthy(&addr(1)));
        for _ in 0..10 {
            assert_eq!(pool.select(b"", &[]), Some(addr(2)));
        }
        assert_eq!(pool.record_check(&addr(1), true), None);
        assert_eq!(pool.record_check(&addr(1), true), None);
        assert_eq!(pool.record_check(&addr(1), true), Some(true));
        assert!(pool.is_healthy(&addr(1)));
        pool.record_check(&addr(2), false);
        pool.record_check(&addr(2), false);
        pool.record_check(&addr(1), false);
        pool.record_check(&addr(1), false);
        assert_eq!(pool.select(b"", &[]), None, "all down: no peer");
    }
}
