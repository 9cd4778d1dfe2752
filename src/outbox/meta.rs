//! The checkpoint store: sled, and the only code in outpost that imports it.
//!
//! The log is the outbox's source of truth; a checkpoint is what replaying
//! the log up to one place (`pos`) gave, so that segments before it can be
//! removed and a restart replays only what follows. It holds the counters,
//! the pending events, which seqs below `next_seq` are no longer waiting
//! (`dead`), and the rule engine's state, one sled key per (rule, sensor,
//! metric) so a checkpoint writes only the pairs that changed.
//!
//! Keys: `c/state` (JSON of [`Checkpoint`] without the engine state),
//! `p` + engine key (the engine's own bytes). A checkpoint is one sled batch
//! followed by a flush: it is there whole or not at all.
//!
//! sled 0.34 is handled with care (each seen here, on its own files):
//! - its first `ENOSPC` is sticky: after a write fails, [`Meta`] is dropped
//!   and opened again before the next try (the outbox does this);
//! - a damaged `snap.*` or `conf` file makes `open` fail although the log
//!   (sled's own) is intact: they are moved aside and sled rebuilds from its
//!   log, every key intact;
//! - a page cache that defaults to 1 GiB: set to 1 MiB.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::log::Loc;
use super::record::SeqRanges;

const STATE: &[u8] = b"c/state";
const ENGINE: u8 = b'p';
const CACHE_BYTES: u64 = 1 << 20;

/// One stored key of the engine's state and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("outbox checkpoint store {path}: {source}")]
    Sled { path: PathBuf, source: sled::Error },
    #[error(
        "outbox checkpoint store {path} is in use by another process (is another outpost running?)"
    )]
    Locked { path: PathBuf },
    #[error("outbox checkpoint {path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("cannot move {path} aside: {source}")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl MetaError {
    /// Errors that mean the files are damaged (not: locked, no permission).
    fn is_damage(&self) -> bool {
        match self {
            MetaError::Sled { source, .. } => match source {
                sled::Error::Corruption { .. }
                | sled::Error::Unsupported(_)
                | sled::Error::ReportableBug(_) => true,
                sled::Error::Io(io) => matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ),
                _ => false,
            },
            MetaError::Format { .. } => true,
            _ => false,
        }
    }
}

/// Where the log replay resumes and what replaying up to there gave.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Records before this place are reflected here.
    pub pos: (u32, u32),
    pub next_seq: u64,
    pub next_event: u64,
    /// The wait clock and the wall clock when it was taken.
    pub w_ms: i64,
    pub wall_ms: i64,
    pub db_id: String,
    /// Alerts dropped by the bounds, ever, per severity.
    pub dropped: [u64; 3],
    /// Seqs below `next_seq` that no longer wait (acknowledged, dropped,
    /// lost): alerts found in the log with these seqs are not restored.
    pub dead: SeqRanges,
    /// Events not yet acknowledged: number and JSON.
    pub events: Vec<(u64, String)>,
}

impl Checkpoint {
    pub fn pos(&self) -> Loc {
        Loc {
            seg: self.pos.0,
            off: self.pos.1,
        }
    }
}

/// What opening had to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// `snap.*`/`conf` were moved into `kept` and sled rebuilt from its log.
    Rebuilt { kept: PathBuf, reason: String },
    /// The store could not be opened even so: moved to `moved_to`, a fresh
    /// one started (its checkpoint is lost; the log is replayed whole).
    Replaced { moved_to: PathBuf, reason: String },
}

pub struct Meta {
    db: sled::Db,
    path: PathBuf,
}

fn sled_err(path: &Path) -> impl Fn(sled::Error) -> MetaError + '_ {
    move |source| match &source {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock
                || io.raw_os_error() == Some(libc::EAGAIN)
                || io.to_string().contains("could not acquire lock") =>
        {
            MetaError::Locked {
                path: path.to_path_buf(),
            }
        }
        _ => MetaError::Sled {
            path: path.to_path_buf(),
            source,
        },
    }
}

impl Meta {
    /// Opens the store at `path`, repairing it if it must (see the header).
    pub fn open(path: &Path, wall_ms: i64) -> Result<(Meta, Option<Repair>), MetaError> {
        let reason = match Meta::try_open(path) {
            Ok(m) => return Ok((m, None)),
            Err(e) if e.is_damage() => e.to_string(),
            Err(e) => return Err(e),
        };
        // sled rebuilds its page table from its log when these are gone.
        let kept = path.with_file_name(format!(
            "{}.damaged-{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("meta"),
            wall_ms / 1000
        ));
        let mut moved = false;
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name == "conf" || name.starts_with("snap.") {
                    let _ = std::fs::create_dir_all(&kept);
                    if std::fs::rename(e.path(), kept.join(&*name)).is_ok() {
                        moved = true;
                    }
                }
            }
        }
        if moved && let Ok(m) = Meta::try_open(path) {
            return Ok((m, Some(Repair::Rebuilt { kept, reason })));
        }
        let moved_to = path.with_file_name(format!(
            "{}.corrupt-{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("meta"),
            wall_ms / 1000
        ));
        std::fs::rename(path, &moved_to).map_err(|source| MetaError::MoveAside {
            path: path.to_path_buf(),
            source,
        })?;
        let m = Meta::try_open(path)?;
        Ok((m, Some(Repair::Replaced { moved_to, reason })))
    }

    fn try_open(path: &Path) -> Result<Meta, MetaError> {
        // sled has been seen to panic on some damaged files instead of
        // returning an error; either way the store is unusable.
        let opened = std::panic::catch_unwind(|| {
            sled::Config::new()
                .path(path)
                .cache_capacity(CACHE_BYTES)
                .mode(sled::Mode::LowSpace)
                .flush_every_ms(Some(1000))
                .open()
        });
        let db = match opened {
            Ok(r) => r.map_err(sled_err(path))?,
            Err(_) => {
                return Err(MetaError::Format {
                    path: path.to_path_buf(),
                    reason: "sled panicked while opening it".into(),
                });
            }
        };
        let m = Meta {
            db,
            path: path.to_path_buf(),
        };
        // A checkpoint that does not parse is damage, found now rather than
        // half-way through recovery.
        m.load()?;
        Ok(m)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last checkpoint, if any.
    pub fn load(&self) -> Result<Option<Checkpoint>, MetaError> {
        let Some(v) = self.db.get(STATE).map_err(sled_err(&self.path))? else {
            return Ok(None);
        };
        serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| MetaError::Format {
                path: self.path.clone(),
                reason: e.to_string(),
            })
    }

    /// The engine state of the last checkpoint: every key and value.
    pub fn engine_state(&self) -> Result<Vec<Entry>, MetaError> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix([ENGINE]) {
            let (k, v) = kv.map_err(sled_err(&self.path))?;
            out.push((k[1..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Writes a checkpoint and the engine state changes since the last
    /// one, in one batch, and makes them durable.
    pub fn write(
        &self,
        cp: &Checkpoint,
        engine: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<(), MetaError> {
        let mut batch = sled::Batch::default();
        // Serializing plain numbers and strings cannot fail.
        batch.insert(STATE, serde_json::to_vec(cp).unwrap_or_default());
        for (k, v) in engine {
            let mut key = Vec::with_capacity(k.len() + 1);
            key.push(ENGINE);
            key.extend_from_slice(k);
            match v {
                Some(v) => batch.insert(key, v.as_slice()),
                None => batch.remove(key),
            }
        }
        self.db.apply_batch(batch).map_err(sled_err(&self.path))?;
        self.db.flush().map_err(sled_err(&self.path))?;
        Ok(())
    }

    /// Bytes sled's files take.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(next_seq: u64) -> Checkpoint {
        Checkpoint {
            pos: (3, 4096),
            next_seq,
            next_event: 2,
            w_ms: 10,
            wall_ms: 1_700_000_000_000,
            db_id: "abc123".into(),
            dropped: [1, 0, 0],
            dead: vec![[1, 5]],
            events: vec![(1, "{}".into())],
        }
    }

    #[test]
    fn a_checkpoint_and_engine_changes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        {
            let (m, repair) = Meta::open(&path, 0).unwrap();
            assert!(repair.is_none());
            assert_eq!(m.load().unwrap(), None);
            m.write(
                &cp(7),
                &[
                    (b"a".to_vec(), Some(b"1".to_vec())),
                    (b"b".to_vec(), Some(b"2".to_vec())),
                ],
            )
            .unwrap();
            m.write(&cp(9), &[(b"a".to_vec(), None)]).unwrap();
        }
        let (m, _) = reopen(&path);
        assert_eq!(m.load().unwrap(), Some(cp(9)));
        assert_eq!(
            m.engine_state().unwrap(),
            vec![(b"b".to_vec(), b"2".to_vec())]
        );
    }

    /// sled releases its file lock shortly after the last handle drops.
    fn reopen(path: &Path) -> (Meta, Option<Repair>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Meta::open(path, 0) {
                Err(MetaError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::yield_now();
                }
                r => return r.unwrap(),
            }
        }
    }

    #[test]
    fn a_damaged_conf_and_snapshot_are_moved_aside_and_sled_rebuilds_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        {
            let (m, _) = Meta::open(&path, 0).unwrap();
            m.write(&cp(42), &[(b"pair".to_vec(), Some(b"firing".to_vec()))])
                .unwrap();
        }
        std::fs::write(path.join("conf"), b"segment_size: banana\n").unwrap();
        for e in std::fs::read_dir(&path).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("snap.") {
                std::fs::write(e.path(), b"garbage").unwrap();
            }
        }
        let (m, repair) = reopen(&path);
        assert!(matches!(repair, Some(Repair::Rebuilt { .. })), "{repair:?}");
        assert_eq!(m.load().unwrap(), Some(cp(42)));
        assert_eq!(
            m.engine_state().unwrap(),
            vec![(b"pair".to_vec(), b"firing".to_vec())]
        );
    }

    #[test]
    fn a_garbled_store_is_repaired_or_replaced_and_usable_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        {
            let (m, _) = Meta::open(&path, 0).unwrap();
            m.write(&cp(42), &[]).unwrap();
        }
        // Every file garbled, as a bad power cut on an SD card might.
        for e in std::fs::read_dir(&path).unwrap().flatten() {
            if e.path().is_file() {
                let len = e.metadata().unwrap().len() as usize;
                std::fs::write(e.path(), vec![0xA5u8; len.max(64)]).unwrap();
            }
        }
        let (m, repair) = reopen(&path);
        // sled 0.34 rebuilds an empty store from garbage once `conf` is
        // gone: the checkpoint is lost (the outbox then replays its whole
        // log), and the damage is reported either way.
        let kept = match repair {
            Some(Repair::Rebuilt { kept, .. }) => kept,
            Some(Repair::Replaced { moved_to, .. }) => moved_to,
            None => panic!("the damage went unnoticed"),
        };
        assert!(kept.exists());
        assert_eq!(m.load().unwrap(), None);
        m.write(&cp(43), &[]).unwrap();
        assert_eq!(m.load().unwrap(), Some(cp(43)));
    }
}
