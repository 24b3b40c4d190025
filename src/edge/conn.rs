//! Each client connection before Pingora's HTTP layer sees it: the cap on open connections
//! (`server.limits.max_connections`), the PROXY protocol header on plain listeners, and the
//! header deadline (`server.limits.header_timeout`).
//!
//! [`Front`] is the service's app: it wraps the HTTP app (the proxy, or the redirect) and runs
//! the HTTP/1.1 keep-alive loop itself, so that it can re-arm the deadline before each request.
//! [`Guarded`] wraps the stream: while a request's header is being read, reads fail once the
//! deadline passes; it looks for the blank line that ends the header to know when that is.
//! Pingora's own timeout on header reads is per read (60 s), so a client sending a byte a
//! minute would otherwise hold a connection for as long as it likes.

use super::client_ip::Trusted;
use super::proxy_protocol;
use async_trait::async_trait;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora_core::listeners::PreTlsProcess;
use pingora_core::protocols::http::v2::server as h2_server;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    Digest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigests, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use std::io;
use std::os::unix::io::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why a connection was closed before it could carry a request (the `reason` label of
/// `portcullis_connections_dropped_total`).
#[derive(Debug, Clone, Copy)]
pub enum Dropped {
    MaxConnections,
    ProxyProtocol,
    HeaderTimeout,
}

impl Dropped {
    pub const ALL: [Dropped; 3] = [
        Dropped::MaxConnections,
        Dropped::ProxyProtocol,
        Dropped::HeaderTimeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Dropped::MaxConnections => "max_connections",
            Dropped::ProxyProtocol => "proxy_protocol",
            Dropped::HeaderTimeout => "header_timeout",
        }
    }

    pub fn count(self) {
        crate::observe::metrics::metrics().connections_dropped[self as usize].inc();
    }
}

/// The open client connections of all proxy and redirect listeners, against one cap.
#[derive(Debug)]
pub struct Slots {
    open: AtomicUsize,
    max: usize,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            open: AtomicUsize::new(0),
            max,
        })
    }

    pub fn full(&self) -> bool {
        self.open.load(Ordering::Relaxed) >= self.max
    }

    /// A slot for one more connection, or `None` at the cap.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        let mut n = self.open.load(Ordering::Relaxed);
        loop {
            if n >= self.max {
                return None;
            }
            match self
                .open
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        crate::observe::metrics::metrics().connections_open.inc();
        Some(Slot(self.clone()))
    }
}

/// Held for as long as the connection lives (it travels with the stream).
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        crate::observe::metrics::metrics().connections_open.dec();
    }
}

/// What `Front` applies to each connection of its service.
#[derive(Debug, Clone)]
pub struct ConnRules {
    pub slots: Arc<Slots>,
    /// Read a PROXY header first on plain connections (TLS ones had theirs read before the
    /// handshake), believed only from these peers.
    pub proxy_protocol: Option<Trusted>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// The service app: connection rules around an HTTP app.
pub struct Front<A> {
    pub app: Arc<A>,
    pub rules: ConnRules,
}

impl<A> Front<A> {
    pub fn new(app: A, rules: ConnRules) -> Front<A> {
        Front {
            app: Arc::new(app),
            rules,
        }
    }
}

/// One request of the app behind a [`Front`], which runs the HTTP/1 keep-alive loop and the
/// HTTP/2 stream accept loop itself.
pub trait HttpApp: HttpServerApp + Send + Sync + 'static {
    /// Serve one request on `session`; give an HTTP/1 connection back for the next one. By default
    /// Pingora's trait method, whose future is boxed per request (fine for a tiny app).
    fn serve_one<'a>(
        self: &'a Arc<Self>,
        session: ServerSession,
        shutdown: &'a ShutdownWatch,
    ) -> impl Future<Output = Option<ReusedHttpStream>> + Send + 'a {
        self.process_new_http(session, shutdown)
    }
}

/// The proxy: awaited inline (our patched pingora-proxy's `serve_http`), so that the request's
/// state machine lives in the connection's future instead of a box allocated, and the whole
/// state copied into it, on every request.
impl HttpApp for pingora_proxy::HttpProxy<crate::proxy::Gateway> {
    fn serve_one<'a>(
        self: &'a Arc<Self>,
        session: ServerSession,
        shutdown: &'a ShutdownWatch,
    ) -> impl Future<Output = Option<ReusedHttpStream>> + Send + 'a {
        self.serve_http(session, shutdown)
    }
}

/// The https redirect: the default (its future is tiny).
impl HttpApp for pingora_core::apps::http_app::HttpServer<super::redirect::Redirect> {}

#[async_trait]
impl<A> ServerApp for Front<A>
where
    A: HttpApp,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(slot) = self.rules.slots.take() else {
            Dropped::MaxConnections.count();
            return None;
        };
        let deadline = Instant::now() + self.rules.header_timeout;
        let tls = stream.get_ssl_digest().is_some();
        if let (Some(trusted), false) = (&self.rules.proxy_protocol, tls) {
            let fd = stream.id();
            let read = proxy_protocol::accept(&mut *stream, trusted, fd);
            match tokio::time::timeout_at(deadline, read).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    log::debug!("closing a connection: {e}");
                    Dropped::ProxyProtocol.count();
                    return None;
                }
                Err(_) => {
                    Dropped::HeaderTimeout.count();
                    return None;
                }
            }
        }
        let h2c = !tls && self.app.server_options().is_some_and(|o| o.h2c);
        let mut h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        if h2c {
            let mut first = [0u8; H2_PREFACE.len()];
            match tokio::time::timeout_at(deadline, stream.try_peek(&mut first)).await {
                Ok(Ok(true)) => h2 = &first == H2_PREFACE,
                Ok(Ok(false)) => {}
                Ok(Err(_)) => return None,
                Err(_) => {
                    Dropped::HeaderTimeout.count();
                    return None;
                }
            }
        }
        if h2 {
            let stream: Stream = Box::new(Guarded::off(stream, slot));
            // Boxed: awaited inline, the h2 handshake and accept loop's state would make this
            // future — which every idle HTTP/1 keep-alive connection holds — kilobytes larger.
            Box::pin(self.serve_h2(stream, shutdown)).await;
            return None;
        }
        // HTTP/1.x: Pingora's keep-alive loop, with the deadline re-armed for each request.
        let mut stream = Box::new(Guarded::new(
            stream,
            slot,
            self.rules.header_timeout,
            deadline,
        ));
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            // Wait for the request's first bytes before its state exists: the request's state
            // machine (≈ 14.5 KB, `serve_one`'s future) is boxed for the request alone, so an
            // idle keep-alive connection holds only this small future and its stream. Bytes
            // read past the previous request (pipelining) are the next request already.
            if !settings.as_ref().is_some_and(|s| s.has_pipelined_prefix()) {
                let idle = match settings.as_ref().map(|s| s.keepalive_timeout()) {
                    // the first request: the header deadline (in the stream) bounds the wait
                    None => None,
                    Some(None) => return None, // keep-alive off: Pingora closes too
                    Some(Some(0)) => None,     // Pingora's "no idle limit"
                    Some(Some(secs)) => Some(Duration::from_secs(secs)),
                };
                let arrived = match idle {
                    None => stream.read_ahead().await,
                    Some(idle) => match tokio::time::timeout(idle, stream.read_ahead()).await {
                        Ok(arrived) => arrived,
                        Err(_) => return None, // idle too long: closed, as Pingora does
                    },
                };
                if !matches!(arrived, Ok(true)) {
                    return None; // the client closed the idle connection, or it broke
                }
            }
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => {
                    if *shutdown.borrow() {
                        session.set_keepalive(None);
                    } else {
                        session.set_keepalive(Some(self.rules.idle_timeout.as_secs()));
                    }
                    let options = self.app.server_options();
                    session.set_keepalive_reuses_remaining(
                        options.and_then(|o| o.keepalive_request_limit),
                    );
                    session.set_preserve_header_case(
                        !options.is_some_and(|o| o.h1_normalize_header_case),
                    );
                }
            }
            let reused = boxed_in_place(|| self.app.serve_one(session, shutdown)).await?;
            let (next, next_settings) = reused.consume();
            let Ok(next) = next.into_any().downcast::<Guarded>() else {
                return None;
            };
            stream = next;
            stream.next_request();
            // without settings Pingora would not have handed the connection back
            settings = Some(next_settings?);
        }
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

impl<A: HttpApp> Front<A> {
    /// An HTTP/2 connection: Pingora's handshake and stream accept loop (its idle timeout is
    /// `h2_idle_timeout`), each stream served in a task of its own. Pingora's own dispatch
    /// spawns `process_new_http`, whose trait future is built on the stack and copied whole into
    /// its box (≈ 15k instructions of `memcpy` per stream); here the request's future is built
    /// in its box and the task holds only the box.
    async fn serve_h2(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let conn = match h2_server::handshake(stream, self.app.h2_options()).await {
            Ok(conn) => conn,
            Err(e) => {
                log::debug!("closing a connection: {e}");
                return;
            }
        };
        let idle = self.app.server_options().and_then(|o| o.h2_idle_timeout);
        h2_server::accept_downstream_sessions(
            conn,
            digest,
            shutdown.clone(),
            idle,
            |h2_stream, guard| {
                let app = self.app.clone();
                let shutdown = shutdown.clone();
                // the work-stealing runtime (Pingora's default; ours) spreads the tasks
                tokio::spawn(async move {
                    // the guard marks the connection busy for its idle timeout
                    let _guard = guard;
                    let session = ServerSession::new_http2(h2_stream);
                    boxed_in_place(|| app.serve_one(session, &shutdown)).await;
                });
            },
        )
        .await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No deadline: HTTP/2, or the header is read and the request is under way.
    Off,
    /// Between keep-alive requests: the idle timeout applies; the first byte arms the deadline.
    Idle,
    /// Reading a request header: reads fail once the deadline has passed.
    Header,
}

/// A client stream with the header deadline. Everything but reads goes straight through.
pub struct Guarded {
    inner: Stream,
    phase: Phase,
    /// How far a blank line is matched across reads: 0 none, 1 after `\n`, 2 after `\n\r`.
    blank: u8,
    limit: Duration,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    /// Bytes [`Guarded::read_ahead`] read before the request's session existed, handed out
    /// first (from `ahead_at` on). Its allocation is kept for the next request when it is at
    /// most [`AHEAD_KEPT`] (one allocation a request less; a few hundred bytes an idle
    /// connection more).
    ahead: Vec<u8>,
    ahead_at: usize,
    /// The peer's address as the upstream is told it (`X-Forwarded-For`, `X-Real-IP`), made
    /// by the connection's first request and cloned (a reference count) by the others.
    peer_header: std::sync::OnceLock<(std::net::IpAddr, http::HeaderValue)>,
    _slot: Slot,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl Guarded {
    fn new(inner: Stream, slot: Slot, limit: Duration, deadline: Instant) -> Guarded {
        Guarded {
            inner,
            phase: Phase::Header,
            blank: 0,
            limit,
            deadline,
            timer: None,
            ahead: Vec::new(),
            ahead_at: 0,
            peer_header: std::sync::OnceLock::new(),
            _slot: slot,
        }
    }

    /// `ip` as a header value: made once per connection (the peer of a connection does not
    /// change; an address other than the one kept is made afresh).
    pub fn peer_header(&self, ip: std::net::IpAddr) -> http::HeaderValue {
        let (kept, value) = self
            .peer_header
            .get_or_init(|| (ip, super::forward::ip_header(ip)));
        if *kept == ip {
            value.clone()
        } else {
            super::forward::ip_header(ip)
        }
    }

    /// The connection a request of `session` came on, when it is one of ours (HTTP/1).
    pub fn of(session: &ServerSession) -> Option<&Guarded> {
        session.stream()?.as_any().downcast_ref::<Guarded>()
    }

    /// Wait until the client sends the next request's first bytes and keep what one read
    /// returns for the parser; false at end of stream. The read goes through the header
    /// deadline like any other, into a buffer on the poll's own stack (not held while
    /// waiting), so waiting costs no memory and the request costs no extra read.
    async fn read_ahead(&mut self) -> io::Result<bool> {
        std::future::poll_fn(|cx| {
            let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); READ_AHEAD];
            let mut buf = ReadBuf::uninit(&mut scratch);
            match Pin::new(&mut *self).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(false)),
                Poll::Ready(Ok(())) => {
                    self.ahead.clear();
                    self.ahead.extend_from_slice(buf.filled());
                    self.ahead_at = 0;
                    Poll::Ready(Ok(true))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    fn off(inner: Stream, slot: Slot) -> Guarded {
        let mut g = Guarded::new(inner, slot, Duration::ZERO, Instant::now());
        g.phase = Phase::Off;
        g
    }

    /// The previous request is done: the next one's header gets a fresh deadline from its
    /// first byte.
    fn next_request(&mut self) {
        self.phase = Phase::Idle;
        self.blank = 0;
    }

    /// Look for the end of the header in newly read bytes (`\r\n\r\n`, or bare `\n\n`, which
    /// Pingora's parser also takes).
    fn saw(&mut self, bytes: &[u8]) {
        if header_ends(&mut self.blank, bytes) {
            self.phase = Phase::Off;
        }
    }

    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        if Instant::now() >= self.deadline {
            return true;
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

/// Feed `bytes` to the blank-line matcher whose state is `state`; true once a line ending is
/// followed directly by another.
pub fn header_ends(state: &mut u8, bytes: &[u8]) -> bool {
    let mut rest = bytes;
    // Finish a match begun in an earlier read.
    while *state != 0 {
        let Some((&b, tail)) = rest.split_first() else {
            return false;
        };
        *state = match (b, *state) {
            (b'\n', _) => return true,
            (b'\r', 1) => 2,
            _ => 0,
        };
        rest = tail;
    }
    for i in memchr::memchr_iter(b'\n', rest) {
        match (rest.get(i + 1), rest.get(i + 2)) {
            (Some(b'\n'), _) | (Some(b'\r'), Some(b'\n')) => return true,
            (None, _) => *state = 1,
            (Some(b'\r'), None) => *state = 2,
            _ => {}
        }
    }
    false
}

/// Before a TLS handshake: refuse at the cap without spending a handshake on it, and read the
/// PROXY header on listeners that have one.
pub struct PreTls {
    pub slots: Arc<Slots>,
    pub proxy_protocol: Option<Trusted>,
    pub header_timeout: Duration,
}

#[async_trait]
impl PreTlsProcess for PreTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora_core::Result<()> {
        if self.slots.full() {
            Dropped::MaxConnections.count();
            return Err(pingora_core::Error::explain(
                pingora_core::ErrorType::ConnectRefused,
                "server.limits.max_connections reached",
            ));
        }
        let Some(trusted) = &self.proxy_protocol else {
            return Ok(());
        };
        let fd = stream.as_raw_fd();
        match tokio::time::timeout(
            self.header_timeout,
            proxy_protocol::accept(stream, trusted, fd),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                Dropped::ProxyProtocol.count();
                Err(e)
            }
            Err(_) => {
                Dropped::HeaderTimeout.count();
                Err(pingora_core::Error::explain(
                    pingora_core::ErrorType::ReadTimedout,
                    "PROXY header not complete within server.limits.header_timeout",
                ))
            }
        }
    }
}

use std::future::Future;

/// Box the future `make` returns, built in its heap slot. `Box::pin(make())` builds the future
/// on the stack and then copies all of it (≈ 14.5 KB for a proxied request, though only its
/// arguments are set) into the box; allocating first lets the compiler write the arguments
/// straight into the allocation.
fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let slot = Box::<F>::new_uninit();
    Box::into_pin(Box::write(slot, make()))
}

/// The most one [`Guarded::read_ahead`] takes: Pingora's own first read of a request header
/// is as large.
const READ_AHEAD: usize = 4096;

/// The largest read-ahead allocation a connection keeps between requests: most request heads
/// fit; a connection whose head did not frees it while idle.
const AHEAD_KEPT: usize = 1024;

fn header_timeout() -> io::Error {
    Dropped::HeaderTimeout.count();
    io::Error::new(
        io::ErrorKind::TimedOut,
        "request header not complete within server.limits.header_timeout",
    )
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.ahead_at < this.ahead.len() {
            // already through the deadline and the blank-line matcher when it was read
            let n = buf.remaining().min(this.ahead.len() - this.ahead_at);
            buf.put_slice(&this.ahead[this.ahead_at..this.ahead_at + n]);
            this.ahead_at += n;
            if this.ahead_at == this.ahead.len() {
                if this.ahead.capacity() > AHEAD_KEPT {
                    this.ahead = Vec::new();
                } else {
                    this.ahead.clear();
                }
                this.ahead_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if this.phase == Phase::Off {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    if this.phase == Phase::Idle {
                        this.phase = Phase::Header;
                        this.deadline = Instant::now() + this.limit;
                    }
                    this.saw(&buf.filled()[before..]);
                    // A header in several reads: the deadline holds even while bytes trickle.
                    if this.phase == Phase::Header && Instant::now() >= this.deadline {
                        return Poll::Ready(Err(header_timeout()));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.phase == Phase::Header && this.timed_out(cx) {
                    return Poll::Ready(Err(header_timeout()));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> TimingDigests {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::header_ends;

    fn ends_in(parts: &[&[u8]]) -> Option<usize> {
        let mut s = 0;
        parts.iter().position(|p| header_ends(&mut s, p))
    }

    #[test]
    fn blank_line_across_reads() {
        assert_eq!(ends_in(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]), Some(0));
        assert_eq!(ends_in(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some(0));
        assert_eq!(
            ends_in(&[b"GET / HTTP/1.1\r\nHost: a\r\n", b"\r", b"\n"]),
            Some(2)
        );
        assert_eq!(
            ends_in(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n\r\n"]),
            Some(1)
        );
        assert_eq!(ends_in(&[b"GET / HTTP/1.1\r\nHost: a\r\nX: \r\r\n"]), None);
        assert_eq!(
            ends_in(&[b"GET / HTTP/1.1\r\n", b"Host: a\r\n", b"X: y"]),
            None
        );
    }
}
