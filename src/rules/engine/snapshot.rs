//! The engine's state across restarts: what is saved, and how an engine is
//! rebuilt from it.

use serde::{Deserialize, Serialize};

use super::pair::{Pair, Phase, Seen, resolve_all};
use super::slots::Slots;
use super::state::{pair_key, pair_snapshot};
use super::window::{self, Merge, Sample};
use super::{Engine, Limits, mono, ms, pair_up};
use crate::reading::Now;
use crate::rules::{AlertDraft, Rule};

/// The engine's state, for persisting across restarts. Instants are stored
/// as ages relative to the snapshot's `now` (the monotonic clock restarts at
/// another epoch), and each rule's full definition is kept so a restart can
/// tell unchanged rules from changed ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    /// [`EngineSnapshot::VERSION`] when written.
    pub version: u32,
    /// Rules that had any stored pair.
    pub rules: Vec<RuleSnapshot>,
}

impl EngineSnapshot {
    pub const VERSION: u32 = 1;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleSnapshot {
    pub rule: Rule,
    pub pairs: Vec<PairSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairSnapshot {
    pub sensor: String,
    pub metric: String,
    pub phase: PhaseSnapshot,
    /// Window samples as (age ms, value), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<(u64, f64)>,
    /// Readings each sample stands for, when a thinned window has any that
    /// stands for more than one (else empty: one each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<u32>,
    /// Ms from each sample's oldest reading to its newest, when a thinned
    /// window has any that stands for more than one (else empty: 0 each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spans: Vec<u32>,
    /// Silent rules: how long ago the last reading came, and its wall time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<SeenSnapshot>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeenSnapshot {
    pub age_ms: u64,
    pub wall_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum PhaseSnapshot {
    Ok,
    Pending {
        /// Time the condition has held so far.
        elapsed_ms: u64,
        since_ms: i64,
        value: f64,
        threshold: f64,
    },
    Firing {
        since_ms: i64,
        value: f64,
        threshold: f64,
        /// Time since the last firing alert (first or repeat) was sent.
        sent_age_ms: u64,
    },
}

impl Engine {
    /// The state to persist. Ages are relative to `now`.
    pub fn snapshot(&self, now: Now) -> EngineSnapshot {
        let rules = self
            .live
            .iter()
            .filter(|live| live.pairs.len() > 0)
            .map(|live| {
                let all = live.pairs.iter().map(|(i, _)| i).collect();
                RuleSnapshot {
                    rule: live.rule.clone(),
                    pairs: live
                        .pairs
                        .sorted(all)
                        .into_iter()
                        .filter_map(|i| live.pairs.get(i))
                        .map(|s| pair_snapshot(s.sensor(), s.metric(), &s.pair, now, true))
                        .collect(),
                }
            })
            .collect();
        EngineSnapshot {
            version: EngineSnapshot::VERSION,
            rules,
        }
    }

    /// Rebuilds an engine from a snapshot taken earlier (perhaps by another
    /// process: `now` may be on a different monotonic epoch), within
    /// `limits`. Pairs of rules that are unchanged keep their state; firing
    /// pairs of rules that were removed or changed are resolved, as in
    /// [`Engine::reload`]. Pending and firing pairs are always kept; the
    /// others while there is room (the keys of those left out are reported
    /// removed by the next [`Engine::state_changes`]), their windows thinned
    /// to the limits. A snapshot of another version is ignored.
    pub fn restore(
        rules: Vec<Rule>,
        limits: Limits,
        snap: EngineSnapshot,
        now: Now,
        out: &mut Vec<AlertDraft>,
    ) -> Self {
        let mut engine = Engine::with_limits(rules, limits);
        engine.started = true;
        let cap = engine.limits.max_samples_per_pair;
        if snap.version == EngineSnapshot::VERSION {
            let rules: Vec<Rule> = engine.live.iter().map(|s| s.rule.clone()).collect();
            let matches = pair_up(snap.rules.iter().map(|r| &r.rule), &rules);
            let mut old: Vec<Option<RuleSnapshot>> = snap.rules.into_iter().map(Some).collect();
            // Pending and firing pairs first (always kept), then the others
            // while there is room.
            let mut rest = Vec::new();
            for (i, matched) in matches.into_iter().enumerate() {
                let Some(rs) = matched.and_then(|m| old.get_mut(m)).and_then(Option::take) else {
                    continue;
                };
                let merge = Merge::of(&rs.rule);
                for ps in rs.pairs {
                    let mut pair = Pair::from_snapshot(&ps, now);
                    window::thin(&mut pair.samples, cap, merge);
                    let Some(live) = engine.live.get(i) else {
                        continue;
                    };
                    if pair.is_idle() {
                        let key = pair_key(&live.rule.id, &ps.sensor, &ps.metric);
                        engine.stale.push(key);
                    } else if live.single || !live.evictable(&pair) {
                        engine.insert(i, &ps.sensor, &ps.metric, pair, false);
                    } else {
                        rest.push((i, ps.sensor, ps.metric, pair));
                    }
                }
            }
            for (i, sensor, metric, pair) in rest {
                if engine.has_room() {
                    engine.insert(i, &sensor, &metric, pair, false);
                } else if let Some(live) = engine.live.get(i) {
                    engine.stale.push(pair_key(&live.rule.id, &sensor, &metric));
                }
            }
            for rs in old.into_iter().flatten() {
                let mut pairs = Slots::default();
                for ps in &rs.pairs {
                    pairs.insert(&ps.sensor, &ps.metric, Pair::from_snapshot(ps, now), 0);
                }
                resolve_all(&rs.rule, &pairs, now, out);
            }
        }
        if engine.samples > engine.limits.max_samples {
            engine.thin_all();
        }
        engine.arm(now);
        engine.recount();
        engine.recompute_deadline();
        engine
    }
}

impl Pair {
    /// Rebuilds a pair from its snapshot, placing ages before `now`.
    fn from_snapshot(ps: &PairSnapshot, now: Now) -> Pair {
        let t = mono(now);
        let at = |age: u64| t.saturating_sub(ms(age));
        let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
        let weight = |i: usize| ps.weights.get(i).copied().unwrap_or(1).max(1);
        let span = |i: usize| ps.spans.get(i).copied().unwrap_or(0);
        Pair {
            phase: match ps.phase {
                PhaseSnapshot::Ok => Phase::Ok,
                PhaseSnapshot::Pending {
                    elapsed_ms,
                    since_ms,
                    value,
                    threshold,
                } => Phase::Pending {
                    start: at(elapsed_ms),
                    since_wall: since_ms,
                    value: finite(value),
                    threshold: finite(threshold),
                },
                PhaseSnapshot::Firing {
                    since_ms,
                    value,
                    threshold,
                    sent_age_ms,
                } => Phase::Firing {
                    since_wall: since_ms,
                    value: finite(value),
                    threshold: finite(threshold),
                    last_sent: at(sent_age_ms),
                },
            },
            samples: ps
                .samples
                .iter()
                .enumerate()
                .filter(|(_, (_, v))| v.is_finite())
                .map(|(i, &(age, value))| Sample {
                    at: at(age),
                    value,
                    weight: weight(i),
                    span: span(i),
                })
                .collect(),
            seen: ps.last_seen.map(|s| Seen {
                at: at(s.age_ms),
                wall: s.wall_ms,
            }),
            dirty: true,
            // It came from the store.
            stored: true,
        }
    }
}
