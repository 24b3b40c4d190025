//! What the gateway adds on the way up (forwarded headers, the request id, header rules,
//! rewrite) and on the way down (the request id, CORS, response header rules) — to the
//! upstream's answers and to the gateway's own alike.

use super::cors::Cors;
use super::headers::{HeaderRules, Values};
use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

// Each a parsed name with the case it is written in: Pingora's insert_header (patch 3,
// docs/pingora-patches.md) then neither parses nor allocates the name on every request.
type Named = (HeaderName, &'static str);
pub(crate) const XFF: Named = (
    HeaderName::from_static("x-forwarded-for"),
    "X-Forwarded-For",
);
const XFP: Named = (
    HeaderName::from_static("x-forwarded-proto"),
    "X-Forwarded-Proto",
);
const XFH: Named = (
    HeaderName::from_static("x-forwarded-host"),
    "X-Forwarded-Host",
);
const XRI: Named = (HeaderName::from_static("x-real-ip"), "X-Real-IP");

/// Who sent the request, as the upstream is told.
pub struct Origin {
    /// The connection's peer, and the same as a header value.
    pub peer: Option<(IpAddr, HeaderValue)>,
    /// The client, after `trusted_proxies`.
    pub client: Option<IpAddr>,
    /// The peer is a trusted proxy: its forwarded headers are kept (XFF appended to).
    pub trusted_peer: bool,
    pub tls: bool,
}

/// An address as a header value.
pub fn ip_header(ip: IpAddr) -> HeaderValue {
    // An address's text is ASCII digits, dots, colons and hex: always a valid value.
    match ip {
        // IPv4 written by hand: `Display` goes through the formatting machinery (≈ 2.5k
        // instructions), and every HTTP/2 stream makes its value afresh.
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                n += 1;
            }
            HeaderValue::from_bytes(&text[..n])
        }
        IpAddr::V6(_) => HeaderValue::try_from(ip.to_string()),
    }
    .expect("an IP address is a header value")
}

/// `X-Forwarded-For` (appended with the peer), `-Proto`, `-Host`, `X-Real-IP`. A client's own
/// copies are replaced unless it is a trusted proxy.
pub fn forwarded(up: &mut RequestHeader, o: &Origin) -> pingora_core::Result<()> {
    let xff = match &o.peer {
        Some((_, p)) if o.trusted_peer => {
            let before: Vec<&str> = up
                .headers
                .get_all(&XFF.0)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            Some(if before.is_empty() {
                p.clone()
            } else {
                let joined = format!("{}, {}", before.join(", "), p.to_str().unwrap_or(""));
                HeaderValue::try_from(joined).map_err(|e| {
                    pingora_core::Error::because(
                        pingora_core::ErrorType::InternalError,
                        "joining X-Forwarded-For",
                        e,
                    )
                })?
            })
        }
        Some((_, p)) => Some(p.clone()),
        None => None,
    };
    up.remove_header(&XFF.0);
    let peer_ip = o.peer.as_ref().map(|(ip, _)| *ip);
    let real_ip = match (o.client, &xff) {
        (Some(c), Some(v)) if Some(c) == peer_ip && !o.trusted_peer => Some(v.clone()),
        (Some(c), _) => Some(ip_header(c)),
        (None, _) => None,
    };
    if let Some(v) = xff {
        up.insert_header(XFF, v)?;
    }
    if !(o.trusted_peer && up.headers.contains_key(&XFP.0)) {
        const HTTPS: HeaderValue = HeaderValue::from_static("https");
        const HTTP: HeaderValue = HeaderValue::from_static("http");
        // Static values: nothing copied or allocated per request.
        up.insert_header(XFP, if o.tls { HTTPS } else { HTTP })?;
    }
    if !(o.trusted_peer && up.headers.contains_key(&XFH.0)) {
        match up.headers.get(http::header::HOST).cloned() {
            Some(h) => up.insert_header(XFH, h)?,
            None => {
                up.remove_header(&XFH.0);
            }
        }
    }
    match real_ip {
        Some(c) => up.insert_header(XRI, c)?,
        None => {
            up.remove_header(&XRI.0);
        }
    }
    Ok(())
}

/// `/api/v1/x?q` with prefix `/api/v1/` and rewrite `/v1/` → `/v1/x?q`: exactly the matched
/// prefix is replaced (a rewrite ends in `/` exactly when its prefix does; `check` says so).
pub fn rewritten(path_and_query: &str, prefix: &str, rewrite: &str) -> String {
    let rest = path_and_query.get(prefix.len()..).unwrap_or("");
    let mut out = String::with_capacity(rewrite.len() + rest.len());
    out.push_str(rewrite);
    out.push_str(rest);
    out
}

/// What every answer to a request gets.
pub struct Decoration<'a> {
    pub request_id: Option<(&'a HeaderName, &'a HeaderValue)>,
    /// The route's CORS rules and the request's `Origin`.
    pub cors: Option<(&'a Cors, &'a [u8])>,
    pub rules: Option<(&'a HeaderRules, Values<'a>)>,
}

impl Decoration<'_> {
    pub fn apply(&self, resp: &mut ResponseHeader) {
        // Room for ours and the two fields Pingora adds when it writes the header (Date,
        // Connection): each of the response's maps grows once at most.
        let rules = self.rules.as_ref().map_or(0, |(r, _)| r.set.len());
        let cors = if self.cors.is_some() { 4 } else { 0 };
        resp.reserve(usize::from(self.request_id.is_some()) + cors + rules + 2);
        if let Some((name, id)) = self.request_id {
            let _ = resp.insert_header(name.clone(), id.clone());
        }
        if let Some((cors, origin)) = self.cors {
            cors.decorate(origin, resp);
        }
        if let Some((rules, values)) = &self.rules {
            for h in &rules.remove {
                resp.remove_header(h);
            }
            // A value that cannot be made is left out: the answer is already decided.
            if let Ok(set) = rules.render(values) {
                for (h, v) in set {
                    let _ = resp.insert_header(h, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites() {
        assert_eq!(rewritten("/api/v1/x?q=1", "/api/v1/", "/v1/"), "/v1/x?q=1");
        assert_eq!(rewritten("/api/v1/", "/api/v1/", "/v1/"), "/v1/");
        assert_eq!(rewritten("/api/v1/x", "/api/v1/", "/"), "/x");
        assert_eq!(rewritten("/api/x", "/api", "/v2"), "/v2/x");
        assert_eq!(rewritten("/apix", "/api", "/v2"), "/v2x");
        assert_eq!(rewritten("/api?q", "/api", "/v2"), "/v2?q");
    }

    #[test]
    fn a_named_header_must_be_the_same_name_but_for_case() {
        // Pingora patch 3: a parsed name with its wire case is taken as it is, so one that
        // would put another name on the wire than in the map must be refused.
        let mut up = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(up
            .insert_header((HeaderName::from_static("x-a"), "X-B"), "v")
            .is_err());
        assert!(up.headers.is_empty());
        up.insert_header(XRI, "192.0.2.1").unwrap();
        assert_eq!(up.headers["x-real-ip"], "192.0.2.1");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "192.0.2.255",
            "255.255.255.255",
            "10.0.100.9",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header(ip).to_str().unwrap(), ip.to_string());
        }
    }

    proptest::proptest! {
        #[test]
        fn every_ipv4_address_is_written_as_display_writes_it(bits: u32) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(bits));
            let written = ip_header(ip);
            proptest::prop_assert_eq!(written.to_str().unwrap(), ip.to_string());
        }
    }

    fn peer(ip: &str) -> (IpAddr, HeaderValue) {
        let ip: IpAddr = ip.parse().unwrap();
        (ip, ip_header(ip))
    }

    #[test]
    fn forwarded_headers() {
        let mut up = RequestHeader::build("GET", b"/", None).unwrap();
        up.insert_header("host", "api.example.com").unwrap();
        up.insert_header("x-forwarded-for", "6.6.6.6").unwrap();
        up.insert_header("x-forwarded-proto", "gopher").unwrap();
        let o = Origin {
            peer: Some(peer("198.51.100.1")),
            client: Some("198.51.100.1".parse().unwrap()),
            trusted_peer: false,
            tls: true,
        };
        forwarded(&mut up, &o).unwrap();
        assert_eq!(up.headers["x-forwarded-for"], "198.51.100.1");
        assert_eq!(up.headers["x-forwarded-proto"], "https");
        assert_eq!(up.headers["x-forwarded-host"], "api.example.com");
        assert_eq!(up.headers["x-real-ip"], "198.51.100.1");
        // On the wire in their usual case, each once.
        let mut wire = Vec::new();
        up.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        for line in [
            "X-Forwarded-For: 198.51.100.1\r\n",
            "X-Forwarded-Proto: https\r\n",
            "X-Forwarded-Host: api.example.com\r\n",
            "X-Real-IP: 198.51.100.1\r\n",
        ] {
            assert_eq!(wire.matches(line).count(), 1, "{line:?} in {wire:?}");
        }
        assert!(
            !wire.contains("6.6.6.6") && !wire.contains("gopher"),
            "{wire}"
        );

        let mut up = RequestHeader::build("GET", b"/", None).unwrap();
        up.insert_header("x-forwarded-for", "203.0.113.5").unwrap();
        up.insert_header("x-forwarded-proto", "https").unwrap();
        let o = Origin {
            peer: Some(peer("10.0.0.2")),
            client: Some("203.0.113.5".parse().unwrap()),
            trusted_peer: true,
            tls: false,
        };
        forwarded(&mut up, &o).unwrap();
        assert_eq!(up.headers["x-forwarded-for"], "203.0.113.5, 10.0.0.2");
        assert_eq!(up.headers["x-forwarded-proto"], "https");
        assert_eq!(up.headers["x-real-ip"], "203.0.113.5");
    }
}
