//! Authentication: where tokens come from, the keys that verify them, and the checks.

pub mod claims;
pub mod keys;
pub mod token;
pub mod verify;

pub use claims::Claims;
pub use verify::{Verified, Verifier};

use crate::error::{AuthError, Reject};
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use std::sync::Arc;

/// The outcome of a successful check on a protected route.
#[derive(Debug)]
pub struct Passed {
    /// Index of the policy that accepted the token, among the route's policies.
    pub policy: usize,
    pub alg: jsonwebtoken::Algorithm,
    pub kid: Option<String>,
    pub claims: Claims,
    /// Headers to set on the upstream request.
    pub forward: Vec<(HeaderName, HeaderValue)>,
}

/// Check a request against a route's policies; any one may accept it.
///
/// Each policy looks for a token in its own places. The first policy that finds a token and
/// verifies it wins. If none does, the error reported is that of the first policy that found a
/// token (or `Missing`, with the first policy's realm, when no policy found one).
pub fn check(policies: &[Arc<Verifier>], req: &RequestHeader, now: f64) -> Result<Passed, Reject> {
    let mut first_error: Option<(usize, AuthError)> = None;
    for (i, p) in policies.iter().enumerate() {
        let found = p.sources.iter().find_map(|s| s.extract(req));
        let result = match found {
            None => continue,
            Some(Err(e)) => Err(e),
            Some(Ok(token)) => p.verify(&token, now).and_then(|v| {
                let forward = p.forwarded_headers(&v)?;
                Ok(Passed {
                    policy: i,
                    alg: v.alg,
                    kid: v.kid,
                    claims: v.claims,
                    forward,
                })
            }),
        };
        match result {
            Ok(passed) => return Ok(passed),
            Err(e) => {
                first_error.get_or_insert((i, e));
            }
        }
    }
    let (i, error) = first_error.unwrap_or((0, AuthError::Missing));
    Err(Reject::Unauthorized {
        realm: policies.get(i).map(|p| p.realm.clone()).unwrap_or_default(),
        error,
    })
}
