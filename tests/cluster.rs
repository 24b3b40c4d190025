//! End to end: rate limits shared by gateway instances through a real `redis-server` started
//! here on a loopback port (`scope: cluster`), and what happens when Redis is down, slow or
//! restarted (`cluster.on_error`).

mod common;

use common::certs::Ca;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server on 127.0.0.1:`port` without persistence; killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start_on(port: u16) -> RedisServer {
        RedisServer::start_with(port, &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(extra)
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--enable-debug-command", "yes"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/install-deps installs it)");
        let r = RedisServer { child, port };
        eventually("redis answers PING", Duration::from_secs(10), || {
            (r.command("PING") == "+PONG").then_some(())
        });
        r
    }

    fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// One inline command; the first line of the reply.
    fn command(&self, cmd: &str) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(format!("{cmd}\r\n").as_bytes());
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three primaries on loopback ports, joined with `redis-cli --cluster create`, no replicas.
struct RedisCluster {
    nodes: Vec<RedisServer>,
    _dir: std::path::PathBuf,
}

impl RedisCluster {
    fn start() -> RedisCluster {
        let dir = temp_dir();
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| {
                let port = free_port();
                let conf = dir.join(format!("nodes-{i}.conf"));
                RedisServer::start_with(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        conf.to_str().unwrap(),
                        "--dir",
                        dir.to_str().unwrap(),
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            eventually("cluster state ok", Duration::from_secs(15), || {
                let info = {
                    let mut s = TcpStream::connect(("127.0.0.1", n.port)).ok()?;
                    s.write_all(b"CLUSTER INFO\r\n").ok()?;
                    let mut b = [0u8; 2048];
                    let k = s.read(&mut b).ok()?;
                    String::from_utf8_lossy(&b[..k]).into_owned()
                };
                info.contains("cluster_state:ok").then_some(())
            });
        }
        RedisCluster { nodes, _dir: dir }
    }

    fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("\"redis://127.0.0.1:{}\"", n.port))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

const KEYS: &str = "keys:\n  k: {secret: \"0123456789abcdef0123456789abcdef\"}\nauth:\n  p: {keys: k, algorithms: [HS256]}\n";

/// A gateway whose route `/limited/` has a per-sub limit of `burst` (refilling 1/min), shared
/// through the Redis on `redis_port`.
fn gateway(echo: &EchoServer, redis_port: u16, burst: u32, extra: &str) -> Gateway {
    Gateway::start(&format!(
        "upstreams:\n  api: {{peers: [\"{}\"]}}\n{KEYS}cluster:\n  redis: {{url: \"redis://127.0.0.1:{redis_port}/0\", timeout: 100ms}}\n{extra}rate_limits:\n  per_sub: {{key: \"claim:sub\", rate: 1/m, burst: {burst}, scope: cluster}}\nroutes:\n  - {{prefix: /limited/, upstream: api, auth: p, rate_limit: per_sub}}\n",
        echo.addr
    ))
}

fn token(sub: &str) -> String {
    hs256(SECRET, &json!({"sub": sub, "exp": now() + 600}))
}

fn redis_up(gw: &Gateway) -> bool {
    let r = request(gw.admin, "GET", "/readyz", &[], None);
    r.json()["redis"]["up"] == json!(true)
}

#[test]
fn two_instances_share_one_budget() {
    let redis = RedisServer::start();
    let echo = echo();
    let a = gateway(&echo, redis.port, 5, "");
    let b = gateway(&echo, redis.port, 5, "");
    for gw in [&a, &b] {
        eventually("connected to redis", Duration::from_secs(5), || {
            redis_up(gw).then_some(())
        });
    }
    let alice = token("alice");
    let statuses: Vec<u16> = (0..10)
        .map(|i| [&a, &b][i % 2].bearer("/limited/x", &alice).status)
        .collect();
    // burst 5 in total, not 5 per instance.
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(echo.hits(), 5);
    // The same 429 as a local limit.
    let r = b.bearer("/limited/x", &alice);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    assert_eq!(r.header("ratelimit-limit"), Some("5"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let reset: u64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
    assert!((290..=300).contains(&reset), "{reset}");
    // Another sub has its own shared bucket; the state is in Redis, under the prefix.
    assert_eq!(a.bearer("/limited/x", &token("bob")).status, 200);
    assert_eq!(redis.command("EXISTS portcullis:rl:per_sub:alice"), ":1");
    let ttl: i64 = redis
        .command("PTTL portcullis:rl:per_sub:alice")
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!((280_000..=301_000).contains(&ttl), "{ttl}");
}

/// The Redis commands of one kind run so far (`INFO commandstats`).
fn redis_calls(redis: &RedisServer, cmd: &str) -> u64 {
    let mut s = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"INFO commandstats\r\n").unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n @ 1..) = s.read(&mut buf) {
        all.extend_from_slice(&buf[..n]);
        if all.ends_with(b"\r\n\r\n") || all.len() > 60_000 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&all);
    let line = format!("cmdstat_{cmd}:calls=");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[test]
fn synced_limits_admit_locally_and_stay_within_the_documented_bound() {
    let redis = RedisServer::start();
    let echo = echo();
    let (rate, burst, sync) = (20.0, 5.0, 0.1);
    let start = || {
        Gateway::start(&format!(
            "upstreams:\n  api: {{peers: [\"{}\"]}}\n{KEYS}cluster:\n  redis: {{url: \"redis://127.0.0.1:{}/0\"}}\nrate_limits:\n  per_sub: {{key: \"claim:sub\", rate: 20/s, burst: 5, scope: cluster, sync: 100ms}}\nroutes:\n  - {{prefix: /limited/, upstream: api, auth: p, rate_limit: per_sub}}\n",
            echo.addr, redis.port
        ))
    };
    let (a, b) = (start(), start());
    for gw in [&a, &b] {
        eventually("connected to redis", Duration::from_secs(5), || {
            redis_up(gw).then_some(())
        });
    }
    let frank = token("frank");
    let scripts_before = redis_calls(&redis, "evalsha") + redis_calls(&redis, "eval");
    // Both instances are hammered at once for 3 s, one client each.
    let run = Duration::from_secs(3);
    let t0 = Instant::now();
    let hammer = |gw: &Gateway| {
        let (mut ok, mut sent) = (0, 0);
        while t0.elapsed() < run {
            sent += 1;
            if gw.bearer("/limited/x", &frank).status == 200 {
                ok += 1;
            }
        }
        (ok, sent)
    };
    let counts: Vec<(u32, u32)> = std::thread::scope(|s| {
        let ha = s.spawn(|| hammer(&a));
        let hb = s.spawn(|| hammer(&b));
        vec![ha.join().unwrap(), hb.join().unwrap()]
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let admitted: u32 = counts.iter().map(|c| c.0).sum();
    let sent: u32 = counts.iter().map(|c| c.1).sum();
    assert_eq!(echo.hits(), admitted as usize);
    let exact = burst + rate * elapsed;
    // The bound docs/cluster.md gives for two instances: the second instance's first burst,
    // plus what each may admit between two rounds.
    let bound = exact + burst + 2.0 * rate * sync;
    eprintln!(
        "synced: {admitted} of {sent} admitted in {elapsed:.2}s; exact {exact:.1}, bound {bound:.1}, over-admission {:.1}",
        f64::from(admitted) - exact
    );
    assert!(sent > 2 * admitted, "the clients were limited: {counts:?}");
    assert!(
        f64::from(admitted) <= bound + 2.0,
        "{admitted} admitted, bound {bound:.1}: {counts:?}"
    );
    assert!(
        f64::from(admitted) >= exact - rate * sync - 2.0,
        "{admitted} admitted, {exact:.1} expected: {counts:?}"
    );
    // No Redis step per request: at most one script per round per instance for the one key.
    let scripts = redis_calls(&redis, "evalsha") + redis_calls(&redis, "eval") - scripts_before;
    let rounds = 2.0 * (elapsed / sync + 3.0);
    assert!(
        (scripts as f64) <= rounds && scripts >= 2,
        "{scripts} scripts for {sent} requests ({rounds} rounds at most)"
    );
    // The same 429 headers as a local limit.
    let r = a.bearer("/limited/x", &frank);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-limit"), Some("5"));
    assert_eq!(r.json()["error"], "rate_limited");
    // Redis goes away: each instance keeps limiting on its own, without waiting on it.
    redis.stop();
    let grace = token("grace");
    let t = Instant::now();
    let seen: Vec<u16> = (0..8)
        .map(|_| a.bearer("/limited/x", &grace).status)
        .collect();
    let ok = seen.iter().filter(|s| **s == 200).count();
    assert!((5..=6).contains(&ok), "{seen:?}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[test]
fn redis_down_falls_back_by_on_error_and_recovers_by_itself() {
    let echo = echo();
    let redis = RedisServer::start();
    let port = redis.port;
    let local = gateway(&echo, port, 3, "");
    let allow = gateway(&echo, port, 3, "  on_error: allow\n");
    let deny = gateway(&echo, port, 3, "  on_error: deny\n");
    for gw in [&local, &allow, &deny] {
        eventually("connected to redis", Duration::from_secs(5), || {
            redis_up(gw).then_some(())
        });
    }
    let port = redis.stop();
    let carol = token("carol");
    // Each request is answered promptly (no wait beyond the 100 ms timeout), never with a
    // gateway error.
    let timed = |gw: &Gateway| {
        let t = Instant::now();
        let s = gw.bearer("/limited/x", &carol).status;
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        s
    };
    let seen: Vec<u16> = (0..5).map(|_| timed(&local)).collect();
    assert_eq!(
        seen,
        [200, 200, 200, 429, 429],
        "local: the instance's own bucket"
    );
    let seen: Vec<u16> = (0..5).map(|_| timed(&allow)).collect();
    assert_eq!(seen, [200; 5], "allow");
    let r = deny.bearer("/limited/x", &carol);
    assert_eq!(r.status, 503, "deny");
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    let ready = request(local.admin, "GET", "/readyz", &[], None);
    assert_eq!(ready.status, 200, "still ready: it serves");
    assert_eq!(
        ready.json()["redis"]["up"],
        json!(false),
        "{}",
        ready.json()
    );
    assert!(local.metric("portcullis_redis_errors_total{kind=\"down\"}") >= 1.0);
    assert_eq!(local.metric("portcullis_redis_up"), 0.0);

    // Redis comes back (empty: no persistence): shared mode resumes without a restart.
    let redis = RedisServer::start_on(port);
    for gw in [&local, &allow, &deny] {
        eventually("reconnected", Duration::from_secs(10), || {
            redis_up(gw).then_some(())
        });
    }
    let dave = token("dave");
    let seen: Vec<u16> = [&local, &allow, &deny, &local]
        .iter()
        .map(|gw| gw.bearer("/limited/x", &dave).status)
        .collect();
    assert_eq!(
        seen,
        [200, 200, 200, 429],
        "one budget again across the three"
    );
    assert_eq!(redis.command("EXISTS portcullis:rl:per_sub:dave"), ":1");
    assert_eq!(local.metric("portcullis_redis_up"), 1.0);
}

#[test]
fn a_slow_redis_counts_as_down() {
    let echo = echo();
    let redis = RedisServer::start();
    let gw = gateway(&echo, redis.port, 3, "  on_error: allow\n");
    eventually("connected to redis", Duration::from_secs(5), || {
        redis_up(&gw).then_some(())
    });
    // Redis stops answering for 2 s (a blocked server looks like this).
    let port = redis.port;
    let pause = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"DEBUG SLEEP 2\r\n").unwrap();
        let mut b = [0u8; 16];
        let _ = s.read(&mut b);
    });
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let statuses: Vec<u16> = (0..5)
        .map(|_| gw.bearer("/limited/x", &token("erin")).status)
        .collect();
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(statuses, [200; 5]);
    assert!(gw.metric("portcullis_redis_errors_total{kind=\"timeout\"}") >= 1.0);
    pause.join().unwrap();
}

#[test]
fn run_starts_with_redis_down_and_check_needs_no_redis() {
    let echo = echo();
    let port = free_port(); // nothing listens there
    let gw = gateway(&echo, port, 2, "");
    let frank = token("frank");
    let seen: Vec<u16> = (0..3)
        .map(|_| gw.bearer("/limited/x", &frank).status)
        .collect();
    assert_eq!(seen, [200, 200, 429], "on_error: local from the start");
    let r = request(gw.admin, "GET", "/readyz", &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["redis"]["up"], json!(false));
    assert!(
        r.json()["redis"]["error"].as_str().is_some(),
        "{}",
        r.json()
    );
}

#[test]
fn cluster_config_errors() {
    let base = "upstreams:\n  a: {peers: [\"127.0.0.1:1\"]}\nroutes:\n  - {prefix: /, upstream: a, rate_limit: l}\n";
    let cases = [
        (
            "cluster:\n  redis: {url: \"redis://127.0.0.1:1\", nodes: [\"redis://127.0.0.1:2\"]}\nrate_limits:\n  l: {key: ip, rate: 1/s, burst: 1, scope: cluster}\n",
            "cluster.redis",
            "exclude each other",
        ),
        (
            "cluster:\n  redis: {url: \"http://127.0.0.1:1\"}\nrate_limits:\n  l: {key: ip, rate: 1/s, burst: 1}\n",
            "cluster.redis.url",
            "is not a redis:// or rediss:// URL",
        ),
        (
            "cluster:\n  redis: {url: \"redis://127.0.0.1:1\", password_env: PORTCULLIS_TEST_UNSET_VAR}\nrate_limits:\n  l: {key: ip, rate: 1/s, burst: 1}\n",
            "cluster.redis.password_env",
            "PORTCULLIS_TEST_UNSET_VAR is not set",
        ),
        (
            "cluster:\n  redis: {url: \"redis://127.0.0.1:1\", timeout: 0ms}\nrate_limits:\n  l: {key: ip, rate: 1/s, burst: 1}\n",
            "cluster.redis.timeout",
            "out of range",
        ),
        (
            "cluster:\n  redis: {url: \"redis://127.0.0.1:1\"}\n  on_error: panic\nrate_limits:\n  l: {key: ip, rate: 1/s, burst: 1}\n",
            "cluster.on_error",
            "unknown variant",
        ),
        (
            "rate_limits:\n  l: {key: ip, rate: 1/s, burst: 1, scope: cluster}\n",
            "rate_limits.l.scope",
            "needs a cluster section",
        ),
        (
            "rate_limits:\n  l: {key: ip, rate: 1/s, burst: 1, sync: 100ms}\n",
            "rate_limits.l.sync",
            "needs scope: cluster",
        ),
        (
            "cluster:\n  redis: {url: \"redis://127.0.0.1:1\"}\nrate_limits:\n  l: {key: ip, rate: 1/s, burst: 1, scope: cluster, sync: 1ms}\n",
            "rate_limits.l.sync",
            "out of range",
        ),
    ];
    for (yaml, path, message) in cases {
        let err = check_refuses_yaml(&format!("{base}{yaml}"));
        assert_errors(&err, &[(path, message)]);
    }
    // A valid section passes `check` with no Redis anywhere.
    let dir = temp_dir();
    let conf = dir.join("ok.yaml");
    std::fs::write(
        &conf,
        format!("{base}cluster:\n  redis: {{url: \"redis://127.0.0.1:1/2\", username: gw}}\nrate_limits:\n  l: {{key: ip, rate: 1/s, burst: 1, scope: cluster}}\n  m: {{key: ip, rate: 1/s, burst: 1, scope: cluster, sync: 250ms}}\n"),
    )
    .unwrap();
    portcullis_ok(&[
        std::ffi::OsStr::new("check"),
        "-c".as_ref(),
        conf.as_os_str(),
    ]);
}

/// A gateway whose `/api/` route checks tokens against a revocation set shared through Redis.
fn revoking_gateway(echo: &EchoServer, redis_port: u16) -> Gateway {
    Gateway::start(&format!(
        "upstreams:\n  api: {{peers: [\"{}\"]}}\n{KEYS}cluster:\n  redis: {{url: \"redis://127.0.0.1:{redis_port}/0\"}}\nrevocation: {{shared: true, refresh: 1s, sub: [mallory]}}\nroutes:\n  - {{prefix: /api/, upstream: api, auth: p}}\n",
        echo.addr
    ))
}

fn revoke(gw: &Gateway, args: &[&str]) -> String {
    let conf = gw.dir.join("portcullis.yaml");
    let mut all = vec!["revoke", "-c", conf.to_str().unwrap()];
    all.extend_from_slice(args);
    portcullis_ok(&all)
}

fn revoked(gw: &Gateway, token: &str) -> bool {
    let r = gw.bearer("/api/x", token);
    match r.status {
        200 => false,
        401 => {
            let c = r.header("www-authenticate").unwrap_or_default();
            assert!(c.contains("revoked"), "{c}");
            true
        }
        s => panic!("status {s}"),
    }
}

#[test]
fn shared_revocation_reaches_every_instance() {
    let redis = RedisServer::start();
    let echo = echo();
    let a = revoking_gateway(&echo, redis.port);
    let b = revoking_gateway(&echo, redis.port);
    let alice = token("alice");
    for gw in [&a, &b] {
        assert!(!revoked(gw, &alice));
        // Inline entries still apply.
        assert!(revoked(gw, &token("mallory")));
    }
    // Give both instances a moment to subscribe, then revoke on one machine.
    std::thread::sleep(Duration::from_millis(500));
    let out = revoke(&a, &["--sub", "alice", "--ttl", "1h"]);
    assert!(out.starts_with("revoked sub:alice until "), "{out}");
    let t = Instant::now();
    for gw in [&a, &b] {
        eventually("alice revoked", Duration::from_secs(3), || {
            revoked(gw, &alice).then_some(())
        });
    }
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(!revoked(&b, &token("bob")));
    let list = revoke(&b, &["--list"]);
    assert!(list.contains("sub:alice\tuntil "), "{list}");
    // The entry expires with its TTL in Redis.
    let score = redis.command("ZSCORE portcullis:revoked sub:alice");
    assert!(!score.is_empty(), "{score}");

    // A missed message (written without PUBLISH) arrives with the next resync (refresh: 1s).
    let until = (now() + 3600) * 1000;
    redis.command(&format!("ZADD portcullis:revoked {until} jti:j-42"));
    let j42 = hs256(
        SECRET,
        &json!({"sub": "carol", "jti": "j-42", "exp": now() + 600}),
    );
    eventually("resynced", Duration::from_secs(4), || {
        revoked(&b, &j42).then_some(())
    });

    // Redis restarts empty (no persistence): the instances reconnect and resync, so an entry
    // revoked while they were away still arrives; what was only in the old Redis is gone.
    let port = redis.stop();
    std::thread::sleep(Duration::from_millis(300));
    let redis = RedisServer::start_on(port);
    revoke(&a, &["--jti", "j-43", "--ttl", "10m"]);
    let j43 = hs256(
        SECRET,
        &json!({"sub": "dave", "jti": "j-43", "exp": now() + 600}),
    );
    for gw in [&a, &b] {
        eventually("revoked after the restart", Duration::from_secs(6), || {
            revoked(gw, &j43).then_some(())
        });
        eventually(
            "the old entries left with the old Redis",
            Duration::from_secs(4),
            || (!revoked(gw, &alice)).then_some(()),
        );
        assert!(revoked(gw, &token("mallory")), "inline entries stay");
    }
    drop(redis);
}

#[test]
fn revoke_needs_a_shared_revocation_section() {
    let err = check_refuses_yaml(
        "upstreams:\n  a: {peers: [\"127.0.0.1:1\"]}\nrevocation: {shared: true}\nroutes:\n  - {prefix: /, upstream: a}\n",
    );
    assert_errors(&err, &[("revocation.shared", "needs a cluster section")]);
}

#[test]
fn redis_cluster_shares_limits_and_revocation_across_slots() {
    let cluster = RedisCluster::start();
    let echo = echo();
    let config = format!(
        "upstreams:\n  api: {{peers: [\"{}\"]}}\n{KEYS}cluster:\n  redis: {{nodes: [{}], timeout: 200ms}}\nrevocation: {{shared: true, refresh: 1s}}\nrate_limits:\n  per_sub: {{key: \"claim:sub\", rate: 1/m, burst: 2, scope: cluster}}\n  synced: {{key: \"claim:sub\", rate: 1/m, burst: 2, scope: cluster, sync: 100ms}}\nroutes:\n  - {{prefix: /limited/, upstream: api, auth: p, rate_limit: per_sub}}\n  - {{prefix: /synced/, upstream: api, auth: p, rate_limit: synced}}\n  - {{prefix: /api/, upstream: api, auth: p}}\n",
        echo.addr,
        cluster.urls()
    );
    let a = Gateway::start(&config);
    let b = Gateway::start(&config);
    for gw in [&a, &b] {
        eventually("connected to the cluster", Duration::from_secs(10), || {
            redis_up(gw).then_some(())
        });
    }
    // Twenty subs: their keys spread over the three primaries' slots. Each has one budget of 2
    // across both instances.
    for i in 0..20 {
        let t = token(&format!("user-{i}"));
        let seen: Vec<u16> = [&a, &b, &a, &b]
            .iter()
            .map(|gw| gw.bearer("/limited/x", &t).status)
            .collect();
        assert_eq!(seen, [200, 200, 429, 429], "user-{i}");
    }
    let holding: Vec<i64> = cluster
        .nodes
        .iter()
        .map(|n| n.command("DBSIZE").trim_start_matches(':').parse().unwrap())
        .collect();
    assert!(
        holding.iter().filter(|k| **k > 0).count() >= 2,
        "keys on one node only: {holding:?}"
    );
    assert_eq!(holding.iter().sum::<i64>(), 20, "{holding:?}");

    // The batched mode across slots: a spends each sub's budget, b (new to the key) admits one
    // more on its own — the documented excess — then learns the shared level at its next round.
    let subs: Vec<String> = (0..20).map(|i| token(&format!("synced-{i}"))).collect();
    for t in &subs {
        assert_eq!(a.bearer("/synced/x", t).status, 200);
        assert_eq!(a.bearer("/synced/x", t).status, 200);
    }
    std::thread::sleep(Duration::from_millis(400));
    for t in &subs {
        assert_eq!(b.bearer("/synced/x", t).status, 200);
    }
    std::thread::sleep(Duration::from_millis(400));
    for (i, t) in subs.iter().enumerate() {
        let seen = [
            b.bearer("/synced/x", t).status,
            a.bearer("/synced/x", t).status,
        ];
        assert_eq!(seen, [429, 429], "synced-{i}");
    }
    let holding: i64 = cluster
        .nodes
        .iter()
        .map(|n| {
            n.command("DBSIZE")
                .trim_start_matches(':')
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    assert_eq!(holding, 40);

    // Revocation through the cluster reaches both instances.
    let zed = token("zed");
    assert_eq!(b.bearer("/api/x", &zed).status, 200);
    std::thread::sleep(Duration::from_millis(500));
    revoke(&a, &["--sub", "zed"]);
    for gw in [&a, &b] {
        eventually("zed revoked", Duration::from_secs(3), || {
            revoked(gw, &zed).then_some(())
        });
    }
    assert!(revoke(&b, &["--list"]).contains("sub:zed"));
}

#[test]
fn rediss_verifies_the_redis_certificate() {
    let dir = temp_dir();
    let ca = Ca::new(&dir);
    let leaf = ca.leaf(&dir, "redis", &["127.0.0.1", "localhost"], false);
    let tls_port = free_port();
    let redis = RedisServer::start_with(
        free_port(),
        &[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            leaf.cert.to_str().unwrap(),
            "--tls-key-file",
            leaf.key.to_str().unwrap(),
            "--tls-ca-cert-file",
            ca.pem.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
        ],
    );
    let echo = echo();
    let body = format!(
        "upstreams:\n  api: {{peers: [\"{}\"]}}\n{KEYS}cluster:\n  redis: {{url: \"rediss://127.0.0.1:{tls_port}/0\"}}\nrate_limits:\n  per_sub: {{key: \"claim:sub\", rate: 1/m, burst: 2, scope: cluster}}\nroutes:\n  - {{prefix: /limited/, upstream: api, auth: p, rate_limit: per_sub}}\n",
        echo.addr
    );
    // Trusting the CA (SSL_CERT_FILE): connected over TLS, the limit is shared in Redis.
    let trusted = Gateway::start_env(&body, &[("SSL_CERT_FILE", ca.pem.display().to_string())]);
    eventually("connected over TLS", Duration::from_secs(5), || {
        redis_up(&trusted).then_some(())
    });
    let t = token("tls-user");
    let seen: Vec<u16> = (0..3)
        .map(|_| trusted.bearer("/limited/x", &t).status)
        .collect();
    assert_eq!(seen, [200, 200, 429]);
    assert_eq!(redis.command("EXISTS portcullis:rl:per_sub:tls-user"), ":1");
    // Not trusting it: never connected (fail closed on the certificate), on_error: local.
    let other = temp_dir();
    let stranger = Ca::new(&other);
    let untrusted = Gateway::start_env(
        &body,
        &[("SSL_CERT_FILE", stranger.pem.display().to_string())],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let r = request(untrusted.admin, "GET", "/readyz", &[], None);
    assert_eq!(r.json()["redis"]["up"], json!(false), "{}", r.json());
    let u = token("untrusted-user");
    let seen: Vec<u16> = (0..3)
        .map(|_| untrusted.bearer("/limited/x", &u).status)
        .collect();
    assert_eq!(seen, [200, 200, 429], "the local fallback");
    assert_eq!(
        redis.command("EXISTS portcullis:rl:per_sub:untrusted-user"),
        ":0"
    );
}
