//! `portcullis token`: mint a signed test token.

use crate::auth::jwk::{decode_base64_lenient, pem_block};
use crate::auth::Alg;
use crate::der;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value};
use std::path::Path;
use std::time::Duration;

/// What to put in the token.
#[derive(Debug, Default, Clone)]
pub struct MintOptions {
    pub alg: Option<String>,
    pub kid: Option<String>,
    pub sub: Option<String>,
    pub iss: Option<String>,
    pub aud: Vec<String>,
    /// Lifetime; `None` or zero: no `exp`.
    pub ttl: Option<Duration>,
    /// Extra claims; values that parse as JSON are used as JSON, others as strings.
    pub claims: Vec<(String, String)>,
}

/// A signing key and what it implies.
pub struct SigningKey {
    pub key: EncodingKey,
    pub default_alg: Alg,
    pub kid: Option<String>,
}

/// A key from `--secret`.
pub fn secret_key(secret: &str, base64: bool) -> Result<SigningKey, String> {
    let bytes = if base64 {
        decode_base64_lenient(secret).ok_or("the secret is not valid base64")?
    } else {
        secret.as_bytes().to_vec()
    };
    Ok(SigningKey {
        key: EncodingKey::from_secret(&bytes),
        default_alg: Alg::HS256,
        kid: None,
    })
}

/// A key from `--key FILE`: a PEM private key, or a private JWK/JWKS (`oct`, `RSA`, `EC`, `OKP`).
/// `kid` picks the key in a JWKS.
pub fn key_file(path: &Path, kid: Option<&str>) -> Result<SigningKey, String> {
    let data = crate::config::file::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    let trimmed = String::from_utf8_lossy(&data);
    if trimmed.trim_start().starts_with('{') {
        return jwk_key(&trimmed, kid);
    }
    let (label, der) = pem_block(&data)?;
    if !label.contains("PRIVATE") {
        return Err(format!(
            "{path:?} holds a {label}; minting needs the private key"
        ));
    }
    if let Ok(k) = EncodingKey::from_rsa_pem(&data) {
        return Ok(SigningKey {
            key: k,
            default_alg: Alg::RS256,
            kid: None,
        });
    }
    if let Ok(k) = EncodingKey::from_ec_pem(&data) {
        let p384 = der
            .windows(7)
            .any(|w| w == [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22]);
        return Ok(SigningKey {
            key: k,
            default_alg: if p384 { Alg::ES384 } else { Alg::ES256 },
            kid: None,
        });
    }
    if let Ok(k) = EncodingKey::from_ed_pem(&data) {
        return Ok(SigningKey {
            key: k,
            default_alg: Alg::EdDSA,
            kid: None,
        });
    }
    Err(format!(
        "{path:?}: not an RSA, EC (P-256/P-384) or Ed25519 private key"
    ))
}

fn jwk_key(text: &str, kid: Option<&str>) -> Result<SigningKey, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let keys: Vec<&Value> = match doc.get("keys") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(_) => return Err("`keys` must be an array".into()),
        None => vec![&doc],
    };
    let jwk = match kid {
        Some(kid) => keys
            .iter()
            .find(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
            .ok_or_else(|| format!("no key with kid {kid:?}"))?,
        None => keys.first().ok_or("the JWKS has no keys")?,
    };
    let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
    let b64 = |name: &str| -> Result<Vec<u8>, String> {
        let s = jwk
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the JWK has no `{name}`"))?;
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| format!("`{name}` is not base64url"))
    };
    let jwk_alg = jwk.get("alg").and_then(Value::as_str).and_then(Alg::parse);
    let (key, default_alg) = match jwk.get("kty").and_then(Value::as_str) {
        Some("oct") => (EncodingKey::from_secret(&b64("k")?), Alg::HS256),
        Some("RSA") => {
            let mut parts = Vec::new();
            for name in ["n", "e", "d", "p", "q", "dp", "dq", "qi"] {
                parts.push(b64(name)?);
            }
            (
                EncodingKey::from_rsa_der(&der::rsa_private_pkcs1(&parts)),
                Alg::RS256,
            )
        }
        Some("EC") => {
            let (curve, alg, len) = match jwk.get("crv").and_then(Value::as_str) {
                Some("P-256") => (der::Curve::P256, Alg::ES256, 32),
                Some("P-384") => (der::Curve::P384, Alg::ES384, 48),
                other => return Err(format!("unsupported EC curve {other:?}")),
            };
            let (d, x, y) = (b64("d")?, b64("x")?, b64("y")?);
            if d.len() != len || x.len() != len || y.len() != len {
                return Err("`d`, `x` or `y` has the wrong length for the curve".into());
            }
            (
                EncodingKey::from_ec_der(&der::ec_private_pkcs8(curve, &d, &x, &y)),
                alg,
            )
        }
        Some("OKP") => {
            if jwk.get("crv").and_then(Value::as_str) != Some("Ed25519") {
                return Err("only the Ed25519 OKP curve is supported".into());
            }
            let d = b64("d")?;
            if d.len() != 32 {
                return Err("`d` has the wrong length for Ed25519".into());
            }
            (
                EncodingKey::from_ed_der(&der::ed25519_private_pkcs8(&d)),
                Alg::EdDSA,
            )
        }
        other => return Err(format!("unsupported kty {other:?}")),
    };
    Ok(SigningKey {
        key,
        default_alg: jwk_alg.unwrap_or(default_alg),
        kid,
    })
}

/// Build the claims and sign them.
pub fn mint(key: &SigningKey, opts: &MintOptions, now: u64) -> Result<String, String> {
    let alg = match &opts.alg {
        Some(a) => Alg::parse(a).ok_or_else(|| format!("unknown algorithm {a:?}"))?,
        None => key.default_alg,
    };
    // The signer: jsonwebtoken's, which knows Ed25519 only as EdDSA and has no ES512.
    let signer = match alg {
        Alg::Ed25519 => Algorithm::EdDSA,
        Alg::ES512 => return Err("ES512 tokens cannot be minted by portcullis".into()),
        other => other
            .name()
            .parse::<Algorithm>()
            .map_err(|_| format!("unknown algorithm {other}"))?,
    };
    if signer.family() != key.key.family() {
        return Err(format!(
            "algorithm {alg} does not fit this key (it signs {:?})",
            key.key.family(),
        ));
    }
    let mut header = Map::new();
    header.insert("typ".into(), "JWT".into());
    header.insert("alg".into(), alg.name().into());
    if let Some(kid) = opts.kid.clone().or_else(|| key.kid.clone()) {
        header.insert("kid".into(), kid.into());
    }
    let mut claims = Map::new();
    claims.insert("iat".into(), now.into());
    if let Some(ttl) = opts.ttl.filter(|t| !t.is_zero()) {
        claims.insert("exp".into(), (now + ttl.as_secs()).into());
    }
    if let Some(s) = &opts.sub {
        claims.insert("sub".into(), s.clone().into());
    }
    if let Some(s) = &opts.iss {
        claims.insert("iss".into(), s.clone().into());
    }
    match opts.aud.len() {
        0 => {}
        1 => {
            claims.insert("aud".into(), opts.aud[0].clone().into());
        }
        _ => {
            claims.insert("aud".into(), opts.aud.clone().into());
        }
    }
    for (k, v) in &opts.claims {
        let value = serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.clone()));
        claims.insert(k.clone(), value);
    }
    let json = |m: Map<String, Value>| URL_SAFE_NO_PAD.encode(Value::Object(m).to_string());
    let message = format!("{}.{}", json(header), json(claims));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key.key, signer)
        .map_err(|e| format!("signing failed: {e}"))?;
    Ok(format!("{message}.{signature}"))
}

/// Parse `--claim k=v`.
pub fn parse_claim(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_jwks_sign_like_their_pem_twins() {
        use crate::auth::jwk::parse_public_pem;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
        for (kid, public, alg) in [
            ("rsa1", "rsa_public.pem", Alg::RS256),
            ("ec1", "ec_public.pem", Alg::ES256),
            ("ed1", "ed_public.pem", Alg::EdDSA),
        ] {
            let key = key_file(&dir.join("private_jwks.json"), Some(kid)).unwrap();
            assert_eq!(key.default_alg, alg);
            assert_eq!(key.kid.as_deref(), Some(kid));
            let token = mint(&key, &MintOptions::default(), 1).unwrap();
            let pem = std::fs::read(dir.join(public)).unwrap();
            let public = parse_public_pem(&pem).unwrap();
            let (msg, sig) = token.rsplit_once('.').unwrap();
            let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            assert!(public.verify_signature(alg, msg.as_bytes(), &sig), "{kid}");
        }
    }

    #[test]
    fn claims_are_typed() {
        let key = secret_key("s3cret", false).unwrap();
        let opts = MintOptions {
            sub: Some("alice".into()),
            aud: vec!["a".into(), "b".into()],
            ttl: Some(Duration::from_secs(60)),
            claims: vec![
                ("n".into(), "5".into()),
                ("admin".into(), "true".into()),
                ("scope".into(), "read write".into()),
            ],
            ..Default::default()
        };
        let t = mint(&key, &opts, 1000).unwrap();
        let payload = t.split('.').nth(1).unwrap();
        let v: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(v["exp"], 1060);
        assert_eq!(v["n"], 5);
        assert_eq!(v["admin"], true);
        assert_eq!(v["scope"], "read write");
        assert_eq!(v["aud"], serde_json::json!(["a", "b"]));
        let bad = MintOptions {
            alg: Some("RS256".into()),
            ..Default::default()
        };
        assert!(mint(&key, &bad, 0).is_err());
    }
}
