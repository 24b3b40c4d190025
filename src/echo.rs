//! A small HTTP/1.1 echo server: answers every request with JSON describing what it received.
//!
//! Used by `portcullis demo` as the upstream, and by the tests to see exactly what the gateway
//! forwarded. It speaks keep-alive, Content-Length and chunked request bodies; a request may ask
//! for a status with the query argument `echo_status=NNN`, and for a slow answer with
//! `echo_delay_ms=N`.

use serde_json::json;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

const MAX_HEAD: usize = 64 * 1024;

/// A running echo server; stopped when dropped (its open connections are closed too, so a
/// stopped server looks down to a client that pools connections).
pub struct EchoServer {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<HashMap<u64, TcpStream>>>,
}

impl EchoServer {
    /// Bind `addr` (use port 0 for any free port) and serve on background threads.
    pub fn start(addr: &str) -> io::Result<EchoServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
        let (h, s, c) = (hits.clone(), stop.clone(), conns.clone());
        thread::Builder::new()
            .name(format!("echo {addr}"))
            .spawn(move || {
                for (id, conn) in listener.incoming().enumerate() {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let id = id as u64;
                    if let (Ok(mut open), Ok(clone)) = (c.lock(), conn.try_clone()) {
                        open.insert(id, clone);
                    }
                    let (h, c) = (h.clone(), c.clone());
                    let _ = thread::Builder::new().spawn(move || {
                        let _ = serve(conn, addr, &h);
                        if let Ok(mut open) = c.lock() {
                            open.remove(&id);
                        }
                    });
                }
            })?;
        Ok(EchoServer {
            addr,
            hits,
            stop,
            conns,
        })
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Ok(list) = self.conns.lock() {
            for c in list.values() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

fn serve(conn: TcpStream, me: SocketAddr, hits: &AtomicUsize) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        // Request line and headers.
        let mut head = Vec::new();
        loop {
            let before = head.len();
            let n = reader.by_ref().take(8192).read_until(b'\n', &mut head)?;
            if n == 0 {
                return Ok(()); // closed
            }
            if head.len() > MAX_HEAD {
                return Err(io::Error::other("head too large"));
            }
            let line = &head[before..];
            if line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head);
        let mut lines = text.lines();
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            loop {
                let mut size_line = String::new();
                reader.read_line(&mut size_line)?;
                let size =
                    usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
                        .map_err(|_| io::Error::other("bad chunk size"))?;
                if size == 0 {
                    // trailers until an empty line
                    loop {
                        let mut l = String::new();
                        if reader.read_line(&mut l)? == 0 || l == "\r\n" || l == "\n" {
                            break;
                        }
                    }
                    break;
                }
                let mut chunk = vec![0; size];
                reader.read_exact(&mut chunk)?;
                body.extend_from_slice(&chunk);
                let mut crlf = [0; 2];
                reader.read_exact(&mut crlf)?;
            }
        } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body = vec![0; len];
            reader.read_exact(&mut body)?;
        }
        hits.fetch_add(1, Ordering::SeqCst);

        let query_arg = |name: &str| -> Option<u64> {
            let (_, q) = target.split_once('?')?;
            q.split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        };
        let status = query_arg("echo_status")
            .filter(|s| (200..600).contains(s))
            .unwrap_or(200);
        if let Some(ms) = query_arg("echo_delay_ms") {
            thread::sleep(std::time::Duration::from_millis(ms.min(60_000)));
        }
        let doc = json!({
            "method": method,
            "path": target,
            "headers": headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "body": String::from_utf8_lossy(&body),
            "peer": me.to_string(),
        });
        let payload = serde_json::to_vec(&doc).unwrap_or_default();
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let resp = format!(
            "HTTP/1.1 {status} Echo\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-echo-peer: {me}\r\n{}\r\n",
            payload.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        out.write_all(resp.as_bytes())?;
        if method != "HEAD" {
            out.write_all(&payload)?;
        }
        out.flush()?;
        if close {
            let _ = out.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}
