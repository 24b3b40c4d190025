//! Test harness: start the real `portcullis` binary on free loopback ports against loopback echo
//! upstreams, and talk to it over plain TCP so every byte on the wire is under the test's control.
#![allow(dead_code)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use portcullis::echo::EchoServer;

pub mod certs;
pub mod idp;
pub mod nginx;

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// The HMAC secret the test configs give their `secret:` keys (32 bytes).
pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

pub fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

pub fn key_path(name: &str) -> String {
    keys_dir().join(name).display().to_string()
}

pub fn read_key(name: &str) -> Vec<u8> {
    std::fs::read(keys_dir().join(name)).unwrap()
}

/// A free port for a gateway to bind.
///
/// Ports come from a counter below the kernel's ephemeral range (where the echo servers' port-0
/// binds and client sockets land), so a port handed out here is never given to anyone else in
/// this process in the meantime: a gateway cannot end up behind another test's port.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = 12_000 + (std::process::id() as usize % 150) * 100;
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (base + n % 5_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn echo() -> EchoServer {
    EchoServer::start("127.0.0.1:0").unwrap()
}

/// A fresh folder for one test's files.
pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "portcullis-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run `portcullis check` on a config file that must be refused; returns what it printed on
/// stderr.
pub fn check_refuses(conf: &Path) -> String {
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(conf)
        .output()
        .unwrap();
    assert!(!out.status.success(), "check accepted {}", conf.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Run the portcullis binary with `args`, which must succeed; returns what it printed on stdout.
pub fn portcullis_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Start a Python test peer that prints its port on its first line; the child and the port.
pub fn python_peer(mut cmd: Command) -> (Child, u16) {
    use std::io::BufRead;
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("python3 runs");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a port on the peer's first line, got {line:?}"));
    (child, port)
}

/// Write `yaml` to a fresh file and `check_refuses` it.
pub fn check_refuses_yaml(yaml: &str) -> String {
    let conf = temp_dir().join("c.yaml");
    std::fs::write(&conf, yaml).unwrap();
    check_refuses(&conf)
}

/// Each `(yaml path, text)` must be one error line `FILE: path: …text…`.
pub fn assert_errors(err: &str, expected: &[(&str, &str)]) {
    for (path, what) in expected {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!(": {path}: ")) && l.contains(what)),
            "no error for {path} mentioning {what:?} in:\n{err}"
        );
    }
}

/// The Python TLS server (tests/tls_echo.py, certificate tests/keys/tls_cert.pem for
/// `upstream.test`, `localhost` and 127.0.0.1); killed when dropped.
pub struct TlsServer {
    child: Child,
    pub port: u16,
}

impl TlsServer {
    /// Start it; with `jwks`, it serves that file at `/jwks`.
    pub fn start(jwks: Option<&Path>) -> TlsServer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
        let mut cmd = Command::new("python3");
        cmd.arg(dir.join("tls_echo.py"))
            .arg(dir.join("keys/tls_cert.pem"))
            .arg(dir.join("keys/tls_key.pem"));
        if let Some(j) = jwks {
            cmd.arg(j);
        }
        let (child, port) = python_peer(cmd);
        TlsServer { child, port }
    }

    /// The environment that makes the gateway trust this server's certificate.
    pub fn trust() -> (&'static str, String) {
        ("SSL_CERT_FILE", key_path("tls_cert.pem"))
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running gateway process; killed when dropped.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub child: Child,
    pub dir: PathBuf,
}

impl Gateway {
    /// Start with a config whose `server` section is filled in here. `body` holds the other
    /// sections.
    pub fn start(body: &str) -> Gateway {
        Self::start_env(body, &[])
    }

    /// As `start`, with extra environment variables for the process.
    pub fn start_env(body: &str, env: &[(&str, String)]) -> Gateway {
        let port = free_port();
        let admin_port = free_port();
        let yaml = format!(
            "server:\n  listen: [\"127.0.0.1:{port}\"]\n  threads: 1\n  admin: \"127.0.0.1:{admin_port}\"\n{body}"
        );
        Self::start_raw_env(&yaml, port, admin_port, env)
    }

    pub fn start_raw(yaml: &str, port: u16, admin_port: u16) -> Gateway {
        Self::start_raw_env(yaml, port, admin_port, &[])
    }

    pub fn start_raw_env(
        yaml: &str,
        port: u16,
        admin_port: u16,
        env: &[(&str, String)],
    ) -> Gateway {
        let dir = temp_dir();
        let conf = dir.join("portcullis.yaml");
        std::fs::write(&conf, yaml).unwrap();
        let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
        let child = Command::new(BIN)
            .args(["run", "-c"])
            .arg(&conf)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut gw = Gateway {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            child,
            dir,
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gateway exited with {status}: {}", self.log());
            }
            if TcpStream::connect(self.addr).is_ok() && TcpStream::connect(self.admin).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not start listening: {}", self.log());
    }

    /// Send a signal (`-TERM`, `-HUP`, …) to the gateway process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} failed");
    }

    /// Wait for the process to exit, counting from `since`; panics after `limit`.
    pub fn wait_exit(&mut self, since: Instant, limit: Duration) -> std::process::ExitStatus {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(since.elapsed() < limit, "still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        request(self.addr, "GET", path, headers, None)
    }

    /// The value of one series on `/metrics` (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        let body = request(self.admin, "GET", "/metrics", &[], None).body;
        String::from_utf8(body)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn bearer(&self, path: &str, token: &str) -> Response {
        let auth = format!("Bearer {token}");
        self.get(path, &[("Authorization", &auth)])
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// For a response from the echo upstream: the value of a header the upstream received.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        let doc = self.json();
        doc["headers"].as_array().and_then(|hs| {
            hs.iter()
                .find(|h| h[0].as_str() == Some(&name.to_ascii_lowercase()))
                .map(|h| h[1].as_str().unwrap_or_default().to_string())
        })
    }

    pub fn upstream_headers(&self, name: &str) -> Vec<String> {
        let doc = self.json();
        doc["headers"]
            .as_array()
            .map(|hs| {
                hs.iter()
                    .filter(|h| h[0].as_str() == Some(&name.to_ascii_lowercase()))
                    .map(|h| h[1].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Send one request on a new connection (`Connection: close`) and read the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        raw.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    raw_request(addr, &bytes).expect("a response")
}

/// Send raw bytes; parse what comes back. `None` if the connection closed without a response.
/// Read a message head (through its blank line) a byte at a time, so nothing after it is
/// consumed; `None` if the stream ends or fails first.
pub fn read_head(r: &mut impl Read) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match r.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(head)
}

pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> Option<Response> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A server may answer and close before reading everything we send: ignore write errors.
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Option<Response> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&b[start..start + size]);
        b = &b[start + size + 2..];
    }
}

pub fn b64(s: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Sign `header.payload` (given as JSON text) with HMAC-SHA256.
pub fn hs256_raw(secret: &[u8], header: &str, payload: &str) -> String {
    let msg = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = jsonwebtoken::crypto::sign(
        msg.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(secret),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    format!("{msg}.{sig}")
}

/// Sign claims with a PEM private key from tests/keys.
pub fn sign_pem(alg: jsonwebtoken::Algorithm, key_file: &str, claims: &Value) -> String {
    sign_pem_with_header(jsonwebtoken::Header::new(alg), key_file, claims)
}

pub fn sign_pem_with_header(
    header: jsonwebtoken::Header,
    key_file: &str,
    claims: &Value,
) -> String {
    use jsonwebtoken::{Algorithm::*, EncodingKey};
    let pem = read_key(key_file);
    let key = match header.alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => EncodingKey::from_rsa_pem(&pem),
        ES256 | ES384 => EncodingKey::from_ec_pem(&pem),
        EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => panic!("not a PEM algorithm"),
    }
    .unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

pub fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// Poll `f` every 50 ms until it gives a value; panics naming `what` after `limit`.
pub fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first line of a JSON access log that `pick` accepts (the writer flushes within 200 ms).
pub fn access_log_line(log: &Path, pick: impl Fn(&Value) -> bool) -> Value {
    eventually("an access log line", Duration::from_secs(5), || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|l| pick(l))
    })
}
