//! End to end: reloading while serving, and stopping gracefully.

mod common;

use common::*;
use serde_json::json;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A config whose `/v/` route goes to `peer`, with a pid file and a per-sub limit.
fn config(port: u16, admin: u16, peer: &EchoServer, pid: &std::path::Path, burst: u32) -> String {
    format!(
        r#"
server:
  listen: ["127.0.0.1:{port}"]
  admin: "127.0.0.1:{admin}"
  threads: 2
  pid_file: "{pid}"
  shutdown_timeout: 5s
upstreams:
  api: {{peers: ["{peer}"]}}
keys:
  k: {{secret: "0123456789abcdef0123456789abcdef"}}
auth:
  p: {{keys: k, algorithms: [HS256]}}
rate_limits:
  per_sub: {{key: "claim:sub", rate: 1/h, burst: {burst}}}
routes:
  - {{prefix: /v/, upstream: api}}
  - {{prefix: /limited/, upstream: api, auth: p, rate_limit: per_sub}}
"#,
        peer = peer.addr,
        pid = pid.display()
    )
}

struct Running {
    gw: Gateway,
    conf: std::path::PathBuf,
    pid: std::path::PathBuf,
    port: u16,
    admin: u16,
}

fn start(peer: &EchoServer, burst: u32) -> Running {
    let (port, admin) = (free_port(), free_port());
    let dir = temp_dir();
    let pid = dir.join("portcullis.pid");
    let yaml = config(port, admin, peer, &pid, burst);
    let gw = Gateway::start_raw(&yaml, port, admin);
    Running {
        conf: gw.dir.join("portcullis.yaml"),
        gw,
        pid,
        port,
        admin,
    }
}

impl Running {
    fn write(&self, yaml: &str) {
        // Replace by rename, as deploy tools do.
        let tmp = self.conf.with_extension("tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.conf).unwrap();
    }
    fn hup(&self) {
        self.gw.signal("-HUP");
    }
    fn peer(&self) -> String {
        self.gw.get("/v/x", &[]).json()["peer"]
            .as_str()
            .unwrap()
            .to_string()
    }
    fn metric(&self, series: &str) -> f64 {
        let text =
            String::from_utf8(request(self.gw.admin, "GET", "/metrics", &[], None).body).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    eventually(what, Duration::from_secs(5), || f().then_some(()));
}

#[test]
fn twenty_reloads_under_load_drop_no_request() {
    let a = echo();
    let b = echo();
    let r = start(&a, 5);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            let addr = r.gw.addr;
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let resp = request(addr, "GET", "/v/loop", &[], None);
                    sent.fetch_add(1, Ordering::SeqCst);
                    if resp.status != 200 {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let mut valid = 0;
    for i in 0..21 {
        if i == 10 {
            // An invalid config in the middle: refused, the current one keeps serving.
            let before = r.peer();
            r.write("routes:\n  - {prefix: /v/, upstream: nowhere}\n");
            r.hup();
            wait_for("the refused reload", || {
                r.metric("portcullis_config_reloads_total{result=\"error\"}") == 1.0
            });
            assert_eq!(r.peer(), before);
            continue;
        }
        let peer = if valid % 2 == 0 { &b } else { &a };
        r.write(&config(r.port, r.admin, peer, &r.pid, 5));
        r.hup();
        valid += 1;
        wait_for("the reload", || {
            r.metric("portcullis_config_reloads_total{result=\"ok\"}") == valid as f64
        });
        assert_eq!(r.peer(), peer.addr.to_string(), "reload {valid}");
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(valid, 20);
    assert!(
        sent.load(Ordering::SeqCst) > 100,
        "too little traffic to mean anything"
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during reloads"
    );
    assert!(
        r.gw.log().contains("configuration reload refused"),
        "{}",
        r.gw.log()
    );
    assert!(r.gw.log().contains("routes[0].upstream"), "{}", r.gw.log());
}

#[test]
fn reload_command_checks_then_signals_by_pid_file() {
    let a = echo();
    let b = echo();
    let r = start(&a, 5);
    assert_eq!(
        std::fs::read_to_string(&r.pid).unwrap().trim(),
        r.gw.child.id().to_string()
    );
    // A broken file is reported and not signalled.
    let broken = r.conf.with_file_name("broken.yaml");
    std::fs::write(&broken, "routes: [{prefix: /, upstream: x}]\n").unwrap();
    let out = Command::new(BIN)
        .args(["reload", "-c"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not reloading"));
    // A good one is applied.
    r.write(&config(r.port, r.admin, &b, &r.pid, 5));
    portcullis_ok(&[
        std::ffi::OsStr::new("reload"),
        "-c".as_ref(),
        r.conf.as_os_str(),
    ]);
    wait_for("the reload", || r.peer() == b.addr.to_string());
}

#[test]
fn listen_changes_need_a_restart_and_say_so() {
    let a = echo();
    let r = start(&a, 5);
    let other = free_port();
    let yaml = config(r.port, r.admin, &a, &r.pid, 5).replace(
        &format!("127.0.0.1:{}\"]", r.port),
        &format!("127.0.0.1:{other}\"]"),
    );
    r.write(&yaml);
    r.hup();
    wait_for("the reload", || {
        r.metric("portcullis_config_reloads_total{result=\"ok\"}") == 1.0
    });
    assert!(r
        .gw
        .log()
        .contains("server.listen changed: restart to apply"));
    // Still serving where it was.
    assert_eq!(r.gw.get("/v/x", &[]).status, 200);
    let ready = request(r.gw.admin, "GET", "/readyz", &[], None);
    assert_eq!(ready.status, 200);
}

#[test]
fn rate_limit_state_survives_a_reload_when_the_limit_is_unchanged() {
    let a = echo();
    let r = start(&a, 2);
    let t = hs256(SECRET, &json!({"sub": "alice"}));
    assert_eq!(r.gw.bearer("/limited/x", &t).status, 200);
    assert_eq!(r.gw.bearer("/limited/x", &t).status, 200);
    assert_eq!(r.gw.bearer("/limited/x", &t).status, 429);
    // Same limit, another change (a new route): the bucket is kept.
    let yaml = config(r.port, r.admin, &a, &r.pid, 2) + "  - {prefix: /new/, upstream: api}\n";
    r.write(&yaml);
    r.hup();
    wait_for("the reload", || r.gw.get("/new/x", &[]).status == 200);
    assert_eq!(r.gw.bearer("/limited/x", &t).status, 429);
    // A changed limit starts afresh.
    r.write(&config(r.port, r.admin, &a, &r.pid, 3));
    r.hup();
    wait_for("the second reload", || {
        r.metric("portcullis_config_reloads_total{result=\"ok\"}") == 2.0
    });
    assert_eq!(r.gw.bearer("/limited/x", &t).status, 200);
}

#[test]
fn sigterm_lets_a_slow_request_finish_then_exits_0() {
    let a = echo();
    let mut r = start(&a, 5);
    let addr = r.gw.addr;
    let slow = std::thread::spawn(move || {
        let t = Instant::now();
        let resp = request(addr, "GET", "/v/slow?echo_delay_ms=1500", &[], None);
        (resp.status, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    r.gw.signal("-TERM");
    // New connections are refused soon after the signal.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after SIGTERM"
    );
    let (status, took) = slow.join().unwrap();
    assert_eq!(status, 200, "the request in flight was cut");
    assert!(took >= Duration::from_millis(1500));
    let code = r.gw.wait_exit(signalled, Duration::from_secs(4));
    assert!(code.success(), "{code}");
    assert!(!r.pid.exists(), "pid file left behind");
    let _ = &mut r;
}

#[test]
fn sigterm_when_idle_exits_at_once() {
    let a = echo();
    let mut r = start(&a, 5);
    assert_eq!(r.gw.get("/v/x", &[]).status, 200);
    let t = Instant::now();
    r.gw.signal("-TERM");
    let code = r.gw.wait_exit(t, Duration::from_secs(2));
    assert!(code.success());
}
