//! The outbox writer: the task that stores what the evaluator hands over.
//!
//! It takes every [`Batch`] queued (alerts created together share one
//! flush: group commit, up to [`PUSH_LIMIT`] alerts), stores them with
//! [`Outbox::push`] together with the engine transitions that made them,
//! flushes per `[outbox] flush`, and announces on the `durable` channel the
//! highest seq the upstream may publish: under `flush = "always"` only what
//! a flush that began after the push covered; under a period at once. Its
//! timer runs the outbox's housekeeping ([`Outbox::maintain`]), `max_age`
//! ([`Outbox::expire`]) and the periodic flush; a batch that carries a
//! checkpoint of the engine's state has it written after its alerts.
//!
//! Every alert stored is logged, at info up to [`ALERT_LINES_BURST`] at once
//! and [`ALERT_LINES_PER_SEC`] a second, beyond that at debug with a
//! summary of how many (journald would otherwise drop lines, warnings
//! included, in a storm); a group's lines go out in one write.
//!
//! Memory is bounded in alerts, not in batches: the channel from the
//! evaluator holds a few batches of at most a few thousand alerts each, so
//! a producer faster than the disk waits (and the sources behind it),
//! rather than queueing without end.
//!
//! A disk that refuses writes: when it is full, the outbox first makes
//! room if its own files are what fills it ([`Outbox::relieve_full_disk`]);
//! otherwise the drafts are held (at most [`HOLD_LIMIT`]) and the write is
//! retried after a capped, jittered backoff, while batches keep coming.
//! What does not fit is counted and reported as `unstored`
//! ([`Outbox::count_unstored`]), never dropped silently. At shutdown a disk
//! that still refuses gets one more try, then what is held is counted as
//! unstored: stopping never waits on a dead disk.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::{Outbox, OutboxError};
use crate::backoff::{Backoff, jitter};
use crate::config::FlushPolicy;
use crate::logging::Budget;
use crate::reading::Clock;
use crate::rules::{AlertDraft, Change};
use crate::telemetry::Telemetry;

/// Drafts held in memory while the disk refuses writes; beyond this the
/// oldest are counted as unstored.
pub const HOLD_LIMIT: usize = 2_000;
/// Drafts stored in one push at most (one batch, one flush).
pub const PUSH_LIMIT: usize = 4096;
/// First and longest wait before writing again after a failed write.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often housekeeping runs (and the flush under `flush = "always"`
/// catches what a failed flush left).
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Alert lines logged at info at once, then a second ([`Budget`]); the
/// rest at debug, with one summary at most every [`ALERT_LINES_SUMMARY`].
pub const ALERT_LINES_BURST: u32 = 100;
pub const ALERT_LINES_PER_SEC: u32 = 10;
pub const ALERT_LINES_SUMMARY: Duration = Duration::from_secs(5);

/// What the evaluator hands the writer.
#[derive(Debug, Default)]
pub struct Batch {
    pub drafts: Vec<AlertDraft>,
    /// The engine state of the pairs that emitted `drafts`: stored with
    /// them, in the same record.
    pub transitions: Vec<Change>,
    /// A checkpoint of the engine's state (pairs changed since the last
    /// one) to write once `drafts` are stored.
    pub checkpoint: Option<Vec<Change>>,
}

/// The writer task; see the module documentation.
pub struct Writer {
    /// The gateway id, for alert ids and payloads.
    pub gateway: String,
    pub flush: FlushPolicy,
    pub outbox: Arc<Outbox>,
    pub telemetry: Arc<Telemetry>,
    /// The clock the outbox was opened with.
    pub clock: Clock,
}

/// What the writer holds between two writes.
struct Held {
    drafts: VecDeque<AlertDraft>,
    /// Latest value per key, in arrival order of keys' last change.
    transitions: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    checkpoint: Option<Vec<Change>>,
    /// Pushed but not flushed yet.
    unflushed: bool,
    /// After a failed write: not before this instant again.
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// How many alert lines the log takes (a storm must not flood it).
    lines: Budget,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.drafts.is_empty() && self.transitions.is_empty() && self.checkpoint.is_none()
    }

    fn take(&mut self, b: Batch) {
        self.drafts.extend(b.drafts);
        self.transitions.extend(b.transitions);
        if let Some(c) = b.checkpoint {
            self.checkpoint.get_or_insert_with(Vec::new).extend(c);
        }
    }
}

impl Writer {
    /// Runs until `batches` is closed and everything taken is stored (or the
    /// disk refuses it at shutdown), then closes the outbox cleanly.
    pub async fn run(self, mut batches: mpsc::Receiver<Batch>, durable: watch::Sender<u64>) {
        let period = match self.flush {
            FlushPolicy::Always => HOUSEKEEPING,
            FlushPolicy::Every(p) => p.min(HOUSEKEEPING),
        };
        let mut timer = tokio::time::interval(period);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_flush = Instant::now();
        let mut held = Held {
            drafts: VecDeque::new(),
            transitions: BTreeMap::new(),
            checkpoint: None,
            unflushed: false,
            retry_at: None,
            backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
            lines: Budget::new(ALERT_LINES_BURST, ALERT_LINES_PER_SEC),
        };
        let mut open = true;
        while open {
            let retry_at = held.retry_at.unwrap_or_else(Instant::now);
            tokio::select! {
                b = batches.recv() => match b {
                    Some(b) => {
                        held.take(b);
                        while held.drafts.len() < PUSH_LIMIT {
                            let Ok(b) = batches.try_recv() else { break };
                            held.take(b);
                        }
                    }
                    None => open = false,
                },
                _ = timer.tick() => {
                    self.housekeeping();
                    log_over_budget(&mut held.lines);
                    let due = match self.flush {
                        FlushPolicy::Always => true,
                        FlushPolicy::Every(p) => last_flush.elapsed() >= p,
                    };
                    if held.unflushed && due {
                        last_flush = Instant::now();
                        self.flush_and_announce(&mut held, &durable).await;
                    }
                }
                _ = tokio::time::sleep_until(retry_at), if held.retry_at.is_some() => {
                    held.retry_at = None;
                }
            }
            if held.retry_at.is_some() {
                // Waiting out the backoff: hold what came, within the limit.
                self.bound(&mut held);
                self.telemetry
                    .outbox_held
                    .store(held.drafts.len() as u64, Ordering::Relaxed);
                continue;
            }
            if !held.is_empty() {
                self.store(&mut held, &durable).await;
            }
            self.telemetry
                .outbox_held
                .store(held.drafts.len() as u64, Ordering::Relaxed);
        }
        // Stopping: one more try for what is held, then a clean close.
        if !held.drafts.is_empty() || !held.transitions.is_empty() {
            self.store(&mut held, &durable).await;
            if !held.drafts.is_empty() {
                let drafts: Vec<AlertDraft> = held.drafts.drain(..).collect();
                error!(
                    unstored = drafts.len(),
                    "stopping while the outbox refuses writes: alerts not stored"
                );
                self.outbox
                    .count_unstored(&drafts, "the disk refused writes", self.clock.now());
            }
            self.telemetry.outbox_held.store(0, Ordering::Relaxed);
        }
        let changes = held.checkpoint.take().unwrap_or_default();
        if let Err(e) = self.outbox.close(changes, self.clock.now()) {
            error!(error = %e, "cannot close the outbox cleanly; the next start replays its log");
        }
    }

    /// Housekeeping and `max_age` drops.
    fn housekeeping(&self) {
        let now = self.clock.now();
        if let Err(e) = self.outbox.maintain(now) {
            Telemetry::bump(&self.telemetry.outbox_errors);
            warn!(error = %e, "outbox housekeeping failed");
        }
        if let Err(e) = self.outbox.expire(now) {
            Telemetry::bump(&self.telemetry.outbox_errors);
            warn!(error = %e, "cannot drop expired alerts");
        }
    }

    /// Keeps what is held within [`HOLD_LIMIT`]: the oldest beyond it are
    /// counted and reported as unstored.
    fn bound(&self, held: &mut Held) {
        let over = held.drafts.len().saturating_sub(HOLD_LIMIT);
        if over > 0 {
            let gone: Vec<AlertDraft> = held.drafts.drain(..over).collect();
            error!(
                unstored = over,
                "the outbox keeps refusing writes: alerts that cannot be held are counted and reported as unstored"
            );
            self.outbox
                .count_unstored(&gone, "the disk refused writes", self.clock.now());
        }
    }

    /// Stores what is held and flushes per policy. After a failed write the
    /// drafts stay held and a retry is scheduled.
    async fn store(&self, held: &mut Held, durable: &watch::Sender<u64>) {
        let mut tried_room = false;
        loop {
            let all = held.drafts.len();
            let n = all.min(PUSH_LIMIT);
            // Stored from where they are held: drained only once stored.
            let drafts = &held.drafts.make_contiguous()[..n];
            let transitions: Vec<Change> = if n == all {
                held.transitions
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            let now = self.clock.now();
            match self.outbox.push(&self.gateway, drafts, &transitions, now) {
                Ok(alerts) => {
                    // All n, or the first of them when the disk refused
                    // the rest (they stay held, and are pushed next).
                    let stored = alerts.len();
                    held.drafts.drain(..stored);
                    if stored == n && !transitions.is_empty() {
                        held.transitions.clear();
                    }
                    if stored < n {
                        // Progress: room may be made again.
                        tried_room = false;
                    }
                    held.backoff.reset();
                    // One write(2) for the lines of the whole group.
                    let lines = crate::logging::batch();
                    let at = Instant::now().into_std();
                    for a in &alerts {
                        self.telemetry.alert_created(&a.rule, a.state);
                        // One line, at a level known only now (tracing
                        // wants it constant at each call site).
                        macro_rules! line {
                            ($level:ident) => {
                                $level!(id = %a.id, rule = %a.rule, sensor = %a.sensor, metric = %a.metric, state = %a.state, severity = %a.severity, value = a.value, threshold = a.threshold, text = %a.message, "alert")
                            };
                        }
                        if held.lines.take(at) {
                            line!(info);
                        } else {
                            line!(debug);
                        }
                    }
                    log_over_budget(&mut held.lines);
                    drop(lines);
                    held.unflushed = true;
                    match self.flush {
                        FlushPolicy::Always => self.flush_and_announce(held, durable).await,
                        FlushPolicy::Every(_) => {
                            let _ = durable.send(self.outbox.next_seq().saturating_sub(1));
                        }
                    }
                    if held.drafts.is_empty() {
                        break;
                    }
                }
                Err(e) => {
                    Telemetry::bump(&self.telemetry.outbox_errors);
                    if e.is_no_space() && !tried_room {
                        tried_room = true;
                        if self.outbox.relieve_full_disk(now) {
                            continue;
                        }
                    }
                    self.failed(held, &e);
                    return;
                }
            }
        }
        if let Some(changes) = held.checkpoint.take()
            && let Err(e) = self.outbox.checkpoint(changes, self.clock.now())
        {
            // The changes stay with the outbox for its next checkpoint.
            Telemetry::bump(&self.telemetry.outbox_errors);
            warn!(error = %e, "cannot write the outbox checkpoint; will retry");
        }
    }

    fn failed(&self, held: &mut Held, e: &OutboxError) {
        self.bound(held);
        let delay = held.backoff.next_delay(jitter());
        error!(error = %e, waiting = held.drafts.len(), retry_in = ?delay, "cannot write alerts to the outbox (disk full?); holding them and retrying");
        held.retry_at = Some(Instant::now() + delay);
    }

    /// Flushes, then (under `flush = "always"`) announces what the flush
    /// covered. A failed flush holds publishing back until one succeeds.
    async fn flush_and_announce(&self, held: &mut Held, durable: &watch::Sender<u64>) {
        match self.outbox.flush().await {
            Ok(covered) => {
                held.unflushed = false;
                Telemetry::bump(&self.telemetry.outbox_flushes);
                if self.flush == FlushPolicy::Always {
                    let _ = durable.send(covered);
                }
            }
            Err(e) => {
                Telemetry::bump(&self.telemetry.outbox_errors);
                error!(error = %e, "outbox flush failed; retrying");
            }
        }
    }
}

/// The summary of the alert lines that went at debug level, when due.
fn log_over_budget(lines: &mut Budget) {
    if let Some(n) = lines.over(Instant::now().into_std(), ALERT_LINES_SUMMARY) {
        info!(
            alerts = n,
            "{n} more alerts were stored and logged at debug level only (the log takes \
             {ALERT_LINES_BURST} alert lines at once, then {ALERT_LINES_PER_SEC} a second); \
             every alert is in the outbox, and outpost_alerts_created_total on /metrics counts them"
        );
    }
}

#[cfg(test)]
mod tests;
