//! End to end: the metrics a scrape sees and the access log lines written.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Setup {
    echo: EchoServer,
    gw: Gateway,
    log: PathBuf,
}

fn setup() -> Setup {
    let echo = echo();
    let dir = temp_dir();
    let log = dir.join("access.log");
    let revoked = dir.join("revoked.yaml");
    std::fs::write(&revoked, "sub: [mallory]\n").unwrap();
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  api: {{peers: ["{echo}"]}}
  dead: {{peers: ["127.0.0.1:{dead}"]}}
keys:
  hmac: {{secret: "0123456789abcdef0123456789abcdef"}}
auth:
  users:
    keys: hmac
    algorithms: [HS256]
    require: [{{claim: role, equals: user}}]
revocation: {{file: "{revoked}"}}
rate_limits:
  per_sub: {{key: "claim:sub", rate: 1/m, burst: 2}}
access_log:
  path: "{log}"
  claims: [sub, iss]
routes:
  - {{prefix: /api/, upstream: api, auth: users, rate_limit: per_sub}}
  - {{prefix: /down/, upstream: dead}}
  - {{prefix: /pub/, upstream: api}}
"#,
        echo = echo.addr,
        dead = free_port(),
        revoked = revoked.display(),
        log = log.display()
    ));
    Setup { echo, gw, log }
}

/// Scrape `/metrics` into series → value.
fn scrape(gw: &Gateway) -> HashMap<String, f64> {
    let r = request(gw.admin, "GET", "/metrics", &[], None);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    String::from_utf8(r.body)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

fn token(sub: &str, role: &str) -> String {
    hs256(
        SECRET,
        &json!({"sub": sub, "iss": "tests", "role": role, "email": "x@y", "exp": now() + 60}),
    )
}

/// Send the mix every test below looks at.
fn traffic(s: &Setup) {
    for _ in 0..3 {
        assert_eq!(s.gw.get("/pub/x", &[]).status, 200);
    }
    let alice = token("alice", "user");
    assert_eq!(s.gw.bearer("/api/1", &alice).status, 200);
    assert_eq!(s.gw.bearer("/api/2", &alice).status, 200);
    assert_eq!(s.gw.bearer("/api/3", &alice).status, 429);
    assert_eq!(s.gw.get("/api/x", &[]).status, 401);
    assert_eq!(s.gw.bearer("/api/x", "not.a.jwt").status, 401);
    let expired = hs256(
        SECRET,
        &json!({"sub": "bob", "role": "user", "exp": now() - 600}),
    );
    assert_eq!(s.gw.bearer("/api/x", &expired).status, 401);
    assert_eq!(s.gw.bearer("/api/x", &token("carol", "guest")).status, 403);
    assert_eq!(s.gw.bearer("/api/x", &token("mallory", "user")).status, 401);
    assert_eq!(s.gw.get("/nowhere", &[]).status, 404);
    assert_eq!(s.gw.get("/down/x", &[]).status, 502);
}

#[test]
fn metrics_count_exactly_what_happened() {
    let s = setup();
    let before = scrape(&s.gw);
    traffic(&s);
    let after = scrape(&s.gw);
    let expected = [
        (
            r#"portcullis_requests_total{route="/pub/",status="200"}"#,
            3.0,
        ),
        (
            r#"portcullis_requests_total{route="/api/",status="200"}"#,
            2.0,
        ),
        (
            r#"portcullis_requests_total{route="/api/",status="429"}"#,
            1.0,
        ),
        (
            r#"portcullis_requests_total{route="/api/",status="401"}"#,
            4.0,
        ),
        (
            r#"portcullis_requests_total{route="/api/",status="403"}"#,
            1.0,
        ),
        (
            r#"portcullis_requests_total{route="none",status="404"}"#,
            1.0,
        ),
        (
            r#"portcullis_requests_total{route="/down/",status="502"}"#,
            1.0,
        ),
        (
            r#"portcullis_jwt_validations_total{policy="users",result="ok"}"#,
            3.0,
        ),
        (
            r#"portcullis_jwt_validations_total{policy="users",result="missing"}"#,
            1.0,
        ),
        (
            r#"portcullis_jwt_validations_total{policy="users",result="invalid"}"#,
            1.0,
        ),
        (
            r#"portcullis_jwt_validations_total{policy="users",result="expired"}"#,
            1.0,
        ),
        (
            r#"portcullis_jwt_validations_total{policy="users",result="forbidden"}"#,
            1.0,
        ),
        (
            r#"portcullis_jwt_validations_total{policy="users",result="revoked"}"#,
            1.0,
        ),
        (r#"portcullis_rate_limited_total{limit="per_sub"}"#, 1.0),
        (
            r#"portcullis_upstream_errors_total{kind="connect_refused",upstream="dead"}"#,
            1.0,
        ),
        (
            r#"portcullis_request_duration_seconds_count{route="/pub/"}"#,
            3.0,
        ),
        (
            r#"portcullis_upstream_duration_seconds_count{upstream="api"}"#,
            5.0,
        ),
    ];
    for (series, want) in expected {
        assert_eq!(delta(&before, &after, series), want, "{series}");
    }
    assert_eq!(after[r#"portcullis_build_info{version="0.1.0"}"#], 1.0);
    assert_eq!(
        after[r#"portcullis_config_reloads_total{result="error"}"#],
        0.0
    );
    // No label carries a subject or a token.
    let text = String::from_utf8(request(s.gw.admin, "GET", "/metrics", &[], None).body).unwrap();
    for secret in ["alice", "carol", "mallory", "not.a.jwt", "/api/1"] {
        assert!(!text.contains(secret), "{secret} leaked into metrics");
    }
    assert_eq!(s.echo.hits(), 5);
}

/// The access log's lines, once `n` are there.
fn log_lines(s: &Setup, n: usize) -> Vec<Value> {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(&s.log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        if lines.len() >= n || t.elapsed() > Duration::from_secs(5) {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn access_log_lines_carry_the_request_and_allowed_claims() {
    let s = setup();
    traffic(&s);
    let lines = log_lines(&s, 13);
    assert_eq!(lines.len(), 13, "{lines:#?}");
    let by_path = |p: &str| -> &Value {
        lines
            .iter()
            .find(|l| l["path"] == p)
            .unwrap_or_else(|| panic!("no line for {p}"))
    };
    let ok = by_path("/api/1");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["route"], "/api/");
    assert_eq!(ok["upstream"], s.echo.addr.to_string());
    assert_eq!(ok["auth_result"], "ok");
    assert_eq!(ok["jwt"], json!({"alg": "HS256", "kid": null}));
    // Only the allow-listed claims: not email, not role.
    assert_eq!(ok["claims"], json!({"sub": "alice", "iss": "tests"}));
    assert!(ok["remote_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(ok["bytes_sent"].as_u64().unwrap() > 0);
    assert!(ok["duration_ms"].as_f64().unwrap() >= 0.0);
    let time = ok["time"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
    let limited = by_path("/api/3");
    assert_eq!(limited["status"], 429);
    assert_eq!(limited["upstream"], Value::Null);
    let pub_line = by_path("/pub/x");
    assert_eq!(pub_line["auth_result"], Value::Null);
    assert_eq!(pub_line["jwt"], Value::Null);
    assert_eq!(pub_line["claims"], json!({}));
    let results: Vec<&str> = lines
        .iter()
        .filter(|l| l["path"] == "/api/x")
        .map(|l| l["auth_result"].as_str().unwrap())
        .collect();
    assert_eq!(
        results,
        ["missing", "invalid", "expired", "forbidden", "revoked"]
    );
    // Refused tokens' claims are never logged.
    for l in lines.iter().filter(|l| l["path"] == "/api/x") {
        assert_eq!(l["claims"], json!({}), "{l}");
        assert_eq!(l["jwt"], Value::Null, "{l}");
    }
    assert_eq!(by_path("/nowhere")["route"], Value::Null);
    assert_eq!(by_path("/down/x")["status"], 502);
}

#[test]
fn query_strings_stay_out_of_the_log() {
    let s = setup();
    assert_eq!(
        s.gw.get("/pub/x?apijwt=secret.token.value", &[]).status,
        200
    );
    let lines = log_lines(&s, 1);
    assert_eq!(lines[0]["path"], "/pub/x");
    let text = std::fs::read_to_string(&s.log).unwrap();
    assert!(!text.contains("secret.token.value"));
}

#[test]
fn sigusr1_reopens_the_log_file() {
    let s = setup();
    assert_eq!(s.gw.get("/pub/one", &[]).status, 200);
    assert_eq!(log_lines(&s, 1).len(), 1);
    let rotated = s.log.with_extension("log.1");
    std::fs::rename(&s.log, &rotated).unwrap();
    s.gw.signal("-USR1");
    // The writer reopens within its 200 ms tick; requests go on meanwhile.
    let t = Instant::now();
    while !s.log.exists() && t.elapsed() < Duration::from_secs(3) {
        assert_eq!(s.gw.get("/pub/two", &[]).status, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.gw.get("/pub/three", &[]).status, 200);
    let fresh = log_lines(&s, 1);
    assert!(fresh.iter().any(|l| l["path"] == "/pub/three"), "{fresh:?}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("/pub/one"));
    assert!(!old.contains("/pub/three"));
}

#[test]
fn admin_endpoints() {
    let s = setup();
    let r = request(s.gw.admin, "GET", "/readyz", &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["ready"], true);
    assert_eq!(
        request(s.gw.admin, "GET", "/healthz", &[], None).status,
        200
    );
    let r = request(s.gw.admin, "GET", "/metrics/extra", &[], None);
    assert_eq!(r.status, 404);
    assert_eq!(
        request(s.gw.admin, "POST", "/anything", &[], Some(b"x")).status,
        404
    );
}

#[test]
fn the_grafana_dashboard_uses_only_metrics_we_export() {
    // A gateway with a TLS listener, after one request over it and one over plain HTTP, so
    // that the TLS families have series too.
    let echo = echo();
    let dir = temp_dir();
    let ca = common::certs::Ca::new(&dir);
    let leaf = ca.leaf(&dir, "api", &["api.example.com"], false);
    let idp = common::idp::MockIdp::start(vec![common::idp::public_jwk("rsa2")]);
    let (tls_port, plain_port, admin) = (free_port(), free_port(), free_port());
    let gw = Gateway::start_raw(
        &format!(
            r#"server:
  listen: [{{addr: "127.0.0.1:{tls_port}", tls: edge}}, "127.0.0.1:{plain_port}"]
  threads: 1
  admin: "127.0.0.1:{admin}"
tls:
  edge:
    certificates: [{{cert: "{cert}", key: "{key}"}}]
upstreams:
  api: {{peers: ["{echo}"]}}
keys:
  k: {{secret: "0123456789abcdef0123456789abcdef"}}
  idp: {{jwks_url: "{jwks}", refresh: 10m}}
auth:
  p: {{keys: k, algorithms: [HS256]}}
  sso: {{keys: idp, algorithms: [RS256]}}
routes:
  - {{prefix: /api/, upstream: api, auth: p}}
  - {{prefix: /sso/, upstream: api, auth: sso}}
  - {{prefix: /, upstream: api}}
"#,
            jwks = idp.jwks_url(),
            cert = leaf.cert.display(),
            key = leaf.key.display(),
            echo = echo.addr,
        ),
        plain_port,
        admin,
    );
    let curl = std::process::Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--resolve")
        .arg(format!("api.example.com:{tls_port}:127.0.0.1"))
        .arg(format!("https://api.example.com:{tls_port}/x"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "200");
    assert_eq!(gw.bearer("/api/x", &token("alice", "user")).status, 200);
    // With the other families: the gateway that counted every kind of answer.
    let s = setup();
    traffic(&s);
    let text = [gw.admin, s.gw.admin]
        .map(|a| String::from_utf8(request(a, "GET", "/metrics", &[], None).body).unwrap())
        .join("\n");
    let exported: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let dash = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/grafana/portcullis.json"),
    )
    .unwrap();
    let doc: Value = serde_json::from_str(&dash).unwrap();
    let mut used = 0;
    for panel in doc["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for prefix in ["portcullis_", "process_"] {
                for (i, _) in expr.match_indices(prefix) {
                    let name: String = expr[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let family = name.trim_end_matches("_bucket");
                    assert!(exported.contains(&family), "{name} is not exported");
                    used += 1;
                }
            }
        }
    }
    assert!(used >= 30, "{used}");
}

/// The series an on-call engineer reads: process, in-flight requests, peers in service, the
/// token cache, key sets, rate-limit buckets, revocations and the last good reload; and the
/// whole scrape passes `promtool check metrics`.
#[test]
fn operator_metrics_describe_the_gateway_state() {
    let echo = echo();
    let idp = common::idp::MockIdp::start(vec![
        common::idp::public_jwk("rsa2"),
        common::idp::public_jwk("ec1"),
    ]);
    let dead = free_port();
    let dir = temp_dir();
    let revoked = dir.join("revoked.yaml");
    std::fs::write(&revoked, "sub: [mallory, eve]\njti: [t-1]\n").unwrap();
    let started = now() as f64;
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  api:
    peers: ["{echo}", "127.0.0.1:{dead}"]
    health_check: {{kind: tcp, interval: 100ms, timeout: 100ms, unhealthy_after: 1}}
keys:
  hmac: {{secret: "0123456789abcdef0123456789abcdef"}}
  idp: {{jwks_url: "{jwks}", refresh: 10m}}
auth:
  users: {{keys: hmac, algorithms: [HS256]}}
  sso: {{keys: idp, algorithms: [RS256]}}
revocation: {{file: "{revoked}"}}
rate_limits:
  per_sub: {{key: "claim:sub", rate: 100/s, burst: 100}}
routes:
  - {{prefix: /api/, upstream: api, auth: users, rate_limit: per_sub}}
  - {{prefix: /sso/, upstream: api, auth: sso}}
"#,
        echo = echo.addr,
        jwks = idp.jwks_url(),
        revoked = revoked.display(),
    ));
    let dead_peer =
        format!(r#"portcullis_upstream_peer_up{{peer="127.0.0.1:{dead}",upstream="api"}}"#);
    eventually(
        "the dead peer out of service",
        Duration::from_secs(5),
        || (scrape(&gw).get(&dead_peer) == Some(&0.0)).then_some(()),
    );
    let (a, b) = (token("alice", "user"), token("bob", "user"));
    for t in [&a, &a, &a, &b] {
        assert_eq!(gw.bearer("/api/x", t).status, 200);
    }
    let m = scrape(&gw);
    let live_peer = format!(
        r#"portcullis_upstream_peer_up{{peer="{}",upstream="api"}}"#,
        echo.addr
    );
    for (series, want) in [
        (live_peer.as_str(), 1.0),
        (dead_peer.as_str(), 0.0),
        (
            r#"portcullis_token_cache_requests_total{policy="users",result="hit"}"#,
            2.0,
        ),
        (
            r#"portcullis_token_cache_requests_total{policy="users",result="miss"}"#,
            2.0,
        ),
        (r#"portcullis_token_cache_entries{policy="users"}"#, 2.0),
        (r#"portcullis_token_cache_entries{policy="sso"}"#, 0.0),
        (r#"portcullis_jwks_keys{keys="idp"}"#, 2.0),
        (r#"portcullis_jwks_keys{keys="hmac"}"#, 1.0),
        (r#"portcullis_jwks_refresh_seconds{keys="idp"}"#, 600.0),
        (
            r#"portcullis_jwks_fetches_total{keys="idp",result="error"}"#,
            0.0,
        ),
        (r#"portcullis_rate_limit_keys{limit="per_sub"}"#, 2.0),
        ("portcullis_revoked_entries", 3.0),
    ] {
        assert_eq!(m.get(series), Some(&want), "{series}");
    }
    // The scrape is on the admin listener, not a proxied request; the last request's state
    // ends just after its answer.
    eventually("no request in flight", Duration::from_secs(5), || {
        (scrape(&gw)["portcullis_requests_in_flight"] == 0.0).then_some(())
    });
    let fetched = m[r#"portcullis_jwks_last_success_timestamp_seconds{keys="idp"}"#];
    let loaded = m["portcullis_config_last_reload_success_timestamp_seconds"];
    for t in [fetched, loaded] {
        assert!(
            t >= started - 1.0 && t <= now() as f64 + 1.0,
            "{t} vs {started}"
        );
    }
    assert!(!m.contains_key(r#"portcullis_jwks_last_success_timestamp_seconds{keys="hmac"}"#));
    assert!(m["process_resident_memory_bytes"] > 1e6);
    assert!(m["process_open_fds"] >= 3.0 && m["process_open_fds"] < m["process_max_fds"]);
    assert!(m["process_start_time_seconds"] >= started - 30.0);
    assert!(m.contains_key("process_cpu_seconds_total"));

    // The series of what the reload below removes: the /sso/ route, its policy, its key set,
    // the rate limit.
    let removed = [
        r#"portcullis_requests_total{route="/sso/",status="200"}"#,
        r#"portcullis_request_duration_seconds_count{route="/sso/"}"#,
        r#"portcullis_jwt_validations_total{policy="sso",result="ok"}"#,
        r#"portcullis_jwks_fetches_total{keys="idp",result="ok"}"#,
        r#"portcullis_rate_limited_total{limit="per_sub"}"#,
    ];
    for series in removed {
        assert!(m.contains_key(series), "{series} before the reload");
    }

    // A reload that drops the rate limit, the /sso/ route, its policy and key set drops their
    // series, and moves the reload time.
    std::thread::sleep(Duration::from_millis(1100));
    let conf = std::fs::read_to_string(gw.dir.join("portcullis.yaml")).unwrap();
    let conf = conf
        .replace(", rate_limit: per_sub", "")
        .replace(
            "  per_sub: {key: \"claim:sub\", rate: 100/s, burst: 100}\n",
            "",
        )
        .replace("rate_limits:\n", "");
    let conf: String = conf
        .lines()
        .filter(|l| {
            !["  idp:", "  sso:", "  - {prefix: /sso/"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(gw.dir.join("portcullis.yaml"), conf).unwrap();
    gw.signal("-HUP");
    eventually("the reload", Duration::from_secs(5), || {
        let m = scrape(&gw);
        (m[r#"portcullis_config_reloads_total{result="ok"}"#] == 1.0).then_some(())
    });
    // A scrape that overlapped the reload may have sampled the old policy; the next one
    // cannot.
    let m = scrape(&gw);
    assert!(!m.contains_key(r#"portcullis_rate_limit_keys{limit="per_sub"}"#));
    assert!(m["portcullis_config_last_reload_success_timestamp_seconds"] > loaded);
    for series in removed {
        assert!(!m.contains_key(series), "{series} after the reload");
    }
    // What stays keeps counting from where it was.
    let api = r#"portcullis_requests_total{route="/api/",status="200"}"#;
    assert_eq!(m.get(api), Some(&4.0), "{api}");
    assert_eq!(
        m.get(r#"portcullis_jwt_validations_total{policy="users",result="ok"}"#),
        Some(&4.0)
    );
    assert_eq!(gw.bearer("/api/x", &a).status, 200);
    eventually("the /api/ request counted", Duration::from_secs(5), || {
        (scrape(&gw).get(api) == Some(&5.0)).then_some(())
    });

    // promtool, the Prometheus project's own linter, on the live scrape.
    let text = request(gw.admin, "GET", "/metrics", &[], None).body;
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/install-deps installs it)");
    use std::io::Write;
    lint.stdin.take().unwrap().write_all(&text).unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
