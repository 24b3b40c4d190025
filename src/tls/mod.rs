//! TLS termination: the `tls` section compiled into certificate stores, and the resolver each
//! TLS listener asks for a certificate on every handshake.
//!
//! A listener's resolver lives as long as the process; what it serves is swapped atomically,
//! on a config reload and when a certificate or key file changes on disk. A new handshake gets
//! the new certificate, open connections are not touched, and a bad rotation keeps the old
//! certificate serving (logged, counted in `portcullis_tls_certificate_reloads_total`).

pub mod certs;
pub mod client;

pub use certs::{CertStore, Certificate};
pub use client::{ClientAuth, ClientCert, ClientVerifier};

use crate::config::{Ctx, TlsProfileConfig};
use crate::observe::metrics::metrics;
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often certificate files are looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// Why a TLS handshake failed: the `reason` values of `portcullis_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client closed or reset the connection before the handshake was done.
    Closed,
    /// Nothing in common: no shared protocol version, cipher suite, group, signature scheme or
    /// ALPN protocol (old or misconfigured clients).
    Incompatible,
    /// Not TLS, or TLS out of order or corrupt (scanners, plaintext HTTP sent to a TLS port).
    ProtocolError,
    /// mTLS: no client certificate where one is required, or one that failed verification.
    ClientCertificate,
    /// The client ended the handshake with an alert — typically it does not trust the
    /// certificate it was served (expired, wrong name, unknown issuer).
    Alert,
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 6] = [
        HandshakeFailure::Closed,
        HandshakeFailure::Incompatible,
        HandshakeFailure::ProtocolError,
        HandshakeFailure::ClientCertificate,
        HandshakeFailure::Alert,
        HandshakeFailure::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::ProtocolError => "protocol_error",
            HandshakeFailure::ClientCertificate => "client_certificate",
            HandshakeFailure::Alert => "alert",
            HandshakeFailure::Other => "other",
        }
    }

    /// Classify a failed handshake by its root cause: rustls' error (carried inside the I/O
    /// error the TLS stream returned), or the I/O error itself.
    pub fn of(e: &pingora_core::Error) -> HandshakeFailure {
        use rustls::Error as Tls;
        let root = e.root_cause();
        let io = root.downcast_ref::<std::io::Error>();
        let tls = io
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<Tls>())
            .or_else(|| root.downcast_ref::<Tls>());
        match tls {
            Some(
                Tls::PeerIncompatible(_) | Tls::NoApplicationProtocol | Tls::UnsupportedNameType,
            ) => HandshakeFailure::Incompatible,
            Some(Tls::NoCertificatesPresented | Tls::InvalidCertificate(_)) => {
                HandshakeFailure::ClientCertificate
            }
            Some(Tls::AlertReceived(_)) => HandshakeFailure::Alert,
            Some(
                Tls::InappropriateMessage { .. }
                | Tls::InappropriateHandshakeMessage { .. }
                | Tls::InvalidMessage(_)
                | Tls::PeerMisbehaved(_)
                | Tls::PeerSentOversizedRecord
                | Tls::DecryptError
                | Tls::InvalidEncryptedClientHello(_),
            ) => HandshakeFailure::ProtocolError,
            Some(_) => HandshakeFailure::Other,
            None => match io.map(std::io::Error::kind) {
                Some(
                    std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe,
                ) => HandshakeFailure::Closed,
                _ => HandshakeFailure::Other,
            },
        }
    }
}

/// The rustls crypto provider for every TLS listener: aws-lc-rs, or ring with
/// `PORTCULLIS_TLS_PROVIDER=ring` (for comparisons; see docs/performance.md).
pub fn provider() -> &'static Arc<rustls::crypto::CryptoProvider> {
    static P: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        Arc::new(match std::env::var("PORTCULLIS_TLS_PROVIDER").as_deref() {
            Ok("ring") => rustls::crypto::ring::default_provider(),
            _ => rustls::crypto::aws_lc_rs::default_provider(),
        })
    })
}

/// Make `provider()` the process default before Pingora builds a listener (it installs ring
/// only when no default is set).
pub fn install_provider() {
    let _ = rustls::crypto::CryptoProvider::install_default((**provider()).clone());
}

/// One compiled profile: the files it comes from and the certificates loaded from them.
#[derive(Debug)]
pub struct Profile {
    pub name: String,
    pub pairs: Vec<(PathBuf, PathBuf)>,
    pub store: CertStore,
    /// Client certificates (mTLS), when the profile asks for them.
    pub client_auth: Option<Arc<ClientAuth>>,
    /// Session resumption (fixed for a listener when it starts: `Resolver::sessions`).
    pub sessions: Sessions,
}

/// How a listener lets returning clients resume: `tls.<name>.session_resumption` and
/// `session_cache`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sessions {
    /// Sessions kept and TLS 1.3 tickets sent.
    pub resumption: bool,
    /// How many sessions a listener keeps when resumption is on.
    pub cache: usize,
}

impl Sessions {
    /// Set the listener's rustls session storage and tickets.
    pub fn apply(self, c: &mut rustls::ServerConfig) {
        if self.resumption {
            // rustls keeps 256 sessions by default: 128 TLS 1.3 clients.
            c.session_storage = rustls::server::ServerSessionMemoryCache::new(self.cache);
        } else {
            // No session kept, no TLS 1.3 ticket sent: every handshake is full.
            c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            c.send_tls13_tickets = 0;
        }
    }
}

/// The `tls` section. A profile with any certificate that does not load is an error naming
/// the file; an expired or not-yet-valid certificate is a warning.
pub fn compile(
    tls: &BTreeMap<String, TlsProfileConfig>,
    ctx: &Ctx,
) -> BTreeMap<String, Arc<Profile>> {
    let mut out = BTreeMap::new();
    for (name, p) in tls {
        let path = format!("tls.{name}.certificates");
        if p.certificates.is_empty() {
            ctx.error(
                path,
                "at least one certificate is needed (the first is the default)",
            );
            continue;
        }
        if !(1..=10_000_000).contains(&p.session_cache) {
            ctx.error(
                format!("tls.{name}.session_cache"),
                "must be between 1 and 10000000 sessions",
            );
            continue;
        }
        let mut certs = Vec::new();
        let mut pairs = Vec::new();
        for (i, c) in p.certificates.iter().enumerate() {
            let (cert, key) = (ctx.resolve(&c.cert), ctx.resolve(&c.key));
            match certs::load(&cert, &key) {
                Ok(loaded) => {
                    if let Some(w) = loaded.validity_warning(SystemTime::now()) {
                        ctx.warn(format!("{path}[{i}].cert: {w}"));
                    }
                    certs.push(loaded);
                }
                Err((which, e)) => {
                    let field = match which {
                        certs::Which::Cert => "cert",
                        certs::Which::Key => "key",
                    };
                    ctx.error(format!("{path}[{i}].{field}"), e);
                }
            }
            pairs.push((cert, key));
        }
        let client_auth = p
            .client_auth
            .as_ref()
            .map(|c| client::compile(c, &format!("tls.{name}.client_auth"), ctx).map(Arc::new));
        let client_ok = client_auth.as_ref().is_none_or(|c| c.is_some());
        if certs.len() == p.certificates.len() && client_ok {
            out.insert(
                name.clone(),
                Arc::new(Profile {
                    name: name.clone(),
                    pairs,
                    store: CertStore::new(certs),
                    client_auth: client_auth.flatten(),
                    sessions: Sessions {
                        resumption: p.session_resumption,
                        cache: p.session_cache,
                    },
                }),
            );
        }
    }
    out
}

impl Profile {
    /// Load the same files again (a rotation on disk).
    fn reload(&self) -> Result<Profile, String> {
        let mut certs = Vec::new();
        for (c, k) in &self.pairs {
            let cert = certs::load(c, k).map_err(|(_, e)| e)?;
            if let Some(w) = cert.validity_warning(SystemTime::now()) {
                log::warn!("tls.{}: {w}", self.name);
            }
            certs.push(cert);
        }
        Ok(Profile {
            name: self.name.clone(),
            pairs: self.pairs.clone(),
            store: CertStore::new(certs),
            client_auth: self.client_auth.clone(),
            sessions: self.sessions,
        })
    }
}

/// The certificates a TLS listener serves, swappable while it runs.
#[derive(Debug)]
pub struct Resolver {
    pub name: String,
    /// The profile's sessions when its listeners were built (a restart changes them).
    pub sessions: Sessions,
    profile: ArcSwap<Profile>,
    installing: std::sync::Mutex<()>,
    hellos: prometheus::IntCounter,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.hellos.inc();
        let profile = self.profile.load();
        profile
            .store
            .pick(hello.server_name())
            .map(|c| c.key.clone())
    }
}

impl Resolver {
    pub fn new(profile: Arc<Profile>) -> Arc<Resolver> {
        let r = Arc::new(Resolver {
            name: profile.name.clone(),
            sessions: profile.sessions,
            profile: ArcSwap::new(profile.clone()),
            installing: std::sync::Mutex::new(()),
            hellos: metrics()
                .tls_client_hellos
                .with_label_values(&[&profile.name]),
        });
        r.export(&profile);
        // Both results exist from the start, at 0, so that `increase()` sees the first error.
        for result in ["ok", "error"] {
            metrics()
                .tls_certificate_reloads
                .with_label_values(&[&profile.name, result]);
        }
        r
    }

    pub fn current(&self) -> Arc<Profile> {
        self.profile.load_full()
    }

    /// Serve `profile` from the next handshake on. A certificate file the new profile no longer
    /// names loses its expiry series, so that an alert on expiry does not go on firing for a
    /// certificate that was replaced by one under another name.
    pub fn install(&self, profile: Arc<Profile>) {
        // One install at a time (a reload and the file watcher): each compares with the
        // profile the other left.
        let _one = self.installing.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.profile.load_full();
        self.export(&profile);
        for c in &old.store.certs {
            if !profile
                .store
                .certs
                .iter()
                .any(|n| n.cert_path == c.cert_path)
            {
                let file = c.cert_path.display().to_string();
                let _ = metrics()
                    .tls_certificate_expiry
                    .remove_label_values(&[&self.name, &file]);
            }
        }
        self.profile.store(profile);
    }

    /// Expiry gauges of the certificates served.
    fn export(&self, profile: &Profile) {
        let m = metrics();
        for c in &profile.store.certs {
            let file = c.cert_path.display().to_string();
            m.tls_certificate_expiry
                .with_label_values(&[&self.name, &file])
                .set(c.not_after);
        }
    }

    /// Watch the certificate and key files while `this` is alive.
    pub fn watch(this: &Arc<Resolver>) {
        crate::watch::watch(
            this,
            crate::watch::Watched {
                name: "tls-watch",
                every: POLL,
                files: |r| {
                    r.current()
                        .pairs
                        .iter()
                        .flat_map(|(c, k)| [c.clone(), k.clone()])
                        .collect()
                },
                reload: |r| {
                    let counter = |result: &str| {
                        metrics()
                            .tls_certificate_reloads
                            .with_label_values(&[&r.name, result])
                            .inc()
                    };
                    match r.current().reload() {
                        Ok(p) => {
                            let n = p.store.certs.len();
                            r.install(Arc::new(p));
                            counter("ok");
                            Ok(format!(
                                "tls.{}: {n} certificate(s) reloaded from disk",
                                r.name
                            ))
                        }
                        Err(e) => {
                            counter("error");
                            Err(format!(
                                "tls.{}: {e}; the certificates in force keep serving",
                                r.name
                            ))
                        }
                    }
                },
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::HandshakeFailure;
    use pingora_core::{Error, ErrorType};
    use std::io;

    /// A handshake error as Pingora's rustls stream returns it: rustls' error inside an I/O
    /// error, explained twice on the way up.
    fn failed(cause: io::Error) -> Box<Error> {
        let inner = Error::because(ErrorType::TLSHandshakeFailure, "tls connect error", cause);
        Error::because(ErrorType::TLSHandshakeFailure, "TLS accept() failed", inner)
    }

    fn tls(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn failures_are_classified_by_their_root_cause() {
        use rustls::{AlertDescription, Error as T, InvalidMessage, PeerIncompatible};
        let cases = [
            (
                tls(T::PeerIncompatible(
                    PeerIncompatible::NoCipherSuitesInCommon,
                )),
                HandshakeFailure::Incompatible,
            ),
            (
                tls(T::NoApplicationProtocol),
                HandshakeFailure::Incompatible,
            ),
            (
                tls(T::InvalidMessage(InvalidMessage::InvalidContentType)),
                HandshakeFailure::ProtocolError,
            ),
            (
                tls(T::NoCertificatesPresented),
                HandshakeFailure::ClientCertificate,
            ),
            (
                tls(T::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                )),
                HandshakeFailure::ClientCertificate,
            ),
            (
                tls(T::AlertReceived(AlertDescription::UnknownCA)),
                HandshakeFailure::Alert,
            ),
            (tls(T::General("x".into())), HandshakeFailure::Other),
            (
                io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof"),
                HandshakeFailure::Closed,
            ),
            (
                io::Error::from(io::ErrorKind::ConnectionReset),
                HandshakeFailure::Closed,
            ),
            (io::Error::other("something else"), HandshakeFailure::Other),
        ];
        for (cause, want) in cases {
            let shown = cause.to_string();
            assert_eq!(HandshakeFailure::of(&failed(cause)), want, "{shown}");
        }
        // no cause at all
        let bare = Error::explain(ErrorType::TLSHandshakeFailure, "nothing below");
        assert_eq!(HandshakeFailure::of(&bare), HandshakeFailure::Other);
    }

    #[test]
    fn the_label_order_is_the_discriminant_order() {
        for (i, reason) in HandshakeFailure::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{}", reason.label());
        }
    }
}
