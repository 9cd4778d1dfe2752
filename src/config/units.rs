//! Durations (`"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"7d"`) and sizes (`"64MiB"`)
//! as they are written in configuration and rules files.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as a string with a unit; zero is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn as_millis_u64(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"7d"` (and combinations like `"1h 30m"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration; write it like \"30s\", \"5m\" or \"500ms\"".into());
    }
    if s.starts_with('-') {
        return Err(format!("negative duration `{s}`"));
    }
    if s.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "duration `{s}` has no unit; write it like \"{s}s\" or \"{s}ms\""
        ));
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration `{s}`: {e}"))
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let dur = parse_duration(&s).map_err(serde::de::Error::custom)?;
        if dur.is_zero() {
            return Err(serde::de::Error::custom(format!(
                "duration `{s}` must be greater than zero"
            )));
        }
        Ok(HumanDuration(dur))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A size in bytes written as `"64MiB"`, `"512KiB"`, `"1GB"` or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("invalid size `{s}`; write it like \"64MiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}`; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    let bytes = num * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("size `{s}` is out of range"));
    }
    Ok(bytes as u64)
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(0) => Err(serde::de::Error::custom("size must be greater than zero")),
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", b >> 30)
        } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit_of_the_spec() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
    }

    #[test]
    fn durations_without_unit_or_negative_are_refused_with_a_hint() {
        assert!(parse_duration("30").unwrap_err().contains("\"30s\""));
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0MiB").is_err());
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
    }
}
