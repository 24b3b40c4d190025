//! Where a token is taken from: the Bearer header, another header, a cookie or a query argument.

use crate::error::AuthError;
use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderName;
use pingora_http::RequestHeader;
use std::borrow::Cow;

/// One place a token may be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>` (scheme matched case-insensitively).
    Bearer,
    /// The whole value of a header.
    Header(HeaderName),
    /// A cookie by name.
    Cookie(String),
    /// A query argument by name.
    Query(String),
}

impl TokenSource {
    /// Parse `bearer`, `header:NAME`, `cookie:NAME` or `query:NAME`.
    pub fn parse(s: &str) -> Result<TokenSource, String> {
        if s == "bearer" {
            return Ok(TokenSource::Bearer);
        }
        let (kind, name) = s.split_once(':').ok_or_else(|| {
            format!(
                "invalid token source {s:?}: use bearer, header:NAME, cookie:NAME or query:NAME"
            )
        })?;
        if name.is_empty() {
            return Err(format!("invalid token source {s:?}: the name is empty"));
        }
        match kind {
            "header" => HeaderName::from_bytes(name.as_bytes())
                .map(TokenSource::Header)
                .map_err(|_| format!("invalid header name {name:?}")),
            "cookie" => Ok(TokenSource::Cookie(name.to_string())),
            "query" => Ok(TokenSource::Query(name.to_string())),
            _ => Err(format!(
                "invalid token source {s:?}: use bearer, header:NAME, cookie:NAME or query:NAME"
            )),
        }
    }

    /// The token this source finds in the request: `None` when the source has none,
    /// `Some(Err)` when something is there but cannot be a token.
    pub fn extract<'r>(&self, req: &'r RequestHeader) -> Option<Result<Cow<'r, str>, AuthError>> {
        match self {
            TokenSource::Bearer => {
                let mut found = None;
                for v in req.headers.get_all(AUTHORIZATION) {
                    let Ok(v) = v.to_str() else {
                        return Some(Err(AuthError::Malformed));
                    };
                    let v = v.trim_start();
                    let Some(space) = v.find(' ') else { continue };
                    let (scheme, rest) = v.split_at(space);
                    if !scheme.eq_ignore_ascii_case("bearer") || rest.trim().is_empty() {
                        continue;
                    }
                    if found.is_some() {
                        return Some(Err(AuthError::Ambiguous));
                    }
                    found = Some(rest.trim());
                }
                found.map(|t| Ok(Cow::Borrowed(t)))
            }
            TokenSource::Header(name) => {
                let mut values = req.headers.get_all(name).iter();
                let v = values.next()?;
                if values.next().is_some() {
                    return Some(Err(AuthError::Ambiguous));
                }
                match v.to_str() {
                    Ok(s) if s.trim().is_empty() => None,
                    Ok(s) => Some(Ok(Cow::Borrowed(s.trim()))),
                    Err(_) => Some(Err(AuthError::Malformed)),
                }
            }
            TokenSource::Cookie(name) => {
                let mut found = None;
                for v in req.headers.get_all(COOKIE) {
                    let Ok(v) = v.to_str() else { continue };
                    for pair in v.split(';') {
                        if let Some((k, val)) = pair.trim().split_once('=') {
                            if k == name && !val.is_empty() {
                                if found.is_some() {
                                    return Some(Err(AuthError::Ambiguous));
                                }
                                found = Some(val.trim_matches('"'));
                            }
                        }
                    }
                }
                found.map(|t| Ok(Cow::Borrowed(t)))
            }
            TokenSource::Query(name) => {
                let q = req.uri.query()?;
                let mut found = None;
                for pair in q.split('&') {
                    if let Some((k, val)) = pair.split_once('=') {
                        if k == name && !val.is_empty() {
                            if found.is_some() {
                                return Some(Err(AuthError::Ambiguous));
                            }
                            found = Some(val);
                        }
                    }
                }
                found.map(|v| percent_decode(v).ok_or(AuthError::Malformed))
            }
        }
    }
}

/// Decode `%XX` escapes; borrows when there are none.
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn got(src: &str, r: &RequestHeader) -> Option<String> {
        TokenSource::parse(src)
            .unwrap()
            .extract(r)
            .map(|t| t.unwrap().into_owned())
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for h in ["Bearer abc", "bearer abc", "BEARER   abc  ", "  bEaReR abc"] {
            assert_eq!(
                got("bearer", &req("/", &[("authorization", h)])).as_deref(),
                Some("abc"),
                "{h}"
            );
        }
        assert_eq!(
            got("bearer", &req("/", &[("authorization", "Basic abc")])),
            None
        );
        assert_eq!(
            got("bearer", &req("/", &[("authorization", "Bearer")])),
            None
        );
        assert_eq!(got("bearer", &req("/", &[])), None);
    }

    #[test]
    fn bearer_values_that_are_not_visible_ascii_are_malformed() {
        for bad in [&b"Bearer a.b\x80c"[..], b"Basic \xff, Bearer a.b.c"] {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            r.append_header("authorization", http::HeaderValue::from_bytes(bad).unwrap())
                .unwrap();
            let got = TokenSource::Bearer.extract(&r);
            assert_eq!(got, Some(Err(AuthError::Malformed)), "{bad:?}");
        }
        // Tabs may stand in a value; only a space ends the scheme.
        let tabs = req("/", &[("authorization", "Bearer \ta.b.c\t")]);
        assert_eq!(got("bearer", &tabs).as_deref(), Some("a.b.c"));
        let tab_only = req("/", &[("authorization", "Bearer\ta.b.c")]);
        assert_eq!(got("bearer", &tab_only), None);
    }

    #[test]
    fn other_sources() {
        let r = req(
            "/p?a=1&apijwt=x.y.z&b=2",
            &[("cookie", "a=b; jwt=c.d.e"), ("x-api-token", " t.o.k ")],
        );
        assert_eq!(got("query:apijwt", &r).as_deref(), Some("x.y.z"));
        assert_eq!(got("cookie:jwt", &r).as_deref(), Some("c.d.e"));
        assert_eq!(got("header:X-Api-Token", &r).as_deref(), Some("t.o.k"));
        assert_eq!(got("query:other", &r), None);
        assert_eq!(got("cookie:other", &r), None);
        let r = req("/p?t=a%2Eb.c", &[]);
        assert_eq!(got("query:t", &r).as_deref(), Some("a.b.c"));
    }

    #[test]
    fn a_second_token_in_the_same_place_is_ambiguous() {
        let amb = |src: &str, r: &RequestHeader| {
            TokenSource::parse(src)
                .unwrap()
                .extract(r)
                .unwrap()
                .unwrap_err()
        };
        let r = req(
            "/?t=a.b.c&t=d.e.f",
            &[
                ("authorization", "Bearer a.b.c"),
                ("authorization", "Bearer d.e.f"),
                ("cookie", "jwt=a.b.c"),
                ("cookie", "x=1; jwt=d.e.f"),
                ("x-tok", "a.b.c"),
                ("x-tok", "d.e.f"),
            ],
        );
        assert_eq!(amb("bearer", &r), AuthError::Ambiguous);
        assert_eq!(amb("query:t", &r), AuthError::Ambiguous);
        assert_eq!(amb("cookie:jwt", &r), AuthError::Ambiguous);
        assert_eq!(amb("header:x-tok", &r), AuthError::Ambiguous);
        // A Basic header next to a Bearer one is not a second token.
        let r = req(
            "/",
            &[
                ("authorization", "Basic eA=="),
                ("authorization", "Bearer a.b.c"),
            ],
        );
        assert_eq!(got("bearer", &r).as_deref(), Some("a.b.c"));
    }

    #[test]
    fn parse_rejects_bad_sources() {
        assert!(TokenSource::parse("bearer").is_ok());
        assert!(TokenSource::parse("query:").is_err());
        assert!(TokenSource::parse("body:x").is_err());
        assert!(TokenSource::parse("header:bad header").is_err());
    }
}
