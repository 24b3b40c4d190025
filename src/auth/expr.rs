//! `expr` rules: CEL (the Common Expression Language, through the `cel` crate), compiled once
//! at load and evaluated per request after the token verified.
//!
//! Variables: `claims` (the verified payload), `header` (the JOSE header), `request` (`method`,
//! `path`, `host`, `query`, `headers` with lower-case names), `client` (`ip`) and `now` (a
//! timestamp). Only the variables an expression names are made for a request: the token's parts
//! are converted once per verified token (the cache keeps them) and lent to each evaluation;
//! `request` and `client` are maps whose entries are read from the request when used.
//!
//! Bounded by construction: CEL has no loops or recursion, macros iterate over finite lists,
//! and an expression longer than `MAX_EXPR_BYTES` or nested deeper than `MAX_NESTING` is
//! refused at load. An evaluation error (a missing key, a type mismatch) or a result that is not
//! `true` means the rule does not hold: a 403, never a 500.

use cel::objects::{Key, Map};
use cel::{Context, Program, Value};
use lazy::{Client, Lazy, Request};
use pingora_http::RequestHeader;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

mod lazy;

/// Longest expression accepted (bytes).
pub const MAX_EXPR_BYTES: usize = 4096;
/// Deepest nesting of brackets accepted (the parser recurses on them).
pub const MAX_NESTING: usize = 32;

/// The variables an expression may name.
pub const VARIABLES: [&str; 5] = ["claims", "header", "request", "client", "now"];

/// The standard functions and macros, built once; each evaluation is a child scope of it.
static ROOT: LazyLock<Context<'static, 'static>> = LazyLock::new(Context::default);

/// A compiled expression.
pub struct Expr {
    source: String,
    program: Program,
    uses: Uses,
}

/// Which variables an expression reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Uses {
    claims: bool,
    header: bool,
    request: bool,
    client: bool,
    now: bool,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Expr) -> bool {
        self.source == other.source
    }
}

/// What a request gives an expression.
pub struct Input<'a> {
    pub claims: &'a CelVal,
    pub header: &'a CelVal,
    pub request: &'a RequestHeader,
    pub client_ip: Option<IpAddr>,
    /// Seconds since the epoch.
    pub now: f64,
}

impl Expr {
    /// Compile an expression; `Err` says what is wrong and where (`line L, column C`).
    pub fn compile(source: &str) -> Result<Expr, String> {
        if source.trim().is_empty() {
            return Err("empty expression".into());
        }
        if source.len() > MAX_EXPR_BYTES {
            return Err(format!(
                "expression is {} bytes; at most {MAX_EXPR_BYTES} are allowed",
                source.len()
            ));
        }
        if nesting(source) > MAX_NESTING {
            return Err(format!(
                "expression nests deeper than {MAX_NESTING} brackets"
            ));
        }
        let program = Program::compile(source).map_err(|errors| {
            let e = errors.errors.first();
            match e {
                Some(e) => {
                    let (line, column) = (e.pos.0.max(1), e.pos.1.max(0) + 1);
                    let at = if source.contains('\n') {
                        format!("line {line}, column {column}")
                    } else {
                        format!("column {column}")
                    };
                    format!("syntax error at {at}: {}", e.msg)
                }
                None => "syntax error".to_string(),
            }
        })?;
        let refs = program.references();
        let bound = macro_variables(source);
        let mut unknown: Vec<&str> = refs
            .variables()
            .into_iter()
            .filter(|v| !VARIABLES.contains(v) && !bound.iter().any(|b| b == v))
            .collect();
        unknown.sort_unstable();
        if let Some(v) = unknown.first() {
            return Err(format!(
                "unknown variable {v:?} (variables: {})",
                VARIABLES.join(", ")
            ));
        }
        let uses = Uses {
            claims: refs.has_variable("claims"),
            header: refs.has_variable("header"),
            request: refs.has_variable("request"),
            client: refs.has_variable("client"),
            now: refs.has_variable("now"),
        };
        Ok(Expr {
            source: source.to_owned(),
            program,
            uses,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluate: `Ok(true)` only when the expression is the boolean `true`; `Err` tells why
    /// it could not be evaluated (for `explain`).
    pub fn eval(&self, input: &Input<'_>) -> Result<bool, String> {
        match self.value(input)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!("the result is {}, not a bool", type_name(&other))),
        }
    }

    /// The expression's value for `input`.
    pub fn value(&self, input: &Input<'_>) -> Result<Value, String> {
        // The token's values are lent to the expression, not copied: cel converts a variable
        // added by value in full on every evaluation (3 µs for a small payload), while a
        // resolver hands out a reference. The request's fields are made when read: a map of
        // every header built up front cost 2 µs, a field read from the request costs a
        // borrowed string.
        let vars = Variables {
            claims: self.uses.claims.then_some(input.claims),
            header: self.uses.header.then_some(input.header),
            request: self.uses.request.then(|| Request::new(input.request)),
            client: self.uses.client.then(|| Lazy::new(Client(input.client_ip))),
            now: self.uses.now.then(|| val(timestamp(input.now))),
        };
        let root: &Context<'_, '_> = &ROOT;
        let mut ctx = root.new_inner_scope();
        ctx.set_variable_resolver(&vars);
        self.program.execute(&ctx).map_err(|e| e.to_string())
    }
}

/// A value as cel evaluates it.
pub type CelVal = Box<dyn cel::common::value::Val>;

/// Convert once (what cel would do on every evaluation of a variable given as a `Value`).
pub fn val(v: Value) -> CelVal {
    // Every `Value` built here (from JSON, strings, maps, timestamps) converts.
    match CelVal::try_from(v) {
        Ok(v) => v,
        Err(_) => Box::new(cel::common::types::CelNull),
    }
}

/// The variables of one evaluation: the token's borrowed, the request's made for it.
struct Variables<'a> {
    claims: Option<&'a CelVal>,
    header: Option<&'a CelVal>,
    request: Option<Lazy<'a, Request<'a>>>,
    client: Option<Lazy<'a, Client>>,
    now: Option<CelVal>,
}

impl cel::context::VariableResolver for Variables<'_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<cel::common::value::CowVal<'b, 'b>> {
        let v: &dyn cel::common::value::Val = match name {
            "claims" => self.claims?.as_ref(),
            "header" => self.header?.as_ref(),
            "request" => self.request.as_ref()?,
            "client" => self.client.as_ref()?,
            "now" => self.now.as_ref()?.as_ref(),
            _ => return None,
        };
        Some(cel::common::value::CowVal::Borrowed(v))
    }
}

/// The names that macros bind (`list.exists(r, …)` binds `r`): not free variables.
fn macro_variables(source: &str) -> Vec<&str> {
    static RE: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(
            r"\.(?:all|exists|exists_one|map|filter)\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,",
        )
        .expect("a valid pattern")
    });
    RE.captures_iter(source)
        .filter_map(|c| c.get(1))
        .map(|m| m.as_str())
        .collect()
}

/// Brackets open at the deepest point (strings included: an over-estimate is fine).
fn nesting(s: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for b in s.bytes() {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
        Value::Int(_) | Value::UInt(_) => "an integer",
        Value::Float(_) => "a double",
        Value::String(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::Null => "null",
        _ => "not a bool",
    }
}

/// A JSON value (a token's payload or header) as CEL sees it.
pub fn from_json(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(a) => Value::List(Arc::new(a.iter().map(from_json).collect())),
        serde_json::Value::Object(o) => from_object(o),
    }
}

/// A JSON object as a CEL map.
pub fn from_object(o: &serde_json::Map<String, serde_json::Value>) -> Value {
    Value::Map(Map {
        map: Arc::new(
            o.iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), from_json(v)))
                .collect(),
        ),
    })
}

fn timestamp(now: f64) -> Value {
    let secs = now.floor() as i64;
    let nanos = ((now - now.floor()) * 1e9) as u32;
    match chrono::DateTime::from_timestamp(secs, nanos) {
        Some(t) => Value::Timestamp(t.fixed_offset()),
        None => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(src: &str, claims: serde_json::Value, method: &str, path: &str) -> Result<bool, String> {
        let e = Expr::compile(src)?;
        let mut req = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        req.insert_header("Host", "API.example.com:8443").unwrap();
        req.append_header("X-Tag", "a").unwrap();
        req.append_header("X-Tag", "b").unwrap();
        let claims = val(from_json(&claims));
        let header = val(from_json(&json!({"alg": "HS256", "typ": "at+jwt"})));
        e.eval(&Input {
            claims: &claims,
            header: &header,
            request: &req,
            client_ip: Some("10.1.2.3".parse().unwrap()),
            now: 1_700_000_000.5,
        })
    }

    #[test]
    fn the_issue_examples() {
        let gold = r#"claims.tier == "gold" || request.method == "GET""#;
        assert_eq!(run(gold, json!({"tier": "gold"}), "POST", "/x"), Ok(true));
        assert_eq!(run(gold, json!({"tier": "free"}), "GET", "/x"), Ok(true));
        assert_eq!(run(gold, json!({"tier": "free"}), "POST", "/x"), Ok(false));
        let owner = r#"request.path.startsWith("/users/" + claims.sub + "/") || "admin" in claims.realm_access.roles"#;
        let alice = json!({"sub": "alice", "realm_access": {"roles": ["staff"]}});
        assert_eq!(run(owner, alice.clone(), "GET", "/users/alice/x"), Ok(true));
        assert_eq!(run(owner, alice, "GET", "/users/bob/x"), Ok(false));
        let admin = json!({"sub": "root", "realm_access": {"roles": ["admin"]}});
        assert_eq!(run(owner, admin, "GET", "/users/bob/x"), Ok(true));
    }

    #[test]
    fn every_variable() {
        let c = json!({"sub": "a", "n": 3, "big": 18446744073709551615u64, "f": 1.5});
        for (src, want) in [
            (r#"header.typ == "at+jwt""#, true),
            (r#"request.host == "api.example.com""#, true),
            (r#"request.query == "q=1""#, true),
            (r#"request.headers["x-tag"] == "a, b""#, true),
            (r#"client.ip == "10.1.2.3""#, true),
            ("now > timestamp('2023-01-01T00:00:00Z')", true),
            ("claims.n + 1 == 4", true),
            ("claims.roles.exists(r, r == 'x') || true", true),
            ("claims.big > 0u", true),
            ("claims.f > 1.0", true),
            ("has(claims.sub) && !has(claims.email)", true),
            ("size(claims) == 4", true),
            ("now - timestamp(int(claims.n)) > duration('1h')", true),
            (r#""sub" in claims && claims.sub.matches("^[a-z]+$")"#, true),
        ] {
            assert_eq!(run(src, c.clone(), "GET", "/p?q=1"), Ok(want), "{src}");
        }
    }

    #[test]
    fn request_maps_made_on_access_behave_as_maps() {
        // `request`, `request.headers` and `client` are made field by field when read; what
        // else a map does works on the whole map.
        for src in [
            r#""x-tag" in request.headers && !("x-none" in request.headers)"#,
            r#"has(request.headers.host) && !has(request.headers.cookie)"#,
            "size(request.headers) == 2 && size(request) == 5 && size(client) == 1",
            r#"request.headers.exists(k, k == "x-tag")"#,
            r#"request.headers.all(k, k.matches("^[a-z-]+$"))"#,
            r#"request.headers.filter(k, k.startsWith("x-")) == ["x-tag"]"#,
            r#"[request.method, request.path] == ["GET", "/p"]"#,
            r#""method" in request && !("nope" in request)"#,
            r#"request.headers.host == "API.example.com:8443""#,
        ] {
            assert_eq!(run(src, json!({}), "GET", "/p"), Ok(true), "{src}");
        }
        // Header names are lower-case; an upper-case one is a missing key, as in a map.
        for src in [
            r#"request.headers["X-Tag"] == "a, b""#,
            "request.nope == 1",
            "request.headers[1] == 1",
        ] {
            assert!(run(src, json!({}), "GET", "/p").is_err(), "{src}");
        }
        assert_eq!(
            run(r#""X-Tag" in request.headers"#, json!({}), "GET", "/p"),
            Ok(false)
        );
    }

    #[test]
    fn evaluation_errors_are_not_true() {
        // A missing key, a type mismatch, a non-bool result: Err (the rule fails).
        for src in [
            "claims.missing == 1",
            "claims.sub + 1 == 2",
            "claims.sub",
            "1 / 0 == 1",
        ] {
            assert!(run(src, json!({"sub": "a"}), "GET", "/").is_err(), "{src}");
        }
    }

    #[test]
    fn load_errors_say_where() {
        let e = Expr::compile("claims.a == ").unwrap_err();
        assert!(e.starts_with("syntax error at column "), "{e}");
        let e = Expr::compile("claim.sub == 'a'").unwrap_err();
        assert!(e.contains("unknown variable \"claim\""), "{e}");
        assert!(Expr::compile("").is_err());
        let long = format!("{}true", "true && ".repeat(600));
        assert!(Expr::compile(&long).unwrap_err().contains("bytes"));
        let deep = format!("{}true{}", "(".repeat(40), ")".repeat(40));
        assert!(Expr::compile(&deep).unwrap_err().contains("nests"));
        // Comprehension variables are not free variables.
        assert!(Expr::compile("claims.roles.exists(r, r == 'x')").is_ok());
    }
}
