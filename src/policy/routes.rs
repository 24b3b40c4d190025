//! The route table: longest prefix wins; a route's `host` narrows it; `methods` split one
//! prefix between routes, and never make a request fall through to a shorter prefix.

use crate::auth::Verifier;
use crate::error::Reject;
use crate::limit::RateLimiter;
use crate::upstream::Pool;
use http::Method;
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
    pub upstream: Arc<Pool>,
    /// Policies of which any one must accept the token; empty = public route.
    pub auth: Vec<Arc<Verifier>>,
    /// Limits keyed on the IP or a header: checked before the token is verified.
    pub pre_auth_limits: Vec<Arc<RateLimiter>>,
    /// Limits keyed on a claim: checked only once the token is verified.
    pub post_auth_limits: Vec<Arc<RateLimiter>>,
    /// `Upgrade: websocket` is relayed (else `Upgrade` is removed).
    pub websocket: bool,
    pub metrics: crate::observe::metrics::RouteMetrics,
}

impl Route {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, host: &str, methods: Option<&[&str]>) -> Route {
        Route {
            id: prefix.to_string(),
            prefix: prefix.to_string(),
            host: if host.is_empty() {
                HostMatch::Any
            } else {
                HostMatch::parse(host).unwrap()
            },
            methods: methods.map(|ms| ms.iter().map(|m| m.parse().unwrap()).collect()),
            upstream: Arc::new(Pool::new("p", vec![("127.0.0.1:1".parse().unwrap(), 1)])),
            auth: vec![],
            pre_auth_limits: vec![],
            post_auth_limits: vec![],
            websocket: false,
            metrics: crate::observe::metrics::RouteMetrics::new(prefix),
        }
    }

    fn table(rs: Vec<Route>) -> RouteTable {
        RouteTable::new(rs.into_iter().enumerate().collect()).unwrap()
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
