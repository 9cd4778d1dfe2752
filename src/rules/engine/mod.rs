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
//! - Memory is bounded by [`Limits`] (`[rules]` in `outpost.toml`): at most
//!   `max_pairs` pairs over all rules and `max_samples` window samples over
//!   all pairs, `max_samples_per_pair` each; a pair in `ok` with no window
//!   and no silence timer is not stored at all. At `max_pairs` a new pair
//!   evicts the longest idle evictable one or is refused (`bounds.rs`); a
//!   window past its share is thinned (`window.rs`). Both are counted in
//!   [`EngineStats`]; an evicted pair's stored key is reported removed.
//!   The one pair of a rule naming a single sensor and metric is always
//!   admitted: room is reserved for it.
//! - Non-finite readings, aggregates and rates are ignored entirely.
//!
//! Code map: [`Engine`] (this file) routes readings and ticks to the pairs,
//! admits, evicts and thins within the limits, and swaps rules on reload;
//! `pair.rs` is the per-pair state machine and its timers, and `LiveRule` a
//! rule with its pairs; `slots.rs` how a rule's pairs are stored and found;
//! `bounds.rs` the limits and the eviction queue; `window.rs` window
//! samples and their thinning; `condition.rs` the value tested (reading,
//! aggregate, rate) and the verdict on it; `draft.rs` the alert drafts
//! (messages, labels, actions); `index.rs` which rules a reading may
//! concern; `snapshot.rs` and `state.rs` the state saved across restarts;
//! `tests.rs` the unit and model tests.

mod bounds;
mod condition;
mod draft;
mod index;
mod pair;
mod slots;
mod snapshot;
mod state;
mod window;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{AlertDraft, Rule, Severity};
use crate::reading::{Now, Reading};
use bounds::{Entry, Idle};
pub use bounds::{Limits, OnMaxPairs};
use index::Index;
use pair::{At, LiveRule, Pair, firing_pairs, pair_deadline, resolve_all, run_timers, step};
use slots::{Keys, Slot};
pub use snapshot::{EngineSnapshot, PairSnapshot, PhaseSnapshot, RuleSnapshot, SeenSnapshot};
pub use state::{Change, Changes};
use window::thin;

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
    pub max_pairs: usize,
    pub on_max_pairs: OnMaxPairs,
    /// Idle pairs evicted to make room for new ones (`on_max_pairs = "evict"`).
    pub pairs_evicted: u64,
    /// Readings that needed a new pair and got none: `on_max_pairs =
    /// "refuse"`, or every stored pair pending or firing.
    pub pairs_refused: u64,
    /// Window samples stored.
    pub samples: usize,
    pub max_samples: usize,
    /// Samples merged away by thinning (a window over its share).
    pub samples_thinned: u64,
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
    /// The limits in force ([`Limits::effective`]).
    limits: Limits,
    /// How every rule's pairs are hashed (see `slots.rs`).
    keys: Keys,
    /// Pairs stored, over all rules; `single` of them belong to rules that
    /// name one sensor and metric, for which `reserved` room is kept.
    pairs: usize,
    single: usize,
    reserved: usize,
    /// Window samples stored, over all pairs.
    samples: usize,
    /// Which pair to evict (see `bounds.rs`).
    idle: Idle,
    /// Pairs made or given a reading so far: the slots' stamps, in idle
    /// order.
    stamp: u64,
    pairs_evicted: u64,
    pairs_refused: u64,
    samples_thinned: u64,
    /// (rule id, sensor, metric) of the latest reading refused a pair.
    last_refused: Option<(String, String, String)>,
    /// Reused buffer of candidate rule positions.
    scratch: Vec<u32>,
    /// Rule definitions changed since the state was last saved.
    rules_dirty: bool,
    /// (rule id, sensor, metric) of pairs that emitted alerts since the
    /// last `Changes::Emitted` cut.
    emitted: Vec<(String, String, String)>,
    /// Stored keys that no longer mean anything (rules gone or changed,
    /// pairs not kept at a restore).
    stale: Vec<Vec<u8>>,
}

/// The most samples each window may keep so that windows of these
/// lengths (ascending) hold at most `budget` in all: those shorter keep
/// theirs, the others share what is left equally.
fn fair_share(lens: &[usize], mut budget: usize) -> usize {
    for (k, &n) in lens.iter().enumerate() {
        let left = lens.len() - k;
        if n.saturating_mul(left) > budget {
            return budget / left;
        }
        budget -= n;
    }
    usize::MAX
}

/// Whether the queue entry `e` still names an evictable pair.
fn current(live: &[LiveRule], e: Entry) -> bool {
    live.get(e.rule as usize).is_some_and(|l| {
        l.pairs
            .get(e.slot)
            .is_some_and(|s| s.stamp == e.stamp && l.evictable(&s.pair))
    })
}

impl Engine {
    /// An engine for these rules, with the default [`Limits`]. Literal
    /// silent rules start watching at the first `now` the engine is given
    /// (`on_reading`, `tick` or `reload`).
    pub fn new(rules: Vec<Rule>) -> Self {
        Engine::with_limits(rules, Limits::default())
    }

    /// An engine for these rules within these limits.
    pub fn with_limits(rules: Vec<Rule>, limits: Limits) -> Self {
        let keys = Keys::new();
        let live: Vec<LiveRule> = rules.into_iter().map(|r| LiveRule::new(r, &keys)).collect();
        let mut engine = Engine {
            index: Index::build(&live),
            live,
            started: false,
            deadline_hint: None,
            limits: limits.effective(),
            keys,
            pairs: 0,
            single: 0,
            reserved: 0,
            samples: 0,
            idle: Idle::default(),
            stamp: 0,
            pairs_evicted: 0,
            pairs_refused: 0,
            samples_thinned: 0,
            last_refused: None,
            scratch: Vec::new(),
            rules_dirty: true,
            emitted: Vec::new(),
            stale: Vec::new(),
        };
        engine.recount();
        engine
    }

    fn start(&mut self, now: Now) {
        if !self.started {
            self.started = true;
            self.arm(now);
            self.recompute_deadline();
        }
    }

    /// Starts the silence watch of every literal silent rule that has none.
    fn arm(&mut self, now: Now) {
        for i in 0..self.live.len() {
            if let Some((sensor, metric, pair)) = self.live.get(i).and_then(|l| l.watch(now)) {
                self.insert(i, &sensor, &metric, pair, false);
            }
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
                    .iter()
                    .filter_map(|(_, s)| pair_deadline(&live.rule, &s.pair))
            })
            .min();
    }

    /// Counts the pairs and samples again and rebuilds the eviction queue
    /// in idle order: after the rules were replaced or restored.
    fn recount(&mut self) {
        self.pairs = self.live.iter().map(|l| l.pairs.len()).sum();
        self.single = self
            .live
            .iter()
            .filter(|l| l.single)
            .map(|l| l.pairs.len())
            .sum();
        self.reserved = self.live.iter().filter(|l| l.single).count();
        self.samples = self
            .live
            .iter()
            .flat_map(|l| l.pairs.iter())
            .map(|(_, s)| s.pair.samples.len())
            .sum();
        let mut entries: Vec<(Entry, bool)> = Vec::new();
        for (r, live) in self.live.iter().enumerate() {
            let Ok(rule) = u32::try_from(r) else { continue };
            for (slot, s) in live.pairs.iter() {
                if live.evictable(&s.pair) {
                    let e = Entry {
                        rule,
                        slot,
                        stamp: s.stamp,
                    };
                    entries.push((e, s.again));
                }
            }
        }
        entries.sort_unstable_by_key(|(e, _)| e.stamp);
        self.idle.clear();
        for (e, again) in entries {
            self.idle.push(e, again);
        }
    }

    /// Whether a new pair of a rule that names no single sensor and metric
    /// fits now, without evicting.
    fn has_room(&self) -> bool {
        let others = self.pairs.saturating_sub(self.single);
        others.saturating_add(self.reserved) < self.limits.max_pairs
    }

    /// Evicts the longest idle evictable pair, if the policy allows and
    /// there is one.
    fn make_room(&mut self) -> bool {
        if self.limits.on_max_pairs == OnMaxPairs::Refuse {
            return false;
        }
        let live = &self.live;
        let Some(e) = self.idle.pop(|e| current(live, e)) else {
            return false;
        };
        if self.take(e.rule as usize, e.slot).is_some() {
            self.pairs_evicted = self.pairs_evicted.saturating_add(1);
        }
        true
    }

    /// Stores a new pair of rule `i`, as having had a reading now.
    fn insert(&mut self, i: usize, sensor: &str, metric: &str, pair: Pair, again: bool) {
        let Some(live) = self.live.get_mut(i) else {
            return;
        };
        self.stamp += 1;
        let evictable = live.evictable(&pair);
        self.samples += pair.samples.len();
        let slot = live.pairs.insert(sensor, metric, pair, self.stamp);
        if let Some(s) = live.pairs.get_mut(slot) {
            s.again = again;
        }
        self.pairs += 1;
        if live.single {
            self.single += 1;
        }
        if evictable {
            let e = Entry {
                rule: u32::try_from(i).unwrap_or(u32::MAX),
                slot,
                stamp: self.stamp,
            };
            self.push_idle(e, again);
        }
    }

    fn push_idle(&mut self, e: Entry, again: bool) {
        self.idle.push(e, again);
        if self.idle.len() > 2 * self.pairs + 1024 {
            let live = &self.live;
            self.idle.compact(|e| current(live, e));
        }
    }

    /// Takes pair `slot` of rule `i` out of the engine.
    fn take(&mut self, i: usize, slot: u32) -> Option<Slot> {
        let live = self.live.get_mut(i)?;
        let s = live.remove(slot)?;
        self.pairs = self.pairs.saturating_sub(1);
        if live.single {
            self.single = self.single.saturating_sub(1);
        }
        self.samples = self.samples.saturating_sub(s.pair.samples.len());
        Some(s)
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
        // The same in every rule's pairs (one engine, one set of keys).
        let mut hash = None;
        for &idx in &candidates {
            let i = idx as usize;
            let Some(live) = self.live.get(i) else {
                continue;
            };
            if !live.rule.sensor.matches(&r.sensor) || !live.rule.metric.matches(&r.metric) {
                continue;
            }
            let h = *hash.get_or_insert_with(|| live.pairs.hash(&r.sensor, &r.metric));
            let deadline = match live.pairs.find_hashed(h, &r.sensor, &r.metric) {
                Some(slot) => self.step_stored(i, slot, r, now, out),
                None => self.step_new(i, r, now, out),
            };
            self.lower_hint(deadline);
        }
        self.scratch = candidates;
        if self.samples > self.limits.max_samples {
            self.thin_all();
        }
    }

    /// A reading for pair `slot` of rule `i`, which is stored.
    fn step_stored(
        &mut self,
        i: usize,
        slot: u32,
        r: &Reading,
        now: Now,
        out: &mut Vec<AlertDraft>,
    ) -> Option<Mono> {
        let cap = self.limits.max_samples_per_pair;
        let live = self.live.get_mut(i)?;
        let s = live.pairs.get_mut(slot)?;
        let (before, samples) = (out.len(), s.pair.samples.len());
        let thinned = step(
            At::reading(&live.rule, r, now),
            r.value,
            &mut s.pair,
            cap,
            out,
        );
        s.pair.dirty = true;
        self.samples = self.samples.saturating_sub(samples) + s.pair.samples.len();
        self.samples_thinned = self.samples_thinned.saturating_add(thinned as u64);
        if out.len() > before {
            let id = live.rule.id.clone();
            self.emitted.push((id, r.sensor.clone(), r.metric.clone()));
        }
        let deadline = pair_deadline(&live.rule, &s.pair);
        if s.pair.is_idle() {
            self.take(i, slot);
        } else {
            self.stamp += 1;
            s.stamp = self.stamp;
            s.again = true;
            if pair::evictable(live.single, &s.pair) {
                let e = Entry {
                    rule: u32::try_from(i).unwrap_or(u32::MAX),
                    slot,
                    stamp: self.stamp,
                };
                self.push_idle(e, true);
            }
        }
        deadline
    }

    /// A reading for a pair of rule `i` that is not stored: stored if it
    /// needs state and there is room (or room is made); refused otherwise,
    /// alerts and all.
    fn step_new(
        &mut self,
        i: usize,
        r: &Reading,
        now: Now,
        out: &mut Vec<AlertDraft>,
    ) -> Option<Mono> {
        let cap = self.limits.max_samples_per_pair;
        let live = self.live.get(i)?;
        let mut pair = Pair::new();
        let before = out.len();
        step(
            At::reading(&live.rule, r, now),
            r.value,
            &mut pair,
            cap,
            out,
        );
        if pair.is_idle() {
            return None;
        }
        let deadline = pair_deadline(&live.rule, &pair);
        if !live.single && !self.has_room() && !self.make_room() {
            out.truncate(before);
            self.pairs_refused = self.pairs_refused.saturating_add(1);
            let id = self.live.get(i).map(|l| l.rule.id.as_str()).unwrap_or("");
            let last = self.last_refused.get_or_insert_with(Default::default);
            for (to, from) in [
                (&mut last.0, id),
                (&mut last.1, &r.sensor),
                (&mut last.2, &r.metric),
            ] {
                to.clear();
                to.push_str(from);
            }
            return None;
        }
        if out.len() > before {
            let id = self
                .live
                .get(i)
                .map(|l| l.rule.id.clone())
                .unwrap_or_default();
            self.emitted.push((id, r.sensor.clone(), r.metric.clone()));
        }
        self.insert(i, &r.sensor, &r.metric, pair, false);
        deadline
    }

    /// Thins every window holding more than its share of half of
    /// `max_samples`: the share is the most samples each pair may keep such
    /// that all fit in that half (windows smaller than it are left whole, so
    /// a few long windows are not thinned for the sake of many one-sample
    /// ones). Runs when a reading passed `max_samples`; as it halves the
    /// total, its cost (a sort of the pairs, and their samples) is spread
    /// over as many readings as `max_samples / 2`.
    fn thin_all(&mut self) {
        let mut lens: Vec<usize> = self
            .live
            .iter()
            .flat_map(|l| l.pairs.iter())
            .map(|(_, s)| s.pair.samples.len())
            .filter(|&n| n > 0)
            .collect();
        lens.sort_unstable();
        let share = fair_share(&lens, self.limits.max_samples / 2);
        for live in &mut self.live {
            let merge = live.merge;
            for (_, s) in live.pairs.iter_mut() {
                let gone = thin(&mut s.pair.samples, share, merge);
                self.samples = self.samples.saturating_sub(gone);
                self.samples_thinned = self.samples_thinned.saturating_add(gone as u64);
            }
        }
    }

    /// Runs the timers due at `now`: `for` elapsed, repeats, silences.
    pub fn tick(&mut self, now: Now, out: &mut Vec<AlertDraft>) {
        self.start(now);
        match self.deadline_hint {
            Some(h) if h <= mono(now) => {}
            _ => return,
        }
        for live in &mut self.live {
            // What each pair emits, put out in (sensor, metric) order.
            let mut emitted: Vec<(u32, Vec<AlertDraft>)> = Vec::new();
            for (i, s) in live.pairs.iter_mut() {
                let (sensor, metric, pair) = s.parts();
                let at = At {
                    rule: &live.rule,
                    sensor,
                    metric,
                    now,
                };
                let mut drafts = Vec::new();
                run_timers(at, pair, true, &mut drafts);
                if !drafts.is_empty() {
                    pair.dirty = true;
                    emitted.push((i, drafts));
                }
            }
            if emitted.is_empty() {
                continue;
            }
            let order = live.pairs.sorted(emitted.iter().map(|(i, _)| *i).collect());
            for i in order {
                let Some(at) = emitted.iter().position(|(j, _)| *j == i) else {
                    continue;
                };
                let (_, drafts) = emitted.swap_remove(at);
                if let Some(s) = live.pairs.get(i) {
                    let key = (live.rule.id.clone(), s.sensor().to_string());
                    self.emitted.push((key.0, key.1, s.metric().to_string()));
                }
                out.extend(drafts);
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
            kept_or_new.push(kept.unwrap_or_else(|| LiveRule::new(rule, &self.keys)));
        }
        for gone in old.into_iter().flatten() {
            resolve_all(&gone.rule, &gone.pairs, now, out);
            // Its stored pairs go, and its definition if no rule keeps the id.
            let id = &gone.rule.id;
            for (_, s) in gone.pairs.iter() {
                self.stale.push(state::pair_key(id, s.sensor(), s.metric()));
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
        self.recount();
        self.arm(now);
        self.recompute_deadline();
    }

    /// Every firing pair, in rule order.
    pub fn firing(&self) -> Vec<FiringInfo> {
        self.live
            .iter()
            .flat_map(|live| {
                firing_pairs(&live.pairs).into_iter().map(
                    |(sensor, metric, (value, threshold), since_ms)| FiringInfo {
                        rule: live.rule.id.clone(),
                        sensor: sensor.to_string(),
                        metric: metric.to_string(),
                        severity: live.rule.severity,
                        since_ms,
                        value,
                        threshold,
                    },
                )
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

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            rules: self.live.len(),
            pairs: self.pairs,
            max_pairs: self.limits.max_pairs,
            on_max_pairs: self.limits.on_max_pairs,
            pairs_evicted: self.pairs_evicted,
            pairs_refused: self.pairs_refused,
            samples: self.samples,
            max_samples: self.limits.max_samples,
            samples_thinned: self.samples_thinned,
        }
    }

    /// (rule id, sensor, metric) of the latest reading that was refused a
    /// pair, for the log.
    pub fn last_refused(&self) -> Option<(&str, &str, &str)> {
        self.last_refused
            .as_ref()
            .map(|(r, s, m)| (r.as_str(), s.as_str(), m.as_str()))
    }
}

#[cfg(test)]
mod tests;
