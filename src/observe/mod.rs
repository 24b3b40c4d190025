//! Observability: Prometheus metrics, the admin listener, the JSON access log.

pub mod access_log;
pub mod admin;
pub mod metrics;
pub mod state;

pub use access_log::AccessLog;
pub use admin::Admin;
pub use metrics::metrics;
