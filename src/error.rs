//! One error type for a refused request, and the one place that turns it into a response.

use bytes::Bytes;
use pingora_http::ResponseHeader;

/// Why a token was not accepted. Each has a short, fixed description: it never echoes the token,
/// a claim value or key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No token in any configured place.
    Missing,
    TooLarge,
    Malformed,
    /// Two tokens in one place (two `Authorization: Bearer` headers, a repeated cookie or query
    /// argument): the upstream might read the other one.
    Ambiguous,
    /// Five-part compact JWE.
    Encrypted,
    AlgorithmNotAllowed,
    UnsupportedCrit,
    UnknownKid,
    BadSignature,
    Expired,
    NotYetValid,
    MissingExp,
    BadTimeClaim,
    BadIssuer,
    BadAudience,
    /// A claim to forward cannot be a header value (control characters).
    ClaimNotForwardable,
    /// The token's `sub` or `jti` is revoked.
    Revoked,
    /// The policy's remote keys have not been fetched yet: not the token's fault (503).
    KeysUnavailable,
    /// The policy binds tokens to a client certificate (RFC 8705) and the connection has none.
    CertificateRequired,
    /// The token's `cnf.x5t#S256` is missing or is not the client certificate's.
    CertificateMismatch,
    /// The header's `typ` is not one of the policy's `token_types`.
    WrongTokenType,
    /// `exp - iat` is more than the policy's `max_lifetime`.
    LifetimeTooLong,
    /// The policy has a `max_lifetime` and the token no `iat`.
    MissingIat,
}

impl AuthError {
    pub fn description(self) -> &'static str {
        match self {
            AuthError::Missing => "bearer token required",
            AuthError::TooLarge => "token too large",
            AuthError::Malformed => "token malformed",
            AuthError::Ambiguous => "more than one token",
            AuthError::Encrypted => "encrypted tokens are not supported",
            AuthError::AlgorithmNotAllowed => "algorithm not allowed",
            AuthError::UnsupportedCrit => "unsupported critical header",
            AuthError::UnknownKid => "unknown key id",
            AuthError::BadSignature => "signature invalid",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::MissingExp => "token has no expiry",
            AuthError::BadTimeClaim => "exp, nbf or iat is not a number",
            AuthError::BadIssuer => "issuer not allowed",
            AuthError::BadAudience => "audience not allowed",
            AuthError::ClaimNotForwardable => "claim cannot be forwarded",
            AuthError::Revoked => "token revoked",
            AuthError::KeysUnavailable => "signing keys are not available yet",
            AuthError::CertificateRequired => "client certificate required",
            AuthError::CertificateMismatch => "certificate binding mismatch",
            AuthError::WrongTokenType => "token type not accepted",
            AuthError::LifetimeTooLong => "token lifetime too long",
            AuthError::MissingIat => "token has no issue time",
        }
    }

    /// Label for logs and metrics: `missing`, `expired`, `revoked` or `invalid`.
    pub fn result(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Expired => "expired",
            AuthError::Revoked => "revoked",
            _ => "invalid",
        }
    }
}

impl Reject {
    /// The `portcullis_jwt_validations_total` result for a refusal from `auth::check`.
    pub fn auth_result(&self) -> &'static str {
        match self {
            Reject::Unauthorized { error, .. } => error.result(),
            Reject::Forbidden { .. } => "forbidden",
            _ => "invalid",
        }
    }
}

/// A request refused by the gateway itself (nothing was sent upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// 401 with `WWW-Authenticate: Bearer realm=…` (RFC 6750 §3).
    Unauthorized { realm: String, error: AuthError },
    /// 403 `insufficient_scope`: a valid token that a required-claim rule refuses.
    Forbidden {
        realm: String,
        /// The scope values a `contains` rule wanted.
        scope: Option<String>,
        why: Why,
    },
    /// 503: the keys to check the token with are not loaded (remote key set not fetched yet).
    KeysUnavailable,
    /// 503: a shared rate limit could not be checked (Redis down, `on_error: deny`).
    LimitUnavailable,
    /// 429 from a rate limit.
    TooManyRequests {
        limit: u32,
        remaining: u32,
        /// Seconds until the bucket is full again, rounded up.
        reset: u64,
        /// Seconds until a request may pass, rounded up (at least 1).
        retry_after: u64,
    },
    /// No route matches.
    NotFound,
    /// A route matches the path but not the method.
    MethodNotAllowed { allow: String },
    /// The request itself is unacceptable (e.g. dot segments in the path).
    BadRequest(&'static str),
    /// 413: the body is larger than `server.limits.max_body_bytes`.
    PayloadTooLarge,
    /// 431: the request header is larger than `server.limits.max_header_bytes`.
    HeaderTooLarge,
}

/// Why a verified token is refused (403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A `require` rule does not hold.
    Rule,
    /// The route's `upstream_by` names no pool for the token, and there is no default.
    NoUpstream,
}

impl Why {
    pub fn description(self) -> &'static str {
        match self {
            Why::Rule => "the token does not grant access",
            Why::NoUpstream => "no upstream serves this token",
        }
    }
}

/// Quote a string for an HTTP quoted-string (RFC 9110 §5.6.4).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

impl Reject {
    pub fn status(&self) -> u16 {
        match self {
            Reject::Unauthorized { .. } => 401,
            Reject::Forbidden { .. } => 403,
            Reject::KeysUnavailable | Reject::LimitUnavailable => 503,
            Reject::TooManyRequests { .. } => 429,
            Reject::NotFound => 404,
            Reject::MethodNotAllowed { .. } => 405,
            Reject::BadRequest(_) => 400,
            Reject::PayloadTooLarge => 413,
            Reject::HeaderTooLarge => 431,
        }
    }

    /// `WWW-Authenticate` value, if the response carries one.
    pub fn challenge(&self) -> Option<String> {
        match self {
            Reject::Unauthorized {
                realm,
                error: AuthError::Missing,
            } => Some(format!("Bearer realm={}", quote(realm))),
            Reject::Unauthorized { realm, error } => Some(format!(
                "Bearer realm={}, error=\"invalid_token\", error_description={}",
                quote(realm),
                quote(error.description())
            )),
            Reject::Forbidden { realm, scope, .. } => Some(match scope {
                Some(s) => format!(
                    "Bearer realm={}, error=\"insufficient_scope\", scope={}",
                    quote(realm),
                    quote(s)
                ),
                None => format!(
                    "Bearer realm={}, error=\"insufficient_scope\"",
                    quote(realm)
                ),
            }),
            _ => None,
        }
    }

    /// The `error` code and `error_description` of the answer (fixed texts).
    fn codes(&self) -> (&'static str, &'static str) {
        match self {
            Reject::Unauthorized {
                error: AuthError::Missing,
                ..
            } => ("unauthorized", AuthError::Missing.description()),
            Reject::Unauthorized { error, .. } => ("invalid_token", error.description()),
            Reject::Forbidden { why, .. } => ("insufficient_scope", why.description()),
            Reject::TooManyRequests { .. } => ("rate_limited", "too many requests"),
            Reject::KeysUnavailable => (
                "temporarily_unavailable",
                AuthError::KeysUnavailable.description(),
            ),
            Reject::LimitUnavailable => (
                "temporarily_unavailable",
                "the rate limit cannot be checked now",
            ),
            Reject::NotFound => ("not_found", "no route matches this request"),
            Reject::MethodNotAllowed { .. } => ("method_not_allowed", "method not allowed here"),
            Reject::BadRequest(why) => ("bad_request", *why),
            Reject::PayloadTooLarge => ("payload_too_large", "request body too large"),
            Reject::HeaderTooLarge => (
                "request_header_fields_too_large",
                "request header too large",
            ),
        }
    }

    /// The short JSON body.
    pub fn body(&self) -> String {
        let (error, description) = self.codes();
        // Both strings are fixed text without quotes or backslashes.
        format!("{{\"error\":\"{error}\",\"error_description\":\"{description}\"}}")
    }

    /// The whole response: header and body.
    pub fn response(&self) -> (ResponseHeader, Bytes) {
        let body = Bytes::from(self.body());
        let mut h = ResponseHeader::build(self.status(), Some(4)).expect("valid status");
        let _ = h.insert_header(http::header::CONTENT_TYPE, "application/json");
        let _ = h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
        if let Some(c) = self.challenge() {
            let _ = h.insert_header(http::header::WWW_AUTHENTICATE, c);
        }
        if matches!(self, Reject::KeysUnavailable) {
            let _ = h.insert_header(http::header::RETRY_AFTER, "5");
        }
        if matches!(self, Reject::LimitUnavailable) {
            let _ = h.insert_header(http::header::RETRY_AFTER, "1");
        }
        if let Reject::MethodNotAllowed { allow } = self {
            let _ = h.insert_header(http::header::ALLOW, allow.as_str());
        }
        if let Reject::TooManyRequests {
            limit,
            remaining,
            reset,
            retry_after,
        } = self
        {
            let _ = h.insert_header(http::header::RETRY_AFTER, retry_after.to_string());
            let _ = h.insert_header("RateLimit-Limit", limit.to_string());
            let _ = h.insert_header("RateLimit-Remaining", remaining.to_string());
            let _ = h.insert_header("RateLimit-Reset", reset.to_string());
        }
        if matches!(self, Reject::Unauthorized { .. } | Reject::Forbidden { .. }) {
            let _ = h.insert_header(http::header::CACHE_CONTROL, "no-store");
        }
        (h, body)
    }
}

/// The gRPC status for an HTTP status the gateway answers with (what a stock gRPC client
/// reports), as Envoy maps them, except 429 → RESOURCE_EXHAUSTED.
pub fn grpc_status(http: u16) -> u8 {
    match http {
        400 => 3,             // INVALID_ARGUMENT
        401 => 16,            // UNAUTHENTICATED
        403 => 7,             // PERMISSION_DENIED
        404 | 405 => 12,      // UNIMPLEMENTED
        413 | 429 | 431 => 8, // RESOURCE_EXHAUSTED
        502..=504 => 14,      // UNAVAILABLE
        _ => 2,               // UNKNOWN
    }
}

/// gRPC's percent-encoding of `grpc-message`: bytes outside printable ASCII, and `%`.
fn grpc_message(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Is this a gRPC request (its refusals are answered the gRPC way)?
pub fn is_grpc(req: &pingora_http::RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A trailers-only gRPC answer: `200`, `grpc-status` and `grpc-message` in the one header
/// block, which ends the stream.
pub fn grpc_response(http: u16, message: &str) -> ResponseHeader {
    let mut h = ResponseHeader::build(200, Some(4)).expect("valid status");
    let _ = h.insert_header(http::header::CONTENT_TYPE, "application/grpc");
    let _ = h.insert_header("grpc-status", grpc_status(http).to_string());
    let _ = h.insert_header("grpc-message", grpc_message(message));
    h
}

impl Reject {
    /// The refusal as a gRPC client expects it; the `WWW-Authenticate` challenge and rate-limit
    /// headers go along as initial metadata.
    pub fn grpc(&self) -> ResponseHeader {
        let (plain, _) = self.response();
        let mut h = grpc_response(self.status(), self.description());
        for name in [
            http::header::WWW_AUTHENTICATE,
            http::header::RETRY_AFTER,
            http::header::CACHE_CONTROL,
        ] {
            if let Some(v) = plain.headers.get(&name) {
                let _ = h.insert_header(name, v.clone());
            }
        }
        h
    }

    /// The `error_description` of the JSON body.
    pub fn description(&self) -> &'static str {
        self.codes().1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_answers() {
        let r = Reject::Unauthorized {
            realm: "x".into(),
            error: AuthError::Expired,
        };
        let h = r.grpc();
        assert_eq!(h.status, 200);
        assert_eq!(h.headers["grpc-status"], "16");
        assert_eq!(h.headers["grpc-message"], "token expired");
        assert!(h.headers.get(http::header::WWW_AUTHENTICATE).is_some());
        assert_eq!(grpc_status(403), 7);
        assert_eq!(grpc_status(429), 8);
        assert_eq!(grpc_status(503), 14);
        assert_eq!(grpc_message("a%b\né"), "a%25b%0A%C3%A9");
    }

    #[test]
    fn challenges_follow_rfc6750() {
        let r = Reject::Unauthorized {
            realm: "Products \"API\"".into(),
            error: AuthError::Missing,
        };
        assert_eq!(r.challenge().unwrap(), r#"Bearer realm="Products \"API\"""#);
        let r = Reject::Unauthorized {
            realm: "x".into(),
            error: AuthError::Expired,
        };
        assert_eq!(
            r.challenge().unwrap(),
            r#"Bearer realm="x", error="invalid_token", error_description="token expired""#
        );
        assert_eq!(
            r.body(),
            r#"{"error":"invalid_token","error_description":"token expired"}"#
        );
        let r = Reject::Forbidden {
            realm: "x".into(),
            scope: Some("read:leads".into()),
            why: Why::Rule,
        };
        assert_eq!(
            r.challenge().unwrap(),
            r#"Bearer realm="x", error="insufficient_scope", scope="read:leads""#
        );
        let v: serde_json::Value = serde_json::from_str(&Reject::NotFound.body()).unwrap();
        assert_eq!(v["error"], "not_found");
    }
}
