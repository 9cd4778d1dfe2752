//! Alert message templates: `message = "..."` in a rule, rendered per alert.
//!
//! Placeholders: `{sensor}`, `{metric}`, `{value}`, `{threshold}`, `{rule}`,
//! `{severity}`, `{state}` and `{labels.NAME}`. Numbers take an optional
//! precision, `{value:.1}`; without one they print at most three decimals
//! with trailing zeros trimmed (`30.0` → `30`, `31.2` → `31.2`, `1/3` →
//! `0.333`). `{{` and `}}` are literal braces. Anything else in braces, and a
//! `{labels.NAME}` the rule has no label for, is left as written: the loader
//! rejects unknown names up front with [`validate`] and [`referenced_labels`],
//! and a visible `{typo}` in a delivered alert beats a silently empty one.
//! A `{` followed by another `{` before any `}` is literal, so
//! `{"t":{value}}` renders the inner placeholder. Rendered messages are cut
//! to [`MAX_MESSAGE_BYTES`] on a character boundary.

use std::collections::BTreeMap;

use super::{AlertState, Severity};

/// Longest rendered message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Largest `{value:.N}` precision accepted.
const MAX_PRECISION: usize = 17;

/// The values a template can refer to.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub rule: &'a str,
    pub sensor: &'a str,
    pub metric: &'a str,
    pub value: f64,
    pub threshold: f64,
    pub severity: Severity,
    pub state: AlertState,
    pub labels: &'a BTreeMap<String, String>,
}

/// One piece of a template.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Piece<'t> {
    Text(&'t str),
    /// `{name}`: the text between the braces.
    Placeholder(&'t str),
    /// A `{` never closed: kept as text, reported by `validate`.
    Unclosed(&'t str),
}

/// Splits a template into pieces, resolving `{{`/`}}` escapes. Never fails.
fn parse(template: &str, mut each: impl FnMut(Piece<'_>)) {
    let mut rest = template;
    while let Some(at) = rest.find(['{', '}']) {
        let (text, tail) = rest.split_at(at);
        if !text.is_empty() {
            each(Piece::Text(text));
        }
        if let Some(after) = tail.strip_prefix("{{") {
            each(Piece::Text("{"));
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            each(Piece::Text("}"));
            rest = after;
        } else if let Some(after) = tail.strip_prefix('}') {
            each(Piece::Text("}"));
            rest = after;
        } else {
            // `tail` starts with a single `{`.
            let after = tail.get(1..).unwrap_or("");
            match after.char_indices().find(|&(_, c)| c == '{' || c == '}') {
                Some((end, '}')) => {
                    // `end` is the index of a one-byte char: both cuts are
                    // on char boundaries, so `get` always succeeds.
                    each(Piece::Placeholder(after.get(..end).unwrap_or("")));
                    rest = after.get(end + 1..).unwrap_or("");
                }
                Some(_) => {
                    // Another `{` comes first: this one is literal.
                    each(Piece::Text("{"));
                    rest = after;
                }
                None => {
                    each(Piece::Unclosed(tail));
                    rest = "";
                }
            }
        }
    }
    if !rest.is_empty() {
        each(Piece::Text(rest));
    }
}

/// What a placeholder refers to, if it is known.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Field<'t> {
    Rule,
    Sensor,
    Metric,
    Severity,
    State,
    Value(Option<usize>),
    Threshold(Option<usize>),
    Label(&'t str),
}

fn field(name: &str) -> Option<Field<'_>> {
    let (base, precision) = match name.split_once(':') {
        Some((base, spec)) => {
            let digits = spec.strip_prefix('.')?;
            if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            let p: usize = digits.parse().ok()?;
            if p > MAX_PRECISION {
                return None;
            }
            (base, Some(p))
        }
        None => (name, None),
    };
    let f = match base {
        "value" => Field::Value(precision),
        "threshold" => Field::Threshold(precision),
        _ if precision.is_some() => return None,
        "rule" => Field::Rule,
        "sensor" => Field::Sensor,
        "metric" => Field::Metric,
        "severity" => Field::Severity,
        "state" => Field::State,
        _ => match base.strip_prefix("labels.") {
            Some(label) if !label.is_empty() => Field::Label(label),
            _ => return None,
        },
    };
    Some(f)
}

/// Checks that every placeholder is known and every `{` closed. The error
/// lists all problems, e.g. `unknown placeholder {tmp}; unclosed '{' at "{value"`.
pub fn validate(template: &str) -> Result<(), String> {
    let mut problems = Vec::new();
    parse(template, |piece| match piece {
        Piece::Placeholder(name) if field(name).is_none() => {
            problems.push(format!("unknown placeholder {{{name}}}"));
        }
        Piece::Unclosed(tail) => {
            let shown: String = tail.chars().take(20).collect();
            problems.push(format!("unclosed '{{' at {shown:?}"));
        }
        _ => {}
    });
    if problems.is_empty() {
        Ok(())
    } else {
        problems.push(
            "known: {sensor} {metric} {value} {threshold} {rule} {severity} {state} \
             {labels.NAME}, numbers with precision like {value:.1}"
                .to_string(),
        );
        Err(problems.join("; "))
    }
}

/// The label names a template refers to with `{labels.NAME}`, so the loader
/// can check them against the rule's labels.
pub fn referenced_labels(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    parse(template, |piece| {
        if let Piece::Placeholder(name) = piece
            && let Some(Field::Label(label)) = field(name)
        {
            names.push(label.to_string());
        }
    });
    names
}

/// Default number formatting: at most three decimals, trailing zeros and a
/// trailing point trimmed, no negative zero.
pub fn format_number(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let mut s = format!("{:.3}", v);
    if s.contains('.') {
        let trimmed = s.trim_end_matches('0').trim_end_matches('.').len();
        s.truncate(trimmed);
    }
    if s == "-0" {
        s = "0".to_string();
    }
    s
}

fn push_number(out: &mut String, v: f64, precision: Option<usize>) {
    match precision {
        None => out.push_str(&format_number(v)),
        Some(p) => {
            let s = format!("{:.*}", p, v);
            // A value that rounds to zero prints without its sign.
            match s.strip_prefix('-') {
                Some(abs) if abs.bytes().all(|b| b == b'0' || b == b'.') => out.push_str(abs),
                _ => out.push_str(&s),
            }
        }
    }
}

/// Renders a template. Never fails: unknown placeholders stay as written.
pub fn render(template: &str, ctx: &Context<'_>) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    parse(template, |piece| match piece {
        Piece::Text(t) | Piece::Unclosed(t) => out.push_str(t),
        Piece::Placeholder(name) => match field(name) {
            Some(Field::Rule) => out.push_str(ctx.rule),
            Some(Field::Sensor) => out.push_str(ctx.sensor),
            Some(Field::Metric) => out.push_str(ctx.metric),
            Some(Field::Severity) => out.push_str(ctx.severity.as_str()),
            Some(Field::State) => out.push_str(ctx.state.as_str()),
            Some(Field::Value(p)) => push_number(&mut out, ctx.value, p),
            Some(Field::Threshold(p)) => push_number(&mut out, ctx.threshold, p),
            Some(Field::Label(label)) if ctx.labels.contains_key(label) => {
                out.push_str(ctx.labels.get(label).map_or("", String::as_str));
            }
            Some(Field::Label(_)) | None => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        },
    });
    truncate(&mut out, MAX_MESSAGE_BYTES);
    out
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(template: &str, value: f64, expected: &str) {
        let mut labels = BTreeMap::new();
        labels.insert("room".to_string(), "greenhouse".to_string());
        let ctx = Context {
            rule: "hot",
            sensor: "greenhouse/t1",
            metric: "temperature",
            value,
            threshold: 30.0,
            severity: Severity::Critical,
            state: AlertState::Firing,
            labels: &labels,
        };
        assert_eq!(render(template, &ctx), expected, "template {template:?}");
    }

    #[test]
    fn every_placeholder_is_substituted() {
        check(
            "{rule} {sensor} {metric} {value} {threshold} {severity} {state} {labels.room}",
            31.2,
            "hot greenhouse/t1 temperature 31.2 30 critical firing greenhouse",
        );
    }

    #[test]
    fn numbers_print_at_most_three_decimals_without_trailing_zeros() {
        check("{value}", 30.0, "30");
        check("{value}", 31.2, "31.2");
        check("{value}", 1.0 / 3.0, "0.333");
        check("{value}", 2.0 / 3.0, "0.667");
        check("{value}", -0.0001, "0");
        check("{value}", -12.5, "-12.5");
        check("{value}", 1e20, "100000000000000000000");
        assert_eq!(format_number(f64::INFINITY), "inf");
    }

    #[test]
    fn a_precision_formats_with_that_many_decimals() {
        check("{value:.1}", 31.25, "31.2");
        check("{value:.0}", 31.6, "32");
        check("{threshold:.2}", 0.0, "30.00");
        check("{value:.2}", -0.001, "0.00");
        check("{value:.3}", 1.0 / 3.0, "0.333");
    }

    #[test]
    fn doubled_braces_are_literal() {
        check("{{value}} is {value}}}", 1.0, "{value} is 1}");
    }

    #[test]
    fn unknown_placeholders_and_missing_labels_are_left_as_written() {
        check(
            "{tmp} {labels.floor} {sensor:.1} {value:x}",
            1.0,
            "{tmp} {labels.floor} {sensor:.1} {value:x}",
        );
        check("{value", 1.0, "{value");
        check("}{", 1.0, "}{");
    }

    #[test]
    fn a_brace_before_a_placeholder_is_literal() {
        check("{\"t\":{value}}", 21.5, "{\"t\":21.5}");
    }

    #[test]
    fn multibyte_text_passes_through() {
        check("{sensor} is {value}°C", 31.2, "greenhouse/t1 is 31.2°C");
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let template = "é".repeat(1000);
        let mut labels = BTreeMap::new();
        labels.insert("x".to_string(), "y".to_string());
        let ctx = Context {
            rule: "r",
            sensor: "s",
            metric: "m",
            value: 0.0,
            threshold: 0.0,
            severity: Severity::Info,
            state: AlertState::Resolved,
            labels: &labels,
        };
        let out = render(&template, &ctx);
        assert_eq!(out.len(), MAX_MESSAGE_BYTES);
        let out = render(&format!("a{template}"), &ctx);
        assert_eq!(out.len(), MAX_MESSAGE_BYTES - 1);
    }

    #[test]
    fn validate_accepts_known_placeholders() {
        assert_eq!(
            validate(
                "{sensor} {metric} {value:.2} {threshold} {rule} {severity} {state} {labels.a} {{x}}"
            ),
            Ok(())
        );
    }

    #[test]
    fn validate_lists_every_unknown_name_and_unclosed_brace() {
        let err = validate("{tmp} is {value:.x} {labels.} {value")
            .err()
            .unwrap_or_default();
        assert!(err.contains("{tmp}"), "{err}");
        assert!(err.contains("{value:.x}"), "{err}");
        assert!(err.contains("{labels.}"), "{err}");
        assert!(err.contains("unclosed"), "{err}");
        assert!(validate("{value:.99}").is_err());
    }

    #[test]
    fn referenced_labels_are_listed() {
        assert_eq!(
            referenced_labels("{labels.a} {labels.b:.1} {labels.c}"),
            vec!["a", "c"]
        );
    }
}
