//! Revocation shared through Redis (`revocation.shared: true`).
//!
//! Redis holds one sorted set, `PREFIX` `revoked`: members `sub:VALUE` / `jti:VALUE`, scored by
//! when the entry may be forgotten (Unix milliseconds; the token's longest possible lifetime).
//! `portcullis revoke` adds a member and publishes it on `PREFIX` `revocations`; every instance
//! is subscribed and adds it to its in-process set, which is all the request path reads. Pub/sub
//! is at-most-once, so each instance also reads the whole set when it (re)subscribes and every
//! `refresh`, which is also when expired entries leave. One key, so it lives on one slot of a
//! Redis Cluster.

use super::Redis;
use crate::limit::RevocationSet;
use arc_swap::ArcSwap;
use futures_util::StreamExt;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The in-process copy of the shared set, and how it is kept in step.
#[derive(Debug)]
pub struct SharedRevocation {
    pub redis: Arc<Redis>,
    pub key: String,
    pub channel: String,
    pub refresh: Duration,
    set: ArcSwap<RevocationSet>,
    watching: std::sync::atomic::AtomicBool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `sub:alice` → the set it goes in.
fn add_member(set: &mut RevocationSet, member: &str) -> bool {
    match member.split_once(':') {
        Some(("sub", v)) => set.sub.insert(v.to_string()),
        Some(("jti", v)) => set.jti.insert(v.to_string()),
        _ => false,
    }
}

impl SharedRevocation {
    pub fn new(redis: Arc<Redis>, key_prefix: &str, refresh: Duration) -> SharedRevocation {
        SharedRevocation {
            redis,
            key: format!("{key_prefix}revoked"),
            channel: format!("{key_prefix}revocations"),
            refresh,
            set: ArcSwap::from_pointee(RevocationSet::default()),
            watching: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn is_revoked(&self, sub: Option<&str>, jti: Option<&str>) -> bool {
        let set = self.set.load();
        sub.is_some_and(|s| set.sub.contains(s)) || jti.is_some_and(|j| set.jti.contains(j))
    }

    pub fn snapshot(&self) -> Arc<RevocationSet> {
        self.set.load_full()
    }

    fn apply(&self, member: &str) {
        let mut set = (**self.set.load()).clone();
        if add_member(&mut set, member) {
            self.set.store(Arc::new(set));
        }
    }

    /// Read the whole shared set (the entries not expired yet) and make it the one in force.
    async fn resync(&self, conn: &mut super::redis::Conn) -> Result<(), String> {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&self.key)
            .arg(now_ms())
            .arg("+inf")
            .arg("BYSCORE")
            .query_async(conn)
            .await
            .map_err(|e| e.to_string())?;
        let mut set = RevocationSet::default();
        for m in &members {
            add_member(&mut set, m);
        }
        if set != **self.set.load() {
            log::info!(
                "shared revocation: {} sub, {} jti in force",
                set.sub.len(),
                set.jti.len()
            );
        }
        self.set.store(Arc::new(set));
        Ok(())
    }

    /// Subscribe and resync for as long as `this` is alive, reconnecting with backoff.
    pub fn watch(this: &Arc<SharedRevocation>) {
        if this
            .watching
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return; // kept across a reload: already watched
        }
        let weak: Weak<SharedRevocation> = Arc::downgrade(this);
        crate::background::spawn(async move {
            let mut wait = Duration::from_millis(100);
            let mut attempt = 0usize;
            loop {
                let Some(me) = weak.upgrade() else { return };
                attempt += 1;
                let (redis, client, channel, refresh) = (
                    me.redis.clone(),
                    me.redis.pubsub_client(attempt).clone(),
                    me.channel.clone(),
                    me.refresh,
                );
                drop(me);
                let session = async {
                    let mut pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
                    pubsub
                        .subscribe(&channel)
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut conn = redis.connect().await.map_err(|e| e.to_string())?;
                    Ok::<_, String>((pubsub, conn_resynced(&weak, &mut conn).await?, conn))
                };
                let (mut pubsub, (), mut conn) =
                    match tokio::time::timeout(Duration::from_secs(3), session).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            log::debug!("shared revocation: {e}");
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(2));
                            continue;
                        }
                        Err(_) => {
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                    };
                wait = Duration::from_millis(100);
                let mut messages = pubsub.on_message();
                let mut tick = tokio::time::interval(refresh);
                tick.tick().await;
                loop {
                    tokio::select! {
                        m = messages.next() => {
                            let Some(m) = m else { break };
                            let Some(me) = weak.upgrade() else { return };
                            if let Ok(member) = m.get_payload::<String>() {
                                me.apply(&member);
                            }
                        }
                        _ = tick.tick() => {
                            if weak.strong_count() == 0 {
                                return;
                            }
                            if let Err(e) = conn_resynced(&weak, &mut conn).await {
                                log::warn!("shared revocation: resync failed: {e}");
                                break;
                            }
                        }
                    }
                }
                log::warn!("shared revocation: subscription lost; reconnecting");
            }
        });
    }

    /// Revoke `member` (`sub:…`/`jti:…`) until `until_ms` for every instance: store it, drop
    /// what has expired, and tell the subscribed instances.
    pub async fn add(
        conn: &mut super::redis::Conn,
        key: &str,
        channel: &str,
        member: &str,
        until_ms: i64,
    ) -> redis::RedisResult<()> {
        redis::pipe()
            .atomic()
            .cmd("ZADD")
            .arg(key)
            .arg("GT")
            .arg(until_ms)
            .arg(member)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(key)
            .arg("-inf")
            .arg(now_ms())
            .ignore()
            .query_async::<()>(&mut *conn)
            .await?;
        // Apart: on a Redis Cluster the channel hashes to its own slot.
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(member)
            .query_async::<()>(conn)
            .await
    }

    /// Everything revoked now, with when each entry expires (Unix milliseconds).
    pub async fn list(
        conn: &mut super::redis::Conn,
        key: &str,
    ) -> redis::RedisResult<Vec<(String, i64)>> {
        redis::cmd("ZRANGE")
            .arg(key)
            .arg(now_ms())
            .arg("+inf")
            .arg("BYSCORE")
            .arg("WITHSCORES")
            .query_async(conn)
            .await
    }
}

/// What `portcullis revoke` does.
pub enum Action {
    /// `sub:VALUE` or `jti:VALUE`.
    Revoke(String),
    List,
}

/// `portcullis revoke`: against the Redis of `policy`'s `cluster` section.
pub fn command(
    policy: &crate::policy::Policy,
    action: Action,
    until: Option<&str>,
    ttl: Option<&str>,
) -> Result<String, String> {
    let shared = policy
        .revocation
        .as_ref()
        .and_then(|r| r.shared.clone())
        .ok_or("the config has no revocation section with shared: true")?;
    let until_ms = match (until, ttl) {
        (Some(u), _) => humantime::parse_rfc3339_weak(u)
            .map_err(|e| format!("--until {u:?}: {e} (use 2026-12-31T00:00:00Z)"))?
            .duration_since(UNIX_EPOCH)
            .map_err(|_| format!("--until {u:?} is before 1970"))?
            .as_millis() as i64,
        (None, t) => {
            let d = crate::config::parse_duration(t.unwrap_or("24h"))
                .map_err(|e| format!("--ttl: {e}"))?;
            now_ms() + d.as_millis() as i64
        }
    };
    if until_ms <= now_ms() && matches!(action, Action::Revoke(_)) {
        return Err("the entry would already have expired".into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut conn = tokio::time::timeout(Duration::from_secs(3), shared.redis.connect())
            .await
            .map_err(|_| format!("redis {}: no connection within 3s", shared.redis.name))?
            .map_err(|e| format!("redis {}: {e}", shared.redis.name))?;
        match action {
            Action::Revoke(member) => {
                SharedRevocation::add(&mut conn, &shared.key, &shared.channel, &member, until_ms)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(format!(
                    "revoked {member} until {}\n",
                    humantime::format_rfc3339_seconds(
                        UNIX_EPOCH + Duration::from_millis(until_ms as u64)
                    )
                ))
            }
            Action::List => {
                let entries = SharedRevocation::list(&mut conn, &shared.key)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut out = String::new();
                for (member, until) in entries {
                    out.push_str(&format!(
                        "{member}\tuntil {}\n",
                        humantime::format_rfc3339_seconds(
                            UNIX_EPOCH + Duration::from_millis(until.max(0) as u64)
                        )
                    ));
                }
                Ok(out)
            }
        }
    })
}

async fn conn_resynced(
    weak: &Weak<SharedRevocation>,
    conn: &mut super::redis::Conn,
) -> Result<(), String> {
    match weak.upgrade() {
        Some(me) => me.resync(conn).await,
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members() {
        let mut s = RevocationSet::default();
        assert!(add_member(&mut s, "sub:alice"));
        assert!(add_member(&mut s, "jti:a:b"));
        assert!(!add_member(&mut s, "sub:alice"));
        assert!(!add_member(&mut s, "iss:x"));
        assert!(s.sub.contains("alice") && s.jti.contains("a:b"));
    }
}
