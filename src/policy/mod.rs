//! `compile(config) -> Policy`: everything the request path needs, built once and immutable.
//!
//! Each section is compiled by the module that owns its runtime type, into one shared error
//! collector (`config::Ctx`); `compile_with` only sequences those calls, passes each the
//! sections it refers to, and does the checks that span sections. Compilation is all or
//! nothing: any error fails the whole config, so a protected route can never end up
//! unprotected.

pub mod routes;

pub use routes::{HostMatch, Route, RouteTable};

use crate::auth::keys::KeySet;
use crate::auth::Verifier;
use crate::config::{ConfigErrors, Ctx, Loaded};
use crate::edge::EdgeRules;
use crate::limit::{RateLimiter, Revocation};
use crate::observe::access_log::Target;
use crate::server::Settings;
use crate::upstream::Pool;
use http::HeaderName;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// The compiled configuration.
#[derive(Debug)]
pub struct Policy {
    /// Process settings of the `server` section.
    pub server: Settings,
    /// Canonical target, host and header-name rules (`server`).
    pub edge: EdgeRules,
    /// Certificate profiles (`tls`).
    pub tls: BTreeMap<String, Arc<crate::tls::Profile>>,
    pub routes: RouteTable,
    pub verifiers: BTreeMap<String, Arc<Verifier>>,
    pub key_sets: BTreeMap<String, KeySet>,
    pub upstreams: BTreeMap<String, Arc<Pool>>,
    /// Headers removed from every client request: all `forward_claims`/`forward_payload` names.
    pub strip_headers: Vec<HeaderName>,
    pub revocation: Option<Arc<Revocation>>,
    pub rate_limits: BTreeMap<String, Arc<RateLimiter>>,
    /// The `cluster` section: the Redis that `scope: cluster` limits share.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Where the access log goes and which claims it shows; `None`: no access log.
    pub access_log: Option<(Target, Vec<crate::auth::ClaimPath>)>,
    /// Non-fatal remarks for the operator.
    pub warnings: Vec<String>,
}

/// Compile a loaded config. On failure, every error found is returned.
pub fn compile(loaded: &Loaded) -> Result<Policy, ConfigErrors> {
    compile_with(loaded, None)
}

/// Compile, taking over run-time state from the policy in force (a reload): remote key sets and
/// rate limiters whose definition is unchanged keep their keys and buckets.
pub fn compile_with(loaded: &Loaded, previous: Option<&Policy>) -> Result<Policy, ConfigErrors> {
    let ctx = Ctx::new(loaded);
    let cfg = ctx.config();
    let server = crate::server::settings::compile(&cfg.server, &ctx);
    let edge = crate::edge::compile(&cfg.server, &ctx);
    let tls = crate::tls::compile(&cfg.tls, &ctx);
    let upstreams = crate::upstream::compile::compile(&cfg.upstreams, &ctx);
    let key_sets = crate::auth::keys::compile(&cfg.keys, &ctx, previous.map(|p| &p.key_sets));
    let policies = crate::auth::compile::compile(&cfg.auth, &key_sets, &ctx);
    let cluster = crate::cluster::compile(
        cfg.cluster.as_ref(),
        &ctx,
        previous.and_then(|p| p.cluster.as_ref()),
    );
    let revocation = crate::limit::compile::revocation(
        cfg.revocation.as_ref(),
        cluster.as_ref(),
        &ctx,
        previous.and_then(|p| p.revocation.as_ref()),
    );
    let access_log = crate::observe::access_log::compile(cfg.access_log.as_ref(), &ctx);
    let rate_limits = crate::limit::compile::rate_limits(
        &cfg.rate_limits,
        cluster.as_ref(),
        &ctx,
        previous.map(|p| &p.rate_limits),
    );
    let targets = routes::Targets {
        upstreams: &upstreams,
        verifiers: &policies.verifiers,
        rate_limits: &rate_limits,
        path_rules: edge.path,
    };
    let routes = routes::compile(&cfg.routes, &targets, &ctx);
    warn_unused_keys(&ctx);
    if !tls.values().any(|p| p.client_auth.is_some()) {
        for v in policies.verifiers.values() {
            if v.require_certificate_binding {
                ctx.warn(format!(
                    "auth.{}.require_certificate_binding: no tls profile has client_auth, so every token this policy sees is refused",
                    v.name
                ));
            }
        }
    }

    let (errors, warnings) = ctx.finish();
    if !errors.is_empty() {
        return Err(ConfigErrors {
            file: loaded.file.clone(),
            errors,
        });
    }
    Ok(Policy {
        server,
        edge,
        tls,
        routes,
        verifiers: policies.verifiers,
        key_sets,
        upstreams,
        strip_headers: policies.strip_headers,
        revocation,
        rate_limits,
        cluster,
        access_log,
        warnings,
    })
}

/// A key set that no policy names is probably a mistake.
fn warn_unused_keys(ctx: &Ctx) {
    let cfg = ctx.config();
    for name in cfg.keys.keys() {
        let used = cfg.auth.values().any(|p| p.keys.to_vec().contains(name));
        if !used {
            ctx.warn(format!("keys.{name}: not used by any auth policy"));
        }
    }
}

impl Policy {
    /// Start the work that runs beside the request path for as long as this policy is alive:
    /// watching the revocation file, health-checking upstream peers, looking their names up again. (Each task holds a weak reference and ends with it.)
    pub fn start_background(&self) {
        if let Some(rev) = &self.revocation {
            Revocation::watch(rev);
        }
        if let Some(c) = &self.cluster {
            c.redis.start();
        }
        for limiter in self.rate_limits.values() {
            crate::limit::RateLimiter::watch(limiter);
        }
        for pool in self.upstreams.values() {
            crate::upstream::health::watch(pool);
            crate::upstream::dns::watch(pool);
        }
        for set in self.key_sets.values() {
            if let Some(remote) = &set.remote {
                crate::auth::remote::RemoteKeys::watch(remote);
            }
        }
    }

    /// The one-screen summary printed by `check`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let listen: Vec<String> = self.server.listen.iter().map(|l| l.to_string()).collect();
        let _ = writeln!(
            s,
            "listen {}  threads {}  admin {}",
            listen.join(", "),
            self.server.threads,
            self.server
                .admin
                .map_or("off".to_string(), |a| a.to_string())
        );
        let _ = writeln!(s, "routes ({}):", self.routes.routes().len());
        for r in self.routes.routes() {
            let auth = if r.auth.is_empty() {
                "public".to_string()
            } else {
                let names: Vec<&str> = r.auth.iter().map(|v| v.name.as_str()).collect();
                format!("auth {}", names.join(" | "))
            };
            let limits: Vec<&str> = r
                .pre_auth_limits
                .iter()
                .chain(&r.post_auth_limits)
                .map(|l| l.name.as_str())
                .collect();
            let limits = if limits.is_empty() {
                String::new()
            } else {
                format!("  limit {}", limits.join(","))
            };
            let _ = writeln!(
                s,
                "  {:<28} -> {:<14} {auth}{limits}",
                r.id,
                r.upstream.describe()
            );
        }
        let _ = writeln!(s, "auth policies ({}):", self.verifiers.len());
        for (name, v) in &self.verifiers {
            let algs: Vec<&str> = v.algorithms.iter().map(|a| a.name()).collect();
            let _ = writeln!(
                s,
                "  {name:<16} {} key(s), algorithms {}, realm {:?}, {} rule(s)",
                v.keys.len(),
                algs.join(","),
                v.realm,
                v.rules.len()
            );
        }
        let _ = writeln!(s, "key sets ({}):", self.key_sets.len());
        for (name, set) in &self.key_sets {
            match &set.remote {
                Some(r) => {
                    let from = match &r.source {
                        crate::auth::remote::Source::Jwks(u) => format!("jwks_url {u}"),
                        crate::auth::remote::Source::Oidc(i) => format!("oidc_issuer {i}"),
                    };
                    let _ = writeln!(
                        s,
                        "  {name:<16} {from}, refresh {:?}, fetched at start",
                        r.refresh
                    );
                }
                None => {
                    let _ = writeln!(s, "  {name:<16} {} key(s)", set.keys.len());
                }
            }
        }
        let _ = writeln!(s, "upstreams ({}):", self.upstreams.len());
        for (name, u) in &self.upstreams {
            let peers: Vec<String> = u
                .peers()
                .iter()
                .map(|(a, w)| {
                    if *w == 1 {
                        a.to_string()
                    } else {
                        format!("{a} (weight {w})")
                    }
                })
                .collect();
            let _ = writeln!(s, "  {name:<16} {}", peers.join(", "));
        }
        if !self.rate_limits.is_empty() {
            let _ = writeln!(s, "rate limits ({}):", self.rate_limits.len());
            for (name, l) in &self.rate_limits {
                let scope = match &l.shared {
                    Some(c) => match c.sync {
                        Some(d) => {
                            format!("shared in redis every {d:?}, on error {:?}", l.on_error)
                        }
                        None => format!("shared in redis, on error {:?}", l.on_error),
                    }
                    .to_lowercase(),
                    None => format!("at most {} keys", l.max_keys),
                };
                let _ = writeln!(
                    s,
                    "  {name:<16} key {}, {}/s, burst {}, {scope}",
                    l.key, l.rate, l.burst
                );
            }
        }
        if let Some(c) = &self.cluster {
            let _ = writeln!(
                s,
                "cluster: redis {} (timeout {:?}, prefix {:?}, on error {})",
                c.redis.name,
                c.redis.timeout,
                c.key_prefix,
                format!("{:?}", c.on_error).to_lowercase()
            );
        }
        if let Some(r) = &self.revocation {
            let set = r.snapshot();
            let file = r
                .file
                .as_ref()
                .map_or("no file".to_string(), |f| format!("{}", f.display()));
            let shared = match &r.shared {
                Some(sh) => format!(
                    " (plus those shared in redis, resynced every {:?})",
                    sh.refresh
                ),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "revocation: {file}; {} sub, {} jti revoked now{shared}",
                set.sub.len(),
                set.jti.len()
            );
        }
        s
    }
}
