//! The client's address: the peer's, or — when the peer is a trusted proxy — the right-most
//! address in `X-Forwarded-For` that is not itself trusted. Never the left-most: a client writes
//! whatever it likes there.

use std::net::IpAddr;

/// An address block, `10.0.0.0/8` or `2001:db8::/32` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad =
            || format!("invalid address block {s:?}: use 10.0.0.0/8, 192.0.2.1 or 2001:db8::/32");
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(bad());
        }
        Ok(Cidr { addr, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `::ffff:10.0.0.1` is `10.0.0.1`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The proxies whose `X-Forwarded-For` is believed (`server.trusted_proxies`).
#[derive(Debug, Clone, Default)]
pub struct Trusted(pub Vec<Cidr>);

impl Trusted {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client address for a connection from `peer` with these `X-Forwarded-For` values
    /// (every header line, in order).
    pub fn client_ip<'a>(&self, peer: IpAddr, xff: impl Iterator<Item = &'a [u8]>) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let lines: Vec<&[u8]> = xff.collect();
        let mut client = peer;
        for line in lines.iter().rev() {
            for entry in line.rsplit(|b| *b == b',') {
                let Some(ip) = parse_entry(entry) else {
                    // Garbage where an address should be: trust nothing to its left.
                    return client;
                };
                client = canonical(ip);
                if !self.contains(client) {
                    return client;
                }
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]:443`, `192.0.2.1:80`.
fn parse_entry(e: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(e).ok()?.trim();
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')?.split(']').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.1.2.3")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.9.9.9")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains(ip("2001:db8:1::1")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn right_most_untrusted() {
        let t = Trusted(vec![Cidr::parse("10.0.0.0/8").unwrap()]);
        let xff = |v: &[&'static str]| v.iter().map(|s| s.as_bytes()).collect::<Vec<_>>();
        // Not from a trusted peer: XFF is ignored.
        assert_eq!(
            t.client_ip(ip("203.0.113.9"), xff(&["1.2.3.4"]).into_iter()),
            ip("203.0.113.9")
        );
        // From a trusted peer: right to left, skipping trusted hops.
        let got = t.client_ip(
            ip("10.0.0.2"),
            xff(&["6.6.6.6, 198.51.100.7, 10.0.0.5"]).into_iter(),
        );
        assert_eq!(got, ip("198.51.100.7"));
        // Several header lines are one list.
        let got = t.client_ip(
            ip("10.0.0.2"),
            xff(&["6.6.6.6", "198.51.100.8:4711"]).into_iter(),
        );
        assert_eq!(got, ip("198.51.100.8"));
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            t.client_ip(ip("10.0.0.2"), xff(&["1.1.1.1, junk"]).into_iter()),
            ip("10.0.0.2")
        );
        // Only trusted hops: the left-most of them.
        assert_eq!(
            t.client_ip(ip("10.0.0.2"), xff(&["10.0.0.9"]).into_iter()),
            ip("10.0.0.9")
        );
        assert_eq!(
            t.client_ip(ip("10.0.0.2"), xff(&["[2001:db8::5]:80"]).into_iter()),
            ip("2001:db8::5")
        );
    }
}
