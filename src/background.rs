//! A small runtime for work beside the request path (health checks), independent of Pingora's
//! service runtimes so it works the same at start-up and after a reload.

use std::future::Future;
use std::sync::OnceLock;
use tokio::runtime::{Builder, Runtime};

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portcullis-bg")
            .enable_all()
            .build()
            .expect("the background runtime starts")
    })
}

/// Run a task in the background for the life of the process (or until it returns).
pub fn spawn<F>(f: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    runtime().spawn(f);
}
