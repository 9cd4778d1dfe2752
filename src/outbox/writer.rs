//! The outbox writer: the task that stores what the evaluator hands over.
//!
//! It takes every [`Batch`] queued (alerts created together share one
//! flush: group commit), stores them with [`Outbox::push`], flushes per
//! `[outbox] flush`, and announces on the `durable` channel the highest seq
//! the upstream may publish: under `flush = "always"` only once a flush that
//! began after that seq was pushed has returned ([`Outbox::flush`] says what
//! it covered); under a period at once. Its timer drops what is older than
//! `max_age` and runs the periodic flush.
//!
//! A disk that refuses writes: the drafts are held in memory (at most
//! [`RETRY_LIMIT`], the oldest go beyond that) and the write is retried
//! after a capped, jittered backoff. Batches are still taken meanwhile, so
//! the evaluator never waits on a failing disk.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::Outbox;
use crate::backoff::{Backoff, jitter};
use crate::config::FlushPolicy;
use crate::rules::AlertDraft;
use crate::telemetry::Telemetry;

/// Drafts held in memory while the disk refuses writes; beyond this the oldest go.
const RETRY_LIMIT: usize = 10_000;
/// Drafts stored in one push at most (one batch, one flush).
const PUSH_LIMIT: usize = 4096;
/// First and longest wait before writing again after a failed write.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the evaluator hands the writer: the drafts it emitted and, when
/// given, the engine's state to store with them.
#[derive(Debug, Default)]
pub struct Batch {
    pub drafts: Vec<AlertDraft>,
    pub rules_state: Option<Vec<u8>>,
}

/// The writer task; see the module documentation.
pub struct Writer {
    /// The gateway id, for alert ids and payloads.
    pub gateway: String,
    pub flush: FlushPolicy,
    pub outbox: Arc<Outbox>,
    pub telemetry: Arc<Telemetry>,
}

/// What the writer holds between two writes.
struct Held {
    drafts: VecDeque<AlertDraft>,
    /// Drafts dropped by [`RETRY_LIMIT`] and not yet reported.
    lost: usize,
    rules_state: Option<Vec<u8>>,
    /// Pushed but not flushed yet.
    unflushed: bool,
    /// After a failed write: not before this instant again.
    retry_at: Option<Instant>,
    backoff: Backoff,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.drafts.is_empty() && self.rules_state.is_none()
    }

    fn take(&mut self, b: Batch) {
        self.drafts.extend(b.drafts);
        if b.rules_state.is_some() {
            self.rules_state = b.rules_state;
        }
    }

    /// Drops the oldest drafts beyond [`RETRY_LIMIT`] (reported by
    /// [`Held::report_lost`], once per write attempt).
    fn bound(&mut self) {
        while self.drafts.len() > RETRY_LIMIT {
            self.drafts.pop_front();
            self.lost += 1;
        }
    }

    fn report_lost(&mut self) {
        if self.lost > 0 {
            error!(
                lost = std::mem::take(&mut self.lost),
                "outbox write keeps failing; oldest alerts not yet stored were dropped"
            );
        }
    }
}

impl Writer {
    /// Runs until `batches` is closed and everything taken is stored (or the
    /// disk refuses it at shutdown), then flushes once more.
    pub async fn run(self, mut batches: mpsc::Receiver<Batch>, durable: watch::Sender<u64>) {
        let period = match self.flush {
            FlushPolicy::Always => Duration::from_secs(1),
            FlushPolicy::Every(p) => p,
        };
        let mut timer = tokio::time::interval(period);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut held = Held {
            drafts: VecDeque::new(),
            lost: 0,
            rules_state: None,
            unflushed: false,
            retry_at: None,
            backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
        };
        let mut open = true;
        while open || !held.is_empty() {
            let retry_at = held.retry_at.unwrap_or_else(Instant::now);
            tokio::select! {
                b = batches.recv(), if open => match b {
                    Some(b) => {
                        held.take(b);
                        while let Ok(b) = batches.try_recv() {
                            held.take(b);
                            if held.drafts.len() >= PUSH_LIMIT { break; }
                        }
                    }
                    None => open = false,
                },
                _ = timer.tick() => self.on_timer(&mut held, &durable).await,
                _ = tokio::time::sleep_until(retry_at), if held.retry_at.is_some() => {
                    held.retry_at = None;
                }
            }
            if held.retry_at.is_some() {
                // Waiting out the backoff: hold what came, within the limit.
                held.bound();
                continue;
            }
            if held.is_empty() {
                continue;
            }
            if !self.store(&mut held, &durable).await && !open {
                // Stopping and the disk still refuses: nothing more to do.
                return;
            }
        }
        if let Err(e) = self.outbox.flush().await {
            error!(error = %e, "final outbox flush failed");
        }
    }

    /// `max_age` drops and the periodic flush.
    async fn on_timer(&self, held: &mut Held, durable: &watch::Sender<u64>) {
        // max_age: the drops are one batch, made durable by the next flush.
        match self.outbox.expire(crate::reading::wall_ms()) {
            Ok(0) => {}
            Ok(_) => held.unflushed = true,
            Err(e) => {
                Telemetry::bump(&self.telemetry.outbox_errors);
                warn!(error = %e, "cannot drop expired alerts");
            }
        }
        if held.unflushed {
            match self.outbox.flush().await {
                Ok(covered) => {
                    held.unflushed = false;
                    Telemetry::bump(&self.telemetry.outbox_flushes);
                    if self.flush == FlushPolicy::Always {
                        // Alerts whose own flush had failed are durable now.
                        let _ = durable.send(covered);
                    }
                }
                Err(e) => warn!(error = %e, "periodic outbox flush failed"),
            }
        }
    }

    /// Stores what is held and flushes per policy; false when the write
    /// failed (the drafts are still held, and a retry is scheduled).
    async fn store(&self, held: &mut Held, durable: &watch::Sender<u64>) -> bool {
        // Drafts dropped while waiting out the backoff.
        held.report_lost();
        let drafts = held.drafts.make_contiguous();
        match self
            .outbox
            .push(&self.gateway, drafts, held.rules_state.as_deref())
        {
            Ok(alerts) => {
                held.drafts.clear();
                held.rules_state = None;
                held.backoff.reset();
                for a in &alerts {
                    self.telemetry.alert_created(&a.rule, a.state);
                    info!(id = %a.id, rule = %a.rule, sensor = %a.sensor, metric = %a.metric, state = %a.state, severity = %a.severity, value = a.value, threshold = a.threshold, text = %a.message, "alert");
                }
                held.unflushed = true;
                match self.flush {
                    FlushPolicy::Always => self.flush_and_announce(held, durable).await,
                    FlushPolicy::Every(_) => {
                        let _ = durable.send(self.outbox.next_seq().saturating_sub(1));
                    }
                }
                true
            }
            Err(e) => {
                Telemetry::bump(&self.telemetry.outbox_errors);
                held.bound();
                held.report_lost();
                let delay = held.backoff.next_delay(jitter());
                error!(error = %e, waiting = held.drafts.len(), retry_in = ?delay, "cannot write alerts to the outbox (disk full?); holding them and retrying");
                held.retry_at = Some(Instant::now() + delay);
                false
            }
        }
    }

    /// `flush = "always"`: flushes, then announces what the flush covered.
    /// A failed flush holds publishing back until one succeeds.
    async fn flush_and_announce(&self, held: &mut Held, durable: &watch::Sender<u64>) {
        match self.outbox.flush().await {
            Ok(covered) => {
                held.unflushed = false;
                Telemetry::bump(&self.telemetry.outbox_flushes);
                let _ = durable.send(covered);
            }
            Err(e) => {
                // Not durable yet: hold publishing back until a flush succeeds.
                Telemetry::bump(&self.telemetry.outbox_errors);
                error!(error = %e, "outbox flush failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests;
