//! Client certificates (mTLS): the CA a profile trusts, a verifier that can be swapped on
//! reload, and what a verified client certificate tells the request path.

use crate::config::{ClientAuthConfig, Ctx};
use arc_swap::ArcSwapOption;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::sync::Arc;

/// A profile's compiled `client_auth`.
#[derive(Debug)]
pub struct ClientAuth {
    pub required: bool,
    verifier: Arc<dyn ClientCertVerifier>,
    /// The CA subjects sent in the CertificateRequest, so a client holding several
    /// certificates picks one this CA signed.
    hints: &'static [DistinguishedName],
}

/// The hint list for these subjects. It must outlive any swap of the verifier, so each
/// distinct list is kept for the life of the process (one per CA file content ever loaded).
fn hints(subjects: Vec<DistinguishedName>) -> &'static [DistinguishedName] {
    static SEEN: std::sync::Mutex<Vec<&'static [DistinguishedName]>> =
        std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let same = |h: &[DistinguishedName]| {
        h.len() == subjects.len()
            && h.iter()
                .zip(&subjects)
                .all(|(a, b)| a.as_ref() == b.as_ref())
    };
    if let Some(h) = seen.iter().find(|h| same(h)) {
        return h;
    }
    let h: &'static [DistinguishedName] = Vec::leak(subjects);
    seen.push(h);
    h
}

/// Load the CA file and build the verifier; errors at `path` (`tls.NAME.client_auth`).
pub fn compile(c: &ClientAuthConfig, path: &str, ctx: &Ctx) -> Option<ClientAuth> {
    let file = ctx.resolve(&c.ca);
    let pem = match crate::config::file::read(&file) {
        Ok(p) => p,
        Err(e) => {
            ctx.error(format!("{path}.ca"), format!("cannot read {file:?}: {e}"));
            return None;
        }
    };
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let added = cert
            .map_err(|e| e.to_string())
            .and_then(|c| roots.add(c).map_err(|e| e.to_string()));
        if let Err(e) = added {
            ctx.error(format!("{path}.ca"), format!("{file:?}: {e}"));
            return None;
        }
    }
    if roots.is_empty() {
        ctx.error(
            format!("{path}.ca"),
            format!("{file:?} holds no PEM certificate"),
        );
        return None;
    }
    let subjects = roots.subjects();
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::provider().clone());
    let builder = if c.required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    match builder.build() {
        Ok(verifier) => Some(ClientAuth {
            required: c.required,
            verifier,
            hints: hints(subjects),
        }),
        Err(e) => {
            ctx.error(format!("{path}.ca"), format!("{file:?}: {e}"));
            None
        }
    }
}

/// The verifier every TLS listener holds for the life of the process; a reload swaps what it
/// checks against (CA, `required`), or turns client certificates on or off for the profile.
#[derive(Debug)]
pub struct ClientVerifier {
    current: ArcSwapOption<ClientAuth>,
    rejected: prometheus::IntCounter,
}

fn not_asked() -> rustls::Error {
    rustls::Error::General("this listener does not ask for client certificates".into())
}

impl ClientVerifier {
    pub fn new(profile: &str, c: Option<Arc<ClientAuth>>) -> Arc<ClientVerifier> {
        Arc::new(ClientVerifier {
            current: ArcSwapOption::new(c),
            rejected: crate::observe::metrics::metrics()
                .tls_client_certs_rejected
                .with_label_values(&[profile]),
        })
    }

    /// From the next handshake on; `None`: no certificate is asked for.
    pub fn install(&self, c: Option<Arc<ClientAuth>>) {
        self.current.store(c);
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.current.load().is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current.load().as_ref().is_some_and(|c| c.required)
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.current.load().as_ref().map_or(&[], |c| c.hints)
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let current = self.current.load();
        let verdict = match current.as_ref() {
            Some(c) => c
                .verifier
                .verify_client_cert(end_entity, intermediates, now),
            None => Err(not_asked()),
        };
        if verdict.is_err() {
            self.rejected.inc();
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.current.load().as_ref() {
            Some(c) => c.verifier.verify_tls12_signature(message, cert, dss),
            None => Err(not_asked()),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.current.load().as_ref() {
            Some(c) => c.verifier.verify_tls13_signature(message, cert, dss),
            None => Err(not_asked()),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        match self.current.load().as_ref() {
            Some(c) => c.verifier.supported_verify_schemes(),
            None => super::provider()
                .signature_verification_algorithms
                .supported_schemes(),
        }
    }
}

/// A verified client certificate, attached to its connection after the handshake.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// SHA-256 of the leaf's DER (what `cnf.x5t#S256` names).
    pub sha256: Vec<u8>,
    /// The leaf's subject, as `CN=…, O=…`.
    pub subject: String,
}

impl ClientCert {
    pub fn from_der(der: &[u8]) -> ClientCert {
        let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)
            .as_ref()
            .to_vec();
        let subject = x509_parser::parse_x509_certificate(der)
            .map(|(_, c)| c.subject().to_string())
            .unwrap_or_default();
        ClientCert { sha256, subject }
    }
}
