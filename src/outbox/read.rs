//! Reading waiting alerts back, outside the lock.

use super::*;

impl Outbox {
    /// Up to `limit` alerts with seq greater than `after` (all when
    /// `None`), in seq order. Payloads are read outside the lock.
    pub fn after(&self, after: Option<u64>, limit: usize) -> Result<Vec<Record>, OutboxError> {
        Ok(self.after_counted(after, limit).0)
    }

    /// The oldest waiting alert with the counts of the same moment (taken
    /// under one lock), so a report never shows an empty outbox beside an
    /// alert still waiting, or the reverse.
    pub fn waiting(&self) -> Waiting {
        let (mut records, counts) = self.after_counted(None, 1);
        Waiting {
            counts,
            oldest: records.pop(),
        }
    }

    /// [`Outbox::after`], with the counts at the moment the alerts were
    /// chosen.
    /// A record that cannot be read is left out and reported as lost.
    fn after_counted(&self, after: Option<u64>, limit: usize) -> (Vec<Record>, Counts) {
        let (items, files, counts) = {
            let st = self.lock();
            let counts = Counts {
                depth: st.index.depth(),
                bytes: st.index.bytes(),
                next_seq: st.next_seq,
            };
            let items = st.index.after(after, limit);
            // Each segment with its length now: bytes below it never change.
            let mut files: BTreeMap<u32, (Arc<File>, u64)> = BTreeMap::new();
            for (_, _, e) in &items {
                if let Some(f) = st.log.file(e.loc.seg) {
                    files.insert(e.loc.seg, (f, st.log.segment_len(e.loc.seg)));
                }
            }
            (items, files, counts)
        };
        let mut out = Vec::with_capacity(items.len());
        let mut bad = Vec::new();
        let mut i = 0;
        while i < items.len() {
            // Alerts next to each other in one segment: one read.
            let seg = items[i].2.loc.seg;
            let start = u64::from(items[i].2.loc.off);
            let mut end = start + u64::from(items[i].2.len);
            let mut j = i + 1;
            while let Some((_, _, e)) = items.get(j) {
                let off = u64::from(e.loc.off);
                if e.loc.seg != seg
                    || off < end
                    || off - end > 4096
                    || off + u64::from(e.len) - start > READ_SPAN
                {
                    break;
                }
                end = off + u64::from(e.len);
                j += 1;
            }
            let span = self.span(seg, start, end, files.get(&seg));
            for (seq, sev, e) in &items[i..j] {
                let decoded = span.as_ref().and_then(|w| {
                    w.get(u64::from(e.loc.off), u64::from(e.len))
                        .and_then(|b| record::decode_alert(b).ok())
                        .filter(|a| a.seq == *seq)
                        .map(|a| Record {
                            seq: a.seq,
                            severity: *sev,
                            state: a.state,
                            created_ms: a.created_ms,
                            rule: a.rule.to_string(),
                            sensor: a.sensor.to_string(),
                            payload: a.payload.to_vec(),
                        })
                });
                match decoded {
                    Some(r) => out.push(r),
                    None => bad.push((*seq, *sev)),
                }
            }
            i = j;
        }
        if !bad.is_empty() {
            self.lost_while_running(&bad);
        }
        (out, counts)
    }

    /// Bytes `start..end` of segment `seg`: from the last read ahead, else
    /// read from the file together with up to [`READ_AHEAD`] bytes after
    /// them (an upstream that lags behind the writer then reads the log in
    /// large pieces, not one `pread` per PUBACK). `file` is the segment
    /// with its length when the items were chosen: no byte below it
    /// changes, so neither can a copy.
    fn span(
        &self,
        seg: u32,
        start: u64,
        end: u64,
        file: Option<&(Arc<File>, u64)>,
    ) -> Option<Window> {
        let ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(w) = ahead.filter(|w| w.holds(seg, start, end)) {
            return Some(w);
        }
        let (f, len) = file?;
        let to = (start + READ_AHEAD).min(*len).max(end);
        let bytes = log::read_at(f, start, usize::try_from(to - start).ok()?).ok()?;
        let w = Window {
            seg,
            start,
            bytes: Arc::new(bytes),
        };
        *self.ahead.lock().unwrap_or_else(|p| p.into_inner()) = Some(w.clone());
        Some(w)
    }

    /// Alerts that turned unreadable after open (a segment removed under a
    /// reader, a failing card): they can never be published; reported.
    pub(super) fn lost_while_running(&self, bad: &[(u64, Severity)]) {
        let mut st = self.lock();
        let still: Vec<(u64, Severity)> = bad
            .iter()
            .copied()
            .filter(|(s, _)| st.index.contains(*s))
            .collect();
        if still.is_empty() {
            return;
        }
        error!(
            count = still.len(),
            first = still[0].0,
            "outbox alerts became unreadable; reported as lost"
        );
        let mut seqs = event::Ranges::new();
        for (s, _) in &still {
            st.index.remove(*s);
            seqs.insert(*s);
        }
        let now = st.last;
        let ev = OutboxEvent::Lost {
            count: still.len() as u64,
            seqs,
            after_seq: None,
            reason: "stored alerts could not be read back".into(),
            kept: None,
            new_prefix: None,
            ts: rfc3339_ms(now.wall_ms),
        };
        if let Err(e) = st.add_event(ev, now).and_then(|()| {
            // Dead for the next start too: an acknowledgement-like record.
            st.acks.extend(still.iter().map(|x| x.0));
            st.write_acks(now)
        }) {
            self.storage_failed(&e, FAILING_PUSH);
        }
        self.publish_counters(&st);
    }
}

/// Bytes read ahead after a read from the file (see [`Outbox::span`]).
pub const READ_AHEAD: u64 = 64 << 10;

/// Bytes `start..` of segment `seg`, as the file has them.
#[derive(Debug, Clone)]
pub(super) struct Window {
    seg: u32,
    start: u64,
    bytes: Arc<Vec<u8>>,
}

impl Window {
    fn holds(&self, seg: u32, start: u64, end: u64) -> bool {
        seg == self.seg && start >= self.start && end <= self.start + self.bytes.len() as u64
    }

    /// `len` bytes at offset `off` of the segment, if held.
    fn get(&self, off: u64, len: u64) -> Option<&[u8]> {
        let a = usize::try_from(off.checked_sub(self.start)?).ok()?;
        self.bytes
            .get(a..a.checked_add(usize::try_from(len).ok()?)?)
    }
}
