//! The Pingora side: `Gateway` implements `ProxyHttp`, one thin call per phase.

use crate::auth;
use crate::config::UpstreamProtocol;
use crate::edge;
use crate::error::Reject;
use crate::explain::Trace;
use crate::limit::{clock_nanos, LimitKey, RateLimiter};
use crate::observe::access_log::{now_rfc3339, ClientCertInfo, JwtInfo, Line};
use crate::observe::metrics::{metrics, no_route_metrics};
use crate::policy::{Policy, Route};
use crate::reload::Live;
use crate::upstream::{Choice, HashKey, Pool};
use http::HeaderName;
use pingora_core::protocols::http::HttpTask;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::{ProxyHttp, Session};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The proxy. Holds the live policy; each request takes one snapshot of it.
pub struct Gateway {
    pub live: Arc<Live>,
}

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Requests between `new_ctx` and the end of `logging` (or an abort).
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::SeqCst)
}

/// Per-request state.
pub struct Ctx {
    pub start: Instant,
    /// The policy snapshot this request uses from start to end.
    pub policy: Option<Arc<Policy>>,
    pub route: Option<Arc<Route>>,
    /// The pool the request goes to (the route's, or the one its token picked).
    pub pool: Option<Arc<Pool>>,
    /// The verified token, whose forwarded headers are set upstream.
    pub token: Option<Arc<crate::auth::cache::VerifiedToken>>,
    /// The peer chosen last, and those that refused a connection.
    pub peer: Option<SocketAddr>,
    pub failed: Vec<SocketAddr>,
    /// When the current peer was chosen (for the upstream latency histogram).
    pub upstream_start: Option<Instant>,
    /// The auth outcome on a protected route.
    pub auth_result: Option<&'static str>,
    /// Algorithm and key id of the verified token.
    pub jwt: Option<(&'static str, Option<String>)>,
    /// Allow-listed claims of the verified token, for the access log.
    pub log_claims: serde_json::Map<String, serde_json::Value>,
    /// The access log in force when the request started.
    pub access_log: Option<Arc<crate::observe::AccessLog>>,
    /// For a pool hashing on a claim: the claim's value.
    pub hash_key: Vec<u8>,
    /// The client's address (after `trusted_proxies`), the connection's peer, and whether
    /// that peer is a trusted proxy.
    pub client_ip: Option<IpAddr>,
    pub peer_ip: Option<IpAddr>,
    pub trusted_peer: bool,
    /// This request's id (sent upstream, returned on every answer, logged).
    pub request_id: Option<http::HeaderValue>,
    /// The W3C trace id of an incoming `traceparent`, for the access log.
    pub trace_id: Option<String>,
    /// The `Origin` of a cross-origin request on a route with `cors`.
    pub cors_origin: Option<Vec<u8>>,
    /// The route's `request_headers`, rendered at admission.
    pub set_headers: Vec<(HeaderName, http::HeaderValue)>,
    /// Request body bytes seen so far (for `max_body_bytes` on bodies of unknown length).
    pub body_bytes: u64,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ctx {
    /// A request's state before anything is known of it.
    pub fn new() -> Ctx {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        Ctx {
            access_log: None,
            hash_key: Vec::new(),
            start: Instant::now(),
            policy: None,
            route: None,
            pool: None,
            token: None,
            peer: None,
            failed: Vec::new(),
            upstream_start: None,
            auth_result: None,
            jwt: None,
            log_claims: serde_json::Map::new(),
            client_ip: None,
            peer_ip: None,
            trusted_peer: false,
            request_id: None,
            trace_id: None,
            cors_origin: None,
            set_headers: Vec::new(),
            body_bytes: 0,
        }
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx::new()
    }
}

impl Gateway {
    pub fn new(live: Arc<Live>) -> Self {
        Gateway { live }
    }
}

/// The request's host, without port, from `Host` or the URI authority. After `edge::normalise`
/// this is the canonical host (lower case, no trailing dot).
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

/// The verified client certificate of this connection, if any (mTLS).
fn client_cert(session: &Session) -> Option<&crate::tls::ClientCert> {
    let ssl = session.digest()?.ssl_digest.as_deref()?;
    ssl.extension.get::<crate::tls::ClientCert>()
}

/// Take a token from a limiter, or say (and count) why not.
async fn take(limiter: &RateLimiter, key: &[u8]) -> std::result::Result<(), Reject> {
    let d = match &limiter.shared {
        None => limiter.check(key, clock_nanos()),
        // `sync:`: the local bucket decides; Redis being away only matters to allow and deny.
        Some(shared) if shared.sync.is_some() => match limiter.on_error {
            _ if shared.redis.is_up() => limiter.check(key, clock_nanos()),
            crate::cluster::OnError::Local => limiter.check(key, clock_nanos()),
            crate::cluster::OnError::Allow => return Ok(()),
            crate::cluster::OnError::Deny => return Err(Reject::LimitUnavailable),
        },
        // Boxed: the Redis call's state stays off the request future of local limits.
        Some(shared) => match Box::pin(shared.check(key)).await {
            Ok(d) => d,
            Err(_) => match limiter.on_error {
                crate::cluster::OnError::Local => limiter.check(key, clock_nanos()),
                crate::cluster::OnError::Allow => return Ok(()),
                crate::cluster::OnError::Deny => return Err(Reject::LimitUnavailable),
            },
        },
    };
    if d.allowed {
        return Ok(());
    }
    limiter.limited.inc();
    Err(Reject::TooManyRequests {
        limit: limiter.burst,
        remaining: d.remaining,
        reset: d.reset.ceil() as u64,
        retry_after: (d.retry_after.ceil() as u64).max(1),
    })
}

/// The client IP's bytes (4 or 16), or nothing if unknown.
fn ip_key(ip: Option<IpAddr>) -> Vec<u8> {
    match ip {
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
fn claim_key(claims: &auth::Claims, path: &auth::ClaimPath) -> Vec<u8> {
    match claims.at(path) {
        Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
        Some(v) => v.to_string().into_bytes(),
        None => Vec::new(),
    }
}

/// A trailers-only gRPC answer: one header block that ends the stream (Pingora's
/// `write_response_header` would send the end in an empty DATA frame, which gRPC clients
/// refuse).
async fn write_grpc(session: &mut Session, mut h: pingora_http::ResponseHeader) -> Result<()> {
    h.insert_header(http::header::CONTENT_LENGTH, "0")?;
    session
        .downstream_session
        .response_duplex_vec(vec![HttpTask::Header(Box::new(h), true)])
        .await?;
    Ok(())
}

/// `server.limits` that can be judged from the header: its own size, a declared body length.
fn header_limits(req: &RequestHeader, limits: &edge::Limits) -> std::result::Result<(), Reject> {
    if edge::header_bytes(req) > limits.max_header_bytes {
        return Err(Reject::HeaderTooLarge);
    }
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        return Err(Reject::PayloadTooLarge);
    }
    Ok(())
}

/// What the gateway does with a request, decided on its header alone.
pub enum Decision {
    /// Send it upstream (`ctx` holds the route, pool, token and headers to set).
    Upstream,
    /// Answer it here, without a body: a CORS preflight (boxed: rare, and large).
    Answer(Box<pingora_http::ResponseHeader>),
}

/// The one decision on a request: header limits, the canonical target and host, CORS
/// preflight, route, limits, token, pool. `run` calls it with `()` as the trace and `explain`
/// with a `Report`; nothing else decides. `cert_sha256`: the verified client certificate's
/// digest (mTLS). Fills `ctx` (route, pool, token, log fields) as it goes.
pub async fn decide<T: Trace>(
    policy: &Policy,
    req: &mut RequestHeader,
    cert_sha256: Option<&[u8]>,
    ctx: &mut Ctx,
    trace: &mut T,
) -> std::result::Result<Decision, Reject> {
    // The limits the header alone decides; then the canonical target and host, on which
    // everything after decides and which the upstream is sent.
    header_limits(req, &policy.edge.limits)?;
    let n = edge::normalise(req, &policy.edge, &policy.strip_headers)?;
    trace.note(0, || {
        format!(
            "target: {} {} (host {})",
            req.method,
            n.match_path.as_deref().unwrap_or(req.uri.path()),
            request_host(req).unwrap_or("-")
        )
    });
    if let Some(answer) = preflight(req, ctx, policy, n.match_path.as_deref()) {
        trace.note(0, || "CORS preflight: answered by the gateway".to_string());
        return Ok(Decision::Answer(Box::new(answer)));
    }
    admit(
        policy,
        req,
        n.match_path.as_deref(),
        cert_sha256,
        ctx,
        trace,
    )
    .await?;
    if let Some(route) = &ctx.route {
        edge::strip_upgrade(req, route.websocket);
    }
    Ok(Decision::Upstream)
}

/// Who the client is and which request this is: client IP (after `trusted_proxies`), request
/// id, trace id. Before anything can refuse the request, so every answer carries the id.
fn identify(session: &Session, ctx: &mut Ctx, rules: &edge::EdgeRules) {
    let req = session.req_header();
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    ctx.peer_ip = peer;
    ctx.trusted_peer = peer.is_some_and(|p| rules.trusted.contains(p));
    ctx.client_ip = peer.map(|p| {
        if ctx.trusted_peer {
            let xff = req
                .headers
                .get_all(&edge::forward::XFF.0)
                .iter()
                .map(|v| v.as_bytes());
            rules.trusted.client_ip(p, xff)
        } else {
            p
        }
    });
    let rid = &rules.request_id;
    ctx.request_id = Some(rid.for_request(req.headers.get(&rid.header)));
    ctx.trace_id = req
        .headers
        .get(&edge::request_id::TRACEPARENT)
        .and_then(|t| edge::request_id::trace_id(t.as_bytes()))
        .map(str::to_owned);
}

/// A CORS preflight on a route with `cors`: answered here, before auth (browsers never send
/// the token on one), never sent upstream. The route is the one the request it announces
/// (`Access-Control-Request-Method`) would take.
fn preflight(
    req: &RequestHeader,
    ctx: &mut Ctx,
    policy: &Policy,
    match_path: Option<&str>,
) -> Option<pingora_http::ResponseHeader> {
    let edge::cors::Ask::Preflight { origin, method } = edge::cors::ask(req) else {
        return None;
    };
    let path = match_path.unwrap_or(req.uri.path());
    let host = request_host(req);
    let route = match policy.routes.find(host, path, &method) {
        Ok(r) => r,
        Err(_) => policy.routes.find_place(host, path)?,
    };
    let answer = route.cors.as_ref()?.preflight(origin, &method);
    ctx.route = Some(route.clone());
    Some(answer)
}

/// Write an answer of the gateway's own (no body), decorated like every other.
async fn answer(
    session: &mut Session,
    ctx: &Ctx,
    mut header: pingora_http::ResponseHeader,
) -> Result<bool> {
    header.insert_header(http::header::CONTENT_LENGTH, "0")?;
    decoration(session, ctx).apply(&mut header);
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(None, true).await?;
    Ok(true)
}

/// What every answer to this request gets: request id, CORS, the route's response headers.
fn decoration<'a>(session: &'a Session, ctx: &'a Ctx) -> edge::forward::Decoration<'a> {
    let policy = ctx.policy.as_deref();
    let route = ctx.route.as_deref();
    edge::forward::Decoration {
        request_id: policy
            .zip(ctx.request_id.as_ref())
            .map(|(p, id)| (&p.edge.request_id.header, id)),
        cors: route
            .and_then(|r| r.cors.as_ref())
            .zip(ctx.cors_origin.as_deref()),
        rules: route
            .filter(|r| !r.response_headers.is_empty())
            .map(|r| (&r.response_headers, values(session.req_header(), ctx))),
    }
}

fn values<'a>(req: &'a RequestHeader, ctx: &'a Ctx) -> edge::headers::Values<'a> {
    edge::headers::Values {
        claims: ctx.token.as_deref().map(|t| &t.claims),
        req,
        client_ip: ctx.client_ip,
        request_id: ctx.request_id.as_ref(),
    }
}

async fn respond(session: &mut Session, ctx: &Ctx, reject: &Reject) -> Result<bool> {
    if crate::error::is_grpc(session.req_header()) {
        // Trailers-only: a gRPC client reads grpc-status, not the HTTP status.
        session.set_keepalive(None);
        let mut h = reject.grpc();
        decoration(session, ctx).apply(&mut h);
        write_grpc(session, h).await?;
        return Ok(true);
    }
    let (mut header, body) = reject.response();
    decoration(session, ctx).apply(&mut header);
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

impl ProxyHttp for Gateway {
    type CTX = Ctx;

    /// No downstream modules. Pingora's default adds a response-compression module (disabled,
    /// level 0) that still runs on every request; portcullis never compresses, so it is left
    /// out. Small: `benches/load/allocs.sh` 76 → 71 allocations per proxied request,
    /// `benches/load/instructions.sh` within 0.1%.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Pipelined HTTP/1.1 requests are answered in order (RFC 9112 §9.3.2), one after the
        // other, as nginx does; Pingora's default closes the connection after the first.
        session.set_pipelining_enabled(true);
        let policy = self.live.policy.load_full();
        ctx.policy = Some(policy.clone());
        ctx.access_log = self.live.access_log.load_full();
        // Who and which request first, so that every answer carries the request id; then the
        // limits the header alone decides; then the canonical target and host, on which
        // everything after decides and which the upstream is sent.
        identify(session, ctx, &policy.edge);
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(policy.edge.limits.idle_timeout.as_secs()));
        }
        // The certificate's digest outlives the borrow of the request (one reference count, on
        // TLS connections only).
        let ssl = session.digest().and_then(|d| d.ssl_digest.clone());
        let cert = ssl.as_deref().map(|s| s.cert_digest.as_slice());
        match decide(&policy, session.req_header_mut(), cert, ctx, &mut ()).await {
            Ok(Decision::Upstream) => Ok(false),
            Ok(Decision::Answer(header)) => answer(session, ctx, *header).await,
            Err(reject) => respond(session, ctx, &reject).await,
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let pool = ctx
            .pool
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream chosen"))?;
        let key: Vec<u8> = match &pool.hash_key {
            None => Vec::new(),
            Some(HashKey::Claim(_)) => std::mem::take(&mut ctx.hash_key),
            Some(HashKey::Header(h)) => limit_key_header(session.req_header(), h),
            Some(HashKey::Ip) => ip_key(ctx.client_ip),
        };
        let chosen = pool.select(&key, &ctx.failed);
        if matches!(pool.hash_key, Some(HashKey::Claim(_))) {
            ctx.hash_key = key; // kept for a retry
        }
        let addr = chosen.ok_or_else(|| {
            metrics()
                .upstream_errors
                .with_label_values(&[&pool.name, "no_peer"])
                .inc();
            Error::explain(
                ErrorType::HTTPStatus(502),
                format!("no peer of upstream {} is available", pool.name),
            )
        })?;
        ctx.peer = Some(addr);
        ctx.upstream_start = Some(Instant::now());
        let settings = &pool.settings;
        let mut peer = match &settings.tls {
            None => HttpPeer::new(addr, false, String::new()),
            Some(tls) => {
                let mut p = HttpPeer::new(addr, true, tls.sni.clone());
                p.options.verify_cert = tls.verify;
                p.options.verify_hostname = tls.verify;
                p
            }
        };
        peer.options.connection_timeout = Some(settings.connect_timeout);
        peer.options.read_timeout = Some(settings.read_timeout);
        peer.options.h1_normalize_header_case = ctx
            .policy
            .as_ref()
            .is_some_and(|p| !p.server.preserve_header_case);
        if settings.protocol != UpstreamProtocol::H1 {
            // HTTP/2 only (ALPN h2 on TLS, prior knowledge on plaintext), multiplexed.
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = settings.max_streams;
        }
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
        if let Some(pool) = &ctx.pool {
            let kind = match e.etype() {
                ErrorType::ConnectTimedout => "connect_timeout",
                ErrorType::ConnectRefused => "connect_refused",
                _ => "connect_error",
            };
            metrics()
                .upstream_errors
                .with_label_values(&[&pool.name, kind])
                .inc();
        }
        // Nothing was sent: any method may go to another peer, within the pool's try budget.
        let budget = ctx.pool.as_ref().map_or(1, |p| p.settings.tries);
        if ctx.failed.len() < budget {
            e.set_retry(true);
        }
        e
    }

    /// `max_body_bytes` for bodies whose length was not declared (chunked, h2): counted as
    /// they stream through, never buffered; crossing the limit ends the request with 413.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(b), Some(p)) = (body.as_ref(), ctx.policy.as_ref()) {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > p.edge.limits.max_body_bytes {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body larger than server.limits.max_body_bytes",
                ));
            }
        }
        Ok(())
    }

    /// Pingora's error answers, except to gRPC clients: a trailers-only answer with the
    /// gRPC status for the HTTP one (502/503/504 → UNAVAILABLE).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Ctx,
    ) -> pingora_proxy::FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                pingora_core::ErrorSource::Upstream => 502,
                pingora_core::ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                _ => 500,
            },
        };
        let grpc = crate::error::is_grpc(session.req_header());
        if code > 0 && grpc && session.response_written().is_none() {
            let message = match code {
                413 => "request body too large",
                502..=504 => "upstream unavailable",
                _ => "request failed",
            };
            let mut h = crate::error::grpc_response(code, message);
            decoration(session, ctx).apply(&mut h);
            let _ = write_grpc(session, h).await;
        } else if code > 0 {
            let mut h = pingora_core::protocols::http::error_resp::gen_error_response(code);
            decoration(session, ctx).apply(&mut h);
            let _ = session
                .downstream_session
                .write_error_response(h, bytes::Bytes::new())
                .await;
        }
        pingora_proxy::FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut pingora_http::ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(t), Some(pool)) = (ctx.upstream_start, &ctx.pool) {
            pool.duration.observe(t.elapsed().as_secs_f64());
        }
        decoration(session, ctx).apply(upstream_response);
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let m = metrics();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let seconds = ctx.start.elapsed().as_secs_f64();
        match &ctx.route {
            Some(r) => r.metrics.observe(status, seconds),
            None => no_route_metrics().observe(status, seconds),
        }
        if let (Some(e), Some(pool)) = (e, &ctx.pool) {
            let kind = match e.etype() {
                // Connection failures were counted when they happened.
                ErrorType::ConnectTimedout
                | ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectError
                | ErrorType::HTTPStatus(_) => None,
                ErrorType::ReadTimedout => Some("read_timeout"),
                ErrorType::WriteTimedout => Some("write_timeout"),
                ErrorType::ConnectionClosed => Some("closed"),
                _ => Some("other"),
            };
            if let (Some(kind), pingora_core::ErrorSource::Upstream) = (kind, e.esource()) {
                m.upstream_errors
                    .with_label_values(&[&pool.name, kind])
                    .inc();
            }
        }
        self.log_request(session, ctx, status);
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(policy) = &ctx.policy {
            for h in &policy.strip_headers {
                upstream_request.remove_header(h);
            }
        }
        // Room for what is added below (claim headers, up to four forwarded fields, the request
        // id, the route's headers, a Host), so each of the request's maps grows once at most
        // rather than once per field as it fills.
        upstream_request.reserve(
            ctx.token.as_ref().map_or(0, |t| t.forward.len()) + 4 + 1 + ctx.set_headers.len() + 1,
        );
        if let Some(token) = &ctx.token {
            for (h, v) in &token.forward {
                upstream_request.insert_header(h.clone(), v.clone())?;
            }
        }
        edge::forward::forwarded(
            upstream_request,
            &edge::forward::Origin {
                peer: ctx.peer_ip.map(|ip| {
                    let made = edge::conn::Guarded::of(session).map(|c| c.peer_header(ip));
                    (ip, made.unwrap_or_else(|| edge::forward::ip_header(ip)))
                }),
                client: ctx.client_ip,
                trusted_peer: ctx.trusted_peer,
                tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
            },
        )?;
        if let (Some(p), Some(id)) = (&ctx.policy, &ctx.request_id) {
            upstream_request.insert_header(p.edge.request_id.header.clone(), id.clone())?;
        }
        if let Some(route) = &ctx.route {
            // A header the route sets never comes from the client, even when its template has
            // nothing to set it from this time.
            let rules = &route.request_headers;
            for h in rules.remove.iter().chain(rules.set.iter().map(|(h, _)| h)) {
                upstream_request.remove_header(h);
            }
            for (h, v) in &ctx.set_headers {
                upstream_request.insert_header(h.clone(), v.clone())?;
            }
            if let Some(rw) = &route.rewrite {
                let pq = upstream_request
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str());
                let target = edge::forward::rewritten(pq, &route.prefix, rw);
                let uri = http::Uri::try_from(target)
                    .map_err(|e| Error::because(ErrorType::InternalError, "rewrite", e))?;
                upstream_request.set_uri(uri);
            }
        }
        // HTTP/1.0 may come without a Host (and is routed without one); the upstream is spoken
        // to in HTTP/1.1, which needs one: the peer's address, as nginx's `$proxy_host`.
        if !upstream_request.headers.contains_key(http::header::HOST) {
            if let Some(peer) = ctx.peer {
                upstream_request.insert_header(http::header::HOST, peer.to_string())?;
            }
        }
        Ok(())
    }
}

/// A limit the request is subject to: spent by the proxy, named by `explain`.
async fn limit<T: Trace>(
    limiter: &RateLimiter,
    key: &[u8],
    trace: &mut T,
) -> std::result::Result<(), Reject> {
    trace.note(1, || {
        let shown = match (
            &limiter.key,
            <[u8; 4]>::try_from(key),
            <[u8; 16]>::try_from(key),
        ) {
            (LimitKey::Ip, Ok(v4), _) => IpAddr::from(v4).to_string(),
            (LimitKey::Ip, _, Ok(v6)) => IpAddr::from(v6).to_string(),
            _ => format!("{:?}", String::from_utf8_lossy(key)),
        };
        format!(
            "rate limit {}: {}/s, burst {}, key {shown}{}",
            limiter.name,
            limiter.rate,
            limiter.burst,
            if T::LIVE {
                ""
            } else {
                " (not spent by explain)"
            }
        )
    });
    if T::LIVE {
        take(limiter, key).await
    } else {
        Ok(())
    }
}

/// Route, client limits, token, claim limits, pool: everything that decides whether a request
/// goes upstream, on the request `edge::normalise` made canonical (`match_path`: the path to
/// route on when it is not the forwarded one). Fills `ctx` (route, pool, token, log fields).
async fn admit<T: Trace>(
    policy: &Policy,
    req: &RequestHeader,
    match_path: Option<&str>,
    cert_sha256: Option<&[u8]>,
    ctx: &mut Ctx,
    trace: &mut T,
) -> std::result::Result<(), Reject> {
    let path = match_path.unwrap_or(req.uri.path());
    let route = match policy.routes.find(request_host(req), path, &req.method) {
        Ok(r) => r.clone(),
        Err(reject) => {
            trace.note(0, || format!("route: none ({})", reject.status()));
            return Err(reject);
        }
    };
    trace.note(0, || format!("route: {}", route.id));
    ctx.route = Some(route.clone());
    if route.cors.is_some() {
        if let edge::cors::Ask::Actual { origin } = edge::cors::ask(req) {
            ctx.cors_origin = Some(origin.to_vec());
        }
    }
    // Limits keyed on the client: before any verification work.
    for limiter in &route.pre_auth_limits {
        let key = match &limiter.key {
            LimitKey::Header(h) => limit_key_header(req, h),
            _ => ip_key(ctx.client_ip),
        };
        limit(limiter, &key, trace).await?;
    }
    if route.auth.is_empty() {
        trace.note(0, || "auth: none (public route)".to_string());
        ctx.pool = route.upstream.fixed().cloned();
        return render_headers(req, ctx, &route);
    }
    let (which, checked) = auth::check_refetching(
        &route.auth,
        req,
        ctx.client_ip,
        policy.revocation.as_deref(),
        trace,
    )
    .await;
    let checked = match checked {
        Ok(p) if route.auth[which].require_certificate_binding => {
            let bound = auth::check_binding(&p.token.claims, cert_sha256);
            trace.note(1, || {
                format!("certificate binding (cnf x5t#S256): {bound:?}")
            });
            match bound {
                Ok(()) => Ok(p),
                Err(error) => Err(Reject::Unauthorized {
                    realm: route.auth[which].realm.clone(),
                    error,
                }),
            }
        }
        other => other,
    };
    let result = match &checked {
        Ok(_) => "ok",
        Err(r) => r.auth_result(),
    };
    ctx.auth_result = Some(result);
    if T::LIVE {
        route.auth[which].metrics.count(result);
    }
    let passed = checked?;
    let token = &passed.token;
    if let Some(log) = &ctx.access_log {
        ctx.jwt = Some((token.alg.name(), token.kid.clone()));
        for c in &log.claims {
            if let Some(v) = token.claims.at(c) {
                ctx.log_claims.insert(c.as_str().to_owned(), v.clone());
            }
        }
    }
    // Limits keyed on a claim: only for verified tokens, so junk never spends a client's
    // budget.
    for limiter in &route.post_auth_limits {
        if let LimitKey::Claim(c) = &limiter.key {
            limit(limiter, &claim_key(&token.claims, c), trace).await?;
        }
    }
    let pool = match &route.upstream {
        Choice::Fixed(p) => p.clone(),
        Choice::ByClaim(by) => {
            let picked = by.pick(&token.claims);
            trace.note(0, || {
                let value = token
                    .claims
                    .at(&by.claim)
                    .map_or_else(|| "missing".to_string(), |v| v.to_string());
                let pool = picked.map_or("none, and no default: 403", |p| p.name.as_str());
                format!("upstream_by {} = {value} -> {pool}", by.claim.as_str())
            });
            match picked {
                Some(p) => p.clone(),
                None => {
                    return Err(Reject::Forbidden {
                        realm: route.auth[which].realm.clone(),
                        scope: None,
                        why: crate::error::Why::NoUpstream,
                    })
                }
            }
        }
    };
    if let Some(HashKey::Claim(c)) = &pool.hash_key {
        ctx.hash_key = claim_key(&token.claims, c);
    }
    ctx.pool = Some(pool);
    ctx.token = Some(passed.token);
    render_headers(req, ctx, &route)
}

/// The route's `request_headers`, made now so that a value that cannot be a header refuses the
/// request before it goes anywhere.
fn render_headers(
    req: &RequestHeader,
    ctx: &mut Ctx,
    route: &Route,
) -> std::result::Result<(), Reject> {
    if route.request_headers.set.is_empty() {
        return Ok(());
    }
    match route.request_headers.render(&values(req, ctx)) {
        Ok(set) => {
            ctx.set_headers = set;
            Ok(())
        }
        Err(_) => Err(match route.auth.first() {
            Some(v) => Reject::Unauthorized {
                realm: v.realm.clone(),
                error: crate::error::AuthError::ClaimNotForwardable,
            },
            None => Reject::BadRequest("a header value cannot be made from this request"),
        }),
    }
}

impl Gateway {
    fn log_request(&self, session: &Session, ctx: &Ctx, status: u16) {
        let Some(log) = &ctx.access_log else { return };
        let req = session.req_header();
        log.log(&Line {
            time: now_rfc3339(),
            remote_addr: session.client_addr().map(|a| a.to_string()),
            client_ip: ctx.client_ip.map(|ip| ip.to_string()),
            request_id: ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
            trace_id: ctx.trace_id.as_deref(),
            method: req.method.as_str(),
            path: req.uri.path(),
            status,
            route: ctx.route.as_ref().map(|r| r.id.as_str()),
            upstream: ctx.peer.map(|p| p.to_string()),
            duration_ms: ctx.start.elapsed().as_secs_f64() * 1000.0,
            bytes_sent: session.body_bytes_sent(),
            jwt: ctx.jwt.as_ref().map(|(alg, kid)| JwtInfo {
                alg,
                kid: kid.as_deref(),
            }),
            claims: ctx.log_claims.clone(),
            auth_result: ctx.auth_result,
            client_cert: client_cert(session).map(|c| ClientCertInfo {
                subject: &c.subject,
                sha256: {
                    use base64::Engine;
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&c.sha256)
                },
            }),
        });
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
    /// Patch 8: a pooled upstream connection is matched against the peer address its socket
    /// digest read once, not with a `getpeername` per reuse — and a different peer still does
    /// not match it.
    #[test]
    fn pooled_connections_match_by_their_cached_peer_address() {
        use pingora_core::protocols::{l4::stream::Stream as L4, SocketDigest};
        use pingora_core::upstreams::peer::Peer;
        use std::os::fd::AsRawFd;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let fd = tcp.as_raw_fd();
            let mut stream: pingora_core::protocols::Stream = Box::new(L4::from(tcp));
            stream.set_socket_digest(SocketDigest::from_raw_fd(fd));
            let digest = stream.get_socket_digest().unwrap();
            assert!(digest.peer_addr.get().is_none());

            assert!(HttpPeer::new(addr, false, String::new()).matches_stream(&stream));
            assert!(digest.peer_addr.get().is_some(), "read once, then kept");
            let mut other_port = addr;
            other_port.set_port(if addr.port() == 1 { 2 } else { addr.port() - 1 });
            assert!(!HttpPeer::new(other_port, false, String::new()).matches_stream(&stream));
            let other_host: std::net::SocketAddr =
                format!("127.0.0.2:{}", addr.port()).parse().unwrap();
            assert!(!HttpPeer::new(other_host, false, String::new()).matches_stream(&stream));
        });
    }
}
