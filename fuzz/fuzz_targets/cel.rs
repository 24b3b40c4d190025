//! CEL compilation of arbitrary expressions, and evaluation of those that compile against a
//! request and a verified token's claims.
//!
//! Properties: nothing panics, at compile or evaluation; an expression that compiles names
//! only the documented variables (a refused one says why); evaluation ends with a value or
//! an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pingora_http::RequestHeader;
use portcullis::auth::expr::{from_json, val, CelVal, Expr, Input};

struct Fixture {
    claims: CelVal,
    header: CelVal,
    request: RequestHeader,
}

// Built once per thread: cel values are not `Sync`.
thread_local! {
    static FIXTURE: Fixture = {
        let claims = serde_json::json!({
            "sub": "user-1", "iss": "https://issuer.example", "aud": ["api", "web"],
            "exp": 4000000000u64, "scope": "read write", "roles": ["admin", "dev"],
            "org": {"id": 42, "name": "acme", "tags": {"a": true}}, "n": -1.5,
            "big": 9223372036854775807i64
        });
        let header = serde_json::json!({"alg": "RS256", "kid": "k1", "typ": "JWT"});
        let mut request = RequestHeader::build("POST", b"/orgs/42/items?x=1&y=2", None).unwrap();
        request.insert_header("host", "api.example.com").unwrap();
        request.insert_header("x-tenant", "acme").unwrap();
        request.append_header("x-multi", "a").unwrap();
        request.append_header("x-multi", "b").unwrap();
        Fixture {
            claims: val(from_json(&claims)),
            header: val(from_json(&header)),
            request,
        }
    };
}

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let expr = match Expr::compile(source) {
        Ok(e) => e,
        Err(why) => {
            assert!(!why.is_empty());
            return;
        }
    };
    FIXTURE.with(|f| {
        let input = Input {
            claims: &f.claims,
            header: &f.header,
            request: &f.request,
            client_ip: Some("203.0.113.9".parse().unwrap()),
            now: 1_800_000_000.0,
        };
        let _ = expr.eval(&input);
    });
});
