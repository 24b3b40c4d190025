//! `request` and `client` as maps whose entries are made when an expression reads them.
//!
//! `request.method == "GET"` then costs a string borrowed from the request header, where a
//! map built up front would copy every header into a hash map (2 µs) for one field. What
//! else a map can do — `size()`, the comprehensions, `==` — works on the whole map, made on
//! first need and kept for the evaluation.

use cel::common::traits::{Container, Indexer, Iterable, Sizer};
use cel::common::types::{self, CelInt, CelMap, CelMapKey, CelString, Type};
use cel::common::value::{CowVal, Val};
use cel::ExecutionError;
use pingora_http::RequestHeader;
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;

/// The entries of a lazy map.
pub(super) trait Fields<'a>: std::fmt::Debug + Send + Sync + Clone + 'a {
    /// The value named `name`; `None` when there is none.
    fn field<'s>(&'s self, name: &str) -> Option<CowVal<'s, 'a>>;
    /// Every name, each once.
    fn names(&self) -> Vec<&'a str>;
}

/// A CEL map (of type `map`) whose values are made on access.
#[derive(Debug)]
pub(super) struct Lazy<'a, F> {
    fields: F,
    whole: OnceLock<CelMap<'a>>,
}

impl<'a, F: Fields<'a>> Lazy<'a, F> {
    pub(super) fn new(fields: F) -> Self {
        Lazy {
            fields,
            whole: OnceLock::new(),
        }
    }

    /// Every entry, made once.
    fn whole(&self) -> &CelMap<'a> {
        self.whole.get_or_init(|| {
            let entries: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = self
                .fields
                .names()
                .into_iter()
                .filter_map(|name| {
                    let value = self.fields.field(name)?.into_owned();
                    Some((CelMapKey::String(CelString::from(name)), value))
                })
                .collect();
            CelMap::from(entries)
        })
    }
}

impl<'a, F: Fields<'a>> Clone for Lazy<'a, F> {
    fn clone(&self) -> Self {
        Lazy::new(self.fields.clone())
    }
}

/// The string a map is indexed with; `Err` for a key of another type, as a map says.
fn name(idx: &dyn Val) -> Result<&str, ExecutionError> {
    match idx.downcast_ref::<CelString>() {
        Some(s) => Ok(s.inner()),
        None => Err(ExecutionError::UnexpectedType {
            got: idx.get_type().name().to_owned(),
            want: "string".to_owned(),
        }),
    }
}

impl<'a, F: Fields<'a>> Indexer for Lazy<'a, F> {
    fn get<'b, 'w>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'w>, ExecutionError>
    where
        Self: 'w,
    {
        let name = name(idx)?;
        self.fields
            .field(name)
            .ok_or_else(|| ExecutionError::no_such_key(name))
    }

    fn steal<'w>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'w>, ExecutionError>
    where
        Self: 'w,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

impl<'a, F: Fields<'a>> Container for Lazy<'a, F> {
    fn contains(&self, key: &dyn Val) -> Result<bool, ExecutionError> {
        Ok(self.fields.field(name(key)?).is_some())
    }
}

impl<'a, F: Fields<'a>> Sizer for Lazy<'a, F> {
    fn size(&self) -> CelInt {
        self.whole().size()
    }
}

impl<'a, F: Fields<'a>> Val for Lazy<'a, F> {
    fn get_type(&self) -> &Type {
        &types::MAP_TYPE
    }

    fn cel_type() -> &'static Type {
        &types::MAP_TYPE
    }

    fn as_indexer<'b, 'w>(&'b self) -> Option<&'b (dyn Indexer + 'w)>
    where
        Self: 'w,
    {
        Some(self)
    }

    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }

    fn as_sizer(&self) -> Option<&dyn Sizer> {
        Some(self)
    }

    fn as_iterable<'b, 'w>(&'b self) -> Option<&'b (dyn Iterable + 'w)>
    where
        Self: 'w,
    {
        let whole: &'b CelMap<'a> = self.whole();
        Some(whole)
    }

    fn equals(&self, other: &dyn Val) -> bool {
        self.whole().equals(other)
    }

    fn clone_as_boxed<'w>(&self) -> Box<dyn Val + 'w>
    where
        Self: 'w,
    {
        Box::new(self.clone())
    }
}

/// `request`: `method`, `path`, `host`, `query` and `headers`.
#[derive(Debug, Clone)]
pub(super) struct Request<'a> {
    req: &'a RequestHeader,
    headers: Lazy<'a, Headers<'a>>,
}

impl<'a> Request<'a> {
    pub(super) fn new(req: &'a RequestHeader) -> Lazy<'a, Request<'a>> {
        Lazy::new(Request {
            req,
            headers: Lazy::new(Headers(req)),
        })
    }
}

/// A string value borrowed for `'a`.
fn text<'s, 'a>(s: Cow<'a, str>) -> CowVal<'s, 'a> {
    CowVal::Owned(Box::new(CelString::from(s)))
}

/// The request's host without its port (the proxy's own reading of it), lower-case.
fn host(req: &RequestHeader) -> Cow<'_, str> {
    let host = crate::proxy::request_host(req).unwrap_or("");
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

impl<'a> Fields<'a> for Request<'a> {
    fn field<'s>(&'s self, name: &str) -> Option<CowVal<'s, 'a>> {
        let req = self.req;
        Some(match name {
            "method" => text(Cow::Borrowed(req.method.as_str())),
            "path" => text(Cow::Borrowed(req.uri.path())),
            "host" => text(host(req)),
            "query" => text(Cow::Borrowed(req.uri.query().unwrap_or(""))),
            "headers" => CowVal::Borrowed(&self.headers),
            _ => return None,
        })
    }

    fn names(&self) -> Vec<&'a str> {
        vec!["method", "path", "host", "query", "headers"]
    }
}

/// `request.headers`: lower-case names; repeated fields joined with ", " (RFC 9110 §5.3);
/// a value that is not visible ASCII is left out.
#[derive(Debug, Clone, Copy)]
pub(super) struct Headers<'a>(&'a RequestHeader);

impl<'a> Fields<'a> for Headers<'a> {
    fn field<'s>(&'s self, name: &str) -> Option<CowVal<'s, 'a>> {
        // Names are stored lower-case; the map's keys are those, so `X-Tag` is not one.
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut values = self
            .0
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok());
        let first = values.next()?;
        let value = match values.next() {
            None => Cow::Borrowed(first),
            Some(second) => {
                let mut joined = format!("{first}, {second}");
                for v in values {
                    joined.push_str(", ");
                    joined.push_str(v);
                }
                Cow::Owned(joined)
            }
        };
        Some(text(value))
    }

    fn names(&self) -> Vec<&'a str> {
        let headers = &self.0.headers;
        headers
            .keys()
            .filter(|k| headers.get_all(*k).iter().any(|v| v.to_str().is_ok()))
            .map(|k| k.as_str())
            .collect()
    }
}

/// `client`: `ip`, the empty string when unknown.
#[derive(Debug, Clone, Copy)]
pub(super) struct Client(pub(super) Option<IpAddr>);

impl<'a> Fields<'a> for Client {
    fn field<'s>(&'s self, name: &str) -> Option<CowVal<'s, 'a>> {
        match name {
            "ip" => Some(text(Cow::Owned(
                self.0.map(|ip| ip.to_string()).unwrap_or_default(),
            ))),
            _ => None,
        }
    }

    fn names(&self) -> Vec<&'a str> {
        vec!["ip"]
    }
}
