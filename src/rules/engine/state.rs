//! The engine's state as keys and values, so a store writes only what
//! changed: one key per rule definition, one per (rule, sensor, metric)
//! pair. Pure: the engine says what changed; where it goes is the caller's.
//!
//! Keys: `r` + rule id → the rule's definition (JSON of [`Rule`]: a
//! restart tells unchanged rules from changed ones by it); `p` + rule id
//! length (u16 BE) + rule id + sensor length (u16 BE) + sensor + metric →
//! the pair ([`PairSnapshot`] JSON, ages relative to when it was taken).
//!
//! Three cuts of the changes ([`Changes`]):
//! - `Emitted`: the pairs that emitted alerts since the last cut, without
//!   their window samples: small, written with those alerts in one record,
//!   so a crash can neither re-fire an alert nor forget one;
//! - `Dirty`: every pair touched since the last `Dirty` cut, still without
//!   samples (a periodic checkpoint: bounded writes whatever the readings);
//! - `Full`: every pair with its samples (a clean stop).
//!
//! Window samples are thus kept across a clean restart, not across a crash
//! (windows refill); phases, `for` timers, repeats and silence are kept
//! across both.

use std::collections::BTreeMap;

use super::pair::{LiveRule, Pair, Phase};
use super::snapshot::{EngineSnapshot, PairSnapshot, PhaseSnapshot, RuleSnapshot, SeenSnapshot};
use super::{Engine, Limits, elapsed, mono};
use crate::reading::Now;
use crate::rules::{AlertDraft, Rule};

/// A changed key: the new value, or `None` when it is gone.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// Which changes [`Engine::state_changes`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changes {
    Emitted,
    Dirty,
    Full,
}

const RULE: u8 = b'r';
const PAIR: u8 = b'p';

pub fn rule_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 1);
    k.push(RULE);
    k.extend_from_slice(id.as_bytes());
    k
}

fn push_str(k: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

pub fn pair_key(rule: &str, sensor: &str, metric: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(rule.len() + sensor.len() + metric.len() + 5);
    k.push(PAIR);
    push_str(&mut k, rule);
    push_str(&mut k, sensor);
    k.extend_from_slice(metric.as_bytes());
    k
}

/// `(rule, sensor, metric)` of a pair key.
fn parse_pair_key(k: &[u8]) -> Option<(String, String, String)> {
    let mut rest = k.strip_prefix(&[PAIR])?;
    let mut take = || -> Option<String> {
        let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
        let s = std::str::from_utf8(rest.get(2..2 + len)?).ok()?.to_string();
        rest = &rest[2 + len..];
        Some(s)
    };
    let rule = take()?;
    let sensor = take()?;
    let metric = std::str::from_utf8(rest).ok()?.to_string();
    Some((rule, sensor, metric))
}

/// A pair as stored; `samples` only when asked.
pub(super) fn pair_snapshot(
    sensor: &str,
    metric: &str,
    pair: &Pair,
    now: Now,
    samples: bool,
) -> PairSnapshot {
    let t = mono(now);
    PairSnapshot {
        sensor: sensor.to_string(),
        metric: metric.to_string(),
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
        samples: if samples {
            pair.samples
                .iter()
                .map(|s| (elapsed(s.at, t), s.value))
                .collect()
        } else {
            Vec::new()
        },
        weights: if samples && pair.samples.iter().any(|s| s.weight != 1) {
            pair.samples.iter().map(|s| s.weight).collect()
        } else {
            Vec::new()
        },
        spans: if samples && pair.samples.iter().any(|s| s.span != 0) {
            pair.samples.iter().map(|s| s.span).collect()
        } else {
            Vec::new()
        },
        last_seen: pair.seen.map(|s| SeenSnapshot {
            age_ms: elapsed(s.at, t),
            wall_ms: s.wall,
        }),
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Plain numbers and strings: serializing cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn encode_pair(
    live: &LiveRule,
    sensor: &str,
    metric: &str,
    pair: &Pair,
    now: Now,
    samples: bool,
) -> Change {
    (
        pair_key(&live.rule.id, sensor, metric),
        Some(encode(&pair_snapshot(sensor, metric, pair, now, samples))),
    )
}

impl Engine {
    /// What changed in the engine's stored form since the last call of
    /// this kind (see the module header). Removals come first, so a pair
    /// removed and made again in between ends up stored.
    pub fn state_changes(&mut self, kind: Changes, now: Now) -> Vec<Change> {
        let mut out: Vec<Change> = self.stale.drain(..).map(|k| (k, None)).collect();
        for live in &mut self.live {
            let id = live.rule.id.clone();
            out.extend(
                live.removed
                    .drain(..)
                    .map(|(s, m)| (pair_key(&id, &s, &m), None)),
            );
        }
        if self.rules_dirty || kind == Changes::Full {
            self.rules_dirty = false;
            for live in &self.live {
                out.push((rule_key(&live.rule.id), Some(encode(&live.rule))));
            }
        }
        match kind {
            Changes::Emitted => {
                let emitted = std::mem::take(&mut self.emitted);
                for (rule, sensor, metric) in emitted {
                    let Some(live) = self.live.iter_mut().find(|l| l.rule.id == rule) else {
                        continue;
                    };
                    match live.pairs.find(&sensor, &metric) {
                        Some(i) => {
                            let l: &LiveRule = live;
                            if let Some(s) = l.pairs.get(i) {
                                out.push(encode_pair(l, &sensor, &metric, &s.pair, now, false));
                            }
                            if let Some(s) = live.pairs.get_mut(i) {
                                s.pair.stored = true;
                            }
                        }
                        None => out.push((pair_key(&rule, &sensor, &metric), None)),
                    }
                }
            }
            Changes::Dirty | Changes::Full => {
                self.emitted.clear();
                let samples = kind == Changes::Full;
                for live in &mut self.live {
                    let l: &LiveRule = live;
                    for (_, s) in l.pairs.iter() {
                        if s.pair.dirty || samples {
                            let (sensor, metric) = (s.sensor(), s.metric());
                            out.push(encode_pair(l, sensor, metric, &s.pair, now, samples));
                        }
                    }
                    for (_, s) in live.pairs.iter_mut() {
                        if s.pair.dirty || samples {
                            s.pair.stored = true;
                        }
                        s.pair.dirty = false;
                    }
                }
            }
        }
        out
    }

    /// Rebuilds an engine from stored keys and values (see
    /// [`Engine::restore`] for what is kept and what is resolved). Keys of
    /// rules that are gone or changed are reported as removed by the next
    /// [`Engine::state_changes`].
    pub fn restore_state(
        rules: Vec<Rule>,
        limits: Limits,
        entries: &BTreeMap<Vec<u8>, Vec<u8>>,
        now: Now,
        out: &mut Vec<AlertDraft>,
    ) -> Engine {
        let mut defs: BTreeMap<String, Rule> = BTreeMap::new();
        let mut pairs: BTreeMap<String, Vec<(Vec<u8>, PairSnapshot)>> = BTreeMap::new();
        let mut stale = Vec::new();
        for (k, v) in entries {
            match k.first() {
                Some(&RULE) => match (
                    std::str::from_utf8(&k[1..]),
                    serde_json::from_slice::<Rule>(v),
                ) {
                    (Ok(id), Ok(rule)) => {
                        defs.insert(id.to_string(), rule);
                    }
                    _ => stale.push(k.clone()),
                },
                Some(&PAIR) => match (parse_pair_key(k), serde_json::from_slice::<PairSnapshot>(v))
                {
                    (Some((rule, _, _)), Ok(ps)) => {
                        pairs.entry(rule).or_default().push((k.clone(), ps))
                    }
                    _ => stale.push(k.clone()),
                },
                _ => stale.push(k.clone()),
            }
        }
        let current: BTreeMap<&str, &Rule> = rules.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut snap = EngineSnapshot {
            version: EngineSnapshot::VERSION,
            rules: Vec::new(),
        };
        for (id, rule) in defs {
            let ps = pairs.remove(&id).unwrap_or_default();
            // A rule that changed or went: its pairs are resolved (by
            // restore) and their keys go; an unchanged one keeps them.
            if current.get(id.as_str()) != Some(&&rule) {
                stale.extend(ps.iter().map(|(k, _)| k.clone()));
                if !current.contains_key(id.as_str()) {
                    stale.push(rule_key(&id));
                }
            }
            snap.rules.push(RuleSnapshot {
                rule,
                pairs: ps.into_iter().map(|(_, p)| p).collect(),
            });
        }
        // Pairs whose rule definition was never stored cannot be placed.
        for ps in pairs.into_values() {
            stale.extend(ps.into_iter().map(|(k, _)| k));
        }
        let mut engine = Engine::restore(rules, limits, snap, now, out);
        engine.stale.extend(stale);
        engine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_keys_round_trip_whatever_the_ids_hold() {
        for (r, s, m) in [
            ("hot", "greenhouse/t1", "temperature"),
            ("a", "", "x"),
            ("r.1", "s\0with\0nul", "m/é"),
        ] {
            let k = pair_key(r, s, m);
            assert_eq!(
                parse_pair_key(&k),
                Some((r.to_string(), s.to_string(), m.to_string()))
            );
        }
        assert_eq!(parse_pair_key(b"p\x00"), None);
        assert_eq!(parse_pair_key(b"r"), None);
    }
}
