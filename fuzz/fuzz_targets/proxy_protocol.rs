//! The PROXY protocol header reader (v1 text and v2 binary) on arbitrary bytes.
//!
//! Properties: nothing panics; the reader consumes exactly the header and nothing of what
//! follows it (the ClientHello or the request); an address it returns is the one the header
//! carries, checked against a reference reading of the same bytes.
#![no_main]

use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;
use portcullis::edge::proxy_protocol::read_header;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The header's length and source address, read the simple way.
fn reference(data: &[u8]) -> Option<(usize, Option<SocketAddr>)> {
    if data.first() == Some(&b'P') {
        let end = data.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&data[..end]).ok()?;
        let f: Vec<&str> = line.split(' ').collect();
        return match f.as_slice() {
            ["PROXY", "UNKNOWN", ..] => Some((end + 2, None)),
            ["PROXY", fam, src, dst, sport, dport] => {
                let src: IpAddr = src.parse().ok()?;
                let _: IpAddr = dst.parse().ok()?;
                let sport: u16 = sport.parse().ok()?;
                let _: u16 = dport.parse().ok()?;
                let v4 = match *fam {
                    "TCP4" => true,
                    "TCP6" => false,
                    _ => return None,
                };
                (v4 == src.is_ipv4()).then_some((end + 2, Some(SocketAddr::new(src, sport))))
            }
            _ => None,
        };
    }
    if data.len() < 16 || &data[..12] != b"\r\n\r\n\0\r\nQUIT\n" {
        return None;
    }
    let len = u16::from_be_bytes([data[14], data[15]]) as usize;
    let block = data.get(16..16 + len)?;
    let (ver, cmd) = (data[12] >> 4, data[12] & 15);
    if ver != 2 || cmd > 1 {
        return None;
    }
    if cmd == 0 {
        return Some((16 + len, None));
    }
    let addr = match data[13] {
        0x11 => {
            let b = block.get(..12)?;
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
                u16::from_be_bytes([b[8], b[9]]),
            ))
        }
        0x21 => {
            let b = block.get(..36)?;
            let ip: [u8; 16] = b[..16].try_into().ok()?;
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(ip)),
                u16::from_be_bytes([b[32], b[33]]),
            ))
        }
        _ => None,
    };
    Some((16 + len, addr))
}

fuzz_target!(|data: &[u8]| {
    let mut stream: &[u8] = data;
    let got = read_header(&mut stream)
        .now_or_never()
        .expect("reading from memory never waits");
    let consumed = data.len() - stream.len();
    let want = reference(data);
    match (got, want) {
        (Ok(addr), Some((len, want_addr))) => {
            assert_eq!(
                consumed, len,
                "consumed {consumed} bytes of a {len}-byte header"
            );
            assert_eq!(addr, want_addr, "address");
        }
        (Ok(addr), None) => panic!("accepted {addr:?}, the reference refuses"),
        (Err(_), Some((len, _))) => {
            // The gateway's limits: a v1 line of at most 107 bytes with its CRLF (the
            // specification's), a v2 address block of at most 512.
            let v1_long = data[0] == b'P' && len > 107;
            let v2_long = data[0] != b'P' && len > 16 + 512;
            assert!(
                v1_long || v2_long,
                "refused a {len}-byte header the reference accepts"
            );
        }
        (Err(_), None) => {}
    }
});
