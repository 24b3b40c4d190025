//! A compiled JWT policy and the verification of one compact JWS token.
//!
//! The header and payload are parsed here, strictly; `jsonwebtoken` is used for the signature
//! only (`crypto::verify` with a `DecodingKey` built at compile time). That keeps every decision
//! that matters for security in one readable place: which algorithms, which key, `crit`,
//! duplicate members, the types of `exp`/`nbf`.

use super::alg::Alg;
use super::cache::{TokenCache, VerifiedToken};
use super::claims::Claims;
use super::jwk::Key;
use super::token::TokenSource;
use crate::error::AuthError;
use crate::explain::Trace;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderName, HeaderValue};
use serde_json::Value;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Tokens longer than this are refused before any decoding (bytes of the compact form).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A compiled `auth` policy.
#[derive(Debug)]
pub struct Verifier {
    pub name: String,
    pub realm: String,
    pub algorithms: Vec<Alg>,
    /// Keys of all the policy's static key sets, in configuration order.
    pub keys: Vec<Arc<Key>>,
    /// The policy's remote key sets (keys fetched at run time).
    pub remote: Vec<Arc<super::remote::RemoteKeys>>,
    pub sources: Vec<TokenSource>,
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    /// Clock skew allowed for `exp`/`nbf`, in seconds.
    pub leeway: f64,
    pub require_exp: bool,
    /// Upstream header ← claim path.
    pub forward_claims: Vec<(HeaderName, super::ClaimPath)>,
    /// Upstream header that receives the base64url payload.
    pub forward_payload: Option<HeaderName>,
    /// Required-claim rules (403 when one fails).
    pub rules: Vec<super::rules::Rule>,
    /// Verified tokens, when the policy caches them.
    pub cache: Option<TokenCache>,
    /// RFC 8705 certificate-bound tokens only.
    pub require_certificate_binding: bool,
    /// Accepted header `typ` values, lower-case without `application/` (empty: any).
    pub token_types: Vec<String>,
    /// Longest `exp - iat` accepted, in seconds.
    pub max_lifetime: Option<f64>,
    /// This policy's validation counters.
    pub metrics: crate::observe::metrics::PolicyMetrics,
}

/// A token that passed every check.
#[derive(Debug)]
pub struct Verified<'t> {
    pub alg: Alg,
    pub kid: Option<String>,
    pub claims: Claims,
    /// The JOSE header.
    pub header: Claims,
    /// The payload segment as it was in the token (base64url).
    pub payload_b64: &'t str,
}

/// Seconds since the epoch, with the fraction.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn b64(part: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)
}

fn numeric(claims: &Claims, name: &str) -> Result<Option<f64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(AuthError::BadTimeClaim),
        Some(_) => Err(AuthError::BadTimeClaim),
    }
}

impl Verifier {
    /// A policy with only the essentials: Bearer tokens, these algorithms and keys, no issuer,
    /// audience, rules, forwarding or cache. `compile` builds the real ones from configuration;
    /// this is for tests and benchmarks, which then set the fields they need.
    pub fn basic(name: &str, algorithms: &[Alg], keys: Vec<Key>) -> Verifier {
        Verifier {
            name: name.to_string(),
            realm: name.to_string(),
            algorithms: algorithms.to_vec(),
            keys: keys.into_iter().map(Arc::new).collect(),
            remote: vec![],
            sources: vec![TokenSource::Bearer],
            issuers: vec![],
            audiences: vec![],
            leeway: 0.0,
            require_exp: false,
            forward_claims: vec![],
            forward_payload: None,
            rules: vec![],
            cache: None,
            require_certificate_binding: false,
            token_types: vec![],
            max_lifetime: None,
            metrics: crate::observe::metrics::PolicyMetrics::new(name),
        }
    }

    /// Verify a compact token at time `now` (seconds since the epoch).
    pub fn verify<'t>(&self, token: &'t str, now: f64) -> Result<Verified<'t>, AuthError> {
        self.verify_traced(token, now, &mut ())
    }

    /// `verify`, writing each check that passed down in `trace` (`explain`).
    pub fn verify_traced<'t, T: Trace>(
        &self,
        token: &'t str,
        now: f64,
        trace: &mut T,
    ) -> Result<Verified<'t>, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(AuthError::Malformed);
        };
        if let Some(_fourth) = parts.next() {
            return Err(if token.split('.').count() == 5 {
                AuthError::Encrypted
            } else {
                AuthError::Malformed
            });
        }
        if h64.is_empty() || p64.is_empty() || s64.is_empty() {
            return Err(AuthError::Malformed);
        }

        // Header: strict JSON object; alg from the policy's list; no `crit` (we implement no
        // extensions, so any critical one is unknown: RFC 7515 §4.1.11).
        let header = Claims::parse(&b64(h64)?).map_err(|_| AuthError::Malformed)?;
        let alg = match header.get("alg") {
            Some(Value::String(s)) => s,
            _ => return Err(AuthError::Malformed),
        };
        let named = alg;
        let Some(alg) = self
            .algorithms
            .iter()
            .copied()
            .find(|a| a.name() == named.as_str())
        else {
            trace.note(1, || {
                let allowed: Vec<&str> = self.algorithms.iter().map(|a| a.name()).collect();
                format!("alg {named:?}: not in algorithms [{}]", allowed.join(", "))
            });
            return Err(AuthError::AlgorithmNotAllowed);
        };
        trace.note(1, || format!("alg {alg}: allowed"));
        if header.get("crit").is_some() {
            return Err(AuthError::UnsupportedCrit);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(AuthError::Malformed),
        };

        // Key: same `kid` (keys without a kid match any), compatible with `alg`. Header members
        // such as jku, x5u, x5c and jwk are ignored: keys come from configuration only.
        let message = &token.as_bytes()[..h64.len() + 1 + p64.len()];
        let remote: Vec<_> = self.remote.iter().map(|r| r.keys()).collect();
        let mut candidates = self
            .keys
            .iter()
            .chain(remote.iter().flat_map(|g| g.iter()))
            .filter(|k| k.accepts(alg))
            .filter(|k| match (kid, &k.kid) {
                (Some(t), Some(k)) => t == k,
                _ => true,
            })
            .peekable();
        if candidates.peek().is_none() {
            if self.remote.iter().any(|r| !r.loaded()) {
                return Err(AuthError::KeysUnavailable);
            }
            return Err(AuthError::UnknownKid);
        }
        // Signatures are at most 512 bytes (RSA-4096); decode without allocating.
        let mut sig_buf = [0u8; 768];
        let sig_len = URL_SAFE_NO_PAD
            .decode_slice(s64, &mut sig_buf)
            .map_err(|_| AuthError::Malformed)?;
        let signature = &sig_buf[..sig_len];
        let Some(key) = candidates.find(|key| key.verify_signature(alg, message, signature)) else {
            trace.note(1, || {
                format!("kid {kid:?}: no key that fits verifies the signature")
            });
            return Err(AuthError::BadSignature);
        };
        trace.note(1, || {
            let name = key
                .kid
                .as_deref()
                .map_or("a key without kid".into(), |k| format!("key {k:?}"));
            let asked = kid.map_or("no kid".into(), |k| format!("kid {k:?}"));
            format!("{asked} -> {name} ({:?}): signature valid", key.family)
        });

        if !self.token_types.is_empty() {
            let typ = match header.get("typ") {
                Some(Value::String(t)) => normal_type(t),
                _ => return Err(AuthError::WrongTokenType),
            };
            if !self.token_types.contains(&typ) {
                return Err(AuthError::WrongTokenType);
            }
            trace.note(1, || format!("typ {typ:?}: accepted"));
        }

        // Payload: strict JSON object; registered claims type-checked.
        let claims = Claims::parse(&b64(p64)?).map_err(|_| AuthError::Malformed)?;
        let exp = numeric(&claims, "exp")?;
        let nbf = numeric(&claims, "nbf")?;
        let iat = numeric(&claims, "iat")?;
        match exp {
            Some(exp) if now >= exp + self.leeway => return Err(AuthError::Expired),
            None if self.require_exp => return Err(AuthError::MissingExp),
            _ => {}
        }
        trace.note(1, || match exp {
            Some(exp) => format!(
                "exp {exp}: {:.0}s left (leeway {}s)",
                exp - now,
                self.leeway
            ),
            None => "exp: none (not required)".to_string(),
        });
        if let Some(nbf) = nbf {
            if now + self.leeway < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        if let Some(max) = self.max_lifetime {
            match (iat, exp) {
                (None, _) => return Err(AuthError::MissingIat),
                (_, None) => return Err(AuthError::MissingExp),
                (Some(iat), Some(exp)) if exp - iat > max => {
                    return Err(AuthError::LifetimeTooLong)
                }
                (Some(iat), Some(exp)) => {
                    trace.note(1, || format!("lifetime {}s: within {max}s", exp - iat))
                }
            }
        }
        if !self.issuers.is_empty() {
            match claims.str("iss") {
                Some(iss) if self.issuers.iter().any(|i| i == iss) => {
                    trace.note(1, || format!("iss {iss:?}: accepted"))
                }
                _ => return Err(AuthError::BadIssuer),
            }
        }
        if !self.audiences.is_empty() {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => self.audiences.iter().any(|x| x == a),
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| self.audiences.iter().any(|x| x == a)),
                _ => false,
            };
            if !ok {
                return Err(AuthError::BadAudience);
            }
            trace.note(1, || {
                format!(
                    "aud {}: accepted",
                    claims.get("aud").unwrap_or(&Value::Null)
                )
            });
        }
        Ok(Verified {
            alg,
            kid: kid.map(str::to_owned),
            claims,
            header,
            payload_b64: p64,
        })
    }

    /// The key-set generation tokens are verified under now (changes when remote keys do).
    pub fn generation(&self) -> u64 {
        self.remote.iter().map(|r| r.generation()).sum()
    }

    /// Verify through the cache: a hit costs a lookup and an `exp` check; a miss is a full
    /// `verify`, whose result is cached.
    pub fn verify_token(&self, token: &str, now: f64) -> Result<Arc<VerifiedToken>, AuthError> {
        self.verify_token_traced(token, now, &mut ())
    }

    /// `verify_token`, writing the checks down in `trace` (`explain`).
    pub fn verify_token_traced<T: Trace>(
        &self,
        token: &str,
        now: f64,
        trace: &mut T,
    ) -> Result<Arc<VerifiedToken>, AuthError> {
        let generation = self.generation();
        if let Some(cache) = &self.cache {
            if let Some(hit) = cache.get(token) {
                if hit.generation == generation {
                    cache.count(true);
                    if hit.exp.is_some_and(|exp| now >= exp + self.leeway) {
                        cache.remove(token);
                        return Err(AuthError::Expired);
                    }
                    trace.note(1, || "verified before: taken from the token cache".into());
                    return Ok(hit);
                }
            }
            cache.count(false);
        }
        let v = self.verify_traced(token, now, trace)?;
        let forward = self.forwarded_headers(&v)?;
        let exp = v.claims.get("exp").and_then(Value::as_f64);
        let verified = Arc::new(VerifiedToken {
            alg: v.alg,
            kid: v.kid,
            claims: v.claims,
            header: v.header,
            forward,
            exp,
            generation,
            cel: Default::default(),
        });
        if let Some(cache) = &self.cache {
            cache.insert(token, verified.clone());
        }
        Ok(verified)
    }

    /// The headers to set upstream for a verified token.
    pub fn forwarded_headers(
        &self,
        v: &Verified<'_>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, AuthError> {
        let mut out = Vec::with_capacity(self.forward_claims.len() + 1);
        for (header, claim) in &self.forward_claims {
            let value = match v.claims.at(claim) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => HeaderValue::from_str(s),
                Some(other) => HeaderValue::from_str(&other.to_string()),
            };
            out.push((
                header.clone(),
                value.map_err(|_| AuthError::ClaimNotForwardable)?,
            ));
        }
        if let Some(h) = &self.forward_payload {
            let value =
                HeaderValue::from_str(v.payload_b64).map_err(|_| AuthError::ClaimNotForwardable)?;
            out.push((h.clone(), value));
        }
        Ok(out)
    }
}

/// A media type as `typ` compares it (RFC 7515 §4.1.9): lower-case, `application/` dropped.
pub fn normal_type(t: &str) -> String {
    let t = t.to_ascii_lowercase();
    match t.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwk::{parse_public_pem, secret_key};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier(keys: Vec<Key>, algs: &[Alg]) -> Verifier {
        Verifier::basic("t", algs, keys)
    }

    fn hs(claims: Value) -> String {
        encode(
            &Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn b64j(v: &str) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    fn sign_raw(header: &str, payload: &str) -> String {
        let msg = format!("{}.{}", b64j(header), b64j(payload));
        let sig = jsonwebtoken::crypto::sign(
            msg.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            jsonwebtoken::Algorithm::HS256,
        )
        .unwrap();
        format!("{msg}.{sig}")
    }

    #[test]
    fn accepts_a_good_token_and_checks_times() {
        let mut v = verifier(vec![secret_key(SECRET, None)], &[Alg::HS256]);
        let t = hs(json!({"sub":"a","exp":1000,"nbf":500}));
        assert_eq!(v.verify(&t, 700.0).unwrap().claims.str("sub"), Some("a"));
        assert_eq!(v.verify(&t, 1000.0).unwrap_err(), AuthError::Expired);
        assert_eq!(v.verify(&t, 400.0).unwrap_err(), AuthError::NotYetValid);
        v.leeway = 30.0;
        assert!(v.verify(&t, 1029.0).is_ok());
        assert!(v.verify(&t, 471.0).is_ok());
        assert_eq!(v.verify(&t, 1030.0).unwrap_err(), AuthError::Expired);
    }

    #[test]
    fn string_exp_and_duplicate_claims_are_refused() {
        let v = verifier(vec![secret_key(SECRET, None)], &[Alg::HS256]);
        let t = sign_raw(r#"{"alg":"HS256"}"#, r#"{"sub":"a","exp":"1"}"#);
        assert_eq!(v.verify(&t, 10.0).unwrap_err(), AuthError::BadTimeClaim);
        let t = sign_raw(r#"{"alg":"HS256"}"#, r#"{"sub":"a","sub":"admin"}"#);
        assert_eq!(v.verify(&t, 10.0).unwrap_err(), AuthError::Malformed);
        let t = sign_raw(r#"{"alg":"HS256","alg":"none"}"#, r#"{"sub":"a"}"#);
        assert_eq!(v.verify(&t, 10.0).unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn alg_none_crit_and_wrong_alg() {
        let v = verifier(vec![secret_key(SECRET, None)], &[Alg::HS256]);
        for alg in ["none", "None", "NONE", "nOnE", "hs256"] {
            let t = format!(
                "{}.{}.",
                b64j(&format!(r#"{{"alg":"{alg}"}}"#)),
                b64j(r#"{"sub":"a"}"#)
            );
            assert!(v.verify(&t, 1.0).is_err(), "{alg}");
            let t = format!("{t}c2ln");
            assert_eq!(
                v.verify(&t, 1.0).unwrap_err(),
                AuthError::AlgorithmNotAllowed
            );
        }
        let t = sign_raw(r#"{"alg":"HS256","crit":["exp"]}"#, r#"{"sub":"a"}"#);
        assert_eq!(v.verify(&t, 1.0).unwrap_err(), AuthError::UnsupportedCrit);
    }

    #[test]
    fn rsa_public_key_as_hmac_secret_is_refused() {
        let pem = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/keys/rsa_public.pem"
        ))
        .unwrap();
        let rsa = parse_public_pem(&pem).unwrap();
        // Even a policy that (unwisely) allows both families never uses an RSA key for HMAC.
        let v = verifier(vec![rsa], &[Alg::RS256, Alg::HS256]);
        let t = encode(
            &Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub":"a"}),
            &EncodingKey::from_secret(&pem),
        )
        .unwrap();
        assert_eq!(v.verify(&t, 1.0).unwrap_err(), AuthError::UnknownKid);
    }

    #[test]
    fn malformed_shapes() {
        let v = verifier(vec![secret_key(SECRET, None)], &[Alg::HS256]);
        for t in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "..",
            "a..c",
            "!!.??.**",
            "a.b.c.d.e",
        ] {
            assert!(v.verify(t, 1.0).is_err(), "{t}");
        }
        assert_eq!(
            v.verify("a.b.c.d.e", 1.0).unwrap_err(),
            AuthError::Encrypted
        );
        let big = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(v.verify(&big, 1.0).unwrap_err(), AuthError::TooLarge);
    }

    #[test]
    fn cache_hits_still_expire_and_never_match_another_token() {
        let mut v = verifier(vec![secret_key(SECRET, None)], &[Alg::HS256]);
        v.cache = Some(TokenCache::new(64));
        let t = hs(json!({"sub":"a","exp":1000}));
        let first = v.verify_token(&t, 500.0).unwrap();
        let again = v.verify_token(&t, 600.0).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "second use was not a cache hit"
        );
        assert_eq!(v.verify_token(&t, 1000.0).unwrap_err(), AuthError::Expired);
        assert!(
            v.cache.as_ref().unwrap().get(&t).is_none(),
            "expired entry kept"
        );
        // A token differing in its signature is verified, not looked up.
        let t2 = hs(json!({"sub":"b"}));
        v.verify_token(&t2, 1.0).unwrap();
        let last = if t2.ends_with('A') { "Q" } else { "A" };
        let forged = format!("{}{last}", &t2[..t2.len() - 1]);
        assert!(v.verify_token(&forged, 1.0).is_err());
    }

    #[test]
    fn signatures_must_be_canonical_base64url() {
        let v = verifier(vec![secret_key(SECRET, None)], &[Alg::HS256]);
        let t = hs(json!({"sub":"a"}));
        assert!(v.verify(&t, 1.0).is_ok());
        // The last of 43 characters carries 4 bits of the 32-byte MAC and 2 unused bits: a
        // lenient decoder maps both spellings to the same MAC. We refuse the non-canonical one.
        let last = t.chars().last().unwrap();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let idx = alphabet.find(last).unwrap();
        let twin = alphabet.as_bytes()[idx | 1] as char;
        assert_ne!(twin, last);
        let malleated = format!("{}{twin}", &t[..t.len() - 1]);
        assert_eq!(v.verify(&malleated, 1.0).unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn issuer_and_audience() {
        let mut v = verifier(vec![secret_key(SECRET, None)], &[Alg::HS256]);
        v.issuers = vec!["me".into()];
        v.audiences = vec!["api".into(), "web".into()];
        assert!(v.verify(&hs(json!({"iss":"me","aud":"web"})), 1.0).is_ok());
        assert!(v
            .verify(&hs(json!({"iss":"me","aud":["x","api"]})), 1.0)
            .is_ok());
        assert_eq!(
            v.verify(&hs(json!({"iss":"you","aud":"web"})), 1.0)
                .unwrap_err(),
            AuthError::BadIssuer
        );
        assert_eq!(
            v.verify(&hs(json!({"iss":"me","aud":["x"]})), 1.0)
                .unwrap_err(),
            AuthError::BadAudience
        );
        assert_eq!(
            v.verify(&hs(json!({"iss":"me"})), 1.0).unwrap_err(),
            AuthError::BadAudience
        );
    }
}
