//! Header rules of a route: values set from templates (`{claim.NAME}`, `{header.NAME}`,
//! `{client_ip}`, `{request_id}`, and plain text), headers removed.

use crate::auth::Claims;
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Claim(String),
    Header(HeaderName),
    ClientIp,
    RequestId,
}

/// A compiled header value.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Part>);

/// What a template may read.
pub struct Values<'a> {
    pub claims: Option<&'a Claims>,
    pub req: &'a RequestHeader,
    pub client_ip: Option<IpAddr>,
    pub request_id: Option<&'a HeaderValue>,
}

/// Why a value could not be made.
#[derive(Debug, PartialEq, Eq)]
pub enum Missing {
    /// A claim or header the template names is absent: the header is not set.
    Absent,
    /// The value would hold control characters: the request is refused.
    Invalid,
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{s:?}: unclosed {{"))?
                + open;
            let name = &rest[open + 1..close];
            parts.push(match name {
                "client_ip" => Part::ClientIp,
                "request_id" => Part::RequestId,
                n if n.starts_with("claim.") && n.len() > 6 => Part::Claim(n[6..].to_string()),
                n if n.starts_with("header.") => Part::Header(
                    HeaderName::from_bytes(&n.as_bytes()[7..])
                        .map_err(|_| format!("{s:?}: invalid header name in {{{n}}}"))?,
                ),
                n => {
                    return Err(format!(
                        "{s:?}: unknown {{{n}}} (use {{claim.NAME}}, {{header.NAME}}, {{client_ip}} or {{request_id}})"
                    ))
                }
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if let Some(Part::Text(t)) = parts
            .iter()
            .find(|p| matches!(p, Part::Text(t) if HeaderValue::from_str(t).is_err()))
        {
            return Err(format!("{t:?} is not a valid header value"));
        }
        Ok(Template(parts))
    }

    pub fn render(&self, v: &Values<'_>) -> Result<HeaderValue, Missing> {
        if let [Part::Text(t)] = self.0.as_slice() {
            return HeaderValue::from_str(t).map_err(|_| Missing::Invalid);
        }
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::ClientIp => out.push_str(&v.client_ip.ok_or(Missing::Absent)?.to_string()),
                Part::RequestId => out.push_str(
                    v.request_id
                        .and_then(|r| r.to_str().ok())
                        .ok_or(Missing::Absent)?,
                ),
                Part::Header(h) => {
                    let value = v.req.headers.get(h).ok_or(Missing::Absent)?;
                    out.push_str(value.to_str().map_err(|_| Missing::Invalid)?);
                }
                Part::Claim(c) => match v.claims.and_then(|cl| cl.get(c)).ok_or(Missing::Absent)? {
                    serde_json::Value::String(s) => out.push_str(s),
                    other => out.push_str(&other.to_string()),
                },
            }
        }
        HeaderValue::from_str(&out).map_err(|_| Missing::Invalid)
    }
}

/// `request_headers` / `response_headers` of a route.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    pub set: Vec<(HeaderName, Template)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// The values to set; `Err(Missing::Invalid)` when one would be invalid (the request is
    /// refused).
    pub fn render(&self, v: &Values<'_>) -> Result<Vec<(HeaderName, HeaderValue)>, Missing> {
        let mut out = Vec::with_capacity(self.set.len());
        for (name, t) in &self.set {
            match t.render(v) {
                Ok(value) => out.push((name.clone(), value)),
                Err(Missing::Absent) => {}
                Err(Missing::Invalid) => return Err(Missing::Invalid),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-in", "abc").unwrap();
        let claims = Claims(serde_json::from_str(r#"{"tenant":"t1","n":3,"bad":"a\nb"}"#).unwrap());
        let rid = HeaderValue::from_static("rid-1");
        let v = Values {
            claims: Some(&claims),
            req: &req,
            client_ip: Some("192.0.2.1".parse().unwrap()),
            request_id: Some(&rid),
        };
        let r = |s: &str| Template::parse(s).unwrap().render(&v);
        assert_eq!(r("plain").unwrap(), "plain");
        assert_eq!(r("{claim.tenant}/{claim.n}").unwrap(), "t1/3");
        assert_eq!(
            r("{header.x-in}|{client_ip}|{request_id}").unwrap(),
            "abc|192.0.2.1|rid-1"
        );
        assert_eq!(r("{claim.missing}"), Err(Missing::Absent));
        assert_eq!(r("{header.x-missing}"), Err(Missing::Absent));
        assert_eq!(r("{claim.bad}"), Err(Missing::Invalid));
        for bad in ["{nope}", "{claim.}", "{header.a b}", "open {", "a\nb"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
