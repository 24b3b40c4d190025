//! Certificates made for one test: a CA, and leaves it signs (any SAN names, any validity).

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::path::{Path, PathBuf};

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM), for `curl --cacert` and Python's `cafile`.
    pub pem: PathBuf,
}

/// A leaf's files and the SHA-256 of its DER (what a client sees as the peer certificate).
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub sha256: String,
}

fn sha256_hex(der: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Ca {
    pub fn new(dir: &Path) -> Ca {
        Ca::named(dir, "portcullis test CA")
    }

    /// A CA whose subject is `CN=cn`.
    pub fn named(dir: &Path, cn: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pem = dir.join("ca.pem");
        std::fs::write(&pem, issuer.pem()).unwrap();
        Ca { issuer, pem }
    }

    /// A leaf for `names`, written as `dir/NAME.pem` and `dir/NAME.key`; `expired` makes one
    /// that ended in 2021.
    pub fn leaf(&self, dir: &Path, file: &str, names: &[&str], expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        self.sign(dir, file, params).0
    }

    /// Sign `params`, write `dir/FILE.pem` and `dir/FILE.key`; the leaf and its DER.
    fn sign(&self, dir: &Path, file: &str, params: CertificateParams) -> (Leaf, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cp, kp) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&cp, cert.pem()).unwrap();
        std::fs::write(&kp, key.serialize_pem()).unwrap();
        let der = cert.der().to_vec();
        let leaf = Leaf {
            cert: cp,
            key: kp,
            sha256: sha256_hex(&der),
        };
        (leaf, der)
    }
}

impl Ca {
    /// A client certificate (subject CN `cn`); returns it with the base64url SHA-256 that a
    /// bound token's `cnf.x5t#S256` carries.
    pub fn client(&self, dir: &Path, file: &str, cn: &str) -> (Leaf, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let (leaf, der) = self.sign(dir, file, params);
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
        use base64::Engine;
        let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref());
        (leaf, x5t)
    }
}
