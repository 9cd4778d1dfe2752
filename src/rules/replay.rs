//! Driving the engine through a recorded or scripted series of readings,
//! with simulated time: what `outpost rules test` and `outpost rules replay`
//! use. Same engine as `run`; no clock, no broker, no I/O.
//!
//! Time: the monotonic clock starts at 0 at the first instant of the series;
//! wall time is `epoch_wall_ms` plus the same offset. Between readings the
//! engine's timers (`for`, `repeat`, `silent_for`) fire exactly when due,
//! as they would with a tick at that instant.

use super::{AlertDraft, Rule, engine::Engine};
use crate::reading::{Now, Reading};

pub struct Driver {
    engine: Engine,
    epoch_wall_ms: i64,
    /// Simulated monotonic time, ms since the start of the series.
    at_ms: u64,
    started: bool,
}

/// Ticks beyond this many per advance mean a timer that never settles.
const MAX_TICKS_PER_ADVANCE: usize = 1_000_000;

impl Driver {
    pub fn new(rules: Vec<Rule>, epoch_wall_ms: i64) -> Self {
        Driver {
            engine: Engine::new(rules),
            epoch_wall_ms,
            at_ms: 0,
            started: false,
        }
    }

    fn now(&self, at_ms: u64) -> Now {
        Now {
            mono_ms: at_ms,
            wall_ms: self
                .epoch_wall_ms
                .saturating_add(i64::try_from(at_ms).unwrap_or(i64::MAX)),
        }
    }

    /// Runs every timer due up to and including `at_ms`.
    pub fn advance_to(&mut self, at_ms: u64, out: &mut Vec<AlertDraft>) {
        if !self.started {
            // The engine learns the start of time from its first call.
            self.engine.tick(self.now(0), out);
            self.started = true;
        }
        let mut ticks = 0;
        while let Some(due) = self.engine.next_deadline() {
            if due > at_ms || ticks >= MAX_TICKS_PER_ADVANCE {
                break;
            }
            // Time never runs backwards, and each tick moves it on.
            let t = due.max(self.at_ms);
            self.engine.tick(self.now(t), out);
            self.at_ms = t;
            ticks += 1;
            if self.engine.next_deadline() == Some(due) {
                // The hint did not move: nothing is due before the next ms.
                if t + 1 > at_ms {
                    break;
                }
                self.at_ms = t + 1;
            }
        }
        self.at_ms = self.at_ms.max(at_ms);
    }

    /// Feeds one reading at `at_ms` (ms since the start of the series).
    pub fn reading(&mut self, r: &Reading, at_ms: u64, out: &mut Vec<AlertDraft>) {
        let at_ms = at_ms.max(self.at_ms);
        self.advance_to(at_ms, out);
        self.engine.on_reading(r, self.now(at_ms), out);
    }

    /// Milliseconds since the start of the series for an alert's wall time.
    pub fn offset_of(&self, wall_ms: i64) -> u64 {
        u64::try_from(wall_ms.saturating_sub(self.epoch_wall_ms)).unwrap_or(0)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{AlertState, Condition, Glob, Severity};

    fn rule(condition: Condition, for_ms: u64) -> Rule {
        Rule {
            id: "r".into(),
            sensor: Glob::new("*"),
            metric: Glob::new("t"),
            condition,
            aggregate: None,
            for_ms,
            repeat_ms: None,
            severity: Severity::Warning,
            message: None,
            labels: Default::default(),
            actions: Vec::new(),
        }
    }

    fn reading(v: f64) -> Reading {
        Reading {
            sensor: "s".into(),
            metric: "t".into(),
            value: v,
            ts_ms: 0,
        }
    }

    #[test]
    fn a_for_timer_fires_exactly_when_due_between_readings() {
        let mut d = Driver::new(
            vec![rule(
                Condition::Above {
                    threshold: 10.0,
                    clear: None,
                },
                60_000,
            )],
            1_000_000,
        );
        let mut out = Vec::new();
        d.reading(&reading(11.0), 0, &mut out);
        d.advance_to(300_000, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].state, AlertState::Firing);
        assert_eq!(d.offset_of(out[0].ts_ms), 60_000);
    }

    #[test]
    fn a_silent_sensor_fires_after_its_silence_even_with_no_more_readings() {
        let mut d = Driver::new(vec![rule(Condition::Silent { after_ms: 30_000 }, 0)], 0);
        let mut out = Vec::new();
        d.reading(&reading(1.0), 5_000, &mut out);
        d.advance_to(100_000, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(d.offset_of(out[0].ts_ms), 35_000);
        d.reading(&reading(1.0), 120_000, &mut out);
        assert_eq!(out[1].state, AlertState::Resolved);
    }
}
