//! Active health checks: a task per pool on the background runtime, probing every peer each
//! `interval`. A peer leaves the rotation after `unhealthy_after` failed probes in a row and
//! returns after `healthy_after` good ones.

use super::Pool;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthKind {
    /// The peer accepts a TCP connection.
    Tcp,
    /// `GET path` answers 2xx or 3xx.
    Http { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: HealthKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

/// One probe of one peer.
pub async fn probe(addr: SocketAddr, hc: &HealthCheck) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let HealthKind::Http { path } = &hc.kind else {
            return Some(true);
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: portcullis-health-check\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let got = s.read(&mut buf[n..]).await.ok()?;
            if got == 0 {
                break;
            }
            n += got;
        }
        // "HTTP/1.1 200"
        let status: u16 = std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()?;
        Some((200..400).contains(&status))
    };
    matches!(
        tokio::time::timeout(hc.timeout, attempt).await,
        Ok(Some(true))
    )
}

/// Check `pool` for as long as it is alive.
pub fn watch(pool: &Arc<Pool>) {
    let Some(hc) = pool.health_check.clone() else {
        return;
    };
    let weak: Weak<Pool> = Arc::downgrade(pool);
    crate::background::spawn(async move {
        loop {
            let Some(pool) = weak.upgrade() else { return };
            let peers = pool.peers();
            let probes: Vec<_> = peers
                .iter()
                .map(|(addr, _)| {
                    let (addr, hc) = (*addr, hc.clone());
                    tokio::spawn(async move { probe(addr, &hc).await })
                })
                .collect();
            for ((addr, _), p) in peers.iter().zip(probes) {
                let ok = p.await.unwrap_or(false);
                match pool.record_check(addr, ok) {
                    Some(false) => log::warn!(
                        "upstream {}: peer {addr} is down (failed {} checks)",
                        pool.name,
                        hc.unhealthy_after
                    ),
                    Some(true) => log::info!("upstream {}: peer {addr} is back up", pool.name),
                    None => {}
                }
            }
            drop(pool);
            tokio::time::sleep(hc.interval).await;
        }
    });
}
