//! The revocation file parser on arbitrary text.
//!
//! Properties: nothing panics; a file that parses revokes exactly what it lists (each listed
//! `sub` and `jti` is revoked, and the set written back out as JSON parses to the same set).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::limit::revocation::parse_file;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(set) = parse_file(text) else {
        return;
    };
    let mut sub: Vec<&String> = set.sub.iter().collect();
    let mut jti: Vec<&String> = set.jti.iter().collect();
    sub.sort();
    jti.sort();
    let json = serde_json::json!({ "sub": sub, "jti": jti }).to_string();
    let again = parse_file(&json).expect("the set as JSON parses");
    assert_eq!(again, set, "round trip through JSON");
    let r = portcullis::limit::Revocation::new(set.clone(), None).expect("inline set");
    for s in &set.sub {
        assert!(r.is_revoked(Some(s), None), "sub {s:?} not revoked");
    }
    for j in &set.jti {
        assert!(r.is_revoked(None, Some(j)), "jti {j:?} not revoked");
    }
    if !set.sub.contains("\u{0}fuzz-unlisted") {
        assert!(!r.is_revoked(Some("\u{0}fuzz-unlisted"), None));
    }
});
