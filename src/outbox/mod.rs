//! The durable outbox: every alert is written here before it is published,
//! and leaves only when the upstream broker acknowledged that very alert.
//!
//! This is the only module that imports sled.
//!
//! # Format
//!
//! One sled tree, `outbox`, two key spaces:
//!
//! - `a` + seq (u64 big-endian): one alert, its value the exact JSON payload
//!   that is published. Big-endian keys make sled's order the seq order.
//! - `m` + name: metadata. `m/next_seq` (u64 BE) is the seq the next alert
//!   gets, `m/db_id` the 6 hex digits that make alert ids unique even if this
//!   database is ever replaced, `m/rules_state` the rule engine's snapshot.
//!
//! # Durability contract
//!
//! - [`Outbox::push`] writes the alerts, the advanced `next_seq` and (if
//!   given) the engine snapshot in one sled batch: atomically, so after a
//!   crash either all of them are there or none is. A seq is never reused.
//! - Written is not yet durable: only after [`Outbox::flush`] returns are the
//!   writes guaranteed to survive a crash or power cut (sled's `flush`
//!   contract). With `flush = "always"` the runtime flushes before
//!   publishing, and alerts pushed together share one flush (group commit).
//!   sled's own background flush (every 500 ms) still runs: it also reclaims
//!   space, and it bounds what kill -9 can lose under a `flush` period.
//! - [`Outbox::ack`] removes one alert, by seq. It is called only for the
//!   PUBACK of that alert (see `upstream`), never before: reading never
//!   removes (no `pop_min`), so at-least-once holds across crashes.
//! - A database that will not open (sled reports corruption, e.g. after a
//!   power cut) is moved aside to `outbox.corrupt-<unix time>` and a fresh
//!   one is started, with a new `db_id`, so ids stay unique; the event is
//!   returned to the caller to log, count and report. The gateway never
//!   crash-loops on it.
//!
//! sled is tuned for a small device: a 4 MiB page cache instead of 1 GiB
//! (RSS grows with it), low-space mode.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::alert::Alert;
use crate::rules::{AlertDraft, Severity};

const TREE: &[u8] = b"outbox";
const ALERT: u8 = b'a';
const NEXT_SEQ: &[u8] = b"m/next_seq";
const DB_ID: &[u8] = b"m/db_id";
const RULES_STATE: &[u8] = b"m/rules_state";

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

/// One stored alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: u64,
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

pub struct Outbox {
    db: sled::Db,
    tree: sled::Tree,
    db_id: String,
    path: PathBuf,
    /// Serializes pushes so seqs are handed out in order.
    next_seq: Mutex<u64>,
    depth: AtomicU64,
    bytes: AtomicU64,
}

/// How much of sled's page cache to keep in memory.
const CACHE_BYTES: u64 = 4 << 20;

fn seq_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ALERT;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn key_seq(k: &[u8]) -> Option<u64> {
    let b: [u8; 8] = k.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

fn u64_value(v: Option<sled::IVec>) -> Option<u64> {
    let b: [u8; 8] = v?.as_ref().try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

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
        let stamp = crate::reading::wall_ms() / 1000;
        let moved_to = dir.join(format!("outbox.corrupt-{stamp}"));
        std::fs::rename(&path, &moved_to).map_err(|source| OutboxError::MoveAside {
            path: path.clone(),
            source,
        })?;
        let o = Outbox::open_at(&path)?;
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
        // Counted once at open; kept up to date in memory afterwards
        // (`Tree::len` would scan every time).
        let mut depth = 0;
        let mut bytes = 0;
        let mut last_seq = None;
        for kv in tree.scan_prefix([ALERT]) {
            let (k, v) = kv.map_err(open_err)?;
            depth += 1;
            bytes += v.len() as u64;
            last_seq = key_seq(&k);
        }
        let stored_next = u64_value(tree.get(NEXT_SEQ).map_err(open_err)?).unwrap_or(1);
        // next_seq is written in the same batch as its alerts, so it is never
        // behind them; the max() only guards against a hand-edited database.
        let next_seq = stored_next.max(last_seq.map_or(1, |s| s + 1));
        Ok(Outbox {
            db,
            tree,
            db_id,
            path: path.to_path_buf(),
            next_seq: Mutex::new(next_seq),
            depth: AtomicU64::new(depth),
            bytes: AtomicU64::new(bytes),
        })
    }

    /// The 6 hex digits identifying this database in alert ids.
    pub fn db_id(&self) -> &str {
        &self.db_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores `drafts` as alerts with consecutive seqs, and `rules_state` if
    /// given, in one atomic batch. Not yet durable: see [`Outbox::flush`].
    pub fn push(
        &self,
        gateway: &str,
        drafts: &[AlertDraft],
        rules_state: Option<&[u8]>,
    ) -> Result<Vec<Alert>, OutboxError> {
        let mut next = self.next_seq.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let mut alerts = Vec::with_capacity(drafts.len());
        let mut added = 0u64;
        let mut seq = *next;
        for d in drafts {
            let alert = Alert::new(d, gateway, &self.db_id, seq);
            // The stored bytes are the published bytes; the size cap for the
            // broker is applied when publishing.
            let payload = serde_json::to_vec(&alert).map_err(|e| OutboxError::Record {
                seq,
                reason: e.to_string(),
            })?;
            added += payload.len() as u64;
            batch.insert(&seq_key(seq), payload);
            alerts.push(alert);
            seq += 1;
        }
        batch.insert(NEXT_SEQ, &seq.to_be_bytes());
        if let Some(state) = rules_state {
            batch.insert(RULES_STATE, state);
        }
        self.tree.apply_batch(batch).map_err(OutboxError::Write)?;
        *next = seq;
        self.depth.fetch_add(drafts.len() as u64, Ordering::Relaxed);
        self.bytes.fetch_add(added, Ordering::Relaxed);
        Ok(alerts)
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
    /// crash or power cut.
    pub async fn flush(&self) -> Result<usize, OutboxError> {
        self.db.flush_async().await.map_err(OutboxError::Write)
    }

    /// Blocking flush, for shutdown and the CLI.
    pub fn flush_blocking(&self) -> Result<usize, OutboxError> {
        self.db.flush().map_err(OutboxError::Write)
    }

    /// Up to `limit` alerts with seq greater than `after` (all when `None`), in seq order.
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
                out.push(Record {
                    seq,
                    payload: v.to_vec(),
                });
            }
        }
        Ok(out)
    }

    /// Removes the alert `seq`: call only on the broker's PUBACK for it.
    /// Returns false when it was not there (already acknowledged).
    pub fn ack(&self, seq: u64) -> Result<bool, OutboxError> {
        match self.tree.remove(seq_key(seq)).map_err(OutboxError::Write)? {
            Some(v) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                self.bytes.fetch_sub(v.len() as u64, Ordering::Relaxed);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Alerts waiting.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// Bytes of alert payloads waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The oldest waiting alert, if any.
    pub fn oldest(&self) -> Result<Option<Record>, OutboxError> {
        Ok(self.after(None, 1)?.into_iter().next())
    }

    /// The seq the next alert will get.
    pub fn next_seq(&self) -> u64 {
        *self.next_seq.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes every waiting alert (`outpost outbox purge`); seqs are not reused.
    pub fn purge(&self) -> Result<u64, OutboxError> {
        let mut n = 0;
        for kv in self.tree.scan_prefix([ALERT]) {
            let (k, _) = kv.map_err(OutboxError::Write)?;
            if let Some(seq) = key_seq(&k)
                && self.ack(seq)?
            {
                n += 1;
            }
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

/// The severity stored in a payload, for bound eviction (lowest first).
pub fn severity_of(payload: &[u8]) -> Option<Severity> {
    #[derive(serde::Deserialize)]
    struct S {
        severity: Severity,
    }
    serde_json::from_slice::<S>(payload)
        .ok()
        .map(|s| s.severity)
}

#[cfg(test)]
mod tests;
