//! The `{topic_prefix}/health` payload: one retained JSON object that says
//! whether the gateway is keeping up. Built from values passed in (no clock,
//! no I/O), so what it says is testable to the field.
//!
//! ```json
//! {"gateway":"greenhouse-pi","version":"0.1.0","ts":"2026-11-26T10:00:00.123Z",
//!  "uptime_s":3600,
//!  "upstream":{"connected":true,"reconnects":2},
//!  "outbox":{"depth":0,"bytes":0,"oldest_age_s":null,"next_seq":43,
//!            "dropped":{"info":0,"warning":0,"critical":0,"total":0},
//!            "events_pending":0,"errors":0,"flushes":40,
//!            "unstored":0,"disk_bytes":1081344,"storage_error":null},
//!  "alerts":{"created":42,"published":42,"acknowledged":42},
//!  "sources":[{"name":"bench","kind":"serial","connected":true,
//!              "messages":120,"readings":240,"errors":{"syntax":1},"reopens":0}],
//!  "rules":{"loaded":4,"version":"7","pushed":2,"hash":"sha256:9c1f...",
//!           "state":{"rules":4,"pairs":812,"max_pairs":20000,"on_max_pairs":"evict",
//!                    "pairs_evicted":0,"pairs_refused":0,"samples":3000,
//!                    "max_samples":250000,"samples_thinned":0}}}
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use crate::alert::rfc3339_ms;
use crate::outbox::{BySeverity, Stats};
use crate::rules::EngineStats;
use crate::telemetry::Telemetry;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    pub gateway: String,
    pub version: &'static str,
    pub ts: String,
    pub uptime_s: u64,
    pub upstream: UpstreamHealth,
    pub outbox: OutboxHealth,
    pub alerts: AlertCounts,
    pub sources: Vec<SourceHealth>,
    pub rules: RulesHealth,
}

/// The rules in force: how many, the version of the pushed ones (null when
/// none is in force) and the hash of the whole set; and their state against
/// its limits (`[rules]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RulesHealth {
    pub loaded: u64,
    pub version: Option<String>,
    pub pushed: u64,
    pub hash: String,
    pub state: EngineStats,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamHealth {
    pub connected: bool,
    pub reconnects: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxHealth {
    pub depth: u64,
    pub bytes: u64,
    /// Age of the oldest unsent alert, seconds (null when none waits).
    pub oldest_age_s: Option<f64>,
    pub next_seq: u64,
    pub dropped: Dropped,
    pub events_pending: u64,
    pub errors: u64,
    pub flushes: u64,
    /// Alerts the rules created that could not be stored (disk full).
    pub unstored: u64,
    /// Bytes the outbox's files take.
    pub disk_bytes: u64,
    /// Why storing alerts fails right now (null while it works).
    pub storage_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dropped {
    pub info: u64,
    pub warning: u64,
    pub critical: u64,
    pub total: u64,
}

impl From<BySeverity> for Dropped {
    fn from(b: BySeverity) -> Self {
        Dropped {
            info: b.info,
            warning: b.warning,
            critical: b.critical,
            total: b.total(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertCounts {
    pub created: u64,
    pub published: u64,
    pub acknowledged: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceHealth {
    pub name: String,
    pub kind: &'static str,
    pub connected: bool,
    pub messages: u64,
    pub readings: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub reopens: u64,
}

impl Health {
    /// Gathers the health from the counters; `now_wall_ms` for `ts` and
    /// ages, `uptime` since the gateway started (the caller reads the clocks).
    pub fn gather(
        gateway: &str,
        t: &Telemetry,
        outbox: &Stats,
        now_wall_ms: i64,
        uptime: Duration,
    ) -> Health {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        Health {
            gateway: gateway.to_string(),
            version: env!("CARGO_PKG_VERSION"),
            ts: rfc3339_ms(now_wall_ms),
            uptime_s: uptime.as_secs(),
            upstream: UpstreamHealth {
                connected: t.upstream_connected.load(Ordering::Relaxed),
                reconnects: load(&t.upstream_reconnects),
            },
            outbox: OutboxHealth {
                depth: outbox.depth,
                bytes: outbox.bytes,
                // Time waited (the wait clock), not a difference of wall
                // clocks: a Pi whose clock jumps at boot shows real ages.
                oldest_age_s: outbox.oldest_waited_ms.map(|w| w as f64 / 1000.0),
                next_seq: outbox.next_seq,
                dropped: outbox.dropped.into(),
                events_pending: outbox.events_pending,
                errors: load(&t.outbox_errors),
                flushes: load(&t.outbox_flushes),
                unstored: outbox.unstored,
                disk_bytes: outbox.disk_bytes,
                storage_error: outbox.storage_error.clone(),
            },
            alerts: AlertCounts {
                created: load(&t.alerts_created),
                published: load(&t.alerts_published),
                acknowledged: load(&t.alerts_acked),
            },
            sources: t
                .sources()
                .iter()
                .map(|s| SourceHealth {
                    name: s.name.clone(),
                    kind: s.kind,
                    connected: s.connected.load(Ordering::Relaxed),
                    messages: load(&s.messages),
                    readings: load(&s.readings),
                    errors: s.errors(),
                    reopens: load(&s.reopens),
                })
                .collect(),
            rules: {
                let r = t.rules_in_force();
                RulesHealth {
                    loaded: load(&t.rules_loaded),
                    version: r.version,
                    pushed: r.pushed,
                    hash: r.hash,
                    state: t.engine(),
                }
            },
        }
    }

    /// What counts as a change worth publishing at once (not every reading
    /// or alert: those refresh on the minute): drops, reconnects, errors,
    /// a source coming or going, the outbox becoming empty or not, the
    /// rules refusing a pair or starting to evict or thin.
    pub fn signature(&self) -> Vec<u64> {
        let mut s = vec![
            self.outbox.dropped.total,
            self.upstream.reconnects,
            self.outbox.errors,
            u64::from(self.outbox.depth == 0),
            self.outbox.unstored,
            u64::from(self.outbox.storage_error.is_some()),
            // A new set of rules (pushed or reloaded) is told at once.
            hash_prefix(&self.rules.hash),
            self.rules.state.pairs_refused,
            u64::from(self.rules.state.pairs_evicted > 0),
            u64::from(self.rules.state.samples_thinned > 0),
        ];
        for src in &self.sources {
            s.push(u64::from(src.connected));
            s.push(src.errors.values().sum());
            s.push(src.reopens);
        }
        s
    }

    pub fn to_payload(&self) -> Vec<u8> {
        // Strings, integers and finite floats: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The first 16 hex digits of a `sha256:` hash as a number (0 for none).
fn hash_prefix(hash: &str) -> u64 {
    let hex = hash.strip_prefix("sha256:").unwrap_or(hash);
    hex.get(..16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Stats {
        Stats {
            depth: 3,
            bytes: 900,
            next_seq: 10,
            dropped: BySeverity {
                info: 2,
                warning: 1,
                critical: 0,
            },
            oldest_created_ms: Some(1_800_000_000_000),
            oldest_waited_ms: Some(65_000),
            events_pending: 1,
            unstored: 0,
            disk_bytes: 4096,
            storage_error: None,
        }
    }

    #[test]
    fn health_reports_outbox_drops_sources_and_the_oldest_age() {
        let t = Telemetry::new();
        let src = t.source("bench", "serial");
        src.readings.store(5, Ordering::Relaxed);
        src.error("syntax");
        t.upstream_reconnects.store(2, Ordering::Relaxed);
        let h = Health::gather(
            "gw",
            &t,
            &stats(),
            1_800_000_012_500,
            Duration::from_secs(3600),
        );
        let v: serde_json::Value = serde_json::from_slice(&h.to_payload()).unwrap();
        assert_eq!(v["gateway"], "gw");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["outbox"]["depth"], 3);
        assert_eq!(
            v["outbox"]["oldest_age_s"], 65.0,
            "time waited, not wall-clock age"
        );
        assert_eq!(v["outbox"]["storage_error"], serde_json::Value::Null);
        assert_eq!(v["outbox"]["dropped"]["total"], 3);
        assert_eq!(v["upstream"]["reconnects"], 2);
        assert_eq!(v["sources"][0]["readings"], 5);
        assert_eq!(v["sources"][0]["errors"]["syntax"], 1);
        assert_eq!(v["ts"], "2027-01-15T08:00:12.500Z");
        assert_eq!(v["uptime_s"], 3600);
        assert_eq!(v["rules"]["loaded"], 0);
        assert_eq!(v["rules"]["version"], serde_json::Value::Null);
        assert_eq!(v["rules"]["hash"], "");
        assert_eq!(
            v["rules"]["state"]["max_pairs"], 0,
            "nothing published by the engine yet"
        );
        t.set_engine(EngineStats {
            pairs: 20_000,
            max_pairs: 20_000,
            pairs_evicted: 7,
            ..EngineStats::default()
        });
        let h = Health::gather("gw", &t, &stats(), 0, Duration::ZERO);
        let v: serde_json::Value = serde_json::from_slice(&h.to_payload()).unwrap();
        assert_eq!(v["rules"]["state"]["pairs_evicted"], 7);
        assert_eq!(v["rules"]["state"]["on_max_pairs"], "evict");
    }

    #[test]
    fn the_rules_in_force_are_told_and_a_new_set_changes_the_signature() {
        let t = Telemetry::new();
        t.rules_loaded.store(4, Ordering::Relaxed);
        t.set_rules_in_force(crate::telemetry::RulesInForce {
            version: Some("7".into()),
            pushed: 2,
            hash: format!("sha256:{}", "ab".repeat(32)),
        });
        let h = Health::gather("gw", &t, &stats(), 0, Duration::ZERO);
        let v: serde_json::Value = serde_json::from_slice(&h.to_payload()).unwrap();
        assert_eq!(v["rules"]["loaded"], 4);
        assert_eq!(v["rules"]["version"], "7");
        assert_eq!(v["rules"]["pushed"], 2);
        assert_eq!(v["rules"]["hash"], format!("sha256:{}", "ab".repeat(32)));
        t.set_rules_in_force(crate::telemetry::RulesInForce {
            version: Some("8".into()),
            pushed: 2,
            hash: format!("sha256:{}", "cd".repeat(32)),
        });
        assert_ne!(
            Health::gather("gw", &t, &stats(), 0, Duration::ZERO).signature(),
            h.signature()
        );
    }

    #[test]
    fn the_signature_changes_on_drops_and_errors_but_not_on_readings() {
        let t = Telemetry::new();
        let src = t.source("bench", "serial");
        let a = Health::gather("gw", &t, &stats(), 0, Duration::ZERO).signature();
        src.readings.store(99, Ordering::Relaxed);
        assert_eq!(
            Health::gather("gw", &t, &stats(), 5, Duration::ZERO).signature(),
            a
        );
        src.error("too_long");
        assert_ne!(
            Health::gather("gw", &t, &stats(), 5, Duration::ZERO).signature(),
            a
        );
        let mut s = stats();
        s.dropped.info += 1;
        let b = Health::gather("gw", &t, &stats(), 5, Duration::ZERO).signature();
        assert_ne!(
            Health::gather("gw", &t, &s, 5, Duration::ZERO).signature(),
            b
        );
        // The rules: a refusal, the first eviction; not the pair count.
        let mut e = EngineStats {
            pairs: 10,
            ..EngineStats::default()
        };
        t.set_engine(e);
        let c = Health::gather("gw", &t, &stats(), 5, Duration::ZERO).signature();
        e.pairs = 11;
        t.set_engine(e);
        assert_eq!(
            Health::gather("gw", &t, &stats(), 5, Duration::ZERO).signature(),
            c
        );
        for bump in [
            |e: &mut EngineStats| e.pairs_refused += 1,
            |e: &mut EngineStats| e.pairs_evicted += 1,
            |e: &mut EngineStats| e.samples_thinned += 1,
        ] {
            let before = Health::gather("gw", &t, &stats(), 5, Duration::ZERO).signature();
            bump(&mut e);
            t.set_engine(e);
            assert_ne!(
                Health::gather("gw", &t, &stats(), 5, Duration::ZERO).signature(),
                before
            );
        }
    }
}
