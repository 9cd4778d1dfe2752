//! Cancellable waits for the long-running tasks (sources, upstream): a
//! backoff delay that a shutdown cuts short.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Sleeps `d`; returns true when cancelled meanwhile.
pub async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = cancel.cancelled() => true,
    }
}
