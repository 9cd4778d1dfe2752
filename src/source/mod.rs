//! Sources: where readings come from. Each source runs as one task (spawned
//! by `runtime`), turns bytes into [`Reading`]s through the pure parsers in
//! `payload`, and sends them to the rule engine over a bounded channel, so a
//! flood backs up into the source instead of growing memory.
//!
//! Bad input is counted per source and logged at a rate-limited warning
//! quoting its start; it never stops a source and never reaches the rules.
//! Lost devices and brokers are states with backoff, never fatal errors.

pub mod lines;
pub mod modbus;
pub mod mqtt;
pub mod serial;
pub mod simulate;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::payload::{self, ParseError};
use crate::reading::Reading;
use crate::telemetry::SourceCounters;

/// What every source task is given.
#[derive(Clone)]
pub struct SourceContext {
    /// Readings go in batches, one per line or message: one channel
    /// hand-off (and engine wake-up) per message, not per reading.
    pub readings: mpsc::Sender<Vec<Reading>>,
    pub counters: Arc<SourceCounters>,
    pub cancel: CancellationToken,
}

impl SourceContext {
    /// Counts one line or message: its readings (already in `out`) or its
    /// error, logged at most once per period with the start of the input.
    pub fn count(&self, result: Result<usize, ParseError>, input: &[u8], out: &[Reading]) {
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(n) => {
                debug_assert!(n <= out.len());
                self.counters
                    .readings
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => self.bad_input(e.kind(), &e.to_string(), input),
        }
    }

    /// Counts bad input of `kind` and logs it, at most once per period.
    pub fn bad_input(&self, kind: &'static str, reason: &str, input: &[u8]) {
        self.counters.error(kind);
        if let Some(suppressed) = self.counters.may_warn() {
            warn!(
                source = %self.counters.name,
                kind,
                %reason,
                input = %payload::preview(input),
                suppressed,
                "bad input dropped"
            );
        }
    }

    /// Sends readings to the engine (emptying `readings`); false when the
    /// gateway is stopping.
    pub async fn send(&self, readings: &mut Vec<Reading>) -> bool {
        if readings.is_empty() {
            return true;
        }
        self.readings.send(std::mem::take(readings)).await.is_ok()
    }
}
