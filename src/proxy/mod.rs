//! The Pingora side: `Gateway` implements `ProxyHttp`, one thin call per phase.

use crate::auth;
use crate::error::Reject;
use crate::limit::{clock_nanos, LimitKey, RateLimiter};
use crate::policy::routes::has_dot_segments;
use crate::policy::{Policy, Route};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::{ProxyHttp, Session};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How long to wait for a TCP connection to a peer before trying another.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The proxy. Holds the current policy; each request takes one snapshot of it.
pub struct Gateway {
    pub policy: Arc<ArcSwap<Policy>>,
}

/// Per-request state.
#[derive(Default)]
pub struct Ctx {
    /// The policy snapshot this request uses from start to end.
    pub policy: Option<Arc<Policy>>,
    pub route: Option<Arc<Route>>,
    /// Headers to set upstream from the verified token.
    pub forward: Vec<(HeaderName, HeaderValue)>,
    /// The peer chosen last, and those that refused a connection.
    pub peer: Option<SocketAddr>,
    pub failed: Vec<SocketAddr>,
}

impl Gateway {
    pub fn new(policy: Arc<ArcSwap<Policy>>) -> Self {
        Gateway { policy }
    }
}

/// The request's host, without port, from `Host` or the URI authority.
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    let raw = match req.headers.get(http::header::HOST) {
        Some(h) => h.to_str().ok()?,
        None => req.uri.host()?,
    };
    if raw.starts_with('[') {
        // IPv6 literal: [::1]:8080
        return raw.find(']').map(|i| &raw[..=i]);
    }
    Some(raw.rsplit_once(':').map_or(raw, |(h, _)| h))
}

/// Take a token from a limiter, or say why not.
fn admit(limiter: &RateLimiter, key: &[u8]) -> std::result::Result<(), Reject> {
    let d = limiter.check(key, clock_nanos());
    if d.allowed {
        return Ok(());
    }
    Err(Reject::TooManyRequests {
        limit: limiter.burst,
        remaining: d.remaining,
        reset: d.reset.ceil() as u64,
        retry_after: (d.retry_after.ceil() as u64).max(1),
    })
}

/// The client IP's bytes (4 or 16), or nothing if unknown.
fn ip_key(session: &Session) -> Vec<u8> {
    match session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
    {
        Some(IpAddr::V4(ip)) => ip.octets().to_vec(),
        Some(IpAddr::V6(ip)) => ip.octets().to_vec(),
        None => Vec::new(),
    }
}

/// A header's value as a key; a missing header is the empty key (one shared bucket).
fn limit_key_header(req: &RequestHeader, name: &HeaderName) -> Vec<u8> {
    req.headers
        .get(name)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default()
}

/// A claim's value as a key: strings as they are, other values as JSON; a missing claim is the
/// empty key (tokens without it share one bucket rather than escaping the limit).
fn claim_key(claims: &auth::Claims, name: &str) -> Vec<u8> {
    match claims.get(name) {
        Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
        Some(v) => v.to_string().into_bytes(),
        None => Vec::new(),
    }
}

async fn respond(session: &mut Session, reject: &Reject) -> Result<bool> {
    let (header, body) = reject.response();
    // A refused request may carry a body we will not read: do not reuse the connection then.
    let has_body = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || session
            .req_header()
            .headers
            .contains_key(http::header::TRANSFER_ENCODING);
    if has_body {
        session.set_keepalive(None);
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let policy = self.policy.load_full();
        let req = session.req_header();
        let decision = if has_dot_segments(req.uri.path()) {
            Err(Reject::BadRequest(
                "dot segments are not allowed in the path",
            ))
        } else {
            policy
                .routes
                .find(request_host(req), req.uri.path(), &req.method)
                .cloned()
        };
        let route = match decision {
            Ok(r) => r,
            Err(reject) => {
                ctx.policy = Some(policy);
                return respond(session, &reject).await;
            }
        };
        // Limits keyed on the client: before any verification work.
        for limiter in &route.pre_auth_limits {
            let key = match &limiter.key {
                LimitKey::Header(h) => limit_key_header(session.req_header(), h),
                _ => ip_key(session),
            };
            if let Err(reject) = admit(limiter, &key) {
                ctx.policy = Some(policy);
                ctx.route = Some(route);
                return respond(session, &reject).await;
            }
        }
        if !route.auth.is_empty() {
            let checked = auth::check(
                &route.auth,
                session.req_header(),
                auth::verify::now(),
                policy.revocation.as_deref(),
            );
            // Limits keyed on a claim: only for verified tokens, so junk never spends a
            // client's budget.
            let checked = checked.and_then(|passed| {
                for limiter in &route.post_auth_limits {
                    if let LimitKey::Claim(c) = &limiter.key {
                        admit(limiter, &claim_key(&passed.claims, c))?;
                    }
                }
                Ok(passed)
            });
            match checked {
                Ok(passed) => ctx.forward = passed.forward,
                Err(reject) => {
                    ctx.policy = Some(policy);
                    ctx.route = Some(route);
                    return respond(session, &reject).await;
                }
            }
        }
        ctx.policy = Some(policy);
        ctx.route = Some(route);
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route chosen"))?;
        let addr = route.upstream.select(&ctx.failed).ok_or_else(|| {
            Error::explain(
                ErrorType::HTTPStatus(502),
                format!("no peer of upstream {} is available", route.upstream.name),
            )
        })?;
        ctx.peer = Some(addr);
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(p) = ctx.peer.take() {
            ctx.failed.push(p);
        }
        // Nothing was sent: any method may go to another peer, within the pool's try budget.
        let budget = ctx.route.as_ref().map_or(1, |r| r.upstream.max_tries);
        if ctx.failed.len() < budget {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(policy) = &ctx.policy {
            for h in &policy.strip_headers {
                upstream_request.remove_header(h);
            }
        }
        for (h, v) in &ctx.forward {
            upstream_request.insert_header(h.clone(), v.clone())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_without_port() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(request_host(&r), None);
        r.insert_header("host", "api.example.com:8080").unwrap();
        assert_eq!(request_host(&r), Some("api.example.com"));
        r.insert_header("host", "[::1]:8080").unwrap();
        assert_eq!(request_host(&r), Some("[::1]"));
        r.insert_header("host", "plain").unwrap();
        assert_eq!(request_host(&r), Some("plain"));
    }
}
