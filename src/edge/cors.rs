//! CORS: preflights answered by the gateway (a browser never sends the token on them), and the
//! `Access-Control-Allow-*` headers on every answer to an allowed origin — the gateway's own
//! 401/403/429 included, or the browser hides the error from the application.

use http::{HeaderValue, Method};
use pingora_http::{RequestHeader, ResponseHeader};

/// A route's compiled `cors`.
#[derive(Debug, Clone)]
pub struct Cors {
    any_origin: bool,
    exact: Vec<String>,
    /// `https://*.example.com` as (`https://`, `.example.com`).
    wildcard: Vec<(String, String)>,
    pub methods: Vec<Method>,
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    pub credentials: bool,
    max_age: HeaderValue,
}

/// What a request asks of CORS.
pub enum Ask<'a> {
    /// Not a cross-origin request (no `Origin`).
    None,
    /// `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
    Preflight {
        origin: &'a [u8],
        method: Method,
    },
    Actual {
        origin: &'a [u8],
    },
}

pub fn ask(req: &RequestHeader) -> Ask<'_> {
    let Some(origin) = req.headers.get(http::header::ORIGIN) else {
        return Ask::None;
    };
    let acrm = req.headers.get(http::header::ACCESS_CONTROL_REQUEST_METHOD);
    match acrm.and_then(|m| Method::from_bytes(m.as_bytes()).ok()) {
        Some(method) if req.method == Method::OPTIONS => Ask::Preflight {
            origin: origin.as_bytes(),
            method,
        },
        _ => Ask::Actual {
            origin: origin.as_bytes(),
        },
    }
}

impl Cors {
    /// Build from the config's lists; errors are messages for the field named first.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        origins: &[String],
        methods: &[String],
        headers: &[String],
        expose: &[String],
        credentials: bool,
        max_age: std::time::Duration,
    ) -> Result<Cors, (&'static str, String)> {
        let mut c = Cors {
            any_origin: false,
            exact: Vec::new(),
            wildcard: Vec::new(),
            methods: Vec::new(),
            allow_methods: HeaderValue::from_static(""),
            allow_headers: None,
            expose_headers: None,
            credentials,
            max_age: HeaderValue::from(max_age.as_secs()),
        };
        if origins.is_empty() {
            return Err(("origins", "list the allowed origins, or [\"*\"]".into()));
        }
        for o in origins {
            if o == "*" {
                c.any_origin = true;
            } else if let Some((scheme, rest)) = o.split_once("://*.") {
                c.wildcard
                    .push((format!("{scheme}://"), format!(".{rest}")));
            } else if o.contains("://") && !o.ends_with('/') && !o.contains('*') {
                c.exact.push(o.clone());
            } else {
                return Err((
                    "origins",
                    format!("{o:?}: an origin is scheme://host[:port] (no path), https://*.domain, or *"),
                ));
            }
        }
        if c.any_origin && credentials {
            return Err((
                "credentials",
                "browsers refuse credentials with Access-Control-Allow-Origin: *: list the origins"
                    .into(),
            ));
        }
        for m in methods {
            match Method::from_bytes(m.as_bytes()) {
                Ok(method) if m.bytes().all(|b| b.is_ascii_uppercase()) => c.methods.push(method),
                _ => {
                    return Err((
                        "methods",
                        format!("invalid method {m:?} (upper case, like GET)"),
                    ))
                }
            }
        }
        if c.methods.is_empty() {
            c.methods = vec![Method::GET, Method::HEAD, Method::POST];
        }
        let join = |v: &[String]| v.join(", ");
        let list: Vec<&str> = c.methods.iter().map(Method::as_str).collect();
        c.allow_methods =
            HeaderValue::from_str(&list.join(", ")).map_err(|_| ("methods", "invalid".into()))?;
        let header_list = |field: &'static str,
                           v: &[String]|
         -> Result<Option<HeaderValue>, (&'static str, String)> {
            if v.is_empty() {
                return Ok(None);
            }
            if let Some(bad) = v
                .iter()
                .find(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err())
            {
                return Err((field, format!("invalid header name {bad:?}")));
            }
            Ok(Some(
                HeaderValue::from_str(&join(v)).map_err(|_| (field, "invalid".to_string()))?,
            ))
        };
        c.allow_headers = header_list("headers", headers)?;
        c.expose_headers = header_list("expose_headers", expose)?;
        Ok(c)
    }

    pub fn allows(&self, origin: &[u8]) -> bool {
        let Ok(o) = std::str::from_utf8(origin) else {
            return false;
        };
        self.any_origin
            || self.exact.iter().any(|e| e.eq_ignore_ascii_case(o))
            || self.wildcard.iter().any(|(scheme, suffix)| {
                o.len() > scheme.len() + suffix.len()
                    && o[..scheme.len()].eq_ignore_ascii_case(scheme)
                    && o[o.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && o[scheme.len()..o.len() - suffix.len()]
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            })
    }

    fn allow_origin(&self, origin: &[u8]) -> HeaderValue {
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            HeaderValue::from_bytes(origin).unwrap_or_else(|_| HeaderValue::from_static("null"))
        }
    }

    /// The answer to a preflight: 204; the `Allow-*` headers only for an allowed origin and
    /// method.
    pub fn preflight(&self, origin: &[u8], method: &Method) -> ResponseHeader {
        let mut h = ResponseHeader::build(204, Some(8)).expect("valid status");
        let _ = h.insert_header(
            http::header::VARY,
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        );
        if self.allows(origin) && self.methods.contains(method) {
            let _ = h.insert_header(
                http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.allow_origin(origin),
            );
            let _ = h.insert_header(
                http::header::ACCESS_CONTROL_ALLOW_METHODS,
                self.allow_methods.clone(),
            );
            if let Some(v) = &self.allow_headers {
                let _ = h.insert_header(http::header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
            }
            if self.credentials {
                let _ = h.insert_header(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
            }
            let _ = h.insert_header(http::header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        }
        h
    }

    /// Headers for any answer to an actual request from `origin`.
    pub fn decorate(&self, origin: &[u8], resp: &mut ResponseHeader) {
        let _ = resp.append_header(http::header::VARY, "Origin");
        if !self.allows(origin) {
            return;
        }
        let _ = resp.insert_header(
            http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        );
        if self.credentials {
            let _ = resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
        }
        if let Some(v) = &self.expose_headers {
            let _ = resp.insert_header(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Cors::new(
            &s(origins),
            &s(&["GET", "POST"]),
            &s(&["Authorization"]),
            &s(&["X-Request-Id"]),
            credentials,
            Duration::from_secs(600),
        )
        .unwrap()
    }

    #[test]
    fn origins() {
        let c = cors(&["https://app.example.com", "https://*.example.com"], true);
        assert!(c.allows(b"https://app.example.com"));
        assert!(c.allows(b"https://a.b.example.com"));
        assert!(!c.allows(b"https://example.com"));
        assert!(!c.allows(b"https://evil.com/.example.com"));
        assert!(!c.allows(b"http://app.example.com"));
        assert!(!c.allows(b"https://app.example.com.evil.com"));
        assert!(cors(&["*"], false).allows(b"https://anything.test"));
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let e = Cors::new(&s(&["*"]), &[], &[], &[], true, Duration::ZERO).unwrap_err();
        assert_eq!(e.0, "credentials");
        assert!(Cors::new(
            &s(&["app.example.com"]),
            &[],
            &[],
            &[],
            false,
            Duration::ZERO
        )
        .is_err());
    }

    #[test]
    fn preflight_answers() {
        let c = cors(&["https://app.example.com"], true);
        let h = c.preflight(b"https://app.example.com", &Method::POST);
        assert_eq!(h.status, 204);
        assert_eq!(
            h.headers["access-control-allow-origin"],
            "https://app.example.com"
        );
        assert_eq!(h.headers["access-control-allow-methods"], "GET, POST");
        assert_eq!(h.headers["access-control-allow-headers"], "Authorization");
        assert_eq!(h.headers["access-control-allow-credentials"], "true");
        assert_eq!(h.headers["access-control-max-age"], "600");
        let h = c.preflight(b"https://evil.test", &Method::POST);
        assert!(h.headers.get("access-control-allow-origin").is_none());
        let h = c.preflight(b"https://app.example.com", &Method::DELETE);
        assert!(h.headers.get("access-control-allow-origin").is_none());
    }
}
