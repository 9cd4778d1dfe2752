//! The durable outbox: every alert is written here before it is published,
//! and leaves only when the upstream broker acknowledged that very alert, or
//! when a bound drops it (counted and reported).
//!
//! # Design
//!
//! `state_dir/outbox/` holds a write-ahead log of segment files (`log/`,
//! see [`log`]) and a checkpoint store (`meta/`, sled, see [`meta`]). The
//! log is the source of truth: alerts are appended to it and made durable
//! with one `fdatasync` per group of alerts created together (group
//! commit), the rule engine's transitions that produced them ride in the
//! same record (so a crash can neither re-fire nor forget an alert), and
//! acknowledgements, drops and events are appended as small records that
//! need no sync of their own: at-least-once already allows a re-send after
//! a crash, and the next commit's sync carries them anyway. In memory the
//! outbox keeps only where each waiting alert is ([`index`], about 40 bytes
//! each), never the payloads: memory does not grow with the backlog's bytes.
//! One bounded exception: a read from the log takes up to 64 KiB more than
//! asked and keeps it (bytes that never change once written), so an
//! upstream that lags behind the writer reads the log in large pieces, not
//! with a `pread` per PUBACK.
//!
//! A checkpoint (counters, pending events, which seqs no longer wait, the
//! engine's state, and the log position they reflect) is written to the
//! store every few minutes, before whole segments are removed, and at a
//! clean stop; a restart replays only the log after it. The engine's state
//! is written as the pairs that changed, one sled key each.
//!
//! Record formats are in [`record`]; why not sled alone is in
//! ARCHITECTURE.md (sled 0.34 wrote 9-10 KiB per alert committed alone and
//! ~4x the payload in groups, and flushes with `sync_file_range`).
//!
//! # Durability contract
//!
//! - [`Outbox::push`] appends alerts with consecutive seqs and the engine
//!   transitions that made them, as one record: after a crash it is there
//!   whole or not at all. (A group over 256 KiB takes several records, the
//!   transitions riding with the last; when the disk refuses one of them,
//!   the records before it stay, and `push` returns just their alerts, so
//!   the writer pushes the rest again: none is stored twice.) Not yet
//!   durable: only after [`Outbox::flush`] returns are the writes
//!   guaranteed to survive a crash or power cut.
//!   With `flush = "always"` the writer flushes before it announces alerts
//!   to the upstream.
//! - A seq is never reused under the same id prefix (`db_id`). The next seq
//!   is derived from the log itself (every segment starts with a record
//!   that carries it) and from the checkpoint, whichever is higher. If the
//!   end of the log is found damaged, or the checkpoint points past it (the
//!   files went back in time), or (with a flush period) the last run did
//!   not stop cleanly, alerts from then on get a new `db_id`: an alert that
//!   was lost can never have its id reused by a new one.
//! - [`Outbox::ack`] removes one alert; call it only for the PUBACK of that
//!   alert. Reading never removes. An acknowledgement not yet on disk when
//!   the process dies makes that alert be sent again: at most
//!   [`ACK_RECORD_EVERY`] alerts, or those of the last [`ACK_DELAY`].
//! - Bounds ([`Bounds`]): after every push, while the payload bytes exceed
//!   `max_bytes`, alerts are dropped, info before warning before critical,
//!   oldest first within a severity; the drop, its counters and the
//!   `dropped` event that reports it are one record. [`Outbox::expire`]
//!   drops alerts that *waited* longer than `max_age`, measured on the wait
//!   clock: monotonic while running, plus the downtime across a restart
//!   only when the wall clock was plausible on both sides. A Pi without a
//!   real-time clock that boots with a stale clock and then jumps when NTP
//!   syncs ages nothing by the jump.
//! - A full disk: a write that fails leaves nothing half-written (the
//!   partial record is cut off) and the outbox reports itself failing
//!   ([`Outbox::storage_error`]) until a write succeeds. When the outbox's
//!   own files are what fills the disk, its byte bound is lowered to what
//!   the disk holds and alerts are dropped by the same rules (reason
//!   `disk_full`), so new alerts find room. Alerts that could not be stored
//!   at all are counted ([`Outbox::unstored`]) and reported by an
//!   `unstored` event.
//! - Damage found at open (a torn write, a cut file, flipped bits): the
//!   records it hit are reported by a `lost` event with the seqs that could
//!   be established; the rest of the log is read on; the damaged file is
//!   kept aside. A checkpoint store that will not open is repaired or
//!   replaced (the log alone restores every alert). The gateway never
//!   crash-loops on its own files.
//!
//! All changes go through one mutex. Payloads are read outside it.

mod bounds;
pub mod event;
mod housekeeping;
pub mod index;
pub mod log;
pub mod meta;
mod open;
mod read;
pub mod record;
mod v1;
mod writer;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{error, warn};

use crate::alert::{Alert, rfc3339_ms};
use crate::reading::Now;
use crate::rules::{AlertDraft, Severity};
use crate::telemetry::WarnLimiter;
pub use event::{BySeverity, DropReason, OutboxEvent};
use index::{Entry, Index, SEVERITIES};
use log::{Damage, Loc, Log, LogError};
use meta::{Checkpoint, Meta, MetaError, Repair};
use record::{AlertEntry, Body};
pub use writer::{Batch, Writer};

/// Acknowledgements held before they are appended (a crash re-sends at most these).
pub const ACK_RECORD_EVERY: usize = 64;
/// How long acknowledgements may wait to be appended when no alert comes.
pub const ACK_DELAY: Duration = Duration::from_secs(5);
/// How often a checkpoint is written while anything changed.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(300);
/// Largest record body a push writes (bigger pushes are split).
const MAX_COMMIT: usize = 256 << 10;
/// Segment size bounds; the size follows `max_bytes` between them.
const SEGMENT_MIN: u64 = 64 << 10;
const SEGMENT_MAX: u64 = 1 << 20;
/// 2020-01-01T00:00:00Z: an earlier wall clock was not set.
const SANE_WALL_MS: i64 = 1_577_836_800_000;
/// A downtime longer than this is not believed (a clock set far ahead).
const MAX_DOWNTIME_MS: i64 = 366 * 24 * 3_600_000;
/// Alerts looked at per `expire` call at most (bounds the work per tick).
const EXPIRE_SCAN: usize = 4096;
/// Space set aside at open and given back when the disk is full, so the
/// records that free space (drops, a checkpoint) can still be written.
const RESERVE_BYTES: u64 = 128 << 10;
/// Storing alerts fails (cleared by the next push that succeeds).
const FAILING_PUSH: u8 = 1;
/// Making them durable fails (cleared by the next flush that succeeds).
const FAILING_FLUSH: u8 = 2;
/// Reads of adjacent alerts are merged up to this many bytes.
const READ_SPAN: u64 = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("outbox log: {0}")]
    Log(#[from] LogError),
    #[error("{0}")]
    Meta(#[from] MetaError),
    #[error("outbox at {path} is in use by another process (is another outpost running?)")]
    Locked { path: PathBuf },
    #[error("outbox record {seq} is unreadable: {reason}")]
    Record { seq: u64, reason: String },
    #[error("cannot import the old outbox {path}: {reason}")]
    Import { path: PathBuf, reason: String },
}

impl OutboxError {
    /// The disk (or its quota) is full.
    pub fn is_no_space(&self) -> bool {
        match self {
            OutboxError::Log(e) => e.is_no_space(),
            OutboxError::Io { source, .. } => {
                source.raw_os_error() == Some(libc::ENOSPC)
                    || source.raw_os_error() == Some(libc::EDQUOT)
            }
            _ => false,
        }
    }
}

/// What happened while opening, for the log (each is also an event on
/// `{prefix}/events` where subscribers need to know).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenEvent {
    /// The checkpoint store would not open and was replaced by a fresh one
    /// (no alert is lost: the log holds them).
    Replaced { moved_to: PathBuf, reason: String },
    /// The checkpoint store was repaired (sled rebuilt it from its log).
    Repaired { kept: PathBuf, reason: String },
    /// Damage in the log: `count` alerts could be established as lost.
    Damaged {
        count: u64,
        exact: bool,
        kept: Option<PathBuf>,
        reason: String,
    },
    /// Alerts from now on carry a new id prefix.
    NewPrefix {
        old: String,
        new: String,
        reason: String,
    },
    /// An outbox of the earlier format (one sled database) was imported.
    Imported { alerts: u64, from: PathBuf },
}

impl std::fmt::Display for OpenEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenEvent::Replaced { moved_to, reason } => write!(
                f,
                "the outbox checkpoint store would not open ({reason}); moved it to {} and started a fresh one (every alert is in the log)",
                moved_to.display()
            ),
            OpenEvent::Repaired { kept, reason } => write!(
                f,
                "the outbox checkpoint store was damaged ({reason}); rebuilt it (damaged files kept in {})",
                kept.display()
            ),
            OpenEvent::Damaged {
                count,
                exact,
                kept,
                reason,
            } => write!(
                f,
                "the outbox log was damaged ({reason}): {}{count} alert(s) lost{}",
                if *exact { "" } else { "at least " },
                kept.as_ref()
                    .map(|k| format!("; damaged file kept as {}", k.display()))
                    .unwrap_or_default()
            ),
            OpenEvent::NewPrefix { old, new, reason } => write!(
                f,
                "alert ids change prefix from {old} to {new} ({reason}), so none can repeat one that may have been sent"
            ),
            OpenEvent::Imported { alerts, from } => write!(
                f,
                "imported {alerts} waiting alert(s) from the earlier outbox format at {}",
                from.display()
            ),
        }
    }
}

/// The outbox bounds: `[outbox] max_bytes` and `max_age`, and the largest
/// payload stored (`[upstream] max_payload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Payload bytes of waiting alerts, at most.
    pub max_bytes: u64,
    /// Alerts that waited longer than this are dropped; `None`: never.
    pub max_age: Option<Duration>,
    /// Largest alert payload: a longer one has its message cut at push
    /// ([`Alert::to_payload`]), so what is stored is what is published.
    pub max_payload: usize,
}

impl Bounds {
    /// No bound on bytes or age; payloads cut at the default `max_payload`.
    pub const DEFAULT: Bounds = Bounds {
        max_bytes: u64::MAX,
        max_age: None,
        max_payload: crate::alert::DEFAULT_MAX_PAYLOAD,
    };
}

/// How to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// `flush = "always"`: alerts are published only once durable, so an
    /// unclean stop cannot have published a seq the log lost.
    pub flush_always: bool,
    /// `[outbox] max_bytes`: the size of segments follows it (also given
    /// to [`Outbox::set_bounds`], which enforces it).
    pub max_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            flush_always: true,
            max_bytes: u64::MAX,
        }
    }
}

/// The segment size for a byte bound: a small outbox on a small disk frees
/// space in small steps; a large one rolls (and syncs its folder) rarely.
fn segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 16).clamp(SEGMENT_MIN, SEGMENT_MAX)
}

/// One stored alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub severity: Severity,
    pub state: crate::rules::AlertState,
    /// When it was created (wall clock, Unix ms).
    pub created_ms: i64,
    pub rule: String,
    pub sensor: String,
    /// The JSON payload, exactly as published.
    pub payload: Vec<u8>,
}

impl Record {
    pub fn alert(&self) -> Result<Alert, OutboxError> {
        serde_json::from_slice(&self.payload).map_err(|e| OutboxError::Record {
            seq: self.seq,
            reason: e.to_string(),
        })
    }
}

/// The waiting alerts' counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub depth: u64,
    /// Payload bytes of the waiting alerts.
    pub bytes: u64,
    pub next_seq: u64,
}

/// The oldest waiting alert and the counts of the same moment.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub counts: Counts,
    pub oldest: Option<Record>,
}

/// A snapshot of the counters, for health, status and `outbox list`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub depth: u64,
    pub bytes: u64,
    pub next_seq: u64,
    pub dropped: BySeverity,
    /// Creation time of the oldest waiting alert (wall clock).
    pub oldest_created_ms: Option<i64>,
    /// How long the oldest waiting alert has waited (the wait clock: not
    /// thrown off by a wall clock that jumps).
    pub oldest_waited_ms: Option<u64>,
    pub events_pending: u64,
    /// Alerts that could not be stored, since start.
    pub unstored: u64,
    /// Bytes the outbox's files take on disk (log and checkpoint store).
    pub disk_bytes: u64,
    /// Why storage is failing, while it is.
    pub storage_error: Option<String>,
}

/// The rule engine's state as the outbox restored it: the checkpoint's,
/// with the transitions logged after it applied in order.
#[derive(Debug, Default)]
pub struct EngineState {
    pub entries: BTreeMap<Vec<u8>, Vec<u8>>,
    /// A whole snapshot from the earlier outbox format, if imported.
    pub legacy_snapshot: Option<Vec<u8>>,
}

/// The monotonic "time waited" clock alert ages are measured on.
#[derive(Debug, Clone, Copy)]
struct WaitClock {
    w_at_open: i64,
    mono_at_open: u64,
    /// The same moment on this process's monotonic clock, for readers that
    /// bring no time of their own (status, health).
    instant_at_open: Instant,
}

impl WaitClock {
    /// The wait clock now, read from the monotonic clock.
    fn w_now(&self) -> i64 {
        self.w_at_open.saturating_add(
            i64::try_from(self.instant_at_open.elapsed().as_millis()).unwrap_or(i64::MAX),
        )
    }

    fn w(&self, now: Now) -> i64 {
        self.w_at_open.saturating_add(
            i64::try_from(now.mono_ms.saturating_sub(self.mono_at_open)).unwrap_or(i64::MAX),
        )
    }
}

struct Inner {
    /// The id prefix alerts get (also `Outbox::db_id`).
    db_id: String,
    log: Log,
    meta: Option<Meta>,
    index: Index,
    next_seq: u64,
    next_event: u64,
    /// Events numbered below this are being published: never merged into.
    sealed_below: u64,
    events: BTreeMap<u64, OutboxEvent>,
    dropped: BySeverity,
    /// Acknowledged seqs not yet appended.
    acks: Vec<u64>,
    acks_since_w: Option<i64>,
    /// Engine state changes not yet in a durable checkpoint.
    engine: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    checkpoint_pos: Loc,
    checkpoint_w: i64,
    /// Something changed since the last checkpoint.
    changed: bool,
    clock: WaitClock,
    /// The last time seen (for records written from calls without one).
    last: Now,
    bounds: Bounds,
    /// `max_bytes` lowered because the disk holds less.
    disk_cap: Option<u64>,
    drop_log: WarnLimiter,
    unstored_event: Option<u64>,
    reserve: Option<PathBuf>,
}

pub struct Outbox {
    dir: PathBuf,
    db_id: String,
    inner: Mutex<Inner>,
    // Lock-free copies for readers (health, metrics, status).
    depth: AtomicU64,
    bytes: AtomicU64,
    next_seq: AtomicU64,
    flushed_through: AtomicU64,
    dropped: [AtomicU64; 3],
    events: AtomicU64,
    unstored: AtomicU64,
    disk_bytes: AtomicU64,
    /// What is failing: [`FAILING_PUSH`], [`FAILING_FLUSH`], or 0.
    failing: AtomicU8,
    storage_error: Mutex<Option<String>>,
    recovered: Mutex<Option<EngineState>>,
    /// The last bytes read ahead of a read from the log (see `read.rs`).
    ahead: Mutex<Option<read::Window>>,
}

fn sev_index(s: Severity) -> usize {
    usize::from(record::severity_byte(s))
}

fn new_db_id() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the files
        // inconsistent (every change is one record), so the state is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The engine state restored at open (once; `None` afterwards).
    pub fn take_engine_state(&self) -> Option<EngineState> {
        self.recovered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The 6 hex digits identifying this outbox in alert ids.
    pub fn db_id(&self) -> &str {
        &self.db_id
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Sets the bounds; enforced at once and from then on.
    pub fn set_bounds(&self, bounds: Bounds) {
        let mut st = self.lock();
        st.bounds = bounds;
        // Segments follow the bound, so a small outbox on a small
        // filesystem frees space in small steps.
        st.log.set_segment_bytes(segment_bytes(bounds.max_bytes));
        let now = st.last;
        if let Err(e) = self.enforce_bytes(&mut st, now) {
            warn!(error = %e, "cannot apply the outbox bound");
        }
        self.publish_counters(&st);
    }

    /// Stores `drafts` as alerts with consecutive seqs, with the engine
    /// state `transitions` that produced them, then enforces `max_bytes`.
    /// Not yet durable: see [`Outbox::flush`].
    ///
    /// Many drafts take several records. When the disk refuses one after
    /// others were written, what was written stays stored: the result is
    /// then the alerts of the first drafts only (fewer than `drafts`), the
    /// caller keeps the rest to push again, and `transitions` (which go
    /// with the last record) are not stored. An error means nothing was.
    pub fn push(
        &self,
        gateway: &str,
        drafts: &[AlertDraft],
        transitions: &[(Vec<u8>, Option<Vec<u8>>)],
        now: Now,
    ) -> Result<Vec<Alert>, OutboxError> {
        let mut st = self.lock();
        st.last = now;
        let r = self.push_locked(&mut st, gateway, drafts, transitions, now);
        match &r {
            Ok(_) => self.storage_ok(),
            Err(e) => self.storage_failed(e, FAILING_PUSH),
        }
        self.publish_counters(&st);
        r
    }

    fn push_locked(
        &self,
        st: &mut Inner,
        gateway: &str,
        drafts: &[AlertDraft],
        transitions: &[(Vec<u8>, Option<Vec<u8>>)],
        now: Now,
    ) -> Result<Vec<Alert>, OutboxError> {
        let w = st.clock.w(now);
        let mut alerts = Vec::with_capacity(drafts.len());
        let mut payloads = Vec::with_capacity(drafts.len());
        for (i, d) in drafts.iter().enumerate() {
            let seq = st.next_seq + i as u64;
            let alert = Alert::new(d, gateway, &self.db_id, seq);
            // Cut here, not when publishing: what is stored is what is sent.
            payloads.push(alert.to_payload(st.bounds.max_payload));
            alerts.push(alert);
        }
        // Split into records of at most MAX_COMMIT; the engine state goes
        // with the last (a crash between two then re-fires, never forgets).
        let mut start = 0;
        let mut placed: Vec<(u64, Severity, Entry)> = Vec::with_capacity(drafts.len());
        let acks = index::ranges_of(st.acks.iter().copied());
        let mut first_record = true;
        while start < drafts.len() || (start == 0 && !transitions.is_empty() && drafts.is_empty()) {
            let mut end = start;
            let mut size = 64;
            while end < drafts.len()
                && (end == start || size + payloads[end].len() + 200 < MAX_COMMIT)
            {
                size += payloads[end].len() + 200;
                end += 1;
            }
            let entries: Vec<AlertEntry<'_>> = (start..end)
                .map(|i| AlertEntry {
                    seq: alerts[i].seq,
                    severity: drafts[i].severity,
                    state: drafts[i].state,
                    created_ms: now.wall_ms,
                    created_w: w,
                    rule: &drafts[i].rule,
                    sensor: &drafts[i].sensor,
                    payload: &payloads[i],
                })
                .collect();
            let last = end >= drafts.len();
            let (body, places) = record::commit(
                w,
                now.wall_ms,
                &entries,
                if first_record { &acks } else { &[] },
                if last { transitions } else { &[] },
            );
            let loc = match st.append(&body, now) {
                Ok(loc) => loc,
                // The records before this one stay: their drafts are done.
                Err(e) if start > 0 => {
                    warn!(stored = start, refused = drafts.len() - start, error = %e, "the outbox stored part of a group of alerts; the rest waits");
                    alerts.truncate(start);
                    st.changed = true;
                    // Best effort: the failed write is what is reported.
                    let _ = self.enforce_bytes(st, now);
                    return Ok(alerts);
                }
                Err(e) => return Err(e),
            };
            if first_record {
                st.acks.clear();
                st.acks_since_w = None;
            }
            first_record = false;
            for (j, (at, len)) in places.iter().enumerate() {
                let i = start + j;
                placed.push((
                    alerts[i].seq,
                    drafts[i].severity,
                    Entry::placed(loc, *at, *len, &entries[j]),
                ));
            }
            // Seqs are taken only once their record is written: a failed
            // write leaves no gap.
            st.next_seq += (end - start) as u64;
            for (seq, sev, e) in placed.drain(..) {
                st.index.insert(seq, sev, e);
            }
            start = end;
            if last {
                break;
            }
        }
        for (k, v) in transitions {
            st.engine.insert(k.clone(), v.clone());
        }
        st.changed = true;
        self.enforce_bytes(st, now)?;
        Ok(alerts)
    }

    /// Makes every write so far durable: if this returns Ok, they survive a
    /// crash or power cut. The sync runs off the lock (reads and
    /// acknowledgements go on meanwhile) and off the async runtime.
    pub async fn flush(self: &Arc<Self>) -> Result<u64, OutboxError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.flush_blocking())
            .await
            .map_err(|e| OutboxError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    /// Blocking flush, for shutdown, the CLI and `flush`. Returns the
    /// highest seq it covers: every alert pushed before it began.
    pub fn flush_blocking(&self) -> Result<u64, OutboxError> {
        let (plan, covered) = {
            let st = self.lock();
            (st.log.sync_plan(), st.next_seq.saturating_sub(1))
        };
        let r = plan.run();
        let mut st = self.lock();
        match r {
            Ok(()) => {
                st.log.synced(plan);
                self.flushed_through.fetch_max(covered, Ordering::Relaxed);
                // Only a failure of a flush is healed by a flush: a disk
                // that syncs but has no room for alerts is still failing.
                if self.failing.load(Ordering::Relaxed) == FAILING_FLUSH {
                    self.storage_ok();
                }
                Ok(covered)
            }
            Err(e) => {
                let e = OutboxError::Log(e);
                self.storage_failed(&e, FAILING_FLUSH);
                Err(e)
            }
        }
    }

    /// The highest seq a flush has made durable.
    pub fn flushed_through(&self) -> u64 {
        self.flushed_through.load(Ordering::Relaxed)
    }

    /// Removes the alert `seq`: call only on the broker's PUBACK for it.
    /// Returns false when it was not there (already acknowledged or dropped).
    pub fn ack(&self, seq: u64) -> Result<bool, OutboxError> {
        Ok(self.ack_many(&[seq])? == 1)
    }

    /// Removes the alerts `seqs`, each acknowledged by its own PUBACK.
    /// Returns how many were there. Appended without a sync of their own.
    pub fn ack_many(&self, seqs: &[u64]) -> Result<u64, OutboxError> {
        let mut st = self.lock();
        let mut n = 0;
        for &seq in seqs {
            if st.index.remove(seq).is_some() {
                st.acks.push(seq);
                n += 1;
            }
        }
        if n > 0 {
            let w = st.clock.w(st.last);
            st.acks_since_w.get_or_insert(w);
            st.changed = true;
        }
        let r = if st.acks.len() >= ACK_RECORD_EVERY {
            let now = st.last;
            st.write_acks(now)
        } else {
            Ok(())
        };
        self.publish_counters(&st);
        r.map(|()| n)
    }

    /// Every event waiting for publication, oldest first, with its number.
    pub fn events(&self) -> Result<Vec<(u64, OutboxEvent)>, OutboxError> {
        Ok(self
            .lock()
            .events
            .iter()
            .map(|(n, e)| (*n, e.clone()))
            .collect())
    }

    /// [`Outbox::events`], for publishing: they are sealed, so later drops
    /// go into a new event and what the broker acknowledges is exactly
    /// what was sent.
    pub fn events_to_publish(&self) -> Result<Vec<(u64, OutboxEvent)>, OutboxError> {
        let mut st = self.lock();
        st.sealed_below = st.next_event;
        Ok(st.events.iter().map(|(n, e)| (*n, e.clone())).collect())
    }

    /// Removes event `n`: call only on the broker's PUBACK for it.
    pub fn ack_event(&self, n: u64) -> Result<bool, OutboxError> {
        let mut st = self.lock();
        if st.events.remove(&n).is_none() {
            return Ok(false);
        }
        let now = st.last;
        let w = st.clock.w(now);
        let r = st
            .append(&record::event_ack(w, now.wall_ms, n), now)
            .map(|_| true);
        st.changed = true;
        self.publish_counters(&st);
        r
    }

    /// Events waiting for publication.
    pub fn events_pending(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Alerts waiting.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// Payload bytes of the alerts waiting (what `max_bytes` bounds).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Alerts dropped by the bounds, ever, in this outbox.
    pub fn dropped(&self) -> BySeverity {
        let mut b = BySeverity::default();
        for s in SEVERITIES {
            b.add(s, self.dropped[sev_index(s)].load(Ordering::Relaxed));
        }
        b
    }

    /// Alerts that could not be stored, since start.
    pub fn unstored(&self) -> u64 {
        self.unstored.load(Ordering::Relaxed)
    }

    /// Why storage is failing, while it is (the disk is full, or refuses writes).
    pub fn storage_error(&self) -> Option<String> {
        if self.failing.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.storage_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn storage_ok(&self) {
        if self.failing.swap(0, Ordering::Relaxed) != 0 {
            *self.storage_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    fn storage_failed(&self, e: &OutboxError, what: u8) {
        *self.storage_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        self.failing.store(what, Ordering::Relaxed);
    }

    /// The seq the next alert will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> Stats {
        let Waiting { counts, oldest } = self.waiting();
        Stats {
            depth: counts.depth,
            bytes: counts.bytes,
            next_seq: counts.next_seq,
            dropped: self.dropped(),
            oldest_created_ms: oldest.as_ref().map(|r| r.created_ms),
            oldest_waited_ms: self
                .oldest_waited()
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            events_pending: self.events_pending(),
            unstored: self.unstored(),
            disk_bytes: self.size_on_disk(),
            storage_error: self.storage_error(),
        }
    }

    /// How long the oldest waiting alert has waited, on the wait clock.
    pub fn oldest_waited(&self) -> Option<Duration> {
        let (file, loc, w_now) = {
            let st = self.lock();
            let (_, _, e) = st.index.after(None, 1).into_iter().next()?;
            (st.log.file(e.loc.seg)?, e.loc, st.clock.w_now())
        };
        let mut head = [0u8; record::CREATED_W_END];
        file.read_exact_at(&mut head, u64::from(loc.off)).ok()?;
        let created = record::created_w(&head)?;
        Some(Duration::from_millis(
            u64::try_from(w_now.saturating_sub(created)).unwrap_or(0),
        ))
    }

    /// Removes every waiting alert (`outpost outbox purge`) and records a
    /// `purged` event; seqs are not reused.
    pub fn purge(&self) -> Result<u64, OutboxError> {
        let now = Now {
            mono_ms: self.lock().last.mono_ms,
            wall_ms: crate::reading::wall_ms(),
        };
        let mut st = self.lock();
        let all: Vec<u64> = st
            .index
            .after(None, usize::MAX)
            .iter()
            .map(|x| x.0)
            .collect();
        let n = all.len() as u64;
        if n > 0 {
            let mut seqs = event::Ranges::new();
            for s in &all {
                seqs.insert(*s);
                st.index.remove(*s);
            }
            st.acks.extend(all);
            st.write_acks(now)?;
            st.add_event(
                OutboxEvent::Purged {
                    count: n,
                    seqs,
                    ts: rfc3339_ms(now.wall_ms),
                },
                now,
            )?;
        }
        self.checkpoint_locked(&mut st, now)?;
        self.publish_counters(&st);
        Ok(n)
    }

    /// A clean stop: pending acknowledgements, a `close` record and a final
    /// checkpoint, all durable.
    pub fn close(
        &self,
        engine: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        now: Now,
    ) -> Result<(), OutboxError> {
        let mut st = self.lock();
        st.last = now;
        st.take_engine(engine);
        st.write_acks(now)?;
        let w = st.clock.w(now);
        let next = st.next_seq;
        st.append(&record::close(w, now.wall_ms, next), now)?;
        st.changed = true;
        let r = self.checkpoint_locked(&mut st, now);
        self.publish_counters(&st);
        r
    }

    /// Bytes the outbox's files take.
    pub fn size_on_disk(&self) -> u64 {
        let st = self.lock();
        st.log.disk_bytes() + st.meta.as_ref().map_or(0, |m| m.size_on_disk())
    }

    fn publish_counters(&self, st: &Inner) {
        self.depth.store(st.index.depth(), Ordering::Relaxed);
        self.bytes.store(st.index.bytes(), Ordering::Relaxed);
        self.next_seq.store(st.next_seq, Ordering::Relaxed);
        for s in SEVERITIES {
            self.dropped[sev_index(s)].store(st.dropped.get(s), Ordering::Relaxed);
        }
        self.events.store(st.events.len() as u64, Ordering::Relaxed);
        self.disk_bytes
            .store(st.log.used_bytes(), Ordering::Relaxed);
    }
}

impl Inner {
    /// Appends a record, starting a segment (with its prefix record) when
    /// the active one is full.
    fn append(&mut self, body: &[u8], now: Now) -> Result<Loc, OutboxError> {
        if self.log.needs_roll(body.len()) {
            self.append_prefix(now)?;
        }
        Ok(self.log.append(body, now.wall_ms)?)
    }

    /// Starts a segment with the prefix record: the log alone then says
    /// where seqs resume, whatever happens to the checkpoint.
    fn append_prefix(&mut self, now: Now) -> Result<(), OutboxError> {
        self.log.roll(now.wall_ms)?;
        let w = self.clock.w(now);
        let body = record::prefix(w, now.wall_ms, &self.db_id, self.next_seq);
        self.log.append(&body, now.wall_ms)?;
        Ok(())
    }

    fn write_acks(&mut self, now: Now) -> Result<(), OutboxError> {
        if self.acks.is_empty() {
            return Ok(());
        }
        let w = self.clock.w(now);
        let body = record::acks(w, now.wall_ms, &index::ranges_of(self.acks.iter().copied()));
        self.append(&body, now)?;
        self.acks.clear();
        self.acks_since_w = None;
        Ok(())
    }

    fn add_event(&mut self, ev: OutboxEvent, now: Now) -> Result<(), OutboxError> {
        let n = self.next_event;
        self.next_event += 1;
        self.events.insert(n, ev.clone());
        self.changed = true;
        self.append_event(n, &ev, now)
    }

    fn append_event(&mut self, n: u64, ev: &OutboxEvent, now: Now) -> Result<(), OutboxError> {
        let json = serde_json::to_vec(ev).unwrap_or_default();
        let w = self.clock.w(now);
        self.append(&record::event(w, now.wall_ms, n, &json), now)?;
        Ok(())
    }
}

/// The size of the filesystem holding `path`.
fn filesystem_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; `c` is a valid
    // NUL-terminated path for the duration of the call.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    (r == 0).then(|| (s.f_blocks as u64).saturating_mul(s.f_frsize as u64))
}

/// Sets aside [`RESERVE_BYTES`] of disk (best effort).
fn make_reserve(root: &Path) -> Option<PathBuf> {
    use std::os::unix::io::AsRawFd;
    let path = root.join("reserve");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ok()?;
    // SAFETY: fallocate on a file descriptor we own, with valid sizes.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            0,
            0,
            libc::off_t::try_from(RESERVE_BYTES).unwrap_or(0),
        )
    };
    if r != 0 {
        drop(f);
        let _ = std::fs::remove_file(&path);
        return None;
    }
    Some(path)
}

#[cfg(test)]
mod tests;
