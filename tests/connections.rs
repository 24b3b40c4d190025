//! End to end: what happens to a client connection before its request is read — the header
//! deadline (slowloris), the cap on open connections, and the PROXY protocol on plain
//! listeners.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn upstream(echo: &EchoServer) -> String {
    format!(
        "upstreams:\n  api: {{peers: [\"{}\"]}}\nroutes:\n  - {{prefix: /, upstream: api}}\n",
        echo.addr
    )
}

/// Read one response (head and a Content-Length body) from a keep-alive connection.
fn read_response(s: &mut TcpStream) -> Option<Response> {
    let mut buf = read_head(s)?;
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    buf.extend_from_slice(&body);
    parse_response(&buf)
}

/// Whether the gateway has closed `s` (EOF or reset) within `wait`.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// Send `head` a byte every `every` until the gateway closes the connection; how long that
/// took (`None`: still open after `limit`).
fn dribble(s: &mut TcpStream, head: &[u8], every: Duration, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    for b in head.iter().cycle() {
        if start.elapsed() > limit {
            return None;
        }
        if s.write_all(&[*b]).is_err() || closed_within(s, every) {
            return Some(start.elapsed());
        }
    }
    unreachable!()
}

const SLOW_HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

#[test]
fn header_timeout_closes_slow_headers_but_not_slow_bodies() {
    let echo = echo();
    let gw = Gateway::start(&format!(
        "  limits: {{header_timeout: 1s, idle_timeout: 30s}}\n{}",
        upstream(&echo)
    ));
    // Silent after connecting: closed at the deadline, not after the 30 s idle timeout.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );

    // A byte every 200 ms: each read is quick, the header never completes. Pingora's own
    // timeout is per read, so only the deadline ends this.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let took = dribble(
        &mut s,
        SLOW_HEAD,
        Duration::from_millis(200),
        Duration::from_secs(6),
    )
    .expect("a trickled header is cut off");
    assert!(took >= Duration::from_millis(800), "{took:?}");

    // The deadline is re-armed for each request on a keep-alive connection.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).expect("first answer").status, 200);
    std::thread::sleep(Duration::from_millis(1500)); // idle time is not header time
    let took = dribble(
        &mut s,
        SLOW_HEAD,
        Duration::from_millis(200),
        Duration::from_secs(6),
    )
    .expect("the second request's trickled header is cut off");
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert_eq!(echo.hits(), 1);

    // A body may take longer than the header deadline: once the header is in, it does not apply.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\n")
        .unwrap();
    for b in b"abcdefgh" {
        std::thread::sleep(Duration::from_millis(300));
        s.write_all(&[*b]).unwrap();
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = read_response(&mut s).expect("the slow upload is answered");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"], "abcdefgh", "{}", r.json());
    assert_eq!(echo.hits(), 2);
    assert!(gw.metric("portcullis_connections_dropped_total{reason=\"header_timeout\"}") >= 3.0);
}

/// An idle keep-alive connection waits for its next request's first bytes before the request's
/// state is made, and hands what that first read took to the parser: a header larger than that
/// read, arriving in pieces or all at once, and a pipelined request behind it, all arrive whole.
#[test]
fn requests_larger_than_the_first_read_arrive_whole_on_a_reused_connection() {
    let echo = echo();
    let gw = Gateway::start(&format!(
        "  limits: {{max_header_bytes: 64KiB, idle_timeout: 30s}}\n{}",
        upstream(&echo)
    ));
    let big = "b".repeat(20_000);
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for path in ["/first", "/second"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
        let (head, rest) = req.as_bytes().split_at(3000);
        s.write_all(head).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(rest).unwrap();
        let r = read_response(&mut s).expect("an answer");
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["path"], path);
        assert_eq!(r.upstream_header("x-big").as_deref(), Some(big.as_str()));
        std::thread::sleep(Duration::from_millis(200)); // idle between requests
    }
    // One write: a POST whose header is larger than the first read, its body, and a second
    // request pipelined behind it.
    let post = format!(
        "POST /third HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\nContent-Length: 5\r\n\r\nhello\
         GET /fourth HTTP/1.1\r\nHost: a\r\n\r\n"
    );
    s.write_all(post.as_bytes()).unwrap();
    let r = read_response(&mut s).expect("the POST's answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"], "hello");
    assert_eq!(r.upstream_header("x-big").as_deref(), Some(big.as_str()));
    let r = read_response(&mut s).expect("the pipelined request's answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/fourth");
    assert_eq!(echo.hits(), 4);
    // And a client that closes an idle connection is simply gone.
    drop(s);
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"GET /fifth HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).expect("a new connection").status, 200);
}

#[test]
fn slowloris_does_not_delay_a_normal_client() {
    let echo = echo();
    let gw = Gateway::start(&upstream(&echo));
    let timed = || {
        (0..20)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(gw.get("/x", &[]).status, 200);
                t.elapsed()
            })
            .max()
            .unwrap()
    };
    let calm = timed();
    // 500 connections, each holding a request header open a byte at a time.
    let mut slow: Vec<TcpStream> = (0..500)
        .map(|_| {
            let mut s = TcpStream::connect(gw.addr).unwrap();
            s.write_all(&SLOW_HEAD[..20]).unwrap();
            s
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        let mut conns: Vec<TcpStream> = slow.iter().map(|s| s.try_clone().unwrap()).collect();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for s in &mut conns {
                    let _ = s.write_all(b"a");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let attacked = timed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickle.join().unwrap();
    eprintln!("slowest of 20 requests: {calm:?} alone, {attacked:?} beside 500 slow connections");
    assert!(
        attacked < calm + Duration::from_millis(100),
        "slowest request {attacked:?} under a slowloris of 500 connections, {calm:?} without"
    );
    // The slow connections were all held open meanwhile (the deadline is 10 s by default).
    assert!(gw.metric("portcullis_connections_open") >= 500.0);
    slow.clear();
}

#[test]
fn max_connections_caps_open_client_connections() {
    let echo = echo();
    let gw = Gateway::start(&format!(
        "  limits: {{max_connections: 3}}\n{}",
        upstream(&echo)
    ));
    let open = |gw: &Gateway| {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        read_response(&mut s).map(|r| (s, r.status))
    };
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let (s, status) = open(&gw).expect("room for three");
            assert_eq!(status, 200);
            s
        })
        .collect();
    eventually("three open", Duration::from_secs(3), || {
        (gw.metric("portcullis_connections_open") == 3.0).then_some(())
    });
    // The fourth is closed without an answer, and nothing reaches the upstream.
    assert!(open(&gw).is_none());
    assert_eq!(echo.hits(), 3);
    assert!(gw.metric("portcullis_connections_dropped_total{reason=\"max_connections\"}") >= 1.0);
    // When one closes, there is room again.
    held.pop();
    let (_s, status) = eventually("room again", Duration::from_secs(3), || open(&gw));
    assert_eq!(status, 200);
}

fn proxy_v2(src: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(v4) = src else {
        unreachable!()
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&v4.ip().octets());
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&v4.port().to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

#[test]
fn proxy_protocol_on_plain_and_redirect_listeners() {
    let echo = echo();
    let (port, redirect, admin) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "server:\n  listen:\n    - {{addr: \"127.0.0.1:{port}\", proxy_protocol: true}}\n    - {{addr: \"127.0.0.1:{redirect}\", redirect_https: 443, proxy_protocol: true}}\n  threads: 1\n  admin: \"127.0.0.1:{admin}\"\n  trusted_proxies: [\"127.0.0.1/32\"]\n{}",
        upstream(&echo)
    );
    let gw = Gateway::start_raw(&yaml, port, admin);
    let get = b"GET /x HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n";
    let with = |header: &[u8], to: u16| {
        let addr = SocketAddr::from(([127, 0, 0, 1], to));
        raw_request(addr, &[header, get].concat())
    };
    let r = with(b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\n", port).expect("answered");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-real-ip").as_deref(),
        Some("203.0.113.7")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("203.0.113.7")
    );
    let r = with(&proxy_v2("198.51.100.9:4000".parse().unwrap()), port).expect("answered");
    assert_eq!(
        r.upstream_header("x-real-ip").as_deref(),
        Some("198.51.100.9")
    );
    // A balancer's health check (UNKNOWN) keeps the balancer as the client.
    let r = with(b"PROXY UNKNOWN\r\n", port).expect("answered");
    assert_eq!(r.upstream_header("x-real-ip").as_deref(), Some("127.0.0.1"));
    // Without a header, or with a broken one: closed, nothing proxied.
    assert!(with(b"", port).is_none());
    assert!(with(b"PROXY TCP4 nonsense\r\n", port).is_none());
    assert!(with(b"PROXY TCP4 203.0.113.7 127.0.0.1 51234\r\n", port).is_none());
    assert_eq!(echo.hits(), 3);
    // The redirect listener reads it too.
    let r = with(b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\n", redirect).expect("answered");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://api.example/x"));
    assert!(with(b"", redirect).is_none());
    assert!(gw.metric("portcullis_connections_dropped_total{reason=\"proxy_protocol\"}") >= 4.0);
    drop(gw);

    // From a peer that is not a trusted proxy, even a valid header is refused.
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "server:\n  listen:\n    - {{addr: \"127.0.0.1:{port}\", proxy_protocol: true}}\n  threads: 1\n  admin: \"127.0.0.1:{admin}\"\n  trusted_proxies: [\"10.0.0.0/8\"]\n{}",
        upstream(&echo)
    );
    let _gw = Gateway::start_raw(&yaml, port, admin);
    assert!(with(b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\n", port).is_none());
    assert_eq!(echo.hits(), 3);
}

#[test]
fn connection_limit_config_errors() {
    let err = check_refuses_yaml(
        "server:\n  listen: [{addr: \"127.0.0.1:8080\", proxy_protocol: true}]\n  limits: {header_timeout: 10ms, max_connections: 0}\nupstreams:\n  a: {peers: [\"127.0.0.1:1\"]}\nroutes:\n  - {prefix: /, upstream: a}\n",
    );
    assert_errors(
        &err,
        &[
            (
                "server.listen[0].proxy_protocol",
                "needs server.trusted_proxies",
            ),
            ("server.limits.header_timeout", "out of range"),
            ("server.limits.max_connections", "out of range"),
        ],
    );
}

#[test]
fn every_request_of_a_connection_forwards_its_peer_and_no_other() {
    // The forwarded address is made once per connection and reused by its later requests:
    // each connection's requests must name its own peer, whatever they claim, and two
    // connections from different (PROXY protocol) peers must not see each other's.
    let echo = echo();
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "server:\n  listen:\n    - {{addr: \"127.0.0.1:{port}\", proxy_protocol: true}}\n  threads: 1\n  admin: \"127.0.0.1:{admin}\"\n  trusted_proxies: [\"127.0.0.1/32\"]\n{}",
        upstream(&echo)
    );
    let gw = Gateway::start_raw(&yaml, port, admin);
    let open = |peer: &str| {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("PROXY TCP4 {peer} 127.0.0.1 51234 80\r\n").as_bytes())
            .unwrap();
        s
    };
    let (mut a, mut b) = (open("203.0.113.7"), open("198.51.100.9"));
    for round in 0..3 {
        for (s, peer) in [(&mut a, "203.0.113.7"), (&mut b, "198.51.100.9")] {
            let spoof = if round == 1 {
                "X-Forwarded-For: 6.6.6.6\r\n"
            } else {
                ""
            };
            s.write_all(format!("GET /r{round} HTTP/1.1\r\nHost: t\r\n{spoof}\r\n").as_bytes())
                .unwrap();
            let r = read_response(s).expect("answered on the kept connection");
            assert_eq!(r.status, 200);
            assert_eq!(
                r.upstream_headers("x-forwarded-for"),
                [peer],
                "round {round}"
            );
            assert_eq!(r.upstream_headers("x-real-ip"), [peer], "round {round}");
        }
    }
    assert_eq!(echo.hits(), 6);
}

/// An upstream that holds every request until `n` are in at the same time (or 5 s pass), then
/// answers each with `<arrived together> <x-request-id> <x-forwarded-for>` and closes.
fn gathering_upstream(n: usize) -> SocketAddr {
    use std::sync::{Arc, Condvar, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let arrived = Arc::new((Mutex::new(0usize), Condvar::new()));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let arrived = arrived.clone();
            std::thread::spawn(move || {
                let Some(head) = read_head(&mut conn) else {
                    return;
                };
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let field = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map_or("-".to_owned(), |v| v.trim().to_owned())
                };
                let (count, wake) = &*arrived;
                let mut seen = count.lock().unwrap();
                *seen += 1;
                wake.notify_all();
                let (seen, _) = wake
                    .wait_timeout_while(seen, Duration::from_secs(5), |s| *s < n)
                    .unwrap();
                let body = format!(
                    "{} {} {}\n",
                    *seen >= n,
                    field("x-request-id:"),
                    field("x-forwarded-for:")
                );
                drop(seen);
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

#[test]
fn h2c_streams_of_one_connection_are_served_at_once_and_an_idle_one_is_closed() {
    let up = gathering_upstream(4);
    let gw = Gateway::start(&format!(
        "  limits: {{idle_timeout: 1s}}\nupstreams:\n  api: {{peers: [\"{up}\"]}}\nroutes:\n  - {{prefix: /, upstream: api}}\n"
    ));
    // Four requests multiplexed on one h2c connection (nghttp sends every URI of one authority
    // as a stream of one connection): the upstream answers none of them until all four are
    // under way, so they are only answered if the gateway serves them at once.
    let out = std::process::Command::new("timeout")
        .args(["20", "nghttp"])
        .args((1..=4).map(|i| format!("http://{}/x?{i}", gw.addr)))
        .output()
        .expect("nghttp (Debian's nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let bodies: Vec<&str> = text.lines().collect();
    assert_eq!(
        bodies.len(),
        4,
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ids = std::collections::HashSet::new();
    for body in bodies {
        let f: Vec<&str> = body.split(' ').collect();
        assert_eq!(f[0], "true", "served one after another: {text}");
        assert_eq!(f[2], "127.0.0.1", "each stream forwards its peer: {text}");
        assert_eq!(f[1].len(), 36, "{text}");
        ids.insert(f[1].to_owned());
    }
    assert_eq!(ids.len(), 4, "a request id per stream: {text}");

    // An h2c connection with nothing in flight is closed after the idle timeout.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let opened = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut frames = Vec::new();
    let closed = s.read_to_end(&mut frames).is_ok() || frames.is_empty();
    let after = opened.elapsed();
    assert!(closed, "still open after {after:?}");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "closed after {after:?}"
    );
    assert!(frames.len() >= 9, "the server's SETTINGS first: {frames:?}");
    assert_eq!(frames[3], 4, "a SETTINGS frame: {frames:?}");
}
