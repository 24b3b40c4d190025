//! Just enough DER to build the key encodings the crypto library takes: private keys from JWKs
//! (for `portcullis token`) and RSA public keys from a JWK's `n` and `e`.

#[derive(Clone, Copy)]
pub enum Curve {
    P256,
    P384,
}

fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = body.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(body);
    out
}

/// An unsigned big-endian integer as a DER INTEGER.
fn uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    let mut body = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        body.push(0);
    }
    body.extend_from_slice(&trimmed);
    tlv(0x02, &body)
}

fn seq(items: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &items.concat())
}

/// PKCS#1 RSAPrivateKey from n, e, d, p, q, dp, dq, qi.
pub fn rsa_private_pkcs1(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut items = vec![uint(&[0])];
    items.extend(parts.iter().map(|p| uint(p)));
    seq(&items)
}

const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2B, 0x65, 0x70];

/// PKCS#8 wrapping a SEC1 ECPrivateKey with its public point.
pub fn ec_private_pkcs8(curve: Curve, d: &[u8], x: &[u8], y: &[u8]) -> Vec<u8> {
    let oid = match curve {
        Curve::P256 => OID_P256,
        Curve::P384 => OID_P384,
    };
    let mut point = vec![0x00, 0x04];
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    let sec1 = seq(&[uint(&[1]), tlv(0x04, d), tlv(0xA1, &tlv(0x03, &point))]);
    seq(&[
        uint(&[0]),
        seq(&[OID_EC_PUBLIC_KEY.to_vec(), oid.to_vec()]),
        tlv(0x04, &sec1),
    ])
}

/// PKCS#8 for an Ed25519 seed (RFC 8410).
pub fn ed25519_private_pkcs8(seed: &[u8]) -> Vec<u8> {
    seq(&[
        uint(&[0]),
        seq(&[OID_ED25519.to_vec()]),
        tlv(0x04, &tlv(0x04, seed)),
    ])
}

/// PKCS#1 RSAPublicKey from the modulus and exponent (big-endian, unsigned).
pub fn rsa_public_pkcs1(n: &[u8], e: &[u8]) -> Vec<u8> {
    seq(&[uint(n), uint(e)])
}
