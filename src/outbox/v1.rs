//! The earlier outbox format (outpost 0.1: one sled database directly in
//! `state_dir/outbox`), read once to import it into the log.
//!
//! Its keys: `a` + seq (u64 BE) → a 10-byte header (format `1`, severity,
//! created wall ms i64 BE) and the published payload; `e` + n → an event's
//! JSON; `m/next_seq`, `m/db_id`, `m/dropped/{severity}` (u64 BE),
//! `m/rules_state` (the engine's whole snapshot, JSON).
//!
//! The import is crash-safe: the old database is first renamed to
//! `outbox.v1` (atomic), imported into a fresh `outbox/`, and removed only
//! after the new outbox's first checkpoint; a crash half-way imports again
//! from the start.

use std::path::{Path, PathBuf};

use super::event::{BySeverity, OutboxEvent};
use super::record::severity_from_byte;
use super::{OutboxError, index::SEVERITIES};
use crate::rules::{AlertState, Severity};

/// An alert of the earlier format.
pub struct LegacyAlert {
    pub seq: u64,
    pub severity: Severity,
    pub state: AlertState,
    pub created_ms: i64,
    pub rule: String,
    pub sensor: String,
    pub payload: Vec<u8>,
}

pub struct Legacy {
    pub path: PathBuf,
    tree: sled::Tree,
    _db: sled::Db,
    pub db_id: String,
    pub next_seq: u64,
    pub dropped: BySeverity,
    pub events: Vec<OutboxEvent>,
    pub rules_state: Option<Vec<u8>>,
}

fn u64_be(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

fn import_err(path: &Path) -> impl Fn(sled::Error) -> OutboxError + '_ {
    move |e| OutboxError::Import {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// If `root` (or a half-imported `outbox.v1` beside it) is an outbox of
/// the earlier format, moves it aside and opens it for import.
pub fn take_legacy(dir: &Path, root: &Path, _wall_ms: i64) -> Result<Option<Legacy>, OutboxError> {
    let old = dir.join("outbox.v1");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OutboxError::Io { path, source }
    };
    if root.join("db").is_file() && root.join("conf").is_file() {
        std::fs::rename(root, &old).map_err(io(root))?;
    } else if old.is_dir() {
        // A crash during an earlier import: start it over.
        if root.exists() {
            std::fs::remove_dir_all(root).map_err(io(root))?;
        }
    } else {
        return Ok(None);
    }
    let db = sled::Config::new()
        .path(&old)
        .cache_capacity(1 << 20)
        .open()
        .map_err(import_err(&old))?;
    let tree = db.open_tree(b"outbox").map_err(import_err(&old))?;
    let get = |k: &[u8]| tree.get(k).map_err(import_err(&old));
    let db_id = get(b"m/db_id")?
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_else(super::new_db_id);
    let mut next_seq = get(b"m/next_seq")?.and_then(|v| u64_be(&v)).unwrap_or(1);
    if let Some(kv) = tree.scan_prefix([b'a']).next_back() {
        let (k, _) = kv.map_err(import_err(&old))?;
        if let Some(s) = k.get(1..).and_then(u64_be) {
            next_seq = next_seq.max(s + 1);
        }
    }
    let mut dropped = BySeverity::default();
    for s in SEVERITIES {
        let n = get(format!("m/dropped/{s}").as_bytes())?
            .and_then(|v| u64_be(&v))
            .unwrap_or(0);
        dropped.add(s, n);
    }
    let mut events = Vec::new();
    for kv in tree.scan_prefix([b'e']) {
        let (_, v) = kv.map_err(import_err(&old))?;
        if let Ok(e) = serde_json::from_slice(&v) {
            events.push(e);
        }
    }
    let rules_state = get(b"m/rules_state")?.map(|v| v.to_vec());
    Ok(Some(Legacy {
        path: old,
        tree,
        _db: db,
        db_id,
        next_seq,
        dropped,
        events,
        rules_state,
    }))
}

impl Legacy {
    /// The waiting alerts, in seq order, `chunk` at a time (memory stays
    /// small whatever the backlog).
    pub fn for_each_chunk(
        &self,
        chunk: usize,
        mut f: impl FnMut(&[LegacyAlert]) -> Result<(), OutboxError>,
    ) -> Result<(), OutboxError> {
        let mut buf = Vec::with_capacity(chunk);
        for kv in self.tree.scan_prefix([b'a']) {
            let (k, v) = kv.map_err(import_err(&self.path))?;
            let Some(seq) = k.get(1..).and_then(u64_be) else {
                continue;
            };
            if v.len() < 10 || v[0] != 1 {
                continue;
            }
            let severity = severity_from_byte(v[1]).unwrap_or(Severity::Info);
            let created_ms = v.get(2..10).and_then(u64_be).unwrap_or(0) as i64;
            let payload = v[10..].to_vec();
            #[derive(serde::Deserialize)]
            struct Names {
                rule: String,
                sensor: String,
                state: AlertState,
            }
            let names: Names = serde_json::from_slice(&payload).unwrap_or(Names {
                rule: String::new(),
                sensor: String::new(),
                state: AlertState::Firing,
            });
            buf.push(LegacyAlert {
                seq,
                severity,
                state: names.state,
                created_ms,
                rule: names.rule,
                sensor: names.sensor,
                payload,
            });
            if buf.len() >= chunk {
                f(&buf)?;
                buf.clear();
            }
        }
        if !buf.is_empty() {
            f(&buf)?;
        }
        Ok(())
    }

    /// Removes the imported database (after the new outbox's checkpoint).
    pub fn remove(self) {
        let path = self.path.clone();
        drop(self);
        if let Err(e) = std::fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the imported outbox; remove it by hand");
        }
    }
}
