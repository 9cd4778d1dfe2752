//! The `/status` document: what a running gateway says about itself, and
//! how `outpost status` prints it for a person.
//!
//! The same types are serialized by the server and deserialized by the
//! client, so the two cannot drift apart. Pure: building the document from
//! telemetry is in `http::mod`, rendering here takes the document and the
//! time, and reads no clock. No secret is in it: a broker URL never holds
//! credentials (config refuses `user:pass@`), and passwords are not read.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// `/status`, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub gateway: String,
    pub version: String,
    pub uptime_s: u64,
    pub pipeline: PipelineStatus,
    pub upstream: UpstreamStatus,
    pub outbox: OutboxStatus,
    pub sources: Vec<SourceStatus>,
    pub alerts: AlertsStatus,
    pub rules: RulesStatus,
    /// Modbus devices, per `[[modbus]]` bus (absent from older gateways).
    #[serde(default)]
    pub modbus: Vec<ModbusDeviceStatus>,
}

/// One Modbus device: what was asked, what answered, what failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModbusDeviceStatus {
    /// The `[[modbus]]` source (bus) it is on.
    pub source: String,
    pub unit: u8,
    pub sensor: String,
    /// True while every request of its last poll was answered.
    pub up: bool,
    pub requests: u64,
    pub answers: u64,
    pub readings: u64,
    /// Failed requests by kind: `timeout`, `exception`, `bad_crc`,
    /// `bad_frame`; values left out: `non_finite`.
    pub errors: BTreeMap<String, u64>,
    /// Seconds since its last good answer (null: none yet).
    pub last_answer_age_s: Option<u64>,
}

/// Is the pipeline moving? The same signal as `/healthz` and the watchdog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineStatus {
    pub healthy: bool,
    /// Milliseconds since the engine last evaluated a reading or a tick.
    pub last_progress_ms_ago: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamStatus {
    /// False when the config has no `[upstream]`: alerts stay in the outbox.
    pub configured: bool,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: Option<String>,
    pub topic_prefix: Option<String>,
    pub connected: bool,
    pub reconnects: u64,
    /// Alerts handed to the broker (redeliveries included).
    pub published: u64,
    /// PUBACKs received for alerts.
    pub acked: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxStatus {
    /// Alerts waiting for a PUBACK.
    pub depth: u64,
    pub bytes: u64,
    /// The seq the next alert will get.
    pub next_seq: u64,
    pub dropped: u64,
    pub errors: u64,
    pub oldest: Option<OldestAlert>,
    /// Alerts that could not be stored (counted, reported as `unstored`).
    #[serde(default)]
    pub unstored: u64,
    /// Bytes the outbox's files take.
    #[serde(default)]
    pub disk_bytes: u64,
    /// Why storing alerts fails right now; absent while it works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_error: Option<String>,
}

/// The oldest alert still waiting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OldestAlert {
    pub id: String,
    pub seq: u64,
    pub rule: String,
    pub sensor: String,
    pub state: String,
    pub ts: String,
    /// Seconds it has waited in the outbox (time waited: a wall clock that
    /// jumps does not change it).
    pub age_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub name: String,
    /// `serial`, `mqtt` or `simulate`.
    pub kind: String,
    pub connected: bool,
    /// Lines or messages received.
    pub messages: u64,
    pub readings: u64,
    /// Bad input by kind (`syntax`, `not_utf8`, `too_long`, ...).
    pub errors: BTreeMap<String, u64>,
    pub reopens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertsStatus {
    /// Alerts created since the gateway started.
    pub created: u64,
    pub firing: Vec<FiringAlert>,
}

/// A (rule, sensor, metric) pair firing now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FiringAlert {
    pub rule: String,
    pub sensor: String,
    pub metric: String,
    pub severity: String,
    pub since: String,
    pub value: f64,
    pub threshold: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RulesStatus {
    pub loaded: u64,
    pub reloads: u64,
    pub reload_errors: u64,
    /// The version of the pushed rules in force (none when none is).
    #[serde(default)]
    pub version: Option<String>,
    /// Rules in force that were pushed.
    #[serde(default)]
    pub pushed: u64,
    /// `sha256:...` of every rule in force (empty from a gateway too old to say).
    #[serde(default)]
    pub hash: String,
    /// Their state against `[rules]` limits (absent from a gateway older
    /// than them: then all zero).
    #[serde(default)]
    pub state: RuleStateStatus,
}

/// The rules' pairs and window samples against their limits, and what
/// reaching them did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RuleStateStatus {
    pub pairs: u64,
    pub max_pairs: u64,
    /// `evict` or `refuse`.
    pub on_max_pairs: String,
    pub pairs_evicted: u64,
    pub pairs_refused: u64,
    pub samples: u64,
    pub max_samples: u64,
    pub samples_thinned: u64,
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`: two units at most.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// `512 B`, `3.2 KiB`, `1.5 MiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// Left-aligned columns, two spaces apart, each line indented by `indent`.
fn table(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::from(indent);
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let pad = widths[c].saturating_sub(cell.chars().count()) + 2;
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn number(v: f64) -> String {
    // Readings are shown as written by people: 31.2, not 31.200000000000003.
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// `0`, or `3 (syntax 2, too_long 1)`.
fn error_summary(errors: &BTreeMap<String, u64>) -> String {
    let total: u64 = errors.values().sum();
    if total == 0 {
        return "0".to_string();
    }
    let kinds: Vec<String> = errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("{total} ({})", kinds.join(", "))
}

/// The text `outpost status` prints.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let health = if s.pipeline.healthy {
        "pipeline ok".to_string()
    } else {
        format!(
            "PIPELINE STALLED (no progress for {})",
            human_duration(s.pipeline.last_progress_ms_ago / 1000)
        )
    };
    let _ = writeln!(
        o,
        "outpost {} (version {}), up {}, {}",
        s.gateway,
        s.version,
        human_duration(s.uptime_s),
        health
    );
    o.push('\n');

    let u = &s.upstream;
    if u.configured {
        let link = if u.connected {
            "connected"
        } else {
            "DISCONNECTED"
        };
        let _ = writeln!(
            o,
            "upstream  {} {link}; {} reconnects, {} alerts published, {} acknowledged",
            u.url.as_deref().unwrap_or("?"),
            u.reconnects,
            u.published,
            u.acked
        );
    } else {
        let _ = writeln!(
            o,
            "upstream  none configured: alerts stay in the outbox and the log"
        );
    }

    let b = &s.outbox;
    let _ = writeln!(
        o,
        "outbox    {} alert{} waiting ({}), next seq {}, {} dropped, {} errors",
        b.depth,
        if b.depth == 1 { "" } else { "s" },
        human_bytes(b.bytes),
        b.next_seq,
        b.dropped,
        b.errors
    );
    if let Some(err) = &b.storage_error {
        let _ = writeln!(o, "          STORAGE FAILING: {err}");
    }
    if b.unstored > 0 {
        let _ = writeln!(
            o,
            "          {} alert{} could not be stored (reported as unstored)",
            b.unstored,
            if b.unstored == 1 { "" } else { "s" }
        );
    }
    if let Some(old) = &b.oldest {
        let _ = writeln!(
            o,
            "          oldest: {} old, seq {} {} {} {} ({})",
            human_duration(old.age_s),
            old.seq,
            old.rule,
            old.sensor,
            old.state,
            old.ts
        );
    }
    o.push('\n');

    if s.sources.is_empty() {
        let _ = writeln!(o, "sources   none");
    } else {
        let _ = writeln!(o, "sources");
        let mut rows = vec![vec![
            "NAME".into(),
            "KIND".into(),
            "STATE".into(),
            "MESSAGES".into(),
            "READINGS".into(),
            "ERRORS".into(),
            "REOPENS".into(),
        ]];
        for src in &s.sources {
            let errors = error_summary(&src.errors);
            let state = match (src.kind.as_str(), src.connected) {
                ("simulate", _) => "running",
                (_, true) => "connected",
                (_, false) => "DISCONNECTED",
            };
            rows.push(vec![
                src.name.clone(),
                src.kind.clone(),
                state.into(),
                src.messages.to_string(),
                src.readings.to_string(),
                errors,
                src.reopens.to_string(),
            ]);
        }
        table(&mut o, "  ", &rows);
    }
    o.push('\n');

    if !s.modbus.is_empty() {
        let _ = writeln!(o, "modbus devices");
        let mut rows = vec![vec![
            "SOURCE".into(),
            "UNIT".into(),
            "SENSOR".into(),
            "STATE".into(),
            "REQUESTS".into(),
            "ANSWERS".into(),
            "ERRORS".into(),
            "LAST ANSWER".into(),
        ]];
        for d in &s.modbus {
            let state = match (d.up, d.requests) {
                (_, 0) => "waiting",
                (true, _) => "ok",
                (false, _) => "FAILING",
            };
            rows.push(vec![
                d.source.clone(),
                d.unit.to_string(),
                d.sensor.clone(),
                state.into(),
                d.requests.to_string(),
                d.answers.to_string(),
                error_summary(&d.errors),
                d.last_answer_age_s
                    .map_or_else(|| "never".into(), |a| format!("{} ago", human_duration(a))),
            ]);
        }
        table(&mut o, "  ", &rows);
        o.push('\n');
    }

    let f = &s.alerts.firing;
    if f.is_empty() {
        let _ = writeln!(
            o,
            "firing    none ({} alerts created since start)",
            s.alerts.created
        );
    } else {
        let _ = writeln!(
            o,
            "firing    {} ({} alerts created since start)",
            f.len(),
            s.alerts.created
        );
        let mut rows = vec![vec![
            "RULE".into(),
            "SENSOR".into(),
            "METRIC".into(),
            "SEVERITY".into(),
            "VALUE".into(),
            "THRESHOLD".into(),
            "SINCE".into(),
        ]];
        for a in f {
            rows.push(vec![
                a.rule.clone(),
                a.sensor.clone(),
                a.metric.clone(),
                a.severity.clone(),
                number(a.value),
                number(a.threshold),
                a.since.clone(),
            ]);
        }
        table(&mut o, "  ", &rows);
    }
    o.push('\n');
    let r = &s.rules;
    let _ = writeln!(
        o,
        "rules     {} loaded, {} reloads, {} refused reloads",
        r.loaded, r.reloads, r.reload_errors
    );
    if !r.hash.is_empty() {
        let pushed = match &r.version {
            Some(v) => format!("pushed version {v} ({} rules)", r.pushed),
            None => "no pushed rules".to_string(),
        };
        let _ = writeln!(o, "          {pushed}, hash {}", r.hash);
    }
    let st = &r.state;
    if st.max_pairs > 0 {
        let full = if st.pairs >= st.max_pairs {
            " FULL"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "state     {} of {} pairs{full} ({} evicted, {} refused; on_max_pairs = {}), \
             {} of {} window samples ({} thinned)",
            st.pairs,
            st.max_pairs,
            st.pairs_evicted,
            st.pairs_refused,
            st.on_max_pairs,
            st.samples,
            st.max_samples,
            st.samples_thinned
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            gateway: "greenhouse-pi".into(),
            version: "0.1.0".into(),
            uptime_s: 7_500,
            pipeline: PipelineStatus {
                healthy: true,
                last_progress_ms_ago: 120,
            },
            upstream: UpstreamStatus {
                configured: true,
                url: Some("mqtt://broker.lan:1883".into()),
                topic_prefix: Some("outpost/greenhouse-pi".into()),
                connected: false,
                reconnects: 3,
                published: 12,
                acked: 10,
            },
            outbox: OutboxStatus {
                depth: 2,
                bytes: 1536,
                next_seq: 13,
                dropped: 0,
                errors: 0,
                oldest: Some(OldestAlert {
                    id: "greenhouse-pi-7f3a9c-11".into(),
                    seq: 11,
                    rule: "hot".into(),
                    sensor: "greenhouse/t1".into(),
                    state: "firing".into(),
                    ts: "2026-11-26T10:00:00.123Z".into(),
                    age_s: 250,
                }),
                unstored: 0,
                disk_bytes: 1 << 20,
                storage_error: None,
            },
            sources: vec![SourceStatus {
                name: "bench".into(),
                kind: "serial".into(),
                connected: true,
                messages: 40,
                readings: 80,
                errors: BTreeMap::from([("syntax".into(), 2), ("too_long".into(), 1)]),
                reopens: 1,
            }],
            alerts: AlertsStatus {
                created: 12,
                firing: vec![FiringAlert {
                    rule: "hot".into(),
                    sensor: "greenhouse/t1".into(),
                    metric: "temperature".into(),
                    severity: "critical".into(),
                    since: "2026-11-26T09:58:00.101Z".into(),
                    value: 31.200000000000003,
                    threshold: 30.0,
                }],
            },
            rules: RulesStatus {
                loaded: 4,
                reloads: 1,
                reload_errors: 0,
                version: Some("2026-11-26T10:00:00.123Z".into()),
                pushed: 3,
                hash: "sha256:9c1f".into(),
                state: RuleStateStatus {
                    pairs: 20_000,
                    max_pairs: 20_000,
                    on_max_pairs: "evict".into(),
                    pairs_evicted: 1234,
                    pairs_refused: 0,
                    samples: 3000,
                    max_samples: 250_000,
                    samples_thinned: 0,
                },
            },
            modbus: vec![],
        }
    }

    #[test]
    fn the_status_document_round_trips_through_json() {
        let s = sample();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), s);
    }

    #[test]
    fn a_gateway_without_rule_limits_still_renders() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["rules"].as_object_mut().unwrap().remove("state");
        let s: Status = serde_json::from_value(v).unwrap();
        assert_eq!(s.rules.state, RuleStateStatus::default());
        assert!(!render(&s).contains("state "));
    }

    #[test]
    fn the_rendering_shows_what_a_person_checks_first() {
        let text = render(&sample());
        for want in [
            "outpost greenhouse-pi (version 0.1.0), up 2h 5m, pipeline ok",
            "upstream  mqtt://broker.lan:1883 DISCONNECTED; 3 reconnects, 12 alerts published, 10 acknowledged",
            "outbox    2 alerts waiting (1.5 KiB), next seq 13",
            "oldest: 4m 10s old, seq 11 hot greenhouse/t1 firing",
            "bench  serial  connected  40        80        3 (syntax 2, too_long 1)  1",
            "hot   greenhouse/t1  temperature  critical  31.2   30",
            "rules     4 loaded, 1 reloads, 0 refused reloads",
            "          pushed version 2026-11-26T10:00:00.123Z (3 rules), hash sha256:9c1f",
            "state     20000 of 20000 pairs FULL (1234 evicted, 0 refused; on_max_pairs = evict), \
             3000 of 250000 window samples (0 thinned)",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn modbus_devices_are_listed_with_their_errors_by_kind() {
        let mut s = sample();
        s.modbus = vec![
            ModbusDeviceStatus {
                source: "rs485".into(),
                unit: 1,
                sensor: "probe/1".into(),
                up: true,
                requests: 120,
                answers: 120,
                readings: 240,
                errors: BTreeMap::new(),
                last_answer_age_s: Some(2),
            },
            ModbusDeviceStatus {
                source: "rs485".into(),
                unit: 2,
                sensor: "meter/1".into(),
                up: false,
                requests: 130,
                answers: 99,
                readings: 990,
                errors: BTreeMap::from([("timeout".into(), 30), ("bad_crc".into(), 1)]),
                last_answer_age_s: Some(70),
            },
        ];
        let text = render(&s);
        for want in [
            "modbus devices",
            "SOURCE  UNIT  SENSOR   STATE    REQUESTS  ANSWERS  ERRORS                      LAST ANSWER",
            "rs485   1     probe/1  ok       120       120      0                           2s ago",
            "rs485   2     meter/1  FAILING  130       99       31 (bad_crc 1, timeout 30)  1m 10s ago",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        // A document from a gateway without Modbus still parses.
        let mut json: serde_json::Value = serde_json::to_value(sample()).unwrap();
        json.as_object_mut().unwrap().remove("modbus");
        assert_eq!(
            serde_json::from_value::<Status>(json).unwrap().modbus,
            vec![]
        );
    }

    #[test]
    fn a_stalled_pipeline_and_no_upstream_are_said_plainly() {
        let mut s = sample();
        s.pipeline = PipelineStatus {
            healthy: false,
            last_progress_ms_ago: 95_000,
        };
        s.upstream.configured = false;
        s.alerts.firing.clear();
        s.outbox.oldest = None;
        let text = render(&s);
        assert!(
            text.contains("PIPELINE STALLED (no progress for 1m 35s)"),
            "{text}"
        );
        assert!(text.contains("upstream  none configured"), "{text}");
        assert!(
            text.contains("firing    none (12 alerts created since start)"),
            "{text}"
        );
        assert!(!text.contains("oldest:"), "{text}");
        assert!(!text.contains("STORAGE"), "{text}");
    }

    #[test]
    fn failing_storage_and_unstored_alerts_are_said_plainly() {
        let mut s = sample();
        s.outbox.storage_error = Some("outbox log: No space left on device".into());
        s.outbox.unstored = 3;
        let text = render(&s);
        assert!(
            text.contains("STORAGE FAILING: outbox log: No space left on device"),
            "{text}"
        );
        assert!(text.contains("3 alerts could not be stored"), "{text}");
        // An older gateway's document (no such fields) still reads.
        let mut v = serde_json::to_value(sample()).unwrap();
        let o = v["outbox"].as_object_mut().unwrap();
        o.remove("unstored");
        o.remove("disk_bytes");
        assert!(serde_json::from_value::<Status>(v).is_ok());
    }

    #[test]
    fn no_pushed_rules_are_said_with_the_hash() {
        let mut s = sample();
        s.rules.version = None;
        assert!(
            render(&s).contains("          no pushed rules, hash sha256:9c1f"),
            "{}",
            render(&s)
        );
    }

    #[test]
    fn a_status_without_the_rules_in_force_still_reads() {
        // From a gateway that predates pushed rules.
        let mut v = serde_json::to_value(sample()).unwrap();
        let rules = v["rules"].as_object_mut().unwrap();
        rules.remove("version");
        rules.remove("pushed");
        rules.remove("hash");
        let s: Status = serde_json::from_value(v).unwrap();
        assert_eq!((s.rules.version.as_deref(), s.rules.pushed), (None, 0));
        assert!(!render(&s).contains("hash"));
    }

    #[test]
    fn durations_and_sizes_read_like_a_person_writes_them() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(61), "1m 1s");
        assert_eq!(human_duration(3 * 3600 + 120), "3h 2m");
        assert_eq!(human_duration(2 * 86_400 + 3600), "2d 1h");
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(number(-0.0001), "0");
        assert_eq!(number(30.0), "30");
        assert_eq!(number(21.55), "21.55");
    }
}
