//! The least an HTTP/1 keep-alive reverse proxy can do on tokio: read a request head and parse
//! it with httparse (no header map), send its bytes unchanged over an idle upstream connection
//! taken from a pool, read the answer's head, forward it and a `Content-Length` body as read,
//! and put the upstream connection back. Requests with a body, chunked answers and everything
//! else a real proxy must handle are refused or end the connection: this is a measuring stick
//! for `benches/load/instructions.sh`, not a proxy to run.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: reference_proxies::allocator::Allocator = reference_proxies::allocator::Allocator;

const MAX_HEAD: usize = 16 * 1024;
const MAX_FIELDS: usize = 64;

type Pool = Arc<Mutex<Vec<TcpStream>>>;

fn main() {
    let (listen, upstream) = reference_proxies::addresses();
    reference_proxies::runtime().block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        let pool: Pool = Arc::default();
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            tokio::spawn(serve(client, upstream, pool.clone()));
        }
    });
}

/// Requests of one client connection, one after another, until it closes or sends something
/// this proxy does not handle.
async fn serve(mut client: TcpStream, upstream: SocketAddr, pool: Pool) {
    let mut buf = Vec::with_capacity(4096);
    let mut answer = Vec::with_capacity(4096);
    loop {
        let Some(head) = read_head(&mut client, &mut buf, request_head).await else {
            return;
        };
        let Some(mut up) = upstream_connection(&pool, upstream).await else {
            return;
        };
        if up.write_all(&buf[..head]).await.is_err() {
            return;
        }
        buf.drain(..head);
        answer.clear();
        let Some((head, body)) = read_head(&mut up, &mut answer, response_head).await else {
            return;
        };
        let whole = head + body;
        while answer.len() < whole {
            if read_more(&mut up, &mut answer).await.is_none() {
                return;
            }
        }
        if client.write_all(&answer[..whole]).await.is_err() {
            return;
        }
        if answer.len() == whole {
            pool.lock().unwrap().push(up);
        }
    }
}

/// Read into `buf` until `parse` finds a complete head in it; what `parse` returns then.
async fn read_head<T>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    parse: fn(&[u8]) -> Result<Option<T>, ()>,
) -> Option<T> {
    loop {
        if let Some(found) = parse(buf).ok()? {
            return Some(found);
        }
        if buf.len() >= MAX_HEAD {
            return None;
        }
        read_more(stream, buf).await?;
    }
}

/// One read appended to `buf`; `None` at end of stream or on an error.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    buf.reserve(4096);
    match stream.read_buf(buf).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(()),
    }
}

/// The length of a complete request head without a body; an error for anything else.
fn request_head(buf: &[u8]) -> Result<Option<usize>, ()> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(buf).map_err(|_| ())? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(len) => {
            let body = req.headers.iter().any(|f| {
                f.name.eq_ignore_ascii_case("transfer-encoding")
                    || (f.name.eq_ignore_ascii_case("content-length") && f.value != b"0")
            });
            if body {
                Err(())
            } else {
                Ok(Some(len))
            }
        }
    }
}

/// The lengths of a complete response head and of its `Content-Length` body.
fn response_head(buf: &[u8]) -> Result<Option<(usize, usize)>, ()> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut fields);
    match resp.parse(buf).map_err(|_| ())? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(len) => {
            let length = resp
                .headers
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case("content-length"))
                .ok_or(())?;
            let body = std::str::from_utf8(length.value).map_err(|_| ())?;
            Ok(Some((len, body.parse().map_err(|_| ())?)))
        }
    }
}

/// An idle pooled connection to the upstream, or a new one.
async fn upstream_connection(pool: &Pool, upstream: SocketAddr) -> Option<TcpStream> {
    let pooled = pool.lock().unwrap().pop();
    match pooled {
        Some(up) => Some(up),
        None => {
            let up = TcpStream::connect(upstream).await.ok()?;
            let _ = up.set_nodelay(true);
            Some(up)
        }
    }
}
