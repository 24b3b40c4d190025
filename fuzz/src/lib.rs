//! What the fuzz targets share: the test keys, and checks written independently of the
//! gateway's own code, to hold its answers against.

use aws_lc_rs::{hmac, signature};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use x509_parser::prelude::FromDer;

pub const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/keys/");
pub const HS_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
pub const ISSUER: &str = "https://issuer.example";
pub const AUDIENCE: &str = "api";
/// The fixed clock of the token target (2027-01-15); the seed tokens expire in 2096.
pub const NOW: f64 = 1_800_000_000.0;

pub fn read_key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS}{name}")).expect("test key")
}

/// The raw public key inside a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) block, read with
/// x509-parser rather than the gateway's own DER code.
pub fn spki_key_bits(pem: &[u8]) -> Vec<u8> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).expect("PEM");
    let (_, spki) =
        x509_parser::x509::SubjectPublicKeyInfo::from_der(&block.contents).expect("SPKI");
    spki.subject_public_key.data.to_vec()
}

/// Public keys for the reference check, by family.
pub struct RefKeys {
    pub rsa: Vec<u8>,
    pub ec: Vec<u8>,
    pub ed: Vec<u8>,
}

impl RefKeys {
    pub fn load() -> RefKeys {
        RefKeys {
            rsa: spki_key_bits(&read_key("rsa_public.pem")),
            ec: spki_key_bits(&read_key("ec_public.pem")),
            ed: spki_key_bits(&read_key("ed_public.pem")),
        }
    }
}

/// Verify a compact JWS from scratch: strict base64url, a JSON header naming `alg`, the
/// signature checked with aws-lc-rs directly. Returns the payload object when all holds.
pub fn reference_verify(
    token: &str,
    keys: &RefKeys,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(format!("{} parts", parts.len()));
    }
    let dec = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|e| e.to_string());
    let header: serde_json::Value =
        serde_json::from_slice(&dec(parts[0])?).map_err(|e| e.to_string())?;
    let alg = header
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or("no alg")?
        .to_string();
    let message = format!("{}.{}", parts[0], parts[1]);
    let sig = dec(parts[2])?;
    let ok = match alg.as_str() {
        "HS256" | "HS384" | "HS512" => {
            let a = match alg.as_str() {
                "HS256" => hmac::HMAC_SHA256,
                "HS384" => hmac::HMAC_SHA384,
                _ => hmac::HMAC_SHA512,
            };
            hmac::verify(&hmac::Key::new(a, HS_SECRET), message.as_bytes(), &sig).is_ok()
        }
        "RS256" | "PS256" => {
            let a: &dyn signature::VerificationAlgorithm = if alg == "RS256" {
                &signature::RSA_PKCS1_2048_8192_SHA256
            } else {
                &signature::RSA_PSS_2048_8192_SHA256
            };
            signature::UnparsedPublicKey::new(a, &keys.rsa)
                .verify(message.as_bytes(), &sig)
                .is_ok()
        }
        "ES256" => signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &keys.ec)
            .verify(message.as_bytes(), &sig)
            .is_ok(),
        "EdDSA" => signature::UnparsedPublicKey::new(&signature::ED25519, &keys.ed)
            .verify(message.as_bytes(), &sig)
            .is_ok(),
        other => return Err(format!("alg {other}")),
    };
    if !ok {
        return Err("signature".into());
    }
    match serde_json::from_slice(&dec(parts[1])?).map_err(|e| e.to_string())? {
        serde_json::Value::Object(m) => Ok(m),
        _ => Err("payload is not an object".into()),
    }
}
