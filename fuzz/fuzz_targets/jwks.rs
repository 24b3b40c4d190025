//! The JWK/JWKS parser (a key file's form and an identity provider's published form) and
//! the PEM public-key parser, on arbitrary text.
//!
//! Properties: nothing panics; the lenient form (remote documents) accepts everything the
//! strict form (files) accepts, with the same keys; every key parsed can be asked to verify
//! a signature under every algorithm and answers without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::auth::jwk::{parse_jwks, parse_jwks_lenient, parse_public_pem};
use portcullis::auth::Alg;

fn exercise(keys: &[portcullis::auth::jwk::Key]) {
    for k in keys {
        for alg in Alg::ALL {
            let ok = k.verify_signature(alg, b"header.payload", &[0u8; 64]);
            assert!(
                !ok || k.accepts(alg),
                "{alg:?} verified under a key that refuses it"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let strict = parse_jwks(text);
        let lenient = parse_jwks_lenient(text);
        if let Ok((keys, _)) = &strict {
            let (lk, _) = lenient
                .as_ref()
                .expect("a document the strict parser accepts, the lenient one accepts");
            assert_eq!(
                keys.len(),
                lk.len(),
                "strict and lenient found different keys"
            );
            for (a, b) in keys.iter().zip(lk) {
                assert_eq!(a.kid, b.kid);
                assert_eq!(a.family, b.family);
            }
            exercise(keys);
        }
        if let Ok((keys, _)) = &lenient {
            exercise(keys);
        }
    }
    if let Ok(k) = parse_public_pem(data) {
        exercise(std::slice::from_ref(&k));
    }
});
