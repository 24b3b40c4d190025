//! Reload: re-read the config file, compile it completely, and swap it in atomically. An invalid
//! config is refused as a whole and the one in force keeps serving.
//!
//! Requests in flight keep the `Arc<Policy>` snapshot they started with; new requests see the new
//! one. Listen addresses, the admin address and the thread count are bound at start: a change to
//! them is logged as needing a restart and the running values are kept.

use crate::config::{self, ConfigErrors};
use crate::observe::{metrics, AccessLog};
use crate::policy::{self, Policy};
use arc_swap::{ArcSwap, ArcSwapOption};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What the request path reads, swapped as a whole on reload.
pub struct Live {
    pub policy: ArcSwap<Policy>,
    pub access_log: ArcSwapOption<AccessLog>,
    /// One certificate resolver per `tls` profile, for the life of the process: TLS listeners
    /// are bound at start and keep theirs; reloads and file changes swap what it serves.
    pub tls: std::collections::BTreeMap<String, Arc<crate::tls::Resolver>>,
    /// The client-certificate verifier of each profile with `client_auth`, likewise.
    pub client_verifiers: std::collections::BTreeMap<String, Arc<crate::tls::ClientVerifier>>,
}

/// Start the access log writer a policy asks for, if any.
fn open_access_log(policy: &Policy) -> std::io::Result<Option<Arc<AccessLog>>> {
    policy
        .access_log
        .as_ref()
        .map(|(target, claims)| AccessLog::start(target.clone(), claims.clone()))
        .transpose()
}

impl Live {
    /// Start serving `policy`: its background work, and its access log.
    pub fn new(policy: Policy) -> std::io::Result<Arc<Live>> {
        policy.start_background();
        let log = open_access_log(&policy)?;
        let tls = policy
            .tls
            .iter()
            .map(|(name, profile)| {
                let r = crate::tls::Resolver::new(profile.clone());
                crate::tls::Resolver::watch(&r);
                (name.clone(), r)
            })
            .collect();
        // Every profile gets a verifier, asking for certificates or not, so that a reload can
        // turn client_auth on or off.
        let client_verifiers = policy
            .tls
            .iter()
            .map(|(name, p)| {
                let v = crate::tls::ClientVerifier::new(name, p.client_auth.clone());
                (name.clone(), v)
            })
            .collect();
        loaded_now();
        Ok(Arc::new(Live {
            policy: ArcSwap::from_pointee(policy),
            access_log: ArcSwapOption::new(log),
            tls,
            client_verifiers,
        }))
    }
}

/// `portcullis_config_last_reload_success_timestamp_seconds`: the configuration in force was
/// loaded now.
fn loaded_now() {
    let now = crate::auth::verify::now() as i64;
    metrics().config_last_reload_success.set(now);
}

/// Reloads one config file into a `Live`.
pub struct Reloader {
    pub file: PathBuf,
    pub live: Arc<Live>,
    /// One reload at a time.
    lock: Mutex<()>,
}

/// Why a reload did not happen.
#[derive(Debug)]
pub enum ReloadError {
    Config(ConfigErrors),
    AccessLog(std::io::Error),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Config(e) => write!(f, "{e}"),
            ReloadError::AccessLog(e) => write!(f, "access log: {e}"),
        }
    }
}

impl Reloader {
    pub fn new(file: &Path, live: Arc<Live>) -> Reloader {
        Reloader {
            file: file.to_path_buf(),
            live,
            lock: Mutex::new(()),
        }
    }

    /// Reload now; counts the result in `portcullis_config_reloads_total`.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.try_reload();
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics().config_reloads.with_label_values(&[label]).inc();
        match &result {
            Ok(()) => {
                loaded_now();
                log::info!("configuration reloaded from {}", self.file.display())
            }
            Err(e) => {
                log::error!("configuration reload refused, the previous one stays in force:\n{e}")
            }
        }
        result
    }

    fn try_reload(&self) -> Result<(), ReloadError> {
        let old = self.live.policy.load_full();
        let loaded = config::load(&self.file).map_err(ReloadError::Config)?;
        let mut new = policy::compile_with(&loaded, Some(&old)).map_err(ReloadError::Config)?;
        if new.server.listen != old.server.listen {
            log::warn!(
                "server.listen changed: restart to apply; still listening on the old addresses"
            );
            new.server.listen = old.server.listen.clone();
        }
        if new.server.admin != old.server.admin {
            log::warn!("server.admin changed: restart to apply");
            new.server.admin = old.server.admin;
        }
        if new.server.preserve_header_case != old.server.preserve_header_case {
            log::warn!("server.preserve_header_case changed: restart to apply");
            new.server.preserve_header_case = old.server.preserve_header_case;
        }
        if new.server.threads != old.server.threads {
            log::warn!("server.threads changed: restart to apply");
            new.server.threads = old.server.threads;
        }
        let (was, is) = (&old.edge.limits, &mut new.edge.limits);
        if (is.header_timeout, is.max_connections) != (was.header_timeout, was.max_connections) {
            log::warn!("server.limits.header_timeout or max_connections changed: restart to apply");
            is.header_timeout = was.header_timeout;
            is.max_connections = was.max_connections;
        }
        for w in &new.warnings {
            log::warn!("{w}");
        }
        // Certificates: each running TLS listener serves its profile's new certificates from
        // the next handshake on.
        for (name, resolver) in &self.live.tls {
            match new.tls.get(name) {
                Some(p) => {
                    let (is, was) = (p.sessions, resolver.sessions);
                    if is.resumption != was.resumption {
                        log::warn!("tls.{name}.session_resumption changed: restart to apply");
                    }
                    if is.cache != was.cache {
                        log::warn!("tls.{name}.session_cache changed: restart to apply");
                    }
                    resolver.install(p.clone())
                }
                None => log::warn!(
                    "tls.{name} was removed: its listeners keep their certificates until a restart"
                ),
            }
            if let (Some(v), Some(p)) = (self.live.client_verifiers.get(name), new.tls.get(name)) {
                v.install(p.client_auth.clone());
            }
        }
        // The access log: keep the running writer unless its target or claims changed.
        let new_log = if new.access_log != old.access_log {
            Some(open_access_log(&new).map_err(ReloadError::AccessLog)?)
        } else {
            None
        };
        new.start_background();
        let new = Arc::new(new);
        self.live.policy.store(new.clone());
        crate::observe::state::forget_removed(&new);
        if let Some(log) = new_log {
            self.live.access_log.store(log);
        }
        Ok(())
    }

    /// Reload on every SIGHUP, on a thread of its own.
    pub fn on_sighup(this: Arc<Reloader>) -> std::io::Result<()> {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
        std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                for _ in signals.forever() {
                    log::info!("SIGHUP: reloading {}", this.file.display());
                    let _ = this.reload();
                }
            })?;
        Ok(())
    }
}
