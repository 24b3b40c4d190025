//! Required-claim rules: checked after a token is verified; a rule that fails means 403.
//!
//! `verdict` is the one decision for a rule: the proxy uses whether it holds, `explain` also
//! what it saw.

use super::claims::Claims;
use super::ClaimPath;
use crate::config::RuleConfig;
use serde_json::Value;

/// One compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// The claim (a space-delimited string or an array of strings) holds every value.
    Contains {
        claim: ClaimPath,
        values: Vec<String>,
    },
    /// The claim (a space-delimited string or an array) holds at least one of these.
    AnyOf {
        claim: ClaimPath,
        values: Vec<Value>,
    },
    /// The claim's whole value equals one of these (JSON equality).
    OneOf {
        claim: ClaimPath,
        values: Vec<Value>,
    },
    /// The claim's value equals this (JSON equality).
    Equals { claim: ClaimPath, value: Value },
    /// A CEL expression that must be `true`.
    Expr(std::sync::Arc<super::expr::Expr>),
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[Value]| {
            let items: Vec<String> = v.iter().map(Value::to_string).collect();
            items.join(", ")
        };
        match self {
            Rule::Contains { claim, values } => {
                write!(f, "{} contains [{}]", claim.as_str(), values.join(", "))
            }
            Rule::AnyOf { claim, values } => {
                write!(f, "{} any_of [{}]", claim.as_str(), list(values))
            }
            Rule::OneOf { claim, values } => {
                write!(f, "{} one_of [{}]", claim.as_str(), list(values))
            }
            Rule::Equals { claim, value } => write!(f, "{} equals {value}", claim.as_str()),
            Rule::Expr(e) => write!(f, "expr {:?}", e.source()),
        }
    }
}

/// What a rule is checked against.
pub struct Facts<'a> {
    pub token: &'a super::cache::VerifiedToken,
    pub request: &'a pingora_http::RequestHeader,
    pub client_ip: Option<std::net::IpAddr>,
    /// Seconds since the epoch.
    pub now: f64,
}

/// A rule's answer for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub holds: bool,
    /// What the rule saw: the claim's value, or the expression's value or error.
    pub saw: String,
}

/// A failed rule, as the 403 challenge reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFailure {
    /// For a `contains` rule: the space-separated values required (the challenge's `scope`).
    pub scope: Option<String>,
}

impl Rule {
    /// Compile a configured rule; `Err` names what is wrong.
    pub fn compile(cfg: &RuleConfig) -> Result<Rule, String> {
        if let Some(src) = &cfg.expr {
            if cfg.claim.is_some()
                || cfg.contains.is_some()
                || cfg.any_of.is_some()
                || cfg.one_of.is_some()
                || cfg.equals.is_some()
            {
                return Err(
                    "an `expr` rule has no claim, contains, any_of, one_of or equals".into(),
                );
            }
            return super::expr::Expr::compile(src)
                .map(|e| Rule::Expr(std::sync::Arc::new(e)))
                .map_err(|e| format!("expr: {e}"));
        }
        let Some(claim) = &cfg.claim else {
            return Err("give `claim` (with contains, any_of, one_of or equals) or `expr`".into());
        };
        let given = [
            cfg.contains.is_some(),
            cfg.any_of.is_some(),
            cfg.one_of.is_some(),
            cfg.equals.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            return Err("give exactly one of contains, any_of, one_of, equals".into());
        }
        let claim = ClaimPath::parse(claim)?;
        if let Some(values) = &cfg.contains {
            if values.is_empty() || values.iter().any(|v| v.is_empty() || v.contains(' ')) {
                return Err("`contains` needs non-empty values without spaces".into());
            }
            return Ok(Rule::Contains {
                claim,
                values: values.clone(),
            });
        }
        if let Some(values) = &cfg.one_of {
            let values = scalars("one_of", values)?;
            return Ok(Rule::OneOf { claim, values });
        }
        if let Some(values) = &cfg.any_of {
            let values = scalars("any_of", values)?;
            return Ok(Rule::AnyOf { claim, values });
        }
        let value = yaml_scalar(cfg.equals.as_ref().expect("counted above"))?;
        Ok(Rule::Equals { claim, value })
    }

    /// The claim the rule reads, if it reads one.
    pub fn claim(&self) -> Option<&ClaimPath> {
        match self {
            Rule::Contains { claim, .. }
            | Rule::AnyOf { claim, .. }
            | Rule::OneOf { claim, .. }
            | Rule::Equals { claim, .. } => Some(claim),
            Rule::Expr(_) => None,
        }
    }

    /// Does the rule hold for this request, and what did it see?
    pub fn verdict(&self, facts: &Facts<'_>) -> Verdict {
        match self {
            Rule::Expr(e) => {
                let (claims, header) = facts.token.cel_values();
                let input = super::expr::Input {
                    claims,
                    header,
                    request: facts.request,
                    client_ip: facts.client_ip,
                    now: facts.now,
                };
                match e.eval(&input) {
                    Ok(b) => Verdict {
                        holds: b,
                        saw: b.to_string(),
                    },
                    Err(why) => Verdict {
                        holds: false,
                        saw: format!("error: {why}"),
                    },
                }
            }
            _ => Verdict {
                holds: self.holds_for(facts),
                saw: self
                    .claim()
                    .and_then(|c| facts.token.claims.at(c))
                    .map_or_else(|| "missing".to_string(), |v| v.to_string()),
            },
        }
    }

    /// Does the rule hold for this request? (`verdict` without the description: the proxy's.)
    pub fn holds_for(&self, facts: &Facts<'_>) -> bool {
        match self {
            Rule::Expr(_) => self.verdict(facts).holds,
            _ => self.holds(&facts.token.claims),
        }
    }

    /// A claim rule against these claims (an `expr` rule needs the request: `verdict`).
    pub fn holds(&self, claims: &Claims) -> bool {
        match self {
            Rule::Expr(_) => false,
            Rule::Contains { claim, values } => match claims.at(claim) {
                Some(Value::String(s)) => values
                    .iter()
                    .all(|v| s.split_ascii_whitespace().any(|x| x == v)),
                Some(Value::Array(a)) => values
                    .iter()
                    .all(|v| a.iter().any(|x| x.as_str() == Some(v.as_str()))),
                _ => false,
            },
            Rule::AnyOf { claim, values } => match claims.at(claim) {
                Some(Value::String(s)) => s
                    .split_ascii_whitespace()
                    .any(|x| values.iter().any(|v| v.as_str() == Some(x))),
                Some(Value::Array(a)) => a.iter().any(|x| values.iter().any(|v| json_eq(x, v))),
                _ => false,
            },
            Rule::OneOf { claim, values } => claims
                .at(claim)
                .is_some_and(|c| values.iter().any(|v| json_eq(c, v))),
            Rule::Equals { claim, value } => claims.at(claim).is_some_and(|c| json_eq(c, value)),
        }
    }
}

/// JSON equality where `1` and `1.0` are equal.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// A rule's non-empty list of values.
fn scalars(field: &str, values: &[serde_yaml::Value]) -> Result<Vec<Value>, String> {
    if values.is_empty() {
        return Err(format!("`{field}` is empty"));
    }
    values.iter().map(yaml_scalar).collect()
}

/// A rule value: a string, number or boolean.
fn yaml_scalar(v: &serde_yaml::Value) -> Result<Value, String> {
    match v {
        serde_yaml::Value::String(s) => Ok(Value::String(s.clone())),
        serde_yaml::Value::Bool(b) => Ok(Value::Bool(*b)),
        serde_yaml::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(Value::from(i))
            } else if let Some(u) = n.as_u64() {
                Ok(Value::from(u))
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .ok_or_else(|| format!("{n:?} is not a JSON number"))
            }
        }
        other => Err(format!(
            "rule values are strings, numbers or booleans, not {other:?}"
        )),
    }
}

/// Check every rule; the first that fails decides the answer.
pub fn check_all(rules: &[Rule], facts: &Facts<'_>) -> Result<(), RuleFailure> {
    first_failure(rules, |r| r.holds_for(facts))
}

fn first_failure(rules: &[Rule], holds: impl Fn(&Rule) -> bool) -> Result<(), RuleFailure> {
    for r in rules {
        if !holds(r) {
            return Err(RuleFailure {
                scope: match r {
                    Rule::Contains { values, .. } => Some(values.join(" ")),
                    _ => None,
                },
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> Result<Rule, String> {
        Rule::compile(&serde_yaml::from_str(yaml).unwrap())
    }

    fn claims(json: &str) -> Claims {
        Claims::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn contains_reads_strings_and_arrays() {
        let r = rule("{claim: scope, contains: [read:leads, write:leads]}").unwrap();
        assert!(r.holds(&claims(r#"{"scope":"openid read:leads  write:leads"}"#)));
        assert!(r.holds(&claims(r#"{"scope":["write:leads","read:leads"]}"#)));
        assert!(!r.holds(&claims(r#"{"scope":"read:leads"}"#)));
        assert!(!r.holds(&claims(r#"{"scope":"read:leadsX write:leads"}"#)));
        assert!(!r.holds(&claims(r#"{"other":"read:leads write:leads"}"#)));
        assert!(!r.holds(&claims(r#"{"scope":42}"#)));
        let c = claims(r#"{"scope":""}"#);
        let fail = first_failure(&[r], |r| r.holds(&c)).unwrap_err();
        assert_eq!(fail.scope.as_deref(), Some("read:leads write:leads"));
    }

    #[test]
    fn one_of_and_equals_use_json_equality() {
        let r = rule("{claim: tier, one_of: [gold, silver]}").unwrap();
        assert!(r.holds(&claims(r#"{"tier":"gold"}"#)));
        assert!(!r.holds(&claims(r#"{"tier":"bronze"}"#)));
        assert!(!r.holds(&claims(r#"{"tier":["gold"]}"#)));
        let r = rule("{claim: email_verified, equals: true}").unwrap();
        assert!(r.holds(&claims(r#"{"email_verified":true}"#)));
        assert!(!r.holds(&claims(r#"{"email_verified":"true"}"#)));
        assert!(!r.holds(&claims(r#"{}"#)));
        let r = rule("{claim: level, equals: 3}").unwrap();
        assert!(r.holds(&claims(r#"{"level":3.0}"#)));
        let c = claims("{}");
        assert_eq!(
            first_failure(&[r], |r| r.holds(&c)).unwrap_err().scope,
            None
        );
    }

    #[test]
    fn any_of_reads_arrays_and_space_delimited_strings() {
        let r = rule("{claim: groups, any_of: [eng, ops]}").unwrap();
        assert!(r.holds(&claims(r#"{"groups":["sales","eng"]}"#)));
        assert!(r.holds(&claims(r#"{"groups":"ops"}"#)));
        assert!(r.holds(&claims(r#"{"groups":"sales ops"}"#)));
        assert!(!r.holds(&claims(r#"{"groups":["sales"]}"#)));
        assert!(!r.holds(&claims(r#"{"groups":"engineering"}"#)));
        assert!(!r.holds(&claims(r#"{"groups":{"eng":1}}"#)));
        assert!(!r.holds(&claims(r#"{}"#)));
        let r = rule("{claim: levels, any_of: [3]}").unwrap();
        assert!(r.holds(&claims(r#"{"levels":[1,3.0]}"#)));
        // one_of compares the whole value: an array never equals a listed scalar.
        let r = rule("{claim: groups, one_of: [eng]}").unwrap();
        assert!(!r.holds(&claims(r#"{"groups":["eng"]}"#)));
    }

    #[test]
    fn rules_follow_claim_paths() {
        let kc = claims(
            r#"{"realm_access":{"roles":["staff"]},"resource_access":{"api":{"roles":["read"]}},"https://example.com/tier":"gold"}"#,
        );
        let r = rule("{claim: realm_access.roles, contains: [staff]}").unwrap();
        assert!(r.holds(&kc));
        let r = rule("{claim: resource_access.api.roles, any_of: [read, write]}").unwrap();
        assert!(r.holds(&kc));
        let r = rule("{claim: /https:~1~1example.com~1tier, equals: gold}").unwrap();
        assert!(r.holds(&kc));
        let r = rule("{claim: realm_access.roles, contains: [admin]}").unwrap();
        assert!(!r.holds(&kc));
        assert!(rule("{claim: a..b, equals: 1}").is_err());
    }

    #[test]
    fn bad_rules() {
        assert!(rule("{claim: a}").is_err());
        assert!(rule("{claim: a, equals: 1, one_of: [1]}").is_err());
        assert!(rule("{claim: a, contains: []}").is_err());
        assert!(rule("{claim: a, contains: [\"x y\"]}").is_err());
        assert!(rule("{claim: a, equals: [1, 2]}").is_err());
        assert!(rule("{claim: '', equals: 1}").is_err());
    }
}
