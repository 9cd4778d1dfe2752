//! The systemd watchdog: pinged while the pipeline makes progress.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::reading::Clock;
use crate::telemetry::Telemetry;

/// Pings the systemd watchdog while the pipeline makes progress: the engine
/// stamps `last_progress_ms` on every reading and every tick, so a stuck
/// engine stops the pings and systemd restarts the service.
pub async fn run(clock: Clock, telemetry: Arc<Telemetry>) {
    let Some(usec) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|u| *u > 0)
    else {
        return;
    };
    // Half the watchdog period; never zero (tokio's interval panics on zero).
    let period = Duration::from_micros(usec / 2).max(Duration::from_millis(1));
    let stale_after = Duration::from_micros(usec);
    let mut every = tokio::time::interval(period);
    loop {
        every.tick().await;
        // The same signal as `/healthz`: time since the engine last moved.
        if telemetry.progress_age(clock.now().mono_ms) < stale_after {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            warn!("pipeline made no progress; withholding the watchdog ping");
        }
    }
}
