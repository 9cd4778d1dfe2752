//! The alert log: append-only segment files, the outbox's write-ahead log.
//!
//! Alerts, their acknowledgements, drops, events and the rule engine's
//! transitions are appended here as *records*; what is appended together
//! is made durable by one `fdatasync` (group commit). This module knows
//! nothing of what records mean: it frames them, places them, reads them
//! back, and finds damage.
//!
//! # Files
//!
//! `log/` holds segments named by number, `00000001.seg`, `00000002.seg`,
//! … Appends go to the newest (the *active* segment); once it holds
//! `segment_bytes`, the next record starts a new segment. Whole segments are
//! removed by the outbox when nothing in them is needed any more. A segment
//! starts with a 32-byte header: magic `OUTPOSTL`, format version (u32),
//! segment number (u32), creation wall time (i64 ms), 4 reserved bytes and
//! the CRC-32 of the first 28 bytes.
//!
//! # Records
//!
//! `len` (u32 LE) · `crc` (u32 LE, CRC-32 of the body) · body (`len` bytes,
//! at least one). Little-endian throughout.
//!
//! A record of at most one page (4 KiB) never crosses a page boundary: when
//! it does not fit in what is left of the current page, it starts at the
//! next one and the gap stays zero. An alert committed alone is thus one
//! page written, not two (SD card wear, and `fdatasync` time). A reader
//! that finds a zero `len` before a page boundary skips to the boundary.
//!
//! # Damage
//!
//! Opening reads every segment and checks every record's CRC. Bytes that
//! are not a valid record (a torn write at the tail after a power cut, a
//! truncated file, flipped bits) are reported as [`Damage`] with their
//! place, and the scan resynchronises on the next valid record: one bad
//! sector costs the records in it, not the rest of the log. A damaged
//! segment is kept aside (`*.seg.damaged-<unix s>`, the last
//! [`KEEP_DAMAGED`]) and rewritten with its valid records only, so the
//! damage is reported once and appends never follow garbage.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Page size assumed for placement (the common one; a larger real page only
/// makes the placement less effective, never wrong).
pub const PAGE: u64 = 4096;
/// Segment header size.
pub const HEADER: u64 = 32;
/// Record frame: len + crc.
pub const FRAME: u64 = 8;
/// Largest record body accepted when reading (a corrupt `len` cannot make
/// the reader allocate more).
pub const MAX_RECORD: u64 = 64 << 20;
/// Damaged segment copies kept for inspection.
pub const KEEP_DAMAGED: usize = 4;

const MAGIC: &[u8; 8] = b"OUTPOSTL";
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not an outpost log segment ({reason})")]
    Header { path: PathBuf, reason: &'static str },
}

impl LogError {
    /// The disk (or its quota) is full.
    pub fn is_no_space(&self) -> bool {
        match self {
            LogError::Io { source, .. } => {
                source.raw_os_error() == Some(libc::ENOSPC)
                    || source.raw_os_error() == Some(libc::EDQUOT)
                    || source.kind() == io::ErrorKind::StorageFull
            }
            LogError::Header { .. } => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a record body starts: segment number and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Loc {
    pub seg: u32,
    pub off: u32,
}

/// Bytes of a segment that hold no valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub seg: u32,
    /// First bad byte.
    pub from: u64,
    /// One past the last bad byte (the next valid record, or the end).
    pub to: u64,
    /// Where the damage sits among the records as [`Log::open`] reported
    /// them (the segment is rewritten without it, so records after it
    /// moved): records at a lower place came before it, the others after.
    pub at: Loc,
    /// Where the damaged original was kept, if it could be.
    pub kept: Option<PathBuf>,
}

struct Segment {
    file: Arc<File>,
    /// Bytes used: the end of the last record (the append offset for the
    /// active segment).
    len: u64,
}

/// The segment files.
pub struct Log {
    dir: PathBuf,
    segments: BTreeMap<u32, Segment>,
    /// Segments written since the last `sync`.
    unsynced: Vec<u32>,
    /// A new segment must be created before the next append (after a
    /// failure to create one, or at open: appends never follow old data).
    need_new: bool,
    segment_bytes: u64,
    /// Appends so far (tells a sync plan whether appends happened meanwhile).
    appends: u64,
}

/// What [`Log::sync_plan`] captured.
pub struct SyncPlan {
    files: Vec<(u32, Arc<File>)>,
    appends: u64,
}

impl SyncPlan {
    /// `fdatasync`s the files (no lock needed).
    pub fn run(&self) -> Result<(), LogError> {
        for (n, f) in &self.files {
            f.sync_data().map_err(|source| LogError::Io {
                path: PathBuf::from(seg_name(*n)),
                source,
            })?;
        }
        Ok(())
    }
}

/// The next placement of a record of `len` bytes (frame included) at `tail`.
pub fn place(tail: u64, len: u64) -> u64 {
    let room = PAGE - tail % PAGE;
    if len <= PAGE && len > room {
        tail + room
    } else {
        tail
    }
}

fn seg_name(n: u32) -> String {
    format!("{n:08}.seg")
}

fn parse_seg_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn header_bytes(n: u32, wall_ms: i64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&n.to_le_bytes());
    h[16..24].copy_from_slice(&wall_ms.to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

fn check_header(h: &[u8], n: u32) -> Result<(), &'static str> {
    if h.len() < HEADER as usize {
        return Err("too short");
    }
    if &h[..8] != MAGIC {
        return Err("bad magic");
    }
    let crc = u32::from_le_bytes([h[28], h[29], h[30], h[31]]);
    if crc32fast::hash(&h[..28]) != crc {
        return Err("header checksum");
    }
    if u32::from_le_bytes([h[8], h[9], h[10], h[11]]) != VERSION {
        return Err("unknown version");
    }
    if u32::from_le_bytes([h[12], h[13], h[14], h[15]]) != n {
        return Err("segment number does not match its name");
    }
    Ok(())
}

/// One valid record found by [`scan`]: its frame starts at `at`, its body
/// ends at `end`.
#[derive(Debug, Clone, Copy)]
struct Found {
    at: u64,
    end: u64,
}

/// Finds the valid records of a segment's bytes (after the header) and the
/// damaged stretches between them. Pure.
fn scan(data: &[u8]) -> (Vec<Found>, Vec<(u64, u64)>) {
    let len = data.len() as u64;
    let mut found = Vec::new();
    let mut bad = Vec::new();
    let mut pos = HEADER;
    let mut bad_from: Option<u64> = None;
    while pos < len {
        match record_at(data, pos) {
            Some(end) => {
                if let Some(from) = bad_from.take() {
                    bad.push((from, pos));
                }
                found.push(Found { at: pos, end });
                pos = end;
            }
            None if bad_from.is_none() && is_padding(data, pos) => {
                pos += PAGE - pos % PAGE;
            }
            // Space set aside for the segment and not yet written.
            None if bad_from.is_none() && data[pos as usize..].iter().all(|b| *b == 0) => break,
            None => {
                bad_from.get_or_insert(pos);
                pos += 1;
            }
        }
    }
    if let Some(from) = bad_from {
        bad.push((from, len));
    }
    (found, bad)
}

/// The valid records of `data` laid out again from the header on, as
/// [`Log::append`] would place them: a segment without its damage.
fn relaid(data: &[u8], found: &[Found], header: &[u8]) -> (Vec<u8>, Vec<Found>) {
    let mut out = header.to_vec();
    let mut placed = Vec::with_capacity(found.len());
    for f in found {
        let len = f.end - f.at;
        let at = place(out.len() as u64, len);
        out.resize(at as usize, 0);
        out.extend_from_slice(&data[f.at as usize..f.end as usize]);
        placed.push(Found { at, end: at + len });
    }
    (out, placed)
}

/// Zeros from `pos` (not on a page boundary) to the next boundary or the
/// end, followed by data: the gap left by record placement.
fn is_padding(data: &[u8], pos: u64) -> bool {
    if pos.is_multiple_of(PAGE) {
        return false;
    }
    let end = (pos + PAGE - pos % PAGE).min(data.len() as u64);
    end < data.len() as u64 && data[pos as usize..end as usize].iter().all(|b| *b == 0)
}

/// The end of a valid record at `pos`, if there is one.
fn record_at(data: &[u8], pos: u64) -> Option<u64> {
    let p = pos as usize;
    let frame = data.get(p..p + FRAME as usize)?;
    let len = u64::from(u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]));
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let end = pos + FRAME + len;
    let body = data.get((pos + FRAME) as usize..end as usize)?;
    (crc32fast::hash(body) == crc).then_some(end)
}

impl Log {
    /// Opens the log in `dir` (created if missing), calling `visit` with the
    /// place and body of every valid record, in order. Damaged segments are
    /// kept aside and rewritten (see the module header); their damage is
    /// returned.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        wall_ms: i64,
        mut visit: impl FnMut(Loc, &[u8]),
    ) -> Result<(Log, Vec<Damage>), LogError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            if let Some(n) = entry.file_name().to_str().and_then(parse_seg_name) {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        let mut log = Log {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            unsynced: Vec::new(),
            need_new: true,
            segment_bytes: segment_bytes.max(PAGE * 4),
            appends: 0,
        };
        let mut damage = Vec::new();
        for n in numbers {
            let path = dir.join(seg_name(n));
            let mut data = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(io_err(&path))?;
            if data.is_empty() {
                // Created, never written (a crash right after creation).
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            if let Err(reason) = check_header(&data, n) {
                // A segment whose header is gone: everything in it is
                // damage; its records may still be found by the scan.
                damage.push(Damage {
                    seg: n,
                    from: 0,
                    to: HEADER.min(data.len() as u64),
                    at: Loc { seg: n, off: 0 },
                    kept: None,
                });
                tracing::warn!(segment = %path.display(), reason, "outbox log segment header is damaged");
            }
            let header_bad = damage.last().is_some_and(|d| d.seg == n && d.from == 0);
            let (found, bad) = scan(&data);
            let (data, found) = if bad.is_empty() && !header_bad {
                (data, found)
            } else {
                // Keep the original, then write the segment again with its
                // valid records only, so the damage is reported once and
                // appends never follow garbage.
                let kept = log.keep_aside(n, &path, wall_ms);
                if header_bad && let Some(d) = damage.last_mut() {
                    d.kept = kept.clone();
                }
                let (clean, placed) = relaid(&data, &found, &header_bytes(n, wall_ms));
                for (from, to) in bad {
                    // Just after the last good record before it, as laid again.
                    let before = found.iter().rposition(|f| f.at < from);
                    let at = before.map_or(HEADER, |i| placed[i].end);
                    damage.push(Damage {
                        seg: n,
                        from,
                        to,
                        at: Loc {
                            seg: n,
                            off: u32::try_from(at).unwrap_or(u32::MAX),
                        },
                        kept: kept.clone(),
                    });
                }
                let tmp = dir.join(format!("{}.tmp", seg_name(n)));
                write_synced(&tmp, &clean)?;
                std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
                sync_dir(dir)?;
                (clean, placed)
            };
            for f in &found {
                visit(
                    Loc {
                        seg: n,
                        off: u32::try_from(f.at + FRAME).unwrap_or(u32::MAX),
                    },
                    &data[(f.at + FRAME) as usize..f.end as usize],
                );
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            log.segments.insert(
                n,
                Segment {
                    file: Arc::new(file),
                    len: found.last().map_or(HEADER, |f| f.end),
                },
            );
        }
        Ok((log, damage))
    }

    /// Renames a damaged segment aside (best effort), removing the oldest
    /// copies beyond [`KEEP_DAMAGED`].
    fn keep_aside(&self, n: u32, path: &Path, wall_ms: i64) -> Option<PathBuf> {
        let to = self
            .dir
            .join(format!("{}.damaged-{}", seg_name(n), wall_ms / 1000));
        if std::fs::copy(path, &to).is_err() {
            return None;
        }
        let mut kept: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|s| s.to_str())
                    .is_some_and(|s| s.contains(".seg.damaged-"))
            })
            .collect();
        kept.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        while kept.len() > KEEP_DAMAGED {
            let old = kept.remove(0);
            if old != to {
                let _ = std::fs::remove_file(old);
            }
        }
        Some(to)
    }

    /// Appends one record (not yet durable: see [`Log::sync`]). On an
    /// error nothing is appended: a partial write is cut off, and the next
    /// append goes where this one would have.
    pub fn append(&mut self, body: &[u8], wall_ms: i64) -> Result<Loc, LogError> {
        let len = FRAME + body.len() as u64;
        if self.needs_roll(body.len()) {
            self.roll(wall_ms)?;
        }
        let (n, seg) = self.active().expect("roll made an active segment");
        let at = place(seg.len, len);
        let mut buf = Vec::with_capacity(len as usize);
        buf.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        buf.extend_from_slice(body);
        let file = seg.file.clone();
        let old_len = seg.len;
        if let Err(e) = file.write_all_at(&buf, at) {
            // Whatever part of it reached the file would be found as damage
            // at the next open: cut it (freeing space helps, too).
            let _ = file.set_len(old_len);
            return Err(LogError::Io {
                path: self.dir.join(seg_name(n)),
                source: e,
            });
        }
        if let Some(seg) = self.segments.get_mut(&n) {
            seg.len = at + len;
        }
        if !self.unsynced.contains(&n) {
            self.unsynced.push(n);
        }
        self.appends += 1;
        Ok(Loc {
            seg: n,
            off: u32::try_from(at + FRAME).unwrap_or(u32::MAX),
        })
    }

    fn active(&self) -> Option<(u32, &Segment)> {
        self.segments.last_key_value().map(|(n, s)| (*n, s))
    }

    /// A record body of `len` bytes would start a new segment.
    pub fn needs_roll(&self, len: usize) -> bool {
        let len = FRAME + len as u64;
        match self.active() {
            None => true,
            Some((_, seg)) => {
                self.need_new
                    || (seg.len > HEADER && place(seg.len, len) + len > self.segment_bytes)
            }
        }
    }

    /// Starts a new segment.
    pub fn roll(&mut self, wall_ms: i64) -> Result<(), LogError> {
        // The segment it replaces gives back what it set aside and did not use.
        if let Some((_, prev)) = self.active() {
            let _ = prev.file.set_len(prev.len);
        }
        let n = self.segments.last_key_value().map_or(1, |(n, _)| n + 1);
        let path = self.dir.join(seg_name(n));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let set_aside = preallocate(&file, self.segment_bytes);
        let written = set_aside.and_then(|()| file.write_all_at(&header_bytes(n, wall_ms), 0));
        if let Err(e) = written {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(LogError::Io { path, source: e });
        }
        // The previous segment's records must reach the disk even though
        // appends moved on: `sync` syncs every segment written since the last.
        self.segments.insert(
            n,
            Segment {
                file: Arc::new(file),
                len: HEADER,
            },
        );
        if !self.unsynced.contains(&n) {
            self.unsynced.push(n);
        }
        self.need_new = false;
        // The new file's name must survive a power cut too.
        sync_dir(&self.dir)
    }

    /// Makes every append so far durable (`fdatasync` of each segment
    /// written since the last call). If this returns Ok, they survive a
    /// crash or power cut.
    pub fn sync(&mut self) -> Result<(), LogError> {
        while let Some(&n) = self.unsynced.first() {
            if let Some(seg) = self.segments.get(&n) {
                seg.file
                    .sync_data()
                    .map_err(io_err(&self.dir.join(seg_name(n))))?;
            }
            self.unsynced.remove(0);
        }
        Ok(())
    }

    /// Captures what a sync must cover, so the `fdatasync` can run without
    /// the caller's lock; hand the plan back to [`Log::synced`] afterwards.
    pub fn sync_plan(&self) -> SyncPlan {
        SyncPlan {
            files: self
                .unsynced
                .iter()
                .filter_map(|n| self.segments.get(n).map(|s| (*n, s.file.clone())))
                .collect(),
            appends: self.appends,
        }
    }

    /// Marks what `plan` covered as durable (appends made while it ran stay
    /// pending).
    pub fn synced(&mut self, plan: SyncPlan) {
        let active = self.active().map(|(n, _)| n);
        let same = self.appends == plan.appends;
        self.unsynced.retain(|n| {
            let covered = plan.files.iter().any(|(m, _)| m == n);
            !(covered && (same || Some(*n) != active))
        });
    }

    pub fn set_segment_bytes(&mut self, bytes: u64) {
        self.segment_bytes = bytes.max(PAGE * 4);
    }

    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// Appends are waiting for [`Log::sync`].
    pub fn is_dirty(&self) -> bool {
        !self.unsynced.is_empty()
    }

    /// Reads `len` bytes at `loc` (a body, or part of one).
    pub fn read(&self, loc: Loc, len: usize) -> Result<Vec<u8>, LogError> {
        let Some(file) = self.file(loc.seg) else {
            return Err(LogError::Io {
                path: self.dir.join(seg_name(loc.seg)),
                source: io::Error::new(io::ErrorKind::NotFound, "segment removed"),
            });
        };
        read_at(&file, loc.off as u64, len).map_err(io_err(&self.dir.join(seg_name(loc.seg))))
    }

    /// The segment's file, for reads outside a lock.
    pub fn file(&self, seg: u32) -> Option<Arc<File>> {
        self.segments.get(&seg).map(|s| s.file.clone())
    }

    /// The segment appends go to.
    pub fn active_segment(&self) -> Option<u32> {
        if self.need_new {
            return None;
        }
        self.active().map(|(n, _)| n)
    }

    /// Where the next append would go: everything before it is written.
    pub fn tail(&self) -> Loc {
        match self.active() {
            Some((n, s)) if !self.need_new => Loc {
                seg: n,
                off: u32::try_from(s.len).unwrap_or(u32::MAX),
            },
            Some((n, _)) => Loc { seg: n + 1, off: 0 },
            None => Loc { seg: 1, off: 0 },
        }
    }

    /// The end of the newest segment's data (whatever `need_new` says).
    pub fn end(&self) -> Loc {
        match self.active() {
            Some((n, s)) => Loc {
                seg: n,
                off: u32::try_from(s.len).unwrap_or(u32::MAX),
            },
            None => Loc { seg: 0, off: 0 },
        }
    }

    /// Segment numbers, oldest first.
    pub fn segments(&self) -> impl Iterator<Item = u32> + '_ {
        self.segments.keys().copied()
    }

    /// Bytes of a segment (0 if unknown).
    pub fn segment_len(&self, seg: u32) -> u64 {
        self.segments.get(&seg).map_or(0, |s| s.len)
    }

    /// Removes a whole segment (never the active one).
    pub fn remove(&mut self, seg: u32) -> Result<(), LogError> {
        if self.active_segment() == Some(seg) {
            return Ok(());
        }
        let path = self.dir.join(seg_name(seg));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::Io { path, source: e }),
        }
        self.segments.remove(&seg);
        self.unsynced.retain(|n| *n != seg);
        Ok(())
    }

    /// Bytes the segments' records take.
    pub fn used_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.len).sum()
    }

    /// Bytes the segment files take on disk (space set aside included).
    pub fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.segments
            .values()
            .map(|s| {
                s.file
                    .metadata()
                    .map_or(s.len, |m| (m.blocks() * 512).max(s.len))
            })
            .sum()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Sets aside `bytes` for a new file, or as much as the disk has down to
/// 16 KiB; a filesystem that cannot set space aside just grows the file.
fn preallocate(file: &File, bytes: u64) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let mut want = bytes;
    loop {
        let len = libc::off_t::try_from(want).unwrap_or(libc::off_t::MAX);
        // SAFETY: fallocate on a descriptor we own, with a valid length.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOSPC) if want > 16 << 10 => want /= 2,
            Some(libc::ENOSPC) => return Err(e),
            _ => return Ok(()),
        }
    }
}

/// Reads exactly `len` bytes at `off`.
pub fn read_at(file: &File, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, off)?;
    Ok(buf)
}

/// Writes a whole file and makes it durable.
pub fn write_synced(path: &Path, data: &[u8]) -> Result<(), LogError> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all_at(data, 0).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Makes a directory's entries (new, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Opened = (Log, Vec<(Loc, Vec<u8>)>, Vec<Damage>);

    fn open(dir: &Path) -> Opened {
        let mut seen = Vec::new();
        let (log, damage) = Log::open(dir, 64 * 1024, 1_700_000_000_000, |loc, body| {
            seen.push((loc, body.to_vec()))
        })
        .unwrap();
        (log, seen, damage)
    }

    fn body(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i * 31 + j) as u8 | 1).collect()
    }

    #[test]
    fn records_come_back_in_order_after_reopen_and_appends_start_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, seen, damage) = open(dir.path());
        assert!(seen.is_empty() && damage.is_empty());
        let mut locs = Vec::new();
        for i in 0..50 {
            locs.push(log.append(&body(i, 10 + i * 7), 0).unwrap());
        }
        log.sync().unwrap();
        drop(log);
        let (mut log, seen, damage) = open(dir.path());
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(seen.len(), 50);
        for (i, (loc, b)) in seen.iter().enumerate() {
            assert_eq!(*loc, locs[i]);
            assert_eq!(*b, body(i, 10 + i * 7));
            assert_eq!(log.read(*loc, b.len()).unwrap(), *b);
        }
        let next = log.append(b"after", 0).unwrap();
        assert!(next.seg > locs[49].seg, "appends never follow old data");
    }

    #[test]
    fn a_record_of_a_page_or_less_never_crosses_a_page_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(dir.path());
        for i in 0..300 {
            let b = body(i, 100 + (i * 37) % 900);
            let loc = log.append(&b, 0).unwrap();
            let start = u64::from(loc.off) - FRAME;
            let end = u64::from(loc.off) + b.len() as u64;
            assert_eq!(
                start / PAGE,
                (end - 1) / PAGE,
                "record {i} at {start}..{end}"
            );
        }
        log.sync().unwrap();
        drop(log);
        let (_, seen, damage) = open(dir.path());
        assert!(damage.is_empty(), "padding is not damage: {damage:?}");
        assert_eq!(seen.len(), 300);
    }

    #[test]
    fn segments_roll_at_their_size_and_can_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(dir.path());
        for i in 0..200 {
            log.append(&body(i, 1000), 0).unwrap();
        }
        log.sync().unwrap();
        drop(log);
        let (mut log, seen, _) = open(dir.path());
        let segs: Vec<u32> = log.segments().collect();
        assert!(segs.len() >= 3, "{segs:?}");
        for s in &segs {
            assert!(log.segment_len(*s) <= 64 * 1024);
        }
        let in_first = seen.iter().filter(|(l, _)| l.seg == segs[0]).count();
        assert!(in_first > 0);
        log.remove(segs[0]).unwrap();
        drop(log);
        let (_, seen, damage) = open(dir.path());
        assert!(damage.is_empty());
        assert!(seen.iter().all(|(l, _)| l.seg != segs[0]));
        assert_eq!(seen.len(), 200 - in_first);
    }

    #[test]
    fn a_cut_at_any_byte_keeps_every_whole_record_before_it_and_reports_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(dir.path());
        let bodies: Vec<Vec<u8>> = (0..12).map(|i| body(i, 50 + i * 40)).collect();
        let mut ends = Vec::new();
        for b in &bodies {
            let loc = log.append(b, 0).unwrap();
            ends.push(u64::from(loc.off) + b.len() as u64);
        }
        log.sync().unwrap();
        let seg = log.segments().next().unwrap();
        let path = dir.path().join(seg_name(seg));
        drop(log);
        let original = std::fs::read(&path).unwrap();
        let data_end = *ends.last().unwrap() as usize + 100;
        for cut in (HEADER as usize..data_end.min(original.len())).step_by(7) {
            let d = tempfile::tempdir().unwrap();
            std::fs::write(d.path().join(seg_name(seg)), &original[..cut]).unwrap();
            let (_, seen, damage) = open(d.path());
            let whole = ends.iter().filter(|e| **e <= cut as u64).count();
            assert_eq!(seen.len(), whole, "cut at {cut}");
            for (i, (_, b)) in seen.iter().enumerate() {
                assert_eq!(*b, bodies[i]);
            }
            // Clean: nothing but zeros (placement gaps, space set aside)
            // between the last whole record and the cut.
            let last_end = ends
                .iter()
                .filter(|e| **e <= cut as u64)
                .max()
                .copied()
                .unwrap_or(HEADER);
            let clean_cut = original[last_end as usize..cut].iter().all(|b| *b == 0);
            assert_eq!(damage.is_empty(), clean_cut, "cut at {cut}: {damage:?}");
            // Reported once: the segment was rewritten without the damage.
            let (_, again, damage2) = open(d.path());
            assert_eq!(again.len(), whole);
            assert!(damage2.is_empty(), "cut at {cut}: reported again");
        }
    }

    #[test]
    fn flipped_bytes_cost_the_record_they_hit_and_later_records_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(dir.path());
        let bodies: Vec<Vec<u8>> = (0..20).map(|i| body(i, 300)).collect();
        let mut locs = Vec::new();
        for b in &bodies {
            locs.push(log.append(b, 0).unwrap());
        }
        log.sync().unwrap();
        let path = dir.path().join(seg_name(locs[0].seg));
        drop(log);
        let mut data = std::fs::read(&path).unwrap();
        // Flip a byte inside record 7's body and in record 13's frame.
        data[locs[7].off as usize + 100] ^= 0x55;
        data[locs[13].off as usize - 3] ^= 0x01;
        std::fs::write(&path, &data).unwrap();
        let (_, seen, damage) = open(dir.path());
        let got: Vec<&Vec<u8>> = seen.iter().map(|(_, b)| b).collect();
        let want: Vec<&Vec<u8>> = bodies
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 7 && *i != 13)
            .map(|(_, b)| b)
            .collect();
        assert_eq!(got, want);
        assert_eq!(damage.len(), 2, "{damage:?}");
        assert!(damage.iter().all(|d| d.kept.is_some()));
        assert!(damage[0].from <= u64::from(locs[7].off) && damage[0].to > u64::from(locs[7].off));
    }

    #[test]
    fn garbage_with_no_valid_record_is_all_damage_and_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(seg_name(3)), vec![0xA5u8; 10_000]).unwrap();
        let (mut log, seen, damage) = open(dir.path());
        assert!(seen.is_empty());
        assert!(!damage.is_empty());
        let loc = log.append(b"x", 0).unwrap();
        assert_eq!(loc.seg, 4);
    }

    proptest::proptest! {
        #[test]
        fn scanning_any_bytes_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..3000)) {
            let (found, bad) = scan(&data);
            for f in &found {
                proptest::prop_assert!(f.end <= data.len() as u64);
            }
            for (a, b) in &bad {
                proptest::prop_assert!(a < b && *b <= data.len() as u64);
            }
        }
    }
}
