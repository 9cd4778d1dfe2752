//! One (rule, sensor, metric) pair's state machine and timers (see the
//! diagram in the engine's documentation), and a rule with its pairs.

use super::condition::{tested_value, verdict, window_ms};
use super::draft::{AlertFacts, draft};
use super::slots::{Keys, Slot, Slots};
use super::window::{self, Merge, Sample, Samples};
use super::{Mono, elapsed, mono, ms, seconds};
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
    /// Window samples, oldest first (see `window.rs`).
    pub(super) samples: Samples,
    pub(super) seen: Option<Seen>,
    /// Changed since the state was last saved (see `state.rs`).
    pub(super) dirty: bool,
    /// Written to the store by some cut since it was made: its removal must
    /// be reported (see `state.rs`).
    pub(super) stored: bool,
}

impl Pair {
    pub(super) fn new() -> Self {
        Pair {
            phase: Phase::Ok,
            samples: Samples::new(),
            seen: None,
            dirty: true,
            stored: false,
        }
    }

    /// A pair that holds nothing worth keeping.
    pub(super) fn is_idle(&self) -> bool {
        self.phase == Phase::Ok && self.samples.is_empty() && self.seen.is_none()
    }
}

#[derive(Debug, Clone)]
pub(super) struct LiveRule {
    pub(super) rule: Rule,
    pub(super) pairs: Slots,
    /// The rule names one sensor and one metric: its one pair is never
    /// evicted (see `bounds.rs`).
    pub(super) single: bool,
    /// How its window samples merge when thinned.
    pub(super) merge: Merge,
    /// (sensor, metric) of stored pairs removed since the state was last
    /// saved: at most one per pair stored at the last save.
    pub(super) removed: Vec<(String, String)>,
}

impl LiveRule {
    /// A rule with no pairs yet, hashing them with the engine's `keys`.
    pub(super) fn new(rule: Rule, keys: &Keys) -> Self {
        LiveRule {
            single: rule.sensor.literal().is_some() && rule.metric.literal().is_some(),
            merge: Merge::of(&rule),
            rule,
            pairs: Slots::new(keys.clone()),
            removed: Vec::new(),
        }
    }

    /// Whether the pair may be evicted (see `bounds.rs`).
    pub(super) fn evictable(&self, pair: &Pair) -> bool {
        evictable(self.single, pair)
    }

    /// Takes a pair out, remembering its key for the store if it was saved.
    pub(super) fn remove(&mut self, slot: u32) -> Option<Slot> {
        let s = self.pairs.remove(slot)?;
        if s.pair.stored {
            self.removed
                .push((s.sensor().to_string(), s.metric().to_string()));
        }
        Some(s)
    }

    /// The pair a literal silent rule watches from engine start, so a
    /// sensor never heard from still fires; `None` when the rule has no
    /// such pair or it exists already.
    pub(super) fn watch(&self, now: Now) -> Option<(String, String, Pair)> {
        let Condition::Silent { .. } = self.rule.condition else {
            return None;
        };
        let (sensor, metric) = (self.rule.sensor.literal()?, self.rule.metric.literal()?);
        if self.pairs.find(sensor, metric).is_some() {
            return None;
        }
        let mut pair = Pair::new();
        pair.seen = Some(Seen {
            at: mono(now),
            wall: now.wall_ms,
        });
        Some((sensor.to_string(), metric.to_string(), pair))
    }
}

/// Whether a pair of a rule (`single`: naming one sensor and metric) may
/// be evicted: only in `ok`, never the one pair of a single rule.
pub(super) fn evictable(single: bool, pair: &Pair) -> bool {
    !single && pair.phase == Phase::Ok
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

/// Applies one reading to one pair (timers due at `at.now` first). A
/// window holding `max_samples` already is thinned to half first; returns
/// how many samples that merged away.
pub(super) fn step(
    at: At<'_>,
    value: f64,
    pair: &mut Pair,
    max_samples: usize,
    out: &mut Vec<AlertDraft>,
) -> usize {
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
        return 0;
    }

    let mut thinned = 0;
    if let Some(window) = window_ms(rule) {
        window::expire(&mut pair.samples, t.saturating_sub(ms(window)));
        if pair.samples.len() >= max_samples {
            let merge = Merge::of(rule);
            thinned = window::thin(&mut pair.samples, max_samples / 2, merge);
        }
        pair.samples.push_back(Sample::new(t, value));
    }
    let Some(x) = tested_value(rule, &pair.samples, value) else {
        return thinned;
    };
    let Some(verdict) = verdict(&rule.condition, x) else {
        return thinned;
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
    thinned
}

/// The firing pairs of one rule, by sensor then metric: each with its
/// last `(value, threshold)` and since when it fires (wall ms).
pub(super) fn firing_pairs(pairs: &Slots) -> Vec<(&str, &str, (f64, f64), i64)> {
    let firing = pairs
        .iter()
        .filter(|(_, s)| matches!(s.pair.phase, Phase::Firing { .. }))
        .map(|(i, _)| i)
        .collect();
    pairs
        .sorted(firing)
        .into_iter()
        .filter_map(|i| {
            let s = pairs.get(i)?;
            match s.pair.phase {
                Phase::Firing {
                    since_wall,
                    value,
                    threshold,
                    ..
                } => Some((s.sensor(), s.metric(), (value, threshold), since_wall)),
                _ => None,
            }
        })
        .collect()
}

/// Emits `resolved` for every firing pair of a rule that is going away.
pub(super) fn resolve_all(rule: &Rule, pairs: &Slots, now: Now, out: &mut Vec<AlertDraft>) {
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
