//! The Redis connections of a gateway instance (redis-rs's `ConnectionManager`, multiplexed):
//! one made and re-made on the background runtime, for probes and the first requests, and one
//! per worker thread made on that thread's runtime; a breaker in front of all.
//!
//! Requests never wait on a connection attempt: while Redis is down they are told so at once
//! (and the caller's `on_error` applies); a background task probes with backoff and closes the
//! breaker when Redis answers again. A command that takes longer than `timeout` counts as a
//! failure and opens the breaker.

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// A thread's own connection to one Redis (`conn` is `None` while it is being made).
struct Local {
    id: u64,
    owner: Weak<Redis>,
    conn: Option<Conn>,
}

thread_local! {
    static LOCAL: std::cell::RefCell<Vec<Local>> = const { std::cell::RefCell::new(Vec::new()) };
}

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

/// Where the shared state is: one Redis, or a Redis Cluster (slots, MOVED and ASK followed by
/// redis-rs).
pub enum Target {
    Single(Box<redis::Client>),
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        /// The seed nodes one by one: pub/sub (a Redis Cluster forwards every PUBLISH to every
        /// node, so subscribing on any one is enough).
        seeds: Vec<redis::Client>,
    },
}

/// A connection to either.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub struct Redis {
    /// Tells this Redis's per-thread connections from another's (after a reload).
    id: u64,
    target: Target,
    conn: ArcSwapOption<Conn>,
    up: AtomicBool,
    probing: AtomicBool,
    pub timeout: Duration,
    last_error: Mutex<Option<String>>,
    /// A description of the target, without credentials, for logs.
    pub name: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("target", &self.name)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Redis {
    pub fn new(target: Target, timeout: Duration, name: String) -> Redis {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Redis {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            target,
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            timeout,
            last_error: Mutex::new(Some("not connected yet".into())),
            name,
        }
    }

    /// A client for pub/sub: the Redis, or the `n`th seed node of a cluster (round robin).
    pub fn pubsub_client(&self, n: usize) -> &redis::Client {
        match &self.target {
            Target::Single(c) => c,
            Target::Cluster { seeds, .. } => &seeds[n % seeds.len()],
        }
    }

    /// A connection of its own, made now (the `revoke` command, resyncs).
    pub async fn connect(&self) -> redis::RedisResult<Conn> {
        // rediss://: the process's rustls provider (`check` and `revoke` have not installed it).
        crate::tls::install_provider();
        let limit = self.timeout.max(Duration::from_millis(500));
        match &self.target {
            Target::Single(c) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(limit))
                    .set_response_timeout(Some(limit))
                    .set_number_of_retries(1);
                Ok(Conn::Single(
                    ConnectionManager::new_with_config((**c).clone(), config).await?,
                ))
            }
            Target::Cluster { client, .. } => {
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// The breaker is closed: commands are being sent.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
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
            log::warn!("redis {}: {e}", self.name);
        }
        if matches!(kind, Failure::Down | Failure::Reply) {
            return;
        }
        if self.up.swap(false, Ordering::AcqRel) {
            log::warn!(
                "redis {}: {e}; shared state is unavailable until it answers again",
                self.name
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
                        log::info!("redis {}: connected", me.name);
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
                let made = tokio::time::timeout(Duration::from_secs(2), self.connect())
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

    /// The connection for a request: the calling thread's own once it has one (made in the
    /// background on the caller's runtime, so the connection's driver runs on the thread that
    /// waits for the answer — no hop to another thread per command), the shared one until then.
    fn request_conn(self: &Arc<Self>, shared: &Conn) -> Conn {
        let found = LOCAL.with(|l| {
            let l = l.borrow();
            l.iter().find(|e| e.id == self.id).map(|e| e.conn.clone())
        });
        match found {
            Some(Some(c)) => c,
            Some(None) => shared.clone(),
            None => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    LOCAL.with(|l| {
                        let mut l = l.borrow_mut();
                        l.retain(|e| e.owner.strong_count() > 0);
                        l.push(Local {
                            id: self.id,
                            owner: Arc::downgrade(self),
                            conn: None,
                        });
                    });
                    let me = self.clone();
                    rt.spawn(async move {
                        let made = tokio::time::timeout(Duration::from_secs(2), me.connect()).await;
                        LOCAL.with(|l| {
                            let mut l = l.borrow_mut();
                            l.retain(|e| e.id != me.id);
                            // A failed attempt leaves no entry: a later request tries again.
                            if let Ok(Ok(c)) = made {
                                l.push(Local {
                                    id: me.id,
                                    owner: Arc::downgrade(&me),
                                    conn: Some(c),
                                });
                            }
                        });
                    });
                }
                shared.clone()
            }
        }
    }

    /// Run one command (or script) against Redis within `timeout`.
    pub async fn call<T, F, Fut>(self: &Arc<Self>, f: F) -> Result<T, Failure>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let shared = self.conn.load();
        let conn = match (self.up.load(Ordering::Acquire), shared.as_deref()) {
            (true, Some(c)) => self.request_conn(c),
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
