//! End to end: TLS listeners (certificates by SNI, TLS 1.2 and 1.3, ALPN h2 and http/1.1),
//! h2c on plain listeners, certificate rotation without a restart, redirect listeners, and the
//! config checks for certificates. Clients: Python's `ssl` (tests/tls_client.py) and curl.

mod common;

use common::certs::{Ca, Leaf};
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Run tests/tls_client.py against `port` with `args`.
fn client(port: u16, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "tls_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

/// curl with the test CA, `name` resolved to the gateway; returns (status, http version,
/// headers and body).
fn curl(ca: &Ca, name: &str, port: u16, path: &str, extra: &[&str]) -> (u16, String, String) {
    let url = format!("https://{name}:{port}{path}");
    let resolve = format!("{name}:{port}:127.0.0.1");
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--cacert"])
        .arg(&ca.pem)
        .args([
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(extra)
        .arg(&url)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {url}: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, last) = text.rsplit_once('\n').unwrap();
    let (code, version) = last.split_once(' ').unwrap();
    (code.parse().unwrap(), version.to_string(), body.to_string())
}

struct Setup {
    ca: Ca,
    api: Leaf,
    wild: Leaf,
    dir: std::path::PathBuf,
}

fn setup() -> Setup {
    let dir = temp_dir();
    let ca = Ca::new(&dir);
    let api = ca.leaf(&dir, "api", &["api.example.com"], false);
    let wild = ca.leaf(&dir, "wild", &["*.example.com"], false);
    Setup { ca, api, wild, dir }
}

/// A gateway with a TLS listener (profile `edge`: api then wildcard) and a plain one, a public
/// and a protected route to an echo server.
fn gateway(s: &Setup, echo: &EchoServer, server_extra: &str) -> (Gateway, u16, u16) {
    let (tls_port, plain_port, admin) = (free_port(), free_port(), free_port());
    let yaml = format!(
        r#"server:
  listen:
    - {{addr: "127.0.0.1:{tls_port}", tls: edge}}
    - "127.0.0.1:{plain_port}"
  threads: 1
  admin: "127.0.0.1:{admin}"
{server_extra}
tls:
  edge:
    certificates:
      - {{cert: "{}", key: "{}"}}
      - {{cert: "{}", key: "{}"}}
upstreams:
  api: {{peers: ["{}"]}}
keys:
  k: {{secret: "0123456789abcdef0123456789abcdef"}}
auth:
  p: {{keys: k, algorithms: [HS256], forward_claims: {{X-User: sub}}}}
routes:
  - {{prefix: /api/, upstream: api, auth: p}}
  - {{prefix: /, upstream: api}}
"#,
        s.api.cert.display(),
        s.api.key.display(),
        s.wild.cert.display(),
        s.wild.key.display(),
        echo.addr
    );
    (
        Gateway::start_raw(&yaml, tls_port, admin),
        tls_port,
        plain_port,
    )
}

fn token() -> String {
    hs256(SECRET, &json!({"sub": "alice", "exp": now() + 600}))
}

#[test]
fn certificates_by_sni_tls_versions_and_alpn() {
    let s = setup();
    let echo = echo();
    let (_gw, port, _) = gateway(&s, &echo, "");
    let sha = |args: &[&str]| {
        client(port, args)["cert_sha256"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        sha(&[]),
        s.api.sha256,
        "no SNI: the default (first) certificate"
    );
    assert_eq!(sha(&["--sni", "api.example.com"]), s.api.sha256);
    assert_eq!(sha(&["--sni", "foo.example.com"]), s.wild.sha256);
    assert_eq!(sha(&["--sni", "FOO.Example.com"]), s.wild.sha256);
    assert_eq!(
        sha(&["--sni", "a.b.example.com"]),
        s.api.sha256,
        "a wildcard is one label"
    );
    assert_eq!(sha(&["--sni", "other.test"]), s.api.sha256);
    // Verified by a client that trusts the CA, for the name it asked for.
    let ca = s.ca.pem.to_str().unwrap();
    let r = client(
        port,
        &["--sni", "x.example.com", "--cafile", ca, "--get", "/hello"],
    );
    assert_eq!(r["statuses"], json!([200]), "{r}");

    for v in ["1.2", "1.3"] {
        let r = client(port, &["--tls", v, "--get", "/x"]);
        assert_eq!(r["version"], format!("TLSv{v}"), "{r}");
        assert_eq!(r["statuses"], json!([200]));
    }
    assert_eq!(client(port, &["--alpn", "h2,http/1.1"])["alpn"], "h2");
    let r = client(port, &["--alpn", "http/1.1", "--get", "/x"]);
    assert_eq!(r["alpn"], "http/1.1");
    assert_eq!(r["statuses"], json!([200]));

    // curl over h2 and over HTTP/1.1 on the same port.
    let (code, version, _) = curl(&s.ca, "api.example.com", port, "/x", &["--http2"]);
    assert_eq!((code, version.as_str()), (200, "2"));
    let (code, version, _) = curl(&s.ca, "api.example.com", port, "/x", &["--http1.1"]);
    assert_eq!((code, version.as_str()), (200, "1.1"));
}

/// A returning client resumes its session (TLS 1.2 session id, TLS 1.3 ticket) on a profile
/// with the default `session_resumption`, and makes a full handshake every time on one with it
/// off; both answer the requests of every connection. A reload cannot change it for a running
/// listener, and says so.
#[test]
fn sessions_resume_unless_the_profile_turns_resumption_off() {
    let s = setup();
    let echo = echo();
    let (gw, on, off) = two_profiles(&s, &echo, "session_resumption: false");
    for v in ["1.2", "1.3"] {
        let r = client(on, &["--tls", v, "--get", "/x", "--resume", "2"]);
        assert_eq!(r["version"], format!("TLSv{v}"), "{r}");
        assert_eq!(
            r["resumed"],
            json!([true, true]),
            "TLS {v}, resumption on: {r}"
        );
        assert_eq!(r["resumed_statuses"], json!([[200], [200]]), "{r}");
        let r = client(off, &["--tls", v, "--get", "/x", "--resume", "2"]);
        assert_eq!(
            r["resumed"],
            json!([false, false]),
            "TLS {v}, resumption off: {r}"
        );
        assert_eq!(r["resumed_statuses"], json!([[200], [200]]), "{r}");
    }
    // Turned on by a reload: the running listener keeps what it started with, and says so.
    let conf = gw.dir.join("portcullis.yaml");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, text.replace(", session_resumption: false", "")).unwrap();
    gw.signal("-HUP");
    eventually("the reload's warning", Duration::from_secs(5), || {
        gw.log()
            .contains("tls.second.session_resumption changed: restart to apply")
            .then_some(())
    });
    let r = client(off, &["--get", "/x", "--resume", "1"]);
    assert_eq!(r["resumed"], json!([false]), "{r}");
}

/// `session_cache` bounds the sessions a listener keeps, oldest out first: with room for 4 (two
/// TLS 1.3 tickets a handshake), a session is gone after three more clients came; with the
/// default (20000) it is still there after 150 — which rustls' own default of 256 would not
/// keep.
#[test]
fn the_session_cache_keeps_the_newest_sessions_up_to_its_size() {
    let s = setup();
    let echo = echo();
    let (_gw, big, small) = two_profiles(&s, &echo, "session_cache: 4");
    let run = |port: u16, fresh: &str| {
        client(
            port,
            &[
                "--tls", "1.3", "--get", "/x", "--fresh", fresh, "--resume", "1",
            ],
        )
    };
    assert_eq!(run(small, "0")["resumed"], json!([true]), "room for it");
    assert_eq!(run(small, "3")["resumed"], json!([false]), "pushed out");
    assert_eq!(
        run(big, "150")["resumed"],
        json!([true]),
        "the default keeps it"
    );
}

/// A gateway with two TLS listeners, profile `first` (defaults) and profile `second` (the same
/// certificate and `second_fields`), both proxying to `echo`; returns their ports.
fn two_profiles(s: &Setup, echo: &EchoServer, second_fields: &str) -> (Gateway, u16, u16) {
    let (first, second, admin) = (free_port(), free_port(), free_port());
    let pair = format!(
        r#"{{cert: "{}", key: "{}"}}"#,
        s.api.cert.display(),
        s.api.key.display()
    );
    let yaml = format!(
        r#"server:
  listen:
    - {{addr: "127.0.0.1:{first}", tls: first}}
    - {{addr: "127.0.0.1:{second}", tls: second}}
  threads: 1
  admin: "127.0.0.1:{admin}"
tls:
  first: {{certificates: [{pair}]}}
  second: {{certificates: [{pair}], {second_fields}}}
upstreams:
  api: {{peers: ["{}"]}}
routes:
  - {{prefix: /, upstream: api}}
"#,
        echo.addr
    );
    let gw = Gateway::start_raw(&yaml, first, admin);
    // One service holds both listeners, started together; make sure of the second.
    eventually("the second listener", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", second)).ok()
    });
    (gw, first, second)
}

#[test]
fn auth_behaves_the_same_over_h2_and_h2c() {
    let s = setup();
    let echo = echo();
    let (gw, port, plain) = gateway(&s, &echo, "");
    let bearer = format!("Authorization: Bearer {}", token());
    // Over TLS + h2.
    let (code, _, text) = curl(&s.ca, "api.example.com", port, "/api/x", &["--http2"]);
    assert_eq!(code, 401);
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{text}"
    );
    let (code, version, text) = curl(
        &s.ca,
        "api.example.com",
        port,
        "//api/x",
        &["--http2", "-H", &bearer, "-H", "X-User: mallory"],
    );
    assert_eq!((code, version.as_str()), (200, "2"), "{text}");
    let r = parse_response(text.as_bytes()).expect("curl's answer");
    assert_eq!(r.json()["path"], "/api/x", "the canonical path over h2 too");
    assert_eq!(r.upstream_headers("x-user"), ["alice"]);
    assert_eq!(
        r.upstream_headers("host"),
        [format!("api.example.com:{port}")]
    );
    assert_eq!(r.upstream_headers("x-forwarded-proto"), ["https"]);

    // h2c with prior knowledge on the plain listener, HTTP/1.1 on the same port.
    let h2c = |extra: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .args(extra)
            .arg(format!("http://127.0.0.1:{plain}/api/x"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(h2c(&["--http2-prior-knowledge"]), "401 2");
    assert_eq!(h2c(&["--http2-prior-knowledge", "-H", &bearer]), "200 2");
    assert_eq!(h2c(&["-H", &bearer]), "200 1.1");
    assert_eq!(
        gw.metric("portcullis_jwt_validations_total{policy=\"p\",result=\"missing\"}"),
        2.0
    );
}

#[test]
fn http2_off_means_no_h2_anywhere() {
    let s = setup();
    let echo = echo();
    let (_gw, port, plain) = gateway(&s, &echo, "  http2: false");
    assert_ne!(client(port, &["--alpn", "h2,http/1.1"])["alpn"], "h2");
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--http2-prior-knowledge",
        ])
        .arg(format!("http://127.0.0.1:{plain}/x"))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&out.stdout), "200");
}

/// Wait until a new handshake for `sni` shows `sha`.
fn wait_for_cert(port: u16, sni: &str, sha: &str) {
    eventually("the new certificate", Duration::from_secs(10), || {
        (client(port, &["--sni", sni])["cert_sha256"] == sha).then_some(())
    });
}

#[test]
fn certificates_rotate_on_disk_and_on_reload_without_dropping_connections() {
    let s = setup();
    let echo = echo();
    let (gw, port, _) = gateway(&s, &echo, "");
    let ok = "portcullis_tls_certificate_reloads_total{profile=\"edge\",result=\"ok\"}";
    let bad = "portcullis_tls_certificate_reloads_total{profile=\"edge\",result=\"error\"}";

    // A connection opened now, used again after the rotation.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls_client.py");
    let open = std::process::Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .args([
            "--sni",
            "api.example.com",
            "--get",
            "/1",
            "--get",
            "/2",
            "--pause",
            "3",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // Renewal the certbot way: new files written aside, renamed over the old ones.
    let renewed =
        s.ca.leaf(&s.dir, "api-renewed", &["api.example.com"], false);
    std::fs::rename(&renewed.key, &s.api.key).unwrap();
    std::fs::rename(&renewed.cert, &s.api.cert).unwrap();
    wait_for_cert(port, "api.example.com", &renewed.sha256);
    assert!(gw.metric(ok) >= 1.0);

    let out = open.wait_with_output().unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        r["statuses"],
        json!([200, 200]),
        "the open connection went on: {r}"
    );
    assert_eq!(
        r["cert_sha256"], s.api.sha256,
        "it kept the certificate it had"
    );

    // A bad rotation (a key that does not fit): the certificate in force keeps serving.
    let other = s.ca.leaf(&s.dir, "other", &["api.example.com"], false);
    std::fs::copy(&other.key, &s.api.key).unwrap();
    eventually("the bad rotation counted", Duration::from_secs(10), || {
        (gw.metric(bad) >= 1.0).then_some(())
    });
    assert_eq!(
        client(port, &["--sni", "api.example.com"])["cert_sha256"],
        renewed.sha256
    );
    assert!(gw.log().contains("keep serving"), "{}", gw.log());

    // Reload with a config naming other files: served from the next handshake on.
    let expiry_of = |cert: &std::path::Path| {
        format!(
            "portcullis_tls_certificate_expiry_timestamp_seconds{{certificate=\"{}\",profile=\"edge\"}}",
            cert.display()
        )
    };
    assert!(gw.metric(&expiry_of(&s.api.cert)) > now() as f64);
    let conf = gw.dir.join("portcullis.yaml");
    let text = std::fs::read_to_string(&conf).unwrap();
    let third = s.ca.leaf(&s.dir, "third", &["api.example.com"], false);
    let text = text
        .replace(
            &s.api.cert.display().to_string(),
            &third.cert.display().to_string(),
        )
        .replace(
            &s.api.key.display().to_string(),
            &third.key.display().to_string(),
        );
    std::fs::write(&conf, text).unwrap();
    gw.signal("-HUP");
    wait_for_cert(port, "api.example.com", &third.sha256);
    // Expiry is exported per certificate served: the new file's appears, the file no longer
    // named loses its series (an expiry alert must not go on firing for it), the wildcard keeps
    // its own.
    let expiry = expiry_of(&third.cert);
    assert!(
        gw.metric(&expiry) > now() as f64,
        "no expiry gauge {expiry}"
    );
    let body = request(gw.admin, "GET", "/metrics", &[], None).body;
    let body = String::from_utf8(body).unwrap();
    assert!(
        !body.contains(&expiry_of(&s.api.cert)),
        "the replaced certificate's expiry is still exported:\n{body}"
    );
    assert!(gw.metric(&expiry_of(&s.wild.cert)) > now() as f64);
}

#[test]
fn redirect_listener_answers_308_and_proxies_nothing() {
    let echo = echo();
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "server:\n  listen:\n    - {{addr: \"127.0.0.1:{port}\", redirect_https: 443}}\n  threads: 1\n  admin: \"127.0.0.1:{admin}\"\nupstreams:\n  api: {{peers: [\"{}\"]}}\nroutes:\n  - {{prefix: /, upstream: api}}\n",
        echo.addr
    );
    let gw = Gateway::start_raw(&yaml, port, admin);
    let r = send_raw(
        gw.addr,
        "GET //a/%62?q=1 HTTP/1.1\r\nHost: API.example.com:80\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://api.example.com/a/b?q=1")
    );
    let r = send_raw(gw.addr, "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 400);
    assert_eq!(echo.hits(), 0);
}

fn send_raw(addr: std::net::SocketAddr, raw: &str) -> Response {
    raw_request(addr, raw.as_bytes()).expect("a response")
}

#[test]
fn certificate_problems_are_check_errors_naming_the_file() {
    let s = setup();
    let expired = s.ca.leaf(&s.dir, "expired", &["old.example.com"], true);
    let conf = |certs: &str, listen: &str| {
        format!(
            "server:\n  listen: [{listen}]\ntls:\n  edge:\n    certificates: [{certs}]\nupstreams:\n  a: {{peers: [\"127.0.0.1:1\"]}}\nroutes:\n  - {{prefix: /, upstream: a}}\n"
        )
    };
    let pair =
        |c: &Path, k: &Path| format!("{{cert: \"{}\", key: \"{}\"}}", c.display(), k.display());
    let tls = "{addr: \"127.0.0.1:8443\", tls: edge}";
    let missing = s.dir.join("missing.pem");
    let err = check_refuses_yaml(&conf(
        &format!(
            "{}, {}, {}",
            pair(&missing, &s.api.key),
            pair(&s.api.cert, &s.wild.key),
            pair(&s.api.key, &s.api.key)
        ),
        tls,
    ));
    assert_errors(
        &err,
        &[
            ("tls.edge.certificates[0].cert", "missing.pem"),
            (
                "tls.edge.certificates[1].key",
                "is not the key of the certificate",
            ),
            ("tls.edge.certificates[2].cert", "no PEM certificate"),
        ],
    );
    let err = check_refuses_yaml(&conf(&pair(&s.api.cert, &s.api.key), tls).replace(
        "    certificates:",
        "    session_cache: 0\n    certificates:",
    ));
    assert_errors(
        &err,
        &[("tls.edge.session_cache", "between 1 and 10000000")],
    );
    let err = check_refuses_yaml(&conf(
        &pair(&s.api.cert, &s.api.key),
        "{addr: \"127.0.0.1:8443\", tls: nope}, {addr: \"127.0.0.1:80\", tls: edge, redirect_https: 443}, {addr: \"nowhere\", tls: edge}",
    ));
    assert_errors(
        &err,
        &[
            (
                "server.listen[0].tls",
                "unknown tls profile \"nope\" (defined: edge)",
            ),
            ("server.listen[1]", "exclude each other"),
            ("server.listen[2].addr", "invalid address \"nowhere\""),
        ],
    );
    let err = check_refuses_yaml(&conf(
        &pair(&s.api.cert, &s.api.key),
        "\"127.0.0.1:80\", {addr: \"127.0.0.1:81\", tsl: edge}",
    ));
    assert_errors(&err, &[("server.listen[1]", "unknown field `tsl`")]);
    let err = check_refuses_yaml(&conf("", tls));
    assert_errors(
        &err,
        &[("tls.edge.certificates", "at least one certificate")],
    );

    // Expired: a warning, not an error.
    let p = s.dir.join("expired.yaml");
    std::fs::write(
        &p,
        conf(
            &format!(
                "{}, {}",
                pair(&s.api.cert, &s.api.key),
                pair(&expired.cert, &expired.key)
            ),
            tls,
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: tls.edge.certificates[1].cert:")
            && stderr.contains("has expired"),
        "{stderr}"
    );
}

/// A gateway whose TLS profile asks for client certificates from `client_ca`, with a route
/// whose policy binds tokens to them (RFC 8705) and one whose policy does not.
fn mtls_gateway(s: &Setup, client_ca: &Ca, required: bool, echo: &EchoServer) -> (Gateway, u16) {
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        r#"server:
  listen: [{{addr: "127.0.0.1:{port}", tls: edge}}]
  threads: 1
  admin: "127.0.0.1:{admin}"
tls:
  edge:
    certificates: [{{cert: "{}", key: "{}"}}]
    client_auth: {{ca: "{}", required: {required}}}
upstreams:
  api: {{peers: ["{}"]}}
keys:
  k: {{secret: "0123456789abcdef0123456789abcdef"}}
auth:
  bank: {{keys: k, algorithms: [HS256], require_certificate_binding: true}}
  plain: {{keys: k, algorithms: [HS256]}}
routes:
  - {{prefix: /bank/, upstream: api, auth: bank}}
  - {{prefix: /plain/, upstream: api, auth: plain}}
access_log: {{path: "{}/access.log"}}
"#,
        s.api.cert.display(),
        s.api.key.display(),
        client_ca.pem.display(),
        echo.addr,
        s.dir.display()
    );
    (Gateway::start_raw(&yaml, port, admin), port)
}

#[test]
fn certificate_bound_tokens_need_the_certificate_they_name() {
    let s = setup();
    let clients_dir = s.dir.join("clients");
    std::fs::create_dir_all(&clients_dir).unwrap();
    let clients = Ca::new(&clients_dir);
    let (alice, alice_x5t) = clients.client(&clients_dir, "alice", "alice");
    let (_bob, bob_x5t) = clients.client(&clients_dir, "bob", "bob");
    let echo = echo();
    let (gw, port) = mtls_gateway(&s, &clients, false, &echo);
    let bound = |x5t: &str| {
        hs256(
            SECRET,
            &json!({"sub": "alice", "exp": now() + 600, "cnf": {"x5t#S256": x5t}}),
        )
    };
    let (ac, ak) = (alice.cert.to_str().unwrap(), alice.key.to_str().unwrap());
    let req = |cert: bool, token: &str, path: &str| {
        let h = format!("Authorization: Bearer {token}");
        let mut args = vec!["--header", h.as_str(), "--get", path];
        if cert {
            args.extend(["--cert", ac, "--key", ak]);
        }
        client(port, &args)
    };
    // The certificate the token names: admitted.
    assert_eq!(
        req(true, &bound(&alice_x5t), "/bank/x")["statuses"],
        json!([200])
    );
    // Another certificate's token, an unbound token, no certificate at all: 401.
    let r = req(true, &bound(&bob_x5t), "/bank/x");
    assert_eq!(r["statuses"], json!([401]));
    assert!(
        r["www_authenticate"]
            .as_str()
            .unwrap()
            .contains("certificate binding mismatch"),
        "{r}"
    );
    assert_eq!(req(true, &token(), "/bank/x")["statuses"], json!([401]));
    let r = req(false, &bound(&alice_x5t), "/bank/x");
    assert_eq!(r["statuses"], json!([401]));
    assert!(
        r["www_authenticate"]
            .as_str()
            .unwrap()
            .contains("client certificate required"),
        "{r}"
    );
    // A policy without binding does not care (client_auth is optional here).
    assert_eq!(req(false, &token(), "/plain/x")["statuses"], json!([200]));
    assert_eq!(echo.hits(), 2);
    assert_eq!(
        gw.metric(&format!(
            "portcullis_tls_handshakes_total{{client_cert=\"yes\",listener=\"127.0.0.1:{port}\"}}"
        )),
        3.0
    );
    // The access log names the client certificate.
    let line = access_log_line(&s.dir.join("access.log"), |_| true);
    assert_eq!(line["client_cert"]["subject"], "CN=alice", "{line}");
    assert_eq!(line["client_cert"]["sha256"], alice_x5t);
}

#[test]
fn required_client_certificates_fail_the_handshake_without_one() {
    let s = setup();
    let clients_dir = s.dir.join("clients");
    std::fs::create_dir_all(&clients_dir).unwrap();
    let clients = Ca::new(&clients_dir);
    let (alice, _) = clients.client(&clients_dir, "alice", "alice");
    // A certificate from a CA the gateway does not trust.
    let other_dir = s.dir.join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let (mallory, _) = Ca::new(&other_dir).client(&other_dir, "mallory", "mallory");
    let echo = echo();
    let (gw, port) = mtls_gateway(&s, &clients, true, &echo);
    let with = |c: &Leaf| {
        client(
            port,
            &[
                "--cert",
                c.cert.to_str().unwrap(),
                "--key",
                c.key.to_str().unwrap(),
                "--get",
                "/plain/x",
            ],
        )
    };
    let r = with(&alice);
    assert_eq!(
        r["statuses"],
        json!([401]),
        "trusted: the request is made: {r}"
    );
    for r in [client(port, &["--get", "/plain/x"]), with(&mallory)] {
        assert!(
            r.get("error").is_some(),
            "no certificate / untrusted: refused: {r}"
        );
    }
    assert_eq!(echo.hits(), 0);
    // Three hellos, one completed handshake, one certificate rejected.
    let m = |s: &str| gw.metric(s);
    assert_eq!(
        m("portcullis_tls_client_hellos_total{profile=\"edge\"}"),
        3.0
    );
    assert_eq!(
        m("portcullis_tls_client_certificates_rejected_total{profile=\"edge\"}"),
        1.0
    );
    let done = format!(
        "portcullis_tls_handshakes_total{{client_cert=\"yes\",listener=\"127.0.0.1:{port}\"}}"
    );
    assert_eq!(m(&done), 1.0);
    // Both refusals counted as failed handshakes for the client certificate's sake.
    let refused = format!(
        "portcullis_tls_handshake_failures_total{{listener=\"127.0.0.1:{port}\",reason=\"client_certificate\"}}"
    );
    settles(&gw, &refused, 2.0);
}

/// Wait (up to 5 s) for `series` to read `want`: a failed handshake is counted by the
/// gateway's task as it drops the connection, which may be just after the client gave up.
fn settles(gw: &Gateway, series: &str, want: f64) {
    let what = format!("{series} at {want}");
    eventually(&what, Duration::from_secs(5), || {
        (gw.metric(series) == want).then_some(())
    });
}

/// Every failed handshake is counted once, by why it failed, on the listener it failed on.
#[test]
fn failed_handshakes_are_counted_by_reason() {
    let s = setup();
    let echo = echo();
    let (gw, port, _) = gateway(&s, &echo, "");
    let series = |reason: &str| {
        format!(
            "portcullis_tls_handshake_failures_total{{listener=\"127.0.0.1:{port}\",reason=\"{reason}\"}}"
        )
    };
    // Counts from here on. Starting the gateway probed the port (one or more connections closed
    // unused, each counted as the gateway's task drops it): wait until those are all counted, so
    // none lands after the baseline is read.
    eventually(
        "the start-up probes counted",
        Duration::from_secs(5),
        || (gw.metric(&series("closed")) >= 1.0).then_some(()),
    );
    let mut probes = gw.metric(&series("closed"));
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = gw.metric(&series("closed"));
        if now == probes {
            break;
        }
        probes = now;
    }
    let reasons = [
        "closed",
        "protocol_error",
        "incompatible",
        "alert",
        "client_certificate",
        "other",
    ];
    let before: Vec<f64> = reasons.iter().map(|r| gw.metric(&series(r))).collect();
    let base = |reason: &str| before[reasons.iter().position(|r| *r == reason).unwrap()];
    let counted = |reason: &str, more: f64| settles(&gw, &series(reason), base(reason) + more);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Connected and gone.
    drop(std::net::TcpStream::connect(addr).unwrap());
    counted("closed", 1.0);
    // Plaintext HTTP on the TLS port: refused, and nothing reaches the upstream.
    let mut plain = std::net::TcpStream::connect(addr).unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
        .unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"));
    counted("protocol_error", 1.0);
    // TLS 1.2 offering only a cipher suite rustls does not have (RSA key exchange).
    let r = client(
        port,
        &["--tls", "1.2", "--ciphers", "AES128-SHA:@SECLEVEL=0"],
    );
    assert!(r.get("error").is_some(), "{r}");
    counted("incompatible", 1.0);
    // A client that does not trust the certificate it is served ends with an alert.
    let other_dir = s.dir.join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = Ca::new(&other_dir);
    let r = client(
        port,
        &[
            "--sni",
            "api.example.com",
            "--cafile",
            other.pem.to_str().unwrap(),
        ],
    );
    assert!(r.get("error").is_some(), "{r}");
    counted("alert", 1.0);
    // A good handshake counts none of these.
    let r = client(port, &["--sni", "api.example.com", "--get", "/x"]);
    assert_eq!(r["statuses"], json!([200]), "{r}");
    for (reason, more) in reasons.iter().zip([1.0, 1.0, 1.0, 1.0, 0.0, 0.0]) {
        assert_eq!(gw.metric(&series(reason)), base(reason) + more, "{reason}");
    }
    assert_eq!(echo.hits(), 1);
    // Counted, not logged as errors: a port probe or a scanner must not fill the error log
    // (Pingora patch 22). At the default log level nothing about them is written.
    let log = gw.log();
    assert!(
        !log.lines().any(|l| l.contains("handshake")),
        "failed handshakes logged:\n{log}"
    );
}

/// What `openssl s_client` prints for a handshake without a client certificate.
fn s_client(port: u16) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "api.test"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn client_auth_names_its_ca_and_turns_on_and_off_at_reload() {
    let s = setup();
    let clients_dir = s.dir.join("clients");
    std::fs::create_dir_all(&clients_dir).unwrap();
    let clients = Ca::named(&clients_dir, "portcullis clients CA");
    let (alice, _) = clients.client(&clients_dir, "alice", "alice");
    let echo = echo();
    let (gw, port) = mtls_gateway(&s, &clients, true, &echo);
    // The CertificateRequest names the CA, so a client with several certificates can pick.
    let hello = s_client(port);
    let hints = hello
        .split("Acceptable client certificate CA names")
        .nth(1)
        .unwrap_or_default();
    assert!(hints.contains("CN = portcullis clients CA"), "{hello}");
    let bare = || client(port, &["--get", "/plain/x"]);
    let alice_get = || {
        let (c, k) = (alice.cert.to_str().unwrap(), alice.key.to_str().unwrap());
        client(port, &["--cert", c, "--key", k, "--get", "/plain/x"])
    };
    assert!(bare().get("error").is_some());
    // client_auth removed at reload: no certificate is asked for from the next handshake.
    let conf = gw.dir.join("portcullis.yaml");
    let with_auth = std::fs::read_to_string(&conf).unwrap();
    let without: String = with_auth
        .lines()
        .filter(|l| !l.contains("client_auth"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&conf, &without).unwrap();
    gw.signal("-HUP");
    eventually("no certificate asked", Duration::from_secs(5), || {
        (bare()["statuses"] == json!([401])).then_some(())
    });
    assert!(!s_client(port).contains("Acceptable client certificate CA names"));
    // And added back: required again.
    std::fs::write(&conf, &with_auth).unwrap();
    gw.signal("-HUP");
    eventually("certificate required again", Duration::from_secs(5), || {
        bare().get("error").is_some().then_some(())
    });
    assert_eq!(alice_get()["statuses"], json!([401]));
    assert!(!gw.log().contains("restart to apply"), "{}", gw.log());
}

/// The same refusals over HTTP/1.1 and h2: status, challenge, rate-limit headers and body.
#[test]
fn refusals_are_identical_over_http1_and_h2() {
    let s = setup();
    let echo = echo();
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        r#"server:
  listen: [{{addr: "127.0.0.1:{port}", tls: edge}}]
  threads: 1
  admin: "127.0.0.1:{admin}"
tls:
  edge: {{certificates: [{{cert: "{}", key: "{}"}}]}}
upstreams:
  api: {{peers: ["{}"]}}
keys:
  k: {{secret: "0123456789abcdef0123456789abcdef"}}
auth:
  p: {{keys: k, algorithms: [HS256], require: [{{claim: scope, contains: [admin]}}]}}
  q: {{keys: k, algorithms: [HS256]}}
rate_limits:
  one: {{key: "claim:sub", rate: 1/m, burst: 1}}
routes:
  - {{prefix: /admin/, upstream: api, auth: p}}
  - {{prefix: /limited/, upstream: api, auth: q, rate_limit: one}}
"#,
        s.api.cert.display(),
        s.api.key.display(),
        echo.addr
    );
    let _gw = Gateway::start_raw(&yaml, port, admin);
    let reader = hs256(
        SECRET,
        &json!({"sub": "r", "scope": "read", "exp": now() + 600}),
    );
    // (status, the headers that matter, body), lower-cased names.
    let seen = |path: &str, token: Option<&str>, version: &str| {
        let h = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec![version];
        if let Some(h) = &h {
            args.extend(["-H", h.as_str()]);
        }
        let (code, _, text) = curl(&s.ca, "api.example.com", port, path, &args);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut hs: Vec<String> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| format!("{}: {}", k.trim().to_ascii_lowercase(), v.trim()))
            .filter(|l| {
                [
                    "www-authenticate",
                    "content-type",
                    "retry-after",
                    "ratelimit-",
                    "cache-control",
                ]
                .iter()
                .any(|p| l.starts_with(p))
            })
            .collect();
        hs.sort();
        (code, hs, body.to_string())
    };
    let a = seen("/admin/x", None, "--http1.1");
    assert_eq!(a.0, 401);
    assert_eq!(a, seen("/admin/x", None, "--http2"));
    let b = seen("/admin/x", Some(&reader), "--http1.1");
    assert_eq!(b.0, 403);
    assert_eq!(b, seen("/admin/x", Some(&reader), "--http2"));
    // One request per minute: the first passes, then two 429s, one per protocol.
    assert_eq!(seen("/limited/x", Some(&reader), "--http1.1").0, 200);
    let c = seen("/limited/x", Some(&reader), "--http1.1");
    assert_eq!(c.0, 429);
    let d = seen("/limited/x", Some(&reader), "--http2");
    assert_eq!((d.0, &d.2), (429, &c.2));
    let names = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|l| l.split(':').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&c.1), names(&d.1), "{c:?} vs {d:?}");
    assert_eq!(echo.hits(), 1);
}

#[test]
fn proxy_protocol_on_a_tls_listener_names_the_client() {
    let s = setup();
    let echo = echo();
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        r#"server:
  listen:
    - {{addr: "127.0.0.1:{port}", tls: edge, proxy_protocol: true}}
  threads: 1
  admin: "127.0.0.1:{admin}"
  trusted_proxies: ["127.0.0.1/32"]
tls:
  edge: {{certificates: [{{cert: "{}", key: "{}"}}]}}
upstreams:
  api: {{peers: ["{}"]}}
routes:
  - {{prefix: /, upstream: api}}
"#,
        s.api.cert.display(),
        s.api.key.display(),
        echo.addr
    );
    let gw = Gateway::start_raw(&yaml, port, admin);
    // What the upstream is told about the client, for a connection that begins with `args`.
    let seen = |args: &[&str]| -> (String, String) {
        let r = client(port, &[args, &["--get", "/x"]].concat());
        assert_eq!(r["statuses"], json!([200]), "{r} {}", gw.log());
        let echoed = Response {
            status: 200,
            headers: Vec::new(),
            body: r["bodies"][0].as_str().unwrap().as_bytes().to_vec(),
        };
        let h = |n: &str| echoed.upstream_headers(n).join(",");
        (h("x-real-ip"), h("x-forwarded-for"))
    };
    let (real, xff) = seen(&["--proxy-v1", "PROXY TCP4 203.0.113.7 127.0.0.1 51234 443"]);
    assert_eq!(
        (real.as_str(), xff.as_str()),
        ("203.0.113.7", "203.0.113.7")
    );
    let (real, _) = seen(&["--proxy-v2", "198.51.100.9:4000"]);
    assert_eq!(real, "198.51.100.9");
    // Without a header, or with garbage: the connection is closed before TLS.
    for args in [&[][..], &["--proxy-v1", "PROXY TCP4 nonsense"][..]] {
        let r = client(port, &[args, &["--get", "/x"]].concat());
        assert!(r.get("error").is_some(), "{r}");
    }
    assert_eq!(echo.hits(), 2);
}
