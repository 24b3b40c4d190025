//! `compile(config) -> Policy`: everything the request path needs, built once and immutable.
//!
//! Compilation is all or nothing. Any error (an unknown name, an unreadable key, an algorithm
//! with no key) fails the whole config, so a protected route can never end up unprotected.

pub mod routes;

pub use routes::{HostMatch, Route, RouteTable};

use crate::auth::keys::{load_key_set, KeySet};
use crate::auth::rules::Rule;
use crate::auth::token::TokenSource;
use crate::auth::verify::alg_name;
use crate::auth::Verifier;
use crate::config::{duration_field, ConfigError, ConfigErrors, Loaded, PolicyConfig};
use crate::config::{Balance, HealthKindConfig, UpstreamConfig};
use crate::edge::{canonical_target, EdgeRules, EncodedSlashes, PathRules, Underscores};
use crate::limit::{
    parse_rate, LimitKey, RateLimiter, Revocation, RevocationSet, DEFAULT_MAX_KEYS,
};
use crate::observe::access_log::Target;
use crate::upstream::{HashKey, HealthCheck, HealthKind, PeerSettings, Pool, Tls, MAX_WEIGHT};
use http::{HeaderName, Method};
use jsonwebtoken::Algorithm;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

/// The compiled configuration.
#[derive(Debug)]
pub struct Policy {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub admin: Option<SocketAddr>,
    pub pid_file: Option<std::path::PathBuf>,
    pub shutdown_timeout: std::time::Duration,
    pub routes: RouteTable,
    pub verifiers: BTreeMap<String, Arc<Verifier>>,
    pub key_sets: BTreeMap<String, KeySet>,
    pub upstreams: BTreeMap<String, Arc<Pool>>,
    /// Headers removed from every client request: all `forward_claims`/`forward_payload` names.
    pub strip_headers: Vec<HeaderName>,
    pub revocation: Option<Arc<Revocation>>,
    pub rate_limits: BTreeMap<String, Arc<RateLimiter>>,
    /// Where the access log goes and which claims it shows; `None`: no access log.
    pub access_log: Option<(Target, Vec<String>)>,
    /// Canonical target, host and header-name rules (`server`).
    pub edge: EdgeRules,
    /// Non-fatal remarks for the operator.
    pub warnings: Vec<String>,
}

/// Headers that carry framing, routing or credentials: never set from a claim.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "authorization",
    "cookie",
    "expect",
];

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Compile a loaded config. On failure, every error found is returned.
pub fn compile(loaded: &Loaded) -> Result<Policy, ConfigErrors> {
    compile_with(loaded, None)
}

/// Compile, taking over run-time state from the policy in force (a reload): rate limiters whose
/// definition is unchanged keep their buckets.
pub fn compile_with(loaded: &Loaded, previous: Option<&Policy>) -> Result<Policy, ConfigErrors> {
    let mut errors: Vec<ConfigError> = loaded.errors.clone();
    let cfg = &loaded.config;

    // server
    let mut listen = Vec::new();
    let listen_cfg = cfg.server.listen.to_vec();
    if listen_cfg.is_empty() {
        errors.push(ConfigError::new(
            "server.listen",
            "at least one address is needed",
        ));
    }
    for (i, a) in listen_cfg.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            Ok(s) => listen.push(s),
            Err(_) => errors.push(ConfigError::new(
                format!("server.listen[{i}]"),
                format!("invalid address {a:?}: expected IP:PORT, like 0.0.0.0:8080"),
            )),
        }
    }
    let threads = match cfg.server.threads {
        Some(0) => {
            errors.push(ConfigError::new("server.threads", "must be at least 1"));
            1
        }
        Some(n) if n > 1024 => {
            errors.push(ConfigError::new(
                "server.threads",
                format!("{n} is more than 1024"),
            ));
            1
        }
        Some(n) => n,
        None => default_threads(),
    };
    let admin = cfg
        .server
        .admin
        .as_ref()
        .and_then(|a| match a.parse::<SocketAddr>() {
            Ok(s) => Some(s),
            Err(_) => {
                errors.push(ConfigError::new(
                    "server.admin",
                    format!("invalid address {a:?}: expected IP:PORT, like 127.0.0.1:9901"),
                ));
                None
            }
        });
    let pid_file = cfg.server.pid_file.as_ref().map(|p| loaded.resolve(p));
    let shutdown_timeout = duration_field(
        "server.shutdown_timeout".into(),
        &cfg.server.shutdown_timeout,
        std::time::Duration::from_secs(10),
        std::time::Duration::ZERO..=std::time::Duration::from_secs(3600),
        &mut errors,
    );
    if let Some(a) = admin {
        if listen.contains(&a) {
            errors.push(ConfigError::new(
                "server.admin",
                format!("{a} is also in server.listen"),
            ));
        }
    }

    // upstreams
    let mut upstreams = BTreeMap::new();
    for (name, u) in &cfg.upstreams {
        let path = format!("upstreams.{name}");
        if u.peers.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.peers"),
                "at least one peer is needed",
            ));
            continue;
        }
        let mut peers = Vec::new();
        for (i, p) in u.peers.iter().enumerate() {
            let ppath = format!("{path}.peers[{i}]");
            if p.weight() == 0 || p.weight() > MAX_WEIGHT {
                errors.push(ConfigError::new(
                    format!("{ppath}.weight"),
                    format!("weight {} is out of range 1..={MAX_WEIGHT}", p.weight()),
                ));
                continue;
            }
            match resolve(p.addr()) {
                Ok(addr) if peers.iter().any(|(a, _)| *a == addr) => errors.push(ConfigError::new(
                    ppath,
                    format!("peer {addr} is listed twice"),
                )),
                Ok(addr) => peers.push((addr, p.weight())),
                Err(e) => errors.push(ConfigError::new(ppath, e)),
            }
        }
        let before = errors.len();
        let (hash_key, settings, health_check) = upstream_settings(&path, u, &mut errors);
        if peers.len() == u.peers.len() && errors.len() == before {
            upstreams.insert(
                name.clone(),
                Arc::new(Pool::with(name, peers, hash_key, settings, health_check)),
            );
        }
    }

    // keys
    let mut key_sets = BTreeMap::new();
    let mut warnings = Vec::new();
    for (name, k) in &cfg.keys {
        let kept = previous.and_then(|p| p.key_sets.get(name));
        match load_key_set(name, k, loaded, kept) {
            Ok(set) => {
                warnings.extend(set.warnings.iter().cloned());
                key_sets.insert(name.clone(), set);
            }
            Err(e) => errors.extend(e),
        }
    }

    // auth policies
    let mut verifiers = BTreeMap::new();
    let mut strip_headers: Vec<HeaderName> = Vec::new();
    for (name, p) in &cfg.auth {
        if let Some(v) = compile_policy(name, p, cfg, &key_sets, &mut errors) {
            for (h, _) in &v.forward_claims {
                if !strip_headers.contains(h) {
                    strip_headers.push(h.clone());
                }
            }
            if let Some(h) = &v.forward_payload {
                if !strip_headers.contains(h) {
                    strip_headers.push(h.clone());
                }
            }
            verifiers.insert(name.clone(), Arc::new(v));
        }
    }

    // revocation
    let revocation = cfg.revocation.as_ref().and_then(|r| {
        let inline = RevocationSet {
            sub: r.sub.iter().cloned().collect(),
            jti: r.jti.iter().cloned().collect(),
        };
        let file = r.file.as_ref().map(|f| loaded.resolve(f));
        match Revocation::new(inline, file) {
            Ok(rev) => Some(Arc::new(rev)),
            Err(e) => {
                errors.push(ConfigError::new("revocation.file", e));
                None
            }
        }
    });

    // access log
    let access_log = cfg.access_log.as_ref().and_then(|a| {
        let target = if a.path == "-" {
            Target::Stdout
        } else {
            let p = loaded.resolve(&a.path);
            let dir = p.parent().map(|d| d.to_path_buf()).unwrap_or_default();
            if a.path.is_empty() || p.is_dir() || !(dir.as_os_str().is_empty() || dir.is_dir()) {
                errors.push(ConfigError::new(
                    "access_log.path",
                    format!("{p:?} is not a file in an existing folder"),
                ));
                return None;
            }
            Target::File(p)
        };
        if a.claims.iter().any(|c| c.is_empty()) {
            errors.push(ConfigError::new("access_log.claims", "empty claim name"));
            return None;
        }
        Some((target, a.claims.clone()))
    });

    // rate limits
    let mut rate_limits = BTreeMap::new();
    for (name, l) in &cfg.rate_limits {
        let path = format!("rate_limits.{name}");
        let before = errors.len();
        let key = LimitKey::parse(&l.key)
            .map_err(|e| errors.push(ConfigError::new(format!("{path}.key"), e)))
            .ok();
        let rate = parse_rate(&l.rate)
            .map_err(|e| errors.push(ConfigError::new(format!("{path}.rate"), e)))
            .ok();
        if l.burst == 0 {
            errors.push(ConfigError::new(
                format!("{path}.burst"),
                "must be at least 1",
            ));
        }
        let max_keys = l.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
        if !(64..=10_000_000).contains(&max_keys) {
            errors.push(ConfigError::new(
                format!("{path}.max_keys"),
                format!("{max_keys} is out of range 64..=10000000"),
            ));
        }
        if let (Some(key), Some(rate), true) = (key, rate, errors.len() == before) {
            let fresh = RateLimiter::new(name, key, rate, l.burst, max_keys);
            // Same definition as the limit in force: keep its buckets.
            let kept = previous
                .and_then(|p| p.rate_limits.get(name))
                .filter(|old| old.same_definition(&fresh))
                .cloned();
            rate_limits.insert(name.clone(), kept.unwrap_or_else(|| Arc::new(fresh)));
        }
    }

    // routes
    let edge = edge_rules(&cfg.server);
    let mut routes = Vec::new();
    if cfg.routes.is_empty() && !cfg.broken.iter().any(|b| b.starts_with("routes[")) {
        errors.push(ConfigError::new("routes", "at least one route is needed"));
    }
    for r in &cfg.routes {
        let i = r.index;
        let path = format!("routes[{i}]");
        let before = errors.len();
        if !r.prefix.starts_with('/') {
            errors.push(ConfigError::new(
                format!("{path}.prefix"),
                format!("{:?} must start with /", r.prefix),
            ));
        } else if let Err(e) = canonical_prefix(&r.prefix, edge.path) {
            errors.push(ConfigError::new(format!("{path}.prefix"), e));
        }
        let upstream = upstreams.get(&r.upstream).cloned();
        if upstream.is_none() && !cfg.defines("upstreams", &r.upstream) {
            errors.push(ConfigError::new(
                format!("{path}.upstream"),
                format!(
                    "unknown upstream {:?} (defined: {})",
                    r.upstream,
                    names(&cfg.names("upstreams"))
                ),
            ));
        }
        let mut auth = Vec::new();
        let policy_names = r.auth.as_ref().map(|a| a.to_vec()).unwrap_or_default();
        if r.auth.is_some() && policy_names.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.auth"),
                "an empty list; leave `auth` out for a public route",
            ));
        }
        for p in &policy_names {
            match verifiers.get(p) {
                Some(v) => auth.push(v.clone()),
                None if cfg.defines("auth", p) => {} // its own errors are reported
                None => errors.push(ConfigError::new(
                    format!("{path}.auth"),
                    format!(
                        "unknown auth policy {p:?} (defined: {})",
                        names(&cfg.names("auth"))
                    ),
                )),
            }
        }
        let host = match &r.host {
            None => HostMatch::Any,
            Some(h) => HostMatch::parse(h).unwrap_or_else(|e| {
                errors.push(ConfigError::new(format!("{path}.host"), e));
                HostMatch::Any
            }),
        };
        let methods = r.methods.as_ref().map(|ms| {
            let mut out = Vec::new();
            for m in ms {
                let ok = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase());
                match Method::from_bytes(m.as_bytes()) {
                    Ok(method) if ok => out.push(method),
                    _ => errors.push(ConfigError::new(
                        format!("{path}.methods"),
                        format!("invalid method {m:?} (upper case, like GET)"),
                    )),
                }
            }
            if ms.is_empty() {
                errors.push(ConfigError::new(
                    format!("{path}.methods"),
                    "an empty list; leave `methods` out to allow every method",
                ));
            }
            out
        });
        let mut pre_auth_limits = Vec::new();
        let mut post_auth_limits = Vec::new();
        let limit_names = r
            .rate_limit
            .as_ref()
            .map(|l| l.to_vec())
            .unwrap_or_default();
        for l in &limit_names {
            match rate_limits.get(l) {
                Some(limiter) if matches!(limiter.key, LimitKey::Claim(_)) => {
                    if policy_names.is_empty() {
                        errors.push(ConfigError::new(
                            format!("{path}.rate_limit"),
                            format!("{l:?} is keyed on a claim, but this route has no auth"),
                        ));
                    }
                    post_auth_limits.push(limiter.clone());
                }
                Some(limiter) => pre_auth_limits.push(limiter.clone()),
                None if cfg.defines("rate_limits", l) => {}
                None => errors.push(ConfigError::new(
                    format!("{path}.rate_limit"),
                    format!(
                        "unknown rate limit {l:?} (defined: {})",
                        names(&cfg.names("rate_limits"))
                    ),
                )),
            }
        }
        if let (Some(u), true) = (&upstream, policy_names.is_empty()) {
            if matches!(u.hash_key, Some(HashKey::Claim(_))) {
                errors.push(ConfigError::new(
                    format!("{path}.upstream"),
                    format!(
                        "upstream {:?} hashes on a claim, but this route has no auth",
                        r.upstream
                    ),
                ));
            }
        }
        // A route whose policy or limit failed is never built: fail closed.
        let complete = auth.len() == policy_names.len()
            && pre_auth_limits.len() + post_auth_limits.len() == limit_names.len();
        if let (Some(upstream), true, true) = (upstream, errors.len() == before, complete) {
            let mut id = String::new();
            match &host {
                HostMatch::Any => {}
                HostMatch::Exact(h) => id.push_str(h),
                HostMatch::Suffix(s) => {
                    let _ = write!(id, "*{s}");
                }
            }
            id.push_str(&r.prefix);
            if let Some(ms) = &methods {
                let list: Vec<&str> = ms.iter().map(Method::as_str).collect();
                let _ = write!(id, " [{}]", list.join(","));
            }
            routes.push((
                i,
                Route {
                    prefix: r.prefix.clone(),
                    host,
                    methods,
                    upstream,
                    auth,
                    pre_auth_limits,
                    post_auth_limits,
                    websocket: r.websocket,
                    metrics: crate::observe::metrics::RouteMetrics::new(&id),
                    id,
                },
            ));
        }
    }
    let routes = match RouteTable::new(routes) {
        Ok(t) => t,
        Err(es) => {
            for (i, e) in es {
                errors.push(ConfigError::new(format!("routes[{i}]"), e));
            }
            RouteTable::default()
        }
    };

    for (name, _) in cfg.keys.iter().filter(|(n, _)| {
        !cfg.auth
            .values()
            .any(|p| p.keys.to_vec().iter().any(|k| &k == n))
    }) {
        warnings.push(format!("keys.{name}: not used by any auth policy"));
    }

    if !errors.is_empty() {
        return Err(ConfigErrors {
            file: loaded.file.clone(),
            errors,
        });
    }
    Ok(Policy {
        listen,
        threads,
        admin,
        pid_file,
        shutdown_timeout,
        routes,
        verifiers,
        key_sets,
        upstreams,
        strip_headers,
        edge,
        revocation,
        rate_limits,
        access_log,
        warnings,
    })
}

/// The edge rules of the `server` section.
fn edge_rules(s: &crate::config::ServerConfig) -> EdgeRules {
    use crate::config::{EncodedSlashesConfig, HeadersWithUnderscores, PathSemicolons};
    EdgeRules {
        path: PathRules {
            encoded_slashes: match s.encoded_slashes {
                EncodedSlashesConfig::Reject => EncodedSlashes::Reject,
                EncodedSlashesConfig::Forward => EncodedSlashes::Forward,
            },
            allow_semicolons: s.path_semicolons == PathSemicolons::Allow,
        },
        underscores: match s.headers_with_underscores {
            HeadersWithUnderscores::Allow => Underscores::Allow,
            HeadersWithUnderscores::Drop => Underscores::Drop,
            HeadersWithUnderscores::Reject => Underscores::Reject,
        },
    }
}

/// A prefix must be written the way requests are matched, or it could never match.
fn canonical_prefix(prefix: &str, rules: PathRules) -> Result<(), String> {
    let strict = PathRules {
        encoded_slashes: EncodedSlashes::Reject,
        ..rules
    };
    match canonical_target(prefix.as_bytes(), strict) {
        Ok(t) if t.path_and_query == prefix => Ok(()),
        Ok(t) => Err(format!(
            "{prefix:?} is not in canonical form: requests are matched on {:?}, write that",
            t.path_and_query
        )),
        Err(e) => Err(format!(
            "{prefix:?} can never match: a request with it is refused ({e})"
        )),
    }
}

fn upstream_settings(
    path: &str,
    u: &UpstreamConfig,
    errors: &mut Vec<ConfigError>,
) -> (Option<HashKey>, PeerSettings, Option<HealthCheck>) {
    use std::time::Duration;
    let hash_key = match (u.balance, &u.hash_key) {
        (Balance::ConsistentHash, Some(k)) => HashKey::parse(k)
            .map_err(|e| errors.push(ConfigError::new(format!("{path}.hash_key"), e)))
            .ok(),
        (Balance::ConsistentHash, None) => {
            errors.push(ConfigError::new(
                format!("{path}.hash_key"),
                "consistent_hash needs a hash_key (claim:NAME, header:NAME or ip)",
            ));
            None
        }
        (Balance::RoundRobin, Some(_)) => {
            errors.push(ConfigError::new(
                format!("{path}.hash_key"),
                "only applies to balance: consistent_hash",
            ));
            None
        }
        (Balance::RoundRobin, None) => None,
    };
    let d = PeerSettings::default();
    let ms = Duration::from_millis;
    let connect_timeout = duration_field(
        format!("{path}.connect_timeout"),
        &u.connect_timeout,
        d.connect_timeout,
        ms(1)..=Duration::from_secs(300),
        errors,
    );
    let read_timeout = duration_field(
        format!("{path}.read_timeout"),
        &u.read_timeout,
        d.read_timeout,
        ms(1)..=Duration::from_secs(3600),
        errors,
    );
    let tries = match u.tries {
        None => d.tries,
        Some(n) if (1..=10).contains(&n) => n,
        Some(n) => {
            errors.push(ConfigError::new(
                format!("{path}.tries"),
                format!("{n} is out of range 1..=10"),
            ));
            d.tries
        }
    };
    let tls = u.tls.as_ref().map(|t| Tls {
        sni: t.sni.clone().unwrap_or_default(),
        verify: t.verify.unwrap_or(true),
    });
    let health_check = u.health_check.as_ref().and_then(|h| {
        let hpath = format!("{path}.health_check");
        let kind = match (h.kind, &h.path) {
            (HealthKindConfig::Tcp, None) => HealthKind::Tcp,
            (HealthKindConfig::Tcp, Some(_)) => {
                errors.push(ConfigError::new(
                    format!("{hpath}.path"),
                    "only applies to kind: http",
                ));
                return None;
            }
            (HealthKindConfig::Http, p) => {
                let p = p.clone().unwrap_or_else(|| "/".into());
                if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    errors.push(ConfigError::new(
                        format!("{hpath}.path"),
                        format!("{p:?} must start with / and have no spaces"),
                    ));
                    return None;
                }
                if tls.is_some() {
                    errors.push(ConfigError::new(
                        format!("{hpath}.kind"),
                        "http checks do not speak TLS yet: use kind: tcp for a TLS upstream",
                    ));
                    return None;
                }
                HealthKind::Http { path: p }
            }
        };
        let interval = duration_field(
            format!("{hpath}.interval"),
            &h.interval,
            Duration::from_secs(5),
            ms(100)..=Duration::from_secs(3600),
            errors,
        );
        let timeout = duration_field(
            format!("{hpath}.timeout"),
            &h.timeout,
            Duration::from_secs(1),
            ms(10)..=Duration::from_secs(60),
            errors,
        );
        let mut count = |field: &str, v: Option<u32>| -> u32 {
            match v {
                None => 2,
                Some(n) if (1..=100).contains(&n) => n,
                Some(n) => {
                    errors.push(ConfigError::new(
                        format!("{hpath}.{field}"),
                        format!("{n} is out of range 1..=100"),
                    ));
                    2
                }
            }
        };
        let unhealthy_after = count("unhealthy_after", h.unhealthy_after);
        let healthy_after = count("healthy_after", h.healthy_after);
        Some(HealthCheck {
            kind,
            interval,
            timeout,
            unhealthy_after,
            healthy_after,
        })
    });
    (
        hash_key,
        PeerSettings {
            connect_timeout,
            read_timeout,
            tls,
            tries,
        },
        health_check,
    )
}

fn names(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !addr.contains(':') {
        return Err(format!("peer {addr:?} needs a port, like {addr}:80"));
    }
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve peer {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("peer {addr:?} resolves to no address"))
}

fn compile_policy(
    name: &str,
    p: &PolicyConfig,
    cfg: &crate::config::Config,
    key_sets: &BTreeMap<String, KeySet>,
    errors: &mut Vec<ConfigError>,
) -> Option<Verifier> {
    let path = format!("auth.{name}");
    let before = errors.len();

    let mut keys = Vec::new();
    let mut remote = Vec::new();
    let set_names = p.keys.to_vec();
    if set_names.is_empty() {
        errors.push(ConfigError::new(format!("{path}.keys"), "no key set named"));
    }
    let mut all_loaded = true;
    for k in &set_names {
        match key_sets.get(k) {
            Some(set) => {
                keys.extend(set.keys.iter().cloned());
                remote.extend(set.remote.iter().cloned());
            }
            None if cfg.defines("keys", k) => all_loaded = false,
            None => {
                all_loaded = false;
                errors.push(ConfigError::new(
                    format!("{path}.keys"),
                    format!(
                        "unknown key set {k:?} (defined: {})",
                        names(&cfg.names("keys"))
                    ),
                ))
            }
        }
    }

    let mut algorithms = Vec::new();
    if p.algorithms.is_empty() {
        errors.push(ConfigError::new(
            format!("{path}.algorithms"),
            "list the algorithms your issuer signs with, e.g. [RS256]",
        ));
    }
    for a in &p.algorithms {
        if a.eq_ignore_ascii_case("none") {
            errors.push(ConfigError::new(
                format!("{path}.algorithms"),
                "\"none\" (unsigned tokens) is never allowed",
            ));
            continue;
        }
        match a.parse::<Algorithm>() {
            Ok(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
            Ok(_) => {}
            Err(_) => errors.push(ConfigError::new(
                format!("{path}.algorithms"),
                format!(
                    "unknown algorithm {a:?} (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)"
                ),
            )),
        }
    }
    // Remote keys are unknown until fetched: the check is for static sets only.
    if all_loaded && remote.is_empty() {
        for alg in &algorithms {
            if !keys.iter().any(|k| k.accepts(*alg)) {
                errors.push(ConfigError::new(
                    format!("{path}.algorithms"),
                    format!(
                        "{} has no matching key in key set(s) {} (they hold: {})",
                        alg_name(*alg),
                        set_names.join(", "),
                        describe_keys(&keys)
                    ),
                ));
            }
        }
    }

    let realm = p.realm.clone().unwrap_or_else(|| name.to_string());
    if realm.chars().any(|c| c.is_control()) {
        errors.push(ConfigError::new(
            format!("{path}.realm"),
            "control characters are not allowed",
        ));
    }

    let mut sources = Vec::new();
    match &p.token_from {
        None => sources.push(TokenSource::Bearer),
        Some(list) if list.is_empty() => errors.push(ConfigError::new(
            format!("{path}.token_from"),
            "an empty list; leave it out for [bearer]",
        )),
        Some(list) => {
            for s in list {
                match TokenSource::parse(s) {
                    Ok(src) => sources.push(src),
                    Err(e) => errors.push(ConfigError::new(format!("{path}.token_from"), e)),
                }
            }
        }
    }

    let strings = |field: &str, v: &Option<crate::config::OneOrMany<String>>| {
        let list = v.as_ref().map(|v| v.to_vec()).unwrap_or_default();
        let bad = (v.is_some() && list.is_empty()) || list.iter().any(|s| s.is_empty());
        (list, bad.then(|| format!("{path}.{field}")))
    };
    let (issuers, bad_iss) = strings("issuer", &p.issuer);
    let (audiences, bad_aud) = strings("audience", &p.audience);
    for bad in [bad_iss, bad_aud].into_iter().flatten() {
        errors.push(ConfigError::new(bad, "empty values are not allowed"));
    }

    let leeway = duration_field(
        format!("{path}.leeway"),
        &p.leeway,
        std::time::Duration::ZERO,
        std::time::Duration::ZERO..=std::time::Duration::from_secs(3600),
        errors,
    )
    .as_secs_f64();

    let mut header = |field: String, h: &str| -> Option<HeaderName> {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) if RESERVED_HEADERS.contains(&n.as_str()) => {
                errors.push(ConfigError::new(
                    field,
                    format!("{h:?} cannot be set from a token"),
                ));
                None
            }
            Ok(n) => Some(n),
            Err(_) => {
                errors.push(ConfigError::new(
                    field,
                    format!("invalid header name {h:?}"),
                ));
                None
            }
        }
    };
    let mut forward_claims = Vec::new();
    for (h, claim) in &p.forward_claims {
        if let Some(n) = header(format!("{path}.forward_claims.{h}"), h) {
            forward_claims.push((n, claim.clone()));
        }
    }
    let forward_payload = p
        .forward_payload
        .as_ref()
        .and_then(|h| header(format!("{path}.forward_payload"), h));

    let mut rules = Vec::new();
    for (i, r) in p.require.iter().enumerate() {
        match Rule::compile(r) {
            Ok(rule) => rules.push(rule),
            Err(e) => errors.push(ConfigError::new(format!("{path}.require[{i}]"), e)),
        }
    }

    let cache_size = p.cache_size.unwrap_or(crate::auth::cache::DEFAULT_CAPACITY);
    if !(64..=10_000_000).contains(&cache_size) {
        errors.push(ConfigError::new(
            format!("{path}.cache_size"),
            format!("{cache_size} is out of range 64..=10000000"),
        ));
    }
    if p.cache == Some(false) && p.cache_size.is_some() {
        errors.push(ConfigError::new(
            format!("{path}.cache_size"),
            "the cache is off (cache: false)",
        ));
    }
    let cache = (p.cache != Some(false)).then(|| crate::auth::cache::TokenCache::new(cache_size));

    if errors.len() != before {
        return None;
    }
    Some(Verifier {
        name: name.to_string(),
        realm,
        algorithms,
        keys,
        remote,
        sources,
        issuers,
        audiences,
        leeway,
        require_exp: p.require_exp,
        forward_claims,
        forward_payload,
        rules,
        cache,
        metrics: crate::observe::metrics::PolicyMetrics::new(name),
    })
}

fn describe_keys(keys: &[Arc<crate::auth::keys::Key>]) -> String {
    let mut kinds: Vec<String> = keys
        .iter()
        .map(|k| match (k.family, k.curve) {
            (jsonwebtoken::AlgorithmFamily::Hmac, _) => "HMAC secret".to_string(),
            (jsonwebtoken::AlgorithmFamily::Rsa, _) => "RSA key".to_string(),
            (_, Some(c)) => format!("{c:?} key"),
            (f, None) => format!("{f:?} key"),
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    if kinds.is_empty() {
        "no keys".into()
    } else {
        kinds.join(", ")
    }
}

impl Policy {
    /// Start the work that runs beside the request path for as long as this policy is alive:
    /// watching the revocation file, health-checking upstream peers. (Each task holds a weak reference and ends with it.)
    pub fn start_background(&self) {
        if let Some(rev) = &self.revocation {
            Revocation::watch(rev);
        }
        for pool in self.upstreams.values() {
            crate::upstream::health::watch(pool);
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
        let listen: Vec<String> = self.listen.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            s,
            "listen {}  threads {}  admin {}",
            listen.join(", "),
            self.threads,
            self.admin.map_or("off".to_string(), |a| a.to_string())
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
                r.id, r.upstream.name
            );
        }
        let _ = writeln!(s, "auth policies ({}):", self.verifiers.len());
        for (name, v) in &self.verifiers {
            let algs: Vec<&str> = v.algorithms.iter().map(|a| alg_name(*a)).collect();
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
                .peers
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
                let _ = writeln!(
                    s,
                    "  {name:<16} key {}, {}/s, burst {}, at most {} keys",
                    l.key, l.rate, l.burst, l.max_keys
                );
            }
        }
        if let Some(r) = &self.revocation {
            let set = r.snapshot();
            let file = r
                .file
                .as_ref()
                .map_or("no file".to_string(), |f| format!("{}", f.display()));
            let _ = writeln!(
                s,
                "revocation: {file}; {} sub, {} jti revoked now",
                set.sub.len(),
                set.jti.len()
            );
        }
        s
    }
}
