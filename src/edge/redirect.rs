//! A `redirect_https` listener: every request is answered `308` to the same host and target on
//! `https://` and the given port; nothing is proxied. The target and host are the canonical
//! ones, so nothing a client sends is echoed into `Location` unchecked.

use super::{canonical_host, canonical_target, EdgeRules};
use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

pub struct Redirect {
    pub port: u16,
    pub rules: EdgeRules,
}

fn reply(status: u16, location: Option<&str>, body: &str) -> Response<Vec<u8>> {
    let mut b = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .header(http::header::CONTENT_LENGTH, body.len());
    if let Some(l) = location {
        b = b.header(http::header::LOCATION, l);
    }
    b.body(body.as_bytes().to_vec())
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

impl Redirect {
    /// `https://host[:port]/target`, or why not.
    pub fn location(&self, raw_target: &[u8], host: Option<&str>) -> Result<String, &'static str> {
        let target = canonical_target(raw_target, self.rules.path)?;
        let host = target.authority.or(host).ok_or("Host header required")?;
        let host = canonical_host(host)?;
        Ok(if self.port == 443 {
            format!("https://{}{}", host.name, target.path_and_query)
        } else {
            format!(
                "https://{}:{}{}",
                host.name, self.port, target.path_and_query
            )
        })
    }
}

#[async_trait]
impl ServeHttp for Redirect {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok());
        match self.location(req.raw_path(), host) {
            Ok(l) => reply(308, Some(&l), "use https\n"),
            Err(why) => reply(400, None, &format!("{why}\n")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let r = Redirect {
            port: 443,
            rules: EdgeRules::default(),
        };
        assert_eq!(
            r.location(b"//a/%62?q=1", Some("API.example.com:80")),
            Ok("https://api.example.com/a/b?q=1".to_string())
        );
        assert_eq!(
            r.location(b"http://h.example/x", None),
            Ok("https://h.example/x".to_string())
        );
        let r = Redirect {
            port: 8443,
            rules: EdgeRules::default(),
        };
        assert_eq!(
            r.location(b"/x", Some("h")),
            Ok("https://h:8443/x".to_string())
        );
        assert!(r.location(b"/x", None).is_err());
        assert!(r.location(b"/x", Some("a\r\nb")).is_err());
        assert!(r.location(b"/a/../b", Some("h")).is_err());
    }
}
