//! Rate limits (token buckets keyed by a claim, the client IP or a header) and revocation.
//!
//! Memory is bounded: each limit keeps at most `max_keys` buckets, spread over shards. A bucket
//! that has refilled to `burst` is the same as no bucket at all, so when a shard is full such
//! buckets are dropped first (losing nothing). If none is full, the bucket with the most tokens
//! is dropped: it is the one closest to "no bucket", and the drained buckets — the clients that
//! are actually being limited — keep their state, so a flood of new keys cannot reset them.

pub mod compile;
pub mod revocation;

pub use revocation::{Revocation, RevocationSet};

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

const SHARDS: usize = 64;

/// Default bound on keys per limit.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// What a limit counts by (`claim:NAME` is applied after verification only).
pub use crate::request_key::RequestKey as LimitKey;

/// Parse `10/s`, `600/m`, `3600/h`: requests per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let (n, unit) = s
        .split_once('/')
        .ok_or_else(|| format!("invalid rate {s:?}: use N/s, N/m or N/h"))?;
    let n: f64 = n
        .trim()
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0)
        .ok_or_else(|| format!("invalid rate {s:?}: N must be a positive number"))?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("invalid rate {s:?}: use N/s, N/m or N/h")),
    };
    Ok(n / per)
}

#[derive(Debug, Clone)]
struct Bucket {
    /// May be negative with `sync:`: what other instances spent is a debt repaid by refill.
    tokens: f64,
    /// Nanoseconds since the limiter's epoch.
    last: u64,
    /// With `sync:`: requests admitted since the last push to Redis, and the key they count
    /// against (the map holds only its hash).
    pending: u32,
    key: Option<Box<[u8]>>,
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Whole tokens left after this request.
    pub remaining: u32,
    /// Seconds until a request would be allowed again (0 when allowed).
    pub retry_after: f64,
    /// Seconds until the bucket is full again.
    pub reset: f64,
}

/// One configured rate limit and its buckets.
pub struct RateLimiter {
    pub name: String,
    pub key: LimitKey,
    /// Tokens per second.
    pub rate: f64,
    pub burst: u32,
    pub max_keys: usize,
    shards: Vec<Mutex<HashMap<u64, Bucket>>>,
    hasher: RandomState,
    /// `portcullis_rate_limited_total{limit=name}`.
    pub limited: prometheus::IntCounter,
    /// `scope: cluster`: the bucket lives in Redis; the local buckets are the `on_error: local`
    /// fallback.
    pub shared: Option<crate::cluster::limit::SharedLimit>,
    pub on_error: crate::cluster::OnError,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds on the limiter clock (monotonic).
pub fn clock_nanos() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

impl RateLimiter {
    pub fn new(name: &str, key: LimitKey, rate: f64, burst: u32, max_keys: usize) -> Self {
        let per_shard = (max_keys / SHARDS).max(1);
        RateLimiter {
            name: name.to_string(),
            key,
            rate,
            burst,
            max_keys: per_shard * SHARDS,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_capacity(per_shard.min(1024))))
                .collect(),
            hasher: RandomState::new(),
            limited: crate::observe::metrics()
                .rate_limited
                .with_label_values(&[name]),
            shared: None,
            on_error: crate::cluster::OnError::Local,
        }
    }

    /// Take one token for `key` at time `now` (see `clock_nanos`).
    ///
    /// Keys are stored as 64-bit keyed hashes (SipHash with a per-process random key), so an
    /// outsider cannot make two keys share a bucket on purpose.
    pub fn check(&self, key: &[u8], now: u64) -> Decision {
        let h = self.hasher.hash_one(key);
        let shard = &self.shards[(h as usize) % SHARDS];
        let per_shard = self.max_keys / SHARDS;
        let burst = f64::from(self.burst);
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&h) && map.len() >= per_shard {
            self.evict(&mut map, now);
        }
        let b = map.entry(h).or_insert_with(|| Bucket {
            tokens: burst,
            last: now,
            pending: 0,
            key: self.syncs().then(|| key.into()),
        });
        let elapsed = now.saturating_sub(b.last) as f64 / 1e9;
        b.tokens = (b.tokens + elapsed * self.rate).min(burst);
        b.last = now.max(b.last);
        let allowed = b.tokens >= 1.0;
        if allowed {
            b.tokens -= 1.0;
            b.pending = b.pending.saturating_add(1);
        }
        let tokens = b.tokens;
        drop(map);
        Decision {
            allowed,
            remaining: tokens.max(0.0).floor() as u32,
            retry_after: if allowed {
                0.0
            } else {
                (1.0 - tokens) / self.rate
            },
            reset: (burst - tokens) / self.rate,
        }
    }

    /// `sync:` is set: admission is local and the counts are shared in the background.
    fn syncs(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.sync.is_some())
    }

    /// Run the `sync:` rounds in the background for as long as this limiter is in a policy.
    pub fn watch(limiter: &std::sync::Arc<RateLimiter>) {
        let Some(every) = limiter.shared.as_ref().and_then(|s| s.sync) else {
            return;
        };
        if !limiter.shared.as_ref().is_some_and(|s| s.claim_sync_loop()) {
            return;
        }
        let weak = std::sync::Arc::downgrade(limiter);
        crate::background::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(l) = weak.upgrade() else { return };
                l.sync_once().await;
            }
        });
    }

    /// One round of `sync:`: push what this instance admitted since the last round for every
    /// key still refilling, and take Redis's level (everyone's spending) as the local one. A
    /// round that fails drops its counts: while Redis is away each instance limits on its own,
    /// and an outage is not billed to the client afterwards.
    pub async fn sync_once(&self) {
        let Some(shared) = &self.shared else { return };
        let now = clock_nanos();
        let burst = f64::from(self.burst);
        let mut batch: Vec<(usize, u64, Box<[u8]>, u32)> = Vec::new();
        for (i, shard) in self.shards.iter().enumerate() {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (h, b) in map.iter_mut() {
                let elapsed = now.saturating_sub(b.last) as f64 / 1e9;
                let refilled = b.tokens + elapsed * self.rate >= burst;
                if let (Some(key), false) = (&b.key, b.pending == 0 && refilled) {
                    batch.push((i, *h, key.clone(), b.pending));
                    b.pending = 0;
                }
            }
        }
        if batch.is_empty() || !shared.redis.is_up() {
            return;
        }
        for chunk in batch.chunks(256) {
            let replies = futures_util::future::join_all(
                chunk
                    .iter()
                    .map(|(_, _, key, used)| shared.push(key, *used)),
            )
            .await;
            let now = clock_nanos();
            for ((shard, h, _, _), reply) in chunk.iter().zip(replies) {
                let Ok(level) = reply else { continue };
                let mut map = self.shards[*shard]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if let Some(b) = map.get_mut(h) {
                    // What was admitted here while the push was on its way is not in Redis's
                    // level yet: it stays pending and is spent locally too.
                    b.tokens = level.min(burst) - f64::from(b.pending);
                    b.last = now;
                }
            }
        }
    }

    /// Make room in a full shard: drop refilled buckets, else the fullest one.
    fn evict(&self, map: &mut HashMap<u64, Bucket>, now: u64) {
        let burst = f64::from(self.burst);
        let rate = self.rate;
        let mut fullest: Option<(u64, f64)> = None;
        map.retain(|k, b| {
            let elapsed = now.saturating_sub(b.last) as f64 / 1e9;
            let tokens = b.tokens + elapsed * rate;
            if tokens >= burst {
                return false;
            }
            if fullest.is_none_or(|(_, t)| tokens > t) {
                fullest = Some((*k, tokens));
            }
            true
        });
        if map.len() >= self.max_keys / SHARDS {
            if let Some((k, _)) = fullest {
                map.remove(&k);
            }
        }
    }

    /// Same key, rate, burst and bound: a reload may keep this limiter's buckets.
    pub fn same_definition(&self, other: &RateLimiter) -> bool {
        self.name == other.name
            && self.key == other.key
            && self.rate == other.rate
            && self.burst == other.burst
            && self.max_keys == other.max_keys
            && self.on_error == other.on_error
            && match (&self.shared, &other.shared) {
                (None, None) => true,
                (Some(a), Some(b)) => {
                    std::sync::Arc::ptr_eq(&a.redis, &b.redis) && a.sync == b.sync
                }
                _ => false,
            }
    }

    /// Buckets held now (for tests and the bound).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10/s").unwrap(), 10.0);
        assert_eq!(parse_rate("120/m").unwrap(), 2.0);
        assert_eq!(parse_rate("3600/h").unwrap(), 1.0);
        for bad in ["10", "0/s", "-1/s", "x/s", "10/d", "/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_bucket_burst_then_rate() {
        let l = RateLimiter::new("t", LimitKey::Ip, 2.0, 3, 1000);
        let t0 = 10 * S;
        for i in 0..3 {
            let d = l.check(b"a", t0);
            assert!(d.allowed, "burst request {i}");
            assert_eq!(d.remaining, 2 - i);
        }
        let d = l.check(b"a", t0);
        assert!(!d.allowed);
        assert!((d.retry_after - 0.5).abs() < 1e-9, "{d:?}");
        assert!((d.reset - 1.5).abs() < 1e-9, "{d:?}");
        // Half a second later one token is back.
        assert!(l.check(b"a", t0 + S / 2).allowed);
        assert!(!l.check(b"a", t0 + S / 2).allowed);
        // Keys are independent.
        assert!(l.check(b"b", t0).allowed);
        // Long idle: refilled to burst, never beyond.
        for _ in 0..3 {
            assert!(l.check(b"a", t0 + 100 * S).allowed);
        }
        assert!(!l.check(b"a", t0 + 100 * S).allowed);
    }

    #[test]
    fn memory_is_bounded_and_idle_buckets_go_first() {
        let l = RateLimiter::new("t", LimitKey::Ip, 1.0, 5, 6400);
        let t0 = 10 * S;
        // A busy key: drained.
        for _ in 0..5 {
            l.check(b"busy", t0);
        }
        assert!(!l.check(b"busy", t0).allowed);
        // A flood of new keys, 15x the bound.
        for i in 0..100_000u32 {
            l.check(&i.to_le_bytes(), t0 + 1);
        }
        assert!(l.len() <= l.max_keys, "{} > {}", l.len(), l.max_keys);
        assert!(l.len() >= l.max_keys * 9 / 10, "{}", l.len());
        // The drained key kept its state: the flood did not reset it.
        assert!(!l.check(b"busy", t0 + 2).allowed, "busy key was evicted");
        // Later, refilled buckets are dropped first.
        let t1 = t0 + 60 * S;
        let before = l.len();
        for i in 0..10u32 {
            l.check(&(1_000_000 + i).to_le_bytes(), t1);
        }
        // Each new key landed in a full shard, which dropped all its refilled buckets (~100).
        assert!(l.len() + 500 < before, "{} -> {}", before, l.len());
    }

    #[test]
    fn concurrent_checks_admit_exactly_the_budget() {
        let l = std::sync::Arc::new(RateLimiter::new("t", LimitKey::Ip, 1.0, 50, 1000));
        let t0 = 10 * S;
        let admitted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (l, a) = (l.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        if l.check(b"one", t0).allowed {
                            a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 50);
    }
}
