//! The `server` section's process settings: where to listen, threads, admin, pid file, stop
//! timeout. (The request-normalisation fields of the same section are `edge::compile`'s.)

use crate::config::{duration_field, Ctx, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: Vec<SocketAddr>,
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

pub fn compile(s: &ServerConfig, ctx: &Ctx) -> Settings {
    let mut listen = Vec::new();
    let listen_cfg = s.listen.to_vec();
    if listen_cfg.is_empty() {
        ctx.error("server.listen", "at least one address is needed");
    }
    for (i, a) in listen_cfg.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            Ok(s) => listen.push(s),
            Err(_) => ctx.error(
                format!("server.listen[{i}]"),
                format!("invalid address {a:?}: expected IP:PORT, like 0.0.0.0:8080"),
            ),
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
        if listen.contains(&a) {
            ctx.error("server.admin", format!("{a} is also in server.listen"));
        }
    }
    Settings {
        listen,
        threads,
        admin,
        pid_file,
        shutdown_timeout,
    }
}
