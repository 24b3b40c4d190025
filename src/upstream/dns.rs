//! Peers named by DNS (`upstreams.NAME.resolve`): looked up at load through `server.resolver`
//! (or the system's), then again every interval — sooner when the answer's TTL runs out first —
//! on the background runtime. Every A and AAAA address of a name is a peer with the name's
//! weight. A failed lookup keeps the addresses of the last good one (logged and counted in
//! `portcullis_dns_lookups_total`).

use super::Pool;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Where names are looked up (`server.resolver`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Nameservers {
    /// `/etc/resolv.conf` (and `/etc/hosts`).
    #[default]
    System,
    /// These servers only, over UDP (TCP for truncated answers).
    Servers(Vec<SocketAddr>),
}

/// A peer given by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

/// How a pool's peers are found again while it is in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolve {
    pub every: Duration,
    pub servers: Nameservers,
    /// The peers given by address, which never change.
    pub fixed: Vec<(SocketAddr, u32)>,
    pub named: Vec<Named>,
    /// Each host's addresses as looked up at load, and until when that answer holds.
    pub initial: Vec<(String, Option<Vec<IpAddr>>)>,
    pub valid_until: Instant,
}

/// One name's addresses, and until when the answer may be used.
pub type Answer = Result<(Vec<IpAddr>, Instant), String>;

fn resolver(servers: &Nameservers) -> Result<TokioResolver, String> {
    let provider = TokioConnectionProvider::default();
    let mut builder = match servers {
        Nameservers::System => TokioResolver::builder(provider)
            .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?,
        Nameservers::Servers(list) => {
            let group: Vec<NameServerConfig> = list
                .iter()
                .flat_map(|a| {
                    [
                        NameServerConfig::new(*a, Protocol::Udp),
                        NameServerConfig::new(*a, Protocol::Tcp),
                    ]
                })
                .collect();
            let config =
                ResolverConfig::from_parts(None, vec![], NameServerConfigGroup::from(group));
            let mut b = TokioResolver::builder_with_config(config, provider);
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        }
    };
    let opts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    Ok(builder.build())
}

async fn lookup(resolver: &TokioResolver, host: &str) -> Answer {
    // A trailing dot: the name as given, never with search domains appended.
    let fqdn = if host.ends_with('.') {
        host.to_string()
    } else {
        format!("{host}.")
    };
    let found = resolver
        .lookup_ip(fqdn.as_str())
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut ips: Vec<IpAddr> = found.iter().collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return Err(format!("{host} has no A or AAAA record"));
    }
    Ok((ips, found.valid_until()))
}

fn all_failed(named: &[Named], e: &str) -> Vec<(String, Answer)> {
    named
        .iter()
        .map(|n| (n.host.clone(), Err(e.to_string())))
        .collect()
}

/// Look up every name once (each host once, in order).
pub async fn lookup_all(servers: &Nameservers, named: &[Named]) -> Vec<(String, Answer)> {
    let resolver = match resolver(servers) {
        Ok(r) => r,
        Err(e) => return all_failed(named, &e),
    };
    let mut out: Vec<(String, Answer)> = Vec::new();
    for n in named {
        if !out.iter().any(|(h, _)| *h == n.host) {
            out.push((n.host.clone(), lookup(&resolver, &n.host).await));
        }
    }
    out
}

/// `lookup_all` from synchronous code (loading the configuration), on a thread of its own so
/// that it works inside a runtime or outside one.
pub fn lookup_all_now(servers: &Nameservers, named: &[Named]) -> Vec<(String, Answer)> {
    let (s, n) = (servers.clone(), named.to_vec());
    let run = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(rt.block_on(lookup_all(&s, &n)))
    });
    match run.join() {
        Ok(Ok(answers)) => answers,
        Ok(Err(e)) => all_failed(named, &e),
        Err(_) => all_failed(named, "the lookup thread failed"),
    }
}

/// The pool's peers from the fixed ones and the latest good answer for each name (`answers`
/// has one per host). `None` if some name has never had a good answer.
pub fn peers_from(
    r: &Resolve,
    answers: &[(String, Option<Vec<IpAddr>>)],
) -> Option<Vec<(SocketAddr, u32)>> {
    let mut peers = r.fixed.clone();
    for n in &r.named {
        let ips = answers.iter().find(|(h, _)| *h == n.host)?.1.as_ref()?;
        for ip in ips {
            let a = SocketAddr::new(*ip, n.port);
            if !peers.iter().any(|(p, _)| *p == a) {
                peers.push((a, n.weight));
            }
        }
    }
    Some(peers)
}

/// Keep `pool`'s peers in step with DNS for as long as the pool is alive.
pub fn watch(pool: &Arc<Pool>) {
    let Some(r) = pool.resolve.clone() else {
        return;
    };
    let weak: Weak<Pool> = Arc::downgrade(pool);
    let name = pool.name.clone();
    let m = &crate::observe::metrics().dns_lookups;
    let (ok, failed) = (
        m.with_label_values(&[&name, "ok"]),
        m.with_label_values(&[&name, "error"]),
    );
    crate::background::spawn(async move {
        let mut last = r.initial.clone();
        let mut valid_until = r.valid_until;
        loop {
            let wait = r
                .every
                .min(valid_until.saturating_duration_since(Instant::now()))
                .max(Duration::from_secs(1));
            tokio::time::sleep(wait).await;
            if weak.strong_count() == 0 {
                return;
            }
            let answers = lookup_all(&r.servers, &r.named).await;
            valid_until = Instant::now() + r.every;
            for (host, answer) in answers {
                let slot = last.iter_mut().find(|(h, _)| *h == host);
                match (answer, slot) {
                    (Ok((ips, until)), Some(slot)) => {
                        ok.inc();
                        valid_until = valid_until.min(until);
                        slot.1 = Some(ips);
                    }
                    (Err(e), _) => {
                        failed.inc();
                        log::warn!("upstream {name}: {e}; keeping the last addresses");
                    }
                    (Ok(_), None) => {}
                }
            }
            let Some(pool) = weak.upgrade() else { return };
            if let Some(peers) = peers_from(&r, &last) {
                let shown: Vec<String> = peers.iter().map(|(a, _)| a.to_string()).collect();
                if pool.set_peers(peers) {
                    log::info!("upstream {name}: peers now {}", shown.join(", "));
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_from_fixed_and_named() {
        let r = Resolve {
            every: Duration::from_secs(30),
            servers: Nameservers::System,
            fixed: vec![("10.0.0.1:80".parse().unwrap(), 1)],
            initial: vec![],
            valid_until: Instant::now(),
            named: vec![
                Named {
                    host: "a.test".into(),
                    port: 8080,
                    weight: 2,
                },
                Named {
                    host: "b.test".into(),
                    port: 9090,
                    weight: 1,
                },
            ],
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let answers = vec![
            ("a.test".to_string(), Some(vec![ip("10.0.0.2"), ip("::1")])),
            ("b.test".to_string(), Some(vec![ip("10.0.0.1")])),
        ];
        let peers = peers_from(&r, &answers).unwrap();
        let shown: Vec<String> = peers.iter().map(|(a, w)| format!("{a}/{w}")).collect();
        assert_eq!(
            shown,
            [
                "10.0.0.1:80/1",
                "10.0.0.2:8080/2",
                "[::1]:8080/2",
                "10.0.0.1:9090/1"
            ]
        );
        let partial = vec![("a.test".to_string(), Some(vec![ip("10.0.0.2")]))];
        assert_eq!(peers_from(&r, &partial), None);
    }
}
