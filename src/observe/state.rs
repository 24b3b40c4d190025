//! Gauges of state the policy holds — peers in service, cache and bucket sizes, key sets,
//! revocations — read from the policy in force when `/metrics` is scraped, so that they cost
//! the request path nothing and a reload that removes a route, policy or limit removes its
//! series too.

use super::metrics::metrics;
use crate::policy::Policy;
use std::sync::Mutex;

/// Set the sampled gauges from `policy`.
pub fn sample(policy: &Policy) {
    // Two scrapes at once would interleave the resets below with each other's values.
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let g = &metrics().sampled;
    g.requests_in_flight.set(crate::proxy::in_flight() as i64);

    g.upstream_peer_up.reset();
    for (name, pool) in &policy.upstreams {
        for (addr, _) in pool.peers() {
            let up = i64::from(pool.is_healthy(&addr));
            g.upstream_peer_up
                .with_label_values(&[name.as_str(), &addr.to_string()])
                .set(up);
        }
    }

    g.token_cache_entries.reset();
    for (name, v) in &policy.verifiers {
        if let Some(cache) = &v.cache {
            g.token_cache_entries
                .with_label_values(&[name.as_str()])
                .set(cache.len() as i64);
        }
    }

    g.jwks_keys.reset();
    g.jwks_last_success.reset();
    g.jwks_refresh.reset();
    for (name, set) in &policy.key_sets {
        let count = match &set.remote {
            Some(remote) => {
                g.jwks_last_success
                    .with_label_values(&[name.as_str()])
                    .set(remote.last_success() as i64);
                g.jwks_refresh
                    .with_label_values(&[name.as_str()])
                    .set(remote.refresh.as_secs() as i64);
                remote.keys().len()
            }
            None => set.keys.len(),
        };
        g.jwks_keys
            .with_label_values(&[name.as_str()])
            .set(count as i64);
    }

    g.rate_limit_keys.reset();
    for (name, limiter) in &policy.rate_limits {
        g.rate_limit_keys
            .with_label_values(&[name.as_str()])
            .set(limiter.len() as i64);
    }

    let revoked = policy.revocation.as_ref().map_or(0, |r| {
        let set = r.snapshot();
        set.sub.len() + set.jti.len()
    });
    g.revoked_entries.set(revoked as i64);
}
