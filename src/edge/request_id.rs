//! Request ids: one per request, generated (UUID v4) unless the client's may be trusted and is
//! well formed; sent upstream, returned to the client on every answer, logged.

use http::{HeaderName, HeaderValue};

/// `server.request_id`.
#[derive(Debug, Clone)]
pub struct RequestIdRules {
    pub header: HeaderName,
    pub trust_incoming: bool,
}

impl Default for RequestIdRules {
    fn default() -> Self {
        RequestIdRules {
            header: HeaderName::from_static("x-request-id"),
            trust_incoming: false,
        }
    }
}

impl RequestIdRules {
    /// The request's id: the client's own when it may be trusted and is well formed, else a
    /// new one. Marked never-indexed for HPACK (RFC 7541 §7.1.3): the value is new on every
    /// request, and indexed, every answer on an HTTP/2 connection pushed another id into the
    /// connection's table, where the encoder compared each new one with the ≈ 50 ids already
    /// there (≈ 1.5k instructions an answer).
    pub fn for_request(&self, incoming: Option<&HeaderValue>) -> HeaderValue {
        let mut id = match incoming {
            Some(v) if self.trust_incoming && well_formed(v.as_bytes()) => v.clone(),
            _ => generate(),
        };
        id.set_sensitive(true);
        id
    }
}

/// 1 to 128 of `A-Z a-z 0-9 - _ . :` — what ids from other proxies look like, and nothing
/// that could split a log line or a header.
pub fn well_formed(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A random UUID v4. Ids correlate log lines; they are not secrets, so they come from a
/// per-thread xorshift128+ seeded once from the system RNG (aws-lc's `RAND_bytes` on every
/// request cost ≈ 2.1k instructions more; see docs/performance.md).
pub fn generate() -> HeaderValue {
    use std::cell::Cell;
    fn seed() -> (u64, u64) {
        use aws_lc_rs::rand::SecureRandom;
        let mut b = [0u8; 16];
        if aws_lc_rs::rand::SystemRandom::new().fill(&mut b).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            b = (t ^ (std::process::id() as u128) << 64).to_le_bytes();
        }
        let a = u64::from_le_bytes(b[..8].try_into().unwrap_or_default()) | 1;
        let c = u64::from_le_bytes(b[8..].try_into().unwrap_or_default()) | 1;
        (a, c)
    }
    thread_local! {
        static STATE: Cell<(u64, u64)> = Cell::new(seed());
    }
    let next = || {
        STATE.with(|s| {
            let (mut x, y) = s.get();
            x ^= x << 23;
            x ^= x >> 17;
            x ^= y ^ (y >> 26);
            s.set((y, x));
            x.wrapping_add(y)
        })
    };
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&next().to_le_bytes());
    b[8..].copy_from_slice(&next().to_le_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[(byte >> 4) as usize];
        out[o + 1] = HEX[(byte & 15) as usize];
        o += 2;
    }
    // Owned by the value's bytes themselves: the id is cloned into the upstream request and
    // the answer, and clones of an owned `Bytes` only count references (one made from a copied
    // slice allocates again on its first clone).
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out))
        .expect("hex and dashes are a valid header value")
}

/// W3C Trace Context's header, parsed once: a lookup by `&str` parses the name on every call.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well formed.
pub fn trace_id(traceparent: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(traceparent).ok()?;
    let mut parts = s.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(version, 2)
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0'))
    .then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(well_formed(a.as_bytes()));
        assert!(well_formed(b"req-123:abc.DEF_9"));
        for bad in [&b""[..], b"a b", b"a\r\nb", b"x,y", &[b'a'; 129]] {
            assert!(!well_formed(bad));
        }
    }

    #[test]
    fn a_request_gets_a_new_id_unless_its_own_is_trusted_and_every_id_is_never_indexed() {
        let theirs = HeaderValue::from_static("upstream-proxy-id-1");
        let bad = HeaderValue::from_static("two words");
        let mut rules = RequestIdRules::default();
        for trust in [false, true] {
            rules.trust_incoming = trust;
            for incoming in [None, Some(&theirs), Some(&bad)] {
                let id = rules.for_request(incoming);
                assert!(id.is_sensitive(), "HPACK must not index {id:?}");
                let kept = trust && incoming == Some(&theirs);
                assert_eq!(id == theirs, kept, "{trust} {incoming:?}");
                if !kept {
                    assert_eq!(id.len(), 36);
                }
            }
        }
    }

    #[test]
    fn traceparents() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(
            trace_id(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id(b"junk"), None);
    }
}
