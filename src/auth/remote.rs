//! Remote key sets: a JWKS URL, or an OIDC issuer whose discovery document names the JWKS.
//!
//! Keys are fetched in the background at start and every `refresh` (sooner when the server's
//! `Cache-Control: max-age` says so, never more often than every 30 s). The request path fetches
//! only for a token whose `kid` is unknown: one fetch, shared by every request waiting on it, at
//! most once per key set per 10 s. A failed fetch keeps the last good keys (stale on error).

use super::jwk::{parse_jwks_lenient, Key};
use crate::observe::metrics;
use arc_swap::ArcSwap;
use bytes::BytesMut;
use http::Uri;
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use serde_json::Value;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The most a JWKS or discovery document may weigh.
pub const MAX_BODY: usize = 1024 * 1024;
/// Shortest interval a `Cache-Control: max-age` may impose.
pub const MAX_AGE_FLOOR: Duration = Duration::from_secs(30);
/// Between two fetches triggered by unknown `kid`s.
pub const UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(10);

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Jwks(String),
    /// The issuer; the discovery document is `{issuer}/.well-known/openid-configuration`.
    Oidc(String),
}

/// A remote key set.
pub struct RemoteKeys {
    pub name: String,
    pub source: Source,
    pub refresh: Duration,
    pub timeout: Duration,
    keys: ArcSwap<Vec<Arc<Key>>>,
    /// Bumped on every successful fetch.
    generation: AtomicU64,
    /// When the last successful fetch ended (seconds since the epoch; 0: never).
    last_success: AtomicU64,
    /// Single flight for unknown-kid fetches; holds when the last one started.
    refetch: tokio::sync::Mutex<Option<Instant>>,
    /// The last fetch error, for `/readyz`.
    last_error: ArcSwap<Option<String>>,
    /// The background refresh runs (once per set, across reloads that keep it).
    watched: std::sync::atomic::AtomicBool,
    /// Skipped keys already warned about (by kid, or place when without one): once each, not
    /// on every fetch.
    warned: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("keys", &self.keys.load().len())
            .finish_non_exhaustive()
    }
}

/// Check a configured URL: absolute, `https`, or `http` to a loopback host.
pub fn check_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("{url:?} is not a valid URL"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("{url:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err(format!(
            "{url:?}: plain http is only allowed to a loopback host; use https"
        )),
        _ => Err(format!("{url:?}: the scheme must be https")),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// `max-age` from a Cache-Control value.
pub fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|d| {
        let (k, v) = d.trim().split_once('=')?;
        if k.trim().eq_ignore_ascii_case("max-age") {
            v.trim()
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs)
        } else {
            None
        }
    })
}

/// When to fetch again after a success: `refresh`, or a shorter `max-age` (at least 30 s).
pub fn next_refresh(refresh: Duration, max_age: Option<Duration>) -> Duration {
    match max_age {
        Some(m) => m.max(MAX_AGE_FLOOR).min(refresh),
        None => refresh,
    }
}

fn connector() -> &'static Connector {
    static C: OnceLock<Connector> = OnceLock::new();
    C.get_or_init(|| Connector::new(None))
}

/// GET a URL; returns the body and the Cache-Control header.
async fn get(url: &Uri, timeout: Duration) -> Result<(Vec<u8>, Option<String>), String> {
    let fetch = async {
        let tls = url.scheme_str() == Some("https");
        let host = url.host().ok_or("no host")?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addr = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} resolves to no address"))?;
        let mut peer = HttpPeer::new(addr, tls, bare.to_string());
        peer.options.connection_timeout = Some(timeout);
        peer.options.read_timeout = Some(timeout);
        let (mut session, _) = connector()
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let mut req =
            RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
        let authority = url.authority().map_or(host, |a| a.as_str());
        req.insert_header("Host", authority)
            .map_err(|e| e.to_string())?;
        req.insert_header("Accept", "application/json")
            .map_err(|e| e.to_string())?;
        req.insert_header(
            "User-Agent",
            concat!("portcullis/", env!("CARGO_PKG_VERSION")),
        )
        .map_err(|e| e.to_string())?;
        req.insert_header("Connection", "close")
            .map_err(|e| e.to_string())?;
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        session
            .finish_request_body()
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        session
            .read_response_header()
            .await
            .map_err(|e| format!("no response: {e}"))?;
        let head = session.response_header().ok_or("no response header")?;
        let status = head.status.as_u16();
        if status != 200 {
            return Err(format!("HTTP status {status}"));
        }
        let cache_control = head
            .headers
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = BytesMut::new();
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("body larger than {MAX_BODY} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body.to_vec(), cache_control))
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("timed out after {timeout:?}"))?
}

impl RemoteKeys {
    pub fn new(name: &str, source: Source, refresh: Duration, timeout: Duration) -> RemoteKeys {
        // Both results exist from the start, at 0, so that `increase()` sees the first error.
        for result in ["ok", "error"] {
            metrics().jwks_fetches.with_label_values(&[name, result]);
        }
        RemoteKeys {
            name: name.to_string(),
            source,
            refresh,
            timeout,
            keys: ArcSwap::from_pointee(Vec::new()),
            generation: AtomicU64::new(0),
            last_success: AtomicU64::new(0),
            refetch: tokio::sync::Mutex::new(None),
            last_error: ArcSwap::from_pointee(None),
            watched: std::sync::atomic::AtomicBool::new(false),
            warned: Default::default(),
        }
    }

    /// Same source and settings: a reload keeps this set (and its keys).
    pub fn same_definition(&self, other: &RemoteKeys) -> bool {
        self.name == other.name
            && self.source == other.source
            && self.refresh == other.refresh
            && self.timeout == other.timeout
    }

    /// The keys in force (empty until the first successful fetch).
    pub fn keys(&self) -> arc_swap::Guard<Arc<Vec<Arc<Key>>>> {
        self.keys.load()
    }

    pub fn loaded(&self) -> bool {
        self.generation.load(Ordering::SeqCst) > 0
    }

    /// When the last successful fetch ended, in seconds since the epoch; 0 before the first.
    pub fn last_success(&self) -> u64 {
        self.last_success.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        (**self.last_error.load()).clone()
    }

    /// Fetch now and install the keys; counts the result. Returns the max-age hint.
    pub async fn fetch(&self) -> Result<Option<Duration>, String> {
        let result = self.fetch_inner().await;
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics()
            .jwks_fetches
            .with_label_values(&[&self.name, label])
            .inc();
        match &result {
            Ok(_) => self.last_error.store(Arc::new(None)),
            Err(e) => {
                log::error!(
                    "keys {}: fetch failed, keeping the last good keys: {e}",
                    self.name
                );
                self.last_error.store(Arc::new(Some(e.clone())));
            }
        }
        result
    }

    async fn fetch_inner(&self) -> Result<Option<Duration>, String> {
        let jwks_url = match &self.source {
            Source::Jwks(u) => check_url(u)?,
            Source::Oidc(issuer) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let (body, _) = get(&check_url(&url)?, self.timeout)
                    .await
                    .map_err(|e| format!("discovery {url}: {e}"))?;
                let doc: Value = serde_json::from_slice(&body)
                    .map_err(|e| format!("discovery {url}: invalid JSON: {e}"))?;
                // OpenID Connect Discovery 1.0, section 4.3.
                if doc.get("issuer").and_then(Value::as_str) != Some(issuer.as_str()) {
                    return Err(format!(
                        "discovery {url}: issuer {:?} is not the configured {issuer:?}",
                        doc.get("issuer")
                    ));
                }
                let jwks = doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("discovery {url}: no jwks_uri"))?;
                check_url(jwks)?
            }
        };
        let (body, cache_control) = get(&jwks_url, self.timeout)
            .await
            .map_err(|e| format!("{jwks_url}: {e}"))?;
        let text = std::str::from_utf8(&body).map_err(|_| format!("{jwks_url}: not UTF-8"))?;
        let (keys, skipped) = parse_jwks_lenient(text).map_err(|e| format!("{jwks_url}: {e}"))?;
        {
            let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
            for s in skipped {
                if warned.len() < 1024 && warned.insert(s.clone()) {
                    log::warn!("keys {}: {s}", self.name);
                }
            }
        }
        let count = keys.len();
        self.keys
            .store(Arc::new(keys.into_iter().map(Arc::new).collect()));
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.last_success
            .store(super::verify::now() as u64, Ordering::Relaxed);
        log::info!("keys {}: {count} key(s) loaded from {jwks_url}", self.name);
        Ok(cache_control.as_deref().and_then(max_age))
    }

    /// A token named a `kid` we do not hold: fetch once for everyone waiting, at most once per
    /// cooldown. Returns true when the keys changed since the caller looked.
    pub async fn refetch_for_unknown_kid(&self, seen_generation: u64) -> bool {
        let mut last = self.refetch.lock().await;
        if self.generation.load(Ordering::SeqCst) != seen_generation {
            return true; // another request's fetch finished while we waited
        }
        if last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_COOLDOWN) {
            return false;
        }
        *last = Some(Instant::now());
        self.fetch().await.is_ok()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Fetch now and then on schedule, in the background, while `this` is alive.
    pub fn watch(this: &Arc<RemoteKeys>) {
        if this.watched.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<RemoteKeys> = Arc::downgrade(this);
        crate::background::spawn(async move {
            loop {
                let Some(keys) = weak.upgrade() else { return };
                let wait = match keys.fetch().await {
                    Ok(hint) => next_refresh(keys.refresh, hint),
                    // Stale on error; try again soon.
                    Err(_) => keys.refresh.min(Duration::from_secs(5)),
                };
                drop(keys);
                tokio::time::sleep(wait).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("https://idp.example.com/jwks").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        assert!(check_url("http://[::1]:9/jwks").is_ok());
        assert!(check_url("http://idp.example.com/jwks").is_err());
        assert!(check_url("http://10.0.0.1/jwks").is_err());
        assert!(check_url("ftp://idp.example.com/jwks").is_err());
        assert!(check_url("/jwks").is_err());
    }

    #[test]
    fn refresh_schedule() {
        let ten_min = Duration::from_secs(600);
        assert_eq!(
            max_age("public, max-age=120"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(max_age("no-cache"), None);
        assert_eq!(next_refresh(ten_min, None), ten_min);
        assert_eq!(
            next_refresh(ten_min, Some(Duration::from_secs(120))),
            Duration::from_secs(120)
        );
        assert_eq!(
            next_refresh(ten_min, Some(Duration::from_secs(5))),
            MAX_AGE_FLOOR
        );
        assert_eq!(
            next_refresh(ten_min, Some(Duration::from_secs(86400))),
            ten_min
        );
    }
}
