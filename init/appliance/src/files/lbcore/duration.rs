//! Human-friendly durations in the configuration file: `"300s"`, `"500ms"`, `"5m"`,
//! `"1h"`, `"2d"`, or a bare integer number of seconds.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration as written in the configuration; serializes back to the same notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub Duration);

impl Span {
    pub fn from_secs(secs: u64) -> Self {
        Span(Duration::from_secs(secs))
    }

    pub fn from_millis(ms: u64) -> Self {
        Span(Duration::from_millis(ms))
    }
}

/// Why text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "`{0}` is not a duration: write a whole number with a unit, such as \"2s\", \"500ms\", \"5m\""
    )]
    NotADuration(String),
    #[error("`{0}` is too large for a duration")]
    TooLarge(String),
    #[error("`{0}`: unknown unit `{1}` (use ms, s, m, h or d)")]
    Unit(String, String),
}

/// Parses `"<number><unit>"` with unit one of `ms`, `s`, `m`, `h`, `d`; no unit means seconds.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(DurationError::NotADuration(text.to_string()));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| DurationError::TooLarge(text.to_string()))?;
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(DurationError::Unit(text.to_string(), other.to_string())),
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| DurationError::TooLarge(text.to_string()))
}

/// Formats a duration in the largest unit that represents it exactly.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= per && ms % per == 0 {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(self.0))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration such as \"2s\", \"500ms\" or \"5m\", or a number of seconds",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Span, E> {
                u64::try_from(v)
                    .map(Span::from_secs)
                    .map_err(|_| E::custom(format!("a duration cannot be negative, got {v}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Span, E> {
                Ok(Span::from_secs(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Span, E> {
                parse(v).map(Span).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("300s").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse("7").unwrap(), Duration::from_secs(7));
    }

    #[test]
    fn refuses_nonsense() {
        assert!(
            parse("fast")
                .unwrap_err()
                .to_string()
                .contains("not a duration")
        );
        assert!(
            parse("3 weeks")
                .unwrap_err()
                .to_string()
                .contains("unknown unit")
        );
        assert!(parse("-1s").is_err());
        assert!(
            parse("99999999999999999999s")
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
    }

    #[test]
    fn formats_round_trip() {
        for text in ["2s", "500ms", "5m", "1h", "2d", "1500ms"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }
}
