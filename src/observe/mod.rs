//! The admin listener. `/healthz` now; metrics come with the observability work.

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

/// Answers on `server.admin`.
pub struct Admin;

fn reply(status: u16, content_type: &str, body: &[u8]) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body.to_vec())
        .expect("static response parts are valid")
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/healthz" => reply(200, "text/plain", b"ok\n"),
            _ => reply(
                404,
                "application/json",
                br#"{"error":"not_found","error_description":"no such admin endpoint"}"#,
            ),
        }
    }
}
