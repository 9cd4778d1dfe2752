//! The rule engine: readings and the current time in, alert drafts out.
//!
//! This module is pure. It knows nothing about MQTT, sled, tokio or TOML,
//! does no I/O and never reads a clock: every entry point takes a
//! [`Now`](crate::reading::Now). The rules-file loader (`config`'s
//! `rules_file.rs`) builds the [`Rule`] values defined here and validates
//! what the engine assumes (unique ids, `clear` on the safe side of its
//! threshold, finite numbers, known template placeholders). The task that
//! runs the engine is `evaluator`.
//!
//! Code map:
//! - `mod.rs` (this file): the types shared with the loader and the runtime.
//! - `glob.rs`: sensor/metric patterns where `*` matches any run of characters.
//! - [`message`]: alert message templates (`{sensor} is {value:.1}`).
//! - [`engine`]: the per-(rule, sensor, metric) state machines, the rule
//!   index, timers, reload and snapshot/restore.
//! - [`replay`]: the engine driven through a series with simulated time
//!   (`outpost rules test|replay`).

pub mod engine;
mod glob;
pub mod message;
pub mod replay;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use engine::{
    Change, Changes, Engine, EngineSnapshot, EngineStats, FiringInfo, Limits, OnMaxPairs,
};
pub use glob::Glob;

/// How bad an alert is. Ordered: `Info < Warning < Critical` (the outbox
/// drops lower severities first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    /// The lowercase name used in configs, payloads and templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Aggregate over a time window, for threshold conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    Avg,
    Min,
    Max,
}

/// What a rule tests. Comparisons that fire are strict (`>`/`<`); those that
/// resolve are inclusive (`<=`/`>=`), so a value exactly at the threshold
/// never fires and, with the default `clear`, resolves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Fires when x > threshold; resolves when x <= clear (default threshold).
    Above { threshold: f64, clear: Option<f64> },
    /// Fires when x < threshold; resolves when x >= clear (default threshold).
    Below { threshold: f64, clear: Option<f64> },
    /// Fires when x < lo or x > hi; resolves when clear.0 <= x <= clear.1
    /// (default lo..=hi).
    Outside {
        lo: f64,
        hi: f64,
        clear: Option<(f64, f64)>,
    },
    /// x = change per minute over the window: (last - first) / elapsed
    /// minutes, from at least two samples spanning more than 0 ms. Fires
    /// when x > per_minute; resolves when x <= clear (default per_minute).
    RateAbove {
        per_minute: f64,
        window_ms: u64,
        clear: Option<f64>,
    },
    /// Fires when x < per_minute; resolves when x >= clear (default
    /// per_minute).
    RateBelow {
        per_minute: f64,
        window_ms: u64,
        clear: Option<f64>,
    },
    /// Fires when a matching (sensor, metric) sent nothing for `after_ms`;
    /// its next reading resolves. `for_ms` and `aggregate` do not apply.
    Silent { after_ms: u64 },
}

/// A local reaction to a transition, published on a local broker without
/// needing the internet. Payloads are sent verbatim (not templated: they are
/// usually JSON, full of braces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// Name of an `[[mqtt]]` source.
    pub broker: String,
    pub topic: String,
    pub on_firing: Option<String>,
    pub on_resolved: Option<String>,
}

/// One rule as loaded from a rules file. Two rules are "unchanged" across a
/// reload or restart exactly when they are `==`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    /// Glob over sensor ids.
    pub sensor: Glob,
    /// Glob over metric names (usually a literal).
    pub metric: Glob,
    pub condition: Condition,
    /// Threshold conditions (above, below, outside) test this aggregate over
    /// `window_ms` instead of the single value. Ignored for rate and silent.
    pub aggregate: Option<(Aggregate, u64)>,
    /// The condition must hold continuously this long before firing
    /// (0 = at once). Ignored for silent.
    pub for_ms: u64,
    /// Re-send `firing` this often while still firing. `Some(0)` = never.
    pub repeat_ms: Option<u64>,
    pub severity: Severity,
    /// Message template; `None` uses a default worded for the condition.
    pub message: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub actions: Vec<Action>,
}

impl Rule {
    /// A rule with only what it tests: no aggregate, `for` or repeat,
    /// severity `warning`, the default message, no labels or actions (for
    /// tests, benches and tools; a rules file sets every field).
    pub fn plain(id: &str, sensor: &str, metric: &str, condition: Condition) -> Rule {
        Rule {
            id: id.to_string(),
            sensor: Glob::new(sensor),
            metric: Glob::new(metric),
            condition,
            aggregate: None,
            for_ms: 0,
            repeat_ms: None,
            severity: Severity::Warning,
            message: None,
            labels: BTreeMap::new(),
            actions: Vec::new(),
        }
    }
}

/// `firing` or `resolved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

impl fmt::Display for AlertState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an alert draft was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The pair changed state: it started firing or its condition cleared.
    Transition,
    /// A `repeat` re-send of a pair that is still firing.
    Repeat,
    /// Resolved because its rule was removed or changed by a reload or
    /// between a snapshot and a restart.
    RuleChanged,
}

/// A publish on a local broker, from a rule's [`Action`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPublish {
    pub broker: String,
    pub topic: String,
    pub payload: String,
}

/// What the engine emits; the outbox later gives it `seq` and `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertDraft {
    pub rule: String,
    pub sensor: String,
    pub metric: String,
    pub state: AlertState,
    pub severity: Severity,
    /// The value tested: the reading, the aggregate, the rate per minute, or
    /// for silent the seconds since the last reading.
    pub value: f64,
    /// The bound crossed: for outside `lo` or `hi`, for rate `per_minute`,
    /// for silent `after_ms` in seconds. A resolved alert repeats the
    /// threshold of its firing alert.
    pub threshold: f64,
    /// `now.wall_ms` at the transition.
    pub ts_ms: i64,
    /// Wall ms when the condition started to hold (the start of `pending`;
    /// for silent, the last reading). Same on the resolved alert.
    pub since_ms: i64,
    /// Rendered message, at most [`message::MAX_MESSAGE_BYTES`].
    pub message: String,
    pub labels: BTreeMap<String, String>,
    /// Local publishes for this transition (none on repeats).
    pub actions: Vec<LocalPublish>,
    pub reason: Reason,
}

#[cfg(test)]
impl AlertDraft {
    /// A plain `firing` draft of rule `hot` for sensor `s{i}`, `warning`,
    /// message `alert {i}`: for the tests of the components it flows to.
    pub(crate) fn for_test(i: u64) -> AlertDraft {
        AlertDraft {
            rule: "hot".into(),
            sensor: format!("s{i}"),
            metric: "t".into(),
            state: AlertState::Firing,
            severity: Severity::Warning,
            value: i as f64,
            threshold: 1.0,
            ts_ms: 1_700_000_000_000 + i as i64,
            since_ms: 1_700_000_000_000,
            message: format!("alert {i}"),
            labels: BTreeMap::new(),
            actions: Vec::new(),
            reason: Reason::Transition,
        }
    }
}
