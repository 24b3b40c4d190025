//! Upstream pools: a set of peers and how one is picked for a request.

use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// The largest weight one peer may have (the selector repeats a peer `weight` times).
pub const MAX_WEIGHT: u32 = 1000;

/// A named pool of peers, balanced by weighted round robin.
pub struct Pool {
    pub name: String,
    /// Peers with their weights, in configuration order.
    pub peers: Vec<(SocketAddr, u32)>,
    lb: LoadBalancer<RoundRobin>,
    /// Attempts per request: the first plus retries after a refused connection.
    pub max_tries: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(name: &str, peers: Vec<(SocketAddr, u32)>) -> Pool {
        let backends: BTreeSet<Backend> = peers
            .iter()
            .map(|(addr, w)| {
                Backend::new_with_weight(&addr.to_string(), *w as usize)
                    .expect("a SocketAddr is a valid backend address")
            })
            .collect();
        let lb = LoadBalancer::from_backends(Backends::new(Static::new(backends)));
        // Static discovery never blocks or fails: this only builds the selector.
        let _ = futures_now(lb.update());
        let max_tries = peers.len().clamp(1, 2);
        Pool {
            name: name.to_string(),
            peers,
            lb,
            max_tries,
        }
    }

    /// Pick a peer, skipping those in `avoid` (peers that already refused this request).
    pub fn select(&self, avoid: &[SocketAddr]) -> Option<SocketAddr> {
        let limit = 16 + self.peers.len() * 2;
        self.lb
            .select_with(b"", limit, |b, healthy| {
                healthy && b.addr.as_inet().is_some_and(|a| !avoid.contains(a))
            })
            .and_then(|b| b.addr.as_inet().copied())
    }
}

/// Poll a future that is known to complete without waiting.
fn futures_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    use std::task::{Context, Poll, Waker};
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_round_robin_follows_weights() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let pool = Pool::new("p", vec![(a, 1), (b, 3)]);
        let mut counts = [0; 2];
        for _ in 0..400 {
            let p = pool.select(&[]).unwrap();
            counts[usize::from(p == b)] += 1;
        }
        assert_eq!(counts, [100, 300]);
    }

    #[test]
    fn avoids_peers_that_failed() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let pool = Pool::new("p", vec![(a, 1), (b, 1)]);
        for _ in 0..10 {
            assert_eq!(pool.select(&[a]), Some(b));
        }
        assert_eq!(pool.select(&[a, b]), None);
    }
}
