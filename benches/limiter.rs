//! Rate limiter cost per check (hit, new key, denied), the verify + limit path, and the memory
//! bound: RSS after one million distinct keys.

use criterion::{black_box, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pingora_http::RequestHeader;
use portcullis::auth::jwk::secret_key;
use portcullis::auth::Verifier;
use portcullis::limit::{clock_nanos, LimitKey, RateLimiter, DEFAULT_MAX_KEYS};
use std::sync::Arc;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// One million distinct subs through one limiter with the default bound.
fn memory_report() {
    let limiter = RateLimiter::new(
        "m",
        LimitKey::Claim(portcullis::auth::ClaimPath::top("sub")),
        10.0,
        20,
        DEFAULT_MAX_KEYS,
    );
    let before = rss_kib();
    let now = clock_nanos();
    for i in 0..1_000_000u32 {
        let sub = format!("user-{i:08}");
        limiter.check(sub.as_bytes(), now + u64::from(i));
    }
    let after = rss_kib();
    println!(
        "memory: 1,000,000 distinct subs -> {} buckets held (bound {}), RSS {} KiB -> {} KiB (+{} KiB)",
        limiter.len(),
        limiter.max_keys,
        before,
        after,
        after.saturating_sub(before)
    );
}

fn benches(c: &mut Criterion) {
    let limiter = RateLimiter::new("b", LimitKey::Ip, 1e12, u32::MAX, DEFAULT_MAX_KEYS);
    let now = clock_nanos();
    c.bench_function("limiter check, known key, allowed", |b| {
        b.iter(|| limiter.check(black_box(b"user-00000042"), now))
    });
    let denied = RateLimiter::new("d", LimitKey::Ip, 1e-9, 1, DEFAULT_MAX_KEYS);
    denied.check(b"k", now);
    c.bench_function("limiter check, known key, denied", |b| {
        b.iter(|| denied.check(black_box(b"k"), now))
    });
    // New keys into a full table: the eviction path.
    let full = RateLimiter::new("f", LimitKey::Ip, 1.0, 10, DEFAULT_MAX_KEYS);
    for i in 0..(2 * DEFAULT_MAX_KEYS as u64) {
        full.check(&i.to_le_bytes(), now);
    }
    let mut next = 10_000_000u64;
    c.bench_function("limiter check, new key, full table", |b| {
        b.iter(|| {
            next += 1;
            full.check(black_box(&next.to_le_bytes()), now)
        })
    });

    // The request path's CPU work for a protected, claim-limited route.
    let secret = b"0123456789abcdef0123456789abcdef";
    let v = Arc::new(Verifier::basic(
        "p",
        &[portcullis::auth::Alg::HS256],
        vec![secret_key(secret, None)],
    ));
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": "user-42", "exp": 4_000_000_000u64}),
        &EncodingKey::from_secret(secret),
    )
    .unwrap();
    let mut req = RequestHeader::build("GET", b"/api/x", None).unwrap();
    req.insert_header("authorization", format!("Bearer {token}"))
        .unwrap();
    let policies = vec![v];
    let per_sub = RateLimiter::new(
        "s",
        LimitKey::Claim(portcullis::auth::ClaimPath::top("sub")),
        1e12,
        u32::MAX,
        DEFAULT_MAX_KEYS,
    );
    c.bench_function("verify HS256 + per-sub limit", |b| {
        b.iter(|| {
            let passed = portcullis::auth::check(black_box(&policies), &req, None, 1.8e9, None)
                .1
                .unwrap();
            let sub = passed.token.claims.str("sub").unwrap_or_default();
            per_sub.check(sub.as_bytes(), clock_nanos())
        })
    });
}

fn main() {
    memory_report();
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
