//! End to end: keys from a JWKS URL or OIDC discovery, against a loopback mock IdP.

mod common;

use common::idp::{public_jwk, MockIdp, Mode};
use common::*;
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;
use std::time::{Duration, Instant};

fn token(kid: &str) -> String {
    let file = match kid {
        "rsa1" => "rsa_private.pem",
        "rsa2" => "rsa2_private.pem",
        _ => "rsa_private.pem",
    };
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.to_string());
    sign_pem_with_header(h, file, &json!({"sub": "u", "exp": now() + 300}))
}

fn gateway(keys: &str) -> (EchoServer, Gateway) {
    let up = echo();
    let gw = Gateway::start(&format!(
        r#"
upstreams: {{api: {{peers: ["{}"]}}}}
keys:
  idp: {keys}
auth:
  users: {{keys: idp, algorithms: [RS256]}}
routes:
  - {{prefix: /api/, upstream: api, auth: users}}
  - {{prefix: /, upstream: api}}
"#,
        up.addr
    ));
    (up, gw)
}

fn wait_ready(gw: &Gateway) {
    let t = Instant::now();
    while request(gw.admin, "GET", "/readyz", &[], None).status != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never ready: {}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn within(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_rotated_in_key_is_accepted_on_first_use() {
    let idp = MockIdp::start(vec![public_jwk("rsa1")]);
    let (up, gw) = gateway(&format!(
        "{{jwks_url: \"{}\", refresh: 10m}}",
        idp.jwks_url()
    ));
    wait_ready(&gw);
    assert_eq!(gw.bearer("/api/x", &token("rsa1")).status, 200);
    assert_eq!(
        idp.fetches(),
        1,
        "keys are fetched at start, not per request"
    );
    // The provider adds a key; a token signed with it works at once (one refetch).
    idp.set_keys(vec![public_jwk("rsa1"), public_jwk("rsa2")]);
    assert_eq!(gw.bearer("/api/x", &token("rsa2")).status, 200);
    assert_eq!(idp.fetches(), 2);
    assert_eq!(up.hits(), 2);
}

#[test]
fn a_removed_key_is_refused_after_the_next_refresh() {
    let idp = MockIdp::start(vec![public_jwk("rsa1"), public_jwk("rsa2")]);
    let (_up, gw) = gateway(&format!(
        "{{jwks_url: \"{}\", refresh: 1s}}",
        idp.jwks_url()
    ));
    wait_ready(&gw);
    assert_eq!(gw.bearer("/api/x", &token("rsa1")).status, 200);
    idp.set_keys(vec![public_jwk("rsa2")]);
    within(4, "rsa1 still accepted", || {
        gw.bearer("/api/x", &token("rsa1")).status == 401
    });
    assert_eq!(gw.bearer("/api/x", &token("rsa2")).status, 200);
}

#[test]
fn unknown_kids_share_one_refetch_and_all_get_401() {
    let idp = MockIdp::start(vec![public_jwk("rsa1")]);
    let (up, gw) = gateway(&format!(
        "{{jwks_url: \"{}\", refresh: 10m}}",
        idp.jwks_url()
    ));
    wait_ready(&gw);
    let before = idp.fetches();
    let addr = gw.addr;
    // Half at once (they wait on one fetch), half one after another (the cooldown holds).
    let threads: Vec<_> = (0..25)
        .map(|i| {
            std::thread::spawn(move || {
                let t = token(&format!("random-{i}-{}", now()));
                let auth = format!("Bearer {t}");
                request(addr, "GET", "/api/x", &[("Authorization", &auth)], None)
            })
        })
        .collect();
    let mut responses: Vec<Response> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for i in 25..50 {
        responses.push(gw.bearer("/api/x", &token(&format!("random-{i}-{}", now()))));
    }
    for r in responses {
        assert_eq!(r.status, 401);
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("unknown key id"));
    }
    let extra = idp.fetches() - before;
    assert!(
        (1..=2).contains(&extra),
        "{extra} fetches for 50 unknown kids"
    );
    assert_eq!(up.hits(), 0);
}

#[test]
fn provider_trouble_keeps_the_last_good_keys() {
    let idp = MockIdp::start(vec![public_jwk("rsa1")]);
    let (_up, gw) = gateway(&format!(
        "{{jwks_url: \"{}\", refresh: 1s}}",
        idp.jwks_url()
    ));
    wait_ready(&gw);
    let errors = r#"portcullis_jwks_fetches_total{keys="idp",result="error"}"#;
    for mode in [Mode::Garbage, Mode::Status500, Mode::Huge] {
        let before = gw.metric(errors);
        idp.set_mode(mode);
        within(4, "no failed fetch counted", || gw.metric(errors) > before);
        assert_eq!(gw.bearer("/api/x", &token("rsa1")).status, 200, "{mode:?}");
    }
    assert!(gw.log().contains("keeping the last good keys"));
    assert!(gw.log().contains("larger than"), "{}", gw.log());
    // Down altogether.
    drop(idp);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(gw.bearer("/api/x", &token("rsa1")).status, 200);
    assert_eq!(request(gw.admin, "GET", "/readyz", &[], None).status, 200);
}

#[test]
fn unreachable_at_start_means_not_ready_and_503_until_keys_arrive() {
    let port = free_port();
    let (_up, gw) = gateway(&format!(
        "{{jwks_url: \"http://127.0.0.1:{port}/jwks\", refresh: 1s, timeout: 500ms}}"
    ));
    let r = request(gw.admin, "GET", "/readyz", &[], None);
    assert_eq!(r.status, 503);
    assert!(
        r.json()["reason"].as_str().unwrap().contains("idp"),
        "{:?}",
        r.json()
    );
    let r = gw.bearer("/api/x", &token("rsa1"));
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("5"));
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    assert_eq!(gw.get("/public", &[]).status, 200);
    // The provider comes up: picked up by the next retry.
    let _idp = MockIdp::start_on(&format!("127.0.0.1:{port}"), vec![public_jwk("rsa1")]);
    within(8, "keys never arrived", || {
        request(gw.admin, "GET", "/readyz", &[], None).status == 200
    });
    assert_eq!(gw.bearer("/api/x", &token("rsa1")).status, 200);
}

#[test]
fn oidc_discovery_finds_the_jwks_and_checks_the_issuer() {
    let idp = MockIdp::start(vec![public_jwk("rsa1")]);
    let (_up, gw) = gateway(&format!("{{oidc_issuer: \"{}\"}}", idp.issuer()));
    wait_ready(&gw);
    assert_eq!(gw.bearer("/api/x", &token("rsa1")).status, 200);

    // A discovery document that names another issuer is refused.
    let liar = MockIdp::start(vec![public_jwk("rsa1")]);
    liar.claim_issuer("https://someone-else.example");
    let (_up2, gw2) = gateway(&format!("{{oidc_issuer: \"{}\"}}", liar.issuer()));
    std::thread::sleep(Duration::from_millis(500));
    let r = request(gw2.admin, "GET", "/readyz", &[], None);
    assert_eq!(r.status, 503);
    assert!(
        r.json()["reason"].as_str().unwrap().contains("issuer"),
        "{:?}",
        r.json()
    );
    assert_eq!(gw2.bearer("/api/x", &token("rsa1")).status, 503);
    assert_eq!(liar.fetches(), 0, "the JWKS of a lying issuer was fetched");
}

#[test]
fn encryption_keys_and_keys_for_other_algorithms_are_ignored() {
    let mut enc = public_jwk("rsa1");
    enc["use"] = json!("enc");
    enc["kid"] = json!("enc-key");
    let mut ps = public_jwk("rsa2");
    ps["alg"] = json!("RS512");
    let idp = MockIdp::start(vec![enc, ps, public_jwk("rsa1")]);
    let (_up, gw) = gateway(&format!("{{jwks_url: \"{}\"}}", idp.jwks_url()));
    wait_ready(&gw);
    // Signed with the key published for encryption only.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("enc-key".into());
    let t = sign_pem_with_header(h, "rsa_private.pem", &json!({"sub": "u"}));
    assert_eq!(gw.bearer("/api/x", &t).status, 401);
    // Signed RS256 with a key published for RS512.
    assert_eq!(gw.bearer("/api/x", &token("rsa2")).status, 401);
    assert_eq!(gw.bearer("/api/x", &token("rsa1")).status, 200);
}

#[test]
fn an_unusable_published_key_is_warned_about_once_not_on_every_fetch() {
    let odd = json!({"kty": "EC", "crv": "P-192", "kid": "odd", "x": "AA", "y": "AA"});
    let idp = MockIdp::start(vec![odd, public_jwk("rsa1")]);
    let (_up, gw) = gateway(&format!(
        "{{jwks_url: \"{}\", refresh: 1s}}",
        idp.jwks_url()
    ));
    wait_ready(&gw);
    within(8, "fewer than 3 fetches", || idp.fetches() >= 3);
    assert_eq!(gw.bearer("/api/x", &token("rsa1")).status, 200);
    let log = gw.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("\"odd\"") && l.contains("skipped"))
        .count();
    assert_eq!(warnings, 1, "{log}");
}

#[test]
fn remote_key_config_errors() {
    let err = check_refuses_yaml(
        r#"
upstreams: {api: {peers: ["127.0.0.1:1"]}}
keys:
  plain: {jwks_url: "http://idp.example.com/jwks"}
  bad: {jwks_url: "not a url"}
  oidc: {oidc_issuer: "http://10.1.2.3/realms/x"}
  slow: {jwks_url: "https://idp.example.com/jwks", refresh: 10ms, timeout: 5 minutes}
  both: {jwks_url: "https://idp.example.com/jwks", secret: x}
  fine: {jwks_url: "https://idp.example.com/jwks", refresh: 5m}
auth: {p: {keys: fine, algorithms: [RS256]}}
routes: [{prefix: /, upstream: api, auth: p}]
"#,
    );
    assert_errors(
        &err,
        &[
            ("keys.plain.jwks_url", "only allowed to a loopback host"),
            ("keys.bad.jwks_url", "not a valid URL"),
            ("keys.oidc.oidc_issuer", "only allowed to a loopback host"),
            ("keys.slow.refresh", "out of range"),
            ("keys.slow.timeout", "5 minutes"),
            ("keys.both", "exactly one of"),
        ],
    );
    assert!(!err.contains("keys.fine"), "{err}");
}

#[test]
fn a_reload_keeps_fetched_keys_when_the_key_set_is_unchanged() {
    let idp = MockIdp::start(vec![public_jwk("rsa1")]);
    let (_up, gw) = gateway(&format!(
        "{{jwks_url: \"{}\", refresh: 10m}}",
        idp.jwks_url()
    ));
    wait_ready(&gw);
    let fetched = idp.fetches();
    // Reload with a new route and the same key set: no refetch, no 503 window.
    let conf = gw.dir.join("portcullis.yaml");
    let yaml = std::fs::read_to_string(&conf).unwrap() + "  - {prefix: /new/, upstream: api}\n";
    std::fs::write(&conf, yaml).unwrap();
    gw.signal("-HUP");
    within(5, "reload not applied", || {
        gw.metric(r#"portcullis_config_reloads_total{result="ok"}"#) == 1.0
    });
    assert_eq!(gw.bearer("/api/x", &token("rsa1")).status, 200);
    assert_eq!(idp.fetches(), fetched);
    assert_eq!(request(gw.admin, "GET", "/readyz", &[], None).status, 200);
}

#[test]
fn an_https_jwks_is_fetched_and_its_certificate_checked() {
    let dir = temp_dir();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [public_jwk("rsa1")]}).to_string()).unwrap();
    let idp = TlsServer::start(Some(&jwks));
    let body = |env_trusts: bool| {
        let up = echo();
        let yaml = format!(
            r#"
upstreams: {{api: {{peers: ["{}"]}}}}
keys:
  idp: {{jwks_url: "https://localhost:{}/jwks", timeout: 2s}}
auth:
  users: {{keys: idp, algorithms: [RS256]}}
routes:
  - {{prefix: /api/, upstream: api, auth: users}}
"#,
            up.addr, idp.port
        );
        let env = if env_trusts {
            vec![TlsServer::trust()]
        } else {
            vec![]
        };
        (up, Gateway::start_env(&yaml, &env))
    };
    // The certificate is trusted (as a system root would be): keys load, tokens pass.
    let (_up, gw) = body(true);
    wait_ready(&gw);
    assert_eq!(gw.bearer("/api/x", &token("rsa1")).status, 200);
    drop(gw);
    // Not trusted: the fetch fails, nothing is loaded.
    let (_up, gw) = body(false);
    std::thread::sleep(Duration::from_millis(800));
    let r = request(gw.admin, "GET", "/readyz", &[], None);
    assert_eq!(r.status, 503, "{:?}", r.json());
    assert_eq!(gw.bearer("/api/x", &token("rsa1")).status, 503);
}
