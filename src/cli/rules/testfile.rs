//! Rule unit tests (`outpost rules test FILE...`), like `promtool test rules`:
//! readings with times relative to the start in, the alerts expected out.
//!
//! ```toml
//! rules = ["rules.toml"]          # relative to this file
//!
//! [[test]]
//! name = "hot for two minutes fires, then resolves below clear"
//! readings = [
//!   { at = "0s", sensor = "greenhouse/t1", metric = "temperature", value = 31.0 },
//!   { at = "3m", sensor = "greenhouse/t1", metric = "temperature", value = 27.0 },
//! ]
//! # or evenly spaced values:
//! series = [{ sensor = "greenhouse/t2", metric = "temperature", start = "0s", every = "30s", values = [29, 31, 32] }]
//! until = "10m"                   # run timers up to here (default: the last reading)
//! only = ["greenhouse-hot"]       # compare only these rules' alerts (default: all)
//! expect = [
//!   { at = "2m", rule = "greenhouse-hot", sensor = "greenhouse/t1", state = "firing" },
//!   { at = "3m", rule = "greenhouse-hot", sensor = "greenhouse/t1", state = "resolved" },
//! ]
//! ```
//!
//! Every alert produced (repeats included) must be expected, in order; the
//! optional fields of an expectation (`at`, `metric`, `severity`, `value`,
//! `threshold`, `message`) are compared only when given.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use toml::Spanned;
use toml::de::DeValue;

use crate::config::parse_duration;
use crate::diagnostic::{Diagnostics, Source, deserialize_lenient};
use crate::reading::Reading;
use crate::rules::replay::Driver;
use crate::rules::{AlertDraft, AlertState, Rule, Severity};

/// Wall time the simulated series starts at: 2026-01-01T00:00:00Z.
pub const EPOCH_WALL_MS: i64 = 1_767_225_600_000;

/// A time offset from the start of a test: `"0s"`, `"90s"`, `"2m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Offset(pub u64);

impl<'de> Deserialize<'de> for Offset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let dur = parse_duration(&s).map_err(serde::de::Error::custom)?;
        Ok(Offset(u64::try_from(dur.as_millis()).unwrap_or(u64::MAX)))
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = std::time::Duration::from_millis(self.0);
        if self.0 == 0 {
            f.write_str("0s")
        } else {
            write!(f, "{}", humantime::format_duration(d))
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestReading {
    pub at: Offset,
    pub sensor: String,
    pub metric: String,
    pub value: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Series {
    pub sensor: String,
    pub metric: String,
    #[serde(default = "zero")]
    pub start: Offset,
    pub every: Offset,
    pub values: Vec<f64>,
}

fn zero() -> Offset {
    Offset(0)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub at: Option<Offset>,
    pub rule: String,
    pub sensor: String,
    pub metric: Option<String>,
    pub state: AlertState,
    pub severity: Option<Severity>,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub readings: Vec<TestReading>,
    #[serde(default)]
    pub series: Vec<Series>,
    pub until: Option<Offset>,
    /// Only alerts of these rules are compared (default: every rule's).
    #[serde(default)]
    pub only: Vec<String>,
    #[serde(default)]
    pub expect: Vec<Expect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    rules: Vec<String>,
    /// Read case by case below, so each case reports its own errors.
    #[serde(default, rename = "test")]
    _test: Option<serde::de::IgnoredAny>,
}

/// A parsed test file.
#[derive(Debug, Clone)]
pub struct TestFile {
    pub rules: Vec<PathBuf>,
    pub cases: Vec<Case>,
}

/// Parses a test file; rules paths resolve against its folder.
pub fn parse(path: &Path, text: &str) -> Result<TestFile, Diagnostics> {
    let src = Source::new(path, text);
    let mut diags = Diagnostics::default();
    let Some(root) = src.parse(&mut diags) else {
        return Err(diags);
    };
    let whole = Spanned::new(root.span(), DeValue::Table(root.get_ref().clone()));
    let raw = deserialize_lenient::<RawFile>(&src, &whole, &mut diags);
    let mut cases = Vec::new();
    if let Some(DeValue::Array(items)) = root.get_ref().get("test").map(|v| v.get_ref()) {
        for item in items.iter() {
            let before = diags.len();
            if let Some(c) = deserialize_lenient::<Case>(&src, item, &mut diags) {
                // A refused key may be the readings themselves: don't pile on.
                if c.readings.is_empty() && c.series.is_empty() && diags.len() == before {
                    diags.push(src.at(item.span(), format!("test `{}` has no readings", c.name)));
                }
                if c.series.iter().any(|s| s.every.0 == 0) {
                    diags.push(src.at(
                        item.span(),
                        format!(
                            "test `{}`: a series needs `every` greater than zero",
                            c.name
                        ),
                    ));
                }
                cases.push(c);
            }
        }
    }
    diags.sort();
    let base = path.parent().unwrap_or(Path::new("."));
    match raw {
        Some(raw) if diags.is_empty() => Ok(TestFile {
            rules: raw.rules.iter().map(|r| base.join(r)).collect(),
            cases,
        }),
        _ => Err(diags),
    }
}

/// One produced alert, as the test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Got {
    pub at: Offset,
    pub draft: AlertDraft,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub passed: bool,
    /// A readable diff when it failed.
    pub report: String,
}

/// Runs one case against `rules`.
pub fn run_case(rules: &[Rule], case: &Case) -> Outcome {
    let mut readings: Vec<(u64, Reading)> = case
        .readings
        .iter()
        .map(|r| {
            (
                r.at.0,
                Reading {
                    sensor: r.sensor.clone(),
                    metric: r.metric.clone(),
                    value: r.value,
                    ts_ms: EPOCH_WALL_MS + r.at.0 as i64,
                },
            )
        })
        .collect();
    for s in &case.series {
        for (i, v) in s.values.iter().enumerate() {
            let at = s.start.0 + s.every.0 * i as u64;
            readings.push((
                at,
                Reading {
                    sensor: s.sensor.clone(),
                    metric: s.metric.clone(),
                    value: *v,
                    ts_ms: EPOCH_WALL_MS + at as i64,
                },
            ));
        }
    }
    // Stable: readings at the same instant keep their written order.
    readings.sort_by_key(|(at, _)| *at);
    let mut driver = Driver::new(rules.to_vec(), EPOCH_WALL_MS);
    let mut out = Vec::new();
    for (at, r) in &readings {
        driver.reading(r, *at, &mut out);
    }
    let end = case
        .until
        .map(|u| u.0)
        .unwrap_or_else(|| readings.last().map_or(0, |(at, _)| *at));
    driver.advance_to(end, &mut out);
    let got: Vec<Got> = out
        .into_iter()
        .filter(|d| case.only.is_empty() || case.only.contains(&d.rule))
        .map(|d| Got {
            at: Offset(driver.offset_of(d.ts_ms)),
            draft: d,
        })
        .collect();
    compare(&case.name, &case.expect, &got)
}

fn matches(e: &Expect, g: &Got) -> bool {
    let d = &g.draft;
    e.rule == d.rule
        && e.sensor == d.sensor
        && e.state == d.state
        && e.at.is_none_or(|a| a == g.at)
        && e.metric.as_ref().is_none_or(|m| *m == d.metric)
        && e.severity.is_none_or(|s| s == d.severity)
        && e.value.is_none_or(|v| close(v, d.value))
        && e.threshold.is_none_or(|t| close(t, d.threshold))
        && e.message.as_ref().is_none_or(|m| *m == d.message)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn show_expect(e: &Expect) -> String {
    let mut s = format!(
        "{:>8} {} {} {}",
        e.at.map_or("*".to_string(), |a| a.to_string()),
        e.state,
        e.rule,
        e.sensor
    );
    let mut extra = BTreeMap::new();
    if let Some(m) = &e.metric {
        extra.insert("metric", m.clone());
    }
    if let Some(v) = e.severity {
        extra.insert("severity", v.to_string());
    }
    if let Some(v) = e.value {
        extra.insert("value", v.to_string());
    }
    if let Some(v) = e.threshold {
        extra.insert("threshold", v.to_string());
    }
    if let Some(v) = &e.message {
        extra.insert("message", format!("{v:?}"));
    }
    for (k, v) in extra {
        let _ = write!(s, " {k}={v}");
    }
    s
}

fn show_got(g: &Got) -> String {
    let d = &g.draft;
    format!(
        "{:>8} {} {} {} metric={} severity={} value={} threshold={} message={:?}",
        g.at.to_string(),
        d.state,
        d.rule,
        d.sensor,
        d.metric,
        d.severity,
        d.value,
        d.threshold,
        d.message
    )
}

fn compare(name: &str, expect: &[Expect], got: &[Got]) -> Outcome {
    let passed = expect.len() == got.len() && expect.iter().zip(got).all(|(e, g)| matches(e, g));
    let mut report = String::new();
    if !passed {
        for i in 0..expect.len().max(got.len()) {
            match (expect.get(i), got.get(i)) {
                (Some(e), Some(g)) if matches(e, g) => {
                    let _ = writeln!(report, "      ok {}", show_got(g));
                }
                (Some(e), Some(g)) => {
                    let _ = writeln!(report, "    - expected {}", show_expect(e));
                    let _ = writeln!(report, "    + got      {}", show_got(g));
                }
                (Some(e), None) => {
                    let _ = writeln!(report, "    - expected {}", show_expect(e));
                    let _ = writeln!(report, "    + got      (nothing)");
                }
                (None, Some(g)) => {
                    let _ = writeln!(report, "    - expected (nothing)");
                    let _ = writeln!(report, "    + got      {}", show_got(g));
                }
                (None, None) => {}
            }
        }
    }
    Outcome {
        name: name.to_string(),
        passed,
        report,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
[[rule]]
id = "hot"
sensor = "room/*"
metric = "t"
above = 30.0
clear = 28.0
for = "2m"
"#;

    fn run(test: &str) -> Vec<Outcome> {
        let rules = crate::config::parse_rules(Path::new("rules.toml"), RULES).unwrap();
        let file = parse(
            Path::new("t.toml"),
            &format!("rules = [\"rules.toml\"]\n{test}"),
        )
        .unwrap();
        file.cases.iter().map(|c| run_case(&rules, c)).collect()
    }

    #[test]
    fn a_case_with_the_right_expectations_passes() {
        let o = run(r#"
[[test]]
name = "fires after for, resolves at clear"
series = [{ sensor = "room/a", metric = "t", every = "1m", values = [31, 31, 31, 29, 28] }]
expect = [
  { at = "2m", rule = "hot", sensor = "room/a", state = "firing", value = 31 },
  { at = "4m", rule = "hot", sensor = "room/a", state = "resolved" },
]
"#);
        assert!(o[0].passed, "{}", o[0].report);
    }

    #[test]
    fn a_wrong_expectation_fails_with_a_diff_naming_both_sides() {
        let o = run(r#"
[[test]]
name = "wrong time"
readings = [{ at = "0s", sensor = "room/a", metric = "t", value = 31 }]
until = "5m"
expect = [{ at = "1m", rule = "hot", sensor = "room/a", state = "firing" }]
"#);
        assert!(!o[0].passed);
        assert!(
            o[0].report
                .contains("- expected       1m firing hot room/a"),
            "{}",
            o[0].report
        );
        assert!(
            o[0].report
                .contains("+ got            2m firing hot room/a"),
            "{}",
            o[0].report
        );
    }

    #[test]
    fn an_unexpected_alert_fails_the_case() {
        let o = run(r#"
[[test]]
name = "nothing expected"
readings = [{ at = "0s", sensor = "room/a", metric = "t", value = 31 }]
until = "3m"
"#);
        assert!(!o[0].passed);
        assert!(o[0].report.contains("expected (nothing)"));
    }

    #[test]
    fn mistakes_in_a_test_file_name_their_line() {
        let e = parse(
            Path::new("t.toml"),
            "rules = [\"r.toml\"]\n[[test]]\nname = \"x\"\nreadngs = []\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t.toml:4:1: unknown field `readngs`"),
            "{e}"
        );
    }
}
