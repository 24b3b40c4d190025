//! The config loader: `parse` and `compile` (what `portcullis check` does) on arbitrary YAML.
//!
//! Properties: nothing panics; a config that does not compile says why, and every error
//! below the file level names a YAML path that starts with one of the file's sections.
//!
//! Name lookups are taken out first (the inputs would otherwise send DNS queries): `resolve`
//! is dropped and peers given by name point at `localhost`, keeping their port text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::{Loaded, PeerConfig};
use std::path::PathBuf;

const SECTIONS: [&str; 10] = [
    "server",
    "tls",
    "upstreams",
    "keys",
    "auth",
    "rate_limits",
    "revocation",
    "access_log",
    "cluster",
    "routes",
];

fn offline(addr: &mut String) {
    if addr.parse::<std::net::SocketAddr>().is_err() {
        if let Some((_, port)) = addr.rsplit_once(':') {
            *addr = format!("localhost:{port}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (mut config, errors) = match portcullis::config::parse(text) {
        Ok(parsed) => parsed,
        Err(errors) => {
            assert!(!errors.is_empty(), "a refused file with no error");
            return;
        }
    };
    for u in config.upstreams.values_mut() {
        u.resolve = None;
        for p in &mut u.peers {
            match p {
                PeerConfig::Addr(a) => offline(a),
                PeerConfig::Weighted(w) => offline(&mut w.addr),
            }
        }
    }
    let loaded = Loaded {
        file: PathBuf::from("/nonexistent/fuzz.yaml"),
        base_dir: PathBuf::from("/nonexistent"),
        config,
        errors,
    };
    match portcullis::policy::compile(&loaded) {
        Ok(_) => {}
        Err(e) => {
            assert!(!e.errors.is_empty(), "compile failed with no error");
            for err in &e.errors {
                let section = err.path.split(['.', '[']).next().unwrap_or_default();
                // Top-level keys that are not sections are named by themselves.
                let top_level = err.message.starts_with("unknown field")
                    || err.message.starts_with("non-string key");
                assert!(
                    SECTIONS.contains(&section) || top_level,
                    "error without a YAML path: {err:?}"
                );
                assert!(!err.message.is_empty(), "error without a message: {err:?}");
            }
            let _ = e.to_string();
        }
    }
});
