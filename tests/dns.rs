//! End to end: upstream peers named by DNS and looked up again (`upstreams.NAME.resolve`,
//! `server.resolver`), against a loopback DNS server (tests/dns_peer.py, dnslib) whose answers
//! a test changes by rewriting its zone file.

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The DNS server; killed when dropped.
struct Dns {
    child: Child,
    port: u16,
    zone: PathBuf,
}

/// Make the server answer with these addresses from now on (or SERVFAIL for everything).
fn write_zone(zone: &Path, ttl: u32, names: &[(&str, &[&str])], fail: bool) {
    let names: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .map(|(n, a)| (format!("{n}."), json!(a)))
        .collect();
    let doc = json!({"ttl": ttl, "names": names, "fail": fail});
    let tmp = zone.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string()).unwrap();
    std::fs::rename(tmp, zone).unwrap();
}

impl Dns {
    fn start(dir: &Path, ttl: u32, names: &[(&str, &[&str])]) -> Dns {
        let zone = dir.join("zone.json");
        write_zone(&zone, ttl, names, false);
        let mut cmd = Command::new("python3");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dns_peer.py"))
            .arg(&zone);
        let (child, port) = python_peer(cmd);
        Dns { child, port, zone }
    }

    fn set(&self, ttl: u32, names: &[(&str, &[&str])], fail: bool) {
        write_zone(&self.zone, ttl, names, fail);
    }

    fn queries(&self) -> usize {
        std::fs::read_to_string(self.zone.with_extension("json.count"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two echo servers on the same port of two loopback addresses (what one DNS name moves
/// between).
fn two_echoes() -> (EchoServer, EchoServer, u16) {
    loop {
        let a = EchoServer::start("127.0.0.2:0").unwrap();
        let port = a.addr.port();
        if let Ok(b) = EchoServer::start(&format!("127.0.0.3:{port}")) {
            return (a, b, port);
        }
    }
}

fn gateway(dns: &Dns, upstream: &str) -> Gateway {
    Gateway::start(&format!(
        "  resolver: [\"127.0.0.1:{}\"]\nupstreams:\n  api: {upstream}\nroutes:\n  - {{prefix: /, upstream: api}}\n",
        dns.port
    ))
}

/// Which echo server answered.
fn served_by(gw: &Gateway, path: &str) -> String {
    let r = gw.get(path, &[]);
    assert_eq!(r.status, 200, "{}", gw.log());
    r.header("x-echo-peer").unwrap().to_string()
}

#[test]
fn a_renamed_peer_gets_new_connections_while_old_requests_finish() {
    let dir = temp_dir();
    let (a, b, port) = two_echoes();
    let dns = Dns::start(&dir, 300, &[("api.portcullis.test", &["127.0.0.2"])]);
    let gw = gateway(
        &dns,
        &format!("{{peers: [\"api.portcullis.test:{port}\"], resolve: 1s}}"),
    );
    assert_eq!(served_by(&gw, "/x"), a.addr.to_string());

    // A slow request in flight on the old address when the name moves.
    let addr = gw.addr;
    let slow =
        std::thread::spawn(move || request(addr, "GET", "/slow?echo_delay_ms=2500", &[], None));
    std::thread::sleep(Duration::from_millis(300));
    dns.set(300, &[("api.portcullis.test", &["127.0.0.3"])], false);
    // The interval (1 s) governs, not the answer's TTL (300 s).
    let moved = Instant::now();
    eventually("the new address", Duration::from_secs(5), || {
        (served_by(&gw, "/x") == b.addr.to_string()).then_some(())
    });
    assert!(
        moved.elapsed() < Duration::from_secs(3),
        "{:?}",
        moved.elapsed()
    );
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-peer"), Some(a.addr.to_string().as_str()));

    // Both addresses: both are peers.
    dns.set(
        300,
        &[("api.portcullis.test", &["127.0.0.2", "127.0.0.3"])],
        false,
    );
    eventually("both addresses", Duration::from_secs(5), || {
        let seen: std::collections::HashSet<String> =
            (0..6).map(|_| served_by(&gw, "/x")).collect();
        (seen.len() == 2).then_some(())
    });

    // DNS down: the last good addresses stay, and the failures are counted and logged.
    dns.set(300, &[], true);
    let errors = "portcullis_dns_lookups_total{result=\"error\",upstream=\"api\"}";
    eventually("failed lookups", Duration::from_secs(5), || {
        (gw.metric(errors) >= 2.0).then_some(())
    });
    for _ in 0..6 {
        let peer = served_by(&gw, "/x");
        assert!(peer == a.addr.to_string() || peer == b.addr.to_string());
    }
    assert!(
        gw.log().contains("keeping the last addresses"),
        "{}",
        gw.log()
    );
    // A name that no longer exists (NXDOMAIN) is a failure too, not an empty pool.
    dns.set(300, &[], false);
    let before = gw.metric(errors);
    eventually("NXDOMAIN counted", Duration::from_secs(5), || {
        (gw.metric(errors) > before).then_some(())
    });
    assert_eq!(gw.get("/x", &[]).status, 200);
}

#[test]
fn a_short_ttl_is_looked_up_again_before_the_interval() {
    let dir = temp_dir();
    let (a, b, port) = two_echoes();
    let dns = Dns::start(&dir, 1, &[("ttl.portcullis.test", &["127.0.0.2"])]);
    let gw = gateway(
        &dns,
        &format!("{{peers: [\"ttl.portcullis.test:{port}\"], resolve: 1h}}"),
    );
    assert_eq!(served_by(&gw, "/x"), a.addr.to_string());
    let at_load = dns.queries();
    dns.set(1, &[("ttl.portcullis.test", &["127.0.0.3"])], false);
    eventually("the new address", Duration::from_secs(6), || {
        (served_by(&gw, "/x") == b.addr.to_string()).then_some(())
    });
    assert!(dns.queries() > at_load);
}

#[test]
fn without_resolve_names_are_looked_up_once_by_the_system() {
    let dir = temp_dir();
    let echo = echo();
    let dns = Dns::start(&dir, 1, &[("localhost", &["127.0.0.2"])]);
    // No `resolve`: the name is the system's (`/etc/hosts`), looked up at load only;
    // `server.resolver` is not asked, then or later.
    let port = echo.addr.port();
    let gw = gateway(&dns, &format!("{{peers: [\"localhost:{port}\"]}}"));
    assert_eq!(served_by(&gw, "/x"), echo.addr.to_string());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(served_by(&gw, "/x"), echo.addr.to_string());
    assert_eq!(dns.queries(), 0);
}

#[test]
fn dns_config_errors() {
    let dir = temp_dir();
    let dns = Dns::start(&dir, 300, &[("known.portcullis.test", &["127.0.0.2"])]);
    let yaml = format!(
        "server:\n  resolver: [\"127.0.0.1:{}\", \"dns.example\"]\nupstreams:\n  a: {{peers: [\"missing.portcullis.test:80\"], resolve: 1s}}\n  b: {{peers: [\"known.portcullis.test:80\"], resolve: 0s}}\n  c: {{peers: [\"known.portcullis.test\"], resolve: 5s}}\nroutes:\n  - {{prefix: /a/, upstream: a}}\n  - {{prefix: /b/, upstream: b}}\n  - {{prefix: /c/, upstream: c}}\n",
        dns.port
    );
    let err = check_refuses_yaml(&yaml);
    assert_errors(
        &err,
        &[
            ("server.resolver[1]", "not an IP address"),
            (
                "upstreams.a.peers[0]",
                "cannot resolve missing.portcullis.test",
            ),
            ("upstreams.b.resolve", "out of range"),
            ("upstreams.c.peers[0]", "not HOST:PORT"),
        ],
    );
}
