//! A loopback mock identity provider: serves a JWKS and an OpenID discovery document that the
//! test can change, break or take down, and counts the JWKS fetches.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Normal,
    Garbage,
    Status500,
    /// A JWKS over the 1 MiB limit.
    Huge,
}

struct State {
    keys: Vec<Value>,
    mode: Mode,
    /// The `issuer` the discovery document claims.
    issuer: String,
}

pub struct MockIdp {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    fetches: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

/// The public JWK of a key in tests/keys/private_jwks.json or jwks.json, by kid.
pub fn public_jwk(kid: &str) -> Value {
    for file in ["private_jwks.json", "jwks.json"] {
        let doc: Value = serde_json::from_slice(&super::read_key(file)).unwrap();
        for k in doc["keys"].as_array().unwrap() {
            if k["kid"] == kid {
                let mut k = k.clone();
                let m = k.as_object_mut().unwrap();
                for private in ["d", "p", "q", "dp", "dq", "qi"] {
                    m.remove(private);
                }
                return k;
            }
        }
    }
    panic!("no key {kid}");
}

impl MockIdp {
    /// Serve on a new port.
    pub fn start(keys: Vec<Value>) -> MockIdp {
        Self::start_on("127.0.0.1:0", keys)
    }

    pub fn start_on(addr: &str, keys: Vec<Value>) -> MockIdp {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            keys,
            mode: Mode::Normal,
            issuer: format!("http://{addr}"),
        }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, f, s) = (state.clone(), fetches.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, f) = (st.clone(), f.clone());
                std::thread::spawn(move || serve(conn, addr, &st, &f));
            }
        });
        MockIdp {
            addr,
            state,
            fetches,
            stop,
        }
    }

    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
    pub fn set_keys(&self, keys: Vec<Value>) {
        self.state.lock().unwrap().keys = keys;
    }
    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }
    pub fn claim_issuer(&self, issuer: &str) {
        self.state.lock().unwrap().issuer = issuer.to_string();
    }
}

impl Drop for MockIdp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, me: SocketAddr, state: &Mutex<State>, fetches: &AtomicUsize) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
            break;
        }
    }
    let path = request_line.split(' ').nth(1).unwrap_or("/").to_string();
    let (status, body) = {
        let st = state.lock().unwrap();
        match path.as_str() {
            "/.well-known/openid-configuration" => (
                200,
                json!({"issuer": st.issuer, "jwks_uri": format!("http://{me}/jwks")}).to_string(),
            ),
            "/jwks" => {
                fetches.fetch_add(1, Ordering::SeqCst);
                match st.mode {
                    Mode::Normal => (200, json!({"keys": st.keys}).to_string()),
                    Mode::Garbage => (200, "<html>oops</html>".to_string()),
                    Mode::Status500 => (500, "{}".to_string()),
                    Mode::Huge => (
                        200,
                        format!(
                            "{{\"keys\": {}, \"pad\": \"{}\"}}",
                            json!(st.keys),
                            "x".repeat(1100 * 1024)
                        ),
                    ),
                }
            }
            _ => (404, "{}".to_string()),
        }
    };
    let mut out = conn;
    let _ = write!(
        out,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = out.flush();
}
