//! The command line: check, run, token, demo, and stopping on signals.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn check(path: &Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_conf(text: &str) -> std::path::PathBuf {
    let dir = temp_dir();
    let p = dir.join("conf.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_shipped_config_passes_check() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut n = 0;
    for entry in std::fs::read_dir(conf).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let (ok, out, err) = check(&p);
        assert!(ok, "{}: {err}", p.display());
        assert!(out.contains("configuration is valid"), "{out}");
        n += 1;
    }
    assert!(n >= 3, "expected the example configs, found {n}");
}

#[test]
fn check_prints_a_summary() {
    let p = write_conf(&format!(
        r#"
server: {{listen: ["127.0.0.1:1"], threads: 2}}
upstreams:
  api: {{peers: ["127.0.0.1:2", {{addr: "127.0.0.1:3", weight: 4}}]}}
keys:
  k: {{pem_file: "{}"}}
auth:
  p: {{keys: k, algorithms: [RS256], realm: "R"}}
routes:
  - {{prefix: /x/, upstream: api, auth: p}}
  - {{prefix: /, upstream: api}}
"#,
        key_path("rsa_public.pem")
    ));
    let (ok, out, err) = check(&p);
    assert!(ok, "{err}");
    for want in [
        "routes (2)",
        "/x/",
        "auth p",
        "public",
        "algorithms RS256",
        "127.0.0.1:3 (weight 4)",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn check_reports_every_error_with_its_path() {
    let p = write_conf(
        r#"
server: {listen: ["nonsense"], threads: 0}
upstreams:
  api: {peers: ["127.0.0.1:2"]}
  empty: {peers: []}
keys:
  missing: {pem_file: does-not-exist.pem}
  two: {secret: a, secret_env: B}
  env: {secret_env: PORTCULLIS_TEST_SURELY_UNSET}
  junk: {jwks_file: junk.json}
auth:
  p:
    keys: [missing, nokeys]
    algorithms: [RS256, none, XY999]
    leeway: 5 minutes
    token_from: ["body:x"]
    forward_claims: {Host: sub}
routes:
  - {prefix: /a/, upstream: apx, auth: p}
  - {prefix: /b/, upstream: api, auth: nopolicy}
  - {prefix: nope, upstream: api, methods: [get]}
  - {prefix: /c/, upstream: api, colour: blue}
"#,
    );
    std::fs::write(p.parent().unwrap().join("junk.json"), "{not json").unwrap();
    let (ok, _, err) = check(&p);
    assert!(!ok);
    let file = p.display().to_string();
    let expect = [
        ("server.listen[0]", "nonsense"),
        ("server.threads", "at least 1"),
        ("upstreams.empty.peers", "at least one peer"),
        ("keys.missing.pem_file", "cannot read"),
        ("keys.two", "exactly one of"),
        ("keys.env.secret_env", "PORTCULLIS_TEST_SURELY_UNSET"),
        ("keys.junk.jwks_file", "invalid JSON"),
        ("auth.p.keys", "unknown key set \"nokeys\""),
        ("auth.p.algorithms", "\"none\""),
        ("auth.p.algorithms", "XY999"),
        ("auth.p.leeway", "5 minutes"),
        ("auth.p.token_from", "body:x"),
        ("auth.p.forward_claims.Host", "cannot be set"),
        ("routes[0].upstream", "unknown upstream \"apx\""),
        ("routes[1].auth", "unknown auth policy \"nopolicy\""),
        ("routes[2].prefix", "must start with /"),
        ("routes[2].methods", "\"get\""),
        ("routes[3].colour", "unknown field `colour`"),
    ];
    for (path, what) in expect {
        let line = format!("{file}: {path}: ");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&line) && l.contains(what)),
            "no error for {path} mentioning {what:?} in:\n{err}"
        );
    }
    assert!(err.contains("configuration is invalid"), "{err}");
}

#[test]
fn check_reports_yaml_syntax_with_line_and_column() {
    let p = write_conf("server:\n  listen: [\"127.0.0.1:1\"\nroutes: []\n");
    let (ok, _, err) = check(&p);
    assert!(!ok);
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("column"), "{err}");
}

#[test]
fn check_reports_keys_that_do_not_fit_the_algorithms() {
    let p = write_conf(&format!(
        r#"
upstreams: {{api: {{peers: ["127.0.0.1:2"]}}}}
keys:
  rsa: {{pem_file: "{}"}}
  priv: {{pem_file: "{}"}}
auth:
  p: {{keys: rsa, algorithms: [HS256, RS256]}}
  q: {{keys: priv, algorithms: [RS256]}}
routes: [{{prefix: /, upstream: api, auth: p}}]
"#,
        key_path("rsa_public.pem"),
        key_path("rsa_private.pem")
    ));
    let (ok, _, err) = check(&p);
    assert!(!ok);
    assert!(
        err.contains(
            "auth.p.algorithms: HS256 has no matching key in key set(s) rsa (they hold: RSA key)"
        ),
        "{err}"
    );
    assert!(err.contains("keys.priv.pem_file"), "{err}");
    assert!(err.contains("give the public key"), "{err}");
}

/// `check` with a deadline: a config whose files block or never end must fail, not hang.
fn check_within(path: &Path, limit: Duration) -> (bool, String) {
    let mut child = Command::new(BIN)
        .args(["check", "-c"])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let since = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if since.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("check of {} still running after {limit:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status.success(), err)
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {p:?}"
    );
}

#[test]
fn check_refuses_named_files_that_are_not_regular_files_without_blocking() {
    // A FIFO no one writes to would block a read forever; /dev/zero would be read until memory
    // runs out. Each is refused, naming the field, the file and what it is.
    let p = write_conf(&format!(
        r#"
upstreams: {{api: {{peers: ["127.0.0.1:2"]}}}}
keys:
  fifo: {{pem_file: key.fifo}}
  zero: {{jwks_file: /dev/zero}}
  dir: {{pem_file: "{dir}"}}
  good: {{pem_file: "{good}"}}
auth:
  p: {{keys: [fifo, zero, dir, good], algorithms: [RS256]}}
revocation: {{file: revoked.fifo}}
routes: [{{prefix: /, upstream: api, auth: p}}]
"#,
        dir = keys_dir().display(),
        good = key_path("rsa_public.pem"),
    ));
    let folder = p.parent().unwrap();
    mkfifo(&folder.join("key.fifo"));
    mkfifo(&folder.join("revoked.fifo"));
    let (ok, err) = check_within(&p, Duration::from_secs(20));
    assert!(!ok, "{err}");
    let file = p.display().to_string();
    for (path, what) in [
        ("keys.fifo.pem_file", "not a regular file (a FIFO)"),
        (
            "keys.zero.jwks_file",
            "not a regular file (a character device)",
        ),
        ("keys.dir.pem_file", "not a regular file (a directory)"),
        ("revocation.file", "not a regular file (a FIFO)"),
    ] {
        let line = format!("{file}: {path}: ");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&line) && l.contains(what)),
            "no error for {path} mentioning {what:?} in:\n{err}"
        );
    }
    assert!(!err.contains("keys.good"), "{err}");

    // The config file itself.
    let fifo = folder.join("conf.fifo");
    mkfifo(&fifo);
    let (ok, err) = check_within(&fifo, Duration::from_secs(20));
    assert!(!ok);
    assert!(err.contains("not a regular file (a FIFO)"), "{err}");
}

#[test]
fn run_refuses_an_invalid_config() {
    let p = write_conf("routes:\n  - {prefix: /, upstream: nowhere}\n");
    let out = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("routes[0].upstream"), "{err}");
    assert!(err.contains("refusing to start"), "{err}");
}

#[test]
fn minted_tokens_pass_the_gateway() {
    let echo = echo();
    let jwk = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/api_secret.jwk");
    let gw = Gateway::start(&format!(
        r#"
upstreams: {{api: {{peers: ["{}"]}}}}
keys:
  jwk: {{jwks_file: "{}"}}
  rsa: {{pem_file: "{}"}}
  ec: {{pem_file: "{}"}}
  lit: {{secret: "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", base64: true}}
auth:
  jwk: {{keys: jwk, algorithms: [HS256], issuer: gw, audience: app, forward_claims: {{X-Tier: tier, X-N: n}}}}
  rsa: {{keys: rsa, algorithms: [RS256]}}
  ec: {{keys: ec, algorithms: [ES256]}}
  lit: {{keys: lit, algorithms: [HS384]}}
routes:
  - {{prefix: /jwk/, upstream: api, auth: jwk}}
  - {{prefix: /rsa/, upstream: api, auth: rsa}}
  - {{prefix: /ec/, upstream: api, auth: ec}}
  - {{prefix: /lit/, upstream: api, auth: lit}}
"#,
        echo.addr,
        jwk.display(),
        key_path("rsa_public.pem"),
        key_path("ec_public.pem"),
    ));
    let token = |args: &[&str]| -> String {
        let out = Command::new(BIN).arg("token").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let jwk_s = jwk.display().to_string();
    let t = token(&[
        "--key",
        &jwk_s,
        "--sub",
        "u1",
        "--iss",
        "gw",
        "--aud",
        "app",
        "--claim",
        "tier=gold",
        "--claim",
        "n=3",
    ]);
    let r = gw.bearer("/jwk/x", &t);
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-tier").as_deref(), Some("gold"));
    assert_eq!(r.upstream_header("x-n").as_deref(), Some("3"));
    // Without the issuer the policy wants.
    let t = token(&["--key", &jwk_s, "--sub", "u1", "--aud", "app"]);
    assert_eq!(gw.bearer("/jwk/x", &t).status, 401);
    let t = token(&["--key", &key_path("rsa_private.pem"), "--sub", "u2"]);
    assert_eq!(gw.bearer("/rsa/x", &t).status, 200);
    let t = token(&["--key", &key_path("ec_private.pem"), "--sub", "u3"]);
    assert_eq!(gw.bearer("/ec/x", &t).status, 200);
    // A private JWKS: --kid picks the key and lands in the header.
    let t = token(&["--key", &key_path("private_jwks.json"), "--kid", "ec1"]);
    assert_eq!(gw.bearer("/ec/x", &t).status, 200);
    let t = token(&["--key", &key_path("private_jwks.json"), "--kid", "rsa1"]);
    assert_eq!(gw.bearer("/rsa/x", &t).status, 200);
    let t = token(&[
        "--secret",
        "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA",
        "--base64",
        "--alg",
        "HS384",
    ]);
    assert_eq!(gw.bearer("/lit/x", &t).status, 200);
    // A token minted already expired (negative TTLs do not exist; use a 1 s TTL and wait).
    let t = token(&["--key", &key_path("rsa_private.pem"), "--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(gw.bearer("/rsa/x", &t).status, 401);
    // Bad input is an error, not a token.
    let out = Command::new(BIN)
        .args(["token", "--key", &key_path("rsa_public.pem")])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn sigterm_and_sigint_stop_promptly() {
    for signal in ["-TERM", "-INT"] {
        let echo = echo();
        let mut gw = Gateway::start(&format!(
            "upstreams: {{api: {{peers: [\"{}\"]}}}}\nroutes: [{{prefix: /, upstream: api}}]\n",
            echo.addr
        ));
        assert_eq!(gw.get("/", &[]).status, 200);
        let t = Instant::now();
        gw.signal(signal);
        gw.wait_exit(t, Duration::from_secs(8));
    }
}

#[test]
fn demo_prints_working_curl_lines() {
    let dir = temp_dir();
    let port = free_port();
    let up = free_port();
    for f in ["api_secret.jwk", "demo-tls.pem", "demo-tls.key"] {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("conf").join(f),
            dir.join(f),
        )
        .unwrap();
    }
    let tls_port = free_port();
    let demo_conf =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/demo.yaml"))
            .unwrap()
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
            .replace("127.0.0.1:8443", &format!("127.0.0.1:{tls_port}"))
            .replace("127.0.0.1:9000", &format!("127.0.0.1:{up}"))
            .replace("127.0.0.1:9001", &format!("127.0.0.1:{}", free_port()))
            .replace("127.0.0.1:9901", &format!("127.0.0.1:{}", free_port()));
    let conf = dir.join("demo.yaml");
    std::fs::write(&conf, demo_conf).unwrap();
    let mut child = Command::new(BIN)
        .args(["demo", "-c"])
        .arg(&conf)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut token = None;
    let mut path = None;
    let mut https = None;
    for line in lines.by_ref().take(30) {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("curl -i --http2 --cacert ") {
            https = Some(rest.to_string());
            break;
        }
        if let Some(rest) = line.strip_prefix("curl -i -H 'Authorization: Bearer ") {
            let (t, url) = rest.split_once("' ").unwrap();
            token = Some(t.to_string());
            path = Some(url.split_once(&port.to_string()).unwrap().1.to_string());
        }
    }
    let (token, path) = (token.expect("a token line"), path.unwrap());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "demo did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = request(addr, "GET", &path, &[], None);
    assert_eq!(r.status, 401);
    let auth = format!("Bearer {token}");
    let r = request(addr, "GET", &path, &[("Authorization", &auth)], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-jwt-sub").as_deref(), Some("demo-user"));
    assert_eq!(request(addr, "GET", "/", &[], None).status, 200);
    // The printed https line works as printed: the demo certificate, h2.
    let (ca, url) = https
        .expect("an https curl line")
        .split_once(' ')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "--http2",
            "--cacert",
            &ca,
            &url,
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 2",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The whole of `check`'s output for a config with an error in every section, pinned line by
/// line: moving compile code between modules must not change a message or the order.
#[test]
fn check_output_for_many_errors_is_pinned() {
    let p = write_conf(
        r#"
server: {listen: ["nonsense", "127.0.0.1:9"], threads: 2000, admin: "127.0.0.1:9", shutdown_timeout: 2h}
upstreams:
  api: {peers: ["127.0.0.1:2"]}
  empty: {peers: []}
  heavy: {peers: [{addr: "127.0.0.1:3", weight: 0}, "127.0.0.1:4", "127.0.0.1:4"], balance: consistent_hash, connect_timeout: 1y}
  sticky: {peers: ["127.0.0.1:5"], balance: consistent_hash, hash_key: "claim:sub"}
keys:
  missing: {pem_file: does-not-exist.pem}
  two: {secret: a, secret_env: B}
  unused: {secret: "0123456789abcdef0123456789abcdef"}
  remote: {jwks_url: "http://idp.example.com/jwks"}
auth:
  p:
    keys: [missing, nokeys]
    algorithms: [RS256, none, XY999]
    leeway: 5 minutes
    forward_claims: {Host: sub}
  q: {keys: unused, algorithms: [RS256]}
revocation: {file: no/such/dir/revoked.yaml}
access_log: {path: no/such/dir/access.log, claims: [""]}
rate_limits:
  r1: {key: "claim:", rate: 10/fortnight, burst: 0, max_keys: 1}
  r2: {key: "claim:sub", rate: 10/s, burst: 5}
routes:
  - {prefix: /a/, upstream: apx, auth: p, rate_limit: [r2, nolimit]}
  - {prefix: nope, upstream: api, methods: [get, ""], host: "bad host"}
  - {prefix: /c/, upstream: sticky, rate_limit: r2}
  - {prefix: /d/, upstream: api, auth: []}
  - {prefix: /e/, upstream: api}
  - {prefix: /e/, upstream: api}
  - {prefix: /f/, upstream: api, colour: blue}
"#,
    );
    let (ok, _, err) = check(&p);
    assert!(!ok);
    let dir = p.parent().unwrap().display().to_string();
    let got = err.replace(&dir, "DIR");
    let want = include_str!("check_many_errors.txt");
    let (got_lines, want_lines): (Vec<&str>, Vec<&str>) =
        (got.lines().collect(), want.lines().collect());
    for (i, (g, w)) in got_lines.iter().zip(&want_lines).enumerate() {
        assert_eq!(g, w, "line {} differs; whole output:\n{got}", i + 1);
    }
    assert_eq!(got_lines.len(), want_lines.len(), "whole output:\n{got}");
}

/// `portcullis schema` is the committed docs/portcullis.schema.json (regenerate with
/// `portcullis schema > docs/portcullis.schema.json`), and every shipped config validates
/// against it with an independent validator (Python's `jsonschema`, draft 2020-12), while a
/// file with an unknown field or a wrong type does not.
#[test]
fn the_config_schema_is_fresh_and_every_shipped_config_matches_it() {
    let out = portcullis_ok(&["schema"]);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed = std::fs::read_to_string(root.join("docs/portcullis.schema.json")).unwrap();
    assert!(
        out == committed,
        "docs/portcullis.schema.json is stale: run `portcullis schema > docs/portcullis.schema.json`"
    );
    let dir = temp_dir();
    let bad_field = dir.join("bad-field.yaml");
    std::fs::write(
        &bad_field,
        "routes:\n  - {prefix: /, upstream: a, upstrem: b}\n",
    )
    .unwrap();
    let bad_type = dir.join("bad-type.yaml");
    std::fs::write(&bad_type, "server: {http2: maybe}\n").unwrap();
    let script = r#"
import glob, json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
v = jsonschema.Draft202012Validator(schema)
jsonschema.Draft202012Validator.check_schema(schema)
files = sorted(glob.glob(sys.argv[2] + "/conf/*.yaml"))
assert len(files) >= 5, files
for f in files:
    errors = list(v.iter_errors(yaml.safe_load(open(f))))
    assert not errors, (f, [e.message for e in errors])
for f in sys.argv[3:]:
    assert list(v.iter_errors(yaml.safe_load(open(f)))), f + " should not validate"
print("ok", len(files))
"#;
    let run = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(root.join("docs/portcullis.schema.json"))
        .arg(root)
        .arg(&bad_field)
        .arg(&bad_type)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}
