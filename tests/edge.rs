//! End to end: the gateway decides on the same request target and host that the upstream acts
//! on. Attacks from issue 12, tried against a real nginx upstream (stock normalisation) and a
//! recording upstream that shows the exact bytes it was sent.

mod common;

use common::nginx::Nginx;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn token() -> String {
    hs256(SECRET, &json!({"sub": "alice", "exp": now() + 600}))
}

/// One request; `head` is everything after the request line's target (version and headers,
/// without the final blank line). `Connection: close` is added.
fn send(addr: SocketAddr, target: &str, head: &str) -> Option<Response> {
    let raw = format!("GET {target} {head}Connection: close\r\n\r\n");
    raw_request(addr, raw.as_bytes())
}

fn body(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// nginx reports which location served the request, and what it was sent.
const NGINX_SERVERS: &str = r#"
server {
  listen LISTEN default_server;
  server_name _;
  location /api/ { return 200 "api uri=$uri request_uri=$request_uri host=$host user=$http_x_user\n"; }
  location / { return 200 "public uri=$uri request_uri=$request_uri host=$host\n"; }
}
server {
  listen LISTEN;
  server_name admin.example.com;
  location / { return 200 "admin uri=$uri request_uri=$request_uri host=$host\n"; }
}
"#;

/// The README's layout: a public `/` and a protected `/api/` on one upstream, plus a protected
/// host-bound route.
fn readme_layout(upstream: SocketAddr, server_extra: &str) -> Gateway {
    Gateway::start(&format!(
        r#"{server_extra}
upstreams:
  web: {{peers: ["{upstream}"]}}
keys:
  k: {{secret: "0123456789abcdef0123456789abcdef"}}
auth:
  p: {{keys: k, algorithms: [HS256], forward_claims: {{X-User: sub}}}}
routes:
  - {{prefix: /api/, upstream: web, auth: p}}
  - {{prefix: /, host: admin.example.com, upstream: web, auth: p}}
  - {{prefix: /, upstream: web}}
"#
    ))
}

#[test]
fn path_and_host_confusion_never_reaches_a_protected_location_without_a_token() {
    let nginx = Nginx::start(NGINX_SERVERS);
    let gw = readme_layout(nginx.addr, "");
    let port = gw.addr.port();
    let h = "HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    let abs_api = format!("http://127.0.0.1:{port}//api/x");
    let same_host = format!("HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    // (target, rest of head, status without a token, what nginx says with a valid one)
    let rows: Vec<(&str, &str, u16, Option<&str>)> = vec![
        (
            "//api/x",
            h,
            401,
            Some("api uri=/api/x request_uri=/api/x "),
        ),
        (
            "///api/x",
            h,
            401,
            Some("api uri=/api/x request_uri=/api/x "),
        ),
        (
            "/%61pi/x",
            h,
            401,
            Some("api uri=/api/x request_uri=/api/x "),
        ),
        (
            "/%61%70%69/%78",
            h,
            401,
            Some("api uri=/api/x request_uri=/api/x "),
        ),
        ("/api%2fx", h, 400, None),
        ("/api%2Fx", h, 400, None),
        ("/%2fapi/x", h, 400, None),
        ("/public/%2e%2e/api/x", h, 400, None),
        ("/public/..;/api/x", h, 400, None),
        ("/api;/x", h, 400, None),
        ("/api%3b/x", h, 400, None),
        ("/public/../api/x", h, 400, None),
        (
            &abs_api,
            "HTTP/1.1\r\n",
            401,
            Some("api uri=/api/x request_uri=/api/x host=127.0.0.1 "),
        ),
        (
            &abs_api,
            &same_host,
            401,
            Some("api uri=/api/x request_uri=/api/x host=127.0.0.1 "),
        ),
        (
            "/x",
            "HTTP/1.1\r\nHost: admin.example.com.\r\n",
            401,
            Some("admin uri=/x request_uri=/x host=admin.example.com\n"),
        ),
        (
            "/x",
            "HTTP/1.1\r\nHost: ADMIN.example.com:80\r\n",
            401,
            Some("admin uri=/x"),
        ),
        (
            "http://admin.example.com/x",
            "HTTP/1.1\r\n",
            401,
            Some("admin uri=/x request_uri=/x host=admin.example.com\n"),
        ),
        (
            "http://admin.example.com./x",
            "HTTP/1.1\r\n",
            401,
            Some("admin uri=/x"),
        ),
        // The authority wins over Host; Pingora refuses a Host that disagrees with it.
        ("http://admin.example.com/x", h, 400, None),
        // HTTP/1.1 needs a Host (RFC 9112 §3.2), and a valid one.
        ("/x", "HTTP/1.1\r\n", 400, None),
        ("/x", "HTTP/1.1\r\nHost: admin.example.com..\r\n", 400, None),
        ("/x", "HTTP/1.1\r\nHost: a b\r\n", 400, None),
        (
            "/x",
            "HTTP/1.1\r\nHost: admin.example.com\r\nHost: 127.0.0.1\r\n",
            400,
            None,
        ),
        // Not origin-form, not absolute-form.
        ("api/x", h, 400, None),
        ("*", h, 400, None),
        ("ftp://admin.example.com/x", h, 400, None),
    ];
    for (target, head, status, _) in &rows {
        let r = send(gw.addr, target, head);
        let got = r.as_ref().map(|r| r.status);
        assert_eq!(
            got,
            Some(*status),
            "{target} {head:?}: {:?}",
            r.map(|r| body(&r))
        );
    }
    assert_eq!(nginx.hits(), 0, "an unauthenticated request reached nginx");

    let auth = format!("Authorization: Bearer {}\r\n", token());
    for (target, head, status, want) in &rows {
        let r = send(gw.addr, target, &format!("{head}{auth}")).expect("a response");
        match want {
            Some(w) => {
                assert_eq!(r.status, 200, "{target} {head:?}");
                assert!(body(&r).starts_with(w), "{target} {head:?}: {}", body(&r));
            }
            None => assert_eq!(r.status, *status, "{target} {head:?} with a token"),
        }
    }
    let forwarded = rows.iter().filter(|r| r.3.is_some()).count();
    assert_eq!(nginx.hits(), forwarded);
    // The claim header reached nginx's protected location.
    let r = send(gw.addr, "//api/x", &format!("{h}{auth}")).unwrap();
    assert!(body(&r).contains("user=alice"), "{}", body(&r));

    // HTTP/1.0 may leave Host out: routed without a host, to the public route.
    let r = send(gw.addr, "/x", "HTTP/1.0\r\n").unwrap();
    assert_eq!(r.status, 200);
    assert!(body(&r).starts_with("public uri=/x"), "{}", body(&r));
}

#[test]
fn the_upstream_is_sent_exactly_the_canonical_target_and_host() {
    let echo = echo();
    let gw = readme_layout(echo.addr, "");
    let r = send(
        gw.addr,
        "//pub//%7Ebob/%c3%a9/%41?x=//%61&y=%2F",
        "HTTP/1.1\r\nHost: Echo.Example.:8080\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/pub/~bob/%C3%A9/A?x=//%61&y=%2F");
    assert_eq!(r.upstream_headers("host"), ["echo.example:8080"]);

    // Absolute form goes upstream in origin form, with the authority as Host.
    let r = send(gw.addr, "http://Echo.Example/a//b?q", "HTTP/1.1\r\n").unwrap();
    assert_eq!(r.json()["path"], "/a/b?q");
    assert_eq!(r.upstream_headers("host"), ["echo.example"]);

    // A canonical request is forwarded byte for byte.
    let r = send(
        gw.addr,
        "/a/b%20c/%C3%A9?z=%zz",
        "HTTP/1.1\r\nHost: echo.example\r\n",
    )
    .unwrap();
    assert_eq!(r.json()["path"], "/a/b%20c/%C3%A9?z=%zz");
    assert_eq!(r.upstream_headers("host"), ["echo.example"]);
}

#[test]
fn header_names_with_underscores() {
    let echo = echo();
    let hs =
        "HTTP/1.1\r\nHost: h\r\nX_User: evil\r\nx_uSeR: evil2\r\nX-User: evil3\r\nX_Other: 1\r\n";
    // drop (default): every underscore header is gone; the protected one too.
    let gw = readme_layout(echo.addr, "");
    let r = send(gw.addr, "/pub", hs).unwrap();
    assert_eq!(r.status, 200);
    for h in ["x_user", "x-user", "x_other"] {
        assert!(r.upstream_headers(h).is_empty(), "{h} reached the upstream");
    }
    let auth = format!("{hs}Authorization: Bearer {}\r\n", token());
    let r = send(gw.addr, "/api/x", &auth).unwrap();
    assert_eq!(r.upstream_headers("x-user"), ["alice"]);
    assert!(r.upstream_headers("x_user").is_empty());
    drop(gw);

    // allow: only look-alikes of protected headers are dropped.
    let gw = readme_layout(echo.addr, "  headers_with_underscores: allow");
    let r = send(gw.addr, "/pub", hs).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.upstream_headers("x_user").is_empty());
    assert!(r.upstream_headers("x-user").is_empty());
    assert_eq!(r.upstream_headers("x_other"), ["1"]);
    drop(gw);

    // reject: 400, nothing forwarded.
    let before = echo.hits();
    let gw = Gateway::start(&format!(
        "  headers_with_underscores: reject\nupstreams:\n  web: {{peers: [\"{}\"]}}\nroutes:\n  - {{prefix: /, upstream: web}}\n",
        echo.addr
    ));
    assert_eq!(send(gw.addr, "/pub", hs).unwrap().status, 400);
    assert_eq!(
        send(gw.addr, "/pub", "HTTP/1.1\r\nHost: h\r\nX-Fine: 1\r\n")
            .unwrap()
            .status,
        200
    );
    assert_eq!(echo.hits(), before + 1);
}

#[test]
fn encoded_slashes_forwarded_when_configured() {
    let echo = echo();
    let gw = Gateway::start(&format!(
        "  encoded_slashes: forward\nupstreams:\n  web: {{peers: [\"{}\"]}}\nkeys:\n  k: {{secret: \"0123456789abcdef0123456789abcdef\"}}\nauth:\n  p: {{keys: k, algorithms: [HS256]}}\nroutes:\n  - {{prefix: /api/, upstream: web, auth: p}}\n  - {{prefix: /, upstream: web}}\n",
        echo.addr
    ));
    let h = "HTTP/1.1\r\nHost: h\r\n";
    let auth = format!("{h}Authorization: Bearer {}\r\n", token());
    let r = send(gw.addr, "/api/projects/group%2fname/issues", &auth).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/api/projects/group%2Fname/issues");
    // Routed as an upstream that decodes %2F would read it: /api/x is protected.
    for target in ["/%2Fapi/x", "/%2F%2Fapi/x", "/api%2Fx"] {
        assert_eq!(send(gw.addr, target, h).unwrap().status, 401, "{target}");
    }
    assert_eq!(send(gw.addr, "/pub%2F..%2Fapi/x", h).unwrap().status, 400);
    assert_eq!(echo.hits(), 1);
}

#[test]
fn semicolons_allowed_when_configured() {
    let echo = echo();
    let gw = Gateway::start(&format!(
        "  path_semicolons: allow\nupstreams:\n  web: {{peers: [\"{}\"]}}\nkeys:\n  k: {{secret: \"0123456789abcdef0123456789abcdef\"}}\nauth:\n  p: {{keys: k, algorithms: [HS256]}}\nroutes:\n  - {{prefix: /api/, upstream: web, auth: p}}\n  - {{prefix: /, upstream: web}}\n",
        echo.addr
    ));
    let h = "HTTP/1.1\r\nHost: h\r\n";
    assert_eq!(
        send(gw.addr, "/pub;jsessionid=1/x", h).unwrap().json()["path"],
        "/pub;jsessionid=1/x"
    );
    assert_eq!(send(gw.addr, "/api/x;v=1", h).unwrap().status, 401);
    // A servlet container walks up on `..;`: still a dot segment.
    assert_eq!(send(gw.addr, "/pub/..;/api/x", h).unwrap().status, 400);
    assert_eq!(send(gw.addr, "/pub/..;x=1/api/x", h).unwrap().status, 400);
    assert_eq!(echo.hits(), 1);
}

/// A WebSocket-ish upstream: answers an `Upgrade: websocket` request with 101 and then echoes
/// bytes; any other request with 200 and the body "no upgrade".
fn upgrade_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || serve_upgrade(conn));
        }
    });
    addr
}

fn serve_upgrade(mut c: TcpStream) {
    let Some(head) = read_head(&mut c) else {
        return;
    };
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if text.contains("\r\nupgrade: websocket") {
        let _ = c.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        );
        let mut buf = [0u8; 1024];
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 || c.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    } else {
        let _ = c.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nno upgrade",
        );
    }
}

#[test]
fn upgrades_only_on_websocket_routes() {
    let up = upgrade_upstream();
    let gw = Gateway::start(&format!(
        "upstreams:\n  ws: {{peers: [\"{up}\"]}}\nroutes:\n  - {{prefix: /ws/, upstream: ws, websocket: true}}\n  - {{prefix: /, upstream: ws}}\n"
    ));
    let upgrade = |path: &str, proto: &str| {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: {proto}\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        (s, String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    // Allowed: 101, then a tunnel.
    let (mut s, head) = upgrade("/ws/chat", "websocket");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping through the tunnel").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping through the tunnel");
    // Elsewhere the upstream never sees the Upgrade: a plain request and answer.
    let (_, head) = upgrade("/other", "websocket");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.ends_with("no upgrade"), "{head}");
    // On a websocket route, only a WebSocket upgrade is relayed.
    let (_, head) = upgrade("/ws/chat", "h2c");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[test]
fn prefixes_must_be_canonical() {
    let err = check_refuses_yaml(
        "upstreams:\n  a: {peers: [\"127.0.0.1:1\"]}\nroutes:\n  - {prefix: //api/, upstream: a}\n  - {prefix: /%61pi/, upstream: a}\n  - {prefix: /a/../b/, upstream: a}\n  - {prefix: /a;b/, upstream: a}\n  - {prefix: /ok/, upstream: a}\n",
    );
    assert_errors(
        &err,
        &[
            ("routes[0].prefix", "requests are matched on \"/api/\""),
            ("routes[1].prefix", "requests are matched on \"/api/\""),
            ("routes[2].prefix", "dot segments"),
            ("routes[3].prefix", "semicolon"),
        ],
    );
    assert!(!err.contains("routes[4]"), "{err}");
    let err = check_refuses_yaml(
        "server:\n  encoded_slashes: sometimes\nupstreams:\n  a: {peers: [\"127.0.0.1:1\"]}\nroutes:\n  - {prefix: /, upstream: a}\n",
    );
    assert_errors(
        &err,
        &[("server.encoded_slashes", "expected `reject` or `forward`")],
    );
}

/// A small deterministic generator (xorshift), so a failure names a reproducible seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// The route the gateway chose for a random path is the location nginx serves for the path the
/// gateway sent it. Three routes go to three nginx ports; each port reports the location its own
/// normalisation picked.
#[test]
fn property_gateway_route_equals_the_upstream_location() {
    let nginx_ports = [free_port(), free_port(), free_port()];
    let mut servers = String::new();
    for (i, p) in nginx_ports.iter().enumerate() {
        servers.push_str(&format!(
            "server {{\n  listen 127.0.0.1:{p};\n  location /api/v1/ {{ return 200 \"{i} v1 $request_uri\"; }}\n  location /api/ {{ return 200 \"{i} api $request_uri\"; }}\n  location / {{ return 200 \"{i} root $request_uri\"; }}\n}}\n"
        ));
    }
    // Nginx::start substitutes LISTEN only; these blocks name their ports.
    let nginx = Nginx::start(&format!(
        "server {{ listen LISTEN; return 404; }}\n{servers}"
    ));
    let gw = Gateway::start(&format!(
        "upstreams:\n  v1: {{peers: [\"127.0.0.1:{}\"]}}\n  api: {{peers: [\"127.0.0.1:{}\"]}}\n  root: {{peers: [\"127.0.0.1:{}\"]}}\nroutes:\n  - {{prefix: /api/v1/, upstream: v1}}\n  - {{prefix: /api/, upstream: api}}\n  - {{prefix: /, upstream: root}}\n",
        nginx_ports[0], nginx_ports[1], nginx_ports[2]
    ));
    let names = ["v1", "api", "root"];
    let pieces = [
        "/", "//", "api", "v1", "%61", "%61pi", "%76%31", "%2f", "%2F", "%2e", ".", "..", ";", "x",
        "%41", "%7e", "~", "%25", "%2561", "?q=/api/", "a%20b", "%", "%5c", "\\", "%00",
    ];
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..300 {
        let n = 1 + rng.next() % 6;
        let mut path = String::from("/");
        for _ in 0..n {
            path.push_str(rng.pick(&pieces));
        }
        let r = send(gw.addr, &path, "HTTP/1.1\r\nHost: h\r\n").expect("a response");
        if r.status == 400 {
            refused += 1;
            continue;
        }
        assert_eq!(r.status, 200, "{path}");
        accepted += 1;
        // "<port index> <location> <request_uri>"
        let text = body(&r);
        let mut f = text.splitn(3, ' ');
        let (port_i, location, sent) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let chosen = names[port_i.parse::<usize>().unwrap()];
        assert_eq!(
            chosen, location,
            "{path}: the gateway chose {chosen}, nginx served {location} for {sent}"
        );
        // Canonical is a fixed point: sending what the upstream got gives the same.
        let again = body(&send(gw.addr, sent, "HTTP/1.1\r\nHost: h\r\n").unwrap());
        assert_eq!(again, text, "{path} -> {sent}");
    }
    assert!(
        accepted > 50 && refused > 50,
        "accepted {accepted}, refused {refused}"
    );
    assert_eq!(nginx.hits(), 2 * accepted);
}

/// Every response on one connection, in order (Content-Length framed, as the gateway's and the
/// echo server's are).
fn responses(buf: &[u8]) -> Vec<Response> {
    let mut out = Vec::new();
    let mut rest = buf;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        let total = end + 4 + len;
        out.push(parse_response(&rest[..total]).unwrap());
        rest = &rest[total..];
    }
    out
}

fn pipelined(addr: SocketAddr, bytes: &[u8]) -> Vec<Response> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    responses(&buf)
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let echo = echo();
    let gw = readme_layout(echo.addr, "");
    let rs = pipelined(
        gw.addr,
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b%2fc HTTP/1.1\r\nHost: h\r\n\r\nGET //d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 400, 200]);
    assert_eq!(rs[0].json()["path"], "/a");
    assert_eq!(rs[2].json()["path"], "/d");
    assert_eq!(echo.hits(), 2);

    // A refused request with a body it never read ends the connection: what follows the body
    // (here a request hidden in it) is never served.
    let rs = pipelined(
        gw.addr,
        b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401]);
    assert_eq!(echo.hits(), 2);
}

/// A real WebSocket client and echo server (Python `websockets`) through a protected route
/// with `websocket: true`: checked like any request, then frames both ways.
#[test]
fn websocket_on_a_protected_route() {
    use std::io::BufRead;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ws_peer.py");
    let mut server = std::process::Command::new("python3")
        .arg(&script)
        .arg("server")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().unwrap();
    let gw = Gateway::start(&format!(
        "upstreams:\n  ws: {{peers: [\"127.0.0.1:{port}\"]}}\nkeys:\n  k: {{secret: \"0123456789abcdef0123456789abcdef\"}}\nauth:\n  p: {{keys: k, algorithms: [HS256]}}\nroutes:\n  - {{prefix: /ws/, upstream: ws, auth: p, websocket: true}}\n  - {{prefix: /plain/, upstream: ws, auth: p}}\n"
    ));
    let client = |path: &str, token: Option<&str>| -> serde_json::Value {
        let mut c = std::process::Command::new("python3");
        c.arg(&script)
            .arg("client")
            .arg(format!("ws://{}{path}", gw.addr));
        if let Some(t) = token {
            c.arg(t);
        }
        let out = c.output().unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    let t = token();
    assert_eq!(client("/ws/chat", Some(&t)), json!({"echoed": [4, 4000]}));
    assert_eq!(client("/ws/chat", None), json!({"status": 401}));
    // Admitted, but the route does not relay upgrades: the upgrade is never made.
    let r = client("/plain/chat", Some(&t));
    assert!(r["status"].is_number() && r["status"] != 101, "{r}");
    let _ = server.kill();
    let _ = server.wait();
}

/// An upstream whose answer's `Content-Length` fields are chosen by the request path.
fn framing_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let Some(head) = read_head(&mut c) else {
                    return;
                };
                let text = String::from_utf8_lossy(&head);
                let path = text.split(' ').nth(1).unwrap_or("");
                let fields = match path {
                    "/one" => "Content-Length: 2\r\n",
                    "/same-twice" => "Content-Length: 2\r\nContent-Length: 2\r\n",
                    "/same-list" => "Content-Length: 2, 2\r\n",
                    "/conflict" => "Content-Length: 2\r\nContent-Length: 3\r\n",
                    "/conflict-list" => "Content-Length: 2, 3\r\n",
                    "/signed" => "Content-Length: +2\r\n",
                    _ => "Content-Length: 2x\r\n",
                };
                let _ = write!(c, "HTTP/1.1 200 OK\r\n{fields}Connection: close\r\n\r\nok");
            });
        }
    });
    addr
}

/// `Content-Length` framing must be unambiguous: identical repeats are one length, anything
/// else (conflicting values, signs, junk) is refused in either direction, before anything is
/// forwarded (request) or relayed (response).
#[test]
fn content_length_framing_is_unambiguous_both_ways() {
    let echo = echo();
    let gw = readme_layout(echo.addr, "");
    let send = |fields: &str| {
        raw_request(
            gw.addr,
            format!("POST /up HTTP/1.1\r\nHost: h\r\n{fields}Connection: close\r\n\r\nhello")
                .as_bytes(),
        )
    };
    let r = send("Content-Length: 5\r\n").expect("a response");
    assert_eq!((r.status, r.json()["body"].as_str()), (200, Some("hello")));
    assert_eq!(echo.hits(), 1);
    for bad in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: -5\r\n",
        "Content-Length: 5a\r\n",
        "Content-Length: 0x5\r\n",
        "Content-Length: 99999999999999999999999\r\n",
    ] {
        let status = send(bad).map(|r| r.status);
        assert!(
            matches!(status, None | Some(400)),
            "{bad:?} was answered {status:?}"
        );
    }
    assert_eq!(echo.hits(), 1, "an ambiguous request reached the upstream");

    let up = framing_upstream();
    let gw = Gateway::start(&format!(
        "upstreams:\n  web: {{peers: [\"{up}\"]}}\nroutes:\n  - {{prefix: /, upstream: web}}\n"
    ));
    for ok in ["/one", "/same-twice", "/same-list"] {
        let r = gw.get(ok, &[]);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]), "{ok}");
    }
    for bad in ["/conflict", "/conflict-list", "/signed", "/junk"] {
        let r = gw.get(bad, &[]);
        assert_eq!(r.status, 502, "{bad}");
        assert_ne!(r.body, b"ok", "{bad}");
    }
}
