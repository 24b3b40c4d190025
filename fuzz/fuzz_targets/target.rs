//! The canonical request target and host (dot segments, escapes, slashes), on arbitrary
//! bytes, under every combination of the path rules.
//!
//! Properties, checked by decoding the result independently: an accepted path starts with
//! `/`, is printable ASCII, has no empty segment and, with every escape decoded, no `.` or
//! `..` segment (nor one hidden before `;params` when semicolons are allowed), no backslash
//! and no control byte; it names the same resource as the input (equal once both are fully
//! decoded and repeated slashes merged); canonicalising it again changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::edge::target::{canonical_host, canonical_target, EncodedSlashes, PathRules};

fn decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fn merge_slashes(s: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    for &b in s {
        if !(b == b'/' && out.last() == Some(&b'/')) {
            out.push(b);
        }
    }
    out
}

fn no_dot_segments(decoded: &[u8], semicolons: bool) -> bool {
    decoded.split(|b| *b == b'/').all(|seg| {
        let seg = if semicolons {
            seg.split(|b| *b == b';').next().unwrap_or_default()
        } else {
            seg
        };
        seg != b"." && seg != b".."
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let rules = PathRules {
        encoded_slashes: if flags & 1 == 0 {
            EncodedSlashes::Reject
        } else {
            EncodedSlashes::Forward
        },
        allow_semicolons: flags & 2 != 0,
    };
    if let Ok(t) = canonical_target(raw, rules) {
        let path = t.path().as_bytes();
        assert!(path.starts_with(b"/"), "path {path:?}");
        assert!(
            path.iter().all(|b| (0x21..0x7f).contains(b)),
            "unprintable {path:?}"
        );
        assert!(
            !path.windows(2).any(|w| w == b"//"),
            "empty segment in {path:?}"
        );
        let decoded = decode(path);
        // `%2F` forwarded as it came: judged as the upstream that decodes it sees it.
        let decoded_merged = merge_slashes(&decoded);
        assert!(
            no_dot_segments(&decoded_merged, rules.allow_semicolons),
            "dot segment in {path:?} from {raw:?}"
        );
        assert!(!decoded.contains(&b'\\'), "backslash in {path:?}");
        assert!(
            !decoded.iter().any(|b| *b < 0x20 || *b == 0x7f),
            "control byte in {path:?}"
        );
        // The same resource as the input.
        let input_path = if raw.first() == Some(&b'/') {
            raw
        } else {
            // absolute form: skip scheme and authority
            let rest = &raw[raw.iter().position(|b| *b == b':').map_or(0, |i| i + 3)..];
            &rest[rest
                .iter()
                .position(|b| matches!(b, b'/' | b'?' | b'#'))
                .unwrap_or(rest.len())..]
        };
        let input_path = &input_path[..input_path
            .iter()
            .position(|b| matches!(b, b'?' | b'#'))
            .unwrap_or(input_path.len())];
        let want = merge_slashes(&decode(input_path));
        let want: &[u8] = if want.is_empty() { b"/" } else { &want };
        assert_eq!(
            merge_slashes(&decoded),
            want,
            "{raw:?} became {path:?}: another resource"
        );
        // Idempotent.
        let again = canonical_target(t.path_and_query.as_bytes(), rules)
            .expect("a canonical target is accepted again");
        assert_eq!(again.path_and_query, t.path_and_query, "not idempotent");
        assert!(!again.changed(), "a canonical target changed again");
    }
    if let Ok(text) = std::str::from_utf8(raw) {
        if let Ok(h) = canonical_host(text) {
            assert!(
                !h.name.ends_with('.'),
                "host {:?} keeps its trailing dot",
                h.name
            );
            assert_eq!(h.name.to_ascii_lowercase(), h.name, "host not lower case");
            let again = canonical_host(&h.header).expect("a canonical host is accepted again");
            assert_eq!(again.name, h.name);
        }
    }
});
