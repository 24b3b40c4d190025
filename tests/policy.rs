//! End to end: required-claim rules, revocation and rate limits.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(echo: &EchoServer, revoked_file: &Path, limits: &str) -> String {
    format!(
        r#"
upstreams:
  api: {{peers: ["{echo}"]}}
keys:
  hmac: {{secret: "0123456789abcdef0123456789abcdef"}}
  other: {{secret: "another secret of thirty-two bytes"}}
auth:
  leads:
    keys: hmac
    algorithms: [HS256]
    realm: "leads"
    require:
      - {{claim: scope, contains: [read:leads]}}
      - {{claim: tier, one_of: [gold, silver]}}
      - {{claim: email_verified, equals: true}}
  plain: {{keys: hmac, algorithms: [HS256], realm: "plain"}}
  partners: {{keys: other, algorithms: [HS256], realm: "partners"}}
revocation:
  file: "{revoked}"
  sub: [test]
rate_limits:
{limits}
routes:
  - {{prefix: /leads/, upstream: api, auth: leads}}
  - {{prefix: /mixed/, upstream: api, auth: [leads, partners]}}
  - {{prefix: /limited/, upstream: api, auth: plain, rate_limit: per_sub}}
  - {{prefix: /ip/, upstream: api, rate_limit: per_ip}}
  - {{prefix: /, upstream: api, auth: plain}}
"#,
        echo = echo.addr,
        revoked = revoked_file.display()
    )
}

const LIMITS: &str = "  per_sub: {key: \"claim:sub\", rate: 1/s, burst: 3}\n  per_ip: {key: ip, rate: 1/m, burst: 2}\n";

struct Setup {
    echo: EchoServer,
    gw: Gateway,
    revoked: std::path::PathBuf,
}

fn setup_with(limits: &str) -> Setup {
    let echo = echo();
    let dir = temp_dir();
    let revoked = dir.join("revoked.yaml");
    std::fs::write(&revoked, "sub: [bob]\njti: [stolen-1]\n").unwrap();
    let gw = Gateway::start(&config(&echo, &revoked, limits));
    Setup { echo, gw, revoked }
}

fn setup() -> Setup {
    setup_with(LIMITS)
}

fn lead_claims() -> Value {
    json!({"sub": "alice", "scope": "openid read:leads", "tier": "gold", "email_verified": true})
}

fn assert_forbidden(r: &Response, scope: Option<&str>) {
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let c = r.header("www-authenticate").unwrap();
    assert!(c.starts_with(r#"Bearer realm="leads""#), "{c}");
    assert!(c.contains(r#"error="insufficient_scope""#), "{c}");
    match scope {
        Some(s) => assert!(c.contains(&format!(r#"scope="{s}""#)), "{c}"),
        None => assert!(!c.contains("scope="), "{c}"),
    }
    assert_eq!(r.json()["error"], "insufficient_scope");
}

#[test]
fn every_rule_must_hold_else_403() {
    let s = setup();
    let r = s.gw.bearer("/leads/1", &hs256(SECRET, &lead_claims()));
    assert_eq!(r.status, 200);
    let mut c = lead_claims();
    c["scope"] = json!("openid write:leads");
    assert_forbidden(
        &s.gw.bearer("/leads/1", &hs256(SECRET, &c)),
        Some("read:leads"),
    );
    let mut c = lead_claims();
    c["scope"] = json!(["read:leads"]);
    assert_eq!(s.gw.bearer("/leads/1", &hs256(SECRET, &c)).status, 200);
    let mut c = lead_claims();
    c["tier"] = json!("bronze");
    assert_forbidden(&s.gw.bearer("/leads/1", &hs256(SECRET, &c)), None);
    let mut c = lead_claims();
    c["email_verified"] = json!("true");
    assert_forbidden(&s.gw.bearer("/leads/1", &hs256(SECRET, &c)), None);
    let mut c = lead_claims();
    c.as_object_mut().unwrap().remove("tier");
    assert_forbidden(&s.gw.bearer("/leads/1", &hs256(SECRET, &c)), None);
    assert_eq!(s.echo.hits(), 2, "a refused request reached the upstream");
}

#[test]
fn a_valid_token_failing_rules_is_403_even_when_another_policy_rejects_it() {
    let s = setup();
    let mut c = lead_claims();
    c["tier"] = json!("none");
    // `leads` verifies it but its rules fail; `partners` cannot verify it.
    assert_forbidden(&s.gw.bearer("/mixed/1", &hs256(SECRET, &c)), None);
    // A token that `partners` accepts passes.
    let t = hs256(b"another secret of thirty-two bytes", &json!({"sub": "p"}));
    assert_eq!(s.gw.bearer("/mixed/1", &t).status, 200);
    // Invalid for both: 401.
    assert_eq!(s.gw.bearer("/mixed/1", "a.b.c").status, 401);
}

fn assert_revoked(r: &Response) {
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains(r#"error="invalid_token", error_description="token revoked""#),
        "{:?}",
        r.header("www-authenticate")
    );
}

#[test]
fn revoked_sub_and_jti_are_401() {
    let s = setup();
    assert_revoked(&s.gw.bearer("/x", &hs256(SECRET, &json!({"sub": "test"}))));
    assert_revoked(&s.gw.bearer("/x", &hs256(SECRET, &json!({"sub": "bob"}))));
    assert_revoked(&s.gw.bearer(
        "/x",
        &hs256(SECRET, &json!({"sub": "c", "jti": "stolen-1"})),
    ));
    assert_eq!(s.echo.hits(), 0);
    assert_eq!(
        s.gw.bearer("/x", &hs256(SECRET, &json!({"sub": "c", "jti": "fine"})))
            .status,
        200
    );
}

/// Poll until `f` holds, for at most 2 s (the documented bound).
fn within_2s(mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        if f() {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("not within 2 s");
}

#[test]
fn revocation_file_edits_apply_within_2s_without_restart() {
    let s = setup();
    let carol = hs256(SECRET, &json!({"sub": "carol"}));
    let bob = hs256(SECRET, &json!({"sub": "bob"}));
    assert_eq!(s.gw.bearer("/x", &carol).status, 200);
    // Written in place.
    std::fs::write(&s.revoked, "sub: [bob, carol]\n").unwrap();
    within_2s(|| s.gw.bearer("/x", &carol).status == 401);
    // Replaced by rename.
    let tmp = s.revoked.with_extension("tmp");
    std::fs::write(&tmp, "sub: [carol]\n").unwrap();
    std::fs::rename(&tmp, &s.revoked).unwrap();
    within_2s(|| s.gw.bearer("/x", &bob).status == 200);
    assert_revoked(&s.gw.bearer("/x", &carol));
    // Malformed: the last good set stays in force.
    std::fs::write(&s.revoked, "sub: [carol\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_revoked(&s.gw.bearer("/x", &carol));
    assert_eq!(s.gw.bearer("/x", &bob).status, 200);
    // Deleted: still the last good set.
    std::fs::remove_file(&s.revoked).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_revoked(&s.gw.bearer("/x", &carol));
    // The inline entry never goes away.
    assert_revoked(&s.gw.bearer("/x", &hs256(SECRET, &json!({"sub": "test"}))));
    // Fixed again: taken.
    std::fs::write(&s.revoked, "sub: []\n").unwrap();
    within_2s(|| s.gw.bearer("/x", &carol).status == 200);
    assert!(
        s.gw.log().contains("keeping the last good set"),
        "{}",
        s.gw.log()
    );
}

#[test]
fn rate_limit_per_sub_answers_429_with_headers() {
    let s = setup();
    let alice = hs256(SECRET, &json!({"sub": "alice"}));
    for i in 0..3 {
        assert_eq!(s.gw.bearer("/limited/x", &alice).status, 200, "request {i}");
    }
    let r = s.gw.bearer("/limited/x", &alice);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=1).contains(&retry), "{retry}");
    assert_eq!(r.header("ratelimit-limit"), Some("3"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    let reset: u64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
    assert!((2..=3).contains(&reset), "{reset}");
    // Another sub has its own bucket.
    let dave = hs256(SECRET, &json!({"sub": "dave"}));
    assert_eq!(s.gw.bearer("/limited/x", &dave).status, 200);
    assert_eq!(s.echo.hits(), 4);
    // A token refills at 1/s.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(s.gw.bearer("/limited/x", &alice).status, 200);
}

#[test]
fn invalid_tokens_never_spend_a_subs_budget() {
    let s = setup();
    // Forged tokens that claim to be alice: refused, and not counted.
    let forged = hs256(
        b"not the key, not the key, not it!",
        &json!({"sub": "alice"}),
    );
    for _ in 0..10 {
        assert_eq!(s.gw.bearer("/limited/x", &forged).status, 401);
    }
    let alice = hs256(SECRET, &json!({"sub": "alice"}));
    for i in 0..3 {
        assert_eq!(s.gw.bearer("/limited/x", &alice).status, 200, "request {i}");
    }
    assert_eq!(s.gw.bearer("/limited/x", &alice).status, 429);
}

#[test]
fn rate_limit_per_ip_applies_before_auth() {
    let s = setup();
    assert_eq!(s.gw.get("/ip/a", &[]).status, 200);
    assert_eq!(s.gw.get("/ip/b", &[]).status, 200);
    let r = s.gw.get("/ip/c", &[]);
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((59..=60).contains(&retry), "{retry}");
    assert_eq!(s.echo.hits(), 2);
}

#[test]
fn concurrent_clients_of_one_sub_get_rate_plus_burst() {
    // 64 connections hammer one sub for about 3 s: the gateway must admit burst + rate × time.
    let s = setup_with("  per_sub: {key: \"claim:sub\", rate: 100/s, burst: 50}\n  per_ip: {key: ip, rate: 1/s, burst: 1}\n");
    let token = Arc::new(hs256(SECRET, &json!({"sub": "hammer"})));
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let window = Duration::from_secs(3);
    let addr = s.gw.addr;
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let (token, ok, limited) = (token.clone(), ok.clone(), limited.clone());
            std::thread::spawn(move || {
                let auth = format!("Bearer {token}");
                let mut last = start;
                while start.elapsed() < window {
                    let r = request(addr, "GET", "/limited/x", &[("Authorization", &auth)], None);
                    match r.status {
                        200 => ok.fetch_add(1, Ordering::SeqCst),
                        429 => limited.fetch_add(1, Ordering::SeqCst),
                        other => panic!("status {other}"),
                    };
                    last = Instant::now();
                }
                last
            })
        })
        .collect();
    let end = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .max()
        .unwrap();
    let elapsed = (end - start).as_secs_f64();
    let admitted = ok.load(Ordering::SeqCst) as f64;
    let expected = 50.0 + 100.0 * elapsed;
    let error = (admitted - expected).abs() / expected;
    assert!(
        error <= 0.05,
        "admitted {admitted}, expected {expected:.0} over {elapsed:.2} s ({} limited)",
        limited.load(Ordering::SeqCst)
    );
    assert!(
        limited.load(Ordering::SeqCst) > 0,
        "the limit was never reached"
    );
    assert_eq!(s.echo.hits(), admitted as usize);
}

#[test]
fn policy_config_errors_are_reported() {
    let err = check_refuses_yaml(
        r#"
upstreams: {api: {peers: ["127.0.0.1:1"]}}
keys: {k: {secret: "0123456789abcdef0123456789abcdef"}}
auth:
  p:
    keys: k
    algorithms: [HS256]
    require:
      - {claim: scope}
      - {claim: tier, one_of: [], equals: 1}
revocation: {file: no-such-file.yaml}
rate_limits:
  a: {key: "cookie:x", rate: 10/s, burst: 1}
  b: {key: "claim:sub", rate: 10/d, burst: 0}
  c: {key: "claim:sub", rate: 10/s, burst: 5}
routes:
  - {prefix: /a/, upstream: api, rate_limit: c}
  - {prefix: /b/, upstream: api, rate_limit: [nope]}
"#,
    );
    assert_errors(
        &err,
        &[
            ("auth.p.require[0]", "exactly one of"),
            ("auth.p.require[1]", "exactly one of"),
            ("revocation.file", "no-such-file.yaml"),
            ("rate_limits.a.key", "cookie:x"),
            ("rate_limits.b.rate", "10/d"),
            ("rate_limits.b.burst", "at least 1"),
            (
                "routes[0].rate_limit",
                "keyed on a claim, but this route has no auth",
            ),
            ("routes[1].rate_limit", "unknown rate limit \"nope\""),
        ],
    );
}
