//! The admin listener: `/healthz`, `/readyz`, `/metrics`.

use super::metrics::metrics;
use crate::reload::Live;
use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Answers on `server.admin`.
pub struct Admin {
    pub live: Arc<Live>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static response parts are valid")
}

/// Can a client connect to this listen address now?
async fn accepting(addr: SocketAddr) -> bool {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(target)
        )
        .await,
        Ok(Ok(_))
    )
}

impl Admin {
    /// Why the gateway is not ready, if it is not.
    async fn not_ready(&self) -> Option<String> {
        let policy = self.live.policy.load_full();
        for l in &policy.server.listen {
            let addr = l.addr;
            if !accepting(addr).await {
                return Some(format!("listener {addr} is not accepting connections"));
            }
        }
        for (name, set) in &policy.key_sets {
            match &set.remote {
                Some(r) if !r.loaded() => {
                    let why = r
                        .last_error()
                        .unwrap_or_else(|| "first fetch pending".into());
                    return Some(format!("key set {name} has no keys yet: {why}"));
                }
                Some(_) => {}
                None if set.keys.is_empty() => {
                    return Some(format!("key set {name} has no usable keys"));
                }
                None => {}
            }
        }
        None
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let (status, mut doc) = match self.not_ready().await {
                    None => (200, serde_json::json!({"ready": true})),
                    Some(reason) => (503, serde_json::json!({"ready": false, "reason": reason})),
                };
                // Redis's state is reported, not judged: without it the gateway still serves
                // (cluster.on_error), so taking the instance out of rotation would not help.
                if let Some(c) = &self.live.policy.load().cluster {
                    doc["redis"] = serde_json::json!(c.redis.state());
                }
                reply(status, "application/json", doc.to_string().into_bytes())
            }
            "/metrics" => {
                super::state::sample(&self.live.policy.load());
                reply(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics().render(),
                )
            }
            _ => reply(
                404,
                "application/json",
                br#"{"error":"not_found","error_description":"no such admin endpoint"}"#.to_vec(),
            ),
        }
    }
}
