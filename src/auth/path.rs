//! Claim paths: where in a token's payload a value is.
//!
//! - `sub`: a top-level claim.
//! - `realm_access.roles`: dots walk into objects (and a segment of digits indexes an array),
//!   so a dotted name is always a path, never a top-level key spelt with dots.
//! - `/https:~1~1example.com~1roles`: a name starting with `/` is an RFC 6901 JSON Pointer, for
//!   claim names that contain dots or slashes (Auth0's namespaced claims): `~1` is `/`, `~0` is
//!   `~`.
//!
//! Compiled once at load; a lookup walks borrowed segments and allocates nothing.

use serde_json::{Map, Value};
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct ClaimPath {
    /// As written in the configuration (what logs, `check` and `explain` show).
    source: String,
    segments: Box<[String]>,
}

impl ClaimPath {
    /// Parse a claim path; `Err` says what is wrong with it.
    pub fn parse(s: &str) -> Result<ClaimPath, String> {
        if s.is_empty() {
            return Err("empty claim name".into());
        }
        let segments: Vec<String> = if let Some(pointer) = s.strip_prefix('/') {
            pointer
                .split('/')
                .map(unescape_pointer)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("invalid JSON pointer {s:?}: {e}"))?
        } else {
            if s.split('.').any(str::is_empty) {
                return Err(format!(
                    "invalid claim path {s:?}: empty segment (for a claim whose name has dots, write the JSON pointer {:?})",
                    pointer_for(s)
                ));
            }
            s.split('.').map(str::to_owned).collect()
        };
        Ok(ClaimPath {
            source: s.to_owned(),
            segments: segments.into_boxed_slice(),
        })
    }

    /// A path of one top-level claim, whatever its name holds.
    pub fn top(name: &str) -> ClaimPath {
        ClaimPath {
            source: name.to_owned(),
            segments: Box::new([name.to_owned()]),
        }
    }

    /// The value at this path, if every step exists.
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.segments.split_first()?;
        let mut v = claims.get(first.as_str())?;
        for seg in rest {
            v = match v {
                Value::Object(m) => m.get(seg.as_str())?,
                Value::Array(a) => a.get(index(seg)?)?,
                _ => return None,
            };
        }
        Some(v)
    }

    /// As written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// A dotted path one of whose steps looks like part of a URL (`https://example.com/roles`
    /// walks `https://example` → `com/roles`): almost surely a namespaced claim name meant
    /// whole. The warning `check` prints, with the pointer to write instead.
    pub fn suspicious(&self) -> Option<String> {
        if self.source.starts_with('/') || self.segments.len() < 2 {
            return None;
        }
        self.segments
            .iter()
            .any(|s| s.contains('/') || s.contains(':'))
            .then(|| {
                format!(
                    "{:?} is read as a path into objects ({}); for one claim whose name has dots, write the JSON pointer {:?}",
                    self.source,
                    self.segments.join(" → "),
                    pointer_for(&self.source)
                )
            })
    }
}

/// Compile a configured claim path: an error for one that cannot be, a warning for one that
/// is probably a namespaced claim name read as a path.
pub fn compile(ctx: &crate::config::Ctx, field: impl Into<String>, s: &str) -> Option<ClaimPath> {
    let field = field.into();
    match ClaimPath::parse(s) {
        Ok(p) => {
            if let Some(w) = p.suspicious() {
                ctx.warn(format!("{field}: {w}"));
            }
            Some(p)
        }
        Err(e) => {
            ctx.error(field, e);
            None
        }
    }
}

/// The JSON pointer naming the top-level claim `name`.
pub fn pointer_for(name: &str) -> String {
    format!("/{}", name.replace('~', "~0").replace('/', "~1"))
}

fn unescape_pointer(seg: &str) -> Result<String, String> {
    let mut out = String::with_capacity(seg.len());
    let mut chars = seg.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('~'),
            Some('1') => out.push('/'),
            _ => return Err("`~` must be followed by 0 or 1".into()),
        }
    }
    Ok(out)
}

/// An array index: digits only, no leading zero (RFC 6901 §4).
fn index(seg: &str) -> Option<usize> {
    let b = seg.as_bytes();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) || (b.len() > 1 && b[0] == b'0') {
        return None;
    }
    seg.parse().ok()
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl fmt::Debug for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims() -> Map<String, Value> {
        match json!({
            "sub": "alice",
            "realm_access": {"roles": ["staff", "eng"]},
            "resource_access": {"api": {"roles": ["read"]}},
            "https://example.com/roles": ["admin"],
            "a.b": 1,
            "list": [{"id": 7}, {"id": 8}],
            "t~x": true,
        }) {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn dotted_paths_walk_objects_and_arrays() {
        let c = claims();
        let at = |p: &str| ClaimPath::parse(p).unwrap().lookup(&c).cloned();
        assert_eq!(at("sub"), Some(json!("alice")));
        assert_eq!(at("realm_access.roles"), Some(json!(["staff", "eng"])));
        assert_eq!(at("resource_access.api.roles"), Some(json!(["read"])));
        assert_eq!(at("list.1.id"), Some(json!(8)));
        assert_eq!(at("list.01.id"), None, "no leading zeros");
        assert_eq!(at("list.x"), None);
        assert_eq!(at("sub.x"), None, "a string has no members");
        assert_eq!(at("missing.x"), None);
        // A dotted name is a path, never a top-level key with dots in it.
        assert_eq!(at("a.b"), None);
    }

    #[test]
    fn pointers_name_claims_with_dots_and_slashes() {
        let c = claims();
        let at = |p: &str| ClaimPath::parse(p).unwrap().lookup(&c).cloned();
        assert_eq!(at("/https:~1~1example.com~1roles"), Some(json!(["admin"])));
        assert_eq!(at("/a.b"), Some(json!(1)));
        assert_eq!(at("/realm_access/roles/0"), Some(json!("staff")));
        assert_eq!(at("/t~0x"), Some(json!(true)));
        assert_eq!(
            pointer_for("https://example.com/roles"),
            "/https:~1~1example.com~1roles"
        );
        assert!(ClaimPath::parse("/bad~2").is_err());
        assert!(ClaimPath::parse("/bad~").is_err());
    }

    #[test]
    fn bad_paths_and_warnings() {
        for bad in ["", "a..b", ".a", "a."] {
            assert!(ClaimPath::parse(bad).is_err(), "{bad:?}");
        }
        let p = ClaimPath::parse("https://example.com/roles").unwrap();
        let w = p.suspicious().unwrap();
        assert!(w.contains("/https:~1~1example.com~1roles"), "{w}");
        assert!(ClaimPath::parse("realm_access.roles")
            .unwrap()
            .suspicious()
            .is_none());
        assert!(ClaimPath::parse("/https:~1~1x")
            .unwrap()
            .suspicious()
            .is_none());
    }
}
