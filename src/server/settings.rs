//! The `server` section's process settings: where to listen, threads, admin, pid file, stop
//! timeout. (The request-normalisation fields of the same section are `edge::compile`'s.)

use crate::config::{duration_field, Ctx, ListenConfig, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What a listener serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenKind {
    /// HTTP/1.1 (and h2c with prior knowledge when `http2` is on).
    Plain,
    /// TLS with the certificates of this `tls` profile; ALPN h2 and http/1.1.
    Tls(String),
    /// 308 to `https://host:PORT/...`, nothing else.
    RedirectHttps(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub kind: ListenKind,
    /// A PROXY protocol header comes first, before TLS on TLS listeners (from
    /// `server.trusted_proxies` only).
    pub proxy_protocol: bool,
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            ListenKind::Plain => write!(f, "{}", self.addr),
            ListenKind::Tls(p) => write!(f, "{} (tls {p})", self.addr),
            ListenKind::RedirectHttps(port) => {
                write!(f, "{} (redirect to https :{port})", self.addr)
            }
        }
    }
}

impl Settings {
    /// The first listener that serves requests over plain HTTP, if any.
    pub fn first_plain(&self) -> Option<std::net::SocketAddr> {
        self.listen
            .iter()
            .find(|l| l.kind == ListenKind::Plain)
            .map(|l| l.addr)
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: Vec<Listener>,
    pub http2: bool,
    /// Header names keep their HTTP/1 case (`server.preserve_header_case`).
    pub preserve_header_case: bool,
    pub threads: usize,
    pub admin: Option<SocketAddr>,
    pub pid_file: Option<PathBuf>,
    pub shutdown_timeout: Duration,
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn listener(path: &str, l: &ListenConfig, ctx: &Ctx) -> Option<Listener> {
    let addr = match l.addr.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            let at = if l.tls.is_some() || l.redirect_https.is_some() {
                format!("{path}.addr")
            } else {
                path.to_string()
            };
            ctx.error(
                at,
                format!(
                    "invalid address {:?}: expected IP:PORT, like 0.0.0.0:8080",
                    l.addr
                ),
            );
            None
        }
    };
    let kind = match (&l.tls, l.redirect_https) {
        (Some(_), Some(_)) => {
            ctx.error(
                path,
                "tls and redirect_https exclude each other: a redirecting listener serves nothing else",
            );
            return None;
        }
        (Some(p), None) => {
            if !ctx.config().defines("tls", p) {
                ctx.error(
                    format!("{path}.tls"),
                    format!(
                        "unknown tls profile {p:?} (defined: {})",
                        ctx.defined("tls")
                    ),
                );
                return None;
            }
            ListenKind::Tls(p.clone())
        }
        (None, Some(0)) => {
            ctx.error(format!("{path}.redirect_https"), "port 0 is not a port");
            return None;
        }
        (None, Some(port)) => ListenKind::RedirectHttps(port),
        (None, None) => ListenKind::Plain,
    };
    if l.proxy_protocol && ctx.config().server.trusted_proxies.is_empty() {
        ctx.error(
            format!("{path}.proxy_protocol"),
            "needs server.trusted_proxies: the addresses of the balancers that send it",
        );
        return None;
    }
    Some(Listener {
        addr: addr?,
        kind,
        proxy_protocol: l.proxy_protocol,
    })
}

pub fn compile(s: &ServerConfig, ctx: &Ctx) -> Settings {
    let mut listen = Vec::new();
    let listen_cfg = s.listen.to_vec();
    if listen_cfg.is_empty() {
        ctx.error("server.listen", "at least one address is needed");
    }
    for (i, l) in listen_cfg.iter().enumerate() {
        if let Some(listener) = listener(&format!("server.listen[{i}]"), l, ctx) {
            if listen.iter().any(|x: &Listener| x.addr == listener.addr) {
                ctx.error(
                    format!("server.listen[{i}]"),
                    format!("{} is listed twice", listener.addr),
                );
            } else {
                listen.push(listener);
            }
        }
    }
    let threads = match s.threads {
        Some(0) => {
            ctx.error("server.threads", "must be at least 1");
            1
        }
        Some(n) if n > 1024 => {
            ctx.error("server.threads", format!("{n} is more than 1024"));
            1
        }
        Some(n) => n,
        None => default_threads(),
    };
    let admin = s
        .admin
        .as_ref()
        .and_then(|a| match a.parse::<SocketAddr>() {
            Ok(s) => Some(s),
            Err(_) => {
                ctx.error(
                    "server.admin",
                    format!("invalid address {a:?}: expected IP:PORT, like 127.0.0.1:9901"),
                );
                None
            }
        });
    let pid_file = s.pid_file.as_ref().map(|p| ctx.resolve(p));
    let shutdown_timeout = duration_field(
        "server.shutdown_timeout".into(),
        &s.shutdown_timeout,
        Duration::from_secs(10),
        Duration::ZERO..=Duration::from_secs(3600),
        &mut ctx.errors(),
    );
    if let Some(a) = admin {
        if listen.iter().any(|l| l.addr == a) {
            ctx.error("server.admin", format!("{a} is also in server.listen"));
        }
    }
    Settings {
        listen,
        http2: s.http2,
        preserve_header_case: s.preserve_header_case,
        threads,
        admin,
        pid_file,
        shutdown_timeout,
    }
}
