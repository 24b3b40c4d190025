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
        })
    }
}

/// The certificates a TLS listener serves, swappable while it runs.
#[derive(Debug)]
pub struct Resolver {
    pub name: String,
    profile: ArcSwap<Profile>,
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
            profile: ArcSwap::new(profile.clone()),
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

    /// Serve `profile` from the next handshake on.
    pub fn install(&self, profile: Arc<Profile>) {
        self.export(&profile);
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
