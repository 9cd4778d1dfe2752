//! `/metrics`: the gateway's counters in the OpenMetrics text format (which
//! Prometheus, VictoriaMetrics and Telegraf scrape), encoded by
//! `prometheus-client` rather than by hand.
//!
//! The components count in plain atomics (`Telemetry`); at each scrape a
//! fresh registry is filled from them. Only the publish latency histogram
//! lives in `prometheus-client` types, observed by `upstream` directly.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `outpost_build_info` | gauge (1) | `version`, `gateway` |
//! | `outpost_uptime_seconds` | gauge | |
//! | `outpost_pipeline_last_progress_age_seconds` | gauge | |
//! | `outpost_source_messages_total` | counter | `source`, `kind` |
//! | `outpost_source_readings_total` | counter | `source`, `kind` |
//! | `outpost_source_errors_total` | counter | `source`, `kind`, `error` |
//! | `outpost_source_reopens_total` | counter | `source`, `kind` |
//! | `outpost_source_connected` | gauge | `source`, `kind` |
//! | `outpost_alerts_created_total` | counter | `rule`, `state` |
//! | `outpost_alerts_delivered_total` | counter | `rule`, `state` |
//! | `outpost_alerts_firing` | gauge | `rule`, `severity` |
//! | `outpost_alerts_published_total` | counter | (sends, redeliveries included) |
//! | `outpost_outbox_depth` | gauge | |
//! | `outpost_outbox_bytes` | gauge | |
//! | `outpost_outbox_oldest_age_seconds` | gauge | (time waited; 0 when empty) |
//! | `outpost_outbox_dropped_total` | counter | `severity` |
//! | `outpost_outbox_errors_total` | counter | |
//! | `outpost_outbox_unstored_total` | counter | |
//! | `outpost_outbox_held` | gauge | (alerts in memory, not yet stored) |
//! | `outpost_outbox_storage_failing` | gauge | (1 while alerts cannot be stored) |
//! | `outpost_outbox_disk_bytes` | gauge | |
//! | `outpost_upstream_connected` | gauge | |
//! | `outpost_upstream_reconnects_total` | counter | |
//! | `outpost_upstream_publish_latency_seconds` | histogram | (publish → PUBACK) |
//! | `outpost_rules_loaded` | gauge | |
//! | `outpost_rule_reloads_total` | counter | |
//! | `outpost_rule_reload_errors_total` | counter | |
//! | `outpost_http_connections` | gauge | (open now) |
//! | `outpost_http_connections_limit` | gauge | |
//! | `outpost_http_connections_accepted_total` | counter | |
//! | `outpost_http_connections_closed_total` | counter | `reason`: `timeout`, `evicted`, `refused`, `expired` |
//! | `outpost_http_accept_errors_total` | counter | |
//! | `outpost_modbus_requests_total` | counter | `source`, `unit`, `sensor` |
//! | `outpost_modbus_answers_total` | counter | `source`, `unit`, `sensor` |
//! | `outpost_modbus_errors_total` | counter | `source`, `unit`, `sensor`, `error` |
//! | `outpost_modbus_device_up` | gauge | `source`, `unit`, `sensor` |
//! | `outpost_rule_pairs` | gauge | (pairs stored, over all rules) |
//! | `outpost_rule_pairs_max` | gauge | (`[rules] max_pairs`) |
//! | `outpost_rule_pairs_evicted_total` | counter | |
//! | `outpost_rule_pairs_refused_total` | counter | |
//! | `outpost_rule_samples` | gauge | (window samples, over all pairs) |
//! | `outpost_rule_samples_max` | gauge | (`[rules] max_samples`) |
//! | `outpost_rule_samples_thinned_total` | counter | |

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode as encode_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::HttpState;
use crate::rules::Severity;

/// What `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

fn gauge(v: i64) -> Gauge {
    let g = Gauge::default();
    g.set(v);
    g
}

fn gauge_f64(v: f64) -> Gauge<f64, AtomicU64> {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(v);
    g
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// The exposition, now.
pub fn encode(state: &HttpState) -> Result<String, std::fmt::Error> {
    let t = &state.telemetry;
    let mut reg = Registry::with_prefix("outpost");

    let info: Family<Labels, Gauge> = Family::default();
    info.get_or_create(&vec![
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        ("gateway", state.gateway.clone()),
    ])
    .set(1);
    reg.register("build_info", "Version and gateway id (always 1)", info);
    reg.register_with_unit(
        "uptime",
        "Time since the gateway started",
        Unit::Seconds,
        gauge_f64(t.started.elapsed().as_secs_f64()),
    );
    let (age, _) = state.progress();
    reg.register_with_unit(
        "pipeline_last_progress_age",
        "Time since the rule engine last evaluated a reading or a tick (stuck when it grows)",
        Unit::Seconds,
        gauge_f64(age.as_secs_f64()),
    );

    let messages: Family<Labels, Counter> = Family::default();
    let readings: Family<Labels, Counter> = Family::default();
    let errors: Family<Labels, Counter> = Family::default();
    let reopens: Family<Labels, Counter> = Family::default();
    let connected: Family<Labels, Gauge> = Family::default();
    for s in t.sources() {
        let l = vec![("source", s.name.clone()), ("kind", s.kind.to_string())];
        messages.get_or_create(&l).inc_by(load(&s.messages));
        readings.get_or_create(&l).inc_by(load(&s.readings));
        reopens.get_or_create(&l).inc_by(load(&s.reopens));
        connected
            .get_or_create(&l)
            .set(i64::from(s.connected.load(Ordering::Relaxed)));
        for (kind, n) in s.errors() {
            let mut l = l.clone();
            l.push(("error", kind.to_string()));
            errors.get_or_create(&l).inc_by(n);
        }
    }
    reg.register(
        "source_messages",
        "Lines or messages received per source",
        messages,
    );
    reg.register(
        "source_readings",
        "Readings parsed and sent to the rules per source",
        readings,
    );
    reg.register(
        "source_errors",
        "Bad input dropped per source and kind of error",
        errors,
    );
    reg.register(
        "source_reopens",
        "Serial ports reopened or local brokers reconnected",
        reopens,
    );
    reg.register(
        "source_connected",
        "1 while the port is open or the local broker connected",
        connected,
    );

    let created: Family<Labels, Counter> = Family::default();
    let delivered: Family<Labels, Counter> = Family::default();
    for (rule, st, c) in t.alerts_by_rule() {
        let l = vec![("rule", rule), ("state", st.to_string())];
        created.get_or_create(&l).inc_by(c.created);
        delivered.get_or_create(&l).inc_by(c.delivered);
    }
    reg.register(
        "alerts_created",
        "Alerts created and stored in the outbox, by rule and state",
        created,
    );
    reg.register(
        "alerts_delivered",
        "Alerts acknowledged by the upstream broker (PUBACK), by rule and state",
        delivered,
    );
    let mut firing_by: BTreeMap<(String, String), i64> = BTreeMap::new();
    for f in t.firing() {
        *firing_by
            .entry((f.rule, f.severity.to_string()))
            .or_default() += 1;
    }
    let firing: Family<Labels, Gauge> = Family::default();
    for ((rule, severity), n) in firing_by {
        firing
            .get_or_create(&vec![("rule", rule), ("severity", severity)])
            .set(n);
    }
    reg.register(
        "alerts_firing",
        "(rule, sensor, metric) pairs firing now",
        firing,
    );
    reg.register(
        "alerts_published",
        "Alert publishes handed to the upstream broker, redeliveries included",
        counter(load(&t.alerts_published)),
    );

    let ob = &state.outbox;
    reg.register(
        "outbox_depth",
        "Alerts waiting in the outbox for a PUBACK",
        gauge(i64::try_from(ob.depth()).unwrap_or(i64::MAX)),
    );
    reg.register_with_unit(
        "outbox",
        "Payload bytes of the alerts waiting in the outbox",
        Unit::Bytes,
        gauge(i64::try_from(ob.bytes()).unwrap_or(i64::MAX)),
    );
    let oldest_age = ob.oldest_waited().map_or(0, |d| d.as_secs());
    reg.register_with_unit(
        "outbox_oldest_age",
        "Age of the oldest alert waiting in the outbox (0 when empty)",
        Unit::Seconds,
        gauge(i64::try_from(oldest_age).unwrap_or(i64::MAX)),
    );
    let dropped: Family<Labels, Counter> = Family::default();
    let by = ob.dropped();
    for sev in [Severity::Info, Severity::Warning, Severity::Critical] {
        dropped
            .get_or_create(&vec![("severity", sev.to_string())])
            .inc_by(by.get(sev));
    }
    reg.register(
        "outbox_dropped",
        "Alerts dropped to keep the outbox within max_bytes and max_age, by severity",
        dropped,
    );
    reg.register(
        "outbox_errors",
        "Outbox read, write and flush failures",
        counter(load(&t.outbox_errors)),
    );
    reg.register(
        "outbox_unstored",
        "Alerts the rules created that could not be stored (disk full), reported as unstored",
        counter(ob.unstored()),
    );
    reg.register(
        "outbox_held",
        "Alerts created and held in memory, not yet stored (the disk refuses writes)",
        gauge(i64::try_from(load(&t.outbox_held)).unwrap_or(i64::MAX)),
    );
    reg.register(
        "outbox_storage_failing",
        "1 while the outbox cannot store alerts (a full or failing disk)",
        gauge(i64::from(ob.storage_error().is_some())),
    );
    reg.register_with_unit(
        "outbox_disk",
        "Bytes the outbox's files take on disk",
        Unit::Bytes,
        gauge(i64::try_from(ob.size_on_disk()).unwrap_or(i64::MAX)),
    );

    reg.register(
        "upstream_connected",
        "1 while connected to the upstream broker",
        gauge(i64::from(t.upstream_connected.load(Ordering::Relaxed))),
    );
    reg.register(
        "upstream_reconnects",
        "Upstream connections lost after being established",
        counter(load(&t.upstream_reconnects)),
    );
    reg.register_with_unit(
        "upstream_publish_latency",
        "Time from publishing an alert to its PUBACK",
        Unit::Seconds,
        t.publish_latency.clone(),
    );

    reg.register(
        "rules_loaded",
        "Rules in force",
        gauge(i64::try_from(load(&t.rules_loaded)).unwrap_or(i64::MAX)),
    );
    reg.register(
        "rule_reloads",
        "Rules reloads (SIGHUP) accepted",
        counter(load(&t.rule_reloads)),
    );
    reg.register(
        "rule_reload_errors",
        "Rules reloads refused because a file did not validate",
        counter(load(&t.rule_reload_errors)),
    );
    let e = t.engine();
    let count = |n: usize| gauge(i64::try_from(n).unwrap_or(i64::MAX));
    reg.register(
        "rule_pairs",
        "(rule, sensor, metric) pairs the rules keep state for",
        count(e.pairs),
    );
    reg.register(
        "rule_pairs_max",
        "The most pairs kept ([rules] max_pairs)",
        count(e.max_pairs),
    );
    reg.register(
        "rule_pairs_evicted",
        "Idle pairs evicted at max_pairs to make room for new ones",
        counter(e.pairs_evicted),
    );
    reg.register(
        "rule_pairs_refused",
        "Readings refused a new pair at max_pairs (ignored by that rule)",
        counter(e.pairs_refused),
    );
    reg.register(
        "rule_samples",
        "Window samples the rules keep",
        count(e.samples),
    );
    reg.register(
        "rule_samples_max",
        "The most window samples kept ([rules] max_samples)",
        count(e.max_samples),
    );
    reg.register(
        "rule_samples_thinned",
        "Window samples merged into coarser ones at max_samples or max_samples_per_pair",
        counter(e.samples_thinned),
    );

    let c = &state.connections;
    reg.register(
        "http_connections",
        "Connections open to this endpoint",
        gauge(i64::try_from(load(&c.open)).unwrap_or(i64::MAX)),
    );
    reg.register(
        "http_connections_limit",
        "The most connections this endpoint keeps open (the rest of the file descriptors are the gateway's)",
        gauge(i64::try_from(load(&c.limit)).unwrap_or(i64::MAX)),
    );
    reg.register(
        "http_connections_accepted",
        "Connections accepted by this endpoint",
        counter(load(&c.accepted)),
    );
    let closed: Family<Labels, Counter> = Family::default();
    for (reason, n) in [
        ("timeout", &c.timed_out),
        ("evicted", &c.evicted),
        ("refused", &c.refused),
        ("expired", &c.expired),
    ] {
        closed
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc_by(load(n));
    }
    reg.register(
        "http_connections_closed",
        "Connections this endpoint closed on its own: no complete request in time (timeout), to make room at the limit (evicted), at the limit with every connection busy (refused, answered 503), at the end of their lifetime (expired)",
        closed,
    );
    reg.register(
        "http_accept_errors",
        "Failed accepts (out of file descriptors, reset before accepted)",
        counter(load(&c.accept_errors)),
    );
    let devices = t.modbus_devices();
    if !devices.is_empty() {
        let requests: Family<Labels, Counter> = Family::default();
        let answers: Family<Labels, Counter> = Family::default();
        let errors: Family<Labels, Counter> = Family::default();
        let up: Family<Labels, Gauge> = Family::default();
        for d in devices {
            let l = vec![
                ("source", d.source.clone()),
                ("unit", d.unit.to_string()),
                ("sensor", d.sensor.clone()),
            ];
            requests.get_or_create(&l).inc_by(load(&d.requests));
            answers.get_or_create(&l).inc_by(load(&d.answers));
            up.get_or_create(&l)
                .set(i64::from(d.up.load(Ordering::Relaxed)));
            for (kind, n) in d.errors() {
                let mut l = l.clone();
                l.push(("error", kind.to_string()));
                errors.get_or_create(&l).inc_by(n);
            }
        }
        reg.register(
            "modbus_requests",
            "Modbus requests sent per device",
            requests,
        );
        reg.register(
            "modbus_answers",
            "Modbus requests answered with data per device",
            answers,
        );
        reg.register(
            "modbus_errors",
            "Modbus requests that gave no value per device and kind (timeout, exception, bad_crc, bad_frame), and values left out (non_finite)",
            errors,
        );
        reg.register(
            "modbus_device_up",
            "1 while every request of the device's last poll was answered",
            up,
        );
    }

    let mut out = String::new();
    encode_text(&mut out, &reg)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::outbox::Outbox;
    use crate::reading::Clock;
    use crate::rules::AlertState;
    use crate::telemetry::Telemetry;

    /// The value of the sample `name{labels}` (labels as written, in order).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    #[test]
    fn the_counters_are_exposed_with_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let t = Arc::new(Telemetry::new());
        let src = t.source("bench", "serial");
        src.readings.store(7, Ordering::Relaxed);
        src.error("syntax");
        src.error("syntax");
        t.alert_created("hot", AlertState::Firing);
        t.alert_delivered("hot", AlertState::Firing);
        t.upstream_connected.store(true, Ordering::Relaxed);
        t.publish_latency.observe(0.004);
        t.rules_loaded.store(3, Ordering::Relaxed);
        let connections = Arc::new(crate::http::ConnStats::default());
        connections.limit.store(64, Ordering::Relaxed);
        connections.open.store(2, Ordering::Relaxed);
        connections.evicted.store(5, Ordering::Relaxed);
        connections.timed_out.store(1, Ordering::Relaxed);
        let dev = t.modbus_device("rs485", 2, "meter/1");
        dev.requests.store(5, Ordering::Relaxed);
        dev.error("bad_crc");
        t.set_engine(crate::rules::EngineStats {
            pairs: 20_000,
            max_pairs: 20_000,
            pairs_evicted: 5,
            pairs_refused: 2,
            samples: 100,
            max_samples: 250_000,
            samples_thinned: 9,
            ..Default::default()
        });
        let state = HttpState {
            gateway: "gw".into(),
            upstream: None,
            outbox: Arc::new(Outbox::open(dir.path()).unwrap().0),
            telemetry: t,
            clock: Clock::new(),
            stall_after: Duration::from_secs(10),
            connections,
        };
        let text = encode(&state).unwrap();
        let want = [
            (
                r#"outpost_source_readings_total{source="bench",kind="serial"}"#,
                7.0,
            ),
            (
                r#"outpost_source_errors_total{source="bench",kind="serial",error="syntax"}"#,
                2.0,
            ),
            (
                r#"outpost_alerts_created_total{rule="hot",state="firing"}"#,
                1.0,
            ),
            (
                r#"outpost_alerts_delivered_total{rule="hot",state="firing"}"#,
                1.0,
            ),
            ("outpost_upstream_connected", 1.0),
            ("outpost_outbox_depth", 0.0),
            ("outpost_outbox_bytes", 0.0),
            ("outpost_rules_loaded", 3.0),
            (
                r#"outpost_modbus_requests_total{source="rs485",unit="2",sensor="meter/1"}"#,
                5.0,
            ),
            (
                r#"outpost_modbus_errors_total{source="rs485",unit="2",sensor="meter/1",error="bad_crc"}"#,
                1.0,
            ),
            (
                r#"outpost_modbus_device_up{source="rs485",unit="2",sensor="meter/1"}"#,
                0.0,
            ),
            ("outpost_rule_pairs", 20_000.0),
            ("outpost_rule_pairs_max", 20_000.0),
            ("outpost_rule_pairs_evicted_total", 5.0),
            ("outpost_rule_pairs_refused_total", 2.0),
            ("outpost_rule_samples", 100.0),
            ("outpost_rule_samples_max", 250_000.0),
            ("outpost_rule_samples_thinned_total", 9.0),
            ("outpost_upstream_publish_latency_seconds_count", 1.0),
            (
                r#"outpost_upstream_publish_latency_seconds_bucket{le="0.008"}"#,
                1.0,
            ),
            (
                r#"outpost_upstream_publish_latency_seconds_bucket{le="0.002"}"#,
                0.0,
            ),
            ("outpost_http_connections", 2.0),
            ("outpost_http_connections_limit", 64.0),
            (
                r#"outpost_http_connections_closed_total{reason="evicted"}"#,
                5.0,
            ),
            (
                r#"outpost_http_connections_closed_total{reason="timeout"}"#,
                1.0,
            ),
            (
                r#"outpost_http_connections_closed_total{reason="refused"}"#,
                0.0,
            ),
        ];
        for (series, v) in want {
            assert_eq!(sample(&text, series), Some(v), "{series} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# TYPE outpost_upstream_publish_latency_seconds histogram"),
            "{text}"
        );
    }
}
