//! `rules.toml`: reading and validating rules files into [`Rule`]s (the
//! rule engine itself knows nothing of files or TOML).
//!
//! Every problem in every file is reported with `FILE:LINE:COL`, and a set of
//! files is accepted or refused whole (a SIGHUP reload must never run half a
//! rules file).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
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
    parse_rules_placed(path, text).map(|(rules, _)| rules)
}

/// [`parse_rules`], with the place of every rule.
pub fn parse_rules_placed(path: &Path, text: &str) -> Result<(Vec<Rule>, Places), Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut rules = Vec::new();
    let mut seen = HashMap::new();
    let src = Source::new(path, text);
    load_source(&src, &mut rules, &mut seen, &mut diags);
    diags.sort();
    if diags.is_empty() {
        Ok((rules, seen))
    } else {
        Err(diags)
    }
}

/// Rules pushed over the upstream link (`text`, named `path` in
/// diagnostics) checked as a rules file is, plus against the local rules
/// (`local_places`: where each local rule is defined): an id defined in
/// both is refused at the pushed rule. Returns the pushed rules and their
/// places; actions are checked by the caller, which knows the brokers.
pub fn parse_pushed(
    path: &Path,
    text: &str,
    local_places: &Places,
) -> Result<(Vec<Rule>, Places), Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut rules = Vec::new();
    let mut seen = HashMap::new();
    let src = Source::new(path, text);
    load_source(&src, &mut rules, &mut seen, &mut diags);
    for r in &rules {
        if let (Some(local), Some(here)) = (local_places.get(&r.id), seen.get(&r.id)) {
            diags.push(Diagnostic {
                message: format!(
                    "rule id `{}` is already defined by this gateway's local rules ({}:{}:{}); pushed rules cannot replace local ones: rename it, or remove it from the local file",
                    r.id,
                    local.file.display(),
                    local.line,
                    local.col
                ),
                ..here.clone()
            });
        }
    }
    diags.sort();
    if diags.is_empty() {
        Ok((rules, seen))
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

/// The condition keys of a rule, exactly one of which it must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Above,
    Below,
    Outside,
    RateAbove,
    RateBelow,
    SilentFor,
}

impl Kind {
    /// In the order messages name them.
    const ALL: [Kind; 6] = [
        Kind::Above,
        Kind::Below,
        Kind::Outside,
        Kind::RateAbove,
        Kind::RateBelow,
        Kind::SilentFor,
    ];

    fn key(self) -> &'static str {
        match self {
            Kind::Above => "above",
            Kind::Below => "below",
            Kind::Outside => "outside",
            Kind::RateAbove => "rate_above",
            Kind::RateBelow => "rate_below",
            Kind::SilentFor => "silent_for",
        }
    }

    fn is_rate(self) -> bool {
        matches!(self, Kind::RateAbove | Kind::RateBelow)
    }

    /// The one-number threshold of `above`, `below`, `rate_above`, `rate_below`.
    fn threshold(self, raw: &RawRule) -> Option<&Spanned<f64>> {
        match self {
            Kind::Above => raw.above.as_ref(),
            Kind::Below => raw.below.as_ref(),
            Kind::RateAbove => raw.rate_above.as_ref(),
            Kind::RateBelow => raw.rate_below.as_ref(),
            Kind::Outside | Kind::SilentFor => None,
        }
    }

    /// Where the rule gives this condition, if it does.
    fn span(self, raw: &RawRule) -> Option<Range<usize>> {
        match self {
            Kind::Outside => raw.outside.as_ref().map(Spanned::span),
            Kind::SilentFor => raw.silent_for.as_ref().map(Spanned::span),
            _ => self.threshold(raw).map(Spanned::span),
        }
    }
}

/// Compiles one `[[rule]]`, pushing every problem into `diags`.
struct RuleCompiler<'s, 'd> {
    src: &'s Source<'s>,
    diags: &'d mut Diagnostics,
}

fn compile(
    src: &Source<'_>,
    raw: RawRule,
    keys_refused: bool,
    diags: &mut Diagnostics,
) -> Option<Rule> {
    let before = diags.len();
    let mut c = RuleCompiler { src, diags };
    if !valid_rule_id(raw.id.get_ref()) {
        c.err(
            raw.id.span(),
            format!(
                "rule id `{}` must match [A-Za-z0-9_.-]+ (at most 128 characters)",
                raw.id.get_ref()
            ),
        );
    }
    let window_ms = raw.window.as_ref().map(|w| w.get_ref().as_millis_u64());
    let kind = c.kind(&raw, keys_refused);
    let condition = match kind {
        Some(Kind::Outside) => c.outside(&raw),
        Some(Kind::SilentFor) => c.silent(&raw),
        Some(k) => c.threshold(k, &raw, window_ms),
        None => None,
    };
    let aggregate = c.aggregate(&raw, kind, window_ms);
    c.check_message(&raw);
    if let Some(r) = &raw.repeat
        && r.get_ref().as_millis_u64() < 1000
    {
        c.err(r.span(), "`repeat` must be at least 1s");
    }
    let actions = c.actions(&raw);
    let default_sensor = Spanned::new(raw.id.span(), "*".to_string());
    let sensor = c.glob(raw.sensor.as_ref().unwrap_or(&default_sensor), "sensor");
    let metric = c.glob(&raw.metric, "metric");
    if c.diags.len() > before {
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

impl RuleCompiler<'_, '_> {
    fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        self.diags.push(self.src.at(span, msg));
    }

    /// The rule's one condition: none and several are refused (none only
    /// when no key was refused already: the condition may have been one).
    /// Thresholds must be finite.
    fn kind(&mut self, raw: &RawRule, keys_refused: bool) -> Option<Kind> {
        let given: Vec<(Kind, Range<usize>)> = Kind::ALL
            .iter()
            .filter_map(|k| k.span(raw).map(|s| (*k, s)))
            .collect();
        if given.is_empty() && !keys_refused {
            self.err(
                raw.id.span(),
                format!(
                    "rule `{}` has no condition; give one of above, below, outside, rate_above, rate_below, silent_for",
                    raw.id.get_ref()
                ),
            );
        }
        if let [_, (_, second), ..] = given.as_slice() {
            let names: Vec<&str> = given.iter().map(|(k, _)| k.key()).collect();
            self.err(
                second.clone(),
                format!(
                    "rule `{}` has conflicting conditions ({}); give exactly one",
                    raw.id.get_ref(),
                    names.join(", ")
                ),
            );
        }
        for k in Kind::ALL {
            if let Some(v) = k.threshold(raw).filter(|v| !v.get_ref().is_finite()) {
                self.err(v.span(), format!("`{}` must be a finite number", k.key()));
            }
        }
        given.first().map(|(k, _)| *k)
    }

    /// `above`, `below`, `rate_above`, `rate_below`: one threshold, an
    /// optional one-number `clear` on its safe side, and for rates a window.
    fn threshold(
        &mut self,
        kind: Kind,
        raw: &RawRule,
        window_ms: Option<u64>,
    ) -> Option<Condition> {
        let t = kind.threshold(raw).map_or(f64::NAN, |t| *t.get_ref());
        let clear = raw.clear.as_ref().and_then(|c| self.clear_one(c));
        if let (Some(c), Some(span)) = (clear, raw.clear.as_ref().map(Spanned::span)) {
            let key = kind.key();
            if matches!(kind, Kind::Above | Kind::RateAbove) && c > t {
                self.err(
                    span,
                    format!(
                        "`clear` ({c}) must not be above the threshold ({t}) for `{key}`: the alert would resolve while still over it"
                    ),
                );
            } else if matches!(kind, Kind::Below | Kind::RateBelow) && c < t {
                self.err(
                    span,
                    format!(
                        "`clear` ({c}) must not be below the threshold ({t}) for `{key}`: the alert would resolve while still under it"
                    ),
                );
            }
        }
        if kind.is_rate() && window_ms.is_none() {
            self.err(
                raw.id.span(),
                format!(
                    "`{}` needs a `window` (the span the change is measured over)",
                    kind.key()
                ),
            );
        }
        let window_ms = window_ms.unwrap_or(0);
        Some(match kind {
            Kind::Above => Condition::Above {
                threshold: t,
                clear,
            },
            Kind::Below => Condition::Below {
                threshold: t,
                clear,
            },
            Kind::RateAbove => Condition::RateAbove {
                per_minute: t,
                window_ms,
                clear,
            },
            Kind::RateBelow => Condition::RateBelow {
                per_minute: t,
                window_ms,
                clear,
            },
            Kind::Outside | Kind::SilentFor => return None,
        })
    }

    fn clear_one(&mut self, c: &Spanned<Clear>) -> Option<f64> {
        match c.get_ref() {
            Clear::One(v) => Some(*v),
            Clear::Band(_) => {
                self.err(
                    c.span(),
                    "`clear` is one number for this condition (a [lo, hi] band is for `outside`)",
                );
                None
            }
        }
    }

    /// `outside = [lo, hi]`, and a `clear` band inside it.
    fn outside(&mut self, raw: &RawRule) -> Option<Condition> {
        let o = raw.outside.as_ref()?;
        let [lo, hi] = *o.get_ref();
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            self.err(
                o.span(),
                format!("`outside` must be [lo, hi] with lo < hi, not [{lo}, {hi}]"),
            );
        }
        let clear = match raw.clear.as_ref().map(|c| (c.span(), c.get_ref())) {
            None => None,
            Some((_, Clear::Band([a, b]))) if lo <= *a && a <= b && *b <= hi => Some((*a, *b)),
            Some((span, Clear::Band([a, b]))) => {
                self.err(
                    span,
                    format!(
                        "`clear` band [{a}, {b}] must lie inside the `outside` band [{lo}, {hi}]"
                    ),
                );
                None
            }
            Some((span, Clear::One(_))) => {
                self.err(span, "`clear` for `outside` is a band: clear = [lo, hi]");
                None
            }
        };
        Some(Condition::Outside { lo, hi, clear })
    }

    /// `silent_for`: no `clear`, `aggregate` or `for` (they mean nothing).
    fn silent(&mut self, raw: &RawRule) -> Option<Condition> {
        let s = raw.silent_for.as_ref()?;
        let meaningless = [
            (
                raw.clear.as_ref().map(Spanned::span),
                "`clear` has no meaning for `silent_for` (the next reading resolves it)",
            ),
            (
                raw.aggregate.as_ref().map(Spanned::span),
                "`aggregate` has no meaning for `silent_for`",
            ),
            (
                raw.for_.as_ref().map(Spanned::span),
                "`for` has no meaning for `silent_for` (make silent_for longer instead)",
            ),
        ];
        for (span, msg) in meaningless {
            if let Some(span) = span {
                self.err(span, msg);
            }
        }
        Some(Condition::Silent {
            after_ms: s.get_ref().as_millis_u64(),
        })
    }

    /// `aggregate` with its `window` (not with a rate); a `window` alone
    /// only with a rate.
    fn aggregate(
        &mut self,
        raw: &RawRule,
        kind: Option<Kind>,
        window_ms: Option<u64>,
    ) -> Option<(Aggregate, u64)> {
        let is_rate = kind.is_some_and(Kind::is_rate);
        match (&raw.aggregate, window_ms) {
            (Some(a), Some(w)) => {
                if is_rate {
                    self.err(
                        a.span(),
                        "`aggregate` cannot be combined with a rate condition",
                    );
                }
                Some((*a.get_ref(), w))
            }
            (Some(a), None) => {
                self.err(
                    a.span(),
                    "`aggregate` needs a `window` (e.g. window = \"5m\")",
                );
                None
            }
            (None, Some(_)) if !is_rate => {
                let span = raw.window.as_ref().map(Spanned::span).unwrap_or_default();
                self.err(
                    span,
                    "`window` is only used with `aggregate` or a rate condition",
                );
                None
            }
            (None, _) => None,
        }
    }

    /// The message template: known placeholders, and only labels the rule has.
    fn check_message(&mut self, raw: &RawRule) {
        let Some(m) = &raw.message else { return };
        if let Err(e) = message::validate(m.get_ref()) {
            self.err(m.span(), e);
        }
        let labels = raw.labels.as_ref();
        for l in message::referenced_labels(m.get_ref()) {
            if !labels.is_some_and(|ls| ls.contains_key(&l)) {
                self.err(
                    m.span(),
                    format!("message uses {{labels.{l}}}, but the rule has no label `{l}`"),
                );
            }
        }
    }

    /// Local actions: a topic one can publish to, and a payload for at
    /// least one transition. (The broker is checked against the `[[mqtt]]`
    /// sources by the config.)
    fn actions(&mut self, raw: &RawRule) -> Vec<Action> {
        let mut actions = Vec::new();
        for a in raw.actions.iter().flatten() {
            if crate::topic::validate_filter(&a.topic).is_err() || a.topic.contains(['+', '#']) {
                self.err(
                    raw.id.span(),
                    format!(
                        "action topic `{}` is not a valid topic to publish to",
                        a.topic
                    ),
                );
            }
            if a.on_firing.is_none() && a.on_resolved.is_none() {
                self.err(
                    raw.id.span(),
                    "an action needs `on_firing` and/or `on_resolved`",
                );
            }
            actions.push(Action {
                broker: a.broker.clone(),
                topic: a.topic.clone(),
                on_firing: a.on_firing.clone(),
                on_resolved: a.on_resolved.clone(),
            });
        }
        actions
    }

    /// A sensor or metric pattern that can match something.
    fn glob(&mut self, s: &Spanned<String>, what: &str) -> Option<Glob> {
        let text = s.get_ref();
        let literal_len = text
            .chars()
            .filter(|c| *c != '*')
            .map(char::len_utf8)
            .sum::<usize>();
        let problem = if text.is_empty() {
            format!("empty {what} pattern can never match")
        } else if text.chars().any(|c| c.is_control()) {
            format!(
                "{what} pattern contains a control character, which no {what} can contain, so it can never match"
            )
        } else if literal_len > 128 {
            format!("{what} pattern is longer than any {what} (128 bytes), so it can never match")
        } else {
            return Some(Glob::new(text));
        };
        self.err(s.span(), problem);
        None
    }
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

    /// The messages the tests above do not name, each with its place.
    #[test]
    fn every_other_problem_is_reported_at_its_place() {
        const R: &str = "[[rule]]\nid=\"a\"\nmetric=\"t\"\n";
        let cases: &[(&str, &str)] = &[
            (
                "rule = 1\n",
                "rules.toml:1:8: write rules as [[rule]] tables",
            ),
            (
                "[[rule]]\nid=\"a b\"\nmetric=\"t\"\nabove=1\n",
                "rules.toml:2:4: rule id `a b` must match [A-Za-z0-9_.-]+ (at most 128 characters)",
            ),
            (
                "above=inf\n",
                "rules.toml:4:7: `above` must be a finite number",
            ),
            (
                "above=1\nclear=[0.0, 1.0]\n",
                "rules.toml:5:7: `clear` is one number for this condition (a [lo, hi] band is for `outside`)",
            ),
            (
                "outside=[0.0, 9.0]\nclear=1\n",
                "rules.toml:5:7: `clear` for `outside` is a band: clear = [lo, hi]",
            ),
            (
                "silent_for=\"5m\"\nclear=1\n",
                "rules.toml:5:7: `clear` has no meaning for `silent_for` (the next reading resolves it)",
            ),
            (
                "silent_for=\"5m\"\naggregate=\"avg\"\n",
                "rules.toml:5:11: `aggregate` has no meaning for `silent_for`\nrules.toml:5:11: `aggregate` needs a `window` (e.g. window = \"5m\")",
            ),
            (
                "rate_above=1\nwindow=\"5m\"\naggregate=\"avg\"\n",
                "rules.toml:6:11: `aggregate` cannot be combined with a rate condition",
            ),
            (
                "above=1\nrepeat=\"500ms\"\n",
                "rules.toml:5:8: `repeat` must be at least 1s",
            ),
            (
                "above=1\nactions=[{broker=\"b\", topic=\"a/+\", on_firing=\"x\"}]\n",
                "rules.toml:2:4: action topic `a/+` is not a valid topic to publish to",
            ),
            (
                "above=1\nactions=[{broker=\"b\", topic=\"a\"}]\n",
                "rules.toml:2:4: an action needs `on_firing` and/or `on_resolved`",
            ),
            (
                "above=1\nsensor=\"room/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"\n",
                "rules.toml:5:8: sensor pattern is longer than any sensor (128 bytes), so it can never match",
            ),
        ];
        let whole = |rule: &&str| {
            if rule.starts_with("[[") || rule.starts_with("rule") {
                rule.to_string()
            } else {
                format!("{R}{rule}")
            }
        };
        let wrong = crate::diagnostic::mismatches(cases.iter().copied(), |rule| {
            errors(&whole(rule)).join("\n")
        });
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn a_rules_file_that_cannot_be_read_is_named() {
        let files = crate::config::files::MemFiles::default();
        let d = load_rules_placed(&[PathBuf::from("/etc/outpost/rules.toml")], &files).unwrap_err();
        assert_eq!(
            d.to_string(),
            "/etc/outpost/rules.toml: cannot read rules file: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn pushed_rules_are_checked_like_a_file_and_may_not_reuse_a_local_id() {
        let (_, local) = parse_rules_placed(
            Path::new("/etc/outpost/rules.toml"),
            "[[rule]]\nid = \"hot\"\nmetric = \"t\"\nabove = 1\n",
        )
        .unwrap();
        let pushed = Path::new("<pushed rules>");
        let (rules, places) = parse_pushed(
            pushed,
            "[[rule]]\nid = \"cold\"\nmetric = \"t\"\nbelow = 1\n",
            &local,
        )
        .unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(places["cold"].line, 2);
        let e = parse_pushed(
            pushed,
            "[[rule]]\nid = \"cold\"\nmetric = \"t\"\nbelow = 1\n\n[[rule]]\n  id = \"hot\"\nmetric = \"t\"\nabove = 2\nabvoe = 3\n",
            &local,
        )
        .unwrap_err();
        let e: Vec<String> = e.iter().map(|d| d.to_string()).collect();
        assert_eq!(e.len(), 2, "every mistake, in order: {e:#?}");
        assert!(
            e[0].starts_with("<pushed rules>:7:8: rule id `hot` is already defined"),
            "{e:#?}"
        );
        assert!(
            e[1].starts_with("<pushed rules>:10:1: unknown field `abvoe`"),
            "{e:#?}"
        );
        let e = parse_pushed(
            pushed,
            "[[rule]]\n  id = \"hot\"\nmetric = \"t\"\nabove = 2\n",
            &local,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "<pushed rules>:2:8: rule id `hot` is already defined by this gateway's local rules (/etc/outpost/rules.toml:2:6); pushed rules cannot replace local ones: rename it, or remove it from the local file"
        );
    }
}
