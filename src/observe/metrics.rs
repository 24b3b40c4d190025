//! Prometheus metrics: one registry for the process, so counters survive config reloads.
//!
//! Labels are bounded by the configuration (route ids, policy, upstream and limit names) or by a
//! fixed vocabulary (results, error kinds, status codes): never a `sub`, a token or a raw path.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

/// The label used for requests that matched no route.
pub const NO_ROUTE: &str = "none";

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub jwt_validations: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub access_log_dropped: IntCounter,
    pub jwks_fetches: IntCounterVec,
    pub tls_certificate_expiry: IntGaugeVec,
    pub tls_certificate_reloads: IntCounterVec,
    pub tls_handshakes: IntCounterVec,
    pub tls_client_hellos: IntCounterVec,
    pub tls_handshake_failures: IntCounterVec,
    pub tls_client_certs_rejected: IntCounterVec,
    pub dns_lookups: IntCounterVec,
    /// 1 while this instance's Redis (`cluster`) answers.
    pub redis_up: IntGauge,
    /// Indexed by `cluster::Failure`.
    pub redis_errors: Vec<IntCounter>,
    /// Open client connections on the proxy and redirect listeners.
    pub connections_open: IntGauge,
    /// Indexed by `edge::conn::Dropped`.
    pub connections_dropped: Vec<IntCounter>,
    pub token_cache_requests: IntCounterVec,
    pub config_last_reload_success: IntGauge,
    /// Set from the policy in force at each scrape (`observe::state`).
    pub sampled: Sampled,
}

/// The gauges that describe state the policy holds, set when `/metrics` is scraped.
pub struct Sampled {
    pub requests_in_flight: IntGauge,
    pub upstream_peer_up: IntGaugeVec,
    pub token_cache_entries: IntGaugeVec,
    pub jwks_last_success: IntGaugeVec,
    pub jwks_keys: IntGaugeVec,
    pub jwks_refresh: IntGaugeVec,
    pub rate_limit_keys: IntGaugeVec,
    pub revoked_entries: IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let gauges = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, _> {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
        registry.register(Box::new(g.clone()))?;
        Ok::<_, prometheus::Error>(g)
    };
    let gauge = |name: &str, help: &str| -> Result<IntGauge, _> {
        let g = IntGauge::new(name, help)?;
        registry.register(Box::new(g.clone()))?;
        Ok::<_, prometheus::Error>(g)
    };
    let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, _> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        registry.register(Box::new(c.clone()))?;
        Ok::<_, prometheus::Error>(c)
    };
    let histogram = |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, _> {
        let h = HistogramVec::new(
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            labels,
        )?;
        registry.register(Box::new(h.clone()))?;
        Ok::<_, prometheus::Error>(h)
    };
    let m = Metrics {
        requests: counter(
            "portcullis_requests_total",
            "Requests answered, by route and status code.",
            &["route", "status"],
        )?,
        request_duration: histogram(
            "portcullis_request_duration_seconds",
            "Whole request time, from the request header to the end of the response.",
            &["route"],
        )?,
        upstream_duration: histogram(
            "portcullis_upstream_duration_seconds",
            "Time from choosing a peer to its response header.",
            &["upstream"],
        )?,
        jwt_validations: counter(
            "portcullis_jwt_validations_total",
            "Token checks on protected routes: ok, missing, invalid, expired, forbidden, revoked.",
            &["policy", "result"],
        )?,
        rate_limited: counter(
            "portcullis_rate_limited_total",
            "Requests refused with 429, by limit.",
            &["limit"],
        )?,
        upstream_errors: counter(
            "portcullis_upstream_errors_total",
            "Failures talking to upstream peers, by kind.",
            &["upstream", "kind"],
        )?,
        config_reloads: counter(
            "portcullis_config_reloads_total",
            "Configuration reloads, by result.",
            &["result"],
        )?,
        build_info: gauges(
            "portcullis_build_info",
            "Always 1; the version is a label.",
            &["version"],
        )?,
        jwks_fetches: counter(
            "portcullis_jwks_fetches_total",
            "Fetches of remote key sets, by key set and result (ok, error).",
            &["keys", "result"],
        )?,
        tls_certificate_expiry: gauges(
            "portcullis_tls_certificate_expiry_timestamp_seconds",
            "When each served certificate expires (notAfter, seconds since the epoch).",
            &["profile", "certificate"],
        )?,
        tls_certificate_reloads: counter(
            "portcullis_tls_certificate_reloads_total",
            "Certificate reloads after a file changed on disk, by profile and result (ok, error).",
            &["profile", "result"],
        )?,
        tls_handshakes: counter(
            "portcullis_tls_handshakes_total",
            "Completed TLS handshakes, by listener and whether a client certificate was verified.",
            &["listener", "client_cert"],
        )?,
        tls_handshake_failures: counter(
            "portcullis_tls_handshake_failures_total",
            "Failed TLS handshakes, by listener and reason (closed, incompatible, protocol_error, client_certificate, alert, other).",
            &["listener", "reason"],
        )?,
        tls_client_hellos: counter(
            "portcullis_tls_client_hellos_total",
            "TLS ClientHellos that reached certificate selection, by profile (minus completed handshakes: failed ones).",
            &["profile"],
        )?,
        tls_client_certs_rejected: counter(
            "portcullis_tls_client_certificates_rejected_total",
            "Client certificates that failed verification (mTLS), by profile.",
            &["profile"],
        )?,
        dns_lookups: counter(
            "portcullis_dns_lookups_total",
            "Background lookups of the peer names of upstreams with resolve, by upstream and result (ok, error; on error the last addresses stay).",
            &["upstream", "result"],
        )?,
        redis_up: gauge(
            "portcullis_redis_up",
            "1 while the cluster section's Redis answers, 0 while shared state falls back to cluster.on_error.",
        )?,
        redis_errors: {
            let c = counter(
                "portcullis_redis_errors_total",
                "Redis commands without an answer, by kind: down (not tried: Redis was unreachable), timeout, connection, reply (Redis answered an error).",
                &["kind"],
            )?;
            crate::cluster::Failure::ALL
                .iter()
                .map(|f| c.with_label_values(&[f.label()]))
                .collect()
        },
        connections_open: gauge(
            "portcullis_connections_open",
            "Client connections open on the proxy and redirect listeners (bounded by server.limits.max_connections).",
        )?,
        connections_dropped: {
            let c = counter(
                "portcullis_connections_dropped_total",
                "Client connections closed before a request could be read: max_connections (at the cap), proxy_protocol (no valid PROXY header), header_timeout (header not complete within server.limits.header_timeout).",
                &["reason"],
            )?;
            crate::edge::conn::Dropped::ALL
                .iter()
                .map(|d| c.with_label_values(&[d.label()]))
                .collect()
        },
        access_log_dropped: {
            let c = IntCounter::new(
                "portcullis_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind.",
            )?;
            registry.register(Box::new(c.clone()))?;
            c
        },
        token_cache_requests: counter(
            "portcullis_token_cache_requests_total",
            "Lookups in a policy's verified-token cache, by policy and result (hit: no signature check; miss: verified and cached).",
            &["policy", "result"],
        )?,
        config_last_reload_success: gauge(
            "portcullis_config_last_reload_success_timestamp_seconds",
            "When the configuration in force was loaded (at start, or by the last successful reload), seconds since the epoch.",
        )?,
        sampled: Sampled {
            requests_in_flight: gauge(
                "portcullis_requests_in_flight",
                "Requests being answered now.",
            )?,
            upstream_peer_up: gauges(
                "portcullis_upstream_peer_up",
                "1 while health checks keep a peer in service, 0 while they take it out (always 1 without health checks).",
                &["upstream", "peer"],
            )?,
            token_cache_entries: gauges(
                "portcullis_token_cache_entries",
                "Verified tokens held in each policy's cache.",
                &["policy"],
            )?,
            jwks_last_success: gauges(
                "portcullis_jwks_last_success_timestamp_seconds",
                "When each remote key set was last fetched successfully, seconds since the epoch (0: never).",
                &["keys"],
            )?,
            jwks_keys: gauges(
                "portcullis_jwks_keys",
                "Usable keys in each key set.",
                &["keys"],
            )?,
            jwks_refresh: gauges(
                "portcullis_jwks_refresh_seconds",
                "The configured refresh interval of each remote key set (the JWKS-stale alert compares the last good fetch with it).",
                &["keys"],
            )?,
            rate_limit_keys: gauges(
                "portcullis_rate_limit_keys",
                "Keys (clients, tokens, claim values) each local rate limit tracks a bucket for.",
                &["limit"],
            )?,
            revoked_entries: gauge(
                "portcullis_revoked_entries",
                "Revoked subjects and token ids in force (from auth revocation and its file).",
            )?,
        },
        registry,
    };
    m.build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    for result in ["ok", "error"] {
        m.config_reloads.with_label_values(&[result]);
    }
    Ok(m)
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: LazyLock<Metrics> =
        LazyLock::new(|| build().expect("metric definitions are valid and unique"));
    &M
}

/// Status codes whose counters a route resolves up front; others are looked up when seen.
const COMMON_STATUS: [u16; 16] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 405, 429, 500, 502, 503, 504,
];

/// One route's metric handles, resolved when the route is compiled (no label lookups per
/// request for the usual statuses).
#[derive(Debug)]
pub struct RouteMetrics {
    route: String,
    duration: Histogram,
    by_status: Vec<(u16, IntCounter)>,
}

impl RouteMetrics {
    pub fn new(route: &str) -> RouteMetrics {
        let m = metrics();
        RouteMetrics {
            route: route.to_string(),
            duration: m.request_duration.with_label_values(&[route]),
            by_status: COMMON_STATUS
                .iter()
                .map(|s| (*s, m.requests.with_label_values(&[route, &s.to_string()])))
                .collect(),
        }
    }

    /// Count one finished request.
    pub fn observe(&self, status: u16, seconds: f64) {
        match self.by_status.iter().find(|(s, _)| *s == status) {
            Some((_, c)) => c.inc(),
            None => metrics()
                .requests
                .with_label_values(&[&self.route, &status.to_string()])
                .inc(),
        }
        self.duration.observe(seconds);
    }
}

/// The `route="none"` handles, for requests no route matched.
pub fn no_route_metrics() -> &'static RouteMetrics {
    static M: LazyLock<RouteMetrics> = LazyLock::new(|| RouteMetrics::new(NO_ROUTE));
    &M
}

/// One auth policy's `portcullis_jwt_validations_total` counters.
#[derive(Debug)]
pub struct PolicyMetrics {
    results: Vec<(&'static str, IntCounter)>,
}

impl PolicyMetrics {
    pub fn new(policy: &str) -> PolicyMetrics {
        let m = metrics();
        PolicyMetrics {
            results: [
                "ok",
                "missing",
                "invalid",
                "expired",
                "forbidden",
                "revoked",
            ]
            .into_iter()
            .map(|r| (r, m.jwt_validations.with_label_values(&[policy, r])))
            .collect(),
        }
    }

    pub fn count(&self, result: &str) {
        if let Some((_, c)) = self.results.iter().find(|(r, _)| *r == result) {
            c.inc();
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = metrics();
        m.requests.with_label_values(&["/x", "200"]).inc();
        m.request_duration.with_label_values(&["/x"]).observe(0.01);
        m.upstream_duration
            .with_label_values(&["api"])
            .observe(0.01);
        m.jwt_validations.with_label_values(&["p", "ok"]).inc();
        m.rate_limited.with_label_values(&["l"]).inc();
        m.upstream_errors
            .with_label_values(&["api", "connect_refused"])
            .inc();
        let text = String::from_utf8(m.render()).unwrap();
        for name in [
            "portcullis_requests_total{route=\"/x\",status=\"200\"}",
            "portcullis_request_duration_seconds_bucket",
            "portcullis_upstream_duration_seconds_count",
            "portcullis_jwt_validations_total",
            "portcullis_rate_limited_total",
            "portcullis_upstream_errors_total",
            "portcullis_config_reloads_total{result=\"ok\"} 0",
            "portcullis_build_info{version=",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}
