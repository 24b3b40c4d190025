//! The JSON access log: one object per line per request, written by a thread of its own.
//!
//! The request path only formats the line and hands it to a bounded channel (`try_send`); it never
//! waits on the disk. If the writer falls behind and the channel is full, the line is dropped and
//! `portcullis_access_log_dropped_total` counts it. SIGUSR1 makes the writer reopen its file, for
//! logrotate.

use super::metrics::metrics;
use serde::Serialize;
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Lines that may wait for the writer.
const QUEUE: usize = 65_536;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

/// The `access_log` section: where lines go and which claims they show.
pub fn compile(
    a: Option<&crate::config::AccessLogConfig>,
    ctx: &crate::config::Ctx,
) -> Option<(Target, Vec<crate::auth::ClaimPath>)> {
    let a = a?;
    let target = if a.path == "-" {
        Target::Stdout
    } else {
        let p = ctx.resolve(&a.path);
        let dir = p.parent().map(|d| d.to_path_buf()).unwrap_or_default();
        if a.path.is_empty() || p.is_dir() || !(dir.as_os_str().is_empty() || dir.is_dir()) {
            ctx.error(
                "access_log.path",
                format!("{p:?} is not a file in an existing folder"),
            );
            return None;
        }
        Target::File(p)
    };
    let claims: Vec<_> = a
        .claims
        .iter()
        .enumerate()
        .filter_map(|(i, c)| crate::auth::path::compile(ctx, format!("access_log.claims[{i}]"), c))
        .collect();
    (claims.len() == a.claims.len()).then_some((target, claims))
}

/// One request, as logged.
#[derive(Serialize)]
pub struct Line<'a> {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub remote_addr: Option<String>,
    /// The client's address after `server.trusted_proxies` (the peer's when it is not one).
    pub client_ip: Option<String>,
    pub request_id: Option<&'a str>,
    /// The trace id of an incoming W3C `traceparent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    pub method: &'a str,
    /// The path without the query string (a query may carry a token).
    pub path: &'a str,
    pub status: u16,
    pub route: Option<&'a str>,
    /// The peer the request went to, if any.
    pub upstream: Option<String>,
    pub duration_ms: f64,
    pub bytes_sent: usize,
    pub jwt: Option<JwtInfo<'a>>,
    pub claims: Map<String, Value>,
    /// `ok`, `missing`, `invalid`, `expired`, `forbidden`, `revoked`; null on public routes.
    pub auth_result: Option<&'static str>,
    /// The verified client certificate (mTLS), if the connection presented one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<ClientCertInfo<'a>>,
}

#[derive(Serialize)]
pub struct ClientCertInfo<'a> {
    pub subject: &'a str,
    /// base64url SHA-256 of the certificate (the `x5t#S256` a bound token names).
    pub sha256: String,
}

#[derive(Serialize)]
pub struct JwtInfo<'a> {
    pub alg: &'static str,
    pub kid: Option<&'a str>,
}

/// A running access log.
pub struct AccessLog {
    tx: SyncSender<Vec<u8>>,
    /// Claims allowed into log lines.
    pub claims: Vec<crate::auth::ClaimPath>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

enum Sink {
    Stdout(BufWriter<io::Stdout>),
    File(BufWriter<File>),
}

impl Sink {
    fn open(target: &Target) -> io::Result<Sink> {
        Ok(match target {
            Target::Stdout => Sink::Stdout(BufWriter::with_capacity(64 * 1024, io::stdout())),
            Target::File(p) => Sink::File(BufWriter::with_capacity(64 * 1024, open_append(p)?)),
        })
    }
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File(w) => w,
        }
    }
}

fn open_append(p: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(p)
}

/// Set by SIGUSR1. Installing it also keeps SIGUSR1 from ending the process (its default action)
/// when no access log is configured.
pub fn reopen_flag() -> &'static Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let f = Arc::new(AtomicBool::new(false));
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGUSR1, f.clone()) {
            log::warn!("cannot watch SIGUSR1 for log reopening: {e}");
        }
        f
    })
}

impl AccessLog {
    /// Open the target now (so a bad path fails at start-up) and start the writer thread.
    pub fn start(
        target: Target,
        claims: Vec<crate::auth::ClaimPath>,
    ) -> io::Result<Arc<AccessLog>> {
        let sink = Sink::open(&target)?;
        let (tx, rx) = sync_channel(QUEUE);
        let reopen = reopen_flag().clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, sink, target, reopen))?;
        Ok(Arc::new(AccessLog { tx, claims }))
    }

    /// Queue one line; never blocks.
    pub fn log(&self, line: &Line<'_>) {
        let mut bytes = Vec::with_capacity(320);
        if serde_json::to_writer(&mut bytes, line).is_err() {
            return;
        }
        bytes.push(b'\n');
        match self.tx.try_send(bytes) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                metrics().access_log_dropped.inc()
            }
        }
    }
}

fn writer(rx: Receiver<Vec<u8>>, mut sink: Sink, target: Target, reopen: Arc<AtomicBool>) {
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                let _ = sink.writer().flush();
                return;
            }
        };
        if let Some(line) = first {
            let w = sink.writer();
            let _ = w.write_all(&line);
            // Take what else is queued, then flush once.
            while let Ok(line) = rx.try_recv() {
                let _ = w.write_all(&line);
            }
            let _ = w.flush();
        }
        if reopen.swap(false, Ordering::SeqCst) {
            let _ = sink.writer().flush();
            match Sink::open(&target) {
                Ok(s) => {
                    sink = s;
                    log::info!("access log reopened");
                }
                Err(e) => log::error!("cannot reopen the access log {target:?}: {e}"),
            }
        }
    }
}

/// Now as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
