//! The value a rule tests (the reading, an aggregate over the window, a
//! rate) and the verdict of its condition on it.

use super::ms;
use super::window::{Samples, weighted_mean};
use crate::rules::{Aggregate, Condition, Rule};

/// The outcome of testing one value against a threshold condition.
pub(super) struct Verdict {
    /// `Some(bound crossed)` when the firing comparison holds.
    pub(super) breach: Option<f64>,
    /// Whether the resolving comparison holds.
    pub(super) clears: bool,
}

pub(super) fn verdict(condition: &Condition, x: f64) -> Option<Verdict> {
    let t = match *condition {
        Condition::Above { threshold, clear } => Verdict {
            breach: (x > threshold).then_some(threshold),
            clears: x <= clear.unwrap_or(threshold),
        },
        Condition::Below { threshold, clear } => Verdict {
            breach: (x < threshold).then_some(threshold),
            clears: x >= clear.unwrap_or(threshold),
        },
        Condition::Outside { lo, hi, clear } => {
            let (clo, chi) = clear.unwrap_or((lo, hi));
            Verdict {
                breach: if x < lo {
                    Some(lo)
                } else if x > hi {
                    Some(hi)
                } else {
                    None
                },
                clears: clo <= x && x <= chi,
            }
        }
        Condition::RateAbove {
            per_minute, clear, ..
        } => Verdict {
            breach: (x > per_minute).then_some(per_minute),
            clears: x <= clear.unwrap_or(per_minute),
        },
        Condition::RateBelow {
            per_minute, clear, ..
        } => Verdict {
            breach: (x < per_minute).then_some(per_minute),
            clears: x >= clear.unwrap_or(per_minute),
        },
        Condition::Silent { .. } => return None,
    };
    Some(t)
}

/// The window a rule keeps samples for, if any.
pub(super) fn window_ms(rule: &Rule) -> Option<u64> {
    match rule.condition {
        Condition::RateAbove { window_ms, .. } | Condition::RateBelow { window_ms, .. } => {
            Some(window_ms)
        }
        Condition::Silent { .. } => None,
        _ => rule.aggregate.map(|(_, w)| w),
    }
}

/// The value a threshold rule tests, from the pair's samples (already
/// including the current reading) or the reading itself. A thinned
/// window's samples stand for several readings each (see `window.rs`).
pub(super) fn tested_value(rule: &Rule, samples: &Samples, value: f64) -> Option<f64> {
    let x = match rule.condition {
        Condition::RateAbove { window_ms, .. } | Condition::RateBelow { window_ms, .. } => {
            let (first, last) = (samples.front()?, samples.back()?);
            let (t0, v0, t1, v1) = (first.at, first.value, last.at, last.value);
            // Samples must span at least half the window: two noisy readings
            // a moment apart (at start, after a gap) are no rate over it.
            if t1 <= t0 || t1.saturating_sub(t0) < ms(window_ms / 2) {
                return None;
            }
            (v1 - v0) / (t1.saturating_sub(t0) as f64 / 60_000.0)
        }
        Condition::Silent { .. } => return None,
        _ => match rule.aggregate {
            None => value,
            Some((agg, _)) => {
                let values = samples.iter().map(|s| s.value);
                match agg {
                    Aggregate::Min => values.fold(f64::INFINITY, f64::min),
                    Aggregate::Max => values.fold(f64::NEG_INFINITY, f64::max),
                    Aggregate::Avg => weighted_mean(samples)?,
                }
            }
        },
    };
    x.is_finite().then_some(x)
}
