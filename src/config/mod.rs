//! The file format: serde structs that mirror the YAML, and `load()`.
//!
//! Loading is done section by section and entry by entry, so one bad entry does not hide the
//! errors of the others: `check` reports every problem in one run, each with its YAML path.
//! These structs are only the file format; `policy::compile` turns them into the runtime model.

mod ctx;
mod duration;
pub mod file;
pub mod schema;

pub use ctx::Ctx;
pub use duration::{duration_field, parse_duration};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found in a config file, located by its YAML path (`routes[2].upstream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every error found in one file.
#[derive(Debug)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if e.path.is_empty() {
                write!(f, "{}: {}", self.file.display(), e.message)?;
            } else {
                write!(f, "{}: {}: {}", self.file.display(), e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A value that may be written as one item or as a list of items.
#[derive(Debug, Clone, PartialEq)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

/// Not `untagged`: an error inside an item keeps its own message and its place
/// (`server.listen[2]: unknown field ...`) instead of "data did not match any variant".
impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, value, IntoDeserializer};
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> de::Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("one item or a list of items")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(value::MapAccessDeserializer::new(map)).map(OneOrMany::One)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<T: Clone> OneOrMany<T> {
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub server: ServerConfig,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub keys: BTreeMap<String, KeySetConfig>,
    pub auth: BTreeMap<String, PolicyConfig>,
    pub routes: Vec<RouteConfig>,
    pub revocation: Option<RevocationConfig>,
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    pub access_log: Option<AccessLogConfig>,
    pub tls: BTreeMap<String, TlsProfileConfig>,
    pub cluster: Option<ClusterConfig>,
    /// `section.name` of entries that are present but failed to parse (already reported):
    /// references to them are not reported again as unknown.
    pub broken: BTreeSet<String>,
}

impl Config {
    /// Is `name` an entry of `section` (parsed or not)?
    pub fn defines(&self, section: &str, name: &str) -> bool {
        let parsed = match section {
            "upstreams" => self.upstreams.contains_key(name),
            "keys" => self.keys.contains_key(name),
            "auth" => self.auth.contains_key(name),
            "rate_limits" => self.rate_limits.contains_key(name),
            "tls" => self.tls.contains_key(name),
            _ => false,
        };
        parsed || self.broken.contains(&format!("{section}.{name}"))
    }

    /// Every name defined in `section`, parsed or not, for "(defined: ...)" hints.
    pub fn names(&self, section: &str) -> Vec<String> {
        let mut out: Vec<String> = match section {
            "upstreams" => self.upstreams.keys().cloned().collect(),
            "keys" => self.keys.keys().cloned().collect(),
            "auth" => self.auth.keys().cloned().collect(),
            "rate_limits" => self.rate_limits.keys().cloned().collect(),
            "tls" => self.tls.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let prefix = format!("{section}.");
        out.extend(
            self.broken
                .iter()
                .filter_map(|b| b.strip_prefix(&prefix).map(str::to_owned)),
        );
        out.sort();
        out
    }
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses the proxy listens on: `IP:PORT`, or `{addr, tls}` / `{addr, redirect_https}`.
    #[serde(default = "default_listen")]
    pub listen: OneOrMany<ListenConfig>,
    /// HTTP/2: ALPN `h2` on TLS listeners, h2c (prior knowledge) on plain ones. Default true.
    #[serde(default = "yes")]
    pub http2: bool,
    /// Keep HTTP/1 header names' case as the client and the upstream sent it. Default false:
    /// names are forwarded titled for common fields (`Content-Type`) and lowercase otherwise.
    #[serde(default)]
    pub preserve_header_case: bool,
    /// Worker threads; default: the number of cores.
    pub threads: Option<usize>,
    /// Optional admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: Option<String>,
    /// File the process writes its pid to; `portcullis reload` reads it.
    pub pid_file: Option<String>,
    /// How long SIGTERM waits for requests in flight (default 10s).
    pub shutdown_timeout: Option<String>,
    /// `%2F` in a path: `reject` (default, 400) or `forward` (routed as `/`, sent as `%2F`).
    #[serde(default)]
    pub encoded_slashes: EncodedSlashesConfig,
    /// `;` in a path: `reject` (default, 400) or `allow`.
    #[serde(default)]
    pub path_semicolons: PathSemicolons,
    /// Header names with `_`: `drop` (default), `allow` or `reject` (400).
    #[serde(default)]
    pub headers_with_underscores: HeadersWithUnderscores,
    /// Address blocks whose `X-Forwarded-For` (and `X-Forwarded-Proto`/`-Host`) is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The request id header (default `X-Request-Id`, generated).
    pub request_id: Option<RequestIdConfig>,
    /// Bounds on what a client may send and hold.
    pub limits: Option<LimitsConfig>,
    /// DNS servers (`IP` or `IP:PORT`) for upstreams with `resolve` (default: /etc/resolv.conf).
    #[serde(default)]
    pub resolver: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Request line and headers, e.g. `32KiB` (default 64KiB): larger is 431.
    pub max_header_bytes: Option<String>,
    /// Request body, e.g. `10MiB` (default 10MiB): larger is 413.
    pub max_body_bytes: Option<String>,
    /// An idle keep-alive connection is closed after this (default 60s).
    pub idle_timeout: Option<String>,
    /// A request header (and a PROXY header) must be complete this long after the connection
    /// opens or the request's first byte (default 10s); otherwise the connection is closed.
    pub header_timeout: Option<String>,
    /// Open client connections at most (default 10000); more are closed at once.
    pub max_connections: Option<u64>,
}

/// `512`, `32KiB`, `10MiB`, `1GiB`, `64KB`, `1MB`: bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("invalid size {s:?}: a number and a unit, like 32KiB or 10MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {u:?} (B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestIdConfig {
    pub header: Option<String>,
    /// Keep a well-formed id the client sent (default false: always generate).
    #[serde(default)]
    pub trust_incoming: bool,
}

/// `request_headers` / `response_headers` of a route.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesConfig {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    pub origins: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub credentials: bool,
    pub max_age: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EncodedSlashesConfig {
    #[default]
    Reject,
    Forward,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PathSemicolons {
    #[default]
    Reject,
    Allow,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HeadersWithUnderscores {
    Allow,
    #[default]
    Drop,
    Reject,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            http2: true,
            preserve_header_case: false,
            threads: None,
            admin: None,
            pid_file: None,
            shutdown_timeout: None,
            encoded_slashes: EncodedSlashesConfig::default(),
            path_semicolons: PathSemicolons::default(),
            headers_with_underscores: HeadersWithUnderscores::default(),
            trusted_proxies: Vec::new(),
            request_id: None,
            limits: None,
            resolver: Vec::new(),
        }
    }
}

fn default_listen() -> OneOrMany<ListenConfig> {
    OneOrMany::One(ListenConfig::plain("0.0.0.0:8080"))
}

fn yes() -> bool {
    true
}

/// One listener: a bare `IP:PORT` (plain HTTP), or the long form.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "Value")]
pub struct ListenConfig {
    pub addr: String,
    /// A `tls` profile name: terminate TLS here.
    pub tls: Option<String>,
    /// Answer every request with 308 to `https://HOST:PORT/path?query`.
    pub redirect_https: Option<u16>,
    /// Read a PROXY protocol (v1/v2) header before TLS.
    pub proxy_protocol: bool,
}

impl ListenConfig {
    pub fn plain(addr: &str) -> Self {
        ListenConfig {
            addr: addr.to_string(),
            tls: None,
            redirect_https: None,
            proxy_protocol: false,
        }
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListenLong {
    addr: String,
    tls: Option<String>,
    redirect_https: Option<u16>,
    #[serde(default)]
    proxy_protocol: bool,
}

impl TryFrom<Value> for ListenConfig {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        match v {
            Value::String(s) => Ok(ListenConfig::plain(&s)),
            Value::Mapping(_) => {
                let l: ListenLong =
                    serde_yaml::from_value(v).map_err(|e| strip_location(&e.to_string()))?;
                Ok(ListenConfig {
                    addr: l.addr,
                    tls: l.tls,
                    redirect_https: l.redirect_https,
                    proxy_protocol: l.proxy_protocol,
                })
            }
            _ => Err("a listener is \"IP:PORT\" or {addr, tls} or {addr, redirect_https}".into()),
        }
    }
}

/// A `tls` profile: the certificates one or more TLS listeners serve.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsProfileConfig {
    /// Chosen by SNI against each certificate's SAN names; the first is the default.
    pub certificates: Vec<CertificateConfig>,
    /// Client certificates (mTLS).
    pub client_auth: Option<ClientAuthConfig>,
    /// Whether a returning client may resume its TLS session (an abbreviated handshake) instead
    /// of making a full one. Default true.
    #[serde(default = "yes")]
    pub session_resumption: bool,
    /// How many resumable sessions each listener of the profile keeps (TLS 1.2 session ids,
    /// TLS 1.3 tickets; two per handshake); the oldest go first. Default 20000.
    #[serde(default = "session_cache_default")]
    pub session_cache: usize,
}

fn session_cache_default() -> usize {
    20_000
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// PEM: the CA certificates client certificates must chain to.
    pub ca: String,
    /// `true`: the handshake fails without a valid client certificate.
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM: the certificate, then its chain.
    pub cert: String,
    /// PEM: the private key (PKCS#8, RSA or SEC1).
    pub key: String,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub balance: Balance,
    /// For `consistent_hash`: `claim:NAME`, `header:NAME` or `ip`.
    pub hash_key: Option<String>,
    pub health_check: Option<HealthCheckConfig>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub tls: Option<TlsConfig>,
    /// Attempts per request when connections fail (default 2).
    pub tries: Option<usize>,
    /// `h1` (default), `h2` (TLS with ALPN h2; needs `tls`), `h2c` (plaintext, prior knowledge).
    pub protocol: Option<UpstreamProtocol>,
    /// Concurrent streams per HTTP/2 connection to a peer (default 100).
    pub max_streams: Option<usize>,
    /// Look the peers' names up again this often, e.g. `30s` (default: only at load).
    pub resolve: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    H1,
    H2,
    H2c,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    ConsistentHash,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthKindConfig {
    Tcp,
    Http,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub kind: HealthKindConfig,
    /// For `http`: the path to GET (default `/`).
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub unhealthy_after: Option<u32>,
    pub healthy_after: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub sni: Option<String>,
    pub verify: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum PeerConfig {
    Addr(String),
    Weighted(WeightedPeer),
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedPeer {
    pub addr: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl PeerConfig {
    pub fn addr(&self) -> &str {
        match self {
            PeerConfig::Addr(a) => a,
            PeerConfig::Weighted(w) => &w.addr,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            PeerConfig::Addr(_) => 1,
            PeerConfig::Weighted(w) => w.weight,
        }
    }
}

/// A named key set. Exactly one source must be given.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySetConfig {
    /// A JWK or a JWKS document (JSON).
    pub jwks_file: Option<String>,
    /// A PEM public key (RSA, EC P-256/P-384/P-521, Ed25519).
    pub pem_file: Option<String>,
    /// An HMAC secret given literally.
    pub secret: Option<String>,
    /// An HMAC secret read from this environment variable at load time.
    pub secret_env: Option<String>,
    /// The secret (literal or env) is base64 (standard or URL-safe alphabet).
    #[serde(default)]
    pub base64: bool,
    /// Optional key id for a PEM or secret key, matched against the token's `kid`.
    pub kid: Option<String>,
    /// A JWKS published at a URL (https, or http to loopback).
    pub jwks_url: Option<String>,
    /// An OpenID Connect issuer: its discovery document names the JWKS.
    pub oidc_issuer: Option<String>,
    /// Longest time remote keys are kept before fetching again (default 10m).
    pub refresh: Option<String>,
    /// Fetch timeout (default 5s).
    pub timeout: Option<String>,
}

/// A named JWT policy.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub keys: OneOrMany<String>,
    pub algorithms: Vec<String>,
    pub realm: Option<String>,
    pub token_from: Option<Vec<String>>,
    pub issuer: Option<OneOrMany<String>>,
    pub audience: Option<OneOrMany<String>>,
    pub leeway: Option<String>,
    #[serde(default)]
    pub require_exp: bool,
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    pub forward_payload: Option<String>,
    /// Rules every accepted token must satisfy, else 403.
    #[serde(default)]
    pub require: Vec<RuleConfig>,
    /// Cache verified tokens (default true).
    pub cache: Option<bool>,
    /// Entries in the verified-token cache (default 65536).
    pub cache_size: Option<usize>,
    /// RFC 8705: the token's `cnf.x5t#S256` must be the SHA-256 of the client certificate.
    #[serde(default)]
    pub require_certificate_binding: bool,
    /// RFC 9068 and friends: the header's `typ` must be one of these (case-insensitive, an
    /// `application/` prefix ignored).
    pub token_types: Option<Vec<String>>,
    /// `exp - iat` must be at most this; a token without `iat` or `exp` is refused when set.
    pub max_lifetime: Option<String>,
}

/// A required-claim rule: `claim` (a claim path) and exactly one of `contains`, `any_of`,
/// `one_of`, `equals`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub claim: Option<String>,
    /// A CEL expression that must be true (instead of a claim rule).
    pub expr: Option<String>,
    pub contains: Option<Vec<String>>,
    #[schemars(with = "Option<Vec<serde_json::Value>>")]
    pub any_of: Option<Vec<Value>>,
    #[schemars(with = "Option<Vec<serde_json::Value>>")]
    pub one_of: Option<Vec<Value>>,
    #[schemars(with = "Option<serde_json::Value>")]
    pub equals: Option<Value>,
}

/// Revoked `sub` and `jti` values: inline, and from a watched file.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    pub file: Option<String>,
    /// Also kept in the `cluster` Redis and pushed to every instance.
    #[serde(default)]
    pub shared: bool,
    /// With `shared`: read the whole shared set again this often (default 30s).
    pub refresh: Option<String>,
    #[serde(default)]
    pub sub: Vec<String>,
    #[serde(default)]
    pub jti: Vec<String>,
}

/// The JSON access log.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `-` for stdout, or a file path (appended to).
    pub path: String,
    /// Claims copied into each line, when the token carried them.
    #[serde(default)]
    pub claims: Vec<String>,
}

/// A named token-bucket rate limit.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `claim:NAME`, `ip` or `header:NAME`.
    pub key: String,
    /// `N/s`, `N/m` or `N/h`.
    pub rate: String,
    pub burst: u32,
    /// Bound on distinct keys tracked (default 100000).
    pub max_keys: Option<usize>,
    /// `local` (default): this instance's buckets; `cluster`: shared through `cluster.redis`.
    #[serde(default)]
    pub scope: LimitScope,
    /// With `scope: cluster`: admit locally and share the counts this often (not yet).
    pub sync: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    #[default]
    Local,
    Cluster,
}

/// `cluster`: state shared by the gateway instances.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub redis: RedisConfig,
    /// When Redis cannot answer: `local` (default), `allow` or `deny`.
    #[serde(default)]
    pub on_error: OnErrorConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user@]host[:port][/db]`.
    pub url: Option<String>,
    /// Redis Cluster seed nodes, instead of `url`.
    pub nodes: Option<Vec<String>>,
    pub username: Option<String>,
    /// The environment variable that holds the password.
    pub password_env: Option<String>,
    /// Per command (default 100ms).
    pub timeout: Option<String>,
    /// Before every key (default `portcullis:`).
    pub key_prefix: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnErrorConfig {
    #[default]
    Local,
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Position in the file's `routes` list (for error paths).
    #[serde(skip)]
    pub index: usize,
    pub prefix: String,
    /// The pool every request of the route goes to; or `upstream_by`.
    pub upstream: Option<String>,
    /// The pool chosen by a claim of the verified token.
    pub upstream_by: Option<UpstreamByConfig>,
    pub auth: Option<OneOrMany<String>>,
    pub host: Option<String>,
    pub methods: Option<Vec<String>>,
    pub rate_limit: Option<OneOrMany<String>>,
    /// Relay `Upgrade: websocket` on this route (default false: `Upgrade` is removed).
    #[serde(default)]
    pub websocket: bool,
    /// Replaces the matched prefix upstream: `/api/v1/x?q` -> `/v1/x?q`.
    pub rewrite: Option<String>,
    pub request_headers: Option<HeaderRulesConfig>,
    pub response_headers: Option<HeaderRulesConfig>,
    pub cors: Option<CorsConfig>,
}

/// `routes[].upstream_by`: after verification, a claim's value names the pool.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamByConfig {
    pub claim: String,
    /// Claim value -> upstream name.
    pub map: BTreeMap<String, String>,
    /// For a token without the claim or with an unmapped value (none: 403).
    pub default: Option<String>,
}

/// A config file read from disk, with the folder that relative paths resolve against.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: PathBuf,
    pub base_dir: PathBuf,
    pub config: Config,
    /// Structural errors of entries that were left out of `config`; `compile` reports them
    /// together with its own.
    pub errors: Vec<ConfigError>,
}

impl Loaded {
    /// Resolve a path from the config against the config file's folder.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

const SECTIONS: &[&str] = &[
    "server",
    "upstreams",
    "keys",
    "auth",
    "routes",
    "revocation",
    "rate_limits",
    "access_log",
    "tls",
    "cluster",
];

/// Read and parse a config file. A file that cannot be read or is not YAML is an error here;
/// entries with structural errors (unknown fields, wrong types) are left out of the config and
/// their errors kept in `Loaded::errors`, so that `policy::compile` can report them with its own.
pub fn load(file: &Path) -> Result<Loaded, ConfigErrors> {
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        file: file.to_path_buf(),
        errors,
    };
    let text = file::read_to_string(file)
        .map_err(|e| fail(vec![ConfigError::new("", format!("cannot read file: {e}"))]))?;
    let (config, errors) = parse(&text).map_err(fail)?;
    let base_dir = file
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(Loaded {
        file: file.to_path_buf(),
        base_dir,
        config,
        errors,
    })
}

/// Parse YAML text into a `Config` of the entries that parsed, and every structural error.
/// Only text that is not a YAML mapping at all is an `Err`.
#[allow(clippy::type_complexity)]
pub fn parse(text: &str) -> Result<(Config, Vec<ConfigError>), Vec<ConfigError>> {
    let root: Value = serde_yaml::from_str(text).map_err(|e| {
        let msg = match e.location() {
            Some(loc) => format!(
                "YAML syntax error at line {} column {}: {}",
                loc.line(),
                loc.column(),
                strip_location(&e.to_string())
            ),
            None => format!("YAML syntax error: {e}"),
        };
        vec![ConfigError::new("", msg)]
    })?;
    let mut errors = Vec::new();
    let mut config = Config::default();
    let map = match root {
        Value::Mapping(m) => m,
        Value::Null => {
            errors.push(ConfigError::new("", "the file is empty"));
            return Err(errors);
        }
        _ => {
            errors.push(ConfigError::new("", "the top level must be a mapping"));
            return Err(errors);
        }
    };
    for (k, v) in map {
        let key = match k.as_str() {
            Some(k) => k.to_string(),
            None => {
                errors.push(ConfigError::new("", format!("non-string key {k:?}")));
                continue;
            }
        };
        match key.as_str() {
            "server" => {
                if let Some(s) = entry::<ServerConfig>(&key, v, &mut errors) {
                    config.server = s;
                }
            }
            "upstreams" => config.upstreams = named(&key, v, &mut errors, &mut config.broken),
            "keys" => config.keys = named(&key, v, &mut errors, &mut config.broken),
            "auth" => config.auth = named(&key, v, &mut errors, &mut config.broken),
            "rate_limits" => config.rate_limits = named(&key, v, &mut errors, &mut config.broken),
            "tls" => config.tls = named(&key, v, &mut errors, &mut config.broken),
            "revocation" => config.revocation = entry(&key, v, &mut errors),
            "access_log" => config.access_log = entry(&key, v, &mut errors),
            "cluster" => config.cluster = entry(&key, v, &mut errors),
            "routes" => match v {
                Value::Sequence(items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        let path = format!("routes[{i}]");
                        match entry::<RouteConfig>(&path, item, &mut errors) {
                            Some(r) => config.routes.push(RouteConfig { index: i, ..r }),
                            None => {
                                config.broken.insert(path);
                            }
                        }
                    }
                }
                Value::Null => {}
                _ => errors.push(ConfigError::new("routes", "must be a list of routes")),
            },
            other => errors.push(ConfigError::new(
                other,
                format!(
                    "unknown field `{other}`, expected one of {}",
                    SECTIONS.join(", ")
                ),
            )),
        }
    }
    Ok((config, errors))
}

/// Deserialize one entry, recording its error under `path` extended by where inside the entry
/// it is (`server.encoded_slashes`, `upstreams.a.peers[1]`).
fn entry<T: DeserializeOwned>(path: &str, v: Value, errors: &mut Vec<ConfigError>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let full = match inner.as_str() {
                "." => path.to_string(),
                i if i.starts_with('[') => format!("{path}{i}"),
                i => format!("{path}.{i}"),
            };
            errors.push(ConfigError::new(
                full,
                strip_location(&e.into_inner().to_string()),
            ));
            None
        }
    }
}

/// A section that maps names to entries (`upstreams`, `keys`, `auth`).
fn named<T: DeserializeOwned>(
    section: &str,
    v: Value,
    errors: &mut Vec<ConfigError>,
    broken: &mut BTreeSet<String>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                let Some(name) = k.as_str() else {
                    errors.push(ConfigError::new(section, format!("non-string name {k:?}")));
                    continue;
                };
                let path = format!("{section}.{name}");
                match entry(&path, v, errors) {
                    Some(t) => {
                        out.insert(name.to_string(), t);
                    }
                    None => {
                        broken.insert(path);
                    }
                }
            }
        }
        Value::Null => {}
        _ => errors.push(ConfigError::new(
            section,
            "must be a mapping of names to entries",
        )),
    }
    out
}

/// serde_yaml appends " at line X column Y" for positions within a value we re-parsed; those
/// positions are meaningless for `from_value`, so drop them.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_errors_from_every_section() {
        let text = r#"
server: {listen: "127.0.0.1:1", bogus: 1}
upstreams:
  a: {peers: ["127.0.0.1:2"], extra: true}
  b: {peers: ["127.0.0.1:3"]}
keys:
  k: {secret: x, colour: red}
routes:
  - {prefix: /, upstream: b, nope: 1}
  - {prefix: /x, upstream: b}
whatever: 1
"#;
        let (config, errs) = parse(text).unwrap();
        assert!(config.defines("upstreams", "a"));
        assert!(config.defines("upstreams", "b"));
        assert!(!config.defines("upstreams", "c"));
        assert_eq!(config.routes.len(), 1);
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "server.bogus",
                "upstreams.a.extra",
                "keys.k.colour",
                "routes[0].nope",
                "whatever"
            ]
        );
        assert!(errs[0].message.contains("bogus"), "{:?}", errs[0]);
        assert!(errs[1].message.contains("extra"), "{:?}", errs[1]);
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let errs = parse("server:\n  listen: [\n").unwrap_err();
        assert!(errs[0].message.contains("line"), "{}", errs[0].message);
        assert!(errs[0].message.contains("column"), "{}", errs[0].message);
    }

    #[test]
    fn peers_in_both_forms() {
        let (c, errs) = parse(
            "upstreams:\n  a:\n    peers: [\"127.0.0.1:1\", {addr: \"127.0.0.1:2\", weight: 3}]\n",
        )
        .unwrap();
        assert!(errs.is_empty());
        let peers = &c.upstreams["a"].peers;
        assert_eq!(peers[0].weight(), 1);
        assert_eq!(peers[1].addr(), "127.0.0.1:2");
        assert_eq!(peers[1].weight(), 3);
    }
}
