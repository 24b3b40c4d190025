//! `portcullis explain`: why would this request be answered the way it would?
//!
//! It runs `proxy::decide` — the decision the running gateway makes, not a copy of it — on a
//! request described on the command line, with a `Report` as the trace, and prints every step:
//! route, limits, each policy's checks, rules with what they saw, the pool, the headers that
//! would be forwarded, and the answer. The request is never sent anywhere.

use crate::error::Reject;
use crate::policy::Policy;
use crate::proxy::{decide, Ctx, Decision};
use pingora_http::RequestHeader;
use std::fmt::Write as _;
use std::net::IpAddr;

/// Where the decision writes down what it did. The proxy passes `()`, whose notes compile
/// away; `explain` passes a `Report`.
pub trait Trace {
    /// A real request (the proxy): rate limits are spent and auth outcomes counted. `explain`
    /// only names the limits (it must not use up a shared budget) and counts nothing.
    const LIVE: bool = true;

    /// Are notes kept? Work done only to describe a step is skipped when not.
    fn on(&self) -> bool {
        false
    }

    /// One step, `depth` levels in. `line` is only called when notes are kept.
    fn note(&mut self, _depth: usize, _line: impl FnOnce() -> String) {}
}

impl Trace for () {}

/// The steps of one decision, as lines.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
}

impl Trace for Report {
    const LIVE: bool = false;

    fn on(&self) -> bool {
        true
    }

    fn note(&mut self, depth: usize, line: impl FnOnce() -> String) {
        self.lines
            .push(format!("{}{}", "  ".repeat(depth + 1), line()));
    }
}

/// The request to explain.
#[derive(Debug, Clone)]
pub struct Ask {
    pub method: String,
    /// Sent as `Host` (HTTP/1.1 needs one).
    pub host: String,
    /// Path and query, as on the request line.
    pub target: String,
    /// Sent as `Authorization: Bearer …`.
    pub token: Option<String>,
    /// Further headers, `Name: value`.
    pub headers: Vec<String>,
    pub client_ip: IpAddr,
}

/// The outcome: the status the client would get, and the report to print.
#[derive(Debug)]
pub struct Explained {
    pub status: u16,
    pub text: String,
}

fn request(ask: &Ask) -> Result<RequestHeader, String> {
    let mut req = RequestHeader::build(ask.method.as_str(), ask.target.as_bytes(), None)
        .map_err(|e| format!("invalid request {} {}: {e}", ask.method, ask.target))?;
    req.insert_header(http::header::HOST, ask.host.as_str())
        .map_err(|e| format!("invalid host {:?}: {e}", ask.host))?;
    if let Some(t) = &ask.token {
        req.append_header(http::header::AUTHORIZATION, format!("Bearer {t}"))
            .map_err(|e| format!("invalid token: {e}"))?;
    }
    for h in &ask.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("invalid header {h:?}: expected 'Name: value'"))?;
        req.append_header(name.trim().to_string(), value.trim())
            .map_err(|e| format!("invalid header {h:?}: {e}"))?;
    }
    Ok(req)
}

/// Fetch the policy's remote key sets once, as `run` does when it starts (the keys are public;
/// the request itself goes nowhere). Returns what happened, one line a set.
pub async fn fetch_remote_keys(policy: &Policy) -> Vec<String> {
    let mut lines = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for v in policy.verifiers.values() {
        for r in &v.remote {
            if !seen.insert(r.name.clone()) {
                continue;
            }
            lines.push(match r.fetch().await {
                Ok(_) => format!("keys {}: {} key(s) fetched", r.name, r.keys().len()),
                Err(e) => format!("keys {}: not fetched ({e}): its tokens get 503", r.name),
            });
        }
    }
    lines
}

/// Decide on the request as the gateway would, and say how.
pub async fn explain(policy: &Policy, ask: &Ask) -> Result<Explained, String> {
    let mut req = request(ask)?;
    let mut ctx = Ctx::new();
    ctx.client_ip = Some(ask.client_ip);
    ctx.peer_ip = Some(ask.client_ip);
    let mut report = Report::default();
    let decision = decide(policy, &mut req, None, &mut ctx, &mut report).await;
    let mut text = format!(
        "request: {} {} (host {}, client {})\n",
        ask.method, ask.target, ask.host, ask.client_ip
    );
    for l in &report.lines {
        let _ = writeln!(text, "{l}");
    }
    let status = match decision {
        Ok(Decision::Upstream) => {
            if let Some(pool) = &ctx.pool {
                let peers: Vec<String> = pool.peers().iter().map(|(a, _)| a.to_string()).collect();
                let _ = writeln!(text, "upstream: {} (peers {})", pool.name, peers.join(", "));
            }
            let forwarded: Vec<(String, String)> = ctx
                .token
                .iter()
                .flat_map(|t| t.forward.iter())
                .chain(ctx.set_headers.iter())
                .map(|(h, v)| (h.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            if !forwarded.is_empty() {
                let _ = writeln!(text, "headers set upstream:");
                for (h, v) in forwarded {
                    let _ = writeln!(text, "  {h}: {v}");
                }
            }
            let _ = writeln!(text, "status: sent upstream (the upstream's answer)");
            200
        }
        Ok(Decision::Answer(h)) => {
            let _ = writeln!(
                text,
                "status: {} (answered by the gateway)",
                h.status.as_u16()
            );
            h.status.as_u16()
        }
        Err(reject) => {
            refused(&mut text, &reject);
            reject.status()
        }
    };
    Ok(Explained { status, text })
}

fn refused(text: &mut String, reject: &Reject) {
    let (header, body) = reject.response();
    let _ = writeln!(text, "status: {}", reject.status());
    for name in [
        http::header::WWW_AUTHENTICATE,
        http::header::ALLOW,
        http::header::RETRY_AFTER,
    ] {
        if let Some(v) = header.headers.get(&name) {
            let _ = writeln!(text, "{name}: {}", String::from_utf8_lossy(v.as_bytes()));
        }
    }
    let _ = writeln!(text, "body: {}", String::from_utf8_lossy(&body));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_trace_keeps_nothing_and_never_builds_a_line() {
        let mut t = ();
        assert!(!t.on());
        t.note(0, || {
            unreachable!("a note of the proxy's trace is never made")
        });
        let mut r = Report::default();
        r.note(1, || "x".into());
        assert_eq!(r.lines, vec!["    x"]);
    }
}
