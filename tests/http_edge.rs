//! End to end: the HTTP edge — client IP behind trusted proxies, forwarded headers, request ids
//! and trace context, CORS, path rewrite and header rules.

mod common;

use common::*;
use serde_json::{json, Value};

fn token(claims: Value) -> String {
    let mut c = claims;
    c["exp"] = json!(now() + 600);
    hs256(SECRET, &c)
}

const KEYS: &str = "keys:\n  k: {secret: \"0123456789abcdef0123456789abcdef\"}\n";

#[test]
fn forwarded_headers_without_trusted_proxies_name_the_peer() {
    let echo = echo();
    let gw = Gateway::start(&format!(
        "upstreams:\n  api: {{peers: [\"{}\"]}}\nroutes:\n  - {{prefix: /, upstream: api}}\n",
        echo.addr
    ));
    let r = gw.get(
        "/x",
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.test"),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_headers("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(r.upstream_headers("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(r.upstream_headers("x-forwarded-proto"), ["http"]);
    assert_eq!(
        r.upstream_headers("x-forwarded-host"),
        [gw.addr.to_string()]
    );
}

#[test]
fn hop_by_hop_fields_never_reach_the_upstream() {
    let echo = echo();
    let gw = Gateway::start(&format!(
        "upstreams:\n  api: {{peers: [\"{}\"]}}\nroutes:\n  - {{prefix: /, upstream: api}}\n",
        echo.addr
    ));
    let hop_by_hop = [
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("Proxy-Authenticate", "Basic"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ("Connection", "X-Drop-Me"),
        ("X-Drop-Me", "nominated by Connection"),
    ];
    let mut headers = hop_by_hop.to_vec();
    headers.push(("X-Kept", "end to end"));
    let r = gw.get("/x", &headers);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for (name, _) in hop_by_hop {
        assert_eq!(
            r.upstream_headers(&name.to_ascii_lowercase()),
            Vec::<String>::new(),
            "{name} reached the upstream"
        );
    }
    assert_eq!(r.upstream_headers("x-kept"), ["end to end"]);
}

/// An upstream answering every request with `head` (status line and fields) and a short body,
/// keep-alive.
fn answering_upstream(head: &'static str) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let answer = format!("{head}Content-Length: 2\r\n\r\nok");
                        if conn.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn http1_connection_fields_of_an_answer_never_reach_an_h2_client() {
    // HTTP/2 forbids connection-specific fields (RFC 9113 §8.2.2): an answer carrying them is
    // passed on without them, not refused.
    let up = answering_upstream(
        "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-Kept: end to end\r\n",
    );
    let plain = answering_upstream("HTTP/1.1 200 OK\r\nX-Kept: end to end\r\n");
    let gw = Gateway::start(&format!(
        "upstreams:\n  hop: {{peers: [\"{up}\"]}}\n  plain: {{peers: [\"{plain}\"]}}\nroutes:\n  - {{prefix: /hop/, upstream: hop}}\n  - {{prefix: /, upstream: plain}}\n"
    ));
    for path in ["/hop/x", "/x", "/hop/y"] {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-i", "--http2-prior-knowledge", "--max-time", "10"])
            .arg(format!("http://{}{path}", gw.addr))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        assert!(
            text.starts_with("http/2 200"),
            "{path}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("x-kept: end to end"), "{path}: {text}");
        assert!(text.ends_with("ok"), "{path}: {text}");
        for name in ["connection:", "keep-alive:", "proxy-connection:"] {
            assert!(
                !text.contains(name),
                "{path}: {name} reached the client: {text}"
            );
        }
    }
}

#[test]
fn behind_a_trusted_proxy_the_client_is_the_right_most_untrusted_address() {
    let echo = echo();
    let dir = temp_dir();
    let log = dir.join("access.log");
    let gw = Gateway::start(&format!(
        "  trusted_proxies: [\"127.0.0.1/32\", \"10.0.0.0/8\"]\nupstreams:\n  api: {{peers: [\"{}\"]}}\nrate_limits:\n  per_ip: {{key: ip, rate: 1/m, burst: 1}}\nroutes:\n  - {{prefix: /limited/, upstream: api, rate_limit: per_ip}}\n  - {{prefix: /, upstream: api}}\naccess_log: {{path: \"{}\"}}\n",
        echo.addr,
        log.display()
    ));
    let xff = "6.6.6.6, 198.51.100.7, 10.1.2.3";
    let r = gw.get(
        "/x",
        &[("X-Forwarded-For", xff), ("X-Forwarded-Proto", "https")],
    );
    assert_eq!(
        r.upstream_headers("x-forwarded-for"),
        [format!("{xff}, 127.0.0.1")]
    );
    assert_eq!(r.upstream_headers("x-real-ip"), ["198.51.100.7"]);
    // A trusted proxy's X-Forwarded-Proto stands.
    assert_eq!(r.upstream_headers("x-forwarded-proto"), ["https"]);
    // The ip limit keys on the client, not on the proxy in front.
    let limited = |client: &str| gw.get("/limited/x", &[("X-Forwarded-For", client)]).status;
    assert_eq!(limited("198.51.100.1"), 200);
    assert_eq!(limited("198.51.100.1"), 429);
    assert_eq!(limited("198.51.100.2"), 200);
    // A client writing its own left-most entry changes nothing.
    assert_eq!(limited("1.1.1.1, 198.51.100.1"), 429);
    // The access log shows the client.
    let line = access_log_line(&log, |l| l["path"] == "/x");
    assert_eq!(line["client_ip"], "198.51.100.7");
    assert_eq!(
        line["remote_addr"].as_str().unwrap().split(':').next(),
        Some("127.0.0.1")
    );
}

#[test]
fn every_answer_carries_the_request_id_and_the_upstream_gets_it() {
    let echo = echo();
    let dir = temp_dir();
    let log = dir.join("access.log");
    let dead = free_port();
    let gw = Gateway::start(&format!(
        "upstreams:\n  api: {{peers: [\"{}\"]}}\n  dead: {{peers: [\"127.0.0.1:{dead}\"]}}\n{KEYS}auth:\n  p: {{keys: k, algorithms: [HS256]}}\nrate_limits:\n  one: {{key: ip, rate: 1/m, burst: 1}}\nroutes:\n  - {{prefix: /api/, upstream: api, auth: p}}\n  - {{prefix: /one/, upstream: api, rate_limit: one}}\n  - {{prefix: /dead/, upstream: dead}}\n  - {{prefix: /pub/, upstream: api}}\naccess_log: {{path: \"{}\"}}\n",
        echo.addr,
        log.display()
    ));
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = gw.get(
        "/pub/x",
        &[
            ("X-Request-Id", "client-chosen"),
            ("traceparent", tp),
            ("tracestate", "a=b"),
        ],
    );
    let id = r.header("x-request-id").expect("an id").to_string();
    assert_ne!(id, "client-chosen", "not trusted by default");
    assert_eq!(id.len(), 36);
    assert_eq!(
        r.upstream_headers("x-request-id"),
        std::slice::from_ref(&id)
    );
    // Trace context passes through unchanged.
    assert_eq!(r.upstream_headers("traceparent"), [tp]);
    assert_eq!(r.upstream_headers("tracestate"), ["a=b"]);
    let line = access_log_line(&log, |l| l["path"] == "/pub/x");
    assert_eq!(line["request_id"], id);
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    // The gateway's own answers too: 401, 404, 429, 502.
    for (path, status) in [
        ("/api/x", 401),
        ("/nowhere", 404),
        ("/one/x", 200),
        ("/one/x", 429),
        ("/dead/x", 502),
    ] {
        let r = gw.get(path, &[]);
        assert_eq!(r.status, status, "{path}");
        let got = r.header("x-request-id").unwrap_or_default();
        assert_eq!(got.len(), 36, "{path}: {got:?}");
    }
    // Two requests, two ids.
    assert_ne!(
        gw.get("/pub/a", &[]).header("x-request-id"),
        gw.get("/pub/b", &[]).header("x-request-id")
    );
}

#[test]
fn trusted_incoming_request_ids_are_kept_when_well_formed() {
    let echo = echo();
    let gw = Gateway::start(&format!(
        "  request_id: {{header: X-Correlation-Id, trust_incoming: true}}\nupstreams:\n  api: {{peers: [\"{}\"]}}\nroutes:\n  - {{prefix: /, upstream: api}}\n",
        echo.addr
    ));
    let r = gw.get("/x", &[("X-Correlation-Id", "lb-1234.abc")]);
    assert_eq!(r.header("x-correlation-id"), Some("lb-1234.abc"));
    assert_eq!(r.upstream_headers("x-correlation-id"), ["lb-1234.abc"]);
    assert!(r.header("x-request-id").is_none());
    let r = gw.get("/x", &[("X-Correlation-Id", "has space, and comma")]);
    let got = r.header("x-correlation-id").unwrap();
    assert_eq!(got.len(), 36, "a malformed id is replaced: {got}");
}

fn cors_gateway(echo: &EchoServer) -> Gateway {
    Gateway::start(&format!(
        r#"upstreams:
  api: {{peers: ["{}"]}}
{KEYS}auth:
  p: {{keys: k, algorithms: [HS256]}}
routes:
  - prefix: /api/
    upstream: api
    auth: p
    methods: [GET, POST]
    cors:
      origins: ["https://app.example.com", "https://*.example.com"]
      methods: [GET, POST]
      headers: [Authorization, Content-Type]
      expose_headers: [X-Request-Id]
      credentials: true
      max_age: 10m
  - {{prefix: /plain/, upstream: api, auth: p}}
"#,
        echo.addr
    ))
}

#[test]
fn cors_preflights_are_answered_without_auth_and_never_reach_the_upstream() {
    let echo = echo();
    let gw = cors_gateway(&echo);
    let preflight = |origin: &str, method: &str| {
        request(
            gw.addr,
            "OPTIONS",
            "/api/items",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", method),
                ("Access-Control-Request-Headers", "authorization"),
            ],
            None,
        )
    };
    let r = preflight("https://app.example.com", "POST");
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Authorization, Content-Type")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert!(r.header("vary").unwrap().contains("Origin"));
    assert!(r.header("x-request-id").is_some());
    let r = preflight("https://tenant.example.com", "GET");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://tenant.example.com")
    );
    // A disallowed origin or method: no CORS headers, still no upstream.
    for (o, m) in [
        ("https://evil.test", "POST"),
        ("https://app.example.com", "DELETE"),
    ] {
        let r = preflight(o, m);
        assert_eq!(r.status, 204);
        assert!(r.header("access-control-allow-origin").is_none(), "{o} {m}");
    }
    // A route without cors: an OPTIONS is an ordinary request (here: refused without a token).
    let r = request(
        gw.addr,
        "OPTIONS",
        "/plain/x",
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "GET"),
        ],
        None,
    );
    assert_eq!(r.status, 401);
    assert_eq!(echo.hits(), 0);
}

#[test]
fn cors_headers_are_on_every_answer_to_an_allowed_origin_the_gateways_own_included() {
    let echo = echo();
    let gw = cors_gateway(&echo);
    let origin = ("Origin", "https://app.example.com");
    // The gateway's own 401: the browser must be allowed to read it.
    let r = gw.get("/api/x", &[origin]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("X-Request-Id")
    );
    // The upstream's answer.
    let auth = format!("Bearer {}", token(json!({"sub": "a"})));
    let r = gw.get("/api/x", &[origin, ("Authorization", &auth)]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(r.header("vary").unwrap().contains("Origin"));
    // A disallowed origin gets none.
    let r = gw.get(
        "/api/x",
        &[("Origin", "https://evil.test"), ("Authorization", &auth)],
    );
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
}

#[test]
fn cors_config_errors() {
    let err = check_refuses_yaml(
        "upstreams:\n  a: {peers: [\"127.0.0.1:1\"]}\nroutes:\n  - {prefix: /a/, upstream: a, cors: {origins: [\"*\"], credentials: true}}\n  - {prefix: /b/, upstream: a, cors: {origins: [\"app.example.com\"]}}\n  - {prefix: /c/, upstream: a, cors: {origins: [\"https://a.test\"], methods: [get]}}\n",
    );
    assert_errors(
        &err,
        &[
            ("routes[0].cors.credentials", "list the origins"),
            ("routes[1].cors.origins", "scheme://host"),
            ("routes[2].cors.methods", "\"get\""),
        ],
    );
}

#[test]
fn rewrite_and_header_rules() {
    let echo = echo();
    let gw = Gateway::start(&format!(
        r#"upstreams:
  api: {{peers: ["{}"]}}
{KEYS}auth:
  p: {{keys: k, algorithms: [HS256]}}
routes:
  - prefix: /api/v1/
    upstream: api
    auth: p
    rewrite: /v1/
    request_headers:
      set: {{X-Tenant: "{{claim.tenant}}", X-Gateway: portcullis, X-Client: "{{client_ip}} {{header.user-agent}}", X-Rid: "{{request_id}}"}}
      remove: [X-Debug]
    response_headers:
      set: {{Strict-Transport-Security: "max-age=31536000"}}
      remove: [X-Echo-Peer]
"#,
        echo.addr
    ));
    let auth = format!("Bearer {}", token(json!({"sub": "a", "tenant": "acme"})));
    let r = gw.get(
        "/api/v1/items?q=1",
        &[
            ("Authorization", &auth),
            ("X-Debug", "1"),
            ("User-Agent", "tester/1"),
            ("X-Tenant", "forged"),
        ],
    );
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["path"], "/v1/items?q=1");
    assert_eq!(r.upstream_headers("x-tenant"), ["acme"]);
    assert_eq!(r.upstream_headers("x-gateway"), ["portcullis"]);
    assert_eq!(r.upstream_headers("x-client"), ["127.0.0.1 tester/1"]);
    assert_eq!(
        r.upstream_headers("x-rid"),
        [r.header("x-request-id").unwrap()]
    );
    assert!(r.upstream_headers("x-debug").is_empty());
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert!(r.header("x-echo-peer").is_none());
    // A claim the template names is missing: that header is not set — and the client's own
    // copy is not passed on either.
    let auth2 = format!("Bearer {}", token(json!({"sub": "b"})));
    let r = gw.get(
        "/api/v1/x",
        &[("Authorization", &auth2), ("X-Tenant", "forged")],
    );
    assert_eq!(r.status, 200);
    assert!(r.upstream_headers("x-tenant").is_empty());
    // A claim value that cannot be a header: refused, nothing sent.
    let before = echo.hits();
    let auth3 = format!("Bearer {}", token(json!({"sub": "c", "tenant": "a\nb"})));
    let r = gw.get("/api/v1/x", &[("Authorization", &auth3)]);
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("claim cannot be forwarded"));
    assert_eq!(echo.hits(), before);
    // The gateway's own answers get the response headers too.
    let r = gw.get("/api/v1/x", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
}

#[test]
fn rewrite_and_header_rule_config_errors() {
    let err = check_refuses_yaml(
        "upstreams:\n  a: {peers: [\"127.0.0.1:1\"]}\nroutes:\n  - {prefix: /a/, upstream: a, rewrite: /v1}\n  - {prefix: /b/, upstream: a, rewrite: v1/}\n  - {prefix: /c/, upstream: a, request_headers: {set: {Host: x, X-A: \"{nope}\"}, remove: [\"bad name\"]}}\n",
    );
    assert_errors(
        &err,
        &[
            ("routes[0].rewrite", "end both with /"),
            ("routes[1].rewrite", "must start with /"),
            ("routes[2].request_headers.set.Host", "cannot be set"),
            ("routes[2].request_headers.set.X-A", "unknown {nope}"),
            ("routes[2].request_headers.remove[0]", "invalid header name"),
        ],
    );
}

#[test]
fn header_and_body_limits() {
    use std::io::{Read, Write};
    let echo = echo();
    let gw = Gateway::start(&format!(
        "  limits: {{max_header_bytes: 2KiB, max_body_bytes: 1KiB, idle_timeout: 1s}}\nupstreams:\n  api: {{peers: [\"{}\"]}}\nroutes:\n  - {{prefix: /, upstream: api}}\n",
        echo.addr
    ));
    let big = "x".repeat(3000);
    let r = gw.get("/x", &[("X-Big", &big)]);
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"], "request_header_fields_too_large");
    assert!(r.header("x-request-id").is_some());
    assert_eq!(gw.get("/x", &[("X-Small", "y")]).status, 200);
    // A declared length over the limit: 413 at once.
    let r = request(gw.addr, "POST", "/x", &[], Some(&[b'a'; 2000]));
    assert_eq!(r.status, 413);
    assert_eq!(
        request(gw.addr, "POST", "/x", &[], Some(&[b'a'; 900])).status,
        200
    );
    let hits = echo.hits();
    // A chunked body that crosses it on the way: 413, and the upstream never gets a whole
    // request.
    let mut raw = String::from(
        "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..4 {
        raw.push_str(&format!("258\r\n{}\r\n", "b".repeat(600)));
    }
    raw.push_str("0\r\n\r\n");
    let r = raw_request(gw.addr, raw.as_bytes()).expect("an answer");
    assert_eq!(r.status, 413);
    assert_eq!(echo.hits(), hits);

    // An idle keep-alive connection is closed after idle_timeout.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let waited = t.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(800)
            && waited < std::time::Duration::from_secs(4),
        "closed after {waited:?}"
    );
}

#[test]
fn limit_config_errors() {
    let err = check_refuses_yaml(
        "server:\n  limits: {max_header_bytes: 12 parsecs, max_body_bytes: 2TiB, idle_timeout: 0s}\nupstreams:\n  a: {peers: [\"127.0.0.1:1\"]}\nroutes:\n  - {prefix: /, upstream: a}\n",
    );
    assert_errors(
        &err,
        &[
            ("server.limits.max_header_bytes", "unknown unit"),
            ("server.limits.max_body_bytes", "unknown unit"),
            ("server.limits.idle_timeout", "out of range"),
        ],
    );
}
