use super::ConfigError;
use std::ops::RangeInclusive;
use std::time::Duration;

/// An optional duration field of the config: `default` when absent; an unparsable value or one
/// outside `range` is recorded in `errors` under `field` (and `default` returned).
pub fn duration_field(
    field: String,
    value: &Option<String>,
    default: Duration,
    range: RangeInclusive<Duration>,
    errors: &mut Vec<ConfigError>,
) -> Duration {
    let Some(v) = value else { return default };
    match parse_duration(v) {
        Ok(d) if range.contains(&d) => d,
        Ok(_) => {
            errors.push(ConfigError::new(
                field,
                format!(
                    "{v:?} is out of range {:?}..={:?}",
                    range.start(),
                    range.end()
                ),
            ));
            default
        }
        Err(e) => {
            errors.push(ConfigError::new(field, e));
            default
        }
    }
}

/// Parse `500ms`, `30s`, `10m`, `1h` (a whole number and a unit; `0` alone is allowed).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("invalid duration {s:?}: missing unit (ms, s, m or h)"))?;
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid duration {s:?}: expected a whole number and a unit, like 30s"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects() {
        for bad in ["", "s", "10", "1.5s", "-1s", "10 parsecs", "5d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
