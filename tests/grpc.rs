//! End to end: gRPC through a protected route, with a real grpcio server (h2c upstream) and
//! client (h2c to the gateway): unary and server-streaming calls with trailers, multiplexing up
//! to `max_streams`, and refusals a gRPC client understands.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command};

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc_peer.py")
}

/// The grpcio server; killed when dropped.
struct GrpcServer {
    child: Child,
    port: u16,
}

impl GrpcServer {
    fn start() -> GrpcServer {
        let mut cmd = Command::new("python3");
        cmd.arg(script()).arg("server");
        let (child, port) = python_peer(cmd);
        GrpcServer { child, port }
    }

    fn peers(&self) -> Vec<String> {
        let out = Command::new("python3")
            .arg(script())
            .args(["peers", &self.port.to_string()])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn call(port: u16, token: Option<&str>, burst: usize) -> Value {
    let out = Command::new("python3")
        .arg(script())
        .args([
            "client",
            &port.to_string(),
            token.unwrap_or(""),
            &burst.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn gateway(upstream_port: u16, extra: &str) -> Gateway {
    Gateway::start(&format!(
        r#"upstreams:
  grpc_api:
    peers: ["127.0.0.1:{upstream_port}"]
    protocol: h2c
{extra}
keys:
  k: {{secret: "0123456789abcdef0123456789abcdef"}}
auth:
  p: {{keys: k, algorithms: [HS256], forward_claims: {{X-User: sub}}, require: [{{claim: scope, contains: [grpc]}}]}}
rate_limits:
  tight: {{key: "claim:sub", rate: 1/m, burst: 3}}
routes:
  - {{prefix: /test.Echo/, upstream: grpc_api, auth: p}}
  - {{prefix: /limited.Echo/, upstream: grpc_api, auth: p, rate_limit: tight}}
"#
    ))
}

#[test]
fn grpc_unary_and_streaming_with_trailers_through_a_protected_route() {
    let up = GrpcServer::start();
    let gw = gateway(up.port, "    max_streams: 100");
    let token = hs256(
        SECRET,
        &json!({"sub": "alice", "scope": "grpc", "exp": now() + 600}),
    );
    let r = call(gw.addr.port(), Some(&token), 20);
    assert_eq!(r["unary"]["code"], "OK", "{r}");
    assert_eq!(r["unary"]["response"]["got"], "hello");
    // The claim header replaced the client's copy.
    assert_eq!(r["unary"]["response"]["x-user"], "alice");
    assert_eq!(r["unary"]["trailers"]["x-trailer"], "unary-done");
    assert_eq!(r["stream"]["code"], "OK", "{r}");
    assert_eq!(r["stream"]["messages"], json!(["s-0", "s-1", "s-2"]));
    assert_eq!(r["stream"]["trailers"]["x-trailer"], "stream-done");
    // 20 concurrent calls (each held 0.2 s by the server) share HTTP/2 connections.
    assert_eq!(r["burst_ok"], 20);
    let peers = up.peers();
    assert!(
        peers.len() <= 2,
        "22 calls over {} connections: {peers:?}",
        peers.len()
    );
}

#[test]
fn max_streams_bounds_streams_per_upstream_connection() {
    let up = GrpcServer::start();
    let gw = gateway(up.port, "    max_streams: 1");
    let token = hs256(
        SECRET,
        &json!({"sub": "alice", "scope": "grpc", "exp": now() + 600}),
    );
    let r = call(gw.addr.port(), Some(&token), 10);
    assert_eq!(r["burst_ok"], 10, "{r}");
    let peers = up.peers();
    assert!(
        peers.len() >= 5,
        "10 overlapping calls at 1 stream each used {peers:?}"
    );
}

#[test]
fn refusals_are_grpc_statuses() {
    let up = GrpcServer::start();
    let gw = gateway(up.port, "");
    let port = gw.addr.port();
    // No token: UNAUTHENTICATED.
    let r = call(port, None, 0);
    assert_eq!(r["unary"]["code"], "UNAUTHENTICATED", "{r}");
    assert_eq!(r["unary"]["details"], "bearer token required");
    assert_eq!(r["stream"]["code"], "UNAUTHENTICATED");
    // A bad signature: UNAUTHENTICATED with the reason.
    let forged = hs256(
        b"another secret, 32 bytes long!!!",
        &json!({"sub": "a", "exp": now() + 60}),
    );
    assert_eq!(
        call(port, Some(&forged), 0)["unary"]["details"],
        "signature invalid"
    );
    // Valid, but without the scope: PERMISSION_DENIED.
    let t = hs256(
        SECRET,
        &json!({"sub": "bob", "scope": "other", "exp": now() + 600}),
    );
    assert_eq!(
        call(port, Some(&t), 0)["unary"]["code"],
        "PERMISSION_DENIED"
    );
    assert!(up.peers().is_empty(), "a refused call reached the server");
    drop(up);
    // The upstream gone: UNAVAILABLE.
    let t = hs256(
        SECRET,
        &json!({"sub": "carol", "scope": "grpc", "exp": now() + 600}),
    );
    assert_eq!(call(port, Some(&t), 0)["unary"]["code"], "UNAVAILABLE");
}

#[test]
fn over_the_limit_is_resource_exhausted() {
    let up = GrpcServer::start();
    let gw = gateway(up.port, "");
    let token = hs256(
        SECRET,
        &json!({"sub": "dave", "scope": "grpc", "exp": now() + 600}),
    );
    let auth = format!("authorization: Bearer {token}");
    let status = || {
        let out = Command::new("curl")
            .args(["-sS", "-i", "--http2-prior-knowledge", "-X", "POST"])
            .args([
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                "-H",
                &auth,
            ])
            .args(["--data-binary", "", "--max-time", "10"])
            .arg(format!("http://{}/limited.Echo/Unary", gw.addr))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
    };
    for _ in 0..3 {
        assert!(!status().contains("grpc-status: 8"));
    }
    let text = status();
    assert!(text.starts_with("http/2 200"), "{text}");
    assert!(text.contains("grpc-status: 8"), "{text}");
    assert!(text.contains("retry-after:"), "{text}");
}
