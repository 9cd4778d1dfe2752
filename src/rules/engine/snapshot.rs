//! The engine's state across restarts: what is saved, and how an engine is
//! rebuilt from it.

use serde::{Deserialize, Serialize};

use super::pair::{Pair, Pairs, Phase, Seen, resolve_all};
use super::{Engine, MAX_SAMPLES_PER_PAIR, elapsed, mono, ms, pair_up};
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
        let t = mono(now);
        let rules = self
            .live
            .iter()
            .filter(|live| live.pair_count > 0)
            .map(|live| RuleSnapshot {
                rule: live.rule.clone(),
                pairs: live
                    .pairs
                    .iter()
                    .flat_map(|(sensor, metrics)| {
                        metrics.iter().map(move |(metric, pair)| PairSnapshot {
                            sensor: sensor.clone(),
                            metric: metric.clone(),
                            phase: match pair.phase {
                                Phase::Ok => PhaseSnapshot::Ok,
                                Phase::Pending {
                                    start,
                                    since_wall,
                                    value,
                                    threshold,
                                } => PhaseSnapshot::Pending {
                                    elapsed_ms: elapsed(start, t),
                                    since_ms: since_wall,
                                    value,
                                    threshold,
                                },
                                Phase::Firing {
                                    since_wall,
                                    value,
                                    threshold,
                                    last_sent,
                                } => PhaseSnapshot::Firing {
                                    since_ms: since_wall,
                                    value,
                                    threshold,
                                    sent_age_ms: elapsed(last_sent, t),
                                },
                            },
                            samples: pair
                                .samples
                                .iter()
                                .map(|&(at, v)| (elapsed(at, t), v))
                                .collect(),
                            last_seen: pair.seen.map(|s| SeenSnapshot {
                                age_ms: elapsed(s.at, t),
                                wall_ms: s.wall,
                            }),
                        })
                    })
                    .collect(),
            })
            .collect();
        EngineSnapshot {
            version: EngineSnapshot::VERSION,
            rules,
        }
    }

    /// Rebuilds an engine after a restart. Pairs of unchanged rules continue
    /// where they were (firing stays firing without a new alert; pending
    /// timers keep the time already elapsed; time while the gateway was down
    /// is not counted). Firing pairs of rules that are gone or changed are
    /// resolved, as in [`Engine::reload`]. A snapshot of another version is
    /// ignored.
    pub fn restore(
        rules: Vec<Rule>,
        snap: EngineSnapshot,
        now: Now,
        out: &mut Vec<AlertDraft>,
    ) -> Self {
        let mut engine = Engine::new(rules);
        engine.started = true;
        if snap.version == EngineSnapshot::VERSION {
            let rules: Vec<Rule> = engine.live.iter().map(|s| s.rule.clone()).collect();
            let matches = pair_up(snap.rules.iter().map(|r| &r.rule), &rules);
            let mut old: Vec<Option<RuleSnapshot>> = snap.rules.into_iter().map(Some).collect();
            for (live, matched) in engine.live.iter_mut().zip(matches) {
                if let Some(rs) = matched.and_then(|i| old.get_mut(i)).and_then(Option::take) {
                    for ps in rs.pairs {
                        let pair = Pair::from_snapshot(ps.phase, &ps.samples, ps.last_seen, now);
                        live.insert(&ps.sensor, &ps.metric, pair);
                    }
                }
            }
            for rs in old.into_iter().flatten() {
                let mut pairs = Pairs::new();
                for ps in rs.pairs {
                    let pair = Pair::from_snapshot(ps.phase, &[], None, now);
                    pairs.entry(ps.sensor).or_default().insert(ps.metric, pair);
                }
                resolve_all(&rs.rule, &pairs, now, out);
            }
        }
        for live in &mut engine.live {
            live.arm(now);
        }
        engine.recompute_deadline();
        engine
    }
}

impl Pair {
    /// Rebuilds a pair from its snapshot, placing ages before `now`.
    fn from_snapshot(
        phase: PhaseSnapshot,
        samples: &[(u64, f64)],
        seen: Option<SeenSnapshot>,
        now: Now,
    ) -> Pair {
        let t = mono(now);
        let at = |age: u64| t.saturating_sub(ms(age));
        let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
        Pair {
            phase: match phase {
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
            samples: samples
                .iter()
                .rev()
                .take(MAX_SAMPLES_PER_PAIR)
                .rev()
                .filter(|(_, v)| v.is_finite())
                .map(|&(age, v)| (at(age), v))
                .collect(),
            seen: seen.map(|s| Seen {
                at: at(s.age_ms),
                wall: s.wall_ms,
            }),
            dirty: true,
        }
    }
}
