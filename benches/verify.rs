//! Criterion benchmarks of the request path's CPU work: token verification per algorithm,
//! the whole `auth::check` on a request, and route matching.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pingora_http::RequestHeader;
use portcullis::auth::jwk::{parse_public_pem, secret_key, Key};
use portcullis::auth::Verifier;
use portcullis::policy::{HostMatch, Route, RouteTable};
use portcullis::upstream::Pool;
use serde_json::json;
use std::sync::Arc;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/");

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS}{name}")).unwrap()
}

/// A policy as a real deployment has it: issuer, audience, exp required, one forwarded claim.
fn verifier(key: Key, alg: Algorithm) -> Verifier {
    // jsonwebtoken's name for the signer, ours for the verifier.
    let ours = portcullis::auth::Alg::parse(&format!("{alg:?}")).unwrap();
    let mut v = Verifier::basic("bench", &[ours], vec![key]);
    v.issuers = vec!["https://issuer.example".into()];
    v.audiences = vec!["api".into()];
    v.require_exp = true;
    v.forward_claims = vec![(
        http::HeaderName::from_static("x-user"),
        portcullis::auth::ClaimPath::top("sub"),
    )];
    v
}

fn claims() -> serde_json::Value {
    json!({
        "sub": "user-1234567890",
        "iss": "https://issuer.example",
        "aud": "api",
        "exp": 4_000_000_000u64,
        "iat": 1_700_000_000u64,
        "scope": "read:items write:items",
    })
}

fn bench_verify(c: &mut Criterion) {
    let now = 1_800_000_000.0;
    let hs_secret = b"0123456789abcdef0123456789abcdef";
    let cases: Vec<(&str, Verifier, String)> = vec![
        (
            "HS256",
            verifier(secret_key(hs_secret, None), Algorithm::HS256),
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims(),
                &EncodingKey::from_secret(hs_secret),
            )
            .unwrap(),
        ),
        (
            "RS256",
            verifier(
                parse_public_pem(&read("rsa_public.pem")).unwrap(),
                Algorithm::RS256,
            ),
            jsonwebtoken::encode(
                &Header::new(Algorithm::RS256),
                &claims(),
                &EncodingKey::from_rsa_pem(&read("rsa_private.pem")).unwrap(),
            )
            .unwrap(),
        ),
        (
            "ES256",
            verifier(
                parse_public_pem(&read("ec_public.pem")).unwrap(),
                Algorithm::ES256,
            ),
            jsonwebtoken::encode(
                &Header::new(Algorithm::ES256),
                &claims(),
                &EncodingKey::from_ec_pem(&read("ec_private.pem")).unwrap(),
            )
            .unwrap(),
        ),
        (
            "EdDSA",
            verifier(
                parse_public_pem(&read("ed_public.pem")).unwrap(),
                Algorithm::EdDSA,
            ),
            jsonwebtoken::encode(
                &Header::new(Algorithm::EdDSA),
                &claims(),
                &EncodingKey::from_ed_pem(&read("ed_private.pem")).unwrap(),
            )
            .unwrap(),
        ),
    ];
    let mut g = c.benchmark_group("verify");
    for (name, v, token) in &cases {
        assert!(v.verify(token, now).is_ok(), "{name} token must verify");
        g.bench_function(*name, |b| {
            b.iter(|| v.verify(black_box(token), now).unwrap())
        });
    }
    // Refusals that must stay cheap: they are what an attacker can send for free.
    let (_, hs, token) = &cases[0];
    let bad_sig = format!("{}x", &token[..token.len() - 1]);
    g.bench_function("HS256 bad signature", |b| {
        b.iter(|| hs.verify(black_box(&bad_sig), now).unwrap_err())
    });
    g.bench_function("malformed", |b| {
        b.iter(|| hs.verify(black_box("not.a.token"), now).unwrap_err())
    });
    g.finish();

    // The whole check on a request: extraction, verification, forwarded headers.
    let policies = vec![Arc::new(verifier(
        secret_key(hs_secret, None),
        Algorithm::HS256,
    ))];
    let mut req = RequestHeader::build("GET", b"/api/items?x=1", None).unwrap();
    req.insert_header("authorization", format!("Bearer {token}"))
        .unwrap();
    c.bench_function("auth::check HS256 request", |b| {
        b.iter(|| {
            portcullis::auth::check(black_box(&policies), &req, None, now, None)
                .1
                .unwrap()
        })
    });
    // The same with the verified-token cache: every iteration after the first is a hit.
    let mut cached = verifier(secret_key(hs_secret, None), Algorithm::HS256);
    cached.cache = Some(portcullis::auth::cache::TokenCache::new(1024));
    let cached = vec![Arc::new(cached)];
    c.bench_function("auth::check HS256 request, cache hit", |b| {
        b.iter(|| {
            portcullis::auth::check(black_box(&cached), &req, None, now, None)
                .1
                .unwrap()
        })
    });
    let mut rs_cached = verifier(
        parse_public_pem(&read("rsa_public.pem")).unwrap(),
        Algorithm::RS256,
    );
    rs_cached.cache = Some(portcullis::auth::cache::TokenCache::new(1024));
    let rs_cached = vec![Arc::new(rs_cached)];
    let mut rs_req = RequestHeader::build("GET", b"/api/items?x=1", None).unwrap();
    rs_req
        .insert_header("authorization", format!("Bearer {}", cases[1].2))
        .unwrap();
    c.bench_function("auth::check RS256 request, cache hit", |b| {
        b.iter(|| {
            portcullis::auth::check(black_box(&rs_cached), &rs_req, None, now, None)
                .1
                .unwrap()
        })
    });
}

fn bench_routes(c: &mut Criterion) {
    let pool = Arc::new(Pool::new("p", vec![("127.0.0.1:1".parse().unwrap(), 1)]));
    let mk = |i: usize, prefix: String| {
        (
            i,
            Route::basic(
                &prefix,
                HostMatch::Any,
                None,
                portcullis::upstream::Choice::Fixed(pool.clone()),
            ),
        )
    };
    for n in [4usize, 64] {
        let mut routes: Vec<(usize, Route)> =
            (0..n).map(|i| mk(i, format!("/service{i}/v1/"))).collect();
        routes.push(mk(n, "/".into()));
        let table = RouteTable::new(routes).unwrap();
        let last = format!("/service{}/v1/items/42", n - 1);
        c.bench_function(&format!("route match, {n} routes, deepest"), |b| {
            b.iter(|| {
                table
                    .find(None, black_box(&last), &http::Method::GET)
                    .unwrap()
            })
        });
        c.bench_function(&format!("route match, {n} routes, fallback"), |b| {
            b.iter(|| {
                table
                    .find(None, black_box("/other/path"), &http::Method::GET)
                    .unwrap()
            })
        });
    }
}

fn bench_access_log(c: &mut Criterion) {
    use portcullis::observe::access_log::{now_rfc3339, JwtInfo, Line, Target};
    use portcullis::observe::AccessLog;
    let path = std::env::temp_dir().join(format!("portcullis-bench-{}.log", std::process::id()));
    let log = AccessLog::start(
        Target::File(path.clone()),
        vec![portcullis::auth::ClaimPath::top("sub")],
    )
    .unwrap();
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), json!("user-1234567890"));
    // What the request path pays: build the line (time, addresses, claims), format it, queue it.
    c.bench_function("access log line (format + queue)", |b| {
        b.iter(|| {
            log.log(&Line {
                time: now_rfc3339(),
                remote_addr: Some("127.0.0.1:50000".to_string()),
                method: "GET",
                path: "/api/items/42",
                status: 200,
                route: Some("/api/"),
                upstream: Some("127.0.0.1:9000".to_string()),
                duration_ms: 0.42,
                bytes_sent: 512,
                jwt: Some(JwtInfo {
                    alg: "RS256",
                    kid: Some("key-1"),
                }),
                claims: claims.clone(),
                auth_result: Some("ok"),
                client_ip: None,
                request_id: None,
                trace_id: None,
                client_cert: None,
            })
        })
    });
    let _ = std::fs::remove_file(path);
}

/// The canonical request (`edge::normalise`), run on every request before routing: a target
/// already canonical (the common case: nothing allocated) and one that must be rewritten.
fn bench_canonical(c: &mut Criterion) {
    use pingora_http::RequestHeader;
    use portcullis::edge::{normalise, EdgeRules};
    let rules = EdgeRules::default();
    let protected = vec![http::HeaderName::from_static("x-user")];
    for (name, target) in [
        (
            "canonical",
            &b"/api/v1/products/12345?fields=name,price"[..],
        ),
        (
            "rewritten",
            &b"//api//v1/%70roducts/12345?fields=name,price"[..],
        ),
    ] {
        let mut req = RequestHeader::build("GET", target, None).unwrap();
        req.insert_header("host", "api.example.com").unwrap();
        req.insert_header("user-agent", "bench/1.0").unwrap();
        req.insert_header("accept", "application/json").unwrap();
        c.bench_function(&format!("edge::normalise {name}"), |b| {
            b.iter_batched_ref(
                || req.clone(),
                |r| normalise(black_box(r), &rules, &protected).unwrap(),
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

/// The two example expressions of docs/configuration.md, on a cached token (the CEL values of a
/// token are made once, on its first evaluation), and the cached HS256 check with one of them as
/// its only rule: compare with "auth::check HS256 request, cache hit".
fn bench_expressions(c: &mut Criterion) {
    let now = 1_800_000_000.0;
    let secret = b"0123456789abcdef0123456789abcdef";
    let mut payload = claims();
    payload["tier"] = json!("gold");
    payload["realm_access"] = json!({"roles": ["staff", "admin"]});
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &payload,
        &EncodingKey::from_secret(secret),
    )
    .unwrap();
    let mut req = RequestHeader::build("POST", b"/users/user-1234567890/items", None).unwrap();
    req.insert_header("authorization", format!("Bearer {token}"))
        .unwrap();
    let rule = |src: &str| {
        portcullis::auth::rules::Rule::compile(
            &serde_yaml::from_str(&format!("{{expr: {src:?}}}")).unwrap(),
        )
        .unwrap()
    };
    for (name, src) in [
        ("expr cost: true", "true"),
        ("expr cost: claims only", r#"claims.tier == "gold""#),
        ("expr cost: request only", r#"request.method == "GET""#),
    ] {
        let r = rule(src);
        let v = verifier(secret_key(secret, None), Algorithm::HS256);
        let verified = v.verify_token(&token, now).unwrap();
        let facts = portcullis::auth::rules::Facts {
            token: &verified,
            request: &req,
            client_ip: None,
            now,
        };
        c.bench_function(name, |b| b.iter(|| black_box(&r).holds_for(&facts)));
    }
    let examples = [
        (
            "expr tier or GET",
            r#"claims.tier == "gold" || request.method == "GET""#,
        ),
        (
            "expr owner path or admin",
            r#"request.path.startsWith("/users/" + claims.sub + "/") || "admin" in claims.realm_access.roles"#,
        ),
    ];
    let v = verifier(secret_key(secret, None), Algorithm::HS256);
    let verified = v.verify_token(&token, now).unwrap();
    for (name, src) in examples {
        let r = rule(src);
        let facts = portcullis::auth::rules::Facts {
            token: &verified,
            request: &req,
            client_ip: None,
            now,
        };
        assert!(r.holds_for(&facts), "{name}");
        c.bench_function(name, |b| b.iter(|| black_box(&r).holds_for(&facts)));
    }
    let mut cached = verifier(secret_key(secret, None), Algorithm::HS256);
    cached.cache = Some(portcullis::auth::cache::TokenCache::new(1024));
    cached.rules = vec![rule(examples[0].1)];
    let cached = vec![Arc::new(cached)];
    c.bench_function("auth::check HS256 request, cache hit, one expr rule", |b| {
        b.iter(|| {
            portcullis::auth::check(black_box(&cached), &req, None, now, None)
                .1
                .unwrap()
        })
    });
}

criterion_group!(
    benches,
    bench_verify,
    bench_expressions,
    bench_routes,
    bench_access_log,
    bench_canonical
);
criterion_main!(benches);
