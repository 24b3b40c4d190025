//! The `auth` section compiled into verifiers: keys joined from their sets, algorithms pinned
//! and checked against the keys, token sources, claim rules, forwarded headers, the cache.
//! A policy with any error is left out, and a route naming it is never built: fail closed.

use super::alg::Alg;
use super::jwk::Key;
use super::keys::KeySet;
use super::rules::Rule;
use super::token::TokenSource;
use super::Verifier;
use crate::config::{duration_field, Ctx, OneOrMany, PolicyConfig};
use http::HeaderName;
use jsonwebtoken::AlgorithmFamily;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Headers that carry framing, routing or credentials: never set from a claim or a header rule.
pub const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "authorization",
    "cookie",
    "expect",
];

/// The compiled `auth` section.
pub struct Policies {
    pub verifiers: BTreeMap<String, Arc<Verifier>>,
    /// Every `forward_claims` / `forward_payload` header: removed from every client request.
    pub strip_headers: Vec<HeaderName>,
}

pub fn compile(
    auth: &BTreeMap<String, PolicyConfig>,
    key_sets: &BTreeMap<String, KeySet>,
    ctx: &Ctx,
) -> Policies {
    let mut verifiers = BTreeMap::new();
    let mut strip_headers: Vec<HeaderName> = Vec::new();
    for (name, p) in auth {
        if let Some(v) = compile_policy(name, p, key_sets, ctx) {
            let forwarded = v.forward_claims.iter().map(|(h, _)| h);
            for h in forwarded.chain(&v.forward_payload) {
                if !strip_headers.contains(h) {
                    strip_headers.push(h.clone());
                }
            }
            verifiers.insert(name.clone(), Arc::new(v));
        }
    }
    Policies {
        verifiers,
        strip_headers,
    }
}

fn compile_policy(
    name: &str,
    p: &PolicyConfig,
    key_sets: &BTreeMap<String, KeySet>,
    ctx: &Ctx,
) -> Option<Verifier> {
    let path = format!("auth.{name}");
    let before = ctx.error_count();
    let (keys, remote, all_loaded) = keys_of(&path, p, key_sets, ctx);
    let algorithms = algorithms(&path, p, ctx);
    // Remote keys are unknown until fetched: the check is for static sets only.
    if all_loaded && remote.is_empty() {
        // (Only the names written: the EdDSA/Ed25519 twin added above fits the same keys.)
        for alg in algorithms
            .iter()
            .filter(|a| p.algorithms.iter().any(|n| n == a.name()))
        {
            if !keys.iter().any(|k| k.accepts(*alg)) {
                ctx.error(
                    format!("{path}.algorithms"),
                    format!(
                        "{} has no matching key in key set(s) {} (they hold: {})",
                        alg.name(),
                        p.keys.to_vec().join(", "),
                        describe_keys(&keys)
                    ),
                );
            }
        }
    }
    let realm = p.realm.clone().unwrap_or_else(|| name.to_string());
    if realm.chars().any(|c| c.is_control()) {
        ctx.error(
            format!("{path}.realm"),
            "control characters are not allowed",
        );
    }
    let sources = sources(&path, p, ctx);
    let strings = |field: &str, v: &Option<OneOrMany<String>>| {
        let list = v.as_ref().map(|v| v.to_vec()).unwrap_or_default();
        let bad = (v.is_some() && list.is_empty()) || list.iter().any(|s| s.is_empty());
        (list, bad.then(|| format!("{path}.{field}")))
    };
    let (issuers, bad_iss) = strings("issuer", &p.issuer);
    let (audiences, bad_aud) = strings("audience", &p.audience);
    for bad in [bad_iss, bad_aud].into_iter().flatten() {
        ctx.error(bad, "empty values are not allowed");
    }
    let leeway = duration_field(
        format!("{path}.leeway"),
        &p.leeway,
        std::time::Duration::ZERO,
        std::time::Duration::ZERO..=std::time::Duration::from_secs(3600),
        &mut ctx.errors(),
    )
    .as_secs_f64();
    let (forward_claims, forward_payload) = forwarded_headers(&path, p, ctx);
    let mut rules = Vec::new();
    for (i, r) in p.require.iter().enumerate() {
        match Rule::compile(r) {
            Ok(rule) => {
                if let Some(w) = rule.claim().and_then(|c| c.suspicious()) {
                    ctx.warn(format!("{path}.require[{i}].claim: {w}"));
                }
                rules.push(rule)
            }
            Err(e) => ctx.error(format!("{path}.require[{i}]"), e),
        }
    }
    let cache = cache(&path, p, ctx).map(|c| c.counted(name));
    let token_types = match &p.token_types {
        None => vec![],
        Some(list) => {
            if list.is_empty() || list.iter().any(|t| t.trim().is_empty()) {
                ctx.error(
                    format!("{path}.token_types"),
                    "empty values are not allowed",
                );
            }
            list.iter()
                .map(|t| super::verify::normal_type(t.trim()))
                .collect()
        }
    };
    let max_lifetime = p.max_lifetime.as_ref().map(|_| {
        duration_field(
            format!("{path}.max_lifetime"),
            &p.max_lifetime,
            std::time::Duration::from_secs(3600),
            std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(366 * 86_400),
            &mut ctx.errors(),
        )
        .as_secs_f64()
    });
    if ctx.error_count() != before {
        return None;
    }
    Some(Verifier {
        name: name.to_string(),
        realm,
        algorithms,
        keys,
        remote,
        sources,
        issuers,
        audiences,
        leeway,
        require_exp: p.require_exp,
        forward_claims,
        forward_payload,
        rules,
        cache,
        require_certificate_binding: p.require_certificate_binding,
        token_types,
        max_lifetime,
        metrics: crate::observe::metrics::PolicyMetrics::new(name),
    })
}

/// The keys of the named sets; whether every set loaded.
#[allow(clippy::type_complexity)]
fn keys_of(
    path: &str,
    p: &PolicyConfig,
    key_sets: &BTreeMap<String, KeySet>,
    ctx: &Ctx,
) -> (Vec<Arc<Key>>, Vec<Arc<super::remote::RemoteKeys>>, bool) {
    let mut keys = Vec::new();
    let mut remote = Vec::new();
    let set_names = p.keys.to_vec();
    if set_names.is_empty() {
        ctx.error(format!("{path}.keys"), "no key set named");
    }
    let mut all_loaded = true;
    for k in &set_names {
        match key_sets.get(k) {
            Some(set) => {
                keys.extend(set.keys.iter().cloned());
                remote.extend(set.remote.iter().cloned());
            }
            None if ctx.config().defines("keys", k) => all_loaded = false,
            None => {
                all_loaded = false;
                ctx.error(
                    format!("{path}.keys"),
                    format!("unknown key set {k:?} (defined: {})", ctx.defined("keys")),
                )
            }
        }
    }
    (keys, remote, all_loaded)
}

fn algorithms(path: &str, p: &PolicyConfig, ctx: &Ctx) -> Vec<Alg> {
    let mut algorithms = Vec::new();
    if p.algorithms.is_empty() {
        ctx.error(
            format!("{path}.algorithms"),
            "list the algorithms your issuer signs with, e.g. [RS256]",
        );
    }
    for a in &p.algorithms {
        if a.eq_ignore_ascii_case("none") {
            ctx.error(
                format!("{path}.algorithms"),
                "\"none\" (unsigned tokens) is never allowed",
            );
            continue;
        }
        match Alg::parse(a) {
            Some(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
            Some(_) => {}
            None => ctx.error(
                format!("{path}.algorithms"),
                format!("unknown algorithm {a:?} (known: {})", Alg::list()),
            ),
        }
    }
    // RFC 9864: `Ed25519` is the fully specified name of what `EdDSA` means with an Ed25519
    // key (the only EdDSA curve portcullis knows), so either name accepts tokens with either.
    for (one, other) in [(Alg::EdDSA, Alg::Ed25519), (Alg::Ed25519, Alg::EdDSA)] {
        if algorithms.contains(&one) && !algorithms.contains(&other) {
            algorithms.push(other);
        }
    }
    algorithms
}

fn sources(path: &str, p: &PolicyConfig, ctx: &Ctx) -> Vec<TokenSource> {
    let mut sources = Vec::new();
    match &p.token_from {
        None => sources.push(TokenSource::Bearer),
        Some(list) if list.is_empty() => ctx.error(
            format!("{path}.token_from"),
            "an empty list; leave it out for [bearer]",
        ),
        Some(list) => {
            for s in list {
                match TokenSource::parse(s) {
                    Ok(src) => sources.push(src),
                    Err(e) => ctx.error(format!("{path}.token_from"), e),
                }
            }
        }
    }
    sources
}

#[allow(clippy::type_complexity)]
fn forwarded_headers(
    path: &str,
    p: &PolicyConfig,
    ctx: &Ctx,
) -> (Vec<(HeaderName, super::ClaimPath)>, Option<HeaderName>) {
    let header = |field: String, h: &str| -> Option<HeaderName> {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) if RESERVED_HEADERS.contains(&n.as_str()) => {
                ctx.error(field, format!("{h:?} cannot be set from a token"));
                None
            }
            Ok(n) => Some(n),
            Err(_) => {
                ctx.error(field, format!("invalid header name {h:?}"));
                None
            }
        }
    };
    let mut forward_claims = Vec::new();
    for (h, claim) in &p.forward_claims {
        let field = format!("{path}.forward_claims.{h}");
        if let (Some(n), Some(c)) = (
            header(field.clone(), h),
            super::path::compile(ctx, field, claim),
        ) {
            forward_claims.push((n, c));
        }
    }
    let forward_payload = p
        .forward_payload
        .as_ref()
        .and_then(|h| header(format!("{path}.forward_payload"), h));
    (forward_claims, forward_payload)
}

fn cache(path: &str, p: &PolicyConfig, ctx: &Ctx) -> Option<super::cache::TokenCache> {
    let cache_size = p.cache_size.unwrap_or(super::cache::DEFAULT_CAPACITY);
    if !(64..=10_000_000).contains(&cache_size) {
        ctx.error(
            format!("{path}.cache_size"),
            format!("{cache_size} is out of range 64..=10000000"),
        );
    }
    if p.cache == Some(false) && p.cache_size.is_some() {
        ctx.error(
            format!("{path}.cache_size"),
            "the cache is off (cache: false)",
        );
    }
    (p.cache != Some(false)).then(|| super::cache::TokenCache::new(cache_size))
}

fn describe_keys(keys: &[Arc<Key>]) -> String {
    let mut kinds: Vec<String> = keys
        .iter()
        .map(|k| match (k.family, k.curve) {
            (AlgorithmFamily::Hmac, _) => "HMAC secret".to_string(),
            (AlgorithmFamily::Rsa, _) => "RSA key".to_string(),
            (_, Some(c)) => format!("{c:?} key"),
            (f, None) => format!("{f:?} key"),
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    if kinds.is_empty() {
        "no keys".into()
    } else {
        kinds.join(", ")
    }
}
