//! The values that flow from sources to the rule engine.

/// One numeric value from one sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub sensor: String,
    pub metric: String,
    pub value: f64,
    /// Wall clock, Unix milliseconds: from the payload's `ts` or the time received.
    pub ts_ms: i64,
}

/// The time as the rule engine sees it: passed in, never read by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic clock, arbitrary epoch: durations (`for`, `window`, `repeat`,
    /// `silent_for`) are measured on it because the wall clock of a Pi without
    /// a real-time clock jumps when NTP syncs.
    pub mono_ms: u64,
    /// Wall clock, Unix milliseconds: only for timestamps shown to people.
    pub wall_ms: i64,
}

/// Reads both clocks; the one place outside tests where `Now` is made.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: std::time::Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            start: std::time::Instant::now(),
        }
    }

    /// A clock whose monotonic zero is `start`: in tests, one that has been
    /// running for a while.
    #[cfg(test)]
    pub(crate) fn starting_at(start: std::time::Instant) -> Self {
        Clock { start }
    }

    pub fn now(&self) -> Now {
        Now {
            mono_ms: u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX),
            wall_ms: wall_ms(),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Wall clock in Unix milliseconds (0 if the clock is before 1970).
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
