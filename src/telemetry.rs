//! Counters shared by the running components, read by the log, `/metrics`,
//! `/status` and the health topic. Plain atomics: cheap to bump on the hot path.
//! Components only write here; `http` only reads (it never reaches into a
//! component's own state).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;

use crate::rules::AlertState;
use crate::rules::{EngineStats, FiringInfo};

/// Buckets of the publish latency histogram, in seconds: 1 ms to about 33 s.
/// A LAN broker answers in milliseconds, a cloud one over a cellular link in
/// hundreds; past the top bucket the link is stalling.
pub fn publish_latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16)
}

/// Counters of one source (a serial port, an MQTT subscription, a simulator).
#[derive(Debug)]
pub struct SourceCounters {
    pub name: String,
    pub kind: &'static str,
    /// Lines or messages received.
    pub messages: AtomicU64,
    pub readings: AtomicU64,
    /// Bad input by kind (`not_utf8`, `syntax`, `too_long`, ...), and the
    /// rate limit of its warning.
    faults: Faults,
    /// Times the port was reopened or the broker reconnected.
    pub reopens: AtomicU64,
    pub connected: AtomicBool,
}

impl SourceCounters {
    pub fn new(name: &str, kind: &'static str) -> Self {
        SourceCounters {
            name: name.to_string(),
            kind,
            messages: AtomicU64::new(0),
            readings: AtomicU64::new(0),
            faults: Faults::new(),
            reopens: AtomicU64::new(0),
            connected: AtomicBool::new(false),
        }
    }

    pub fn error(&self, kind: &'static str) {
        self.faults.add(kind);
    }

    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        self.faults.counts()
    }

    pub fn error_total(&self) -> u64 {
        self.errors().values().sum()
    }

    /// Whether a bad-input warning may be logged now, and how many were
    /// suppressed since the last one.
    pub fn may_warn(&self) -> Option<u64> {
        self.faults.may_warn()
    }
}

/// Failures counted by kind, and a warning about them at most every 10 s.
#[derive(Debug)]
struct Faults {
    by_kind: Mutex<BTreeMap<&'static str, u64>>,
    warn: Mutex<WarnLimiter>,
}

impl Faults {
    fn new() -> Self {
        Faults {
            by_kind: Mutex::new(BTreeMap::new()),
            warn: Mutex::new(WarnLimiter::new(Duration::from_secs(10))),
        }
    }

    fn add(&self, kind: &'static str) {
        let mut e = self.by_kind.lock().unwrap_or_else(|p| p.into_inner());
        *e.entry(kind).or_insert(0) += 1;
    }

    fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.by_kind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn may_warn(&self) -> Option<u64> {
        self.warn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(Instant::now())
    }
}

/// Counters of one Modbus device (a unit on a `[[modbus]]` bus).
#[derive(Debug)]
pub struct DeviceCounters {
    pub source: String,
    pub unit: u8,
    pub sensor: String,
    /// Requests sent.
    pub requests: AtomicU64,
    /// Good answers.
    pub answers: AtomicU64,
    pub readings: AtomicU64,
    /// Failed requests by kind (`timeout`, `exception`, `bad_crc`,
    /// `bad_frame`) and values left out (`non_finite`), and the rate limit
    /// of its warnings.
    faults: Faults,
    /// True while every request of its last poll was answered.
    pub up: AtomicBool,
    /// Wall-clock ms of the last good answer (0: never).
    pub last_answer_ms: AtomicI64,
}

impl DeviceCounters {
    pub fn new(source: &str, unit: u8, sensor: &str) -> Self {
        DeviceCounters {
            source: source.to_string(),
            unit,
            sensor: sensor.to_string(),
            requests: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            readings: AtomicU64::new(0),
            faults: Faults::new(),
            up: AtomicBool::new(false),
            last_answer_ms: AtomicI64::new(0),
        }
    }

    pub fn error(&self, kind: &'static str) {
        self.faults.add(kind);
    }

    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        self.faults.counts()
    }

    /// Whether a warning about this device may be logged now, and how many
    /// were suppressed since the last one.
    pub fn may_warn(&self) -> Option<u64> {
        self.faults.may_warn()
    }
}

/// At most one warning per period; counts what it held back.
#[derive(Debug)]
pub struct WarnLimiter {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    pub fn new(period: Duration) -> Self {
        WarnLimiter {
            period,
            last: None,
            suppressed: 0,
        }
    }

    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.period => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Gateway-wide counters.
#[derive(Debug)]
pub struct Telemetry {
    pub started: Instant,
    pub upstream_connected: AtomicBool,
    pub upstream_reconnects: AtomicU64,
    pub alerts_created: AtomicU64,
    pub alerts_published: AtomicU64,
    pub alerts_acked: AtomicU64,
    pub outbox_errors: AtomicU64,
    /// Flushes (`fdatasync`) by the outbox writer (group commit: fewer
    /// than alerts).
    pub outbox_flushes: AtomicU64,
    /// Alerts created and not yet stored: held by the writer while the
    /// disk refuses writes (0 in normal running).
    pub outbox_held: AtomicU64,
    pub rule_reloads: AtomicU64,
    pub rule_reload_errors: AtomicU64,
    /// Rules in force (set at start and on each accepted reload).
    pub rules_loaded: AtomicU64,
    /// Last time the pipeline made progress (a reading evaluated, a tick),
    /// on the runtime's monotonic `Clock`: the watchdog and `/healthz` signal.
    pub last_progress_ms: AtomicU64,
    /// Seconds from handing an alert to the MQTT client to its PUBACK.
    pub publish_latency: Histogram,
    sources: Mutex<Vec<Arc<SourceCounters>>>,
    /// Modbus devices, in config order.
    devices: Mutex<Vec<Arc<DeviceCounters>>>,
    /// Alerts by (rule, state): created (stored in the outbox) and delivered
    /// (acknowledged by the upstream broker).
    alerts: Mutex<BTreeMap<(String, &'static str), AlertCounts>>,
    /// The pairs firing now, as the engine task last published them.
    firing: Mutex<Vec<FiringInfo>>,
    /// The rules in force: pushed version and hash (set by `remote`).
    rules_in_force: Mutex<RulesInForce>,
    /// The rule engine's pairs and samples against its limits, and what
    /// hitting them did, as the engine task last published them.
    engine: Mutex<EngineStats>,
}

/// What names the rules in force, for the health, `/status` and `outpost
/// status`: the version of the pushed rules (none when no pushed set is in
/// force), how many rules were pushed, and the hash of the whole set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulesInForce {
    pub version: Option<String>,
    pub pushed: u64,
    /// `sha256:...` of every rule in force (see `push::outcome::rules_hash`).
    pub hash: String,
}

/// Alerts of one (rule, state).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertCounts {
    pub created: u64,
    pub delivered: u64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        Telemetry {
            started: Instant::now(),
            upstream_connected: AtomicBool::new(false),
            upstream_reconnects: AtomicU64::new(0),
            alerts_created: AtomicU64::new(0),
            alerts_published: AtomicU64::new(0),
            alerts_acked: AtomicU64::new(0),
            outbox_errors: AtomicU64::new(0),
            outbox_flushes: AtomicU64::new(0),
            outbox_held: AtomicU64::new(0),
            rule_reloads: AtomicU64::new(0),
            rule_reload_errors: AtomicU64::new(0),
            rules_loaded: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(0),
            publish_latency: Histogram::new(publish_latency_buckets()),
            sources: Mutex::new(Vec::new()),
            devices: Mutex::new(Vec::new()),
            alerts: Mutex::new(BTreeMap::new()),
            firing: Mutex::new(Vec::new()),
            rules_in_force: Mutex::new(RulesInForce::default()),
            engine: Mutex::new(EngineStats::default()),
        }
    }

    /// Replaces what names the rules in force (called by the rules keeper).
    pub fn set_rules_in_force(&self, r: RulesInForce) {
        *self
            .rules_in_force
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = r;
    }

    /// What names the rules in force.
    pub fn rules_in_force(&self) -> RulesInForce {
        self.rules_in_force
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// An alert of `rule` in `state` was stored in the outbox.
    pub fn alert_created(&self, rule: &str, state: AlertState) {
        self.alert_counts(rule, state, |c| c.created += 1);
    }

    /// The upstream broker acknowledged an alert of `rule` in `state`.
    pub fn alert_delivered(&self, rule: &str, state: AlertState) {
        self.alert_counts(rule, state, |c| c.delivered += 1);
    }

    fn alert_counts(&self, rule: &str, state: AlertState, f: impl FnOnce(&mut AlertCounts)) {
        let mut m = self.alerts.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry((rule.to_string(), state.as_str())).or_default());
    }

    /// Alert counts by (rule, state: `firing` or `resolved`), in rule order.
    pub fn alerts_by_rule(&self) -> Vec<(String, &'static str, AlertCounts)> {
        self.alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((r, s), c)| (r.clone(), *s, *c))
            .collect()
    }

    /// Replaces the firing snapshot (called by the engine task).
    pub fn set_firing(&self, firing: Vec<FiringInfo>) {
        *self.firing.lock().unwrap_or_else(|p| p.into_inner()) = firing;
    }

    /// The pairs firing now.
    pub fn firing(&self) -> Vec<FiringInfo> {
        self.firing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the engine's counters (called by the engine task).
    pub fn set_engine(&self, stats: EngineStats) {
        *self.engine.lock().unwrap_or_else(|p| p.into_inner()) = stats;
    }

    /// The engine's counters.
    pub fn engine(&self) -> EngineStats {
        *self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long ago the pipeline last made progress, given the monotonic
    /// time now (same clock as `last_progress_ms`).
    pub fn progress_age(&self, now_mono_ms: u64) -> Duration {
        Duration::from_millis(
            now_mono_ms.saturating_sub(self.last_progress_ms.load(Ordering::Relaxed)),
        )
    }

    pub fn source(&self, name: &str, kind: &'static str) -> Arc<SourceCounters> {
        let c = Arc::new(SourceCounters::new(name, kind));
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(c.clone());
        c
    }

    pub fn sources(&self) -> Vec<Arc<SourceCounters>> {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The counters of a Modbus device, registered for `/metrics` and `/status`.
    pub fn modbus_device(&self, source: &str, unit: u8, sensor: &str) -> Arc<DeviceCounters> {
        let c = Arc::new(DeviceCounters::new(source, unit, sensor));
        self.devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(c.clone());
        c
    }

    pub fn modbus_devices(&self) -> Vec<Arc<DeviceCounters>> {
        self.devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bump_by(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warn_limiter_lets_one_through_per_period_and_counts_the_rest() {
        let mut w = WarnLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(w.check(t0), Some(0));
        assert_eq!(w.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(w.check(t0 + Duration::from_secs(2)), None);
        assert_eq!(w.check(t0 + Duration::from_secs(11)), Some(2));
    }

    #[test]
    fn alerts_are_counted_per_rule_and_state() {
        let t = Telemetry::new();
        t.alert_created("hot", AlertState::Firing);
        t.alert_created("hot", AlertState::Firing);
        t.alert_created("hot", AlertState::Resolved);
        t.alert_created("cold", AlertState::Firing);
        t.alert_delivered("hot", AlertState::Firing);
        let by = t.alerts_by_rule();
        let get = |r: &str, s: AlertState| {
            by.iter()
                .find(|(rr, ss, _)| rr == r && *ss == s.as_str())
                .map(|(_, _, c)| *c)
        };
        assert_eq!(
            get("hot", AlertState::Firing),
            Some(AlertCounts {
                created: 2,
                delivered: 1
            })
        );
        assert_eq!(
            get("hot", AlertState::Resolved),
            Some(AlertCounts {
                created: 1,
                delivered: 0
            })
        );
        assert_eq!(
            get("cold", AlertState::Firing),
            Some(AlertCounts {
                created: 1,
                delivered: 0
            })
        );
        assert_eq!(by.len(), 3);
    }

    #[test]
    fn progress_age_is_measured_on_the_monotonic_clock_and_never_negative() {
        let t = Telemetry::new();
        t.last_progress_ms.store(10_000, Ordering::Relaxed);
        assert_eq!(t.progress_age(12_500), Duration::from_millis(2_500));
        assert_eq!(t.progress_age(9_000), Duration::ZERO);
    }
}
