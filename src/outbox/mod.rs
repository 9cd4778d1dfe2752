//! The durable outbox: every alert is written here before it is published,
//! and leaves only when the upstream broker acknowledged that very alert, or
//! when the bound drops it (counted and reported).
//!
//! This is the only module that imports sled. Code map: this file opens the
//! database and holds the store's operations; `keys.rs` the format below;
//! `bounds.rs` the bounds and the evictions they make; `event.rs` the events
//! (pure); `writer.rs` the task that stores what the evaluator emits and
//! announces what may be published; `tests.rs` the model check.
//!
//! # Format
//!
//! One sled tree, `outbox`, four key spaces. Integers are big-endian, so
//! sled's key order is numeric order.
//!
//! - `a` + seq (u64): one alert. Value: a 10-byte header, format byte `1`,
//!   severity (`0` info, `1` warning, `2` critical), creation time (wall
//!   clock, Unix ms, i64), then the exact JSON payload that is published
//!   (an alert over [`Bounds::max_payload`] is stored with its message cut,
//!   as it will be published: `outpost outbox export` prints these bytes).
//! - `s` + severity (u8) + seq (u64): the severity index, one entry per
//!   alert; value the payload length (u32). Eviction walks `s0…`, then
//!   `s1…`, then `s2…`: lowest severity first, oldest first within one,
//!   without reading payloads. Opening sums these entries for the depth and
//!   byte counters (only the small index is read, not every payload).
//! - `e` + n (u64): a pending event for `{topic_prefix}/events` (JSON of
//!   [`OutboxEvent`]), removed on the broker's PUBACK for it.
//! - `m` + name: metadata. `m/next_seq` the seq the next alert gets,
//!   `m/db_id` the 6 hex digits that make alert ids unique even if this
//!   database is ever replaced, `m/rules_state` the rule engine's snapshot,
//!   `m/next_event` the next event number, `m/dropped/{info,warning,critical}`
//!   how many alerts the bound dropped, ever, in this database, and
//!   `m/counts` the number of waiting alerts and their payload bytes (two
//!   u64 BE), written in the same batch as every change to them, so opening
//!   a large backlog reads no index (reading 100,000 index entries cost
//!   ~10 MiB of RSS that sled never gave back).
//!
//! # Durability contract
//!
//! - Every change is one sled batch, so after a crash either all of it is
//!   there or none: [`Outbox::push`] writes the alerts, their index entries,
//!   the advanced `next_seq` and (if given) the engine snapshot together; an
//!   eviction removes alerts and index entries and writes the drop counters
//!   and the event reporting them together; [`Outbox::ack`] removes an alert
//!   and its index entry together. A seq is never reused; the index and the
//!   counters never disagree with the alerts.
//! - Written is not yet durable: only after [`Outbox::flush`] returns are the
//!   writes guaranteed to survive a crash or power cut (sled's `flush`
//!   contract); it returns the highest seq it covers
//!   ([`Outbox::flushed_through`]). With `flush = "always"` the writer
//!   flushes before it announces a seq as publishable, and alerts pushed
//!   together share one flush (group commit).
//!   sled's own background flush (every 500 ms) still runs: it also reclaims
//!   space, and it bounds what kill -9 can lose under a `flush` period.
//! - [`Outbox::ack`] removes one alert, by seq ([`Outbox::ack_many`] several,
//!   in one batch). It is called only for the PUBACK of that alert (see
//!   `upstream`), never before: reading never removes (no `pop_min`), so
//!   at-least-once holds across crashes.
//! - Bounds ([`Bounds`]): after every push, while the payload bytes exceed
//!   `max_bytes`, alerts are dropped, info before warning before critical,
//!   oldest first within a severity (a new info alert can be dropped at once
//!   when only critical ones are older). [`Outbox::expire`] (called
//!   periodically) drops alerts created more than `max_age` ago, oldest
//!   first; alerts stamped before 2020 (a Pi that booted without a real-time
//!   clock and had not synced yet) are never aged out, only bounded by size.
//!   `max_bytes` counts payload bytes; sled's files are larger (log, pages).
//! - A database that will not open (sled reports corruption, e.g. after a
//!   power cut) is moved aside to `outbox.corrupt-<unix time>` and a fresh
//!   one is started, with a new `db_id`, so ids stay unique; a
//!   `database_replaced` event is stored in the fresh one, and the event is
//!   returned to the caller to log and count. The gateway never crash-loops
//!   on it.
//!
//! All changes go through one mutex, so an ack and an eviction of the same
//! alert cannot both count it. Reads (`after`, counters) take no lock.
//!
//! sled is tuned for a small device: a 4 MiB page cache instead of 1 GiB
//! (RSS grows with it), low-space mode.

mod bounds;
pub mod event;
mod keys;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tracing::warn;

use crate::alert::{Alert, rfc3339_ms};
use crate::rules::{AlertDraft, Severity};
use crate::telemetry::WarnLimiter;
pub use bounds::Bounds;
use bounds::{Victim, add_signed};
pub use event::{BySeverity, DropReason, OutboxEvent};
pub use keys::Record;
use keys::*;
pub use writer::{Batch, Writer};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox database at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("outbox database at {path} is in use by another process (is another outpost running?)")]
    Locked { path: PathBuf },
    #[error("cannot move the corrupt outbox {path} aside: {source}")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("outbox write failed: {0}")]
    Write(sled::Error),
    #[error("outbox record {seq} is unreadable: {reason}")]
    Record { seq: u64, reason: String },
}

/// What happened while opening, for the log and the events topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenEvent {
    /// A corrupt database was moved to `moved_to` and a fresh one started.
    Replaced { moved_to: PathBuf, reason: String },
}

/// A snapshot of the counters, for health, status and `outbox list`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub depth: u64,
    pub bytes: u64,
    pub next_seq: u64,
    pub dropped: BySeverity,
    /// Creation time of the oldest waiting alert.
    pub oldest_created_ms: Option<i64>,
    pub events_pending: u64,
}

/// What the mutex guards: everything a change must see consistently.
struct State {
    next_seq: u64,
    next_event: u64,
    /// Events numbered below this are being published: never merged into.
    sealed_below: u64,
    bounds: Bounds,
    drop_log: WarnLimiter,
}

pub struct Outbox {
    db: sled::Db,
    tree: sled::Tree,
    db_id: String,
    path: PathBuf,
    state: Mutex<State>,
    depth: AtomicU64,
    bytes: AtomicU64,
    dropped: [AtomicU64; 3],
    events: AtomicU64,
    /// The highest seq a completed flush covers (see [`Outbox::flush`]).
    flushed: AtomicU64,
}

/// How much of sled's page cache to keep in memory.
const CACHE_BYTES: u64 = 4 << 20;

impl Outbox {
    /// Opens (or creates) the outbox in `dir`/outbox.
    pub fn open(dir: &Path) -> Result<(Outbox, Option<OpenEvent>), OutboxError> {
        let path = dir.join("outbox");
        // sled has been seen to panic on some damaged files instead of
        // returning an error; either way the database is unusable.
        let attempt = std::panic::catch_unwind(|| Outbox::open_at(&path));
        let reason = match attempt {
            Ok(Ok(o)) => return Ok((o, None)),
            Ok(Err(OutboxError::Open { source, .. })) if is_damage(&source) => source.to_string(),
            Ok(Err(e)) => return Err(e),
            Err(_) => "sled panicked while opening the database".to_string(),
        };
        let now = crate::reading::wall_ms();
        let moved_to = dir.join(format!("outbox.corrupt-{}", now / 1000));
        std::fs::rename(&path, &moved_to).map_err(|source| OutboxError::MoveAside {
            path: path.clone(),
            source,
        })?;
        let o = Outbox::open_at(&path)?;
        o.add_event(&OutboxEvent::DatabaseReplaced {
            moved_to: moved_to.display().to_string(),
            reason: reason.clone(),
            ts: rfc3339_ms(now),
        })?;
        o.flush_blocking()?;
        Ok((o, Some(OpenEvent::Replaced { moved_to, reason })))
    }

    fn open_at(path: &Path) -> Result<Outbox, OutboxError> {
        let open_err = |source: sled::Error| match &source {
            sled::Error::Io(io) if is_lock_error(io) => OutboxError::Locked {
                path: path.to_path_buf(),
            },
            _ => OutboxError::Open {
                path: path.to_path_buf(),
                source,
            },
        };
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .mode(sled::Mode::LowSpace)
            .flush_every_ms(Some(500))
            .open()
            .map_err(open_err)?;
        let tree = db.open_tree(TREE).map_err(open_err)?;
        let db_id = match tree.get(DB_ID).map_err(open_err)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                let id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
                tree.insert(DB_ID, id.as_bytes()).map_err(open_err)?;
                tree.flush().map_err(open_err)?;
                id
            }
        };
        // Stored with every change (`Tree::len` would scan); counted from
        // the small index only for a database written before `m/counts`.
        let (depth, bytes) = match tree
            .get(COUNTS)
            .map_err(open_err)?
            .and_then(|v| counts_of(&v))
        {
            Some(c) => c,
            None => {
                let (mut depth, mut bytes) = (0, 0);
                for kv in tree.scan_prefix([INDEX]) {
                    let (_, v) = kv.map_err(open_err)?;
                    depth += 1;
                    bytes += u64::from(u32_value(&v));
                }
                (depth, bytes)
            }
        };
        let last_seq = match tree.scan_prefix([ALERT]).next_back() {
            Some(kv) => key_seq(&kv.map_err(open_err)?.0),
            None => None,
        };
        let stored_next = u64_value(tree.get(NEXT_SEQ).map_err(open_err)?).unwrap_or(1);
        // next_seq is written in the same batch as its alerts, so it is never
        // behind them; the max() only guards against a hand-edited database.
        let next_seq = stored_next.max(last_seq.map_or(1, |s| s + 1));
        let mut events = 0;
        let mut last_event = None;
        for kv in tree.scan_prefix([EVENT]) {
            let (k, _) = kv.map_err(open_err)?;
            events += 1;
            last_event = key_seq(&k);
        }
        let next_event = u64_value(tree.get(NEXT_EVENT).map_err(open_err)?)
            .unwrap_or(1)
            .max(last_event.map_or(1, |n| n + 1));
        let dropped = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
        for s in SEVERITIES {
            let n = u64_value(tree.get(dropped_key(s)).map_err(open_err)?).unwrap_or(0);
            dropped[sev_index(s)].store(n, Ordering::Relaxed);
        }
        Ok(Outbox {
            db,
            tree,
            db_id,
            path: path.to_path_buf(),
            state: Mutex::new(State {
                next_seq,
                next_event,
                sealed_below: 0,
                bounds: Bounds::DEFAULT,
                drop_log: WarnLimiter::new(Duration::from_secs(10)),
            }),
            depth: AtomicU64::new(depth),
            bytes: AtomicU64::new(bytes),
            dropped,
            events: AtomicU64::new(events),
            // What is on disk at open survived: it is as durable as it gets.
            flushed: AtomicU64::new(next_seq.saturating_sub(1)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave sled inconsistent
        // (every change is one batch), so the state is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The 6 hex digits identifying this database in alert ids.
    pub fn db_id(&self) -> &str {
        &self.db_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the bounds; enforced from the next push or [`Outbox::expire`].
    pub fn set_bounds(&self, bounds: Bounds) {
        self.lock().bounds = bounds;
    }

    /// Stores `drafts` as alerts with consecutive seqs, and `rules_state` if
    /// given, in one atomic batch, then enforces `max_bytes`. Not yet
    /// durable: see [`Outbox::flush`].
    pub fn push(
        &self,
        gateway: &str,
        drafts: &[AlertDraft],
        rules_state: Option<&[u8]>,
    ) -> Result<Vec<Alert>, OutboxError> {
        self.push_at(gateway, drafts, rules_state, crate::reading::wall_ms())
    }

    /// [`Outbox::push`] with the creation time given (tests, benchmarks).
    pub fn push_at(
        &self,
        gateway: &str,
        drafts: &[AlertDraft],
        rules_state: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<Vec<Alert>, OutboxError> {
        let mut st = self.lock();
        let mut batch = sled::Batch::default();
        let mut alerts = Vec::with_capacity(drafts.len());
        let mut fresh = Vec::with_capacity(drafts.len());
        let mut seq = st.next_seq;
        for d in drafts {
            let alert = Alert::new(d, gateway, &self.db_id, seq);
            // The stored bytes are the published bytes: an alert over
            // `max_payload` is stored cut, as it will be published.
            let mut value = Vec::with_capacity(HEADER + 512);
            value.push(RECORD_FORMAT);
            value.push(severity_byte(d.severity));
            value.extend_from_slice(&now_ms.to_be_bytes());
            serde_json::to_writer(&mut value, &alert).map_err(|e| OutboxError::Record {
                seq,
                reason: e.to_string(),
            })?;
            if value.len() - HEADER > st.bounds.max_payload {
                value.truncate(HEADER);
                value.extend_from_slice(&alert.to_payload(st.bounds.max_payload));
            }
            let len = (value.len() - HEADER) as u64;
            batch.insert(&seq_key(seq), value);
            let len32 = u32::try_from(len).unwrap_or(u32::MAX);
            batch.insert(&index_key(d.severity, seq), &len32.to_be_bytes());
            fresh.push(Victim {
                seq,
                severity: d.severity,
                len,
                reason: DropReason::MaxBytes,
            });
            alerts.push(alert);
            seq += 1;
        }
        batch.insert(NEXT_SEQ, &seq.to_be_bytes());
        if let Some(state) = rules_state {
            batch.insert(RULES_STATE, state);
        }
        // The bound is enforced in the same batch: no moment, on disk or in
        // the counters, holds more than max_bytes.
        let added: u64 = fresh.iter().map(|v| v.len).sum();
        let victims = self.over_bytes(&st, added, &fresh)?;
        let effects = self.evict_into(&mut batch, &st, &victims, now_ms)?;
        batch.insert(
            COUNTS,
            &counts_value(
                (self.depth() + drafts.len() as u64).saturating_sub(victims.len() as u64),
                (self.bytes() + added).saturating_sub(effects.freed),
            ),
        );
        self.tree.apply_batch(batch).map_err(OutboxError::Write)?;
        st.next_seq = seq;
        // Net changes, one update each: readers never see the pre-eviction bytes.
        add_signed(&self.depth, drafts.len() as u64, victims.len() as u64);
        add_signed(&self.bytes, added, effects.freed);
        self.applied(&mut st, effects, &victims);
        Ok(alerts)
    }

    fn last_event(&self) -> Result<Option<(u64, OutboxEvent)>, OutboxError> {
        match self.tree.scan_prefix([EVENT]).next_back() {
            Some(kv) => {
                let (k, v) = kv.map_err(OutboxError::Write)?;
                let Some(n) = key_seq(&k) else {
                    return Ok(None);
                };
                Ok(serde_json::from_slice(&v).ok().map(|e| (n, e)))
            }
            None => Ok(None),
        }
    }

    /// Stores a new event (not merged into any other).
    fn add_event(&self, ev: &OutboxEvent) -> Result<(), OutboxError> {
        let mut st = self.lock();
        let n = st.next_event;
        let mut batch = sled::Batch::default();
        batch.insert(&event_key(n), event_bytes(ev));
        batch.insert(NEXT_EVENT, &(n + 1).to_be_bytes());
        self.tree.apply_batch(batch).map_err(OutboxError::Write)?;
        st.next_event = n + 1;
        self.events.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Every event waiting for publication, oldest first, with its number.
    pub fn events(&self) -> Result<Vec<(u64, OutboxEvent)>, OutboxError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix([EVENT]) {
            let (k, v) = kv.map_err(OutboxError::Write)?;
            let Some(n) = key_seq(&k) else { continue };
            match serde_json::from_slice(&v) {
                Ok(e) => out.push((n, e)),
                Err(e) => warn!(event = n, error = %e, "skipping an unreadable outbox event"),
            }
        }
        Ok(out)
    }

    /// [`Outbox::events`], for publishing: they are sealed, so later drops
    /// go into a new event and what the broker acknowledges is exactly
    /// what was sent.
    pub fn events_to_publish(&self) -> Result<Vec<(u64, OutboxEvent)>, OutboxError> {
        let mut st = self.lock();
        let out = self.events()?;
        st.sealed_below = st.next_event;
        Ok(out)
    }

    /// Removes event `n`: call only on the broker's PUBACK for it.
    pub fn ack_event(&self, n: u64) -> Result<bool, OutboxError> {
        let _st = self.lock();
        match self.tree.remove(event_key(n)).map_err(OutboxError::Write)? {
            Some(_) => {
                self.events.fetch_sub(1, Ordering::Relaxed);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Events waiting for publication.
    pub fn events_pending(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Stores the rule engine's snapshot alone (when no alert changed).
    pub fn save_rules_state(&self, state: &[u8]) -> Result<(), OutboxError> {
        self.tree
            .insert(RULES_STATE, state)
            .map(|_| ())
            .map_err(OutboxError::Write)
    }

    pub fn rules_state(&self) -> Result<Option<Vec<u8>>, OutboxError> {
        self.tree
            .get(RULES_STATE)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(OutboxError::Write)
    }

    /// Makes every write so far durable: if this returns Ok, they survive a
    /// crash or power cut. Returns the highest seq it covers: the last one
    /// pushed before it began.
    pub async fn flush(&self) -> Result<u64, OutboxError> {
        let covers = self.next_seq().saturating_sub(1);
        self.db.flush_async().await.map_err(OutboxError::Write)?;
        Ok(self.flushed(covers))
    }

    /// Blocking [`Outbox::flush`], for shutdown and the CLI.
    pub fn flush_blocking(&self) -> Result<u64, OutboxError> {
        let covers = self.next_seq().saturating_sub(1);
        self.db.flush().map_err(OutboxError::Write)?;
        Ok(self.flushed(covers))
    }

    fn flushed(&self, covers: u64) -> u64 {
        self.flushed.fetch_max(covers, Ordering::Relaxed);
        covers
    }

    /// The highest seq that a completed flush covers: every alert up to it
    /// survives a crash.
    pub fn flushed_through(&self) -> u64 {
        self.flushed.load(Ordering::Relaxed)
    }

    /// Up to `limit` alerts with seq greater than `after` (all when `None`),
    /// in seq order.
    pub fn after(&self, after: Option<u64>, limit: usize) -> Result<Vec<Record>, OutboxError> {
        let start = match after {
            Some(s) => match s.checked_add(1) {
                Some(n) => seq_key(n),
                None => return Ok(Vec::new()),
            },
            None => seq_key(0),
        };
        let end = seq_key(u64::MAX);
        let mut out = Vec::with_capacity(limit.min(1024));
        for kv in self.tree.range(start..=end).take(limit) {
            let (k, v) = kv.map_err(OutboxError::Write)?;
            if let Some(seq) = key_seq(&k) {
                // An unreadable header still yields a record: the upstream
                // skips what it cannot parse instead of stalling on it.
                out.push(Record::decode(seq, &v).unwrap_or_else(|_| Record {
                    seq,
                    severity: Severity::Info,
                    created_ms: 0,
                    payload: v.to_vec(),
                }));
            }
        }
        Ok(out)
    }

    /// Removes the alert `seq`: call only on the broker's PUBACK for it.
    /// Returns false when it was not there (already acknowledged or dropped).
    pub fn ack(&self, seq: u64) -> Result<bool, OutboxError> {
        Ok(self.ack_many(&[seq])? == 1)
    }

    /// Removes the alerts `seqs`, each acknowledged by its own PUBACK, in
    /// one batch (one log write instead of one per alert: less SD card
    /// wear). Returns how many were there.
    pub fn ack_many(&self, seqs: &[u64]) -> Result<u64, OutboxError> {
        let _st = self.lock();
        let mut batch = sled::Batch::default();
        let mut n = 0;
        let mut freed = 0;
        for &seq in seqs {
            let Some(v) = self.tree.get(seq_key(seq)).map_err(OutboxError::Write)? else {
                continue;
            };
            batch.remove(&seq_key(seq));
            match Record::decode(seq, &v) {
                Ok(r) => batch.remove(&index_key(r.severity, seq)),
                // Unreadable header: remove whatever index entry it has.
                Err(_) => SEVERITIES
                    .iter()
                    .for_each(|s| batch.remove(&index_key(*s, seq))),
            }
            n += 1;
            freed += v.len().saturating_sub(HEADER) as u64;
        }
        if n == 0 {
            return Ok(0);
        }
        batch.insert(
            COUNTS,
            &counts_value(
                self.depth().saturating_sub(n),
                self.bytes().saturating_sub(freed),
            ),
        );
        self.tree.apply_batch(batch).map_err(OutboxError::Write)?;
        self.depth.fetch_sub(n, Ordering::Relaxed);
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        Ok(n)
    }

    /// Alerts waiting.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// Payload bytes of the alerts waiting (what `max_bytes` bounds).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Alerts dropped by the bound, ever, in this database.
    pub fn dropped(&self) -> BySeverity {
        let mut b = BySeverity::default();
        for s in SEVERITIES {
            b.add(s, self.dropped[sev_index(s)].load(Ordering::Relaxed));
        }
        b
    }

    /// The oldest waiting alert, if any.
    pub fn oldest(&self) -> Result<Option<Record>, OutboxError> {
        Ok(self.after(None, 1)?.into_iter().next())
    }

    /// The seq the next alert will get.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    pub fn stats(&self) -> Stats {
        Stats {
            depth: self.depth(),
            bytes: self.bytes(),
            next_seq: self.next_seq(),
            dropped: self.dropped(),
            oldest_created_ms: self.oldest().ok().flatten().map(|r| r.created_ms),
            events_pending: self.events_pending(),
        }
    }

    /// Removes every waiting alert (`outpost outbox purge`) and records a
    /// `purged` event; seqs are not reused.
    pub fn purge(&self) -> Result<u64, OutboxError> {
        let mut seqs = event::Ranges::new();
        let mut n = 0u64;
        loop {
            let records = self.after(None, 1024)?;
            if records.is_empty() {
                break;
            }
            let _st = self.lock();
            let mut batch = sled::Batch::default();
            let mut freed = 0;
            for r in &records {
                batch.remove(&seq_key(r.seq));
                batch.remove(&index_key(r.severity, r.seq));
                freed += r.payload.len() as u64;
                seqs.insert(r.seq);
            }
            batch.insert(
                COUNTS,
                &counts_value(
                    self.depth().saturating_sub(records.len() as u64),
                    self.bytes().saturating_sub(freed),
                ),
            );
            self.tree.apply_batch(batch).map_err(OutboxError::Write)?;
            self.depth
                .fetch_sub(records.len() as u64, Ordering::Relaxed);
            self.bytes.fetch_sub(freed, Ordering::Relaxed);
            n += records.len() as u64;
        }
        if n > 0 {
            self.add_event(&OutboxEvent::Purged {
                count: n,
                seqs,
                ts: rfc3339_ms(crate::reading::wall_ms()),
            })?;
        }
        self.flush_blocking()?;
        Ok(n)
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// Errors that mean the files are damaged (not: locked, no permission).
fn is_damage(e: &sled::Error) -> bool {
    match e {
        sled::Error::Corruption { .. }
        | sled::Error::Unsupported(_)
        | sled::Error::ReportableBug(_) => true,
        sled::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// sled wraps the `EAGAIN` of its file lock in an error of its own.
fn is_lock_error(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::WouldBlock
        || io.raw_os_error() == Some(11)
        || io.to_string().contains("could not acquire lock")
}

#[cfg(test)]
mod tests;
