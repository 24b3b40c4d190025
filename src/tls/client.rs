//! Client certificates (mTLS): the CA a profile trusts, a verifier that can be swapped on
//! reload, and what a verified client certificate tells the request path.

use crate::config::{ClientAuthConfig, Ctx};
use arc_swap::ArcSwap;
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
}

/// Load the CA file and build the verifier; errors at `path` (`tls.NAME.client_auth`).
pub fn compile(c: &ClientAuthConfig, path: &str, ctx: &Ctx) -> Option<ClientAuth> {
    let file = ctx.resolve(&c.ca);
    let pem = match std::fs::read(&file) {
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
        }),
        Err(e) => {
            ctx.error(format!("{path}.ca"), format!("{file:?}: {e}"));
            None
        }
    }
}

/// The verifier a TLS listener holds for the life of the process; a reload swaps what it
/// checks against (CA, `required`).
#[derive(Debug)]
pub struct ClientVerifier {
    current: ArcSwap<ClientAuth>,
    rejected: prometheus::IntCounter,
}

impl ClientVerifier {
    pub fn new(profile: &str, c: Arc<ClientAuth>) -> Arc<ClientVerifier> {
        Arc::new(ClientVerifier {
            current: ArcSwap::new(c),
            rejected: crate::observe::metrics::metrics()
                .tls_client_certs_rejected
                .with_label_values(&[profile]),
        })
    }

    pub fn install(&self, c: Arc<ClientAuth>) {
        self.current.store(c);
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current.load().required
    }

    /// No hints: the list would have to outlive a swap. Clients send the certificate they
    /// have; it is verified against the CA all the same.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verdict =
            self.current
                .load()
                .verifier
                .verify_client_cert(end_entity, intermediates, now);
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
        self.current
            .load()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().verifier.supported_verify_schemes()
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
