//! Build and run the Pingora server for a compiled policy: the proxy service, the admin service,
//! SIGHUP reloads, and a graceful stop that ends as soon as requests in flight are done.

pub mod settings;

pub use settings::{ListenKind, Listener, Settings};

use crate::edge::conn::{ConnRules, Front, PreTls, Slots};
use crate::edge::redirect::Redirect;
use crate::observe::Admin;
use crate::policy::Policy;
use crate::proxy::{in_flight, Gateway};
use crate::reload::{Live, Reloader};
use crate::tls::HandshakeFailure;
use async_trait::async_trait;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig, TlsAccept};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::listening::Service;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client-facing listener on `addr`. Pingora gives every connection a 64 KiB read buffer in
/// front of the socket, held as long as the connection is open, idle keep-alive ones included.
/// The HTTP/1 parser, rustls and h2 each read into buffers of their own, so ours read the socket
/// directly: the same instructions per request, 64 KiB less per connection. A listener that
/// reads a PROXY header keeps a small one, since a v1 header is read a byte at a time.
fn client_listener(addr: &str, proxy_protocol: bool) -> ListenerConfig {
    let read = if proxy_protocol { 512 } else { 0 };
    ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::default().read(read))
}

/// After each completed handshake on a TLS listener: count it, and attach the client
/// certificate (if one was presented and verified) to the connection for the request path.
/// (Certificates come from our resolver, which Pingora asks on every handshake.)
struct Handshakes {
    ok_with_cert: prometheus::IntCounter,
    ok_without: prometheus::IntCounter,
    /// By `HandshakeFailure`, in the order of `HandshakeFailure::ALL`.
    failed: [prometheus::IntCounter; HandshakeFailure::ALL.len()],
}

impl Handshakes {
    fn new(listener: &str) -> Handshakes {
        let metrics = crate::observe::metrics::metrics();
        let m = &metrics.tls_handshakes;
        let failures = &metrics.tls_handshake_failures;
        Handshakes {
            ok_with_cert: m.with_label_values(&[listener, "yes"]),
            ok_without: m.with_label_values(&[listener, "no"]),
            failed: HandshakeFailure::ALL
                .map(|reason| failures.with_label_values(&[listener, reason.label()])),
        }
    }
}

#[async_trait]
impl TlsAccept for Handshakes {
    async fn handshake_complete_callback(
        &self,
        tls: &pingora_core::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        match tls.peer_certificate_der() {
            Some(der) => {
                self.ok_with_cert.inc();
                Some(Arc::new(crate::tls::ClientCert::from_der(der)))
            }
            None => {
                self.ok_without.inc();
                None
            }
        }
    }

    fn handshake_failed_callback(&self, error: &pingora_core::Error) {
        let reason = HandshakeFailure::of(error);
        self.failed[reason as usize].inc();
        log::debug!("TLS handshake failed ({}): {error}", reason.label());
    }
}

/// A ready-to-run server.
pub struct Built {
    pub server: Server,
    /// Holds the live policy; SIGHUP goes through it.
    pub reloader: Arc<Reloader>,
    pub pid_file: Option<PathBuf>,
    pub shutdown_timeout: Duration,
}

/// Build (but do not start) the server for the policy compiled from `file`. Listening sockets are
/// bound when it runs; the access log file is opened now, so a bad path fails here.
pub fn build(policy: Policy, file: &Path) -> std::io::Result<Built> {
    let shutdown_timeout = policy.server.shutdown_timeout;
    let conf = ServerConf {
        threads: policy.server.threads,
        // After SIGTERM the listeners close and requests in flight get up to the grace period;
        // `drain` ends the process as soon as they are done.
        grace_period_seconds: Some(shutdown_timeout.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        // Timeouts of a second or more (connect, read, keep-alive) go to tokio's timer wheel on
        // the worker itself. Otherwise Pingora starts a clock thread that wakes every millisecond
        // and locks each worker's timer tree; with this there is no such thread at all. Measured
        // on one pinned core: +2% requests/s on average over 9 runs each (within this machine's
        // noise), and 1000 fewer wake-ups a second when idle.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    crate::tls::install_provider();
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // Keep SIGUSR1 (log reopening) from ending the process, access log or not.
    crate::observe::access_log::reopen_flag();
    let pid_file = policy.server.pid_file.clone();
    let listen = policy.server.listen.clone();
    let http2 = policy.server.http2;
    let preserve_header_case = policy.server.preserve_header_case;
    let admin = policy.server.admin;
    let edge_rules = policy.edge.clone();
    let live = Live::new(policy)?;
    let slots = Slots::new(edge_rules.limits.max_connections);
    let rules = |proxy_protocol: bool| ConnRules {
        slots: slots.clone(),
        proxy_protocol: proxy_protocol.then(|| edge_rules.trusted.clone()),
        header_timeout: edge_rules.limits.header_timeout,
        idle_timeout: edge_rules.limits.idle_timeout,
    };
    // One proxy service for listeners with the PROXY protocol and one for those without:
    // Pingora runs its pre-TLS hook per service (same gateway, same live policy).
    let proxy_service = |name: &str, proxy_protocol: bool| {
        let mut app = pingora_proxy::http_proxy(&server.configuration, Gateway::new(live.clone()));
        let mut opts = HttpServerOptions::default();
        opts.h1_normalize_header_case = !preserve_header_case;
        if http2 {
            // h2c with prior knowledge on plain listeners; told from HTTP/1.1 by the connection
            // preface, so both share a port.
            opts.h2c = true;
            opts.h2_idle_timeout = Some(edge_rules.limits.idle_timeout);
        }
        app.server_options = Some(opts);
        let mut svc = Service::new(name.to_string(), Front::new(app, rules(proxy_protocol)));
        svc.endpoints().set_pre_tls_callback(Arc::new(PreTls {
            slots: slots.clone(),
            proxy_protocol: proxy_protocol.then(|| edge_rules.trusted.clone()),
            header_timeout: edge_rules.limits.header_timeout,
        }));
        svc
    };
    let mut proxy = proxy_service("portcullis proxy", false);
    let mut proxied = proxy_service("portcullis proxy (PROXY protocol)", true);
    let mut any_proxied = false;
    for l in &listen {
        let addr = l.addr.to_string();
        let svc = if l.proxy_protocol {
            any_proxied = true;
            &mut proxied
        } else {
            &mut proxy
        };
        match &l.kind {
            ListenKind::Plain => svc.add_listener(client_listener(&addr, l.proxy_protocol)),
            ListenKind::Tls(profile) => {
                let resolver = live.tls.get(profile).cloned().ok_or_else(|| {
                    std::io::Error::other(format!("tls profile {profile} is not loaded"))
                })?;
                let callbacks = Box::new(Handshakes::new(&addr));
                let mut settings = TlsSettings::with_callbacks(callbacks)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let sessions = resolver.sessions;
                settings.set_server_config_hook(move |c| sessions.apply(c));
                settings.set_cert_resolver(resolver);
                if let Some(v) = live.client_verifiers.get(profile) {
                    settings.set_client_cert_verifier(v.clone());
                }
                if http2 {
                    settings.enable_h2();
                }
                svc.add_listener(client_listener(&addr, l.proxy_protocol).tls(settings));
            }
            ListenKind::RedirectHttps(port) => {
                let app = Redirect {
                    port: *port,
                    rules: edge_rules.clone(),
                };
                let mut svc = Service::new(
                    format!("portcullis redirect {addr}"),
                    Front::new(HttpServer::new_app(app), rules(l.proxy_protocol)),
                );
                svc.add_listener(client_listener(&addr, l.proxy_protocol));
                svc.threads = Some(1);
                server.add_service(svc);
            }
        }
    }
    server.add_service(proxy);
    if any_proxied {
        server.add_service(proxied);
    }

    if let Some(addr) = admin {
        let app = Admin { live: live.clone() };
        let mut svc = Service::new("portcullis admin".to_string(), HttpServer::new_app(app));
        svc.add_tcp(&addr.to_string());
        // One thread is plenty for health checks and scrapes.
        svc.threads = Some(1);
        server.add_service(svc);
    }
    let reloader = Arc::new(Reloader::new(file, live.clone()));
    Ok(Built {
        server,
        reloader,
        pid_file,
        shutdown_timeout,
    })
}

/// SIGTERM/SIGQUIT: graceful stop; SIGINT: immediate stop.
struct Signals {
    pid_file: Option<PathBuf>,
    timeout: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot watch stop signals");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = quit.recv() => {}
            _ = int.recv() => {
                log::info!("SIGINT: stopping now");
                remove_pid_file(self.pid_file.as_deref());
                return ShutdownSignal::FastShutdown;
            }
        }
        log::info!(
            "stopping: no new connections; up to {:?} for requests in flight",
            self.timeout
        );
        drain(self.pid_file.clone(), self.timeout);
        ShutdownSignal::GracefulTerminate
    }
}

/// Exit as soon as no request is in flight (checked every 20 ms), or let Pingora's grace period
/// run out.
fn drain(pid_file: Option<PathBuf>, timeout: Duration) {
    let _ = std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || {
            let start = Instant::now();
            // Let the listeners see the shutdown before counting.
            std::thread::sleep(Duration::from_millis(50));
            while in_flight() > 0 && start.elapsed() < timeout {
                std::thread::sleep(Duration::from_millis(20));
            }
            // The access log writer flushes every 200 ms at most.
            std::thread::sleep(Duration::from_millis(250));
            remove_pid_file(pid_file.as_deref());
            log::info!("stopped after {:?}", start.elapsed());
            std::process::exit(0);
        });
}

fn remove_pid_file(p: Option<&Path>) {
    if let Some(p) = p {
        let _ = std::fs::remove_file(p);
    }
}

/// Run until stopped: writes the pid file, reloads on SIGHUP, exits the process at the end.
pub fn run(built: Built) -> ! {
    if let Some(p) = &built.pid_file {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            log::error!("cannot write the pid file {}: {e}", p.display());
        }
    }
    if let Err(e) = Reloader::on_sighup(built.reloader.clone()) {
        log::error!("cannot watch SIGHUP, reloads are off: {e}");
    }
    let signals = Signals {
        pid_file: built.pid_file.clone(),
        timeout: built.shutdown_timeout,
    };
    built.server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    remove_pid_file(built.pid_file.as_deref());
    std::process::exit(0)
}
