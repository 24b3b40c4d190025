//! End to end: claim policy as real identity providers' tokens need it — claim paths
//! (Keycloak's nested roles, Auth0's namespaced claims), `any_of`, CEL expressions, RFC 9068
//! token types and `max_lifetime`.

mod common;

use common::*;
use serde_json::json;
use std::process::Command;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn gateway(echo: &EchoServer, log: &std::path::Path) -> Gateway {
    Gateway::start(&format!(
        r#"
upstreams:
  api: {{peers: ["{echo}"]}}
keys:
  kc: {{secret: "0123456789abcdef0123456789abcdef"}}
access_log: {{path: "{log}", claims: [realm_access.roles, org.id, "/https:~1~1example.com~1tier"]}}
auth:
  staff:
    keys: kc
    algorithms: [HS256]
    forward_claims: {{X-Roles: realm_access.roles, X-Tier: "/https:~1~1example.com~1tier", X-Org: org.id}}
    require:
      - {{claim: realm_access.roles, contains: [staff]}}
      - {{claim: groups, any_of: [eng, ops]}}
  programmable:
    keys: kc
    algorithms: [HS256]
    require:
      - {{expr: 'claims.tier == "gold" || request.method == "GET"'}}
      - {{expr: 'request.path.startsWith("/users/" + claims.sub + "/") || "admin" in claims.realm_access.roles'}}
  typed:
    keys: kc
    algorithms: [HS256]
    token_types: [at+jwt]
    max_lifetime: 1h
rate_limits:
  per_org: {{key: "claim:org.id", rate: 1/m, burst: 2}}
routes:
  - {{prefix: /staff/, upstream: api, auth: staff}}
  - {{prefix: /orgs/, upstream: api, auth: staff, rate_limit: per_org}}
  - {{prefix: /users/, upstream: api, auth: programmable}}
  - {{prefix: /typed/, upstream: api, auth: typed}}
"#,
        echo = echo.addr,
        log = log.display()
    ))
}

fn keycloak(sub: &str, roles: &[&str], groups: serde_json::Value, org: &str) -> String {
    hs256(
        SECRET,
        &json!({
            "sub": sub, "exp": now() + 600,
            "realm_access": {"roles": roles},
            "resource_access": {"api": {"roles": ["read"]}},
            "groups": groups,
            "org": {"id": org},
            "https://example.com/tier": "gold",
        }),
    )
}

#[test]
fn claim_paths_reach_nested_and_namespaced_claims_everywhere() {
    let echo = echo();
    let dir = temp_dir();
    let log = dir.join("access.log");
    let gw = gateway(&echo, &log);

    let ok = keycloak("alice", &["staff", "dev"], json!(["sales", "eng"]), "acme");
    let r = gw.bearer("/staff/x", &ok);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.upstream_header("x-roles").as_deref(),
        Some(r#"["staff","dev"]"#)
    );
    assert_eq!(r.upstream_header("x-tier").as_deref(), Some("gold"));
    assert_eq!(r.upstream_header("x-org").as_deref(), Some("acme"));
    let line = access_log_line(&log, |l| l["path"] == "/staff/x");
    assert_eq!(
        line["claims"]["realm_access.roles"],
        json!(["staff", "dev"])
    );
    assert_eq!(line["claims"]["org.id"], json!("acme"));
    assert_eq!(
        line["claims"]["/https:~1~1example.com~1tier"],
        json!("gold")
    );

    // any_of: a string holds when it is one of the values.
    let ops = keycloak("bob", &["staff"], json!("ops"), "acme");
    assert_eq!(gw.bearer("/staff/x", &ops).status, 200);
    let hits = echo.hits();
    for (why, token) in [
        (
            "not staff",
            keycloak("carol", &["dev"], json!(["eng"]), "acme"),
        ),
        (
            "no listed group",
            keycloak("dan", &["staff"], json!(["sales"]), "acme"),
        ),
        (
            "groups missing",
            keycloak("erin", &["staff"], json!(null), "acme"),
        ),
    ] {
        let r = gw.bearer("/staff/x", &token);
        assert_eq!(r.status, 403, "{why}");
        assert_eq!(r.json()["error"], "insufficient_scope", "{why}");
    }
    assert_eq!(echo.hits(), hits, "a refused request reached the upstream");

    // A limit keyed on a nested claim: one budget per organisation, whoever the user.
    let statuses: Vec<u16> = ["u1", "u2", "u3"]
        .iter()
        .map(|s| {
            let t = keycloak(s, &["staff"], json!(["eng"]), "globex");
            gw.bearer("/orgs/x", &t).status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    let other = keycloak("u4", &["staff"], json!(["eng"]), "initech");
    assert_eq!(gw.bearer("/orgs/x", &other).status, 200);
}

#[test]
fn expressions_decide_with_claims_and_the_request() {
    let echo = echo();
    let dir = temp_dir();
    let gw = gateway(&echo, &dir.join("access.log"));
    let token = |sub: &str, tier: &str, roles: &[&str]| {
        hs256(
            SECRET,
            &json!({"sub": sub, "exp": now() + 600, "tier": tier, "realm_access": {"roles": roles}}),
        )
    };
    let alice_free = token("alice", "free", &["user"]);
    let alice_gold = token("alice", "gold", &["user"]);
    let admin = token("root", "free", &["admin"]);
    let auth = |t: &str| format!("Bearer {t}");
    let send = |method: &str, path: &str, t: &str| {
        request(
            gw.addr,
            method,
            path,
            &[("Authorization", &auth(t))],
            Some(b""),
        )
    };
    assert_eq!(send("GET", "/users/alice/doc", &alice_free).status, 200);
    assert_eq!(send("POST", "/users/alice/doc", &alice_gold).status, 200);
    assert_eq!(send("GET", "/users/bob/doc", &admin).status, 200);
    let hits = echo.hits();
    for (why, method, path, t) in [
        (
            "free tier may only GET",
            "POST",
            "/users/alice/doc",
            &alice_free,
        ),
        ("not the owner", "GET", "/users/bob/doc", &alice_gold),
        (
            "prefix without the slash",
            "GET",
            "/users/alicex/doc",
            &alice_gold,
        ),
    ] {
        let r = send(method, path, t);
        assert_eq!(r.status, 403, "{why}");
        assert_eq!(r.json()["error"], "insufficient_scope", "{why}");
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("error=\"insufficient_scope\""));
    }
    // An evaluation error (no realm_access at all, no tier) is a rule that does not hold.
    let bare = hs256(SECRET, &json!({"sub": "x", "exp": now() + 600}));
    assert_eq!(send("GET", "/users/y/doc", &bare).status, 403);
    let weird = hs256(
        SECRET,
        &json!({"sub": 5, "exp": now() + 600, "tier": ["gold"]}),
    );
    assert_eq!(send("POST", "/users/5/doc", &weird).status, 403);
    assert_eq!(echo.hits(), hits, "a refused request reached the upstream");
}

#[test]
fn token_types_and_lifetimes() {
    let echo = echo();
    let dir = temp_dir();
    let gw = gateway(&echo, &dir.join("access.log"));
    let t = now();
    let signed =
        |header: &str, claims: serde_json::Value| hs256_raw(SECRET, header, &claims.to_string());
    let fresh = json!({"sub": "a", "iat": t, "exp": t + 600});
    for typ in ["at+jwt", "AT+JWT", "application/at+jwt"] {
        let tok = signed(
            &format!(r#"{{"alg":"HS256","typ":"{typ}"}}"#),
            fresh.clone(),
        );
        assert_eq!(gw.bearer("/typed/x", &tok).status, 200, "{typ}");
    }
    let cases = [
        (
            r#"{"alg":"HS256","typ":"JWT"}"#,
            fresh.clone(),
            "token type not accepted",
        ),
        (
            r#"{"alg":"HS256"}"#,
            fresh.clone(),
            "token type not accepted",
        ),
        (
            r#"{"alg":"HS256","typ":"at+jwt"}"#,
            json!({"sub": "a", "iat": t, "exp": t + 7200}),
            "token lifetime too long",
        ),
        (
            r#"{"alg":"HS256","typ":"at+jwt"}"#,
            json!({"sub": "a", "exp": t + 600}),
            "token has no issue time",
        ),
    ];
    let hits = echo.hits();
    for (header, claims, why) in cases {
        let r = gw.bearer("/typed/x", &signed(header, claims));
        assert_eq!(r.status, 401, "{why}");
        assert_eq!(r.json()["error_description"], why);
        assert!(r.header("www-authenticate").unwrap().contains(why));
    }
    assert_eq!(echo.hits(), hits);
}

#[test]
fn check_names_the_rule_and_column_and_warns_about_url_paths() {
    let base = "upstreams:\n  a: {peers: [\"127.0.0.1:1\"]}\nkeys:\n  k: {secret: \"0123456789abcdef0123456789abcdef\"}\nroutes:\n  - {prefix: /, upstream: a, auth: p}\n";
    let cases = [
        (
            "require: [{expr: 'claims.a == '}]",
            "auth.p.require[0]",
            "syntax error at column",
        ),
        (
            "require: [{expr: 'claim.sub == \"a\"'}]",
            "auth.p.require[0]",
            "unknown variable \"claim\"",
        ),
        (
            "require: [{expr: 'true', claim: sub}]",
            "auth.p.require[0]",
            "an `expr` rule has no claim",
        ),
        (
            "require: [{claim: 'a..b', equals: 1}]",
            "auth.p.require[0]",
            "empty segment",
        ),
        (
            "require: [{claim: '/x~2', equals: 1}]",
            "auth.p.require[0]",
            "invalid JSON pointer",
        ),
        (
            "require: [{contains: [x]}]",
            "auth.p.require[0]",
            "give `claim`",
        ),
        (
            "forward_claims: {X-A: 'a..b'}",
            "auth.p.forward_claims.X-A",
            "empty segment",
        ),
        ("token_types: []", "auth.p.token_types", "empty values"),
        ("max_lifetime: 0s", "auth.p.max_lifetime", "out of range"),
    ];
    for (extra, path, message) in cases {
        let yaml = format!("{base}auth:\n  p: {{keys: k, algorithms: [HS256], {extra}}}\n");
        let err = check_refuses_yaml(&yaml);
        assert_errors(&err, &[(path, message)]);
    }
    // A dotted name that looks like a URL is accepted, with a warning that gives the pointer.
    let conf = temp_dir().join("c.yaml");
    std::fs::write(
        &conf,
        format!("{base}auth:\n  p: {{keys: k, algorithms: [HS256], require: [{{claim: 'https://example.com/roles', contains: [x]}}]}}\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: auth.p.require[0].claim:")
            && stderr.contains("/https:~1~1example.com~1roles"),
        "{stderr}"
    );
}

#[test]
fn upstream_by_sends_each_tenant_to_its_pool_and_refuses_an_unmapped_one_without_default() {
    let (acme, globex, shared) = (echo(), echo(), echo());
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  acme_pool: {{peers: ["{acme}"]}}
  globex_pool: {{peers: ["{globex}"]}}
  shared_pool: {{peers: ["{shared}"]}}
keys:
  kc: {{secret: "0123456789abcdef0123456789abcdef"}}
auth:
  staff: {{keys: kc, algorithms: [HS256]}}
routes:
  - prefix: /api/
    auth: staff
    upstream_by: {{claim: org.tenant, map: {{acme: acme_pool, globex: globex_pool, "7": globex_pool}}, default: shared_pool}}
  - prefix: /strict/
    auth: staff
    upstream_by: {{claim: org.tenant, map: {{acme: acme_pool}}}}
"#,
        acme = acme.addr,
        globex = globex.addr,
        shared = shared.addr
    ));
    let token = |tenant: serde_json::Value| {
        hs256(
            SECRET,
            &json!({"sub": "a", "exp": now() + 600, "org": {"tenant": tenant}}),
        )
    };
    let hits = || (acme.hits(), globex.hits(), shared.hits());

    assert_eq!(gw.bearer("/api/x", &token(json!("acme"))).status, 200);
    assert_eq!(hits(), (1, 0, 0));
    assert_eq!(gw.bearer("/api/x", &token(json!("globex"))).status, 200);
    assert_eq!(hits(), (1, 1, 0));
    // A number is looked up by its JSON text.
    assert_eq!(gw.bearer("/api/x", &token(json!(7))).status, 200);
    assert_eq!(hits(), (1, 2, 0));
    // Unmapped, missing, or not a scalar: the default.
    assert_eq!(gw.bearer("/api/x", &token(json!("initech"))).status, 200);
    assert_eq!(gw.bearer("/api/x", &token(json!(["acme"]))).status, 200);
    let no_org = hs256(SECRET, &json!({"sub": "a", "exp": now() + 600}));
    assert_eq!(gw.bearer("/api/x", &no_org).status, 200);
    assert_eq!(hits(), (1, 2, 3));
    // The pool is chosen after verification: a bad token goes nowhere.
    assert_eq!(gw.bearer("/api/x", "nope").status, 401);
    assert_eq!(hits(), (1, 2, 3));

    // Without a default, an unmapped tenant is a 403 with its own description.
    assert_eq!(gw.bearer("/strict/x", &token(json!("acme"))).status, 200);
    let r = gw.bearer("/strict/x", &token(json!("globex")));
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="staff", error="insufficient_scope""#)
    );
    assert_eq!(
        r.json()["error_description"],
        "no upstream serves this token"
    );
    assert_eq!(hits(), (2, 2, 3));

    // Metrics per pool.
    for (pool, n) in [
        ("acme_pool", 2.0),
        ("globex_pool", 2.0),
        ("shared_pool", 3.0),
    ] {
        assert_eq!(
            gw.metric(&format!(
                "portcullis_upstream_duration_seconds_count{{upstream=\"{pool}\"}}"
            )),
            n,
            "{pool}"
        );
    }
}

#[test]
fn upstream_by_config_errors_name_the_field() {
    let err = check_refuses_yaml(
        r#"
upstreams:
  a: {peers: ["127.0.0.1:1"]}
keys:
  kc: {secret: "0123456789abcdef0123456789abcdef"}
auth:
  p: {keys: kc, algorithms: [HS256]}
routes:
  - {prefix: /public/, upstream_by: {claim: tenant, map: {x: a}}}
  - {prefix: /unknown/, auth: p, upstream_by: {claim: tenant, map: {x: nope}, default: gone}}
  - {prefix: /both/, auth: p, upstream: a, upstream_by: {claim: tenant, map: {x: a}}}
  - {prefix: /neither/, auth: p}
  - {prefix: /empty/, auth: p, upstream_by: {claim: "/bad~2", map: {}}}
"#,
    );
    assert_errors(
        &err,
        &[
            ("routes[0].upstream_by", "has no auth"),
            ("routes[1].upstream_by.map.x", "unknown upstream \"nope\""),
            ("routes[1].upstream_by.default", "unknown upstream \"gone\""),
            ("routes[2]", "both upstream and upstream_by"),
            ("routes[3].upstream", "missing"),
            ("routes[4].upstream_by.map", "at least one"),
            ("routes[4].upstream_by.claim", "~"),
        ],
    );
}

/// Tokens from an independent signer (Python `cryptography`): ES512 with a P-521 key from a PEM
/// file and from a JWKS, and Ed25519 under its RFC 9864 name and as EdDSA.
#[test]
fn es512_and_ed25519_tokens_from_another_signer_verify() {
    let echo = echo();
    let dir = temp_dir();
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/jose_mint.py"))
        .arg(&dir)
        .arg((now() + 600).to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = |name: &str| t[name].as_str().unwrap().to_string();
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  api: {{peers: ["{echo}"]}}
keys:
  p521_pem: {{pem_file: "{dir}/p521.pem"}}
  ed_pem: {{pem_file: "{dir}/ed.pem"}}
  jwks: {{jwks_file: "{dir}/jwks.json"}}
auth:
  es512: {{keys: p521_pem, algorithms: [ES512]}}
  es512_jwks: {{keys: jwks, algorithms: [ES512]}}
  ed25519: {{keys: ed_pem, algorithms: [Ed25519]}}
  eddsa: {{keys: ed_pem, algorithms: [EdDSA]}}
  ed_jwks: {{keys: jwks, algorithms: [Ed25519]}}
routes:
  - {{prefix: /es512/, upstream: api, auth: es512}}
  - {{prefix: /es512-jwks/, upstream: api, auth: es512_jwks}}
  - {{prefix: /ed25519/, upstream: api, auth: ed25519}}
  - {{prefix: /eddsa/, upstream: api, auth: eddsa}}
  - {{prefix: /ed-jwks/, upstream: api, auth: ed_jwks}}
"#,
        echo = echo.addr,
        dir = dir.display()
    ));
    for (path, token) in [
        ("/es512/x", "es512"),
        ("/es512-jwks/x", "es512_kid"),
        // Either name of the Ed25519 signature is accepted by a policy naming either.
        ("/ed25519/x", "ed25519"),
        ("/ed25519/x", "eddsa"),
        ("/eddsa/x", "ed25519"),
        ("/eddsa/x", "eddsa"),
        // A JWK with `alg: Ed25519` verifies EdDSA-named tokens too.
        ("/ed-jwks/x", "eddsa_kid"),
        ("/ed-jwks/x", "ed25519_kid"),
    ] {
        let r = gw.bearer(path, &t(token));
        assert_eq!(
            r.status,
            200,
            "{path} {token}: {:?}",
            r.header("www-authenticate")
        );
    }
    assert_eq!(echo.hits(), 8);
    for (path, token, why) in [
        ("/es512/x", "es512_other_key", "signature invalid"),
        // A P-521 signature under the ES256 name: not an allowed algorithm here.
        ("/es512/x", "es512_as_es256", "algorithm not allowed"),
        // An Ed25519 token on the ES512 policy, and an ES512 one on the Ed25519 policy.
        ("/es512/x", "ed25519", "algorithm not allowed"),
        ("/ed25519/x", "es512", "algorithm not allowed"),
    ] {
        let r = gw.bearer(path, &t(token));
        assert_eq!(r.status, 401, "{path} {token}");
        assert!(
            r.header("www-authenticate").unwrap().contains(why),
            "{path} {token}: {:?}",
            r.header("www-authenticate")
        );
    }
    // A tampered ES512 signature.
    let mut bad = t("es512");
    let last = bad.pop().unwrap();
    bad.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(gw.bearer("/es512/x", &bad).status, 401);
    assert_eq!(echo.hits(), 8);

    // `check` lists the names it knows when one is wrong.
    let err = check_refuses_yaml(
        "keys:\n  k: {secret: \"0123456789abcdef0123456789abcdef\"}\nauth:\n  p: {keys: k, algorithms: [ES521]}\n",
    );
    assert_errors(&err, &[("auth.p.algorithms", "ES512, EdDSA, Ed25519")]);
}
