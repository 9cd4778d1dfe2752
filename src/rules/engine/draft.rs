//! The alert drafts the state machine emits: message (the rule's template
//! or a default worded for its condition), labels and local actions.

use super::super::message::{self, Context};
use crate::reading::Now;
use crate::rules::{AlertDraft, AlertState, Condition, LocalPublish, Reason, Rule};

fn default_template(condition: &Condition, state: AlertState, threshold: f64) -> String {
    use AlertState::{Firing, Resolved};
    let s = match (condition, state) {
        (Condition::Above { .. }, Firing) => "{sensor} {metric} is {value}, above {threshold}",
        (Condition::Above { .. }, Resolved) => {
            "{sensor} {metric} is back to {value}, no longer above {threshold}"
        }
        (Condition::Below { .. }, Firing) => "{sensor} {metric} is {value}, below {threshold}",
        (Condition::Below { .. }, Resolved) => {
            "{sensor} {metric} is back to {value}, no longer below {threshold}"
        }
        (Condition::Outside { lo, hi, .. }, state) => {
            let above = threshold == *hi;
            let (lo, hi) = (message::format_number(*lo), message::format_number(*hi));
            return match state {
                Firing if above => {
                    format!("{{sensor}} {{metric}} is {{value}}, above {hi} (range {lo}..{hi})")
                }
                Firing => {
                    format!("{{sensor}} {{metric}} is {{value}}, below {lo} (range {lo}..{hi})")
                }
                Resolved => {
                    format!("{{sensor}} {{metric}} is back to {{value}}, within {lo}..{hi}")
                }
            };
        }
        (Condition::RateAbove { .. }, Firing) => {
            "{sensor} {metric} is rising {value}/min, faster than {threshold}/min"
        }
        (Condition::RateAbove { .. }, Resolved) => {
            "{sensor} {metric} is changing {value}/min again, no longer above {threshold}/min"
        }
        (Condition::RateBelow { .. }, Firing) => {
            "{sensor} {metric} is changing {value}/min, below {threshold}/min"
        }
        (Condition::RateBelow { .. }, Resolved) => {
            "{sensor} {metric} is changing {value}/min again, no longer below {threshold}/min"
        }
        (Condition::Silent { .. }, Firing) => {
            "{sensor} {metric} has been silent for {value}s (limit {threshold}s)"
        }
        (Condition::Silent { .. }, Resolved) => {
            "{sensor} {metric} reported again after {value}s of silence"
        }
    };
    s.to_string()
}

/// Everything that varies between the alerts of one pair.
pub(super) struct AlertFacts<'a> {
    pub(super) sensor: &'a str,
    pub(super) metric: &'a str,
    pub(super) state: AlertState,
    pub(super) reason: Reason,
    pub(super) value: f64,
    pub(super) threshold: f64,
    pub(super) since_wall: i64,
}

pub(super) fn draft(rule: &Rule, e: AlertFacts<'_>, now: Now) -> AlertDraft {
    let message = if e.reason == Reason::RuleChanged {
        format!(
            "{} {}: resolved because rule {} was removed or changed",
            e.sensor, e.metric, rule.id
        )
    } else {
        let ctx = Context {
            rule: &rule.id,
            sensor: e.sensor,
            metric: e.metric,
            value: e.value,
            threshold: e.threshold,
            severity: rule.severity,
            state: e.state,
            labels: &rule.labels,
        };
        match &rule.message {
            Some(t) => message::render(t, &ctx),
            None => message::render(
                &default_template(&rule.condition, e.state, e.threshold),
                &ctx,
            ),
        }
    };
    let mut message = message;
    message::truncate(&mut message, message::MAX_MESSAGE_BYTES);
    let actions = if e.reason == Reason::Repeat {
        Vec::new()
    } else {
        rule.actions
            .iter()
            .filter_map(|a| {
                let payload = match e.state {
                    AlertState::Firing => a.on_firing.as_ref(),
                    AlertState::Resolved => a.on_resolved.as_ref(),
                }?;
                Some(LocalPublish {
                    broker: a.broker.clone(),
                    topic: a.topic.clone(),
                    payload: payload.clone(),
                })
            })
            .collect()
    };
    AlertDraft {
        rule: rule.id.clone(),
        sensor: e.sensor.to_string(),
        metric: e.metric.to_string(),
        state: e.state,
        severity: rule.severity,
        value: e.value,
        threshold: e.threshold,
        ts_ms: now.wall_ms,
        since_ms: e.since_wall,
        message,
        labels: rule.labels.clone(),
        actions,
        reason: e.reason,
    }
}
