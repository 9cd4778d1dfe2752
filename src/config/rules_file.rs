//! `rules.toml`: reading and validating rules files into [`Rule`]s (the
//! rule engine itself knows nothing of files or TOML).
//!
//! Every problem in every file is reported with `FILE:LINE:COL`, and a set of
//! files is accepted or refused whole (a SIGHUP reload must never run half a
//! rules file).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::files::{Disk, Files};
use super::units::HumanDuration;
use crate::diagnostic::{Diagnostic, Diagnostics, Source, deserialize_lenient};
use crate::rules::{Action, Aggregate, Condition, Glob, Rule, Severity, message};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    sensor: Option<Spanned<String>>,
    metric: Spanned<String>,
    above: Option<Spanned<f64>>,
    below: Option<Spanned<f64>>,
    outside: Option<Spanned<[f64; 2]>>,
    clear: Option<Spanned<Clear>>,
    rate_above: Option<Spanned<f64>>,
    rate_below: Option<Spanned<f64>>,
    aggregate: Option<Spanned<Aggregate>>,
    window: Option<Spanned<HumanDuration>>,
    silent_for: Option<Spanned<HumanDuration>>,
    #[serde(rename = "for")]
    for_: Option<Spanned<HumanDuration>>,
    severity: Option<Severity>,
    repeat: Option<Spanned<HumanDuration>>,
    message: Option<Spanned<String>>,
    labels: Option<BTreeMap<String, String>>,
    actions: Option<Vec<RawAction>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Clear {
    One(f64),
    Band([f64; 2]),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    broker: String,
    topic: String,
    on_firing: Option<String>,
    on_resolved: Option<String>,
}

/// Loads every file from disk; returns all rules, or every problem found in
/// any file.
pub fn load_rules(paths: &[PathBuf]) -> Result<Vec<Rule>, Diagnostics> {
    load_rules_placed(paths, &Disk).map(|(rules, _)| rules)
}

/// Where each rule is defined: its `id`, as a diagnostic with an empty
/// message, for checks made later against the rest of the configuration.
pub type Places = HashMap<String, Diagnostic>;

/// [`load_rules`], with the place of every rule.
pub fn load_rules_placed(
    paths: &[PathBuf],
    files: &dyn Files,
) -> Result<(Vec<Rule>, Places), Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut rules = Vec::new();
    // Where each id was first defined, to report duplicates across files.
    let mut seen: Places = HashMap::new();
    for path in paths {
        match files.read_to_string(path) {
            Ok(text) => {
                let src = Source::new(path, &text);
                load_source(&src, &mut rules, &mut seen, &mut diags);
            }
            Err(e) => diags.push(Diagnostic {
                file: path.clone(),
                line: 0,
                col: 0,
                message: format!("cannot read rules file: {e}"),
            }),
        }
    }
    diags.sort();
    if diags.is_empty() {
        Ok((rules, seen))
    } else {
        Err(diags)
    }
}

/// Parses one rules file from text (for tests and `rules test`).
pub fn parse_rules(path: &Path, text: &str) -> Result<Vec<Rule>, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut rules = Vec::new();
    let src = Source::new(path, text);
    load_source(&src, &mut rules, &mut HashMap::new(), &mut diags);
    diags.sort();
    if diags.is_empty() {
        Ok(rules)
    } else {
        Err(diags)
    }
}

fn load_source(
    src: &Source<'_>,
    rules: &mut Vec<Rule>,
    seen: &mut Places,
    diags: &mut Diagnostics,
) {
    let Some(root) = src.parse(diags) else { return };
    for (k, v) in root.get_ref() {
        if k.get_ref() != "rule" {
            diags.push(src.at(
                k.span(),
                format!(
                    "unknown key `{}`; a rules file holds [[rule]] tables",
                    k.get_ref()
                ),
            ));
            continue;
        }
        let DeValue::Array(items) = v.get_ref() else {
            diags.push(src.at(v.span(), "write rules as [[rule]] tables"));
            continue;
        };
        for item in items.iter() {
            let before = diags.len();
            let Some(raw) = deserialize_lenient::<RawRule>(src, item, diags) else {
                continue;
            };
            // Keys refused above were removed; a missing condition may be one of them.
            let keys_refused = diags.len() > before;
            let here = src.at(raw.id.span(), "");
            if let Some(rule) = compile(src, raw, keys_refused, diags) {
                match seen.get(&rule.id) {
                    Some(first) => {
                        let msg = format!(
                            "duplicate rule id `{}` (first defined at {}:{}:{})",
                            rule.id,
                            first.file.display(),
                            first.line,
                            first.col
                        );
                        diags.push(Diagnostic {
                            message: msg,
                            ..here
                        });
                    }
                    None => {
                        seen.insert(rule.id.clone(), here);
                        rules.push(rule);
                    }
                }
            }
        }
    }
}

fn valid_rule_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn glob(
    src: &Source<'_>,
    s: &Spanned<String>,
    what: &str,
    diags: &mut Diagnostics,
) -> Option<Glob> {
    let text = s.get_ref();
    let literal_len = text
        .chars()
        .filter(|c| *c != '*')
        .map(char::len_utf8)
        .sum::<usize>();
    let problem = if text.is_empty() {
        Some(format!("empty {what} pattern can never match"))
    } else if text.chars().any(|c| c.is_control()) {
        Some(format!(
            "{what} pattern contains a control character, which no {what} can contain, so it can never match"
        ))
    } else if literal_len > 128 {
        Some(format!(
            "{what} pattern is longer than any {what} (128 bytes), so it can never match"
        ))
    } else {
        None
    };
    match problem {
        Some(p) => {
            diags.push(src.at(s.span(), p));
            None
        }
        None => Some(Glob::new(text)),
    }
}

fn compile(
    src: &Source<'_>,
    raw: RawRule,
    keys_refused: bool,
    diags: &mut Diagnostics,
) -> Option<Rule> {
    let before = diags.len();
    let mut err = |span: std::ops::Range<usize>, msg: String| diags.push(src.at(span, msg));
    if !valid_rule_id(raw.id.get_ref()) {
        err(
            raw.id.span(),
            format!(
                "rule id `{}` must match [A-Za-z0-9_.-]+ (at most 128 characters)",
                raw.id.get_ref()
            ),
        );
    }
    let window_ms = raw.window.as_ref().map(|w| w.get_ref().as_millis_u64());

    // Exactly one condition.
    let mut conditions: Vec<(&str, std::ops::Range<usize>)> = Vec::new();
    for (name, span) in [
        ("above", raw.above.as_ref().map(|s| s.span())),
        ("below", raw.below.as_ref().map(|s| s.span())),
        ("outside", raw.outside.as_ref().map(|s| s.span())),
        ("rate_above", raw.rate_above.as_ref().map(|s| s.span())),
        ("rate_below", raw.rate_below.as_ref().map(|s| s.span())),
        ("silent_for", raw.silent_for.as_ref().map(|s| s.span())),
    ] {
        if let Some(span) = span {
            conditions.push((name, span));
        }
    }
    if conditions.is_empty() && !keys_refused {
        err(
            raw.id.span(),
            format!(
                "rule `{}` has no condition; give one of above, below, outside, rate_above, rate_below, silent_for",
                raw.id.get_ref()
            ),
        );
    }
    if conditions.len() > 1 {
        let names: Vec<&str> = conditions.iter().map(|c| c.0).collect();
        err(
            conditions[1].1.clone(),
            format!(
                "rule `{}` has conflicting conditions ({}); give exactly one",
                raw.id.get_ref(),
                names.join(", ")
            ),
        );
    }
    for (name, v) in [
        ("above", raw.above.as_ref()),
        ("below", raw.below.as_ref()),
        ("rate_above", raw.rate_above.as_ref()),
        ("rate_below", raw.rate_below.as_ref()),
    ] {
        if let Some(v) = v.filter(|v| !v.get_ref().is_finite()) {
            err(v.span(), format!("`{name}` must be a finite number"));
        }
    }

    let clear_one =
        |c: &Spanned<Clear>, err: &mut dyn FnMut(std::ops::Range<usize>, String)| match c.get_ref()
        {
            Clear::One(v) => Some(*v),
            Clear::Band(_) => {
                err(
                    c.span(),
                    "`clear` is one number for this condition (a [lo, hi] band is for `outside`)"
                        .into(),
                );
                None
            }
        };
    let kind = conditions.first().map(|c| c.0);
    let condition = match kind {
        Some("above") | Some("below") | Some("rate_above") | Some("rate_below") => {
            let above_like = matches!(kind, Some("above") | Some("rate_above"));
            let t = raw
                .above
                .as_ref()
                .or(raw.below.as_ref())
                .or(raw.rate_above.as_ref())
                .or(raw.rate_below.as_ref())
                .map(|t| *t.get_ref())
                .unwrap_or(f64::NAN);
            let clear = raw.clear.as_ref().and_then(|c| clear_one(c, &mut err));
            if let (Some(c), Some(span)) = (clear, raw.clear.as_ref().map(|c| c.span())) {
                if above_like && c > t {
                    err(
                        span,
                        format!(
                            "`clear` ({c}) must not be above the threshold ({t}) for `{}`: the alert would resolve while still over it",
                            kind.unwrap_or_default()
                        ),
                    );
                } else if !above_like && c < t {
                    err(
                        span,
                        format!(
                            "`clear` ({c}) must not be below the threshold ({t}) for `{}`: the alert would resolve while still under it",
                            kind.unwrap_or_default()
                        ),
                    );
                }
            }
            let is_rate = matches!(kind, Some("rate_above") | Some("rate_below"));
            if is_rate && window_ms.is_none() {
                err(
                    raw.id.span(),
                    format!(
                        "`{}` needs a `window` (the span the change is measured over)",
                        kind.unwrap_or_default()
                    ),
                );
            }
            let w = window_ms.unwrap_or(0);
            match kind {
                Some("above") => Some(Condition::Above {
                    threshold: t,
                    clear,
                }),
                Some("below") => Some(Condition::Below {
                    threshold: t,
                    clear,
                }),
                Some("rate_above") => Some(Condition::RateAbove {
                    per_minute: t,
                    window_ms: w,
                    clear,
                }),
                _ => Some(Condition::RateBelow {
                    per_minute: t,
                    window_ms: w,
                    clear,
                }),
            }
        }
        Some("outside") => {
            let o = raw.outside.as_ref()?;
            let [lo, hi] = *o.get_ref();
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                err(
                    o.span(),
                    format!("`outside` must be [lo, hi] with lo < hi, not [{lo}, {hi}]"),
                );
            }
            let clear = match raw.clear.as_ref().map(|c| (c.span(), c.get_ref())) {
                None => None,
                Some((_, Clear::Band([a, b]))) if lo <= *a && a <= b && *b <= hi => Some((*a, *b)),
                Some((span, Clear::Band([a, b]))) => {
                    err(
                        span,
                        format!(
                            "`clear` band [{a}, {b}] must lie inside the `outside` band [{lo}, {hi}]"
                        ),
                    );
                    None
                }
                Some((span, Clear::One(_))) => {
                    err(
                        span,
                        "`clear` for `outside` is a band: clear = [lo, hi]".into(),
                    );
                    None
                }
            };
            Some(Condition::Outside { lo, hi, clear })
        }
        Some("silent_for") => {
            let s = raw.silent_for.as_ref()?;
            if let Some(c) = &raw.clear {
                err(
                    c.span(),
                    "`clear` has no meaning for `silent_for` (the next reading resolves it)".into(),
                );
            }
            if let Some(a) = &raw.aggregate {
                err(
                    a.span(),
                    "`aggregate` has no meaning for `silent_for`".into(),
                );
            }
            if let Some(f) = &raw.for_ {
                err(
                    f.span(),
                    "`for` has no meaning for `silent_for` (make silent_for longer instead)".into(),
                );
            }
            Some(Condition::Silent {
                after_ms: s.get_ref().as_millis_u64(),
            })
        }
        _ => None,
    };

    let aggregate = match (&raw.aggregate, window_ms) {
        (Some(a), Some(w)) => {
            if matches!(kind, Some("rate_above") | Some("rate_below")) {
                err(
                    a.span(),
                    "`aggregate` cannot be combined with a rate condition".into(),
                );
            }
            Some((*a.get_ref(), w))
        }
        (Some(a), None) => {
            err(
                a.span(),
                "`aggregate` needs a `window` (e.g. window = \"5m\")".into(),
            );
            None
        }
        (None, Some(_)) if !matches!(kind, Some("rate_above") | Some("rate_below")) => {
            let span = raw.window.as_ref().map(|w| w.span()).unwrap_or_default();
            err(
                span,
                "`window` is only used with `aggregate` or a rate condition".into(),
            );
            None
        }
        (None, _) => None,
    };

    if let Some(m) = &raw.message {
        if let Err(e) = message::validate(m.get_ref()) {
            err(m.span(), e);
        }
        let labels = raw.labels.as_ref();
        for l in message::referenced_labels(m.get_ref()) {
            if !labels.is_some_and(|ls| ls.contains_key(&l)) {
                err(
                    m.span(),
                    format!("message uses {{labels.{l}}}, but the rule has no label `{l}`"),
                );
            }
        }
    }
    if let Some(r) = &raw.repeat
        && r.get_ref().as_millis_u64() < 1000
    {
        err(r.span(), "`repeat` must be at least 1s".into());
    }
    let mut actions = Vec::new();
    for a in raw.actions.unwrap_or_default() {
        if crate::topic::validate_filter(&a.topic).is_err() || a.topic.contains(['+', '#']) {
            err(
                raw.id.span(),
                format!(
                    "action topic `{}` is not a valid topic to publish to",
                    a.topic
                ),
            );
        }
        if a.on_firing.is_none() && a.on_resolved.is_none() {
            err(
                raw.id.span(),
                "an action needs `on_firing` and/or `on_resolved`".into(),
            );
        }
        actions.push(Action {
            broker: a.broker,
            topic: a.topic,
            on_firing: a.on_firing,
            on_resolved: a.on_resolved,
        });
    }

    let default_sensor = Spanned::new(raw.id.span(), "*".to_string());
    let sensor = glob(
        src,
        raw.sensor.as_ref().unwrap_or(&default_sensor),
        "sensor",
        diags,
    );
    let metric = glob(src, &raw.metric, "metric", diags);
    if diags.len() > before {
        return None;
    }
    Some(Rule {
        id: raw.id.into_inner(),
        sensor: sensor?,
        metric: metric?,
        condition: condition?,
        aggregate,
        for_ms: raw.for_.map_or(0, |f| f.get_ref().as_millis_u64()),
        repeat_ms: raw.repeat.map(|r| r.get_ref().as_millis_u64()),
        severity: raw.severity.unwrap_or(Severity::Warning),
        message: raw.message.map(Spanned::into_inner),
        labels: raw.labels.unwrap_or_default(),
        actions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Vec<Rule>, Vec<String>> {
        parse_rules(Path::new("rules.toml"), text)
            .map_err(|d| d.iter().map(|d| d.to_string()).collect())
    }

    fn errors(text: &str) -> Vec<String> {
        check(text).expect_err("should be refused")
    }

    #[test]
    fn a_full_threshold_rule_compiles() {
        let rules = check(
            r#"
[[rule]]
id = "greenhouse-hot"
sensor = "greenhouse/*"
metric = "temperature"
above = 30.0
clear = 28.0
for = "2m"
severity = "critical"
repeat = "30m"
message = "{sensor} is {value}°C, above {threshold}°C"
labels = { room = "greenhouse" }
"#,
        )
        .unwrap();
        assert_eq!(rules.len(), 1);
        let r = &rules[0];
        assert_eq!(
            r.condition,
            Condition::Above {
                threshold: 30.0,
                clear: Some(28.0)
            }
        );
        assert_eq!(r.for_ms, 120_000);
        assert_eq!(r.repeat_ms, Some(1_800_000));
        assert_eq!(r.severity, Severity::Critical);
        assert_eq!(r.labels["room"], "greenhouse");
    }

    #[test]
    fn every_mistake_in_a_file_is_reported_with_its_line() {
        let errs = errors(
            "[[rule]]\nid = \"a\"\nmetric = \"t\"\nabvoe = 3\n\n[[rule]]\nid = \"b\"\nmetric = \"t\"\nabove = 3\nclear = 5\nseverty = \"info\"\n",
        );
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(
            errs[0].starts_with("rules.toml:4:1: unknown field `abvoe`"),
            "{errs:#?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("rules.toml:11:1: unknown field `severty`")),
            "{errs:#?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("rules.toml:10:9:") && e.contains("clear")),
            "{errs:#?}"
        );
    }

    #[test]
    fn no_condition_and_two_conditions_are_refused() {
        assert!(errors("[[rule]]\nid=\"a\"\nmetric=\"t\"\n")[0].contains("no condition"));
        let e = errors("[[rule]]\nid=\"a\"\nmetric=\"t\"\nabove=1\nbelow=0\n");
        assert!(
            e[0].starts_with("rules.toml:5:7:") && e[0].contains("conflicting"),
            "{e:?}"
        );
    }

    #[test]
    fn clear_on_the_wrong_side_is_refused_for_below_too() {
        let e = errors("[[rule]]\nid=\"a\"\nmetric=\"t\"\nbelow=5\nclear=3\n");
        assert!(e[0].contains("must not be below"), "{e:?}");
    }

    #[test]
    fn rates_and_aggregates_need_a_window() {
        assert!(errors("[[rule]]\nid=\"a\"\nmetric=\"t\"\nrate_above=1\n")[0].contains("window"));
        assert!(
            errors("[[rule]]\nid=\"a\"\nmetric=\"t\"\nabove=1\naggregate=\"avg\"\n")[0]
                .contains("window")
        );
        assert!(
            errors("[[rule]]\nid=\"a\"\nmetric=\"t\"\nabove=1\nwindow=\"5m\"\n")[0]
                .contains("only used")
        );
        assert!(
            check("[[rule]]\nid=\"a\"\nmetric=\"t\"\nabove=1\naggregate=\"avg\"\nwindow=\"5m\"\n")
                .is_ok()
        );
    }

    #[test]
    fn zero_and_negative_durations_are_refused() {
        assert!(
            errors("[[rule]]\nid=\"a\"\nmetric=\"t\"\nabove=1\nfor=\"0s\"\n")[0]
                .contains("greater than zero")
        );
        assert!(
            errors("[[rule]]\nid=\"a\"\nmetric=\"t\"\nsilent_for=\"-5m\"\n")[0]
                .contains("negative")
        );
    }

    #[test]
    fn duplicate_ids_name_the_first_definition() {
        let e = errors(
            "[[rule]]\nid=\"a\"\nmetric=\"t\"\nabove=1\n[[rule]]\nid=\"a\"\nmetric=\"t\"\nabove=2\n",
        );
        assert!(
            e[0].starts_with("rules.toml:6:4:") && e[0].contains("rules.toml:2:4"),
            "{e:?}"
        );
    }

    #[test]
    fn globs_that_can_never_match_are_refused() {
        assert!(errors("[[rule]]\nid=\"a\"\nmetric=\"\"\nabove=1\n")[0].contains("never match"));
        assert!(
            errors("[[rule]]\nid=\"a\"\nsensor=\"x\\u0001\"\nmetric=\"t\"\nabove=1\n")[0]
                .contains("never match")
        );
    }

    #[test]
    fn outside_takes_a_clear_band_inside_it() {
        let r = check("[[rule]]\nid=\"a\"\nmetric=\"t\"\noutside=[2.0, 8.0]\nclear=[3.0, 7.0]\n")
            .unwrap();
        assert_eq!(
            r[0].condition,
            Condition::Outside {
                lo: 2.0,
                hi: 8.0,
                clear: Some((3.0, 7.0))
            }
        );
        assert!(
            errors("[[rule]]\nid=\"a\"\nmetric=\"t\"\noutside=[2.0, 8.0]\nclear=[1.0, 7.0]\n")[0]
                .contains("inside")
        );
        assert!(
            errors("[[rule]]\nid=\"a\"\nmetric=\"t\"\noutside=[8.0, 2.0]\n")[0].contains("lo < hi")
        );
    }

    #[test]
    fn message_templates_are_checked_against_placeholders_and_labels() {
        assert!(
            errors("[[rule]]\nid=\"a\"\nmetric=\"t\"\nabove=1\nmessage=\"{sensr}\"\n")[0]
                .contains("sensr")
        );
        assert!(
            errors("[[rule]]\nid=\"a\"\nmetric=\"t\"\nabove=1\nmessage=\"{labels.room}\"\n")[0]
                .contains("no label `room`")
        );
        assert!(check("[[rule]]\nid=\"a\"\nmetric=\"t\"\nabove=1\nmessage=\"{labels.room}\"\nlabels={room=\"x\"}\n").is_ok());
    }

    #[test]
    fn for_on_a_silent_rule_is_refused() {
        assert!(
            errors("[[rule]]\nid=\"a\"\nmetric=\"t\"\nsilent_for=\"5m\"\nfor=\"1m\"\n")[0]
                .contains("`for` has no meaning")
        );
    }

    #[test]
    fn unknown_top_level_keys_are_refused() {
        assert!(errors("[[rules]]\nid=\"a\"\n")[0].contains("unknown key `rules`"));
    }
}
