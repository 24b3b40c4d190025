//! What the gateway adds on the way up (forwarded headers, the request id, header rules,
//! rewrite) and on the way down (the request id, CORS, response header rules) — to the
//! upstream's answers and to the gateway's own alike.

use super::cors::Cors;
use super::headers::{HeaderRules, Values};
use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

// Written as static strings: Pingora's insert_header then keeps the given case without
// building a title-cased copy of the name on every request.
const XFF: &str = "X-Forwarded-For";
const XFP: &str = "X-Forwarded-Proto";
const XFH: &str = "X-Forwarded-Host";
const XRI: &str = "X-Real-IP";

/// Who sent the request, as the upstream is told.
pub struct Origin {
    /// The connection's peer.
    pub peer: Option<IpAddr>,
    /// The client, after `trusted_proxies`.
    pub client: Option<IpAddr>,
    /// The peer is a trusted proxy: its forwarded headers are kept (XFF appended to).
    pub trusted_peer: bool,
    pub tls: bool,
}

/// `X-Forwarded-For` (appended with the peer), `-Proto`, `-Host`, `X-Real-IP`. A client's own
/// copies are replaced unless it is a trusted proxy.
pub fn forwarded(up: &mut RequestHeader, o: &Origin) -> pingora_core::Result<()> {
    let peer = o.peer.map(|p| p.to_string());
    let xff = match (&peer, o.trusted_peer) {
        (Some(p), true) => {
            let before: Vec<&str> = up
                .headers
                .get_all(XFF)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            Some(if before.is_empty() {
                p.clone()
            } else {
                format!("{}, {p}", before.join(", "))
            })
        }
        (Some(p), false) => Some(p.clone()),
        (None, _) => None,
    };
    up.remove_header(XFF);
    let real_ip = match (o.client, &xff) {
        (Some(c), Some(v)) if Some(c) == o.peer && !o.trusted_peer => Some(v.clone()),
        (Some(c), _) => Some(c.to_string()),
        (None, _) => None,
    };
    if let Some(v) = xff {
        up.insert_header(XFF, v)?;
    }
    if !(o.trusted_peer && up.headers.contains_key(XFP)) {
        up.insert_header(XFP, if o.tls { "https" } else { "http" })?;
    }
    if !(o.trusted_peer && up.headers.contains_key(XFH)) {
        match up.headers.get(http::header::HOST).cloned() {
            Some(h) => up.insert_header(XFH, h)?,
            None => {
                up.remove_header(XFH);
            }
        }
    }
    match real_ip {
        Some(c) => up.insert_header(XRI, c)?,
        None => {
            up.remove_header(XRI);
        }
    }
    Ok(())
}

/// `/api/v1/x?q` with prefix `/api/v1/` and rewrite `/v1/` → `/v1/x?q`: exactly the matched
/// prefix is replaced (a rewrite ends in `/` exactly when its prefix does; `check` says so).
pub fn rewritten(path_and_query: &str, prefix: &str, rewrite: &str) -> String {
    let rest = path_and_query.get(prefix.len()..).unwrap_or("");
    let mut out = String::with_capacity(rewrite.len() + rest.len());
    out.push_str(rewrite);
    out.push_str(rest);
    out
}

/// What every answer to a request gets.
pub struct Decoration<'a> {
    pub request_id: Option<(&'a HeaderName, &'a HeaderValue)>,
    /// The route's CORS rules and the request's `Origin`.
    pub cors: Option<(&'a Cors, &'a [u8])>,
    pub rules: Option<(&'a HeaderRules, Values<'a>)>,
}

impl Decoration<'_> {
    pub fn apply(&self, resp: &mut ResponseHeader) {
        if let Some((name, id)) = self.request_id {
            let _ = resp.insert_header(name.clone(), id.clone());
        }
        if let Some((cors, origin)) = self.cors {
            cors.decorate(origin, resp);
        }
        if let Some((rules, values)) = &self.rules {
            for h in &rules.remove {
                resp.remove_header(h);
            }
            // A value that cannot be made is left out: the answer is already decided.
            if let Ok(set) = rules.render(values) {
                for (h, v) in set {
                    let _ = resp.insert_header(h, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites() {
        assert_eq!(rewritten("/api/v1/x?q=1", "/api/v1/", "/v1/"), "/v1/x?q=1");
        assert_eq!(rewritten("/api/v1/", "/api/v1/", "/v1/"), "/v1/");
        assert_eq!(rewritten("/api/v1/x", "/api/v1/", "/"), "/x");
        assert_eq!(rewritten("/api/x", "/api", "/v2"), "/v2/x");
        assert_eq!(rewritten("/apix", "/api", "/v2"), "/v2x");
        assert_eq!(rewritten("/api?q", "/api", "/v2"), "/v2?q");
    }

    #[test]
    fn forwarded_headers() {
        let mut up = RequestHeader::build("GET", b"/", None).unwrap();
        up.insert_header("host", "api.example.com").unwrap();
        up.insert_header("x-forwarded-for", "6.6.6.6").unwrap();
        up.insert_header("x-forwarded-proto", "gopher").unwrap();
        let o = Origin {
            peer: Some("198.51.100.1".parse().unwrap()),
            client: Some("198.51.100.1".parse().unwrap()),
            trusted_peer: false,
            tls: true,
        };
        forwarded(&mut up, &o).unwrap();
        assert_eq!(up.headers["x-forwarded-for"], "198.51.100.1");
        assert_eq!(up.headers["x-forwarded-proto"], "https");
        assert_eq!(up.headers["x-forwarded-host"], "api.example.com");
        assert_eq!(up.headers["x-real-ip"], "198.51.100.1");

        let mut up = RequestHeader::build("GET", b"/", None).unwrap();
        up.insert_header("x-forwarded-for", "203.0.113.5").unwrap();
        up.insert_header("x-forwarded-proto", "https").unwrap();
        let o = Origin {
            peer: Some("10.0.0.2".parse().unwrap()),
            client: Some("203.0.113.5".parse().unwrap()),
            trusted_peer: true,
            tls: false,
        };
        forwarded(&mut up, &o).unwrap();
        assert_eq!(up.headers["x-forwarded-for"], "203.0.113.5, 10.0.0.2");
        assert_eq!(up.headers["x-forwarded-proto"], "https");
        assert_eq!(up.headers["x-real-ip"], "203.0.113.5");
    }
}
