//! The JOSE signature algorithms portcullis verifies, by their registered names.
//!
//! Our own list rather than `jsonwebtoken::Algorithm`, which lacks ES512 (P-521) and the RFC 9864
//! name `Ed25519`. Signatures are checked with aws-lc-rs directly (`jwk::Key`), so the list is
//! only names, families and curves.

use super::jwk::Curve;
use jsonwebtoken::AlgorithmFamily;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    ES512,
    /// RFC 8037's name for EdDSA, which JOSE only ever used with Ed25519 keys.
    EdDSA,
    /// RFC 9864's fully specified name for the same signature.
    Ed25519,
}

impl Alg {
    pub const ALL: [Alg; 14] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::ES512,
        Alg::EdDSA,
        Alg::Ed25519,
    ];

    /// The registered name, as in a token's `alg`.
    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::ES512 => "ES512",
            Alg::EdDSA => "EdDSA",
            Alg::Ed25519 => "Ed25519",
        }
    }

    /// The algorithm with exactly this name (names are case-sensitive: RFC 7515 §4.1.1).
    pub fn parse(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn family(self) -> AlgorithmFamily {
        match self {
            Alg::HS256 | Alg::HS384 | Alg::HS512 => AlgorithmFamily::Hmac,
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                AlgorithmFamily::Rsa
            }
            Alg::ES256 | Alg::ES384 | Alg::ES512 => AlgorithmFamily::Ec,
            Alg::EdDSA | Alg::Ed25519 => AlgorithmFamily::Ed,
        }
    }

    /// The curve the algorithm needs its key on, where it fixes one.
    pub fn curve(self) -> Option<Curve> {
        match self {
            Alg::ES256 => Some(Curve::P256),
            Alg::ES384 => Some(Curve::P384),
            Alg::ES512 => Some(Curve::P521),
            Alg::EdDSA | Alg::Ed25519 => Some(Curve::Ed25519),
            _ => None,
        }
    }

    /// Two names of one signature: `EdDSA` and `Ed25519` (a JWK's `alg` of either accepts both).
    pub fn same_signature(self, other: Alg) -> bool {
        self == other || (self.family() == AlgorithmFamily::Ed && other.family() == self.family())
    }

    /// The names, for error messages.
    pub fn list() -> String {
        let names: Vec<&str> = Alg::ALL.iter().map(|a| a.name()).collect();
        names.join(", ")
    }
}

impl std::fmt::Display for Alg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Alg {
    type Err = String;
    fn from_str(s: &str) -> Result<Alg, String> {
        Alg::parse(s).ok_or_else(|| format!("unknown algorithm {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_case_sensitive() {
        for a in Alg::ALL {
            assert_eq!(Alg::parse(a.name()), Some(a));
        }
        assert_eq!(Alg::parse("hs256"), None);
        assert_eq!(Alg::parse("none"), None);
        assert_eq!(Alg::parse("ed25519"), None);
    }

    #[test]
    fn eddsa_and_ed25519_name_one_signature() {
        assert!(Alg::EdDSA.same_signature(Alg::Ed25519));
        assert!(Alg::Ed25519.same_signature(Alg::EdDSA));
        assert!(!Alg::ES256.same_signature(Alg::ES384));
        assert_eq!(Alg::ES512.curve(), Some(Curve::P521));
    }
}
