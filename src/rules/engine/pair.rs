//! One (rule, sensor, metric) pair's state machine and timers (see the
//! diagram in the engine's documentation), and a rule with its pairs.

use std::collections::{BTreeMap, VecDeque};

use super::condition::{tested_value, verdict, window_ms};
use super::draft::{AlertFacts, draft};
use super::{MAX_SAMPLES_PER_PAIR, Mono, elapsed, mono, ms, seconds};
use crate::reading::{Now, Reading};
use crate::rules::{AlertDraft, AlertState, Condition, Reason, Rule};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Phase {
    Ok,
    Pending {
        start: Mono,
        since_wall: i64,
        value: f64,
        threshold: f64,
    },
    Firing {
        since_wall: i64,
        value: f64,
        threshold: f64,
        last_sent: Mono,
    },
}

/// When the pair last sent a reading (silent rules only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Seen {
    pub(super) at: Mono,
    pub(super) wall: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Pair {
    pub(super) phase: Phase,
    /// (arrival instant, value), oldest first.
    pub(super) samples: VecDeque<(Mono, f64)>,
    pub(super) seen: Option<Seen>,
    /// Changed since the state was last saved (see `state.rs`).
    pub(super) dirty: bool,
}

impl Pair {
    pub(super) fn new() -> Self {
        Pair {
            phase: Phase::Ok,
            samples: VecDeque::new(),
            seen: None,
            dirty: true,
        }
    }

    /// A pair that holds nothing worth keeping.
    pub(super) fn is_idle(&self) -> bool {
        self.phase == Phase::Ok && self.samples.is_empty() && self.seen.is_none()
    }
}

/// Pairs of one rule, keyed by sensor then metric (ordered, so output order
/// is deterministic and lookups by `&str` need no allocation).
pub(super) type Pairs = BTreeMap<String, BTreeMap<String, Pair>>;

#[derive(Debug, Clone)]
pub(super) struct LiveRule {
    pub(super) rule: Rule,
    pub(super) pairs: Pairs,
    pub(super) pair_count: usize,
    /// (sensor, metric) of pairs removed since the state was last saved.
    pub(super) removed: Vec<(String, String)>,
}

impl LiveRule {
    pub(super) fn new(rule: Rule) -> Self {
        LiveRule {
            rule,
            pairs: BTreeMap::new(),
            pair_count: 0,
            removed: Vec::new(),
        }
    }

    pub(super) fn insert(&mut self, sensor: &str, metric: &str, pair: Pair) {
        let previous = self
            .pairs
            .entry(sensor.to_string())
            .or_default()
            .insert(metric.to_string(), pair);
        if previous.is_none() {
            self.pair_count += 1;
        }
    }

    pub(super) fn remove(&mut self, sensor: &str, metric: &str) {
        if let Some(metrics) = self.pairs.get_mut(sensor) {
            if metrics.remove(metric).is_some() {
                self.pair_count = self.pair_count.saturating_sub(1);
                self.removed.push((sensor.to_string(), metric.to_string()));
            }
            if metrics.is_empty() {
                self.pairs.remove(sensor);
            }
        }
    }

    /// A silent rule on a literal sensor and metric watches that pair from
    /// engine start, so a sensor never heard from still fires.
    pub(super) fn arm(&mut self, now: Now) {
        if let Condition::Silent { .. } = self.rule.condition
            && let (Some(sensor), Some(metric)) =
                (self.rule.sensor.literal(), self.rule.metric.literal())
            && self.pairs.get(sensor).and_then(|m| m.get(metric)).is_none()
        {
            let (sensor, metric) = (sensor.to_string(), metric.to_string());
            let mut pair = Pair::new();
            pair.seen = Some(Seen {
                at: mono(now),
                wall: now.wall_ms,
            });
            self.insert(&sensor, &metric, pair);
        }
    }
}

/// The earliest instant at which a timer of this pair is due.
pub(super) fn pair_deadline(rule: &Rule, pair: &Pair) -> Option<Mono> {
    match (&pair.phase, &rule.condition) {
        (Phase::Pending { start, .. }, _) => Some(start.saturating_add(ms(rule.for_ms))),
        (Phase::Firing { last_sent, .. }, _) => match rule.repeat_ms {
            Some(r) if r > 0 => Some(last_sent.saturating_add(ms(r))),
            _ => None,
        },
        (Phase::Ok, Condition::Silent { after_ms }) => {
            pair.seen.map(|s| s.at.saturating_add(ms(*after_ms)))
        }
        (Phase::Ok, _) => None,
    }
}

/// One pair of one rule at one instant: what every alert it emits names.
#[derive(Clone, Copy)]
pub(super) struct At<'a> {
    pub(super) rule: &'a Rule,
    pub(super) sensor: &'a str,
    pub(super) metric: &'a str,
    pub(super) now: Now,
}

impl<'a> At<'a> {
    /// The pair a reading belongs to.
    pub(super) fn reading(rule: &'a Rule, r: &'a Reading, now: Now) -> Self {
        At {
            rule,
            sensor: &r.sensor,
            metric: &r.metric,
            now,
        }
    }

    /// Emits `firing` (a transition or a repeat) and puts the pair in
    /// `Firing`, last sent now.
    fn fire(
        &self,
        pair: &mut Pair,
        reason: Reason,
        (value, threshold): (f64, f64),
        since_wall: i64,
        out: &mut Vec<AlertDraft>,
    ) {
        self.emit(
            AlertState::Firing,
            reason,
            (value, threshold),
            since_wall,
            out,
        );
        pair.phase = Phase::Firing {
            since_wall,
            value,
            threshold,
            last_sent: mono(self.now),
        };
    }

    /// Emits `resolved`; the caller decides what becomes of the pair.
    fn resolve(
        &self,
        reason: Reason,
        tested: (f64, f64),
        since_wall: i64,
        out: &mut Vec<AlertDraft>,
    ) {
        self.emit(AlertState::Resolved, reason, tested, since_wall, out);
    }

    fn emit(
        &self,
        state: AlertState,
        reason: Reason,
        (value, threshold): (f64, f64),
        since_wall: i64,
        out: &mut Vec<AlertDraft>,
    ) {
        let facts = AlertFacts {
            sensor: self.sensor,
            metric: self.metric,
            state,
            reason,
            value,
            threshold,
            since_wall,
        };
        out.push(draft(self.rule, facts, self.now));
    }
}

/// Fires whatever is due at `at.now` for one pair, and with `repeats` also
/// re-sends due repeats. Readings run timers without repeats: a repeat due
/// just as a reading resolves the pair would only be noise.
pub(super) fn run_timers(at: At<'_>, pair: &mut Pair, repeats: bool, out: &mut Vec<AlertDraft>) {
    let (rule, t) = (at.rule, mono(at.now));
    match pair.phase {
        Phase::Pending {
            start,
            since_wall,
            value,
            threshold,
        } if elapsed(start, t) >= rule.for_ms => {
            at.fire(
                pair,
                Reason::Transition,
                (value, threshold),
                since_wall,
                out,
            );
        }
        Phase::Firing {
            since_wall,
            value,
            threshold,
            last_sent,
        } => {
            let Some(repeat) = rule.repeat_ms.filter(|&r| r > 0 && repeats) else {
                return;
            };
            if elapsed(last_sent, t) < repeat {
                return;
            }
            let value = match (&rule.condition, pair.seen) {
                (Condition::Silent { .. }, Some(seen)) => seconds(elapsed(seen.at, t)),
                _ => value,
            };
            at.fire(pair, Reason::Repeat, (value, threshold), since_wall, out);
        }
        Phase::Ok => {
            let (Condition::Silent { after_ms }, Some(seen)) = (&rule.condition, pair.seen) else {
                return;
            };
            let silent_for = elapsed(seen.at, t);
            if silent_for < *after_ms {
                return;
            }
            let tested = (seconds(silent_for), seconds(*after_ms));
            at.fire(pair, Reason::Transition, tested, seen.wall, out);
        }
        Phase::Pending { .. } => {}
    }
}

/// Applies one reading to one pair (timers due at `at.now` first).
pub(super) fn step(at: At<'_>, value: f64, pair: &mut Pair, out: &mut Vec<AlertDraft>) {
    run_timers(at, pair, false, out);
    let (rule, now, t) = (at.rule, at.now, mono(at.now));

    if let Condition::Silent { after_ms } = rule.condition {
        if let Phase::Firing {
            since_wall,
            threshold,
            ..
        } = pair.phase
        {
            let gap = pair.seen.map_or(after_ms, |s| elapsed(s.at, t));
            at.resolve(
                Reason::Transition,
                (seconds(gap), threshold),
                since_wall,
                out,
            );
            pair.phase = Phase::Ok;
        }
        pair.seen = Some(Seen {
            at: t,
            wall: now.wall_ms,
        });
        return;
    }

    if let Some(window) = window_ms(rule) {
        let oldest = t.saturating_sub(ms(window));
        while pair.samples.front().is_some_and(|&(at, _)| at < oldest) {
            pair.samples.pop_front();
        }
        pair.samples.push_back((t, value));
        while pair.samples.len() > MAX_SAMPLES_PER_PAIR {
            pair.samples.pop_front();
        }
    }
    let Some(x) = tested_value(rule, &pair.samples, value) else {
        return;
    };
    let Some(verdict) = verdict(&rule.condition, x) else {
        return;
    };

    match pair.phase {
        Phase::Ok => {
            if let Some(bound) = verdict.breach {
                pair.phase = Phase::Pending {
                    start: t,
                    since_wall: now.wall_ms,
                    value: x,
                    threshold: bound,
                };
                // Fires at once when for_ms is 0.
                run_timers(at, pair, false, out);
            }
        }
        Phase::Pending {
            start, since_wall, ..
        } => {
            pair.phase = match verdict.breach {
                Some(bound) => Phase::Pending {
                    start,
                    since_wall,
                    value: x,
                    threshold: bound,
                },
                None => Phase::Ok,
            };
        }
        Phase::Firing {
            since_wall,
            threshold,
            last_sent,
            ..
        } => {
            pair.phase = if verdict.clears {
                at.resolve(Reason::Transition, (x, threshold), since_wall, out);
                Phase::Ok
            } else {
                Phase::Firing {
                    since_wall,
                    value: x,
                    threshold,
                    last_sent,
                }
            };
        }
    }
}

/// The firing pairs of one rule, by sensor then metric: each with its
/// last `(value, threshold)` and since when it fires (wall ms).
pub(super) fn firing_pairs(pairs: &Pairs) -> impl Iterator<Item = (&str, &str, (f64, f64), i64)> {
    pairs.iter().flat_map(|(sensor, metrics)| {
        metrics
            .iter()
            .filter_map(move |(metric, pair)| match pair.phase {
                Phase::Firing {
                    since_wall,
                    value,
                    threshold,
                    ..
                } => Some((
                    sensor.as_str(),
                    metric.as_str(),
                    (value, threshold),
                    since_wall,
                )),
                _ => None,
            })
    })
}

/// Emits `resolved` for every firing pair of a rule that is going away.
pub(super) fn resolve_all(rule: &Rule, pairs: &Pairs, now: Now, out: &mut Vec<AlertDraft>) {
    for (sensor, metric, tested, since_wall) in firing_pairs(pairs) {
        let at = At {
            rule,
            sensor,
            metric,
            now,
        };
        at.resolve(Reason::RuleChanged, tested, since_wall, out);
    }
}
