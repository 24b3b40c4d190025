//! End to end: routing, public proxying and load balancing.

mod common;

use common::*;
use std::collections::HashMap;

#[test]
fn public_route_is_proxied_unchanged() {
    let echo = echo();
    let gw = Gateway::start(&format!(
        "upstreams:\n  api: {{peers: [\"{}\"]}}\nroutes:\n  - {{prefix: /, upstream: api}}\n",
        echo.addr
    ));
    // Method, path, query, headers and body arrive as sent.
    let r = request(
        gw.addr,
        "PUT",
        "/a/b%20c?x=1&y=two",
        &[("X-Custom", "v1"), ("Content-Type", "text/plain")],
        Some(b"hello upstream"),
    );
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["method"], "PUT");
    assert_eq!(doc["path"], "/a/b%20c?x=1&y=two");
    assert_eq!(doc["body"], "hello upstream");
    assert_eq!(r.upstream_header("x-custom").as_deref(), Some("v1"));
    // Response status and headers come back as the upstream sent them.
    assert_eq!(
        r.header("x-echo-peer"),
        Some(echo.addr.to_string().as_str())
    );
    let r = gw.get("/missing?echo_status=404", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["path"], "/missing?echo_status=404");
    let r = gw.get("/boom?echo_status=503", &[]);
    assert_eq!(r.status, 503);
}

#[test]
fn chunked_request_body_is_streamed_through() {
    let echo = echo();
    let gw = Gateway::start(&format!(
        "upstreams:\n  api: {{peers: [\"{}\"]}}\nroutes:\n  - {{prefix: /, upstream: api}}\n",
        echo.addr
    ));
    let chunk = "x".repeat(100_000);
    let mut raw = String::from(
        "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..3 {
        raw.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    raw.push_str("0\r\n\r\n");
    let r = raw_request(gw.addr, raw.as_bytes()).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"].as_str().unwrap().len(), 300_000);
}

#[test]
fn no_route_is_404_and_wrong_method_is_405() {
    let echo = echo();
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  api: {{peers: ["{}"]}}
routes:
  - {{prefix: /api/, upstream: api, methods: [GET]}}
  - {{prefix: /api/, upstream: api, methods: [POST, DELETE]}}
  - {{prefix: /v/, upstream: api, host: api.example.com}}
"#,
        echo.addr
    ));
    let r = gw.get("/elsewhere", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");
    let r = request(gw.addr, "PUT", "/api/x", &[], Some(b"{}"));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("DELETE, GET, POST"));
    assert_eq!(request(gw.addr, "DELETE", "/api/x", &[], None).status, 200);
    // Host-bound route: the Host header decides.
    let raw = "GET /v/1 HTTP/1.1\r\nHost: API.example.com:8443\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_request(gw.addr, raw.as_bytes()).unwrap().status, 200);
    assert_eq!(gw.get("/v/1", &[]).status, 404);
    assert_eq!(echo.hits(), 2);
}

#[test]
fn dot_segments_are_refused() {
    let echo = echo();
    let gw = Gateway::start(&format!(
        "upstreams:\n  api: {{peers: [\"{}\"]}}\nkeys:\n  k: {{secret: \"0123456789abcdef0123456789abcdef\"}}\nauth:\n  p: {{keys: k, algorithms: [HS256]}}\nroutes:\n  - {{prefix: /admin/, upstream: api, auth: p}}\n  - {{prefix: /, upstream: api}}\n",
        echo.addr
    ));
    for path in [
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public%2f..%2fadmin/x",
    ] {
        let r = gw.get(path, &[]);
        assert_eq!(r.status, 400, "{path}");
    }
    assert_eq!(echo.hits(), 0);
}

#[test]
fn weighted_round_robin_spreads_requests() {
    let a = echo();
    let b = echo();
    let gw = Gateway::start(&format!(
        "upstreams:\n  api:\n    peers: [\"{}\", {{addr: \"{}\", weight: 3}}]\nroutes:\n  - {{prefix: /, upstream: api}}\n",
        a.addr, b.addr
    ));
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let r = gw.get("/x", &[]);
        assert_eq!(r.status, 200);
        *seen
            .entry(r.json()["peer"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(seen[&a.addr.to_string()], 10, "{seen:?}");
    assert_eq!(seen[&b.addr.to_string()], 30, "{seen:?}");
}

#[test]
fn a_peer_that_refuses_connections_is_retried_on_another() {
    let up = echo();
    let dead = free_port(); // nothing listens here
    let gw = Gateway::start(&format!(
        "upstreams:\n  api: {{peers: [\"127.0.0.1:{dead}\", \"{}\"]}}\nroutes:\n  - {{prefix: /, upstream: api}}\n",
        up.addr
    ));
    for i in 0..10 {
        let r = gw.get(&format!("/x{i}"), &[]);
        assert_eq!(r.status, 200, "request {i}");
    }
    // Not idempotent, but nothing was sent to the dead peer: retried too.
    for _ in 0..4 {
        let r = request(gw.addr, "POST", "/x", &[], Some(b"data"));
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.hits(), 14);
}

#[test]
fn all_peers_down_is_a_quick_502() {
    let gw = Gateway::start(&format!(
        "upstreams:\n  api: {{peers: [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]}}\nroutes:\n  - {{prefix: /, upstream: api}}\n",
        free_port(),
        free_port()
    ));
    let t = std::time::Instant::now();
    let r = gw.get("/x", &[]);
    assert_eq!(r.status, 502);
    assert!(t.elapsed() < std::time::Duration::from_secs(3));
}

#[test]
fn admin_listener_answers_healthz() {
    let echo = echo();
    let gw = Gateway::start(&format!(
        "upstreams:\n  api: {{peers: [\"{}\"]}}\nroutes:\n  - {{prefix: /, upstream: api}}\n",
        echo.addr
    ));
    let r = request(gw.admin, "GET", "/healthz", &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok\n");
    assert_eq!(request(gw.admin, "GET", "/nope", &[], None).status, 404);
    assert_eq!(echo.hits(), 0);
}

/// An upstream that answers every request with the request head it received, byte for byte,
/// and a header of its own in mixed case.
fn head_upstream() -> std::net::SocketAddr {
    use std::io::Write;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || loop {
                let Some(head) = common::read_head(&mut c) else {
                    return;
                };
                let mut answer = format!(
                    "HTTP/1.1 200 OK\r\nX-Upstream-Mixed: yes\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                    head.len()
                )
                .into_bytes();
                answer.extend_from_slice(&head);
                if c.write_all(&answer).is_err() {
                    return;
                }
            });
        }
    });
    addr
}

/// The `Content-Length` of a message head, if it has one.
fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().unwrap())
    })
}

/// Read one response with a `Content-Length` body from a keep-alive connection.
fn read_one(s: &mut std::net::TcpStream) -> (String, String) {
    use std::io::Read;
    let buf = common::read_head(s).expect("the gateway closed mid-response");
    let head = String::from_utf8(buf).unwrap();
    let len: usize = content_length(&head).expect("a Content-Length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

#[test]
fn header_name_case_is_normalised_unless_preserved() {
    use std::io::Write;
    let up = head_upstream();
    for preserve in [false, true] {
        let gw = Gateway::start(&format!(
            "  preserve_header_case: {preserve}\nupstreams:\n  api: {{peers: [\"{up}\"]}}\nroutes:\n  - {{prefix: /, upstream: api}}\n"
        ));
        let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        // Two requests on one connection: the second session inherits the first one's setting.
        for i in 0..2 {
            write!(
                s,
                "GET /r{i} HTTP/1.1\r\nhost: h\r\nX-Api-Version: {i}\r\ncontent-TYPE: text/plain\r\n\r\n"
            )
            .unwrap();
            let (head, seen) = read_one(&mut s);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            if preserve {
                assert!(
                    seen.contains(&format!("\r\nX-Api-Version: {i}\r\n")),
                    "{seen}"
                );
                assert!(seen.contains("\r\ncontent-TYPE: text/plain\r\n"), "{seen}");
                assert!(seen.contains("\r\nhost: h\r\n"), "{seen}");
                assert!(head.contains("\r\nX-Upstream-Mixed: yes\r\n"), "{head}");
            } else {
                // lowercase, except the common fields, which are titled
                assert!(
                    seen.contains(&format!("\r\nx-api-version: {i}\r\n")),
                    "{seen}"
                );
                assert!(seen.contains("\r\nContent-Type: text/plain\r\n"), "{seen}");
                assert!(seen.contains("\r\nHost: h\r\n"), "{seen}");
                assert!(head.contains("\r\nx-upstream-mixed: yes\r\n"), "{head}");
                assert!(!seen.contains("X-Api") && !head.contains("X-Upstream"));
            }
            // the value and the rest of the request are untouched either way
            assert!(
                seen.starts_with(&format!("GET /r{i} HTTP/1.1\r\n")),
                "{seen}"
            );
        }
    }
}

/// A byte pattern that shows where a stream was cut, reordered or doubled.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// An upstream that streams a large chunked answer *while* it reads a large request body (each
/// direction on its own thread), then serves the next request on the same connection.
/// `?early` answers a short 200 before reading any of the body, then reads the body to the end.
/// Sends each connection's request count (when it closes) and whether the bodies were intact.
fn duplex_upstream() -> (
    std::net::SocketAddr,
    std::sync::mpsc::Receiver<(usize, bool)>,
) {
    use std::io::{BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (report, reports) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let report = report.clone();
            std::thread::spawn(move || {
                let mut writer = c.try_clone().unwrap();
                let mut reader = BufReader::new(c);
                let (mut served, mut intact) = (0, true);
                loop {
                    let Some(head) = read_head(&mut reader) else {
                        report.send((served, intact)).unwrap();
                        return;
                    };
                    let len: usize = content_length(&head).unwrap_or(0);
                    let early = head.starts_with("POST /early");
                    let answer = std::thread::spawn({
                        let mut w = writer.try_clone().unwrap();
                        move || {
                            if early {
                                w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
                                    .unwrap();
                                return;
                            }
                            w.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                                .unwrap();
                            for piece in pattern(1 << 20, 0x5a).chunks(16 * 1024) {
                                w.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                                    .unwrap();
                                w.write_all(piece).unwrap();
                                w.write_all(b"\r\n").unwrap();
                            }
                            w.write_all(b"0\r\n\r\n").unwrap();
                        }
                    });
                    let mut body = vec![0u8; len];
                    let read = reader.read_exact(&mut body);
                    intact &= read.is_ok() && body == pattern(len, 0xa5);
                    answer.join().unwrap();
                    served += 1;
                    writer.flush().unwrap();
                }
            });
        }
    });
    (addr, reports)
}

/// A message head up to its blank line; `None` if the stream ends first.
fn read_head(r: &mut impl std::io::BufRead) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            return Some(head);
        }
    }
}

/// Read a chunked response's body, or a `Content-Length` one.
fn read_body(r: &mut std::io::BufReader<std::net::TcpStream>) -> (String, Vec<u8>) {
    use std::io::{BufRead, Read};
    let head = read_head(r).expect("closed mid-header");
    let mut body = Vec::new();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let len: usize = content_length(&head).unwrap();
        body.resize(len, 0);
        r.read_exact(&mut body).unwrap();
    }
    (head, body)
}

#[test]
fn bodies_stream_both_ways_at_once_and_upstream_connections_are_reused() {
    use std::io::{BufReader, Read, Write};
    use std::net::TcpStream;
    let (up, reports) = duplex_upstream();
    let gw = Gateway::start(&format!(
        "upstreams:\n  api: {{peers: [\"{up}\"]}}\nroutes:\n  - {{prefix: /, upstream: api}}\n"
    ));
    let connect = || {
        let c = TcpStream::connect(gw.addr).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let reader = BufReader::new(c.try_clone().unwrap());
        (c, reader)
    };
    let (mut c, mut reader) = connect();
    let upload = pattern(1 << 20, 0xa5);
    for round in 0..3 {
        // The request body goes out from another thread while this one reads the answer: the
        // upstream's 1 MiB answer and the client's 1 MiB body cross inside the gateway, each
        // far larger than what the socket buffers and the gateway's pipes hold.
        let mut w = c.try_clone().unwrap();
        let body = upload.clone();
        let sender = std::thread::spawn(move || {
            w.write_all(
                format!(
                    "POST /duplex/{round} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
            for piece in body.chunks(8 * 1024) {
                w.write_all(piece).unwrap();
            }
        });
        let (head, got) = read_body(&mut reader);
        sender.join().unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(got.len(), 1 << 20, "round {round}");
        assert!(
            got == pattern(1 << 20, 0x5a),
            "round {round}: answer altered"
        );
        // An answer that started before the request's body was all read ends the client
        // connection (Pingora's rule, and says so); otherwise it is kept.
        if head.to_ascii_lowercase().contains("connection: close") {
            let mut rest = Vec::new();
            assert_eq!(reader.read_to_end(&mut rest).unwrap_or(0), 0, "{rest:?}");
            (c, reader) = connect();
        }
    }
    // An answer before any of the body was read: the client gets it whole, its body is still
    // relayed to the end, and the connection is closed after it.
    c.write_all(b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 262144\r\n\r\n")
        .unwrap();
    let (head, got) = read_body(&mut reader);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(got, b"early");
    c.write_all(&pattern(262_144, 0xa5)).unwrap();
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).unwrap_or(0), 0, "{rest:?}");
    let (mut c, mut reader) = connect();
    c.write_all(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (head, got) = read_body(&mut reader);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(got == pattern(1 << 20, 0x5a));
    drop((c, reader));
    drop(gw);
    // The upstream got every body intact, and its connections were kept and reused by the
    // gateway's pool: five requests, at least three of them on one connection.
    let mut seen: Vec<(usize, bool)> = Vec::new();
    while seen.iter().map(|(n, _)| n).sum::<usize>() < 5 {
        match reports.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(r) => seen.push(r),
            Err(_) => break,
        }
    }
    assert!(seen.iter().all(|(_, intact)| *intact), "{seen:?}");
    assert_eq!(seen.iter().map(|(n, _)| n).sum::<usize>(), 5, "{seen:?}");
    assert!(seen.iter().any(|(n, _)| *n >= 3), "{seen:?}");
}
