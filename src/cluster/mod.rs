//! Cluster mode: state shared by the gateway instances through Redis (or Valkey). Compiled from
//! the `cluster` section; without it everything stays in the process, as before.

pub mod limit;
pub mod redis;
pub mod revocation;

pub use self::redis::{Failure, Redis, Target};

use crate::config::{ClusterConfig, Ctx, OnErrorConfig};
use std::sync::Arc;
use std::time::Duration;

/// What a shared limit does when Redis cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// This instance's own bucket for the key (the limit holds per instance).
    Local,
    Allow,
    /// 503.
    Deny,
}

#[derive(Debug)]
pub struct Cluster {
    pub redis: Arc<Redis>,
    pub on_error: OnError,
    pub key_prefix: String,
    /// The section it was compiled from (a reload with the same one keeps the connection).
    config: ClusterConfig,
}

/// The `cluster` section. It only checks and builds: nothing connects until `start`.
pub fn compile(
    c: Option<&ClusterConfig>,
    ctx: &Ctx,
    previous: Option<&Arc<Cluster>>,
) -> Option<Arc<Cluster>> {
    let c = c?;
    if let Some(p) = previous.filter(|p| p.config == *c) {
        return Some(p.clone());
    }
    let r = &c.redis;
    let urls: Vec<(String, String)> = match (&r.url, &r.nodes) {
        (Some(_), Some(_)) => {
            ctx.error(
                "cluster.redis",
                "url and nodes exclude each other: one Redis, or a Redis Cluster",
            );
            return None;
        }
        (None, None) => {
            ctx.error(
                "cluster.redis",
                "needs url (one Redis) or nodes (a Redis Cluster)",
            );
            return None;
        }
        (None, Some(n)) if n.is_empty() => {
            ctx.error("cluster.redis.nodes", "at least one seed node is needed");
            return None;
        }
        (None, Some(n)) => n
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("cluster.redis.nodes[{i}]"), u.clone()))
            .collect(),
        (Some(u), None) => vec![("cluster.redis.url".to_string(), u.clone())],
    };
    let password = match &r.password_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(p) if !p.is_empty() => Some(p),
            _ => {
                ctx.error(
                    "cluster.redis.password_env",
                    format!("the environment variable {var} is not set"),
                );
                return None;
            }
        },
    };
    let mut infos = Vec::new();
    for (path, url) in &urls {
        if !url.starts_with("redis://") && !url.starts_with("rediss://") {
            ctx.error(
                path.as_str(),
                format!("{url:?} is not a redis:// or rediss:// URL"),
            );
            return None;
        }
        if url.contains("#insecure") {
            ctx.error(
                path.as_str(),
                "#insecure turns off certificate checks: not accepted",
            );
            return None;
        }
        let info = match ::redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
            Ok(i) => i,
            Err(e) => {
                ctx.error(path.as_str(), format!("{url:?}: {e}"));
                return None;
            }
        };
        let mut settings = info.redis_settings().clone();
        if let Some(u) = &r.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &password {
            settings = settings.set_password(p);
        }
        infos.push(info.set_redis_settings(settings));
    }
    let name = infos
        .iter()
        .map(|i| i.addr().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let timeout = crate::config::duration_field(
        "cluster.redis.timeout".into(),
        &r.timeout,
        Duration::from_millis(100),
        Duration::from_millis(1)..=Duration::from_secs(10),
        &mut ctx.errors(),
    );
    let singles: Result<Vec<::redis::Client>, _> =
        infos.iter().cloned().map(::redis::Client::open).collect();
    let singles = match singles {
        Ok(s) => s,
        Err(e) => {
            ctx.error("cluster.redis", e.to_string());
            return None;
        }
    };
    let target = if r.nodes.is_some() {
        let limit = timeout.max(Duration::from_millis(500));
        let mut b = ::redis::cluster::ClusterClientBuilder::new(infos)
            .connection_timeout(limit)
            .response_timeout(limit)
            .retries(1);
        if let Some(u) = &r.username {
            b = b.username(u);
        }
        if let Some(p) = &password {
            b = b.password(p);
        }
        match b.build() {
            Ok(client) => Target::Cluster {
                client: Box::new(client),
                seeds: singles,
            },
            Err(e) => {
                ctx.error("cluster.redis.nodes", e.to_string());
                return None;
            }
        }
    } else {
        Target::Single(Box::new(singles.into_iter().next()?))
    };
    Some(Arc::new(Cluster {
        redis: Arc::new(Redis::new(target, timeout, name)),
        on_error: match c.on_error {
            OnErrorConfig::Local => OnError::Local,
            OnErrorConfig::Allow => OnError::Allow,
            OnErrorConfig::Deny => OnError::Deny,
        },
        key_prefix: r.key_prefix.clone().unwrap_or_else(|| "portcullis:".into()),
        config: c.clone(),
    }))
}
