//! A reverse proxy of the shape most Rust gateways take: hyper 1's HTTP/1 server in front,
//! hyper-util's pooled client behind, the request and the answer passed through as they are
//! (no header added or removed beyond what hyper itself does). A measuring stick for
//! `benches/load/instructions.sh`, not a proxy to run.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[global_allocator]
static GLOBAL: reference_proxies::allocator::Allocator = reference_proxies::allocator::Allocator;

fn main() {
    let (listen, upstream) = reference_proxies::addresses();
    reference_proxies::runtime().block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build(connector);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| forward(client.clone(), upstream, req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// The request sent on to the upstream with its path and query kept.
async fn forward(
    client: Client<HttpConnector, Incoming>,
    upstream: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<hyper::Response<Incoming>, hyper_util::client::legacy::Error> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = format!("http://{upstream}{path}")
        .parse()
        .expect("an address and a parsed path make a URI");
    *req.uri_mut() = uri;
    client.request(req).await
}
