//! The HTTP edge: what is done to a request before it is routed, so that the gateway and the
//! upstream agree on which resource and which host a request is for.
//!
//! `normalise` runs first in `request_filter`: it puts the request target and `Host` in
//! canonical form (in place, so that the upstream is sent exactly what was routed) and applies
//! the header-name rules. `strip_upgrade` runs once the route is known.

pub mod client_ip;
pub mod conn;
pub mod cors;
pub mod forward;
pub mod headers;
pub mod proxy_protocol;
pub mod redirect;
pub mod request_id;
pub mod target;

pub use target::{canonical_host, canonical_target, EncodedSlashes, PathRules, Target};

use crate::error::Reject;
use http::header::{CONNECTION, HOST, UPGRADE};
use http::{HeaderName, HeaderValue, Version};
use pingora_http::RequestHeader;

/// What to do with a client header whose name has an underscore
/// (`server.headers_with_underscores`). CGI, WSGI and PHP upstreams read `X_User` and `X-User`
/// as the same variable, `HTTP_X_USER`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Underscores {
    /// Keep them, except one that names a protected header once `_` is read as `-`.
    Allow,
    /// Remove them before anything reads the request (nginx's default).
    #[default]
    Drop,
    /// 400.
    Reject,
}

/// The edge rules compiled from the `server` section.
#[derive(Debug, Clone, Default)]
pub struct EdgeRules {
    pub path: PathRules,
    pub underscores: Underscores,
    pub trusted: client_ip::Trusted,
    pub request_id: request_id::RequestIdRules,
    pub limits: Limits,
}

/// `server.limits`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub idle_timeout: std::time::Duration,
    pub header_timeout: std::time::Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 << 10,
            max_body_bytes: 10 << 20,
            idle_timeout: std::time::Duration::from_secs(60),
            header_timeout: std::time::Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

/// The request line and headers as they were on the wire, give or take a few bytes.
pub fn header_bytes(req: &RequestHeader) -> usize {
    let headers: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    req.method.as_str().len() + req.raw_path().len() + 12 + headers
}

fn limits(l: &crate::config::LimitsConfig, ctx: &crate::config::Ctx) -> Limits {
    use crate::config::parse_size;
    use std::time::Duration;
    let d = Limits::default();
    let size =
        |field: &str, v: &Option<String>, default: u64, range: std::ops::RangeInclusive<u64>| {
            let Some(v) = v else { return default };
            match parse_size(v) {
                Ok(n) if range.contains(&n) => n,
                Ok(n) => {
                    ctx.error(
                        format!("server.limits.{field}"),
                        format!(
                            "{n} bytes is out of range {}..={}",
                            range.start(),
                            range.end()
                        ),
                    );
                    default
                }
                Err(e) => {
                    ctx.error(format!("server.limits.{field}"), e);
                    default
                }
            }
        };
    let duration = |field: &str, v: &Option<String>, default, range| {
        let mut errors = ctx.errors();
        crate::config::duration_field(
            format!("server.limits.{field}"),
            v,
            default,
            range,
            &mut errors,
        )
    };
    let idle_timeout = duration(
        "idle_timeout",
        &l.idle_timeout,
        d.idle_timeout,
        Duration::from_secs(1)..=Duration::from_secs(3600),
    );
    let header_timeout = duration(
        "header_timeout",
        &l.header_timeout,
        d.header_timeout,
        Duration::from_millis(100)..=Duration::from_secs(3600),
    );
    let max_connections = match l.max_connections {
        None => d.max_connections,
        Some(n @ 1..=10_000_000) => n as usize,
        Some(n) => {
            ctx.error(
                "server.limits.max_connections",
                format!("{n} is out of range 1..=10000000"),
            );
            d.max_connections
        }
    };
    Limits {
        max_header_bytes: size(
            "max_header_bytes",
            &l.max_header_bytes,
            d.max_header_bytes as u64,
            1024..=(1 << 20),
        ) as usize,
        max_body_bytes: size(
            "max_body_bytes",
            &l.max_body_bytes,
            d.max_body_bytes,
            0..=(1 << 40),
        ),
        idle_timeout,
        header_timeout,
        max_connections,
    }
}

/// The edge fields of the `server` section.
pub fn compile(s: &crate::config::ServerConfig, ctx: &crate::config::Ctx) -> EdgeRules {
    use crate::config::{EncodedSlashesConfig, HeadersWithUnderscores, PathSemicolons};
    let mut trusted = Vec::new();
    for (i, t) in s.trusted_proxies.iter().enumerate() {
        match client_ip::Cidr::parse(t) {
            Ok(c) => trusted.push(c),
            Err(e) => ctx.error(format!("server.trusted_proxies[{i}]"), e),
        }
    }
    let mut request_id = request_id::RequestIdRules::default();
    if let Some(r) = &s.request_id {
        request_id.trust_incoming = r.trust_incoming;
        if let Some(h) = &r.header {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => request_id.header = n,
                Err(_) => ctx.error(
                    "server.request_id.header",
                    format!("invalid header name {h:?}"),
                ),
            }
        }
    }
    EdgeRules {
        limits: s
            .limits
            .as_ref()
            .map(|l| limits(l, ctx))
            .unwrap_or_default(),
        trusted: client_ip::Trusted(trusted),
        request_id,
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

/// A route prefix must be written the way requests are matched, or it could never match.
pub fn canonical_prefix(prefix: &str, rules: PathRules) -> Result<(), String> {
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

/// What `normalise` learned that the request header no longer shows.
#[derive(Debug, Default)]
pub struct Normalised {
    /// The path to route on, when it is not the forwarded path (`encoded_slashes: forward`).
    pub match_path: Option<String>,
}

/// Put the request in canonical form, in place: target (origin-form, canonical path, query as
/// it came), `Host` (lower case, no trailing dot, from the absolute-form authority when there is
/// one), header names (underscore rule; `protected` are the headers the gateway sets, whose
/// look-alikes are dropped). Refuses what cannot be made unambiguous.
pub fn normalise(
    req: &mut RequestHeader,
    rules: &EdgeRules,
    protected: &[HeaderName],
) -> Result<Normalised, Reject> {
    let (new_uri, new_host, match_path) = {
        let target = canonical_target(req.raw_path(), rules.path).map_err(Reject::BadRequest)?;
        let new_uri = target.changed().then(|| target.path_and_query.to_string());
        let new_host = canonical_request_host(req, &target)?;
        (new_uri, new_host, target.match_path)
    };
    if let Some(uri) = new_uri {
        let uri =
            http::Uri::try_from(uri).map_err(|_| Reject::BadRequest("invalid request target"))?;
        req.set_uri(uri);
    }
    if let Some(host) = new_host {
        let v = HeaderValue::try_from(host).map_err(|_| Reject::BadRequest("invalid host"))?;
        req.insert_header(HOST, v)
            .map_err(|_| Reject::BadRequest("invalid host"))?;
    }
    header_names(req, rules.underscores, protected)?;
    Ok(Normalised { match_path })
}

/// The `Host` to send upstream when it is not the one the client sent; refuses a missing,
/// repeated or invalid host.
fn canonical_request_host(
    req: &RequestHeader,
    target: &Target<'_>,
) -> Result<Option<String>, Reject> {
    let mut hosts = req.headers.get_all(HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err(Reject::BadRequest("more than one Host header"));
    }
    // RFC 9112 §3.2.2: an absolute-form authority wins over Host. (Pingora has already refused
    // a Host that differs from it.) HTTP/2's :authority arrives as the URI's authority.
    let authority = target
        .authority
        .or_else(|| req.uri.authority().map(|a| a.as_str()));
    let raw = match (authority, first) {
        (Some(a), _) => a,
        (None, Some(h)) => h.to_str().map_err(|_| Reject::BadRequest("invalid host"))?,
        (None, None) if req.version == Version::HTTP_10 || req.version == Version::HTTP_09 => {
            return Ok(None);
        }
        (None, None) => return Err(Reject::BadRequest("Host header required")),
    };
    let host = canonical_host(raw).map_err(Reject::BadRequest)?;
    let same = first.is_some_and(|h| h.as_bytes() == host.header.as_bytes());
    Ok((!same).then(|| host.header.into_owned()))
}

/// Apply the underscore rule, and drop headers that only differ from a protected one by `_`.
fn header_names(
    req: &mut RequestHeader,
    mode: Underscores,
    protected: &[HeaderName],
) -> Result<(), Reject> {
    let mut drop: Vec<HeaderName> = Vec::new();
    for name in req.headers.keys() {
        let n = name.as_str();
        if !n.contains('_') {
            continue;
        }
        match mode {
            Underscores::Reject => {
                return Err(Reject::BadRequest(
                    "header names with underscores are refused",
                ))
            }
            Underscores::Drop => drop.push(name.clone()),
            Underscores::Allow => {
                let looks_protected = protected.iter().any(|p| {
                    let p = p.as_str().as_bytes();
                    p.len() == n.len()
                        && p.iter()
                            .zip(n.bytes())
                            .all(|(a, b)| *a == b || (*a == b'-' && b == b'_'))
                });
                if looks_protected {
                    drop.push(name.clone());
                }
            }
        }
    }
    for name in &drop {
        req.remove_header(name);
    }
    Ok(())
}

/// Remove `Upgrade` (and the `upgrade` token of `Connection`) unless the route allows
/// WebSocket and this is a WebSocket upgrade. Without this, any route would turn into an opaque
/// tunnel after a 101 from the upstream.
pub fn strip_upgrade(req: &mut RequestHeader, websocket_allowed: bool) {
    let Some(up) = req.headers.get(UPGRADE) else {
        return;
    };
    if websocket_allowed && up.as_bytes().eq_ignore_ascii_case(b"websocket") {
        return;
    }
    req.remove_header(&UPGRADE);
    let kept: Option<String> = {
        let tokens: Vec<&str> = req
            .headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("upgrade"))
            .collect();
        (!tokens.is_empty()).then(|| tokens.join(", "))
    };
    req.remove_header(&CONNECTION);
    if let Some(v) = kept.and_then(|k| HeaderValue::try_from(k).ok()) {
        let _ = req.insert_header(CONNECTION, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw_target: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", raw_target, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn protected() -> Vec<HeaderName> {
        vec![HeaderName::from_static("x-user")]
    }

    #[test]
    fn target_and_host_are_rewritten_in_place() {
        let mut r = req(b"//%61pi//x?q=%61", &[("Host", "API.example.com.:8080")]);
        normalise(&mut r, &EdgeRules::default(), &[]).unwrap();
        assert_eq!(r.raw_path(), b"/api/x?q=%61");
        assert_eq!(r.headers[HOST], "api.example.com:8080");

        let mut r = req(b"http://Admin.example.com.//x", &[]);
        normalise(&mut r, &EdgeRules::default(), &[]).unwrap();
        assert_eq!(r.raw_path(), b"/x");
        assert_eq!(r.headers[HOST], "admin.example.com");
    }

    #[test]
    fn host_is_required_on_http11() {
        let mut r = req(b"/x", &[]);
        assert!(normalise(&mut r, &EdgeRules::default(), &[]).is_err());
        let mut r = req(b"/x", &[]);
        r.set_version(Version::HTTP_10);
        assert!(normalise(&mut r, &EdgeRules::default(), &[]).is_ok());
        let mut r = req(b"/x", &[("Host", "a"), ("Host", "a")]);
        assert!(normalise(&mut r, &EdgeRules::default(), &[]).is_err());
        let mut r = req(b"/x", &[("Host", "a b")]);
        assert!(normalise(&mut r, &EdgeRules::default(), &[]).is_err());
    }

    #[test]
    fn underscore_headers() {
        let hs = [
            ("Host", "h"),
            ("X_User", "evil"),
            ("X_Other", "1"),
            ("X-Fine", "2"),
        ];
        let rules = |u| EdgeRules {
            underscores: u,
            ..EdgeRules::default()
        };
        let mut r = req(b"/", &hs);
        normalise(&mut r, &rules(Underscores::Drop), &protected()).unwrap();
        assert!(r.headers.get("x_user").is_none() && r.headers.get("x_other").is_none());
        assert!(r.headers.get("x-fine").is_some());

        let mut r = req(b"/", &hs);
        normalise(&mut r, &rules(Underscores::Allow), &protected()).unwrap();
        assert!(r.headers.get("x_user").is_none());
        assert_eq!(r.headers["x_other"], "1");

        let mut r = req(b"/", &hs);
        assert!(normalise(&mut r, &rules(Underscores::Reject), &protected()).is_err());
    }

    #[test]
    fn upgrade_only_where_allowed() {
        let hs = [
            ("Upgrade", "websocket"),
            ("Connection", "keep-alive, Upgrade"),
        ];
        let mut r = req(b"/", &hs);
        strip_upgrade(&mut r, true);
        assert_eq!(r.headers[UPGRADE], "websocket");
        assert_eq!(r.headers[CONNECTION], "keep-alive, Upgrade");

        let mut r = req(b"/", &hs);
        strip_upgrade(&mut r, false);
        assert!(r.headers.get(UPGRADE).is_none());
        assert_eq!(r.headers[CONNECTION], "keep-alive");

        let mut r = req(
            b"/",
            &[
                ("Upgrade", "h2c"),
                ("Connection", "Upgrade, HTTP2-Settings"),
            ],
        );
        strip_upgrade(&mut r, true);
        assert!(r.headers.get(UPGRADE).is_none());
        assert_eq!(r.headers[CONNECTION], "HTTP2-Settings");

        let mut r = req(b"/", &[("Upgrade", "websocket"), ("Connection", "upgrade")]);
        strip_upgrade(&mut r, false);
        assert!(r.headers.get(CONNECTION).is_none());
    }
}
