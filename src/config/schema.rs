//! The JSON Schema (draft 2020-12) of the config file, generated from the serde structs that
//! read it, with their doc comments as descriptions. `portcullis schema` prints it;
//! `docs/portcullis.schema.json` is that output, kept fresh by a test. Editors that speak the
//! YAML language server complete and check a file that starts with
//! `# yaml-language-server: $schema=…/portcullis.schema.json`.
//!
//! The schema says what parses; what only compiling can tell (a route naming an upstream that
//! does not exist, a CEL syntax error, a bad duration) stays `portcullis check`'s job.

use super::*;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use std::borrow::Cow;

impl<T: JsonSchema> JsonSchema for OneOrMany<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("OneOrMany_{}", T::schema_name()).into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let one = g.subschema_for::<T>();
        json_schema!({
            "anyOf": [one.clone(), {"type": "array", "items": one}]
        })
    }
}

impl JsonSchema for ListenConfig {
    fn schema_name() -> Cow<'static, str> {
        "Listen".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let long = g.subschema_for::<ListenLong>();
        json_schema!({
            "description": "A listener: `IP:PORT` (plain HTTP/1.1, and h2c with server.http2), or the long form.",
            "anyOf": [{"type": "string", "examples": ["0.0.0.0:8080"]}, long]
        })
    }
}

/// A portcullis configuration file.
#[derive(schemars::JsonSchema)]
#[schemars(deny_unknown_fields, title = "portcullis configuration")]
#[allow(dead_code)]
struct File {
    /// Listeners, threads, the admin listener, request limits and normalisation.
    server: Option<ServerConfig>,
    /// TLS profiles (certificates chosen by SNI, optional client certificates), by name.
    tls: Option<BTreeMap<String, TlsProfileConfig>>,
    /// Pools of peers, by name.
    upstreams: Option<BTreeMap<String, UpstreamConfig>>,
    /// Key sets (files, secrets, JWKS URLs, OIDC issuers), by name.
    keys: Option<BTreeMap<String, KeySetConfig>>,
    /// Token policies, by name.
    auth: Option<BTreeMap<String, PolicyConfig>>,
    /// Routes, matched by longest prefix.
    routes: Option<Vec<RouteConfig>>,
    /// Revoked subjects and token ids.
    revocation: Option<RevocationConfig>,
    /// Token buckets, by name.
    rate_limits: Option<BTreeMap<String, RateLimitConfig>>,
    /// One JSON line per request.
    access_log: Option<AccessLogConfig>,
    /// State shared by several instances through Redis.
    cluster: Option<ClusterConfig>,
}

/// The schema, as JSON.
pub fn schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    generator.into_root_schema_for::<File>().to_value()
}
