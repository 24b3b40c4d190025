//! Key sets: the `keys` section compiled into named sets of keys, from files and secrets at
//! load time, or fetched at run time (`jwks_url`, `oidc_issuer`).

use super::jwk::{decode_base64_lenient, parse_jwks, parse_public_pem, secret_key, Key};
use super::remote::{check_url, RemoteKeys, Source};
use crate::config::{duration_field, ConfigError, KeySetConfig, Loaded};
use std::sync::Arc;

/// A named set of keys.
#[derive(Debug)]
pub struct KeySet {
    pub name: String,
    /// Keys loaded from configuration (empty for a remote set).
    pub keys: Vec<Arc<Key>>,
    /// Set for `jwks_url` / `oidc_issuer`: keys fetched at run time.
    pub remote: Option<Arc<RemoteKeys>>,
    /// Non-fatal remarks (short HMAC secrets, skipped encryption keys).
    pub warnings: Vec<String>,
}

/// Load one configured key set. `path` is its YAML path (`keys.NAME`). A remote set whose
/// definition equals `previous`'s is taken over as it is, keys and all.
pub fn load_key_set(
    name: &str,
    cfg: &KeySetConfig,
    loaded: &Loaded,
    previous: Option<&KeySet>,
) -> Result<KeySet, Vec<ConfigError>> {
    let path = format!("keys.{name}");
    let sources: Vec<&str> = [
        ("jwks_file", cfg.jwks_file.is_some()),
        ("pem_file", cfg.pem_file.is_some()),
        ("secret", cfg.secret.is_some()),
        ("secret_env", cfg.secret_env.is_some()),
        ("jwks_url", cfg.jwks_url.is_some()),
        ("oidc_issuer", cfg.oidc_issuer.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(n, _)| *n)
    .collect();
    if sources.len() != 1 {
        let found = if sources.is_empty() {
            "none".to_string()
        } else {
            sources.join(", ")
        };
        return Err(vec![ConfigError::new(
            path,
            format!(
                "exactly one of jwks_file, pem_file, secret, secret_env, jwks_url, oidc_issuer must be given (found: {found})"
            ),
        )]);
    }
    let mut set = KeySet {
        name: name.to_string(),
        keys: Vec::new(),
        remote: None,
        warnings: Vec::new(),
    };
    let remote = cfg.jwks_url.is_some() || cfg.oidc_issuer.is_some();
    if !remote && (cfg.refresh.is_some() || cfg.timeout.is_some()) {
        return Err(vec![ConfigError::new(
            path,
            "refresh and timeout apply to jwks_url and oidc_issuer only",
        )]);
    }
    if remote {
        let mut errors = Vec::new();
        if cfg.base64 || cfg.kid.is_some() {
            errors.push(ConfigError::new(
                path.clone(),
                "base64 and kid do not apply to a remote key set",
            ));
        }
        let source = if let Some(u) = &cfg.jwks_url {
            if let Err(e) = check_url(u) {
                errors.push(ConfigError::new(format!("{path}.jwks_url"), e));
            }
            Source::Jwks(u.clone())
        } else {
            let issuer = cfg.oidc_issuer.clone().unwrap_or_default();
            let discovery = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            if let Err(e) = check_url(&discovery) {
                errors.push(ConfigError::new(format!("{path}.oidc_issuer"), e));
            }
            Source::Oidc(issuer)
        };
        let day = std::time::Duration::from_secs(86_400);
        let refresh = duration_field(
            format!("{path}.refresh"),
            &cfg.refresh,
            std::time::Duration::from_secs(600),
            std::time::Duration::from_secs(1)..=day,
            &mut errors,
        );
        let timeout = duration_field(
            format!("{path}.timeout"),
            &cfg.timeout,
            std::time::Duration::from_secs(5),
            std::time::Duration::from_millis(100)..=day,
            &mut errors,
        );
        if !errors.is_empty() {
            return Err(errors);
        }
        let fresh = RemoteKeys::new(name, source, refresh, timeout);
        let kept = previous
            .and_then(|p| p.remote.as_ref())
            .filter(|old| old.same_definition(&fresh))
            .cloned();
        set.remote = Some(kept.unwrap_or_else(|| Arc::new(fresh)));
        return Ok(set);
    }
    if cfg.base64 && cfg.secret.is_none() && cfg.secret_env.is_none() {
        return Err(vec![ConfigError::new(
            format!("{path}.base64"),
            "only applies to secret or secret_env",
        )]);
    }
    if cfg.kid.is_some() && cfg.jwks_file.is_some() {
        return Err(vec![ConfigError::new(
            format!("{path}.kid"),
            "a JWKS file names its keys itself; kid applies to pem_file and secrets",
        )]);
    }
    if let Some(file) = &cfg.jwks_file {
        let fpath = format!("{path}.jwks_file");
        let text = read(loaded, file, &fpath)?;
        let (keys, warnings) = parse_jwks(&text).map_err(|e| {
            vec![ConfigError::new(
                &fpath,
                format!("{:?}: {e}", loaded.resolve(file)),
            )]
        })?;
        set.keys = keys.into_iter().map(Arc::new).collect();
        set.warnings = warnings;
    } else if let Some(file) = &cfg.pem_file {
        let fpath = format!("{path}.pem_file");
        let text = read(loaded, file, &fpath)?;
        let mut key = parse_public_pem(text.as_bytes()).map_err(|e| {
            vec![ConfigError::new(
                &fpath,
                format!("{:?}: {e}", loaded.resolve(file)),
            )]
        })?;
        key.kid = cfg.kid.clone();
        set.keys.push(Arc::new(key));
    } else {
        let (raw, field) = if let Some(s) = &cfg.secret {
            (s.clone(), "secret")
        } else {
            let var = cfg.secret_env.as_deref().unwrap_or_default();
            match std::env::var(var) {
                Ok(v) => (v, "secret_env"),
                Err(_) => {
                    return Err(vec![ConfigError::new(
                        format!("{path}.secret_env"),
                        format!("environment variable {var:?} is not set"),
                    )])
                }
            }
        };
        let bytes = if cfg.base64 {
            decode_base64_lenient(&raw).ok_or_else(|| {
                vec![ConfigError::new(
                    format!("{path}.{field}"),
                    "base64: true, but the secret is not valid base64",
                )]
            })?
        } else {
            raw.into_bytes()
        };
        if bytes.is_empty() {
            return Err(vec![ConfigError::new(
                format!("{path}.{field}"),
                "the secret is empty",
            )]);
        }
        set.keys.push(Arc::new(secret_key(&bytes, cfg.kid.clone())));
    }
    for k in &set.keys {
        if let Some(secret) = k.secret() {
            if secret.len() < 32 {
                set.warnings.push(format!(
                    "{path}: HMAC secret of {} bytes is shorter than the 32 that HS256 needs to be safe (RFC 7518 §3.2)",
                    secret.len()
                ));
            }
        }
    }
    Ok(set)
}

fn read(loaded: &Loaded, file: &str, fpath: &str) -> Result<String, Vec<ConfigError>> {
    let p = loaded.resolve(file);
    crate::config::file::read_to_string(&p)
        .map_err(|e| vec![ConfigError::new(fpath, format!("cannot read {p:?}: {e}"))])
}

/// The `keys` section: every key set that loads. A set whose definition is unchanged from
/// `previous` (a reload) keeps its fetched keys.
pub fn compile(
    keys: &std::collections::BTreeMap<String, KeySetConfig>,
    ctx: &crate::config::Ctx,
    previous: Option<&std::collections::BTreeMap<String, KeySet>>,
) -> std::collections::BTreeMap<String, KeySet> {
    let mut out = std::collections::BTreeMap::new();
    for (name, k) in keys {
        let kept = previous.and_then(|p| p.get(name));
        match load_key_set(name, k, ctx.loaded, kept) {
            Ok(set) => {
                for w in &set.warnings {
                    ctx.warn(w.clone());
                }
                out.insert(name.clone(), set);
            }
            Err(e) => ctx.extend(e),
        }
    }
    out
}
