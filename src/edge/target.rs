//! The canonical request target: one path and one host per request, computed once, before
//! routing, and the very ones the upstream is sent.
//!
//! The gateway must never decide on a different resource than the upstream serves. Upstreams
//! normalise (nginx merges slashes and percent-decodes; servlet containers drop `;params` and
//! walk up on `..;`), so the gateway normalises first, refuses what it cannot make unambiguous,
//! and forwards exactly what it routed.

use std::borrow::Cow;

/// What to do with `%2F` in a path (`server.encoded_slashes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EncodedSlashes {
    /// 400: an upstream that decodes it would see another path than the gateway routed.
    #[default]
    Reject,
    /// Route on the path with `%2F` read as `/`, forward `%2F` unchanged.
    Forward,
}

/// The path rules in force (from the `server` section).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathRules {
    pub encoded_slashes: EncodedSlashes,
    /// `server.path_semicolons: allow`.
    pub allow_semicolons: bool,
}

/// A request target in canonical form.
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    /// The canonical path and the query as received: what the upstream is sent.
    pub path_and_query: Cow<'a, str>,
    /// Length of the path part of `path_and_query`.
    pub path_len: usize,
    /// The path routes are matched on, when it differs from the forwarded path (only with
    /// `encoded_slashes: forward` and a `%2F` in the path).
    pub match_path: Option<String>,
    /// The authority of an absolute-form target (`http://host:port/...`), as received.
    pub authority: Option<&'a str>,
    /// The target was not origin-form: the upstream gets the origin-form one.
    pub rewritten_form: bool,
}

impl Target<'_> {
    /// The canonical path (no query).
    pub fn path(&self) -> &str {
        &self.path_and_query[..self.path_len]
    }

    /// The path routes are matched on.
    pub fn route_path(&self) -> &str {
        self.match_path.as_deref().unwrap_or_else(|| self.path())
    }

    /// True when the upstream must be sent another target than the client sent.
    pub fn changed(&self) -> bool {
        self.rewritten_form || matches!(self.path_and_query, Cow::Owned(_))
    }
}

/// Parse and canonicalise a raw request target (`req.raw_path()`). Errors are the reason for a
/// 400, fixed strings that never echo the input.
pub fn canonical_target(raw: &[u8], rules: PathRules) -> Result<Target<'_>, &'static str> {
    if raw.first() == Some(&b'/') {
        let (path, query) = split_query(raw);
        return finish(raw, path, query, None, false, rules);
    }
    // Absolute form: http(s)://authority[/path][?query]. Anything else (`api/x`, `\api`, `*`,
    // an authority-form CONNECT target, another scheme) is not a resource this gateway serves.
    let lower_starts = |p: &[u8]| raw.len() >= p.len() && raw[..p.len()].eq_ignore_ascii_case(p);
    let rest = if lower_starts(b"http://") {
        &raw[7..]
    } else if lower_starts(b"https://") {
        &raw[8..]
    } else {
        return Err("the request target must be a path (/...) or an absolute http(s) URI");
    };
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority =
        std::str::from_utf8(&rest[..end]).map_err(|_| "invalid host in the request target")?;
    if authority.is_empty() {
        return Err("the absolute URI has no host");
    }
    let after = &rest[end..];
    let (path, query) = split_query(after);
    finish(raw, path, query, Some(authority), true, rules)
}

/// `(path, query with its '?')`, with any fragment cut off.
fn split_query(t: &[u8]) -> (&[u8], &[u8]) {
    let t = match t.iter().position(|b| *b == b'#') {
        Some(i) => &t[..i],
        None => t,
    };
    match t.iter().position(|b| *b == b'?') {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, &[][..]),
    }
}

fn finish<'a>(
    raw: &'a [u8],
    path: &'a [u8],
    query: &'a [u8],
    authority: Option<&'a str>,
    absolute: bool,
    rules: PathRules,
) -> Result<Target<'a>, &'static str> {
    check_query(query)?;
    let canon = canonical_path(path, rules)?;
    let match_path = match (&canon, rules.encoded_slashes) {
        (
            Canon {
                has_encoded_slash: true,
                ..
            },
            EncodedSlashes::Forward,
        ) => {
            let m = slashes_decoded(&canon.path);
            check_dot_segments(&m, rules.allow_semicolons)?;
            Some(m)
        }
        _ => None,
    };
    let path_len = canon.path.len();
    let path_and_query: Cow<'a, str> = match canon.path {
        // Origin form and nothing changed: the target as it came.
        Cow::Borrowed(_) if !absolute && path_len + query.len() == raw.len() => {
            // Checked ASCII by canonical_path and check_query.
            Cow::Borrowed(std::str::from_utf8(&raw[..path_len + query.len()]).unwrap_or("/"))
        }
        p => {
            let mut s = String::with_capacity(p.len() + query.len());
            s.push_str(&p);
            // Checked ASCII by check_query.
            s.push_str(std::str::from_utf8(query).unwrap_or(""));
            Cow::Owned(s)
        }
    };
    Ok(Target {
        path_and_query,
        path_len,
        match_path,
        authority,
        rewritten_form: absolute,
    })
}

/// The query is forwarded as it came, but control bytes, raw non-ASCII and `\` have no place
/// in a request target.
fn check_query(q: &[u8]) -> Result<(), &'static str> {
    if q.iter().any(|b| !(0x21..0x7f).contains(b)) {
        return Err("control characters or raw non-ASCII bytes in the query");
    }
    Ok(())
}

struct Canon<'a> {
    path: Cow<'a, str>,
    has_encoded_slash: bool,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// The output of a canonicalisation pass: borrows the input until the first change.
struct Out<'a> {
    src: &'a [u8],
    /// Bytes of `src` that the output equals so far, while nothing changed.
    same: usize,
    buf: Option<Vec<u8>>,
}

impl<'a> Out<'a> {
    fn new(src: &'a [u8]) -> Self {
        Out {
            src,
            same: 0,
            buf: None,
        }
    }

    /// The input's bytes `at..at + n` are kept as they are.
    fn keep(&mut self, at: usize, n: usize) {
        match &mut self.buf {
            Some(b) => b.extend_from_slice(&self.src[at..at + n]),
            None => self.same = at + n,
        }
    }

    /// Write `bytes` in place of the input read so far up to `at`.
    fn write(&mut self, bytes: &[u8]) {
        let same = self.same;
        let src = self.src;
        self.buf
            .get_or_insert_with(|| {
                let mut v = Vec::with_capacity(src.len());
                v.extend_from_slice(&src[..same]);
                v
            })
            .extend_from_slice(bytes);
    }

    fn last(&self) -> Option<u8> {
        match &self.buf {
            Some(b) => b.last().copied(),
            None if self.same > 0 => Some(self.src[self.same - 1]),
            None => None,
        }
    }

    fn finish(self) -> Cow<'a, str> {
        // Only ASCII is ever kept or written.
        match self.buf {
            None => Cow::Borrowed(std::str::from_utf8(&self.src[..self.same]).unwrap_or("/")),
            Some(b) => Cow::Owned(String::from_utf8(b).unwrap_or_else(|_| "/".into())),
        }
    }
}

/// A path that is already canonical under every rule set, found in one pass: printable ASCII
/// without `%`, `\\` or `;`, no repeated slash, no `.` or `..` segment. Most paths are; the
/// general pass below gives the same answer for them, byte by byte and at several times the
/// cost.
fn plainly_canonical(path: &[u8]) -> bool {
    let mut segment = 0; // length of the current segment
    let mut dots = 0; // how many of its bytes are dots
    let mut prev = 0u8;
    for &b in path {
        match b {
            b'/' => {
                if prev == b'/' || (segment > 0 && segment == dots && dots <= 2) {
                    return false;
                }
                segment = 0;
                dots = 0;
            }
            b'%' | b'\\' | b';' | 0..=0x20 | 0x7f.. => return false,
            b'.' => {
                segment += 1;
                dots += 1;
            }
            _ => segment += 1,
        }
        prev = b;
    }
    !(segment > 0 && segment == dots && dots <= 2)
}

/// Canonicalise a path: decode percent-encoded unreserved characters, upper-case the hex of
/// the other escapes, merge repeated slashes; refuse what an upstream could read differently.
fn canonical_path(path: &[u8], rules: PathRules) -> Result<Canon<'_>, &'static str> {
    if path.first() == Some(&b'/') && plainly_canonical(path) {
        // Only ASCII by the check.
        if let Ok(path) = std::str::from_utf8(path) {
            return Ok(Canon {
                path: Cow::Borrowed(path),
                has_encoded_slash: false,
            });
        }
    }
    if path.is_empty() {
        // Only absolute-form gets here without a path: "http://host" means "/".
        let mut out = Out::new(path);
        out.write(b"/");
        return Ok(Canon {
            path: out.finish(),
            has_encoded_slash: false,
        });
    }
    let mut out = Out::new(path);
    let mut has_encoded_slash = false;
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        match b {
            b'/' => {
                if out.last() == Some(b'/') {
                    out.write(b"");
                } else {
                    out.keep(i, 1);
                }
                i += 1;
            }
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    path.get(i + 1).copied().and_then(hex),
                    path.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err("malformed percent-encoding in the path");
                };
                let v = hi << 4 | lo;
                if is_unreserved(v) {
                    out.write(&[v]);
                } else if v == b'/' {
                    if rules.encoded_slashes == EncodedSlashes::Reject {
                        return Err("encoded slash (%2F) in the path");
                    }
                    has_encoded_slash = true;
                    emit_escape(&mut out, path, i, v);
                } else if v == b'\\' {
                    return Err("encoded backslash (%5C) in the path");
                } else if v == b';' && !rules.allow_semicolons {
                    // An upstream that decodes before it splits off `;params` reads it as `;`.
                    return Err("encoded semicolon (%3B) in the path");
                } else if v < 0x20 || v == 0x7f {
                    return Err("encoded control character in the path");
                } else {
                    emit_escape(&mut out, path, i, v);
                }
                i += 3;
            }
            b'\\' => return Err("backslash in the path"),
            b';' if !rules.allow_semicolons => return Err("semicolon in the path"),
            0..=0x20 | 0x7f => return Err("control character or space in the path"),
            0x80.. => return Err("raw non-ASCII byte in the path (percent-encode it)"),
            _ => {
                out.keep(i, 1);
                i += 1;
            }
        }
    }
    let path = out.finish();
    check_dot_segments(&path, rules.allow_semicolons)?;
    Ok(Canon {
        path,
        has_encoded_slash,
    })
}

/// Keep an escape, its hex in upper case.
fn emit_escape(out: &mut Out<'_>, path: &[u8], i: usize, v: u8) {
    let upper = [
        b'%',
        HEX_UPPER[(v >> 4) as usize],
        HEX_UPPER[(v & 15) as usize],
    ];
    if path[i..i + 3] == upper {
        out.keep(i, 3);
    } else {
        out.write(&upper);
    }
}

/// `%2F` read as `/`, then repeated slashes merged: the path an upstream that decodes sees.
fn slashes_decoded(path: &str) -> String {
    let mut m = String::with_capacity(path.len());
    let mut rest = path;
    while !rest.is_empty() {
        let (piece, n) = if rest.starts_with("%2F") {
            ("/", 3)
        } else {
            let c = rest.chars().next().map_or(1, char::len_utf8);
            (&rest[..c], c)
        };
        if !(piece == "/" && m.ends_with('/')) {
            m.push_str(piece);
        }
        rest = &rest[n..];
    }
    m
}

/// `.` and `..` segments are refused, not resolved: a client that sends them is probing. With
/// semicolons allowed, a segment is judged without its `;params` (servlet containers walk up
/// on `..;x`).
fn check_dot_segments(path: &str, semicolons: bool) -> Result<(), &'static str> {
    let dotty = path.split('/').any(|seg| {
        let seg = if semicolons {
            // `;` or `%3B` (for an upstream that decodes first) starts the parameters.
            let end = seg
                .find(';')
                .into_iter()
                .chain(seg.find("%3B"))
                .min()
                .unwrap_or(seg.len());
            &seg[..end]
        } else {
            seg
        };
        seg == "." || seg == ".."
    });
    if dotty {
        Err("dot segments are not allowed in the path")
    } else {
        Ok(())
    }
}

/// A host in canonical form.
#[derive(Debug, PartialEq, Eq)]
pub struct Host<'a> {
    /// For matching: lower case, no port, no trailing dot.
    pub name: Cow<'a, str>,
    /// For the upstream's `Host`: `name` plus the port as given.
    pub header: Cow<'a, str>,
}

/// Parse and canonicalise a `Host` value or an absolute-form authority.
pub fn canonical_host(raw: &str) -> Result<Host<'_>, &'static str> {
    const BAD: &str = "invalid host";
    let (name, port) = if let Some(rest) = raw.strip_prefix('[') {
        let close = rest.find(']').ok_or(BAD)?;
        let inner = &rest[..close];
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            || !inner.contains(':')
        {
            return Err(BAD);
        }
        let after = &rest[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(BAD),
        };
        (&raw[..close + 2], port)
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        }
    };
    if let Some(p) = port {
        if !p.is_empty() && (p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
            return Err(BAD);
        }
        if !p.is_empty() && p.parse::<u32>().map_or(true, |n| n > 65535) {
            return Err(BAD);
        }
    }
    let bare = if name.starts_with('[') {
        name
    } else {
        let n = name.strip_suffix('.').unwrap_or(name);
        // Labels of 1–63 letters, digits, `-` or `_`, separated by single dots; 253 at most.
        let mut label = 0;
        for b in n.bytes() {
            match b {
                b'.' if label > 0 => label = 0,
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' if label < 63 => label += 1,
                _ => return Err(BAD),
            }
        }
        if label == 0 || n.len() > 253 {
            return Err(BAD);
        }
        n
    };
    let lower = |s: &'_ str| !s.bytes().any(|b| b.is_ascii_uppercase());
    let name: Cow<'_, str> = if lower(bare) {
        Cow::Borrowed(bare)
    } else {
        Cow::Owned(bare.to_ascii_lowercase())
    };
    let header: Cow<'_, str> = match (&name, port) {
        // Unchanged: the value as it came.
        (Cow::Borrowed(n), Some(p)) if n.len() == name_len(raw, p) && !p.is_empty() => {
            Cow::Borrowed(raw)
        }
        (Cow::Borrowed(n), None) if n.len() == raw.len() => Cow::Borrowed(raw),
        (n, Some(p)) if !p.is_empty() => Cow::Owned(format!("{n}:{p}")),
        (n, _) => Cow::Owned(n.to_string()),
    };
    Ok(Host { name, header })
}

/// Length of the host part of `raw` given its port text.
fn name_len(raw: &str, port: &str) -> usize {
    raw.len() - port.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: PathRules = PathRules {
        encoded_slashes: EncodedSlashes::Reject,
        allow_semicolons: false,
    };
    const LAX: PathRules = PathRules {
        encoded_slashes: EncodedSlashes::Forward,
        allow_semicolons: true,
    };

    fn canon(t: &str, rules: PathRules) -> Result<String, &'static str> {
        canonical_target(t.as_bytes(), rules).map(|t| t.path_and_query.into_owned())
    }

    #[test]
    fn canonical_paths() {
        for (raw, want) in [
            ("/", "/"),
            ("/api/x", "/api/x"),
            ("//api/x", "/api/x"),
            ("///api//x//", "/api/x/"),
            ("/%61pi/x", "/api/x"),
            ("/%7Euser/%2d%2E%5f", "/~user/-._"),
            ("/a%20b", "/a%20b"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("/a%25", "/a%25"),
            ("/a%252e%252e/b", "/a%252e%252e/b"),
            ("/a.b/..c/.d", "/a.b/..c/.d"),
            ("/x?y=//z&%61=1", "/x?y=//z&%61=1"),
            ("//x?", "/x?"),
            ("/x#frag", "/x"),
            ("http://h.example/a//b?q=1", "/a/b?q=1"),
            ("HTTP://h.example", "/"),
            ("http://h.example?q", "/?q"),
            ("https://h.example:8443//api/x", "/api/x"),
        ] {
            assert_eq!(canon(raw, STRICT).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn unchanged_targets_are_borrowed() {
        for raw in ["/", "/api/x?q=%2F", "/a%20b/%C3%A9"] {
            let t = canonical_target(raw.as_bytes(), STRICT).unwrap();
            assert!(matches!(t.path_and_query, Cow::Borrowed(_)), "{raw}");
            assert!(!t.changed(), "{raw}");
        }
        assert!(canonical_target(b"//a", STRICT).unwrap().changed());
        assert!(canonical_target(b"http://h/a", STRICT).unwrap().changed());
    }

    #[test]
    fn refused_paths() {
        for raw in [
            "",
            "api/x",
            "\\api\\x",
            "*",
            "example.com:443",
            "ftp://h/x",
            "http://",
            "http:///x",
            "/api%2fx",
            "/%2Fapi/x",
            "/a%5cb",
            "/a\\b",
            "/a%00b",
            "/a%0a",
            "/a%7f",
            "/a\0b",
            "/a\tb",
            "/a b",
            "/a\u{e9}",
            "/a%",
            "/a%4",
            "/a%zz",
            "/a/../b",
            "/..",
            "/a/./b",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a/.%2e",
            "/a;b",
            "/public/..;/api/x",
            "/api;/x",
            "/api%3b/x",
            "/public/..%3B/api/x",
            "/x?a\tb",
        ] {
            assert!(canon(raw, STRICT).is_err(), "{raw:?} accepted");
        }
    }

    #[test]
    fn encoded_slashes_forwarded_and_matched_decoded() {
        let t = canonical_target(b"/api/projects/group%2fname//x", LAX).unwrap();
        assert_eq!(t.path(), "/api/projects/group%2Fname/x");
        assert_eq!(t.route_path(), "/api/projects/group/name/x");
        let t = canonical_target(b"/%2Fapi/x", LAX).unwrap();
        assert_eq!(t.path(), "/%2Fapi/x");
        assert_eq!(t.route_path(), "/api/x");
        // Dot segments hidden behind encoded slashes are still dot segments.
        for raw in ["/a%2F..%2Fb", "/a/%2F.%2Fb", "/x%2F..;y/b"] {
            assert!(canonical_target(raw.as_bytes(), LAX).is_err(), "{raw}");
        }
        // Without %2F there is no separate match path.
        assert_eq!(canonical_target(b"/a/b", LAX).unwrap().match_path, None);
    }

    #[test]
    fn semicolons_when_allowed() {
        assert_eq!(canon("/a;v=1/b", LAX).as_deref(), Ok("/a;v=1/b"));
        assert_eq!(canon("/a%3bv=1/b", LAX).as_deref(), Ok("/a%3Bv=1/b"));
        for raw in [
            "/public/..;/api/x",
            "/a/.;x/b",
            "/a/..;",
            "/a/..%3b/b",
            "/.%3B",
        ] {
            assert!(canon(raw, LAX).is_err(), "{raw}");
        }
    }

    #[test]
    fn absolute_form_authority() {
        let t = canonical_target(b"http://Admin.Example.com./x", STRICT).unwrap();
        assert_eq!(t.authority, Some("Admin.Example.com."));
        assert_eq!(t.path(), "/x");
        assert!(canonical_target(b"/x", STRICT).unwrap().authority.is_none());
    }

    fn host(raw: &str) -> Result<(String, String), &'static str> {
        canonical_host(raw).map(|h| (h.name.into_owned(), h.header.into_owned()))
    }

    #[test]
    fn canonical_hosts() {
        for (raw, name, header) in [
            ("api.example.com", "api.example.com", "api.example.com"),
            (
                "API.Example.com:8443",
                "api.example.com",
                "api.example.com:8443",
            ),
            (
                "admin.example.com.",
                "admin.example.com",
                "admin.example.com",
            ),
            (
                "admin.example.com.:80",
                "admin.example.com",
                "admin.example.com:80",
            ),
            ("127.0.0.1:8080", "127.0.0.1", "127.0.0.1:8080"),
            ("[::1]:8080", "[::1]", "[::1]:8080"),
            ("[::1]", "[::1]", "[::1]"),
            ("[FE80::1]", "[fe80::1]", "[fe80::1]"),
            ("h:", "h", "h"),
            ("my_host.internal", "my_host.internal", "my_host.internal"),
        ] {
            assert_eq!(
                host(raw),
                Ok((name.to_string(), header.to_string())),
                "{raw}"
            );
        }
        let h = canonical_host("api.example.com:8080").unwrap();
        assert!(matches!(h.name, Cow::Borrowed(_)) && matches!(h.header, Cow::Borrowed(_)));
        for raw in [
            "",
            ".",
            "a..b",
            ".a",
            "a.example.com..",
            "a b",
            "a/b",
            "a@b",
            "a:b",
            "a:99999",
            "a:1:2",
            "[::1",
            "[]",
            "[zz::1]",
            "[::1]x",
            "%61.example",
            "exa\u{e9}mple.com",
        ] {
            assert!(host(raw).is_err(), "{raw:?} accepted");
        }
    }

    /// How an upstream like nginx reads a path: every escape decoded, slashes merged.
    fn upstream_view(path: &str) -> Vec<u8> {
        let b = path.as_bytes();
        let mut out: Vec<u8> = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let c = if b[i] == b'%' && i + 2 < b.len() {
                let v = hex(b[i + 1]).unwrap() << 4 | hex(b[i + 2]).unwrap();
                i += 3;
                v
            } else {
                i += 1;
                b[i - 1]
            };
            if !(c == b'/' && out.last() == Some(&b'/')) {
                out.push(c);
            }
        }
        out
    }

    fn longest_prefix(path: &[u8]) -> Option<&'static str> {
        ["/api/v1/", "/api/", "/a.b/", "/~u/", "/"]
            .into_iter()
            .find(|p| path.starts_with(p.as_bytes()))
    }

    /// The general pass alone (what `canonical_path` did before its one-pass check).
    fn general(path: &[u8], rules: PathRules) -> Result<String, &'static str> {
        let mut p = b"//".to_vec(); // never plainly canonical: the general pass runs
        p.extend_from_slice(path);
        canonical_path(&p, rules).map(|c| c.path.into_owned())
    }

    #[test]
    fn the_one_pass_check_knows_canonical_paths() {
        for path in [
            "/",
            "/a",
            "/api/v1/x",
            "/a.b/c",
            "/.well-known/x",
            "/...",
            "/a..",
            "/a/",
        ] {
            assert!(plainly_canonical(path.as_bytes()), "{path}");
        }
        for path in [
            "//", "/a//b", "/.", "/./a", "/..", "/a/..", "/a/../b", "/%61", "/a;b", "/a\\b",
            "/a b", "/\u{e9}",
        ] {
            assert!(!plainly_canonical(path.as_bytes()), "{path}");
        }
    }

    fn path_rules(forward: bool, semis: bool) -> PathRules {
        PathRules {
            encoded_slashes: if forward {
                EncodedSlashes::Forward
            } else {
                EncodedSlashes::Reject
            },
            allow_semicolons: semis,
        }
    }

    proptest::proptest! {
        #[test]
        fn the_one_pass_check_agrees_with_the_general_pass(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                "/", "//", "a", "Z", "-", "~", "_", ".", "..", "...", ";", "%41", "%2F", "\\",
                " ", "\u{e9}", ":", "@", "!", "*",
            ]), 0..10),
            forward in proptest::bool::ANY,
            semis in proptest::bool::ANY,
        ) {
            let path = format!("/{}", pieces.concat());
            let rules = path_rules(forward, semis);
            if plainly_canonical(path.as_bytes()) {
                // The general pass merges the leading "//" it was given back to one "/".
                proptest::prop_assert_eq!(general(path.as_bytes(), rules), Ok(path.clone()));
            }
            let fast = canonical_path(path.as_bytes(), rules).map(|c| c.path.into_owned());
            proptest::prop_assert_eq!(fast, general(path.as_bytes(), rules));
        }

        #[test]
        fn route_of_canonical_is_route_of_what_upstream_reads(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                "/", "//", "api", "v1", "%61", "%41", "%2f", "%2F", "%2e", ".", "..", ";",
                "%3b", "x", "%7e", "~", "u", "%25", "%2561", "a.b", "%20", "%", "%5c", "\\",
                "%00", "%c3%a9", "?", "?a=/api/", "#f",
            ]), 0..8),
            forward in proptest::bool::ANY,
            semis in proptest::bool::ANY,
        ) {
            let raw = format!("/{}", pieces.concat());
            let rules = path_rules(forward, semis);
            if let Ok(t) = canonical_target(raw.as_bytes(), rules) {
                // A fixed point: the upstream's target canonicalises to itself.
                let again = canonical_target(t.path_and_query.as_bytes(), rules).unwrap();
                proptest::prop_assert_eq!(&again.path_and_query, &t.path_and_query);
                // The route matched is the one the upstream's reading of the path selects.
                let view = upstream_view(t.path());
                proptest::prop_assert_eq!(
                    longest_prefix(t.route_path().as_bytes()),
                    longest_prefix(&view),
                    "{} -> {}", raw, t.path()
                );
                // And the upstream never sees a dot segment.
                let dotty = view.split(|b| *b == b'/').any(|s| {
                    let s = if semis { s.split(|b| *b == b';').next().unwrap_or(s) } else { s };
                    s == b"." || s == b".."
                });
                proptest::prop_assert!(!dotty, "{} -> {}", raw, t.path());
            }
        }
    }
}
