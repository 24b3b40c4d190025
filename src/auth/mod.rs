//! Authentication: where tokens come from, the keys that verify them, and the checks.

pub mod alg;
pub mod cache;
pub mod claims;
pub mod compile;
pub mod expr;
pub mod jwk;
pub mod keys;
pub mod path;
pub mod remote;
pub mod rules;
pub mod token;
pub mod verify;

pub use alg::Alg;
pub use claims::Claims;
pub use path::ClaimPath;
pub use verify::{Verified, Verifier};

use crate::error::{AuthError, Reject};
use crate::explain::Trace;
use crate::limit::Revocation;
use pingora_http::RequestHeader;
use std::sync::Arc;

/// The outcome of a successful check on a protected route.
#[derive(Debug)]
pub struct Passed {
    /// Index of the policy that accepted the token, among the route's policies.
    pub policy: usize,
    /// The verified token: algorithm, key id, claims, headers to set upstream.
    pub token: Arc<cache::VerifiedToken>,
}

/// Check a request against a route's policies; any one may accept it. Returns the index of the
/// policy the outcome belongs to (for metrics) with the outcome.
///
/// Each policy looks for a token in its own places. The first policy that finds a token,
/// verifies it and whose rules hold wins. Otherwise: a revoked token is a 401 at once; a token
/// that verified but failed a policy's rules is a 403 (`insufficient_scope`, that policy's
/// realm); else the 401 of the first policy that found a token, or `Missing` with the first
/// policy's realm when none found one.
pub fn check(
    policies: &[Arc<Verifier>],
    req: &RequestHeader,
    client_ip: Option<std::net::IpAddr>,
    now: f64,
    revocation: Option<&Revocation>,
) -> (usize, Result<Passed, Reject>) {
    check_traced(policies, req, client_ip, now, revocation, &mut ())
}

/// `check`, writing each step down in `trace` (`explain`); the same decision.
pub fn check_traced<T: Trace>(
    policies: &[Arc<Verifier>],
    req: &RequestHeader,
    client_ip: Option<std::net::IpAddr>,
    now: f64,
    revocation: Option<&Revocation>,
    trace: &mut T,
) -> (usize, Result<Passed, Reject>) {
    let mut first_error: Option<(usize, AuthError)> = None;
    let mut forbidden: Option<(usize, Reject)> = None;
    for (i, p) in policies.iter().enumerate() {
        trace.note(0, || format!("policy {}:", p.name));
        let found = p.sources.iter().find_map(|s| s.extract(req));
        let verified = match found {
            None => {
                trace.note(1, || format!("no token in {:?}", p.sources));
                continue;
            }
            Some(Err(e)) => Err(e),
            Some(Ok(token)) => p.verify_token_traced(&token, now, trace).and_then(|v| {
                let revoked = revocation
                    .is_some_and(|r| r.is_revoked(v.claims.str("sub"), v.claims.str("jti")));
                if revoked {
                    return Err(AuthError::Revoked);
                }
                if revocation.is_some() {
                    trace.note(1, || "revocation: not revoked".to_string());
                }
                Ok(Passed {
                    policy: i,
                    token: v,
                })
            }),
        };
        if let Err(e) = &verified {
            trace.note(1, || format!("refused: {}", e.description()));
        }
        match verified {
            Ok(passed) => {
                let facts = rules::Facts {
                    token: &passed.token,
                    request: req,
                    client_ip,
                    now,
                };
                if trace.on() {
                    for r in &p.rules {
                        let v = r.verdict(&facts);
                        let held = if v.holds { "holds" } else { "does not hold" };
                        trace.note(1, || format!("rule {r}: {held} (saw {})", v.saw));
                    }
                }
                match rules::check_all(&p.rules, &facts) {
                    Ok(()) => return (i, Ok(passed)),
                    Err(failure) => {
                        forbidden.get_or_insert((
                            i,
                            Reject::Forbidden {
                                realm: p.realm.clone(),
                                scope: failure.scope,
                                why: crate::error::Why::Rule,
                            },
                        ));
                    }
                }
            }
            Err(AuthError::Revoked) => {
                return (
                    i,
                    Err(Reject::Unauthorized {
                        realm: p.realm.clone(),
                        error: AuthError::Revoked,
                    }),
                )
            }
            Err(e) => {
                first_error.get_or_insert((i, e));
            }
        }
    }
    if let Some((i, f)) = forbidden {
        return (i, Err(f));
    }
    let (i, error) = first_error.unwrap_or((0, AuthError::Missing));
    if error == AuthError::KeysUnavailable {
        return (i, Err(Reject::KeysUnavailable));
    }
    (
        i,
        Err(Reject::Unauthorized {
            realm: policies.get(i).map(|p| p.realm.clone()).unwrap_or_default(),
            error,
        }),
    )
}

/// `check`, and when the token names a `kid` that no key holds and the policies have remote key
/// sets: one shared refetch (see `RemoteKeys::refetch_for_unknown_kid`), then `check` again.
/// RFC 8705 §3: a certificate-bound token carries `cnf: {"x5t#S256": base64url(SHA-256 of the
/// client certificate's DER)}`; `cert_sha256` is that digest of the connection's certificate.
pub fn check_binding(claims: &Claims, cert_sha256: Option<&[u8]>) -> Result<(), AuthError> {
    use base64::Engine;
    let Some(digest) = cert_sha256.filter(|d| !d.is_empty()) else {
        return Err(AuthError::CertificateRequired);
    };
    let bound = claims
        .get("cnf")
        .and_then(|c| c.get("x5t#S256"))
        .and_then(|v| v.as_str())
        .and_then(|s| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .ok()
        });
    match bound {
        Some(b) if b == digest => Ok(()),
        _ => Err(AuthError::CertificateMismatch),
    }
}

pub async fn check_refetching<T: Trace>(
    policies: &[Arc<Verifier>],
    req: &RequestHeader,
    client_ip: Option<std::net::IpAddr>,
    revocation: Option<&Revocation>,
    trace: &mut T,
) -> (usize, Result<Passed, Reject>) {
    let seen: Vec<(Arc<remote::RemoteKeys>, u64)> = policies
        .iter()
        .flat_map(|p| p.remote.iter())
        .map(|r| (r.clone(), r.generation()))
        .collect();
    let first = check_traced(policies, req, client_ip, verify::now(), revocation, trace);
    let unknown_kid = matches!(
        &first.1,
        Err(Reject::Unauthorized {
            error: AuthError::UnknownKid,
            ..
        })
    );
    if seen.is_empty() || !unknown_kid {
        return first;
    }
    let mut changed = false;
    for (keys, generation) in &seen {
        // Boxed: the fetch (connect, TLS, HTTP) is a large future, and inline it would make the
        // future of every request's `request_filter` as large — Pingora boxes and copies that
        // future on each request. Boxed, only this rare path pays for it.
        changed |= Box::pin(keys.refetch_for_unknown_kid(*generation)).await;
    }
    if changed {
        trace.note(0, || {
            "unknown kid: remote keys fetched again; checked once more".into()
        });
        check_traced(policies, req, client_ip, verify::now(), revocation, trace)
    } else {
        first
    }
}
