//! portcullis: a JWT-verifying API gateway on Pingora.
//!
//! The request path, top to bottom: `config` (file format) → `policy::compile` (immutable
//! `Policy`) → `proxy::Gateway::request_filter` (route, `auth::check`) → `upstream_peer`
//! (`upstream::Pool`) → upstream request with claim headers.

pub mod allocator;
pub mod auth;
pub mod background;
pub mod cluster;
pub mod config;
pub mod der;
pub mod echo;
pub mod edge;
pub mod error;
pub mod explain;
pub mod limit;
pub mod mint;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod request_key;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod watch;

use std::path::Path;

/// Load and compile a config file: what `check` and `run` both do first.
pub fn load_policy(path: &Path) -> Result<policy::Policy, config::ConfigErrors> {
    let loaded = config::load(path)?;
    policy::compile(&loaded)
}
