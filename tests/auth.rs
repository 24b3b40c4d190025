//! End to end: JWT verification as a client sees it, and what reaches the upstream.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};

fn config(echo: &EchoServer) -> String {
    format!(
        r#"
upstreams:
  api: {{peers: ["{echo}"]}}
keys:
  hmac: {{secret: "0123456789abcdef0123456789abcdef"}}
  rsa: {{pem_file: "{k}/rsa_public.pem"}}
  ec: {{pem_file: "{k}/ec_public.pem"}}
  ed: {{pem_file: "{k}/ed_public.pem"}}
  jwks: {{jwks_file: "{k}/jwks.json"}}
auth:
  hs:
    keys: hmac
    algorithms: [HS256]
    realm: "HS API"
    issuer: tests
    audience: [api, web]
    leeway: 5s
    forward_claims: {{X-User: sub, X-Scope: scope, X-Admin: admin}}
    forward_payload: X-JWT-Payload
  rs: {{keys: rsa, algorithms: [RS256, PS256], realm: "RS API", forward_claims: {{X-User: sub}}}}
  es: {{keys: ec, algorithms: [ES256]}}
  ed: {{keys: ed, algorithms: [EdDSA]}}
  set: {{keys: jwks, algorithms: [RS256, ES256]}}
  sources:
    keys: hmac
    algorithms: [HS256]
    token_from: ["query:apijwt", "cookie:jwt", "header:X-Api-Token"]
routes:
  - {{prefix: /hs/, upstream: api, auth: hs}}
  - {{prefix: /rs/, upstream: api, auth: rs}}
  - {{prefix: /es/, upstream: api, auth: es}}
  - {{prefix: /ed/, upstream: api, auth: ed}}
  - {{prefix: /set/, upstream: api, auth: set}}
  - {{prefix: /either/, upstream: api, auth: [rs, hs]}}
  - {{prefix: /sources/, upstream: api, auth: sources}}
  - {{prefix: /, upstream: api}}
"#,
        echo = echo.addr,
        k = keys_dir().display()
    )
}

struct Setup {
    echo: EchoServer,
    gw: Gateway,
}

fn setup() -> Setup {
    let echo = echo();
    let gw = Gateway::start(&config(&echo));
    Setup { echo, gw }
}

/// Claims the `hs` policy accepts.
fn good_hs_claims() -> Value {
    json!({"sub": "alice", "iss": "tests", "aud": "api", "exp": now() + 600, "scope": "read write"})
}

/// Assert a 401 `invalid_token` with this description, and that the upstream saw nothing.
fn assert_invalid(s: &Setup, r: &Response, description: &str) {
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    let challenge = r.header("www-authenticate").expect("a challenge");
    assert!(challenge.starts_with("Bearer realm="), "{challenge}");
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    assert!(
        challenge.contains(&format!(r#"error_description="{description}""#)),
        "{challenge}"
    );
    assert_eq!(
        r.json(),
        json!({"error": "invalid_token", "error_description": description})
    );
    assert_eq!(s.echo.hits(), 0, "a refused request reached the upstream");
}

#[test]
fn no_token_is_401_with_a_bearer_challenge_and_nothing_upstream() {
    let s = setup();
    let r = s.gw.get("/hs/items", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="HS API""#)
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"], "unauthorized");
    // Another scheme is no bearer token either.
    let r = s.gw.get("/hs/items", &[("Authorization", "Basic YTpi")]);
    assert_eq!(r.status, 401);
    assert_eq!(s.echo.hits(), 0);
}

#[test]
fn valid_token_reaches_upstream_with_claim_headers() {
    let s = setup();
    let token = hs256(SECRET, &good_hs_claims());
    let r = s.gw.bearer("/hs/items?id=7", &token);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["path"], "/hs/items?id=7");
    assert_eq!(r.upstream_header("x-user").as_deref(), Some("alice"));
    assert_eq!(r.upstream_header("x-scope").as_deref(), Some("read write"));
    // The payload header is the token's own payload segment.
    let payload = token.split('.').nth(1).unwrap();
    assert_eq!(r.upstream_header("x-jwt-payload").as_deref(), Some(payload));
    // A claim that is absent sets no header.
    assert_eq!(r.upstream_header("x-admin"), None);
    assert_eq!(s.echo.hits(), 1);
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    let s = setup();
    let token = hs256(SECRET, &good_hs_claims());
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let auth = format!("{scheme} {token}");
        let r = s.gw.get("/hs/x", &[("Authorization", &auth)]);
        assert_eq!(r.status, 200, "{scheme}");
    }
}

#[test]
fn client_copies_of_forwarded_headers_are_replaced_or_removed() {
    let s = setup();
    let token = hs256(SECRET, &good_hs_claims());
    let auth = format!("Bearer {token}");
    let r = s.gw.get(
        "/hs/x",
        &[
            ("Authorization", &auth),
            ("X-User", "mallory"),
            ("X-Admin", "true"),
            ("X-JWT-Payload", "forged"),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_headers("x-user"), vec!["alice".to_string()]);
    assert!(r.upstream_headers("x-admin").is_empty());
    assert_eq!(r.upstream_headers("x-jwt-payload").len(), 1);
    assert_ne!(
        r.upstream_header("x-jwt-payload").as_deref(),
        Some("forged")
    );
    // Public routes too: the headers of every policy are stripped.
    let r = s.gw.get(
        "/public",
        &[("X-User", "mallory"), ("x-jwt-payload", "forged")],
    );
    assert_eq!(r.status, 200);
    assert!(r.upstream_headers("x-user").is_empty());
    assert!(r.upstream_headers("x-jwt-payload").is_empty());
}

#[test]
fn expired_and_not_yet_valid_tokens_respect_leeway() {
    let s = setup();
    let mut c = good_hs_claims();
    c["exp"] = json!(now() - 2); // inside the 5 s leeway
    assert_eq!(s.gw.bearer("/hs/x", &hs256(SECRET, &c)).status, 200);
    c["exp"] = json!(now() - 60);
    let r = s.gw.bearer("/hs/x", &hs256(SECRET, &c));
    let before = s.echo.hits();
    assert_eq!(before, 1);
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("token expired"));
    let mut c = good_hs_claims();
    c["nbf"] = json!(now() + 60);
    let r = s.gw.bearer("/hs/x", &hs256(SECRET, &c));
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("token not yet valid"));
    assert_eq!(s.echo.hits(), before);
}

#[test]
fn wrong_issuer_or_audience() {
    let s = setup();
    let mut c = good_hs_claims();
    c["iss"] = json!("someone-else");
    assert_invalid(
        &s,
        &s.gw.bearer("/hs/x", &hs256(SECRET, &c)),
        "issuer not allowed",
    );
    let mut c = good_hs_claims();
    c["aud"] = json!(["other"]);
    assert_invalid(
        &s,
        &s.gw.bearer("/hs/x", &hs256(SECRET, &c)),
        "audience not allowed",
    );
    let mut c = good_hs_claims();
    c["aud"] = json!(["other", "web"]);
    assert_eq!(s.gw.bearer("/hs/x", &hs256(SECRET, &c)).status, 200);
}

#[test]
fn bad_signature() {
    let s = setup();
    let token = hs256(b"another secret, another secret!!", &good_hs_claims());
    assert_invalid(&s, &s.gw.bearer("/hs/x", &token), "signature invalid");
}

#[test]
fn malformed_tokens() {
    let s = setup();
    for t in ["abc", "a.b", "a.b.c", "....", "e30.e30.", "!!!.???.***"] {
        let r = s.gw.bearer("/hs/x", t);
        assert_eq!(r.status, 401, "{t}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("invalid_token"),
            "{t}"
        );
    }
    assert_eq!(s.echo.hits(), 0);
}

#[test]
fn alg_none_in_any_casing_is_refused() {
    let s = setup();
    let payload = b64(good_hs_claims().to_string().as_bytes());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
        for sig in ["", "c2lnbmF0dXJl"] {
            let t = format!("{header}.{payload}.{sig}");
            let r = s.gw.bearer("/hs/x", &t);
            assert_eq!(r.status, 401, "{alg} {sig:?}");
        }
    }
    assert_eq!(s.echo.hits(), 0);
}

#[test]
fn algorithm_outside_the_policy_list_is_refused() {
    let s = setup();
    let t = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &good_hs_claims(),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    assert_invalid(&s, &s.gw.bearer("/hs/x", &t), "algorithm not allowed");
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let s = setup();
    let claims = json!({"sub": "mallory"});
    let pem = read_key("rsa_public.pem");
    // The PEM text as the HMAC secret.
    let t = hs256(&pem, &claims);
    assert_invalid(&s, &s.gw.bearer("/rs/x", &t), "algorithm not allowed");
    // The DER body, and the modulus alone, as the secret.
    let (_, der) = portcullis::auth::jwk::pem_block(&pem).unwrap();
    let t = hs256(&der, &claims);
    assert_invalid(&s, &s.gw.bearer("/rs/x", &t), "algorithm not allowed");
    let jwks: Value = serde_json::from_slice(&read_key("jwks.json")).unwrap();
    let n = jwks["keys"][0]["n"].as_str().unwrap();
    let t = hs256(n.as_bytes(), &claims);
    assert_invalid(&s, &s.gw.bearer("/set/x", &t), "algorithm not allowed");
}

#[test]
fn unknown_crit_extension_is_refused() {
    let s = setup();
    let t = hs256_raw(
        SECRET,
        r#"{"alg":"HS256","crit":["http://example.com/ext"],"http://example.com/ext":true}"#,
        &good_hs_claims().to_string(),
    );
    assert_invalid(&s, &s.gw.bearer("/hs/x", &t), "unsupported critical header");
}

#[test]
fn key_urls_and_embedded_keys_in_the_header_are_never_used() {
    let s = setup();
    // A listener that would see the gateway fetch a jku/x5u URL.
    let trap = echo();
    let url = format!("http://{}/keys", trap.addr);
    // The attacker signs with their own RSA key (rsa2 is not in the `rs` key set) and points
    // at it every way JOSE allows.
    let rsa2_jwk: Value = serde_json::from_slice(&read_key("jwks.json")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.jku = Some(url.clone());
    header.x5u = Some(url);
    header.jwk = Some(serde_json::from_value(rsa2_jwk["keys"][0].clone()).unwrap());
    let t = sign_pem_with_header(header, "rsa2_private.pem", &json!({"sub": "mallory"}));
    assert_invalid(&s, &s.gw.bearer("/rs/x", &t), "signature invalid");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(trap.hits(), 0, "the gateway fetched a URL from the token");
}

#[test]
fn ecdsa_zero_signature_is_refused() {
    let s = setup();
    let header = b64(br#"{"alg":"ES256"}"#);
    let payload = b64(br#"{"sub":"mallory"}"#);
    let zero = b64(&[0u8; 64]);
    assert_invalid(
        &s,
        &s.gw.bearer("/es/x", &format!("{header}.{payload}.{zero}")),
        "signature invalid",
    );
}

#[test]
fn string_exp_is_refused() {
    let s = setup();
    let t = hs256_raw(
        SECRET,
        r#"{"alg":"HS256"}"#,
        r#"{"sub":"alice","iss":"tests","aud":"api","exp":"9999999999"}"#,
    );
    assert_invalid(
        &s,
        &s.gw.bearer("/hs/x", &t),
        "exp, nbf or iat is not a number",
    );
    let t = hs256_raw(
        SECRET,
        r#"{"alg":"HS256"}"#,
        r#"{"sub":"alice","iss":"tests","aud":"api","nbf":"0"}"#,
    );
    assert_invalid(
        &s,
        &s.gw.bearer("/hs/x", &t),
        "exp, nbf or iat is not a number",
    );
}

#[test]
fn duplicate_json_keys_are_refused() {
    let s = setup();
    let t = hs256_raw(
        SECRET,
        r#"{"alg":"HS256"}"#,
        r#"{"sub":"alice","iss":"tests","aud":"api","sub":"admin"}"#,
    );
    assert_invalid(&s, &s.gw.bearer("/hs/x", &t), "token malformed");
    let t = hs256_raw(
        SECRET,
        r#"{"alg":"HS256","alg":"none"}"#,
        r#"{"sub":"alice","iss":"tests","aud":"api"}"#,
    );
    assert_invalid(&s, &s.gw.bearer("/hs/x", &t), "token malformed");
}

#[test]
fn hostile_kid_values_are_refused() {
    let s = setup();
    let long = "k".repeat(4000);
    let kids: Vec<Value> = vec![
        json!("../../../../dev/null"),
        json!("' OR '1'='1"),
        json!("rsa2\u{0000}"),
        json!(long),
        json!(42),
        json!(["rsa2"]),
        json!("nonexistent"),
    ];
    for kid in kids {
        let header = json!({"alg": "RS256", "kid": kid}).to_string();
        let msg = format!("{}.{}", b64(header.as_bytes()), b64(br#"{"sub":"x"}"#));
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&read_key("rsa2_private.pem")).unwrap();
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, Algorithm::RS256).unwrap();
        let r = s.gw.bearer("/set/x", &format!("{msg}.{sig}"));
        assert_eq!(r.status, 401, "kid {kid}");
    }
    assert_eq!(s.echo.hits(), 0);
    // The gateway is still up and serving.
    assert_eq!(s.gw.get("/public", &[]).status, 200);
}

#[test]
fn huge_tokens_get_a_4xx_and_the_gateway_stays_up() {
    let s = setup();
    // Over our token limit but within header limits: a clean 401.
    let big = "a".repeat(20_000);
    let r = s.gw.bearer("/hs/x", &format!("{big}.{big}.{big}"));
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("token too large"));
    // 500 kB: still a clean 4xx, never a 5xx.
    let huge = "a".repeat(500_000);
    let raw = format!(
        "GET /hs/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {huge}\r\nConnection: close\r\n\r\n"
    );
    let r = raw_request(s.gw.addr, raw.as_bytes()).expect("an answer");
    assert!((400..500).contains(&r.status), "status {}", r.status);
    assert_eq!(s.echo.hits(), 0);
    assert_eq!(s.gw.get("/public", &[]).status, 200);
}

#[test]
fn every_algorithm_family_verifies() {
    let s = setup();
    let c = json!({"sub": "bob", "exp": now() + 60});
    let cases = [
        ("/rs/x", sign_pem(Algorithm::RS256, "rsa_private.pem", &c)),
        ("/rs/x", sign_pem(Algorithm::PS256, "rsa_private.pem", &c)),
        ("/es/x", sign_pem(Algorithm::ES256, "ec_private.pem", &c)),
        ("/ed/x", sign_pem(Algorithm::EdDSA, "ed_private.pem", &c)),
    ];
    for (path, t) in &cases {
        let r = s.gw.bearer(path, t);
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // A JWKS picks the key by kid.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa2".into());
    let t = sign_pem_with_header(h, "rsa2_private.pem", &c);
    assert_eq!(s.gw.bearer("/set/x", &t).status, 200);
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec1".into());
    let t = sign_pem_with_header(h, "ec_private.pem", &c);
    assert_eq!(s.gw.bearer("/set/x", &t).status, 200);
    // A kid the set does not hold.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rotated-away".into());
    let t = sign_pem_with_header(h, "rsa2_private.pem", &c);
    let r = s.gw.bearer("/set/x", &t);
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("unknown key id"));
    // A key of the wrong family for the route.
    let t = sign_pem(Algorithm::ES256, "ec_private.pem", &c);
    assert_eq!(s.gw.bearer("/rs/x", &t).status, 401);
    assert_eq!(s.echo.hits(), cases.len() + 2);
}

#[test]
fn token_sources_query_cookie_and_header() {
    let s = setup();
    let t = hs256(SECRET, &json!({"sub": "carol"}));
    assert_eq!(s.gw.get(&format!("/sources/x?apijwt={t}"), &[]).status, 200);
    let cookie = format!("theme=dark; jwt={t}");
    assert_eq!(s.gw.get("/sources/x", &[("Cookie", &cookie)]).status, 200);
    assert_eq!(s.gw.get("/sources/x", &[("X-Api-Token", &t)]).status, 200);
    // This policy does not read the Authorization header.
    let r = s.gw.bearer("/sources/x", &t);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthorized");
    // A bad token in the first source that has one is an invalid token.
    let r =
        s.gw.get("/sources/x?apijwt=bad.token.here", &[("X-Api-Token", &t)]);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid_token");
    assert_eq!(s.echo.hits(), 3);
}

#[test]
fn any_of_policies() {
    let s = setup();
    let rs = sign_pem(
        Algorithm::RS256,
        "rsa_private.pem",
        &json!({"sub": "from-rs"}),
    );
    let hs = hs256(SECRET, &good_hs_claims());
    let r = s.gw.bearer("/either/x", &rs);
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-user").as_deref(), Some("from-rs"));
    let r = s.gw.bearer("/either/x", &hs);
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-user").as_deref(), Some("alice"));
    // Neither: the first policy's realm and error.
    let r = s.gw.bearer("/either/x", "x.y.z");
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .starts_with(r#"Bearer realm="RS API""#));
    let r = s.gw.get("/either/x", &[]);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="RS API""#)
    );
}

#[test]
fn claims_that_cannot_be_headers_are_refused() {
    let s = setup();
    let mut c = good_hs_claims();
    c["sub"] = json!("alice\r\nX-Admin: true");
    let r = s.gw.bearer("/hs/x", &hs256(SECRET, &c));
    assert_invalid(&s, &r, "claim cannot be forwarded");
    // Non-string claims are forwarded as JSON text.
    let mut c = good_hs_claims();
    c["admin"] = json!(true);
    c["scope"] = json!(["a", "b"]);
    let r = s.gw.bearer("/hs/x", &hs256(SECRET, &c));
    assert_eq!(r.upstream_header("x-admin").as_deref(), Some("true"));
    assert_eq!(
        r.upstream_header("x-scope").as_deref(),
        Some(r#"["a","b"]"#)
    );
}

#[test]
fn two_tokens_in_one_place_are_refused() {
    let s = setup();
    let good = hs256(SECRET, &good_hs_claims());
    let a = format!("Bearer {good}");
    let r = s.gw.get(
        "/hs/x",
        &[
            ("Authorization", &a),
            ("Authorization", "Bearer forged.by.client"),
        ],
    );
    assert_invalid(&s, &r, "more than one token");
    let r =
        s.gw.get(&format!("/sources/x?apijwt={good}&apijwt={good}"), &[]);
    assert_eq!(r.status, 401);
    assert_eq!(s.echo.hits(), 0);
}

#[test]
fn cached_tokens_still_expire_and_the_cache_can_be_off() {
    let echo = echo();
    let gw = Gateway::start(&format!(
        r#"
upstreams: {{api: {{peers: ["{}"]}}}}
keys: {{k: {{secret: "0123456789abcdef0123456789abcdef"}}}}
auth:
  cached: {{keys: k, algorithms: [HS256]}}
  uncached: {{keys: k, algorithms: [HS256], cache: false}}
routes:
  - {{prefix: /c/, upstream: api, auth: cached}}
  - {{prefix: /u/, upstream: api, auth: uncached}}
"#,
        echo.addr
    ));
    let t = hs256(SECRET, &json!({"sub": "a", "exp": now() + 2}));
    for path in ["/c/x", "/u/x"] {
        assert_eq!(gw.bearer(path, &t).status, 200);
        assert_eq!(gw.bearer(path, &t).status, 200);
    }
    std::thread::sleep(std::time::Duration::from_millis(2100));
    for path in ["/c/x", "/u/x"] {
        let r = gw.bearer(path, &t);
        assert_eq!(r.status, 401, "{path}");
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("token expired"));
    }
}
