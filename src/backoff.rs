//! Capped, jittered exponential backoff for reconnecting to brokers and
//! reopening serial ports, so a dead peer never becomes a busy loop.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The delay before the next attempt. `jitter` in `[0, 1)` spreads it over
    /// the upper half of the current step, so it is never shorter than half
    /// the step (no spin) and many gateways do not reconnect in lockstep.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(20));
        let step = self.min.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.5
        };
        step / 2 + step.mul_f64(jitter / 2.0)
    }

    /// Called after a success: the next failure starts from `min` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// A random number in `[0, 1)` for jitter.
pub fn jitter() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn delays_double_then_stay_at_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<u128> = (0..6).map(|_| b.next_delay(1.0).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(0.0).as_millis(), 50);
    }

    proptest! {
        #[test]
        fn a_delay_is_never_under_half_the_minimum_nor_over_the_cap(n in 0usize..100, j in any::<f64>()) {
            let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
            for _ in 0..n { b.next_delay(j); }
            let d = b.next_delay(j);
            prop_assert!(d >= Duration::from_millis(100));
            prop_assert!(d <= Duration::from_secs(30));
        }
    }
}
