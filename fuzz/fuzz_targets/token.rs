//! The token path end to end: arbitrary bytes as the Bearer value, through `auth::check`,
//! against HS, RS/PS, ES and EdDSA policies, with the verified-token cache on and off.
//!
//! Properties: nothing panics; a token the gateway admits verifies under an independent
//! check (aws-lc-rs directly) with the algorithm the policy allows, and its claims meet the
//! policy (exp in the future, issuer, audience); with the cache on, asking twice gives the
//! same answer as asking once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pingora_http::RequestHeader;
use portcullis::auth::jwk::{parse_public_pem, secret_key};
use portcullis::auth::{Alg, Verifier};
use portcullis_fuzz::*;
use std::sync::{Arc, LazyLock};

struct Setup {
    policies: Vec<(Vec<Arc<Verifier>>, &'static [&'static str])>,
    keys: RefKeys,
}

fn policy(algs: &[Alg], key: portcullis::auth::jwk::Key, cache: bool) -> Arc<Verifier> {
    let mut v = Verifier::basic("fuzz", algs, vec![key]);
    v.issuers = vec![ISSUER.into()];
    v.audiences = vec![AUDIENCE.into()];
    v.require_exp = true;
    v.forward_claims = vec![(
        http::HeaderName::from_static("x-user"),
        portcullis::auth::ClaimPath::top("sub"),
    )];
    if cache {
        v.cache = Some(portcullis::auth::cache::TokenCache::new(64));
    }
    Arc::new(v)
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let hs = || secret_key(HS_SECRET, None);
    let pem = |n: &str| parse_public_pem(&read_key(n)).expect("test key");
    let mut policies = Vec::new();
    for cache in [false, true] {
        let families: [(Vec<Arc<Verifier>>, &'static [&'static str]); 4] = [
            (
                vec![policy(&[Alg::HS256, Alg::HS384, Alg::HS512], hs(), cache)],
                &["HS256", "HS384", "HS512"],
            ),
            (
                vec![policy(
                    &[Alg::RS256, Alg::PS256],
                    pem("rsa_public.pem"),
                    cache,
                )],
                &["RS256", "PS256"],
            ),
            (
                vec![policy(&[Alg::ES256], pem("ec_public.pem"), cache)],
                &["ES256"],
            ),
            (
                vec![policy(&[Alg::EdDSA], pem("ed_public.pem"), cache)],
                &["EdDSA"],
            ),
        ];
        policies.extend(families);
    }
    // All four families on one route: any policy may accept.
    let all: Vec<Arc<Verifier>> = policies[4..].iter().flat_map(|(p, _)| p.clone()).collect();
    policies.push((
        all,
        &[
            "HS256", "HS384", "HS512", "RS256", "PS256", "ES256", "EdDSA",
        ],
    ));
    Setup {
        policies,
        keys: RefKeys::load(),
    }
});

fn accepted_property(token: &str, algs: &[&str], keys: &RefKeys) {
    let claims = match reference_verify(token, keys) {
        Ok(c) => c,
        Err(why) => panic!("admitted a token the reference check refuses ({why}): {token:?}"),
    };
    let header: serde_json::Value = {
        use base64::Engine;
        let h = token.split('.').next().unwrap_or_default();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap_or_default();
        serde_json::from_slice(&raw).unwrap_or_default()
    };
    let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
    assert!(
        algs.contains(&alg),
        "admitted alg {alg:?}, allowed {algs:?}"
    );
    assert!(header.get("crit").is_none(), "admitted a token with crit");
    let exp = claims.get("exp").and_then(|e| e.as_f64());
    assert!(
        exp.is_some_and(|e| e > NOW),
        "admitted exp {exp:?} at {NOW}"
    );
    if let Some(nbf) = claims.get("nbf") {
        assert!(
            nbf.as_f64().is_some_and(|n| n <= NOW),
            "admitted nbf {nbf:?}"
        );
    }
    assert_eq!(claims.get("iss").and_then(|i| i.as_str()), Some(ISSUER));
    let aud_ok = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => a == AUDIENCE,
        Some(serde_json::Value::Array(l)) => l.iter().any(|a| a.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    assert!(aud_ok, "admitted aud {:?}", claims.get("aud"));
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let setup = &*SETUP;
    let (policies, algs) = &setup.policies[which as usize % setup.policies.len()];
    let mut req = RequestHeader::build("GET", b"/api", None).expect("request");
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(rest);
    if req.insert_header("authorization", value).is_err() {
        return; // not a header value a client can send
    }
    let (_, first) = portcullis::auth::check(policies, &req, None, NOW, None);
    let (_, second) = portcullis::auth::check(policies, &req, None, NOW, None);
    let first = first.map(|p| p.token.claims.clone());
    let second = second.map(|p| p.token.claims.clone());
    assert_eq!(
        format!("{first:?}"),
        format!("{second:?}"),
        "the second check (cache warm) disagrees with the first"
    );
    if first.is_ok() {
        let token = std::str::from_utf8(rest)
            .expect("an admitted token is text")
            .trim();
        accepted_property(token, algs, &setup.keys);
    }
});
