//! What a rate limit counts by, or a consistent-hash pool hashes: a claim of the verified token,
//! a request header, or the client IP.

use crate::auth::ClaimPath;
use http::HeaderName;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKey {
    /// A claim of the verified token (a claim path): only usable on routes with `auth`.
    Claim(ClaimPath),
    Header(HeaderName),
    Ip,
}

impl RequestKey {
    /// Parse `claim:NAME`, `header:NAME` or `ip`.
    pub fn parse(s: &str) -> Result<RequestKey, String> {
        if s == "ip" {
            return Ok(RequestKey::Ip);
        }
        match s.split_once(':') {
            Some(("claim", c)) if !c.is_empty() => ClaimPath::parse(c).map(RequestKey::Claim),
            Some(("header", h)) if !h.is_empty() => HeaderName::from_bytes(h.as_bytes())
                .map(RequestKey::Header)
                .map_err(|_| format!("invalid header name {h:?}")),
            _ => Err(format!(
                "invalid key {s:?}: use claim:NAME, header:NAME or ip"
            )),
        }
    }
}

impl fmt::Display for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestKey::Claim(c) => write!(f, "claim:{c}"),
            RequestKey::Header(h) => write!(f, "header:{h}"),
            RequestKey::Ip => f.write_str("ip"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_show() {
        for s in [
            "ip",
            "claim:sub",
            "claim:org.id",
            "claim:/a.b",
            "header:x-api-key",
        ] {
            assert_eq!(RequestKey::parse(s).unwrap().to_string(), s);
        }
        for bad in [
            "claim:",
            "claim:a..b",
            "header:",
            "cookie:x",
            "header:bad name",
            "IP",
            "",
        ] {
            assert!(RequestKey::parse(bad).is_err(), "{bad}");
        }
    }
}
