//! Key material: JWK and JWKS documents, PEM public keys and HMAC secrets, parsed once into a
//! `Key` ready for the crypto library. Used by configured key sets and by remote fetching alike;
//! imports neither.

use super::alg::Alg;
use aws_lc_rs::hmac;
use aws_lc_rs::signature::ParsedPublicKey;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use jsonwebtoken::{AlgorithmFamily, DecodingKey, DecodingKeyKind};
use serde_json::Value;

/// An elliptic curve, where the key type has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
    Ed25519,
}

/// One verification key.
pub struct Key {
    /// `kid` of the key, matched against the token header's `kid`.
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    pub curve: Option<Curve>,
    /// A JWK's `alg`: when set, only that algorithm may use the key.
    pub alg: Option<Alg>,
    pub decoding: DecodingKey,
    /// The key parsed once for the crypto library, per algorithm it can verify.
    prepared: Prepared,
}

/// Key material parsed at load time, so a verification does no key parsing.
enum Prepared {
    Hmac(Vec<(Alg, hmac::Key)>),
    Public(Vec<(Alg, ParsedPublicKey)>),
}

fn prepare(
    family: AlgorithmFamily,
    curve: Option<Curve>,
    decoding: &DecodingKey,
) -> Result<Prepared, String> {
    use aws_lc_rs::signature as sig;
    let bytes: Vec<u8> = match decoding.kind() {
        DecodingKeyKind::SecretOrDer(b) => b.clone(),
        DecodingKeyKind::RsaModulusExponent { n, e } => crate::der::rsa_public_pkcs1(n, e),
    };
    let public = |list: &[(Alg, &'static dyn sig::VerificationAlgorithm)]| {
        list.iter()
            .map(|(a, v)| {
                ParsedPublicKey::new(*v, &bytes)
                    .map(|k| (*a, k))
                    .map_err(|e| format!("key rejected: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()
            .map(Prepared::Public)
    };
    match (family, curve) {
        (AlgorithmFamily::Hmac, _) => Ok(Prepared::Hmac(vec![
            (Alg::HS256, hmac::Key::new(hmac::HMAC_SHA256, &bytes)),
            (Alg::HS384, hmac::Key::new(hmac::HMAC_SHA384, &bytes)),
            (Alg::HS512, hmac::Key::new(hmac::HMAC_SHA512, &bytes)),
        ])),
        (AlgorithmFamily::Rsa, _) => public(&[
            (Alg::RS256, &sig::RSA_PKCS1_2048_8192_SHA256),
            (Alg::RS384, &sig::RSA_PKCS1_2048_8192_SHA384),
            (Alg::RS512, &sig::RSA_PKCS1_2048_8192_SHA512),
            (Alg::PS256, &sig::RSA_PSS_2048_8192_SHA256),
            (Alg::PS384, &sig::RSA_PSS_2048_8192_SHA384),
            (Alg::PS512, &sig::RSA_PSS_2048_8192_SHA512),
        ]),
        (AlgorithmFamily::Ec, Some(Curve::P384)) => {
            public(&[(Alg::ES384, &sig::ECDSA_P384_SHA384_FIXED)])
        }
        (AlgorithmFamily::Ec, Some(Curve::P521)) => {
            public(&[(Alg::ES512, &sig::ECDSA_P521_SHA512_FIXED)])
        }
        (AlgorithmFamily::Ec, _) => public(&[(Alg::ES256, &sig::ECDSA_P256_SHA256_FIXED)]),
        (AlgorithmFamily::Ed, _) => {
            public(&[(Alg::EdDSA, &sig::ED25519), (Alg::Ed25519, &sig::ED25519)])
        }
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("curve", &self.curve)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// A key, parsed for verification now (a key the crypto library rejects is an error here,
    /// at load time, not at the first token).
    pub fn new(
        kid: Option<String>,
        family: AlgorithmFamily,
        curve: Option<Curve>,
        alg: Option<Alg>,
        decoding: DecodingKey,
    ) -> Result<Key, String> {
        let prepared = prepare(family, curve, &decoding)?;
        Ok(Key {
            kid,
            family,
            curve,
            alg,
            decoding,
            prepared,
        })
    }

    /// Does `signature` sign `message` under this key with `alg`? (Constant time for HMAC.)
    pub fn verify_signature(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        match &self.prepared {
            Prepared::Hmac(keys) => keys
                .iter()
                .find(|(a, _)| *a == alg)
                .is_some_and(|(_, k)| hmac::verify(k, message, signature).is_ok()),
            Prepared::Public(keys) => keys
                .iter()
                .find(|(a, _)| *a == alg)
                .is_some_and(|(_, k)| k.verify_sig(message, signature).is_ok()),
        }
    }

    /// May this key verify a token signed with `alg`?
    pub fn accepts(&self, alg: Alg) -> bool {
        if alg.family() != self.family {
            return false;
        }
        if let Some(a) = self.alg {
            if !a.same_signature(alg) {
                return false;
            }
        }
        match (alg.curve(), self.curve) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        }
    }

    /// The raw secret of an HMAC key.
    pub fn secret(&self) -> Option<&[u8]> {
        if self.family == AlgorithmFamily::Hmac {
            self.decoding.try_get_as_bytes().ok()
        } else {
            None
        }
    }
}

/// Base64 that accepts both alphabets' padding styles: used for configured secrets.
const LENIENT_STD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const LENIENT_URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decode base64 written in either the standard or the URL-safe alphabet, padded or not.
pub fn decode_base64_lenient(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    LENIENT_STD
        .decode(s)
        .or_else(|_| LENIENT_URL.decode(s))
        .ok()
}

pub fn secret_key(bytes: &[u8], kid: Option<String>) -> Key {
    Key::new(
        kid,
        AlgorithmFamily::Hmac,
        None,
        None,
        DecodingKey::from_secret(bytes),
    )
    .expect("an HMAC key is any byte string")
}

/// Parse a JWK or a JWKS document. Keys marked `use: enc` are skipped with a warning; any other
/// key that cannot be used is an error (a typo in a key file should not go unnoticed).
pub fn parse_jwks(text: &str) -> Result<(Vec<Key>, Vec<String>), String> {
    parse_jwks_with(text, false)
}

/// As `parse_jwks`, but keys that cannot be used are skipped with a warning: for documents
/// published by an identity provider, which may list key types we do not support.
pub fn parse_jwks_lenient(text: &str) -> Result<(Vec<Key>, Vec<String>), String> {
    parse_jwks_with(text, true)
}

fn parse_jwks_with(text: &str, lenient: bool) -> Result<(Vec<Key>, Vec<String>), String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let items: Vec<Value> = match &doc {
        Value::Object(m) if m.contains_key("keys") => match &m["keys"] {
            Value::Array(a) => a.clone(),
            _ => return Err("`keys` must be an array".into()),
        },
        Value::Object(_) => vec![doc.clone()],
        _ => return Err("expected a JWK or a JWKS object".into()),
    };
    let mut keys = Vec::new();
    let mut warnings = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let label = match item.get("kid").and_then(Value::as_str) {
            // By kid when there is one: the same key gets the same text, whatever its place.
            Some(kid) => format!("key {kid:?}"),
            None => format!("key [{i}]"),
        };
        if item.get("use").and_then(Value::as_str) == Some("enc") {
            warnings.push(format!("{label}: `use: enc` key skipped"));
            continue;
        }
        match parse_jwk(item) {
            Ok(k) => keys.push(k),
            Err(e) if lenient => warnings.push(format!("{label} skipped: {e}")),
            Err(e) => return Err(format!("{label}: {e}")),
        }
    }
    if keys.is_empty() {
        return Err("no usable signing key".into());
    }
    Ok((keys, warnings))
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a str, String> {
    v.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string member `{name}`"))
}

/// One JWK (public parts only are used; a private JWK works too).
pub fn parse_jwk(v: &Value) -> Result<Key, String> {
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    let kid = match v.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("`kid` must be a string".into()),
    };
    let alg = match v.get("alg") {
        None => None,
        Some(Value::String(s)) => {
            Some(Alg::parse(s).ok_or_else(|| format!("unsupported alg {s:?}"))?)
        }
        Some(_) => return Err("`alg` must be a string".into()),
    };
    let b64 = |name: &str| -> Result<Vec<u8>, String> {
        let s = field(v, name)?;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| format!("`{name}` is not base64url"))
    };
    let kty = field(v, "kty")?;
    let (family, curve, decoding) = match kty {
        "oct" => {
            let k = b64("k")?;
            if k.is_empty() {
                return Err("empty `k`".into());
            }
            (AlgorithmFamily::Hmac, None, DecodingKey::from_secret(&k))
        }
        "RSA" => {
            let n = b64("n")?;
            let e = b64("e")?;
            if n.len() < 256 {
                return Err(format!(
                    "RSA modulus of {} bits is too short (2048 at least)",
                    n.len() * 8
                ));
            }
            (
                AlgorithmFamily::Rsa,
                None,
                DecodingKey::from_rsa_raw_components(&n, &e),
            )
        }
        "EC" => {
            let crv = field(v, "crv")?;
            let (curve, len) = match crv {
                "P-256" => (Curve::P256, 32),
                "P-384" => (Curve::P384, 48),
                "P-521" => (Curve::P521, 66),
                other => return Err(format!("unsupported EC curve {other:?}")),
            };
            let x = b64("x")?;
            let y = b64("y")?;
            if x.len() != len || y.len() != len {
                return Err(format!("`x`/`y` have the wrong length for {crv}"));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (
                AlgorithmFamily::Ec,
                Some(curve),
                DecodingKey::from_ec_der(&point),
            )
        }
        "OKP" => {
            let crv = field(v, "crv")?;
            if crv != "Ed25519" {
                return Err(format!("unsupported OKP curve {crv:?}"));
            }
            let x = b64("x")?;
            if x.len() != 32 {
                return Err("`x` has the wrong length for Ed25519".into());
            }
            (
                AlgorithmFamily::Ed,
                Some(Curve::Ed25519),
                DecodingKey::from_ed_der(&x),
            )
        }
        other => return Err(format!("unsupported kty {other:?}")),
    };
    if let Some(a) = alg {
        if a.family() != family {
            return Err(format!("alg {a:?} does not fit kty {kty:?}"));
        }
        if let (Some(want), Some(have)) = (a.curve(), curve) {
            if want != have {
                return Err(format!("alg {a:?} needs a {want:?} key, not {have:?}"));
            }
        }
    }
    Key::new(kid, family, curve, alg, decoding)
}

/// The DER bytes and label of the first PEM block in `pem`.
pub fn pem_block(pem: &[u8]) -> Result<(String, Vec<u8>), String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM text file".to_string())?;
    let begin = text
        .find("-----BEGIN ")
        .ok_or_else(|| "no PEM block (-----BEGIN ...) found".to_string())?;
    let rest = &text[begin + 11..];
    let label_end = rest
        .find("-----")
        .ok_or_else(|| "malformed PEM header".to_string())?;
    let label = rest[..label_end].to_string();
    let body_start = label_end + 5;
    let end_marker = format!("-----END {label}-----");
    // Searched for after the header: `-----BEGIN X---------END X-----` has no body.
    let body = &rest[body_start..];
    let body_end = body
        .find(&end_marker)
        .ok_or_else(|| format!("missing {end_marker}"))?;
    let b64: String = body[..body_end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "PEM body is not base64".to_string())?;
    Ok((label, der))
}

const OID_P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x23];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A PEM public key: RSA (PKCS#1 or SPKI), EC P-256/P-384/P-521 or Ed25519 (SPKI).
pub fn parse_public_pem(pem: &[u8]) -> Result<Key, String> {
    let (label, der) = pem_block(pem)?;
    if label.contains("PRIVATE") {
        return Err(format!(
            "holds a {label}; give the public key (e.g. `openssl pkey -in KEY -pubout`)"
        ));
    }
    if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
        return Err(format!(
            "unsupported PEM block {label:?} (expected PUBLIC KEY)"
        ));
    }
    let key = |family, curve, decoding| Key::new(None, family, curve, None, decoding);
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return key(AlgorithmFamily::Rsa, None, k);
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        let curve = if contains(&der, OID_P256) {
            Curve::P256
        } else if contains(&der, OID_P384) {
            Curve::P384
        } else if contains(&der, OID_P521) {
            Curve::P521
        } else {
            return Err("unsupported EC curve (P-256, P-384 and P-521 are supported)".into());
        };
        return key(AlgorithmFamily::Ec, Some(curve), k);
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return key(AlgorithmFamily::Ed, Some(Curve::Ed25519), k);
    }
    Err("not an RSA, EC or Ed25519 public key".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `jwks` fuzz target: an END marker inside the BEGIN line's dashes made
    /// the body's end come before its start (a slice panic in `check`).
    #[test]
    fn pem_whose_end_marker_overlaps_its_header_is_an_error() {
        let pem = b"-----BEGIN PUBLIC KEY---------END PUBLIC KEY-----\n";
        assert!(pem_block(pem).is_err());
        assert!(parse_public_pem(pem).is_err());
        let empty = b"-----BEGIN PUBLIC KEY----------END PUBLIC KEY-----\n";
        assert!(parse_public_pem(empty).is_err());
    }

    #[test]
    fn jwks_oct_key_from_the_nginx_tutorial() {
        let (keys, _) =
            parse_jwks(r#"{"keys":[{"k":"ZmFudGFzdGljand0","kty":"oct","kid":"0001"}]}"#).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("0001"));
        assert_eq!(keys[0].secret(), Some(&b"fantasticjwt"[..]));
        assert!(keys[0].accepts(Alg::HS256));
        assert!(!keys[0].accepts(Alg::RS256));
    }

    #[test]
    fn jwks_skips_encryption_keys_and_rejects_junk() {
        let (keys, warnings) = parse_jwks(
            r#"{"keys":[{"kty":"oct","k":"AAAA","use":"enc"},{"kty":"oct","k":"AQID"}]}"#,
        )
        .unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(warnings.len(), 1);
        assert!(parse_jwks(r#"{"keys":[{"kty":"XYZ"}]}"#)
            .unwrap_err()
            .contains("unsupported kty"));
        assert!(parse_jwks(r#"{"keys":[]}"#).is_err());
        assert!(parse_jwks("nope").is_err());
        assert!(parse_jwks(r#"{"kty":"oct","k":"AQID","alg":"RS256"}"#).is_err());
    }

    #[test]
    fn pem_kinds() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/");
        let read = |f: &str| std::fs::read(format!("{dir}{f}")).unwrap();
        let rsa = parse_public_pem(&read("rsa_public.pem")).unwrap();
        assert_eq!(rsa.family, AlgorithmFamily::Rsa);
        assert!(rsa.accepts(Alg::PS256));
        let ec = parse_public_pem(&read("ec_public.pem")).unwrap();
        assert_eq!(ec.curve, Some(Curve::P256));
        assert!(ec.accepts(Alg::ES256));
        assert!(!ec.accepts(Alg::ES384));
        let ed = parse_public_pem(&read("ed_public.pem")).unwrap();
        assert!(ed.accepts(Alg::EdDSA));
        assert!(parse_public_pem(&read("rsa_private.pem"))
            .unwrap_err()
            .contains("public key"));
        assert!(parse_public_pem(b"hello").is_err());
    }

    #[test]
    fn lenient_base64() {
        assert_eq!(decode_base64_lenient("+/8=").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(decode_base64_lenient("-_8").unwrap(), vec![0xfb, 0xff]);
        assert!(decode_base64_lenient("%%").is_none());
    }
}
