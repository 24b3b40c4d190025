//! The route matcher against a naive reference, on arbitrary route tables, hosts, paths and
//! methods.
//!
//! The reference reads the rules as documented, with none of the table's ordering tricks:
//! among the routes whose prefix starts the path and whose host matches, the longest prefix
//! wins, then an exact host over a wildcard over any host, and among wildcards the longest;
//! within that place the route that allows the method, else 405 with every method the place
//! allows; no match at all is 404.
#![no_main]

use arbitrary::Arbitrary;
use http::Method;
use libfuzzer_sys::fuzz_target;
use portcullis::error::Reject;
use portcullis::policy::{HostMatch, Route, RouteTable};
use portcullis::upstream::{Choice, Pool};
use std::sync::{Arc, LazyLock};

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
];

#[derive(Arbitrary, Debug)]
struct RouteIn {
    prefix: String,
    host: Option<String>,
    /// Bit i: METHODS[i]; 0 means any method.
    methods: u8,
}

#[derive(Arbitrary, Debug)]
struct Input {
    routes: Vec<RouteIn>,
    host: Option<String>,
    path: String,
    method: u8,
}

static POOL: LazyLock<Arc<Pool>> =
    LazyLock::new(|| Arc::new(Pool::new("p", vec![("127.0.0.1:1".parse().unwrap(), 1)])));

fn methods(bits: u8) -> Option<Vec<Method>> {
    let m: Vec<Method> = (0..5)
        .filter(|i| bits & (1 << i) != 0)
        .map(|i| METHODS[i].clone())
        .collect();
    (!m.is_empty()).then_some(m)
}

fn route(prefix: &str, host: HostMatch, methods: Option<Vec<Method>>) -> Route {
    Route::basic(prefix, host, methods, Choice::Fixed(POOL.clone()))
}

/// Does a route's host (as written in the config) match the request host? `None`: any.
/// Its specificity when it does: (0 any, 1 wildcard, 2 exact; the wildcard's length).
fn naive_host(route_host: Option<&str>, host: Option<&str>) -> Option<(u8, usize)> {
    let Some(rh) = route_host else {
        return Some((0, 0));
    };
    let rh = rh.trim().to_ascii_lowercase();
    let rh = rh.strip_suffix('.').unwrap_or(&rh);
    let host = host?.to_ascii_lowercase();
    match rh.strip_prefix("*.") {
        // Specificity: wildcards rank by length, above any host, below exact ones.
        Some(base) => {
            let under = host.strip_suffix(base)?.strip_suffix('.')?;
            (!under.is_empty()).then_some((1, base.len()))
        }
        None => (host == rh).then_some((2, 0)),
    }
}

fuzz_target!(|input: Input| {
    if input.routes.len() > 24 {
        return;
    }
    let mut built = Vec::new();
    for (i, r) in input.routes.iter().enumerate() {
        if !r.prefix.starts_with('/') {
            return;
        }
        let host = match &r.host {
            None => HostMatch::Any,
            Some(h) => match HostMatch::parse(h) {
                Ok(h) => h,
                Err(_) => return,
            },
        };
        built.push((i, route(&r.prefix, host, methods(r.methods))));
    }
    let Ok(table) = RouteTable::new(built) else {
        return; // two routes in one place with overlapping methods: a config error
    };
    let method = METHODS[input.method as usize % METHODS.len()].clone();
    let host = input.host.as_deref();
    let got = table.find(host, &input.path, &method);

    // The reference.
    let matching: Vec<(usize, u8, usize)> = input
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| input.path.starts_with(r.prefix.as_str()))
        .filter_map(|(i, r)| {
            let (rank, wild_len) = naive_host(r.host.as_deref(), host)?;
            Some((i, rank, wild_len))
        })
        .collect();
    let best = matching
        .iter()
        .map(|&(i, rank, wl)| (input.routes[i].prefix.len(), rank, wl))
        .max();
    match (best, got) {
        (None, Err(Reject::NotFound)) => {}
        (None, other) => panic!("reference: 404; table: {other:?}"),
        (Some(best), got) => {
            let place: Vec<usize> = matching
                .iter()
                .filter(|&&(i, rank, wl)| (input.routes[i].prefix.len(), rank, wl) == best)
                .map(|&(i, _, _)| i)
                .collect();
            let allowing: Vec<usize> = place
                .iter()
                .copied()
                .filter(|&i| methods(input.routes[i].methods).is_none_or(|m| m.contains(&method)))
                .collect();
            match got {
                Ok(r) => {
                    assert!(
                        allowing.iter().any(|&i| input.routes[i].prefix == r.prefix
                            && methods(input.routes[i].methods) == r.methods),
                        "table chose {:?} {:?} {:?}; reference allows {:?}",
                        r.prefix,
                        r.host,
                        r.methods,
                        allowing
                            .iter()
                            .map(|&i| &input.routes[i])
                            .collect::<Vec<_>>()
                    );
                    // The chosen route's host is of the best place too.
                    let chosen_rank = match &r.host {
                        HostMatch::Any => 0,
                        HostMatch::Suffix(_) => 1,
                        HostMatch::Exact(_) => 2,
                    };
                    assert_eq!(chosen_rank, best.1, "host specificity");
                }
                Err(Reject::MethodNotAllowed { allow }) => {
                    assert!(allowing.is_empty(), "405 where {allowing:?} allow {method}");
                    let mut want: Vec<String> = place
                        .iter()
                        .flat_map(|&i| methods(input.routes[i].methods).unwrap_or_default())
                        .map(|m| m.as_str().to_string())
                        .collect();
                    want.sort_unstable();
                    want.dedup();
                    assert_eq!(allow, want.join(", "), "Allow header");
                }
                Err(other) => panic!("reference: a match in {place:?}; table: {other:?}"),
            }
        }
    }
});
