//! The `rate_limits` and `revocation` sections compiled into limiters and the revocation set.

use super::{parse_rate, LimitKey, RateLimiter, Revocation, RevocationSet, DEFAULT_MAX_KEYS};
use crate::cluster::limit::SharedLimit;
use crate::cluster::revocation::SharedRevocation;
use crate::cluster::Cluster;
use crate::config::{Ctx, LimitScope, RateLimitConfig, RevocationConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub fn revocation(
    r: Option<&RevocationConfig>,
    cluster: Option<&Arc<Cluster>>,
    ctx: &Ctx,
    previous: Option<&Arc<Revocation>>,
) -> Option<Arc<Revocation>> {
    let r = r?;
    let refresh = crate::config::duration_field(
        "revocation.refresh".into(),
        &r.refresh,
        std::time::Duration::from_secs(30),
        std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3600),
        &mut ctx.errors(),
    );
    let shared = match (r.shared, cluster) {
        (false, _) => None,
        (true, None) => {
            ctx.error(
                "revocation.shared",
                "needs a cluster section (the Redis the entries are shared through)",
            );
            return None;
        }
        (true, Some(c)) => {
            // A reload with the same Redis keeps the subscription and the set.
            let kept = previous
                .and_then(|p| p.shared.clone())
                .filter(|s| Arc::ptr_eq(&s.redis, &c.redis) && s.refresh == refresh);
            Some(kept.unwrap_or_else(|| {
                Arc::new(SharedRevocation::new(
                    c.redis.clone(),
                    &c.key_prefix,
                    refresh,
                ))
            }))
        }
    };
    let inline = RevocationSet {
        sub: r.sub.iter().cloned().collect(),
        jti: r.jti.iter().cloned().collect(),
    };
    let file = r.file.as_ref().map(|f| ctx.resolve(f));
    match Revocation::new(inline, file) {
        Ok(mut rev) => {
            rev.shared = shared;
            Some(Arc::new(rev))
        }
        Err(e) => {
            ctx.error("revocation.file", e);
            None
        }
    }
}

/// Every limiter that is valid. One whose definition equals a limiter in `previous` (a
/// reload) is that limiter, buckets and all.
pub fn rate_limits(
    limits: &BTreeMap<String, RateLimitConfig>,
    cluster: Option<&Arc<Cluster>>,
    ctx: &Ctx,
    previous: Option<&BTreeMap<String, Arc<RateLimiter>>>,
) -> BTreeMap<String, Arc<RateLimiter>> {
    let mut out = BTreeMap::new();
    for (name, l) in limits {
        let path = format!("rate_limits.{name}");
        let before = ctx.error_count();
        let key = LimitKey::parse(&l.key)
            .map_err(|e| ctx.error(format!("{path}.key"), e))
            .ok();
        let rate = parse_rate(&l.rate)
            .map_err(|e| ctx.error(format!("{path}.rate"), e))
            .ok();
        if l.burst == 0 {
            ctx.error(format!("{path}.burst"), "must be at least 1");
        }
        let max_keys = l.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
        if !(64..=10_000_000).contains(&max_keys) {
            ctx.error(
                format!("{path}.max_keys"),
                format!("{max_keys} is out of range 64..=10000000"),
            );
        }
        let shared = match (l.scope, cluster) {
            (LimitScope::Local, _) => None,
            (LimitScope::Cluster, None) => {
                ctx.error(
                    format!("{path}.scope"),
                    "cluster needs a cluster section (the Redis to share the limit through)",
                );
                None
            }
            (LimitScope::Cluster, Some(c)) => Some(c),
        };
        let sync = match (&l.sync, l.scope) {
            (None, _) => None,
            (Some(_), LimitScope::Local) => {
                ctx.error(format!("{path}.sync"), "needs scope: cluster");
                None
            }
            (Some(_), LimitScope::Cluster) => Some(crate::config::duration_field(
                format!("{path}.sync"),
                &l.sync,
                Duration::from_millis(100),
                Duration::from_millis(10)..=Duration::from_secs(60),
                &mut ctx.errors(),
            )),
        };
        if let (Some(key), Some(rate), true) = (key, rate, ctx.error_count() == before) {
            let mut fresh = RateLimiter::new(name, key, rate, l.burst, max_keys);
            if let Some(c) = shared {
                fresh.shared = Some(SharedLimit::new(
                    c.redis.clone(),
                    &c.key_prefix,
                    name,
                    (rate, l.burst),
                    sync,
                ));
                fresh.on_error = c.on_error;
            }
            let kept = previous
                .and_then(|p| p.get(name))
                .filter(|old| old.same_definition(&fresh))
                .cloned();
            out.insert(name.clone(), kept.unwrap_or_else(|| Arc::new(fresh)));
        }
    }
    out
}
