//! Build the Pingora server for a compiled policy: the proxy service and the admin service.

use crate::observe::{AccessLog, Admin};
use crate::policy::Policy;
use crate::proxy::Gateway;
use arc_swap::ArcSwap;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::listening::Service;
use std::sync::Arc;

/// Seconds the runtime gets to finish requests in flight after SIGTERM.
pub const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

/// A ready-to-run server and a handle on the policy it serves.
pub struct Built {
    pub server: Server,
    pub policy: Arc<ArcSwap<Policy>>,
}

/// Build (but do not start) the server. Listening sockets are bound when it runs; the access log
/// file is opened now, so a bad path fails here.
pub fn build(policy: Policy) -> std::io::Result<Built> {
    let conf = ServerConf {
        threads: policy.threads,
        // Stop promptly: no grace period for a socket hand-over we do not use, and a short
        // window for requests in flight.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_TIMEOUT_SECS),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    if let Some(rev) = &policy.revocation {
        crate::limit::Revocation::watch(rev);
    }
    crate::observe::access_log::reopen_flag();
    let access_log = match &policy.access_log {
        Some((target, claims)) => Some(AccessLog::start(target.clone(), claims.clone())?),
        None => None,
    };
    let listen = policy.listen.clone();
    let admin = policy.admin;
    let shared = Arc::new(ArcSwap::from_pointee(policy));
    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway::new(shared.clone(), access_log),
        "portcullis proxy",
    );
    for addr in &listen {
        proxy.add_tcp(&addr.to_string());
    }
    server.add_service(proxy);

    if let Some(addr) = admin {
        let app = Admin {
            policy: shared.clone(),
        };
        let mut svc = Service::new("portcullis admin".to_string(), HttpServer::new_app(app));
        svc.add_tcp(&addr.to_string());
        // One thread is plenty for health checks and scrapes.
        svc.threads = Some(1);
        server.add_service(svc);
    }
    Ok(Built {
        server,
        policy: shared,
    })
}
