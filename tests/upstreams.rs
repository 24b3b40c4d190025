//! End to end: consistent hashing, health checks, timeouts and tries.

mod common;

use common::*;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn peer_of(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["peer"].as_str().unwrap().to_string()
}

#[test]
fn consistent_hash_on_sub_is_sticky() {
    let peers: Vec<EchoServer> = (0..3).map(|_| echo()).collect();
    let list: Vec<String> = peers.iter().map(|p| format!("\"{}\"", p.addr)).collect();
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  api: {{peers: [{}], balance: consistent_hash, hash_key: "claim:sub"}}
  by_header: {{peers: [{}], balance: consistent_hash, hash_key: "header:X-Tenant"}}
keys: {{k: {{secret: "0123456789abcdef0123456789abcdef"}}}}
auth: {{p: {{keys: k, algorithms: [HS256]}}}}
routes:
  - {{prefix: /api/, upstream: api, auth: p}}
  - {{prefix: /t/, upstream: by_header}}
"#,
        list.join(", "),
        list.join(", ")
    ));
    let mut used = HashSet::new();
    for i in 0..12 {
        let t = hs256(SECRET, &json!({"sub": format!("user-{i}")}));
        let first = peer_of(&gw.bearer("/api/x", &t));
        for _ in 0..4 {
            assert_eq!(peer_of(&gw.bearer("/api/x", &t)), first, "user-{i} moved");
        }
        used.insert(first);
    }
    assert!(used.len() >= 2, "all subs on one peer: {used:?}");
    let mut tenants = HashMap::new();
    for i in 0..8 {
        let tenant = format!("tenant-{i}");
        let p = peer_of(&gw.get("/t/x", &[("X-Tenant", &tenant)]));
        tenants.insert(tenant, p);
    }
    for (tenant, p) in &tenants {
        assert_eq!(&peer_of(&gw.get("/t/y", &[("X-Tenant", tenant)])), p);
    }
}

/// Start an echo server on exactly this address (retrying while the old one lets go of it).
fn echo_at(addr: SocketAddr) -> EchoServer {
    let t = Instant::now();
    loop {
        match EchoServer::start(&addr.to_string()) {
            Ok(e) => return e,
            Err(e) if t.elapsed() < Duration::from_secs(3) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot rebind {addr}: {e}"),
        }
    }
}

#[test]
fn health_checks_take_a_dead_peer_out_and_bring_it_back() {
    let a = echo();
    let b = echo();
    let b_addr = b.addr;
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  api:
    peers: ["{}", "{}"]
    health_check: {{kind: http, path: /health, interval: 200ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 2}}
routes:
  - {{prefix: /, upstream: api}}
"#,
        a.addr, b.addr
    ));
    // Both serve.
    let seen: HashSet<String> = (0..6).map(|_| peer_of(&gw.get("/x", &[]))).collect();
    assert_eq!(seen.len(), 2);
    drop(b);
    // Within interval × unhealthy_after (plus a probe's timeout) b is out; meanwhile requests
    // that met the dead peer were retried on a.
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        gw.log().contains(&format!("peer {b_addr} is down")),
        "{}",
        gw.log()
    );
    // Out of rotation: no request even tries it any more.
    let refused = r#"portcullis_upstream_errors_total{kind="connect_refused",upstream="api"}"#;
    let before = gw.metric(refused);
    for _ in 0..10 {
        assert_eq!(peer_of(&gw.get("/x", &[])), a.addr.to_string());
    }
    assert_eq!(gw.metric(refused), before, "the dead peer was still tried");
    // Back: within interval × healthy_after it takes traffic again.
    let b = echo_at(b_addr);
    let t = Instant::now();
    loop {
        if peer_of(&gw.get("/x", &[])) == b_addr.to_string() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "b never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(b.hits() > 0);
    let health_probes = b.hits();
    assert!(health_probes >= 1);
}

#[test]
fn every_peer_down_is_a_quick_502() {
    let a = echo();
    let b = echo();
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  api:
    peers: ["{}", "{}"]
    connect_timeout: 2s
    health_check: {{kind: tcp, interval: 100ms, timeout: 100ms, unhealthy_after: 1}}
routes:
  - {{prefix: /, upstream: api}}
"#,
        a.addr, b.addr
    ));
    assert_eq!(gw.get("/x", &[]).status, 200);
    drop(a);
    drop(b);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let r = gw.get("/x", &[]);
    assert_eq!(r.status, 502);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // Refused without a connection attempt: the checks had both peers out.
    assert_eq!(
        gw.metric(r#"portcullis_upstream_errors_total{kind="no_peer",upstream="api"}"#),
        1.0
    );
}

#[test]
fn read_timeout_bounds_a_slow_peer() {
    let a = echo();
    let gw = Gateway::start(&format!(
        "upstreams:\n  api: {{peers: [\"{}\"], read_timeout: 300ms}}\nroutes:\n  - {{prefix: /, upstream: api}}\n",
        a.addr
    ));
    let t = Instant::now();
    let r = gw.get("/slow?echo_delay_ms=3000", &[]);
    assert!((500..600).contains(&r.status), "{}", r.status);
    assert!(
        t.elapsed() < Duration::from_millis(2000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(gw.get("/fast", &[]).status, 200);
}

#[test]
fn tries_bound_the_retries() {
    let up = echo();
    let dead = free_port();
    let gw = Gateway::start(&format!(
        "upstreams:\n  api: {{peers: [\"127.0.0.1:{dead}\", \"{}\"], tries: 1}}\nroutes:\n  - {{prefix: /, upstream: api}}\n",
        up.addr
    ));
    // Round robin alternates; with a single try the dead peer's turns fail.
    let statuses: Vec<u16> = (0..10).map(|_| gw.get("/x", &[]).status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(up.hits(), 5);
}

#[test]
fn upstream_config_errors() {
    let err = check_refuses_yaml(
        r#"
upstreams:
  a: {peers: ["127.0.0.1:1"], balance: consistent_hash}
  b: {peers: ["127.0.0.1:1"], hash_key: ip}
  c: {peers: ["127.0.0.1:1"], balance: consistent_hash, hash_key: "cookie:x"}
  d: {peers: ["127.0.0.1:1"], connect_timeout: 0ms, tries: 0}
  e: {peers: ["127.0.0.1:1"], health_check: {kind: tcp, path: /x}}
  f: {peers: ["127.0.0.1:1"], health_check: {kind: http, path: "no-slash", interval: 1ms}}
  g: {peers: ["127.0.0.1:1"], balance: consistent_hash, hash_key: "claim:sub"}
routes:
  - {prefix: /, upstream: g}
"#,
    );
    assert_errors(
        &err,
        &[
            ("upstreams.a.hash_key", "needs a hash_key"),
            (
                "upstreams.b.hash_key",
                "only applies to balance: consistent_hash",
            ),
            ("upstreams.c.hash_key", "cookie:x"),
            ("upstreams.d.connect_timeout", "out of range"),
            ("upstreams.d.tries", "out of range"),
            (
                "upstreams.e.health_check.path",
                "only applies to kind: http",
            ),
            ("upstreams.f.health_check.path", "no-slash"),
            (
                "routes[0].upstream",
                "hashes on a claim, but this route has no auth",
            ),
        ],
    );
}

fn tls_gateway(port: u16, tls: &str, env: &[(&str, String)]) -> Gateway {
    let (gw_port, admin) = (free_port(), free_port());
    let yaml = format!(
        "server: {{listen: [\"127.0.0.1:{gw_port}\"], admin: \"127.0.0.1:{admin}\", threads: 1}}\nupstreams:\n  secure: {{peers: [\"127.0.0.1:{port}\"], tls: {tls}}}\nroutes:\n  - {{prefix: /, upstream: secure}}\n"
    );
    Gateway::start_raw_env(&yaml, gw_port, admin, env)
}

#[test]
fn tls_to_the_upstream_with_sni_and_verification() {
    let up = TlsServer::start(None);
    // Verification on (the default) against a self-signed certificate: refused.
    let gw = tls_gateway(up.port, "{sni: upstream.test}", &[]);
    assert_eq!(gw.get("/x", &[]).status, 502);
    drop(gw);
    // Trusting that certificate (SSL_CERT_FILE, as for system roots): served, SNI sent.
    let gw = tls_gateway(up.port, "{sni: upstream.test}", &[TlsServer::trust()]);
    let r = gw.get("/secure", &[]);
    assert_eq!(r.status, 200, "{}", gw.log());
    assert_eq!(r.json()["tls"], true);
    assert_eq!(r.json()["sni"], "upstream.test");
    assert_eq!(r.json()["path"], "/secure");
    drop(gw);
    // A name the certificate does not carry: refused.
    let gw = tls_gateway(up.port, "{sni: other.test}", &[TlsServer::trust()]);
    assert_eq!(gw.get("/x", &[]).status, 502);
    drop(gw);
    // verify: false accepts anything (for test rigs only).
    let gw = tls_gateway(up.port, "{sni: upstream.test, verify: false}", &[]);
    assert_eq!(gw.get("/x", &[]).status, 200);
}

/// A keep-alive upstream that counts its connections and closes one after `idle` without a
/// request, as nginx's `keepalive_timeout` does.
fn counting_upstream(
    idle: Duration,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    counting_upstream_answering(idle, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
}

/// As [`counting_upstream`], answering every request with `answer` (whatever its header says,
/// the upstream itself keeps the connection open until `idle` passes without a request).
fn counting_upstream_answering(
    idle: Duration,
    answer: &'static [u8],
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(idle)).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: a header, and a body of the declared length.
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return, // closed by the gateway, or idle
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < end + 4 + length {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + length);
                    if conn.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[test]
fn keepalive_upstream_connections_are_reused_and_a_closed_one_is_replaced() {
    use std::sync::atomic::Ordering;
    let (up, accepted) = counting_upstream(Duration::from_millis(300));
    let gw = Gateway::start(&format!(
        "upstreams: {{api: {{peers: [\"{up}\"]}}}}\nroutes:\n  - {{prefix: /, upstream: api}}\n"
    ));
    // One after the other: each goes up on the connection the last one left in the pool.
    for _ in 0..5 {
        let r = gw.get("/x", &[]);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the pooled connection was not reused"
    );
    // The upstream closes the idle connection; the next request, a POST that may not be
    // retried, must find that out before it sends and go up on a new connection.
    std::thread::sleep(Duration::from_millis(800));
    let r = request(gw.addr, "POST", "/x", &[], Some(b"payload"));
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"ok"[..]),
        "{}",
        gw.log()
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let r = gw.get("/x", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the new connection was not pooled"
    );
}

/// Sockets to `port` in CLOSE_WAIT on this host (`/proc/net/tcp`): connections whose far end
/// (here: the upstream) closed and whose near end (the gateway) has not.
fn close_wait_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = f[2].rsplit(':').next().unwrap();
            u16::from_str_radix(remote_port, 16) == Ok(port) && f[3] == "08"
        })
        .count()
}

#[test]
fn pooled_connections_the_upstream_closes_are_let_go_while_idle() {
    // The upstream closes a connection after 200 ms without a request. The gateway keeps its
    // pooled connections unwatched (Pingora patch 2), and a sweep of the pool every second
    // (patch 23) finds the closed ones: without it each would sit in CLOSE_WAIT, holding a
    // file descriptor, until it was next picked.
    let (up, accepted) = counting_upstream(Duration::from_millis(200));
    let gw = Gateway::start(&format!(
        "upstreams: {{api: {{peers: [\"{up}\"]}}}}\nroutes:\n  - {{prefix: /, upstream: api}}\n"
    ));
    // Requests at once, so that several connections go back to the pool.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let addr = gw.addr;
            std::thread::spawn(move || request(addr, "GET", "/x", &[], None).status)
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let opened = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(opened >= 1);
    // The upstream closes them all after its 200 ms; the sweep lets them go within a second or
    // two.
    std::thread::sleep(Duration::from_millis(600));
    eventually(
        "no pooled connection left in CLOSE_WAIT",
        Duration::from_secs(5),
        || (close_wait_to(up.port()) == 0).then_some(()),
    );
    // And the pool still works: the next request opens a new connection.
    assert_eq!(gw.get("/x", &[]).status, 200);
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        opened + 1
    );
}

#[test]
fn the_upstream_answer_decides_whether_its_connection_is_kept() {
    use std::sync::atomic::Ordering;
    // The upstreams below keep every connection open; only what the answer's header says may
    // decide whether the gateway puts it back in the pool.
    let cases: [(&[u8], usize, &str); 4] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            1,
            "HTTP/1.1",
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            4,
            "Connection: close",
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
            4,
            "HTTP/1.0",
        ),
        (
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
            1,
            "HTTP/1.0 keep-alive",
        ),
    ];
    for (answer, connections, case) in cases {
        let (up, accepted) = counting_upstream_answering(Duration::from_secs(10), answer);
        let gw = Gateway::start(&format!(
            "upstreams: {{api: {{peers: [\"{up}\"]}}}}\nroutes:\n  - {{prefix: /, upstream: api}}\n"
        ));
        for _ in 0..4 {
            let r = gw.get("/x", &[]);
            assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]), "{case}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), connections, "{case}");
    }
}

#[test]
fn an_informational_answer_before_the_final_one_leaves_the_final_whole_and_the_connection_kept() {
    use std::sync::atomic::Ordering;
    let (up, accepted) = counting_upstream_answering(
        Duration::from_secs(10),
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\nX-Final: yes\r\nContent-Length: 2\r\n\r\nok",
    );
    let gw = Gateway::start(&format!(
        "upstreams: {{api: {{peers: [\"{up}\"]}}}}\nroutes:\n  - {{prefix: /, upstream: api}}\n"
    ));
    for _ in 0..3 {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-i", "--max-time", "10"])
            .arg(format!("http://{}/x", gw.addr))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
        // Whether the hint is relayed or not, the final answer is the 200 with its own fields.
        let last = text.rsplit("HTTP/1.1 ").next().unwrap_or_default();
        assert!(last.starts_with("200"), "{text}");
        assert!(last.to_ascii_lowercase().contains("x-final: yes"), "{text}");
        assert!(last.ends_with("\n\nok"), "{text}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the upstream connection was not reused after an informational answer"
    );
}
