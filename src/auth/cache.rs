//! The verified-token cache: exact token bytes → the result of a full verification.
//!
//! A hit skips signature verification and parsing; `exp` is still checked on every hit (an
//! entry never outlives its token), and revocation, rules and rate limits run on every request
//! after the cache. Entries remember the key-set generation they were verified under: a remote
//! key set that fetches new keys (rotation, removal) makes its older entries misses. Lookups
//! compare the whole token, so two tokens can never share an entry. Memory is bounded by
//! `capacity`; a full shard drops an arbitrary entry.
//!
//! The token is hashed once per lookup, with foldhash seeded at random per cache: fast (a whole
//! `auth::check` cache hit on an RS256 token went from 236 to 122 ns with it), and since only
//! verified tokens are ever stored and every hit compares the whole token, a collision can cost
//! a miss, never a wrong answer. The shard maps take that hash as their key as it is.

use super::alg::Alg;
use super::claims::Claims;
use http::{HeaderName, HeaderValue};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, RwLock};

const SHARDS: usize = 32;

/// Default entries per policy.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// Everything the request path needs from a verified token.
#[derive(Debug)]
pub struct VerifiedToken {
    pub alg: Alg,
    pub kid: Option<String>,
    pub claims: Claims,
    /// The JOSE header (for `header` in expressions).
    pub header: Claims,
    /// Upstream headers from `forward_claims` / `forward_payload`.
    pub forward: Vec<(HeaderName, HeaderValue)>,
    pub exp: Option<f64>,
    /// Key-set generation the token was verified under.
    pub generation: u64,
    /// The payload and header as CEL values, made the first time an expression reads them.
    pub cel: std::sync::OnceLock<(super::expr::CelVal, super::expr::CelVal)>,
}

impl VerifiedToken {
    /// The claims and the header as CEL values (converted once per verified token).
    pub fn cel_values(&self) -> (&super::expr::CelVal, &super::expr::CelVal) {
        let (c, h) = self.cel.get_or_init(|| {
            (
                super::expr::val(super::expr::from_object(&self.claims.0)),
                super::expr::val(super::expr::from_object(&self.header.0)),
            )
        });
        (c, h)
    }
}

/// A `Hasher` for keys that are hashes already: it hands the `u64` back unchanged.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are used; fold anything else in rather than lose it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

type Shard = HashMap<u64, Entry, BuildHasherDefault<PreHashed>>;

struct Entry {
    token: Box<str>,
    verified: Arc<VerifiedToken>,
}

pub struct TokenCache {
    shards: Vec<RwLock<Shard>>,
    per_shard: usize,
    hasher: foldhash::fast::RandomState,
    /// `portcullis_token_cache_requests_total{result="hit"}` and `{result="miss"}` of the
    /// policy, once `counted`.
    counts: Option<[prometheus::IntCounter; 2]>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    pub fn new(capacity: usize) -> TokenCache {
        let per_shard = (capacity / SHARDS).max(1);
        TokenCache {
            shards: (0..SHARDS)
                .map(|_| {
                    RwLock::new(HashMap::with_capacity_and_hasher(
                        per_shard.min(256),
                        Default::default(),
                    ))
                })
                .collect(),
            per_shard,
            hasher: foldhash::fast::RandomState::default(),
            counts: None,
        }
    }

    /// Count lookups as the policy `policy`'s.
    pub fn counted(mut self, policy: &str) -> TokenCache {
        let c = &crate::observe::metrics().token_cache_requests;
        self.counts = Some(["hit", "miss"].map(|r| c.with_label_values(&[policy, r])));
        self
    }

    /// Count one lookup that was (or was not) answered from the cache.
    pub fn count(&self, hit: bool) {
        if let Some(c) = &self.counts {
            c[usize::from(!hit)].inc();
        }
    }

    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// The shard comes from the hash's middle bits: the map inside uses the low bits for the
    /// bucket and the top bits for its tag, and both should still vary within a shard.
    fn shard(&self, h: u64) -> &RwLock<Shard> {
        &self.shards[((h >> 32) as usize) % SHARDS]
    }

    /// The entry for exactly this token.
    pub fn get(&self, token: &str) -> Option<Arc<VerifiedToken>> {
        let h = self.hasher.hash_one(token);
        let map = self.shard(h).read().unwrap_or_else(|e| e.into_inner());
        map.get(&h)
            .filter(|e| &*e.token == token)
            .map(|e| e.verified.clone())
    }

    pub fn insert(&self, token: &str, verified: Arc<VerifiedToken>) {
        let h = self.hasher.hash_one(token);
        let mut map = self.shard(h).write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.per_shard && !map.contains_key(&h) {
            if let Some(&victim) = map.keys().next() {
                map.remove(&victim);
            }
        }
        map.insert(
            h,
            Entry {
                token: token.into(),
                verified,
            },
        );
    }

    pub fn remove(&self, token: &str) {
        let h = self.hasher.hash_one(token);
        let mut map = self.shard(h).write().unwrap_or_else(|e| e.into_inner());
        if map.get(&h).is_some_and(|e| &*e.token == token) {
            map.remove(&h);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sub: &str) -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            alg: Alg::HS256,
            kid: None,
            claims: Claims::parse(format!(r#"{{"sub":"{sub}"}}"#).as_bytes()).unwrap(),
            header: Claims::parse(b"{}").unwrap(),
            forward: vec![],
            exp: None,
            generation: 0,
            cel: Default::default(),
        })
    }

    #[test]
    fn exact_match_only_and_bounded() {
        let c = TokenCache::new(64);
        c.insert("a.b.c", entry("a"));
        assert_eq!(c.get("a.b.c").unwrap().claims.str("sub"), Some("a"));
        assert!(c.get("a.b.d").is_none());
        assert!(c.get("a.b.c ").is_none());
        for i in 0..1000 {
            c.insert(&format!("t.{i}.x"), entry("x"));
        }
        assert!(c.len() <= c.capacity(), "{} > {}", c.len(), c.capacity());
        c.insert("z.z.z", entry("z"));
        c.remove("z.z.z");
        assert!(c.get("z.z.z").is_none());
    }
}
