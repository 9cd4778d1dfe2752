//! The rule engine: one state machine per (rule, sensor, metric) pair.
//!
//! ```text
//!            breach, for_ms > 0            held for_ms (reading or tick)
//!   ok ───────────────────────────> pending ───────────────────────────> firing
//!    ^  <── reading that no longer ──┘                                    │ │
//!    │      breaches (no alert)                repeat_ms due: `firing` ───┘ │
//!    └──────────────── reading that clears (hysteresis): `resolved` ────────┘
//!   (breach with for_ms = 0 goes ok → firing at once)
//! ```
//!
//! Invariants:
//! - Alerts are emitted only on ok/pending → firing, firing → ok, and
//!   repeats; never once per reading. For each pair the non-repeat alerts
//!   alternate firing, resolved, firing, ...
//! - Time comes only from the `now` arguments. Monotonic instants are kept as
//!   `i64` so that restore can place instants before a new epoch's zero.
//! - Timers due at `now` are processed before a reading at `now` (for the
//!   pair it touches), so what the engine emits does not depend on how often
//!   `tick` is called, only on when.
//! - A reading costs work proportional to the rules whose literal metric
//!   and sensor (or sensor prefix) can match it, via the index, not to the
//!   number of rules.
//! - Memory is bounded: at most [`MAX_SAMPLES_PER_PAIR`] window samples per
//!   pair and [`MAX_PAIRS_PER_RULE`] pairs per rule; a pair in `ok` with no
//!   window and no silence timer is not stored at all.
//! - Non-finite readings, aggregates and rates are ignored entirely.
//!
//! Code map: [`Engine`] (this file) routes readings and ticks to the pairs
//! and swaps rules on reload; `pair.rs` is the per-pair state machine and its
//! timers, and `LiveRule` a rule with its pairs; `condition.rs` the
//! value tested (reading, aggregate, rate) and the verdict on it; `draft.rs`
//! the alert drafts (messages, labels, actions); `index.rs` which rules a
//! reading may concern; `snapshot.rs` the state saved across restarts;
//! `tests.rs` the unit and model tests.

mod condition;
mod draft;
mod index;
mod pair;
mod snapshot;
mod state;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{AlertDraft, Rule, Severity};
use crate::reading::{Now, Reading};
use index::Index;
use pair::{At, LiveRule, Pair, firing_pairs, pair_deadline, resolve_all, run_timers, step};
pub use snapshot::{EngineSnapshot, PairSnapshot, PhaseSnapshot, RuleSnapshot, SeenSnapshot};
pub use state::{Change, Changes};

/// Window samples kept per pair; the oldest are dropped beyond this.
pub const MAX_SAMPLES_PER_PAIR: usize = 10_000;
/// Pairs tracked per rule; readings for new pairs beyond this are refused
/// (counted in [`EngineStats::pairs_refused`]).
pub const MAX_PAIRS_PER_RULE: usize = 10_000;

/// A monotonic instant in ms, signed (see the module invariants).
type Mono = i64;

fn mono(now: Now) -> Mono {
    i64::try_from(now.mono_ms).unwrap_or(i64::MAX)
}

fn ms(d: u64) -> i64 {
    i64::try_from(d).unwrap_or(i64::MAX)
}

/// Milliseconds from `from` to `to`, 0 if `to` is earlier.
fn elapsed(from: Mono, to: Mono) -> u64 {
    u64::try_from(to.saturating_sub(from)).unwrap_or(0)
}

fn seconds(d_ms: u64) -> f64 {
    d_ms as f64 / 1000.0
}

/// A pair that is firing, for a status page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FiringInfo {
    pub rule: String,
    pub sensor: String,
    pub metric: String,
    pub severity: Severity,
    pub since_ms: i64,
    /// The latest value tested (for silent: seconds silent when last sent).
    pub value: f64,
    pub threshold: f64,
}

/// Counters for metrics and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EngineStats {
    pub rules: usize,
    /// Pairs stored (pending, firing, windowed or watched for silence).
    pub pairs: usize,
    /// Readings for new pairs refused because a rule had
    /// [`MAX_PAIRS_PER_RULE`] pairs.
    pub pairs_refused: u64,
}

/// Matches rule ids and definitions between an old and a new rule set.
/// Returns, for each new rule, the position of an identical old one.
fn pair_up<'a>(old: impl Iterator<Item = &'a Rule>, new: &[Rule]) -> Vec<Option<usize>> {
    let mut by_id: HashMap<&str, Vec<(usize, &Rule)>> = HashMap::new();
    for (i, rule) in old.enumerate() {
        by_id.entry(rule.id.as_str()).or_default().push((i, rule));
    }
    new.iter()
        .map(|rule| {
            let candidates = by_id.get_mut(rule.id.as_str())?;
            let at = candidates.iter().position(|(_, old)| *old == rule)?;
            Some(candidates.swap_remove(at).0)
        })
        .collect()
}

/// The rule engine. See the module documentation.
#[derive(Debug, Clone)]
pub struct Engine {
    live: Vec<LiveRule>,
    index: Index,
    /// Set by the first call that brings a `now`; arms literal silent rules.
    started: bool,
    /// A lower bound on every pair's timer deadline; `tick` before it is a
    /// no-op. Exact after a full scan, lowered by every state change.
    deadline_hint: Option<Mono>,
    pairs_refused: u64,
    /// Reused buffer of candidate rule positions.
    scratch: Vec<u32>,
    /// Rule definitions changed since the state was last saved.
    rules_dirty: bool,
    /// (rule id, sensor, metric) of pairs that emitted alerts since the
    /// last `Changes::Emitted` cut.
    emitted: Vec<(String, String, String)>,
    /// Stored keys that no longer mean anything (rules gone or changed).
    stale: Vec<Vec<u8>>,
}

impl Engine {
    /// An engine for these rules. Literal silent rules start watching at the
    /// first `now` the engine is given (`on_reading`, `tick` or `reload`).
    pub fn new(rules: Vec<Rule>) -> Self {
        let live: Vec<LiveRule> = rules.into_iter().map(LiveRule::new).collect();
        Engine {
            index: Index::build(&live),
            live,
            started: false,
            deadline_hint: None,
            pairs_refused: 0,
            scratch: Vec::new(),
            rules_dirty: true,
            emitted: Vec::new(),
            stale: Vec::new(),
        }
    }

    fn start(&mut self, now: Now) {
        if !self.started {
            self.started = true;
            for live in &mut self.live {
                live.arm(now);
            }
            self.recompute_deadline();
        }
    }

    fn lower_hint(&mut self, deadline: Option<Mono>) {
        if let Some(d) = deadline {
            self.deadline_hint = Some(self.deadline_hint.map_or(d, |h| h.min(d)));
        }
    }

    fn recompute_deadline(&mut self) {
        self.deadline_hint = self
            .live
            .iter()
            .flat_map(|live| {
                live.pairs
                    .values()
                    .flat_map(|m| m.values())
                    .filter_map(|pair| pair_deadline(&live.rule, pair))
            })
            .min();
    }

    /// Applies a reading to every rule that matches it. Non-finite values
    /// are ignored entirely.
    pub fn on_reading(&mut self, r: &Reading, now: Now, out: &mut Vec<AlertDraft>) {
        self.start(now);
        if !r.value.is_finite() {
            return;
        }
        let mut candidates = std::mem::take(&mut self.scratch);
        candidates.clear();
        self.index.candidates(&r.sensor, &r.metric, &mut candidates);
        // Rule order, so output order matches a scan of all rules.
        candidates.sort_unstable();
        for &idx in &candidates {
            let Some(live) = usize::try_from(idx).ok().and_then(|i| self.live.get_mut(i)) else {
                continue;
            };
            if !live.rule.sensor.matches(&r.sensor) || !live.rule.metric.matches(&r.metric) {
                continue;
            }
            let deadline = match live
                .pairs
                .get_mut(&r.sensor)
                .and_then(|m| m.get_mut(&r.metric))
            {
                Some(pair) => {
                    let before = out.len();
                    step(At::reading(&live.rule, r, now), r.value, pair, out);
                    pair.dirty = true;
                    if out.len() > before {
                        self.emitted.push((
                            live.rule.id.clone(),
                            r.sensor.clone(),
                            r.metric.clone(),
                        ));
                    }
                    let (idle, deadline) = (pair.is_idle(), pair_deadline(&live.rule, pair));
                    if idle {
                        live.remove(&r.sensor, &r.metric);
                    }
                    deadline
                }
                None => {
                    let mut pair = Pair::new();
                    if live.pair_count >= MAX_PAIRS_PER_RULE {
                        // Only a reading that needs no state may pass.
                        let mut probe = Vec::new();
                        let at = At::reading(&live.rule, r, now);
                        step(at, r.value, &mut pair, &mut probe);
                        if !pair.is_idle() {
                            self.pairs_refused = self.pairs_refused.saturating_add(1);
                        }
                        continue;
                    }
                    let before = out.len();
                    step(At::reading(&live.rule, r, now), r.value, &mut pair, out);
                    if out.len() > before {
                        self.emitted.push((
                            live.rule.id.clone(),
                            r.sensor.clone(),
                            r.metric.clone(),
                        ));
                    }
                    let deadline = pair_deadline(&live.rule, &pair);
                    if !pair.is_idle() {
                        live.insert(&r.sensor, &r.metric, pair);
                    }
                    deadline
                }
            };
            self.lower_hint(deadline);
        }
        self.scratch = candidates;
    }

    /// Runs the timers due at `now`: `for` elapsed, repeats, silences.
    pub fn tick(&mut self, now: Now, out: &mut Vec<AlertDraft>) {
        self.start(now);
        match self.deadline_hint {
            Some(h) if h <= mono(now) => {}
            _ => return,
        }
        for live in &mut self.live {
            for (sensor, metrics) in &mut live.pairs {
                for (metric, pair) in metrics {
                    let at = At {
                        rule: &live.rule,
                        sensor,
                        metric,
                        now,
                    };
                    let before = out.len();
                    run_timers(at, pair, true, out);
                    if out.len() > before {
                        pair.dirty = true;
                        self.emitted
                            .push((live.rule.id.clone(), sensor.clone(), metric.clone()));
                    }
                }
            }
        }
        self.recompute_deadline();
    }

    /// The earliest monotonic ms at which `tick` could emit something (a
    /// lower bound: a tick then may find nothing due). `None` when no timer
    /// is running.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadline_hint.map(|d| u64::try_from(d).unwrap_or(0))
    }

    /// Replaces the rules. A rule identical (`==`, same id) to an old one
    /// keeps its state; the firing pairs of removed or changed rules are
    /// resolved (reason [`Reason::RuleChanged`](super::Reason::RuleChanged)) and their state dropped.
    pub fn reload(&mut self, rules: Vec<Rule>, now: Now, out: &mut Vec<AlertDraft>) {
        self.start(now);
        let matches = pair_up(self.live.iter().map(|s| &s.rule), &rules);
        let mut old: Vec<Option<LiveRule>> = std::mem::take(&mut self.live)
            .into_iter()
            .map(Some)
            .collect();
        let mut kept_or_new = Vec::with_capacity(rules.len());
        for (rule, matched) in rules.into_iter().zip(matches) {
            let kept = matched.and_then(|i| old.get_mut(i)).and_then(Option::take);
            kept_or_new.push(kept.unwrap_or_else(|| {
                let mut fresh = LiveRule::new(rule);
                fresh.arm(now);
                fresh
            }));
        }
        for gone in old.into_iter().flatten() {
            resolve_all(&gone.rule, &gone.pairs, now, out);
            // Its stored pairs go, and its definition if no rule keeps the id.
            let id = &gone.rule.id;
            for (sensor, metrics) in &gone.pairs {
                for metric in metrics.keys() {
                    self.stale.push(state::pair_key(id, sensor, metric));
                }
            }
            for (sensor, metric) in &gone.removed {
                self.stale.push(state::pair_key(id, sensor, metric));
            }
            if !kept_or_new.iter().any(|l| &l.rule.id == id) {
                self.stale.push(state::rule_key(id));
            }
        }
        self.rules_dirty = true;
        self.index = Index::build(&kept_or_new);
        self.live = kept_or_new;
        self.recompute_deadline();
    }

    /// Every firing pair, in rule order.
    pub fn firing(&self) -> Vec<FiringInfo> {
        self.live
            .iter()
            .flat_map(|live| {
                firing_pairs(&live.pairs).map(|(sensor, metric, (value, threshold), since_ms)| {
                    FiringInfo {
                        rule: live.rule.id.clone(),
                        sensor: sensor.to_string(),
                        metric: metric.to_string(),
                        severity: live.rule.severity,
                        since_ms,
                        value,
                        threshold,
                    }
                })
            })
            .collect()
    }

    pub fn rule_count(&self) -> usize {
        self.live.len()
    }

    /// The rules, in the order given.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.live.iter().map(|s| &s.rule)
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            rules: self.live.len(),
            pairs: self.live.iter().map(|s| s.pair_count).sum(),
            pairs_refused: self.pairs_refused,
        }
    }
}

#[cfg(test)]
mod tests;
