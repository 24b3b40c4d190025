//! The Redis connection of a gateway instance: one multiplexed connection (redis-rs's
//! `ConnectionManager`), made and re-made on the background runtime, with a breaker in front.
//!
//! Requests never wait on a connection attempt: while Redis is down they are told so at once
//! (and the caller's `on_error` applies); a background task probes with backoff and closes the
//! breaker when Redis answers again. A command that takes longer than `timeout` counts as a
//! failure and opens the breaker.

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Why a command did not get an answer (the `kind` label of `portcullis_redis_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The breaker is open: Redis was not reachable lately.
    Down,
    Timeout,
    Connection,
    /// Redis answered with an error (script, ACL, wrong type…).
    Reply,
}

impl Failure {
    pub const ALL: [Failure; 4] = [
        Failure::Down,
        Failure::Timeout,
        Failure::Connection,
        Failure::Reply,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Down => "down",
            Failure::Timeout => "timeout",
            Failure::Connection => "connection",
            Failure::Reply => "reply",
        }
    }
}

/// What the admin listener reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct State {
    pub up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct Redis {
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    up: AtomicBool,
    probing: AtomicBool,
    pub timeout: Duration,
    last_error: Mutex<Option<String>>,
    /// A description of the target, without credentials, for logs.
    pub target: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("target", &self.target)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Redis {
    pub fn new(client: redis::Client, timeout: Duration, target: String) -> Redis {
        Redis {
            client,
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            timeout,
            last_error: Mutex::new(Some("not connected yet".into())),
            target,
        }
    }

    /// For connections of their own (pub/sub, the `revoke` command).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn state(&self) -> State {
        State {
            up: self.up.load(Ordering::Relaxed),
            error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Connect in the background (and again whenever the breaker opens).
    pub fn start(self: &Arc<Self>) {
        self.probe();
    }

    fn failed(self: &Arc<Self>, kind: Failure, e: String) {
        crate::observe::metrics().redis_errors[kind as usize].inc();
        if kind == Failure::Reply {
            log::warn!("redis {}: {e}", self.target);
        }
        if matches!(kind, Failure::Down | Failure::Reply) {
            return;
        }
        if self.up.swap(false, Ordering::AcqRel) {
            log::warn!(
                "redis {}: {e}; shared state is unavailable until it answers again",
                self.target
            );
            crate::observe::metrics().redis_up.set(0);
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        self.probe();
    }

    /// One background task at a time: connect (the first time), then PING with backoff until
    /// Redis answers; then requests use it again.
    fn probe(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Redis> = Arc::downgrade(self);
        crate::background::spawn(async move {
            let mut wait = Duration::from_millis(50);
            loop {
                let Some(me) = weak.upgrade() else { return };
                match me.ping().await {
                    Ok(()) => {
                        *me.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        me.up.store(true, Ordering::Release);
                        me.probing.store(false, Ordering::Release);
                        crate::observe::metrics().redis_up.set(1);
                        log::info!("redis {}: connected", me.target);
                        return;
                    }
                    Err(e) => {
                        *me.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    }
                }
                drop(me);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        });
    }

    async fn ping(&self) -> Result<(), String> {
        let conn = match self.conn.load_full() {
            Some(c) => c,
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
                    .set_response_timeout(Some(self.timeout.max(Duration::from_millis(500))))
                    .set_number_of_retries(1);
                let made = tokio::time::timeout(
                    Duration::from_secs(2),
                    ConnectionManager::new_with_config(self.client.clone(), config),
                )
                .await
                .map_err(|_| "connecting timed out".to_string())?
                .map_err(|e| format!("cannot connect: {e}"))?;
                let made = Arc::new(made);
                self.conn.store(Some(made.clone()));
                made
            }
        };
        let mut c = (*conn).clone();
        let pong = tokio::time::timeout(
            Duration::from_secs(1),
            redis::cmd("PING").query_async::<String>(&mut c),
        )
        .await
        .map_err(|_| "PING timed out".to_string())?;
        pong.map(|_| ()).map_err(|e| format!("PING failed: {e}"))
    }

    /// Run one command (or script) against Redis within `timeout`.
    pub async fn call<T, F, Fut>(self: &Arc<Self>, f: F) -> Result<T, Failure>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = match (self.up.load(Ordering::Acquire), self.conn.load_full()) {
            (true, Some(c)) => (*c).clone(),
            _ => {
                self.failed(Failure::Down, String::new());
                return Err(Failure::Down);
            }
        };
        match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let kind = if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    Failure::Connection
                } else {
                    Failure::Reply
                };
                self.failed(kind, e.to_string());
                Err(kind)
            }
            Err(_) => {
                self.failed(
                    Failure::Timeout,
                    format!("no answer within {:?}", self.timeout),
                );
                Err(Failure::Timeout)
            }
        }
    }
}
