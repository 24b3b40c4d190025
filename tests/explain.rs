//! End to end: `portcullis explain` decides as the running gateway does. The same requests go
//! to a gateway started with a config and to `explain` on that config file; the statuses must
//! agree, and the report must say why.

mod common;

use common::*;
use serde_json::json;
use std::process::Command;

fn explain(
    conf: &std::path::Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["explain", "-c"])
        .arg(conf)
        .args(["--method", method]);
    for (k, v) in headers {
        cmd.args(["--header", &format!("{k}: {v}")]);
    }
    let out = cmd.arg(path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = text
        .lines()
        .find_map(|l| l.strip_prefix("status: "))
        .map(|s| {
            if s.starts_with("sent upstream") {
                200
            } else {
                s[..3].parse().unwrap()
            }
        })
        .unwrap_or_else(|| panic!("no status in:\n{text}"));
    (status, text)
}

#[test]
fn explain_gives_the_status_the_gateway_gives_and_says_why() {
    let (api, acme) = (echo(), echo());
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  api: {{peers: ["{api}"]}}
  acme_pool: {{peers: ["{acme}"]}}
keys:
  kc: {{secret: "0123456789abcdef0123456789abcdef"}}
auth:
  staff:
    keys: kc
    algorithms: [HS256]
    issuer: https://idp.example
    forward_claims: {{X-User: sub}}
    require:
      - {{claim: realm_access.roles, contains: [staff]}}
      - {{expr: 'request.method == "GET" || claims.tier == "gold"'}}
  typed: {{keys: kc, algorithms: [HS256], token_types: [at+jwt], max_lifetime: 1h}}
rate_limits:
  per_ip: {{key: ip, rate: 100/s, burst: 1000}}
routes:
  - {{prefix: /api/, auth: staff, rate_limit: per_ip, upstream: api}}
  - {{prefix: /tenant/, auth: staff, upstream_by: {{claim: tenant, map: {{acme: acme_pool}}}}}}
  - {{prefix: /typed/, auth: typed, upstream: api}}
  - {{prefix: /admin/, methods: [GET], upstream: api}}
  - {{prefix: /public/, upstream: api}}
"#,
        api = api.addr,
        acme = acme.addr
    ));
    let conf = gw.dir.join("portcullis.yaml");
    let staff = |extra: serde_json::Value| {
        let mut c = json!({
            "sub": "alice", "iss": "https://idp.example", "exp": now() + 600,
            "realm_access": {"roles": ["staff"]}, "tenant": "acme",
        });
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        hs256(SECRET, &c)
    };
    let ok = staff(json!({}));
    let gold = staff(json!({"tier": "gold"}));
    let not_staff = staff(json!({"realm_access": {"roles": ["dev"]}}));
    let other_tenant = staff(json!({"tenant": "globex"}));
    let wrong_issuer = staff(json!({"iss": "https://evil.example"}));
    let expired = staff(json!({"exp": now() - 3600}));
    let at = hs256_raw(
        SECRET,
        r#"{"alg":"HS256","typ":"at+jwt"}"#,
        &json!({"sub": "a", "iat": now(), "exp": now() + 600}).to_string(),
    );
    let id_token = hs256_raw(
        SECRET,
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &json!({"sub": "a", "iat": now(), "exp": now() + 600}).to_string(),
    );
    let long_lived = hs256_raw(
        SECRET,
        r#"{"alg":"HS256","typ":"at+jwt"}"#,
        &json!({"sub": "a", "iat": now(), "exp": now() + 86400}).to_string(),
    );
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        b64(json!({"sub": "a"}).to_string().as_bytes())
    );
    let bearer = |t: &str| format!("Bearer {t}");
    let cases: Vec<(&str, &str, Option<String>, u16)> = vec![
        ("GET", "/api/x", Some(bearer(&ok)), 200),
        ("POST", "/api/x", Some(bearer(&ok)), 403),
        ("POST", "/api/x", Some(bearer(&gold)), 200),
        ("GET", "/api/x", Some(bearer(&not_staff)), 403),
        ("GET", "/api/x", Some(bearer(&wrong_issuer)), 401),
        ("GET", "/api/x", Some(bearer(&expired)), 401),
        ("GET", "/api/x", Some(bearer(&none)), 401),
        ("GET", "/api/x", Some(bearer("not.a.token")), 401),
        ("GET", "/api/x", None, 401),
        ("GET", "/tenant/x", Some(bearer(&ok)), 200),
        ("GET", "/tenant/x", Some(bearer(&other_tenant)), 403),
        ("GET", "/typed/x", Some(bearer(&at)), 200),
        ("GET", "/typed/x", Some(bearer(&id_token)), 401),
        ("GET", "/typed/x", Some(bearer(&long_lived)), 401),
        ("DELETE", "/admin/x", None, 405),
        ("GET", "/admin/x", None, 200),
        ("GET", "/nowhere", None, 404),
        ("GET", "/public/a/../b", None, 400),
        ("GET", "/public/%2e%2e/b", None, 400),
    ];
    for (method, path, auth, expected) in &cases {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let sent = request(gw.addr, method, path, &headers, None).status;
        let (explained, text) = explain(&conf, method, path, &headers);
        assert_eq!(sent, *expected, "gateway: {method} {path}");
        assert_eq!(
            explained, sent,
            "explain disagrees on {method} {path}:\n{text}"
        );
    }

    // The report says why.
    let h = [("Authorization", bearer(&ok))];
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_, text) = explain(&conf, "POST", "/api/x", &h);
    for want in [
        "route: /api/",
        "rate limit per_ip",
        "alg HS256: allowed",
        "iss \"https://idp.example\": accepted",
        "rule realm_access.roles contains [staff]: holds",
        "does not hold (saw error: No such key: tier)",
        "status: 403",
        "www-authenticate: Bearer realm=\"staff\", error=\"insufficient_scope\"",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    let (_, text) = explain(&conf, "GET", "/tenant/x", &h);
    assert!(
        text.contains("upstream_by tenant = \"acme\" -> acme_pool"),
        "{text}"
    );
    assert!(text.contains("x-user: alice"), "{text}");
    let h = [("Authorization", bearer(&expired))];
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_, text) = explain(&conf, "GET", "/api/x", &h);
    assert!(
        text.contains("error_description=\"token expired\""),
        "{text}"
    );
}
