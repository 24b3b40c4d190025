//! Certificates: a PEM certificate chain and its private key, loaded and checked (the key must
//! fit the certificate), with the names and validity read from the leaf; and the store a TLS
//! profile serves from, which picks a certificate by SNI.

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// One certificate with its key, ready for handshakes.
#[derive(Debug)]
pub struct Certificate {
    pub key: Arc<CertifiedKey>,
    /// DNS names of the leaf (SAN; the subject CN only when there is no SAN), lower case.
    pub names: Vec<String>,
    /// Validity of the leaf, in seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// Where a loading problem is: the certificate file or the key file.
#[derive(Debug, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    crate::config::file::read(p).map_err(|e| format!("cannot read {p:?}: {e}"))
}

/// Load and check one pair. Errors say which file and why; nothing here panics on bad input.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<Certificate, (Which, String)> {
    let cert_pem = read(cert_path).map_err(|e| (Which::Cert, e))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| (Which::Cert, format!("{cert_path:?}: invalid PEM: {e}")))?;
    if chain.is_empty() {
        return Err((
            Which::Cert,
            format!("{cert_path:?} holds no PEM certificate"),
        ));
    }
    let key_pem = read(key_path).map_err(|e| (Which::Key, e))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| (Which::Key, format!("{key_path:?}: invalid PEM: {e}")))?
        .ok_or_else(|| (Which::Key, format!("{key_path:?} holds no private key")))?;
    let signing = super::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| {
            (
                Which::Key,
                format!("{key_path:?}: unsupported private key: {e}"),
            )
        })?;
    let (names, not_before, not_after) =
        leaf_facts(&chain[0]).map_err(|e| (Which::Cert, format!("{cert_path:?}: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        (
            Which::Key,
            format!("{key_path:?} is not the key of the certificate in {cert_path:?}"),
        )
    })?;
    Ok(Certificate {
        key: Arc::new(certified),
        names,
        not_before,
        not_after,
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
    })
}

/// DNS names and validity of a leaf certificate.
fn leaf_facts(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64, i64), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    let v = cert.validity();
    Ok((names, v.not_before.timestamp(), v.not_after.timestamp()))
}

impl Certificate {
    /// A warning when the certificate is not valid now (it is still served: refusing to start
    /// would take every other host down with it).
    pub fn validity_warning(&self, now: SystemTime) -> Option<String> {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if now > self.not_after {
            Some(format!("{:?} has expired", self.cert_path))
        } else if now < self.not_before {
            Some(format!("{:?} is not valid yet", self.cert_path))
        } else {
            None
        }
    }
}

/// The certificates of one profile, indexed by name.
#[derive(Debug)]
pub struct CertStore {
    pub certs: Vec<Certificate>,
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `example.com`: one label below it matches.
    wildcard: HashMap<String, usize>,
}

impl CertStore {
    /// The first certificate is the default; a name listed by two certificates goes to the
    /// first.
    pub fn new(certs: Vec<Certificate>) -> CertStore {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, c) in certs.iter().enumerate() {
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(n.clone()).or_insert(i),
                };
            }
        }
        CertStore {
            certs,
            exact,
            wildcard,
        }
    }

    /// The certificate for an SNI name (an exact SAN, then a one-label wildcard, then the
    /// default).
    pub fn pick(&self, sni: Option<&str>) -> Option<&Certificate> {
        let i = sni.and_then(|name| {
            let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
            self.exact.get(&name).copied().or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent).copied()
            })
        });
        self.certs.get(i.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Certificate {
        let dir = std::env::temp_dir().join(format!("portcullis-certs-{}", names.join("_")));
        std::fs::create_dir_all(&dir).unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let c = params.self_signed(&key).unwrap();
        let (cp, kp) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&cp, c.pem()).unwrap();
        std::fs::write(&kp, key.serialize_pem()).unwrap();
        load(&cp, &kp).unwrap()
    }

    #[test]
    fn picks_by_sni() {
        let store = CertStore::new(vec![
            cert(&["api.example.com"]),
            cert(&["*.example.com", "example.org"]),
        ]);
        let names = |sni| store.pick(sni).unwrap().names[0].clone();
        assert_eq!(names(None), "api.example.com");
        assert_eq!(names(Some("API.example.com.")), "api.example.com");
        assert_eq!(names(Some("foo.example.com")), "*.example.com");
        assert_eq!(names(Some("example.org")), "*.example.com");
        // A wildcard covers one label only; anything else gets the default.
        assert_eq!(names(Some("a.b.example.com")), "api.example.com");
        assert_eq!(names(Some("example.com")), "api.example.com");
        assert_eq!(names(Some("other.test")), "api.example.com");
    }

    #[test]
    fn bad_pairs_are_errors_not_panics() {
        let a = cert(&["a.test"]);
        let b = cert(&["b.test"]);
        let e = load(&a.cert_path, &b.key_path).unwrap_err();
        assert_eq!(e.0, Which::Key);
        assert!(e.1.contains("is not the key of the certificate"), "{}", e.1);
        let e = load(Path::new("/nonexistent.pem"), &a.key_path).unwrap_err();
        assert_eq!(e.0, Which::Cert);
        let e = load(&a.key_path, &a.key_path).unwrap_err();
        assert!(e.1.contains("no PEM certificate"), "{}", e.1);
        let e = load(&a.cert_path, &a.cert_path).unwrap_err();
        assert!(e.1.contains("no private key"), "{}", e.1);
    }
}
