//! Verified claims, parsed strictly: a JSON object, no duplicate member names at any depth.
//!
//! serde_json keeps the last of two equal keys; two parsers disagreeing on which `sub` or `exp`
//! counts is a classic confusion attack, so a duplicate makes the token invalid.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// The verified payload of a token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims(pub Map<String, Value>);

impl Claims {
    /// Parse a decoded payload. Errors on anything but a JSON object with unique keys.
    pub fn parse(json: &[u8]) -> Result<Claims, String> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let v = StrictValue::deserialize(&mut de).map_err(|e| e.to_string())?;
        de.end().map_err(|e| e.to_string())?;
        match v.0 {
            Value::Object(m) => Ok(Claims(m)),
            _ => Err("payload is not a JSON object".into()),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// The value at a claim path (`realm_access.roles`, `/https:~1~1example.com~1roles`).
    pub fn at(&self, path: &super::ClaimPath) -> Option<&Value> {
        path.lookup(&self.0)
    }

    /// A string claim, if it is a string.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }
}

/// A JSON value whose objects reject duplicate member names.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_objects() {
        let c = Claims::parse(br#"{"sub":"a","n":1,"x":{"y":[1,2]}}"#).unwrap();
        assert_eq!(c.str("sub"), Some("a"));
        assert_eq!(c.get("n"), Some(&Value::from(1)));
    }

    #[test]
    fn rejects_duplicates_at_any_depth() {
        assert!(Claims::parse(br#"{"sub":"a","sub":"b"}"#).is_err());
        assert!(Claims::parse(br#"{"x":{"y":1,"y":2}}"#).is_err());
        assert!(Claims::parse(br#"{"x":[{"y":1,"y":2}]}"#).is_err());
    }

    #[test]
    fn rejects_non_objects_and_trailing_data() {
        assert!(Claims::parse(b"[1]").is_err());
        assert!(Claims::parse(b"\"s\"").is_err());
        assert!(Claims::parse(b"{} {}").is_err());
        assert!(Claims::parse(b"").is_err());
    }
}
