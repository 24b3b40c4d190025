//! The route table: longest prefix wins; a route's `host` narrows it; `methods` split one
//! prefix between routes, and never make a request fall through to a shorter prefix.

use crate::auth::Verifier;
use crate::config::{Ctx, RouteConfig};
use crate::edge::cors::Cors;
use crate::edge::headers::{HeaderRules, Template};
use crate::edge::{canonical_prefix, PathRules};
use crate::error::Reject;
use crate::limit::{LimitKey, RateLimiter};
use crate::upstream::{ByClaim, Choice, HashKey, Pool};
use http::HeaderName;
use http::Method;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// How a route matches the request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Exact host, lower case.
    Exact(String),
    /// `*.example.com`: stored as `.example.com`; matches subdomains only.
    Suffix(String),
}

impl HostMatch {
    pub fn parse(s: &str) -> Result<HostMatch, String> {
        let lower = s.trim().to_ascii_lowercase();
        // Requests are matched with one trailing dot removed; so are route hosts.
        let h = lower.strip_suffix('.').unwrap_or(&lower).to_string();
        let valid = |x: &str| {
            !x.is_empty()
                && x.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        if let Some(rest) = h.strip_prefix("*.") {
            if valid(rest) {
                return Ok(HostMatch::Suffix(format!(".{rest}")));
            }
        } else if valid(&h) {
            return Ok(HostMatch::Exact(h));
        }
        Err(format!(
            "invalid host {s:?}: a name like api.example.com or *.example.com (no port)"
        ))
    }

    fn matches(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (HostMatch::Any, _) => true,
            (HostMatch::Exact(h), Some(x)) => h.eq_ignore_ascii_case(x),
            (HostMatch::Suffix(s), Some(x)) => {
                x.len() > s.len()
                    && x.as_bytes()[x.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
            _ => false,
        }
    }

    /// The length of a wildcard's suffix (0 for the others).
    fn suffix_len(&self) -> usize {
        match self {
            HostMatch::Suffix(s) => s.len(),
            _ => 0,
        }
    }

    /// Ordering weight: exact hosts before wildcards before any host.
    fn rank(&self) -> u8 {
        match self {
            HostMatch::Exact(_) => 0,
            HostMatch::Suffix(_) => 1,
            HostMatch::Any => 2,
        }
    }
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Stable label for logs: `host` + prefix (+ methods).
    pub id: String,
    pub prefix: String,
    pub host: HostMatch,
    /// `None`: any method.
    pub methods: Option<Vec<Method>>,
    /// The pool, or how the token picks it.
    pub upstream: Choice,
    /// Policies of which any one must accept the token; empty = public route.
    pub auth: Vec<Arc<Verifier>>,
    /// Limits keyed on the IP or a header: checked before the token is verified.
    pub pre_auth_limits: Vec<Arc<RateLimiter>>,
    /// Limits keyed on a claim: checked only once the token is verified.
    pub post_auth_limits: Vec<Arc<RateLimiter>>,
    /// `Upgrade: websocket` is relayed (else `Upgrade` is removed).
    pub websocket: bool,
    /// The upstream path starts with this instead of `prefix`.
    pub rewrite: Option<String>,
    pub request_headers: HeaderRules,
    pub response_headers: HeaderRules,
    pub cors: Option<Cors>,
    pub metrics: crate::observe::metrics::RouteMetrics,
}

impl Route {
    /// A public route to one pool with nothing else set: for tests, benches and fuzz targets.
    /// Its id is its prefix; its metrics share one fixed label, so that building many (a fuzz
    /// target builds millions) does not grow the metric registry.
    pub fn basic(
        prefix: &str,
        host: HostMatch,
        methods: Option<Vec<Method>>,
        upstream: Choice,
    ) -> Route {
        Route {
            id: prefix.to_string(),
            prefix: prefix.to_string(),
            host,
            methods,
            upstream,
            auth: vec![],
            pre_auth_limits: vec![],
            post_auth_limits: vec![],
            websocket: false,
            rewrite: None,
            request_headers: HeaderRules::default(),
            response_headers: HeaderRules::default(),
            cors: None,
            metrics: crate::observe::metrics::RouteMetrics::new("basic"),
        }
    }
    fn same_place(&self, other: &Route) -> bool {
        self.prefix == other.prefix && self.host == other.host
    }
    fn allows(&self, m: &Method) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.contains(m))
    }
}

/// Routes sorted so that the first match is the most specific.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Build the table. Errors name routes (by their index in the file) that can never match.
    pub fn new(mut routes: Vec<(usize, Route)>) -> Result<RouteTable, Vec<(usize, String)>> {
        routes.sort_by(|(ia, a), (ib, b)| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(a.host.rank().cmp(&b.host.rank()))
                // Among wildcards, the longest (most specific) first, as nginx's server_name.
                .then(b.host.suffix_len().cmp(&a.host.suffix_len()))
                .then(a.prefix.cmp(&b.prefix))
                .then(format!("{:?}", a.host).cmp(&format!("{:?}", b.host)))
                .then(ia.cmp(ib))
        });
        let mut errors = Vec::new();
        for (i, (ia, a)) in routes.iter().enumerate() {
            for (ib, b) in routes[i + 1..].iter() {
                if !a.same_place(b) {
                    continue;
                }
                let overlap = match (&a.methods, &b.methods) {
                    (None, _) | (_, None) => true,
                    (Some(x), Some(y)) => x.iter().any(|m| y.contains(m)),
                };
                if overlap {
                    let (first, second) = if ia < ib { (ia, ib) } else { (ib, ia) };
                    errors.push((
                        *second,
                        format!("same prefix, host and methods as routes[{first}]"),
                    ));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(RouteTable {
            routes: routes.into_iter().map(|(_, r)| Arc::new(r)).collect(),
        })
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The first route of the most specific place (prefix and host) for a path, whatever the
    /// method: for a CORS preflight announcing a method that no route there allows.
    pub fn find_place(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| path.starts_with(r.prefix.as_str()) && r.host.matches(host))
    }

    /// Find the route for a request. `host` is the request host without port.
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
    ) -> Result<&Arc<Route>, Reject> {
        let mut i = 0;
        while i < self.routes.len() {
            let r = &self.routes[i];
            if path.starts_with(r.prefix.as_str()) && r.host.matches(host) {
                // The most specific place matches: decide by method among its routes only.
                let group = self.routes[i..].iter().take_while(|x| x.same_place(r));
                let mut allow = Vec::new();
                for x in group {
                    if x.allows(method) {
                        return Ok(x);
                    }
                    allow.extend(x.methods.iter().flatten().map(|m| m.as_str()));
                }
                allow.sort_unstable();
                allow.dedup();
                return Err(Reject::MethodNotAllowed {
                    allow: allow.join(", "),
                });
            }
            i += 1;
        }
        Err(Reject::NotFound)
    }
}

/// What routes refer to, compiled by the sections before them.
pub struct Targets<'a> {
    pub upstreams: &'a BTreeMap<String, Arc<Pool>>,
    pub verifiers: &'a BTreeMap<String, Arc<Verifier>>,
    pub rate_limits: &'a BTreeMap<String, Arc<RateLimiter>>,
    pub path_rules: PathRules,
}

/// The `routes` section: each route resolved against the other sections, then the table.
/// A route with any error (its own, or a policy or limit it names that failed) is never built.
pub fn compile(routes: &[RouteConfig], t: &Targets<'_>, ctx: &Ctx) -> RouteTable {
    let cfg = ctx.config();
    if routes.is_empty() && !cfg.broken.iter().any(|b| b.starts_with("routes[")) {
        ctx.error("routes", "at least one route is needed");
    }
    let built: Vec<(usize, Route)> = routes
        .iter()
        .filter_map(|r| compile_route(r, t, ctx).map(|route| (r.index, route)))
        .collect();
    match RouteTable::new(built) {
        Ok(table) => table,
        Err(es) => {
            for (i, e) in es {
                ctx.error(format!("routes[{i}]"), e);
            }
            RouteTable::default()
        }
    }
}

fn compile_route(r: &RouteConfig, t: &Targets<'_>, ctx: &Ctx) -> Option<Route> {
    let path = format!("routes[{}]", r.index);
    let before = ctx.error_count();
    if !r.prefix.starts_with('/') {
        ctx.error(
            format!("{path}.prefix"),
            format!("{:?} must start with /", r.prefix),
        );
    } else if let Err(e) = canonical_prefix(&r.prefix, t.path_rules) {
        ctx.error(format!("{path}.prefix"), e);
    }
    let policy_names = r.auth.as_ref().map(|a| a.to_vec()).unwrap_or_default();
    let upstream = choice_of(&path, r, policy_names.is_empty(), t, ctx);
    let auth = auth_of(&path, r, &policy_names, t, ctx);
    let host = match &r.host {
        None => HostMatch::Any,
        Some(h) => HostMatch::parse(h).unwrap_or_else(|e| {
            ctx.error(format!("{path}.host"), e);
            HostMatch::Any
        }),
    };
    let methods = r.methods.as_ref().map(|ms| methods_of(&path, ms, ctx));
    let limit_names = r
        .rate_limit
        .as_ref()
        .map(|l| l.to_vec())
        .unwrap_or_default();
    let (pre_auth_limits, post_auth_limits) =
        limits_of(&path, &limit_names, policy_names.is_empty(), t, ctx);
    let edge = route_edge(&path, r, t.path_rules, ctx);
    // A route whose policy or limit failed is never built: fail closed.
    let complete = auth.len() == policy_names.len()
        && pre_auth_limits.len() + post_auth_limits.len() == limit_names.len();
    if ctx.error_count() != before || !complete {
        return None;
    }
    let edge = edge?;
    let id = route_id(&host, &r.prefix, methods.as_deref());
    Some(Route {
        prefix: r.prefix.clone(),
        host,
        methods,
        upstream: upstream?,
        auth,
        pre_auth_limits,
        post_auth_limits,
        websocket: r.websocket,
        rewrite: edge.rewrite,
        request_headers: edge.request_headers,
        response_headers: edge.response_headers,
        cors: edge.cors,
        metrics: crate::observe::metrics::RouteMetrics::new(&id),
        id,
    })
}

/// `upstream` or `upstream_by` (exactly one). A pool hashing on a claim, or a choice by claim,
/// needs the route to verify tokens.
fn choice_of(
    path: &str,
    r: &RouteConfig,
    public: bool,
    t: &Targets<'_>,
    ctx: &Ctx,
) -> Option<Choice> {
    let pool = |field: String, name: &str| -> Option<Arc<Pool>> {
        let found = t.upstreams.get(name).cloned();
        if found.is_none() && !ctx.config().defines("upstreams", name) {
            ctx.error(
                field.as_str(),
                format!(
                    "unknown upstream {name:?} (defined: {})",
                    ctx.defined("upstreams")
                ),
            );
        }
        if let (Some(u), true) = (&found, public) {
            if matches!(u.hash_key, Some(HashKey::Claim(_))) {
                ctx.error(
                    field.as_str(),
                    format!("upstream {name:?} hashes on a claim, but this route has no auth"),
                );
            }
        }
        found
    };
    match (&r.upstream, &r.upstream_by) {
        (Some(name), None) => pool(format!("{path}.upstream"), name).map(Choice::Fixed),
        (None, Some(by)) => {
            let field = format!("{path}.upstream_by");
            if public {
                ctx.error(
                    field.as_str(),
                    "picks the upstream by a claim, but this route has no auth",
                );
            }
            let claim = crate::auth::path::compile(ctx, format!("{field}.claim"), &by.claim);
            if by.map.is_empty() {
                ctx.error(format!("{field}.map"), "at least one claim value is needed");
            }
            let mut map = std::collections::HashMap::new();
            for (value, name) in &by.map {
                if let Some(p) = pool(format!("{field}.map.{value}"), name) {
                    map.insert(value.clone(), p);
                }
            }
            let default = match &by.default {
                Some(name) => Some(pool(format!("{field}.default"), name)?),
                None => None,
            };
            if map.len() != by.map.len() {
                return None;
            }
            Some(Choice::ByClaim(ByClaim {
                claim: claim?,
                map,
                default,
            }))
        }
        (Some(_), Some(_)) => {
            ctx.error(
                path,
                "both upstream and upstream_by: give one (a fixed pool, or the claim that picks it)",
            );
            None
        }
        (None, None) => {
            ctx.error(
                format!("{path}.upstream"),
                "missing: name the upstream (or give upstream_by)",
            );
            None
        }
    }
}

struct RouteEdge {
    rewrite: Option<String>,
    request_headers: HeaderRules,
    response_headers: HeaderRules,
    cors: Option<Cors>,
}

/// `rewrite`, `request_headers`, `response_headers` and `cors` of a route; `None` on an error.
fn route_edge(path: &str, r: &RouteConfig, rules: PathRules, ctx: &Ctx) -> Option<RouteEdge> {
    let before = ctx.error_count();
    if let Some(rw) = &r.rewrite {
        if !rw.starts_with('/') {
            ctx.error(
                format!("{path}.rewrite"),
                format!("{rw:?} must start with /"),
            );
        } else if let Err(e) = canonical_prefix(rw, rules) {
            ctx.error(format!("{path}.rewrite"), e);
        } else if rw.ends_with('/') != r.prefix.ends_with('/') {
            ctx.error(
                format!("{path}.rewrite"),
                format!(
                    "{rw:?} replaces the prefix {:?}: end both with / or neither, or paths would gain or lose a slash",
                    r.prefix
                ),
            );
        }
    }
    let header_rules = |field: &str, c: &Option<crate::config::HeaderRulesConfig>| {
        let mut out = HeaderRules::default();
        let Some(c) = c else { return out };
        let name = |f: String, h: &str| match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) if crate::auth::compile::RESERVED_HEADERS.contains(&n.as_str()) => {
                ctx.error(f, format!("{h:?} carries framing, routing or credentials: it cannot be set or removed here"));
                None
            }
            Ok(n) => Some(n),
            Err(_) => {
                ctx.error(f, format!("invalid header name {h:?}"));
                None
            }
        };
        for (h, v) in &c.set {
            let f = format!("{path}.{field}.set.{h}");
            let Some(n) = name(f.clone(), h) else {
                continue;
            };
            match Template::parse(v) {
                Ok(t) => out.set.push((n, t)),
                Err(e) => ctx.error(f, e),
            }
        }
        for (i, h) in c.remove.iter().enumerate() {
            if let Some(n) = name(format!("{path}.{field}.remove[{i}]"), h) {
                out.remove.push(n);
            }
        }
        out
    };
    let request_headers = header_rules("request_headers", &r.request_headers);
    let response_headers = header_rules("response_headers", &r.response_headers);
    let cors = r.cors.as_ref().and_then(|c| {
        let max_age = crate::config::duration_field(
            format!("{path}.cors.max_age"),
            &c.max_age,
            std::time::Duration::from_secs(600),
            std::time::Duration::ZERO..=std::time::Duration::from_secs(86400),
            &mut ctx.errors(),
        );
        Cors::new(
            &c.origins,
            &c.methods,
            &c.headers,
            &c.expose_headers,
            c.credentials,
            max_age,
        )
        .map_err(|(field, e)| ctx.error(format!("{path}.cors.{field}"), e))
        .ok()
    });
    (ctx.error_count() == before).then_some(RouteEdge {
        rewrite: r.rewrite.clone(),
        request_headers,
        response_headers,
        cors,
    })
}

fn auth_of(
    path: &str,
    r: &RouteConfig,
    policy_names: &[String],
    t: &Targets<'_>,
    ctx: &Ctx,
) -> Vec<Arc<Verifier>> {
    if r.auth.is_some() && policy_names.is_empty() {
        ctx.error(
            format!("{path}.auth"),
            "an empty list; leave `auth` out for a public route",
        );
    }
    let mut auth = Vec::new();
    for p in policy_names {
        match t.verifiers.get(p) {
            Some(v) => auth.push(v.clone()),
            None if ctx.config().defines("auth", p) => {} // its own errors are reported
            None => ctx.error(
                format!("{path}.auth"),
                format!(
                    "unknown auth policy {p:?} (defined: {})",
                    ctx.defined("auth")
                ),
            ),
        }
    }
    auth
}

fn methods_of(path: &str, ms: &[String], ctx: &Ctx) -> Vec<Method> {
    let mut out = Vec::new();
    for m in ms {
        let ok = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase());
        match Method::from_bytes(m.as_bytes()) {
            Ok(method) if ok => out.push(method),
            _ => ctx.error(
                format!("{path}.methods"),
                format!("invalid method {m:?} (upper case, like GET)"),
            ),
        }
    }
    if ms.is_empty() {
        ctx.error(
            format!("{path}.methods"),
            "an empty list; leave `methods` out to allow every method",
        );
    }
    out
}

/// `(limits checked before the token, limits keyed on a claim)`.
#[allow(clippy::type_complexity)]
fn limits_of(
    path: &str,
    names: &[String],
    public: bool,
    t: &Targets<'_>,
    ctx: &Ctx,
) -> (Vec<Arc<RateLimiter>>, Vec<Arc<RateLimiter>>) {
    let mut pre = Vec::new();
    let mut post = Vec::new();
    for l in names {
        match t.rate_limits.get(l) {
            Some(limiter) if matches!(limiter.key, LimitKey::Claim(_)) => {
                if public {
                    ctx.error(
                        format!("{path}.rate_limit"),
                        format!("{l:?} is keyed on a claim, but this route has no auth"),
                    );
                }
                post.push(limiter.clone());
            }
            Some(limiter) => pre.push(limiter.clone()),
            None if ctx.config().defines("rate_limits", l) => {}
            None => ctx.error(
                format!("{path}.rate_limit"),
                format!(
                    "unknown rate limit {l:?} (defined: {})",
                    ctx.defined("rate_limits")
                ),
            ),
        }
    }
    (pre, post)
}

/// Stable label for logs and metrics: host + prefix (+ methods).
fn route_id(host: &HostMatch, prefix: &str, methods: Option<&[Method]>) -> String {
    let mut id = String::new();
    match host {
        HostMatch::Any => {}
        HostMatch::Exact(h) => id.push_str(h),
        HostMatch::Suffix(s) => {
            let _ = write!(id, "*{s}");
        }
    }
    id.push_str(prefix);
    if let Some(ms) = methods {
        let list: Vec<&str> = ms.iter().map(Method::as_str).collect();
        let _ = write!(id, " [{}]", list.join(","));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, host: &str, methods: Option<&[&str]>) -> Route {
        let host = if host.is_empty() {
            HostMatch::Any
        } else {
            HostMatch::parse(host).unwrap()
        };
        let methods = methods.map(|ms| ms.iter().map(|m| m.parse().unwrap()).collect());
        let pool = Arc::new(Pool::new("p", vec![("127.0.0.1:1".parse().unwrap(), 1)]));
        Route::basic(prefix, host, methods, Choice::Fixed(pool))
    }

    fn table(rs: Vec<Route>) -> RouteTable {
        RouteTable::new(rs.into_iter().enumerate().collect()).unwrap()
    }

    /// The reference matcher of the `routes` fuzz target: among wildcard hosts at one prefix,
    /// the longest (most specific) wins, whatever the names sort as.
    #[test]
    fn longer_wildcard_host_wins() {
        let mut hosts = ["*.example.com", "*.z.example.com", "*.a.example.com"];
        for _ in 0..3 {
            hosts.rotate_left(1);
            let t = table(hosts.iter().map(|h| route("/", h, None)).collect());
            let get = Method::GET;
            let host = |h: &str| t.find(Some(h), "/x", &get).unwrap().host.clone();
            assert_eq!(
                host("q.z.example.com"),
                HostMatch::parse("*.z.example.com").unwrap()
            );
            assert_eq!(
                host("q.a.example.com"),
                HostMatch::parse("*.a.example.com").unwrap()
            );
            assert_eq!(
                host("q.b.example.com"),
                HostMatch::parse("*.example.com").unwrap()
            );
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table(vec![
            route("/", "", None),
            route("/api/", "", None),
            route("/api/v2/", "", None),
        ]);
        let get = Method::GET;
        assert_eq!(t.find(None, "/api/v2/x", &get).unwrap().prefix, "/api/v2/");
        assert_eq!(t.find(None, "/api/v1", &get).unwrap().prefix, "/api/");
        assert_eq!(t.find(None, "/apix", &get).unwrap().prefix, "/");
    }

    #[test]
    fn host_and_methods() {
        let t = table(vec![
            route("/", "", None),
            route("/a/", "api.example.com", Some(&["GET"])),
            route("/a/", "api.example.com", Some(&["POST", "PUT"])),
            route("/a/", "*.example.com", None),
        ]);
        let r = t
            .find(Some("API.example.com"), "/a/1", &Method::POST)
            .unwrap();
        assert_eq!(r.methods.as_ref().unwrap()[0], Method::POST);
        let e = t
            .find(Some("api.example.com"), "/a/1", &Method::DELETE)
            .unwrap_err();
        assert_eq!(
            e,
            Reject::MethodNotAllowed {
                allow: "GET, POST, PUT".into()
            }
        );
        let r = t
            .find(Some("x.example.com"), "/a/1", &Method::DELETE)
            .unwrap();
        assert!(matches!(r.host, HostMatch::Suffix(_)));
        assert_eq!(
            t.find(Some("example.com"), "/a/1", &Method::GET)
                .unwrap()
                .prefix,
            "/"
        );
        let t = table(vec![route("/only/", "", None)]);
        assert_eq!(
            t.find(None, "/other", &Method::GET).unwrap_err(),
            Reject::NotFound
        );
    }

    #[test]
    fn duplicates_are_errors() {
        let e = RouteTable::new(vec![
            (0, route("/a/", "", Some(&["GET"]))),
            (1, route("/a/", "", Some(&["GET", "POST"]))),
        ])
        .unwrap_err();
        assert_eq!(e[0].0, 1);
    }
}
