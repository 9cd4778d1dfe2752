//! Counters shared by the running components, read by the log, `/metrics`,
//! `/status` and the health topic. Plain atomics: cheap to bump on the hot path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counters of one source (a serial port, an MQTT subscription, a simulator).
#[derive(Debug)]
pub struct SourceCounters {
    pub name: String,
    pub kind: &'static str,
    /// Lines or messages received.
    pub messages: AtomicU64,
    pub readings: AtomicU64,
    /// Bad input by kind (`not_utf8`, `syntax`, `too_long`, ...).
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Times the port was reopened or the broker reconnected.
    pub reopens: AtomicU64,
    pub connected: AtomicBool,
    /// Rate limit for the bad-input warning.
    warn: Mutex<WarnLimiter>,
}

impl SourceCounters {
    pub fn new(name: &str, kind: &'static str) -> Self {
        SourceCounters {
            name: name.to_string(),
            kind,
            messages: AtomicU64::new(0),
            readings: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            reopens: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            warn: Mutex::new(WarnLimiter::new(Duration::from_secs(10))),
        }
    }

    pub fn error(&self, kind: &'static str) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *e.entry(kind).or_insert(0) += 1;
    }

    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn error_total(&self) -> u64 {
        self.errors().values().sum()
    }

    /// Whether a bad-input warning may be logged now, and how many were
    /// suppressed since the last one.
    pub fn may_warn(&self) -> Option<u64> {
        self.warn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(Instant::now())
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
    /// sled flushes by the outbox writer (group commit: fewer than alerts).
    pub outbox_flushes: AtomicU64,
    pub rule_reloads: AtomicU64,
    pub rule_reload_errors: AtomicU64,
    /// Last time the pipeline made progress (a reading evaluated, a tick).
    pub last_progress_ms: AtomicU64,
    sources: Mutex<Vec<Arc<SourceCounters>>>,
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
            rule_reloads: AtomicU64::new(0),
            rule_reload_errors: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(0),
            sources: Mutex::new(Vec::new()),
        }
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
}
