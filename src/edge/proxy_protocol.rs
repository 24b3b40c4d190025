//! The PROXY protocol (v1 text and v2 binary, as AWS NLB and HAProxy `send-proxy` send it):
//! read first on listeners with `proxy_protocol: true` (before the TLS handshake on TLS ones),
//! believed only from `server.trusted_proxies`. The address it carries becomes the connection's peer. A connection
//! without a valid header there is closed.

use super::client_ip::Trusted;
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use pingora_core::{Error, ErrorType, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::io::RawFd;
use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn bad(why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, why)
}

/// Parse a v1 line (`PROXY TCP4 src dst sport dport`, without the CRLF). `None`: `UNKNOWN`.
pub fn parse_v1(line: &[u8]) -> std::result::Result<Option<SocketAddr>, &'static str> {
    let text = std::str::from_utf8(line).map_err(|_| "PROXY v1: not text")?;
    let mut f = text.split(' ');
    if f.next() != Some("PROXY") {
        return Err("PROXY v1: no PROXY prefix");
    }
    match f.next() {
        Some("UNKNOWN") => Ok(None),
        Some(fam @ ("TCP4" | "TCP6")) => {
            let src: IpAddr = f
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or("PROXY v1: source")?;
            let _dst: IpAddr = f
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or("PROXY v1: destination")?;
            let port: u16 = f
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or("PROXY v1: port")?;
            let _dport: u16 = f
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or("PROXY v1: port")?;
            if f.next().is_some() || (fam == "TCP4") != src.is_ipv4() {
                return Err("PROXY v1: malformed");
            }
            Ok(Some(SocketAddr::new(src, port)))
        }
        _ => Err("PROXY v1: unknown protocol"),
    }
}

/// Parse the v2 address block for `ver_cmd` and `fam`. `None`: `LOCAL` or an unsupported family.
pub fn parse_v2(
    ver_cmd: u8,
    fam: u8,
    addrs: &[u8],
) -> std::result::Result<Option<SocketAddr>, &'static str> {
    if ver_cmd >> 4 != 2 {
        return Err("PROXY v2: version");
    }
    match ver_cmd & 0x0f {
        0 => return Ok(None), // LOCAL: the balancer's own health check
        1 => {}
        _ => return Err("PROXY v2: command"),
    }
    match fam {
        0x11 if addrs.len() >= 12 => {
            let ip = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
            let port = u16::from_be_bytes([addrs[8], addrs[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        0x21 if addrs.len() >= 36 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&addrs[..16]);
            let port = u16::from_be_bytes([addrs[32], addrs[33]]);
            Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), port)))
        }
        0x11 | 0x21 => Err("PROXY v2: short address block"),
        _ => Ok(None),
    }
}

/// Read exactly the header, nothing of what follows it (the TLS ClientHello or the request).
/// `Ok(None)`: a header that names no address (`UNKNOWN`, `LOCAL`).
pub async fn read_header<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
) -> Result<Option<SocketAddr>> {
    let mut first = [0u8; 1];
    stream
        .read_exact(&mut first)
        .await
        .map_err(|_| bad("no PROXY header"))?;
    if first[0] == b'P' {
        let mut line = vec![first[0]];
        loop {
            let mut b = [0u8; 1];
            stream
                .read_exact(&mut b)
                .await
                .map_err(|_| bad("PROXY v1: cut short"))?;
            line.push(b[0]);
            if line.ends_with(b"\r\n") {
                line.truncate(line.len() - 2);
                return parse_v1(&line).map_err(bad);
            }
            // The longest line the specification allows is 107 bytes with its CRLF.
            if line.len() >= 107 {
                return Err(bad("PROXY v1: line too long"));
            }
        }
    }
    let mut head = [0u8; 16];
    head[0] = first[0];
    stream
        .read_exact(&mut head[1..])
        .await
        .map_err(|_| bad("PROXY v2: cut short"))?;
    if &head[..12] != V2_SIGNATURE {
        return Err(bad("no PROXY header"));
    }
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    if len > 512 {
        return Err(bad("PROXY v2: header too long"));
    }
    let mut rest = vec![0u8; len];
    stream
        .read_exact(&mut rest)
        .await
        .map_err(|_| bad("PROXY v2: cut short"))?;
    parse_v2(head[12], head[13], &rest).map_err(bad)
}

/// On a connection from a trusted peer, read its PROXY header and make the source it names
/// the connection's peer. `fd` is the connection's socket.
pub async fn accept<S>(stream: &mut S, trusted: &Trusted, fd: RawFd) -> Result<()>
where
    S: AsyncRead + GetSocketDigest + Unpin + ?Sized,
{
    let peer = stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().map(|a| a.ip())));
    if !peer.is_some_and(|p| trusted.contains(p)) {
        return Err(bad(
            "PROXY header from a peer not in server.trusted_proxies",
        ));
    }
    if let Some(src) = read_header(stream).await? {
        let digest = SocketDigest::from_raw_fd(fd);
        let _ = digest.peer_addr.set(Some(PeerAddr::Inet(src)));
        stream.set_socket_digest(digest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>>, usize) {
        use futures_util::FutureExt;
        let mut stream = bytes;
        let r = read_header(&mut stream).now_or_never().unwrap();
        (r, bytes.len() - stream.len())
    }

    /// Found by the `proxy_protocol` fuzz target: a 108-byte line (with CRLF) was accepted,
    /// one more than the specification's longest.
    #[test]
    fn v1_line_at_most_107_bytes_with_its_crlf() {
        let line = |n: usize| {
            let head = "PROXY TCP4 203.0.113.7 10.0.0.1 51234 ";
            let mut l = format!("{head}{:0>w$}\r\nGET", 443, w = n - head.len() - 2);
            l.truncate(n + 3);
            l
        };
        let (ok, used) = read(line(107).as_bytes());
        assert_eq!(ok.unwrap(), Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(used, 107, "the header and nothing after it");
        assert!(read(line(108).as_bytes()).0.is_err());
    }

    #[test]
    fn v1() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443"),
            Ok(Some("203.0.113.7:51234".parse().unwrap()))
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443"),
            Ok(Some("[2001:db8::7]:4000".parse().unwrap()))
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN"), Ok(None));
        for bad in [
            &b"GET / HTTP/1.1"[..],
            b"PROXY TCP4 x y 1 2",
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3",
        ] {
            assert!(parse_v1(bad).is_err());
        }
    }

    #[test]
    fn v2() {
        let mut a = vec![203, 0, 113, 7, 10, 0, 0, 1];
        a.extend_from_slice(&51234u16.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(
            parse_v2(0x21, 0x11, &a),
            Ok(Some("203.0.113.7:51234".parse().unwrap()))
        );
        assert_eq!(parse_v2(0x20, 0x11, &a), Ok(None));
        assert!(parse_v2(0x11, 0x11, &a).is_err());
        assert!(parse_v2(0x21, 0x11, &a[..4]).is_err());
    }
}
