//! What both reference proxies share: portcullis' own global allocator (the same file, so the
//! rows differ by proxy shape and not by allocator), the command line and the runtime.

#[path = "../../../../src/allocator.rs"]
pub mod allocator;

use std::net::SocketAddr;

/// `LISTEN UPSTREAM` from the command line.
pub fn addresses() -> (SocketAddr, SocketAddr) {
    let mut args = std::env::args().skip(1);
    let mut next = |what: &str| -> SocketAddr {
        let arg = args.next().unwrap_or_else(|| usage(what));
        arg.parse().unwrap_or_else(|_| usage(what))
    };
    (next("LISTEN"), next("UPSTREAM"))
}

fn usage(what: &str) -> ! {
    eprintln!("usage: PROXY LISTEN UPSTREAM (both ip:port); {what} missing or not an address");
    std::process::exit(2)
}

/// One worker thread, as portcullis runs in instructions.sh (`server.threads: 1`): tokio's
/// multi-thread scheduler, which is what Pingora runs its services on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_io()
        .build()
        .expect("tokio runtime")
}
