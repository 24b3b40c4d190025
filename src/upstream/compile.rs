//! The `upstreams` section compiled into pools: peers resolved, settings and health checks
//! checked. A pool with any error is left out (routes naming it are not built).

use super::dns::{self, Named, Nameservers, Resolve};
use super::{HashKey, HealthCheck, HealthKind, PeerSettings, Pool, Tls, MAX_WEIGHT};
use crate::config::{duration_field, Balance, Ctx, HealthCheckConfig, HealthKindConfig};
use crate::config::{ConfigError, UpstreamConfig, UpstreamProtocol};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn compile(
    upstreams: &BTreeMap<String, UpstreamConfig>,
    ctx: &Ctx,
) -> BTreeMap<String, Arc<Pool>> {
    let mut out = BTreeMap::new();
    let servers = nameservers(&ctx.config().server.resolver, ctx);
    for (name, u) in upstreams {
        let path = format!("upstreams.{name}");
        if u.peers.is_empty() {
            ctx.error(format!("{path}.peers"), "at least one peer is needed");
            continue;
        }
        let before = ctx.error_count();
        let (peers, resolve) = match &u.resolve {
            None => (peers(&path, u, ctx), None),
            Some(every) => {
                let every = duration_field(
                    format!("{path}.resolve"),
                    &Some(every.clone()),
                    Duration::from_secs(30),
                    Duration::from_secs(1)..=Duration::from_secs(86_400),
                    &mut ctx.errors(),
                );
                named_peers(&path, u, every, &servers, ctx)
            }
        };
        let hash_key = hash_key(&path, u, ctx);
        let settings = peer_settings(&path, u, &mut ctx.errors());
        let health_check = u
            .health_check
            .as_ref()
            .and_then(|h| health_check(&format!("{path}.health_check"), h, &settings, ctx));
        if ctx.error_count() == before {
            let mut pool = Pool::with(name, peers, hash_key, settings, health_check);
            pool.resolve = resolve;
            out.insert(name.clone(), Arc::new(pool));
        }
    }
    out
}

/// The peers that resolved, with their weights.
fn peers(path: &str, u: &UpstreamConfig, ctx: &Ctx) -> Vec<(SocketAddr, u32)> {
    let mut peers = Vec::new();
    for (i, p) in u.peers.iter().enumerate() {
        let ppath = format!("{path}.peers[{i}]");
        if !weight_ok(&ppath, p.weight(), ctx) {
            continue;
        }
        match resolve(p.addr()) {
            Ok(addr) if peers.iter().any(|(a, _)| *a == addr) => {
                ctx.error(ppath, format!("peer {addr} is listed twice"))
            }
            Ok(addr) => peers.push((addr, p.weight())),
            Err(e) => ctx.error(ppath, e),
        }
    }
    peers
}

/// A peer's weight is 1..=MAX_WEIGHT; otherwise an error at `ppath.weight`.
fn weight_ok(ppath: &str, weight: u32, ctx: &Ctx) -> bool {
    let ok = (1..=MAX_WEIGHT).contains(&weight);
    if !ok {
        ctx.error(
            format!("{ppath}.weight"),
            format!("weight {weight} is out of range 1..={MAX_WEIGHT}"),
        );
    }
    ok
}

/// `server.resolver`.
fn nameservers(list: &[String], ctx: &Ctx) -> Nameservers {
    if list.is_empty() {
        return Nameservers::System;
    }
    let mut servers = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let parsed = s.parse::<SocketAddr>().or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Ok(a) => servers.push(a),
            Err(_) => ctx.error(
                format!("server.resolver[{i}]"),
                format!("{s:?} is not an IP address or IP:PORT (a resolver is given by address)"),
            ),
        }
    }
    Nameservers::Servers(servers)
}

/// The peers of an upstream with `resolve`: addresses as they are, names looked up now (every
/// address of a name is a peer), and what the background lookups need.
fn named_peers(
    path: &str,
    u: &UpstreamConfig,
    every: Duration,
    servers: &Nameservers,
    ctx: &Ctx,
) -> (Vec<(SocketAddr, u32)>, Option<Resolve>) {
    let mut fixed: Vec<(SocketAddr, u32)> = Vec::new();
    let mut named: Vec<(usize, Named)> = Vec::new();
    for (i, p) in u.peers.iter().enumerate() {
        let ppath = format!("{path}.peers[{i}]");
        if !weight_ok(&ppath, p.weight(), ctx) {
            continue;
        }
        if let Ok(a) = p.addr().parse::<SocketAddr>() {
            if fixed.iter().any(|(f, _)| *f == a) {
                ctx.error(ppath, format!("peer {a} is listed twice"));
            } else {
                fixed.push((a, p.weight()));
            }
            continue;
        }
        let parsed = p
            .addr()
            .rsplit_once(':')
            .and_then(|(h, port)| Some((h, port.parse::<u16>().ok()?)))
            .filter(|(h, _)| !h.is_empty() && !h.contains(['/', ' ', '[', ']']));
        match parsed {
            Some((host, port)) => named.push((
                i,
                Named {
                    host: host.to_ascii_lowercase(),
                    port,
                    weight: p.weight(),
                },
            )),
            None => ctx.error(
                ppath,
                format!("peer {:?} is not HOST:PORT or IP:PORT", p.addr()),
            ),
        }
    }
    if named.is_empty() {
        ctx.warn(format!(
            "{path}.resolve: no peer is given by name, nothing to look up"
        ));
    }
    let names: Vec<Named> = named.iter().map(|(_, n)| n.clone()).collect();
    let answers = if names.is_empty() {
        Vec::new()
    } else {
        dns::lookup_all_now(servers, &names)
    };
    let mut valid_until = Instant::now() + every;
    let mut initial = Vec::new();
    for (host, answer) in answers {
        match answer {
            Ok((ips, until)) => {
                valid_until = valid_until.min(until);
                initial.push((host, Some(ips)));
            }
            Err(e) => {
                let i = named
                    .iter()
                    .find(|(_, n)| n.host == host)
                    .map_or(0, |(i, _)| *i);
                ctx.error(format!("{path}.peers[{i}]"), e);
                initial.push((host, None));
            }
        }
    }
    let resolve = Resolve {
        every,
        servers: servers.clone(),
        fixed,
        named: names,
        initial,
        valid_until,
    };
    let peers = dns::peers_from(&resolve, &resolve.initial).unwrap_or_default();
    (peers, Some(resolve))
}

fn hash_key(path: &str, u: &UpstreamConfig, ctx: &Ctx) -> Option<HashKey> {
    match (u.balance, &u.hash_key) {
        (Balance::ConsistentHash, Some(k)) => HashKey::parse(k)
            .map_err(|e| ctx.error(format!("{path}.hash_key"), e))
            .ok(),
        (Balance::ConsistentHash, None) => {
            ctx.error(
                format!("{path}.hash_key"),
                "consistent_hash needs a hash_key (claim:NAME, header:NAME or ip)",
            );
            None
        }
        (Balance::RoundRobin, Some(_)) => {
            ctx.error(
                format!("{path}.hash_key"),
                "only applies to balance: consistent_hash",
            );
            None
        }
        (Balance::RoundRobin, None) => None,
    }
}

fn peer_settings(path: &str, u: &UpstreamConfig, errors: &mut Vec<ConfigError>) -> PeerSettings {
    let d = PeerSettings::default();
    let ms = Duration::from_millis;
    let connect_timeout = duration_field(
        format!("{path}.connect_timeout"),
        &u.connect_timeout,
        d.connect_timeout,
        ms(1)..=Duration::from_secs(300),
        errors,
    );
    let read_timeout = duration_field(
        format!("{path}.read_timeout"),
        &u.read_timeout,
        d.read_timeout,
        ms(1)..=Duration::from_secs(3600),
        errors,
    );
    let tries = match u.tries {
        None => d.tries,
        Some(n) if (1..=10).contains(&n) => n,
        Some(n) => {
            errors.push(ConfigError::new(
                format!("{path}.tries"),
                format!("{n} is out of range 1..=10"),
            ));
            d.tries
        }
    };
    let tls = u.tls.as_ref().map(|t| Tls {
        sni: t.sni.clone().unwrap_or_default(),
        verify: t.verify.unwrap_or(true),
    });
    let protocol = u.protocol.unwrap_or_default();
    match (protocol, &tls) {
        (UpstreamProtocol::H2, None) => errors.push(ConfigError::new(
            format!("{path}.protocol"),
            "h2 is HTTP/2 over TLS: add tls (or use h2c for plaintext HTTP/2)",
        )),
        (UpstreamProtocol::H2c, Some(_)) => errors.push(ConfigError::new(
            format!("{path}.protocol"),
            "h2c is plaintext HTTP/2: remove tls (or use h2)",
        )),
        _ => {}
    }
    let max_streams = match (u.max_streams, protocol) {
        (None, _) => d.max_streams,
        (Some(_), UpstreamProtocol::H1) => {
            errors.push(ConfigError::new(
                format!("{path}.max_streams"),
                "only applies to protocol: h2 or h2c",
            ));
            d.max_streams
        }
        (Some(n), _) if (1..=1000).contains(&n) => n,
        (Some(n), _) => {
            errors.push(ConfigError::new(
                format!("{path}.max_streams"),
                format!("{n} is out of range 1..=1000"),
            ));
            d.max_streams
        }
    };
    PeerSettings {
        connect_timeout,
        read_timeout,
        tls,
        tries,
        protocol,
        max_streams,
    }
}

fn health_check(
    hpath: &str,
    h: &HealthCheckConfig,
    settings: &PeerSettings,
    ctx: &Ctx,
) -> Option<HealthCheck> {
    let kind = match (h.kind, &h.path) {
        (HealthKindConfig::Tcp, None) => HealthKind::Tcp,
        (HealthKindConfig::Tcp, Some(_)) => {
            ctx.error(format!("{hpath}.path"), "only applies to kind: http");
            return None;
        }
        (HealthKindConfig::Http, p) => {
            let p = p.clone().unwrap_or_else(|| "/".into());
            if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                ctx.error(
                    format!("{hpath}.path"),
                    format!("{p:?} must start with / and have no spaces"),
                );
                return None;
            }
            if settings.tls.is_some() {
                ctx.error(
                    format!("{hpath}.kind"),
                    "http checks do not speak TLS yet: use kind: tcp for a TLS upstream",
                );
                return None;
            }
            if settings.protocol == UpstreamProtocol::H2c {
                ctx.error(
                    format!("{hpath}.kind"),
                    "http checks speak HTTP/1.1: use kind: tcp for an h2c upstream",
                );
                return None;
            }
            HealthKind::Http { path: p }
        }
    };
    let ms = Duration::from_millis;
    let interval = duration_field(
        format!("{hpath}.interval"),
        &h.interval,
        Duration::from_secs(5),
        ms(100)..=Duration::from_secs(3600),
        &mut ctx.errors(),
    );
    let timeout = duration_field(
        format!("{hpath}.timeout"),
        &h.timeout,
        Duration::from_secs(1),
        ms(10)..=Duration::from_secs(60),
        &mut ctx.errors(),
    );
    let count = |field: &str, v: Option<u32>| -> u32 {
        match v {
            None => 2,
            Some(n) if (1..=100).contains(&n) => n,
            Some(n) => {
                ctx.error(
                    format!("{hpath}.{field}"),
                    format!("{n} is out of range 1..=100"),
                );
                2
            }
        }
    };
    let unhealthy_after = count("unhealthy_after", h.unhealthy_after);
    let healthy_after = count("healthy_after", h.healthy_after);
    Some(HealthCheck {
        kind,
        interval,
        timeout,
        unhealthy_after,
        healthy_after,
    })
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !addr.contains(':') {
        return Err(format!("peer {addr:?} needs a port, like {addr}:80"));
    }
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve peer {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("peer {addr:?} resolves to no address"))
}
