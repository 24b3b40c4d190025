//! Gauges of state the policy holds — peers in service, cache and bucket sizes, key sets,
//! revocations — read from the policy in force when `/metrics` is scraped, so that they cost
//! the request path nothing and a reload that removes a route, policy or limit removes its
//! series too.

use super::metrics::{metrics, NO_ROUTE};
use crate::policy::Policy;
use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use std::collections::{BTreeSet, HashMap};
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

/// After a reload: drop the series of the routes, auth policies, rate limits, upstreams and key
/// sets that `policy` (the one now in force) no longer has, so that `/metrics` shows what is
/// configured instead of a removed route's counters standing still until a restart. Requests
/// still in flight on the old policy count into handles no longer exported. TLS profiles keep
/// theirs: their listeners serve until a restart.
pub fn forget_removed(policy: &Policy) {
    let m = metrics();
    let routes: BTreeSet<&str> = policy
        .routes
        .routes()
        .iter()
        .map(|r| r.id.as_str())
        .chain([NO_ROUTE])
        .collect();
    let has_route = |v: &str| routes.contains(v);
    retain(&m.requests, "route", &has_route);
    retain(&m.request_duration, "route", &has_route);
    retain(&m.jwt_validations, "policy", &|v| {
        policy.verifiers.contains_key(v)
    });
    retain(&m.rate_limited, "limit", &|v| {
        policy.rate_limits.contains_key(v)
    });
    let has_upstream = |v: &str| policy.upstreams.contains_key(v);
    retain(&m.upstream_duration, "upstream", &has_upstream);
    retain(&m.upstream_errors, "upstream", &has_upstream);
    retain(&m.dns_lookups, "upstream", &has_upstream);
    retain(&m.jwks_fetches, "keys", &|v| {
        policy.key_sets.contains_key(v)
    });
}

/// Remove every series of `vec` whose `label` has a value `keep` refuses.
fn retain<B: MetricVecBuilder>(vec: &MetricVec<B>, label: &str, keep: &dyn Fn(&str) -> bool) {
    for family in vec.collect() {
        for series in family.get_metric() {
            let labels: HashMap<&str, &str> = series
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get(label).is_some_and(|v| !keep(v)) {
                let _ = vec.remove(&labels);
            }
        }
    }
}
