//! Housekeeping: acknowledgements appended late, checkpoints, segments
//! removed or compacted, and the import of the earlier format.

use super::*;

impl Outbox {
    /// Housekeeping, every second or so: appends acknowledgements that
    /// waited [`ACK_DELAY`], writes a checkpoint when one is due, removes
    /// segments nothing needs, moves alerts out of nearly empty segments,
    /// and gives the disk back what a full-disk episode took.
    pub fn maintain(&self, now: Now) -> Result<(), OutboxError> {
        let mut st = self.lock();
        st.last = now;
        let w = st.clock.w(now);
        if let Some(since) = st.acks_since_w
            && w - since >= i64::try_from(ACK_DELAY.as_millis()).unwrap_or(i64::MAX)
        {
            st.write_acks(now)?;
        }
        // Compaction first: the segments it empties go with this checkpoint.
        self.compact(&mut st, now)?;
        let due = st.changed
            && w - st.checkpoint_w
                >= i64::try_from(CHECKPOINT_EVERY.as_millis()).unwrap_or(i64::MAX);
        let reclaimable = st
            .log
            .segments()
            .any(|s| Some(s) != st.log.active_segment() && st.index.seg_live(s).count == 0);
        if due || reclaimable {
            self.checkpoint_locked(&mut st, now)?;
        }
        if st.reserve.is_none() {
            st.reserve = make_reserve(&self.dir);
        }
        self.publish_counters(&st);
        Ok(())
    }

    /// Writes a checkpoint now, with the engine's latest full state changes
    /// (`engine`: keys whose value changed since the last call), then
    /// removes the segments it made unnecessary. Durable when it returns.
    pub fn checkpoint(
        &self,
        engine: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        now: Now,
    ) -> Result<(), OutboxError> {
        let mut st = self.lock();
        st.last = now;
        st.take_engine(engine);
        let r = self.checkpoint_locked(&mut st, now);
        self.publish_counters(&st);
        r
    }

    pub(super) fn checkpoint_locked(&self, st: &mut Inner, now: Now) -> Result<(), OutboxError> {
        if !st.acks.is_empty() {
            st.write_acks(now)?;
        }
        // Everything before the checkpoint's place must be on disk first.
        st.log.sync()?;
        let pos = st.log.tail();
        let cp = Checkpoint {
            pos: (pos.seg, pos.off),
            next_seq: st.next_seq,
            next_event: st.next_event,
            w_ms: st.clock.w(now),
            wall_ms: now.wall_ms,
            db_id: self.db_id.clone(),
            dropped: [st.dropped.info, st.dropped.warning, st.dropped.critical],
            dead: st.index.dead_below(st.next_seq),
            events: st
                .events
                .iter()
                .map(|(n, e)| (*n, serde_json::to_string(e).unwrap_or_default()))
                .collect(),
        };
        let engine: Vec<(Vec<u8>, Option<Vec<u8>>)> = st
            .engine
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if st.meta.is_none() {
            // sled keeps its first write error (ENOSPC among them): a store
            // that failed is opened again before it is used.
            let path = self.dir.join("meta");
            st.meta = Some(Meta::open(&path, now.wall_ms)?.0);
        }
        let written = match &st.meta {
            Some(m) => m.write(&cp, &engine),
            None => return Ok(()),
        };
        if let Err(e) = written {
            st.meta = None;
            return Err(e.into());
        }
        st.engine.clear();
        st.checkpoint_pos = pos;
        st.checkpoint_w = cp.w_ms;
        st.changed = false;
        // Whole segments before the checkpoint with nothing waiting go.
        let gone: Vec<u32> = st
            .log
            .segments()
            .filter(|s| {
                Some(*s) != st.log.active_segment()
                    && *s < pos.seg
                    && st.index.seg_live(*s).count == 0
            })
            .collect();
        for s in gone {
            st.log.remove(s)?;
        }
        Ok(())
    }

    /// Moves the waiting alerts of old, mostly-dropped segments forward
    /// (severity drops leave critical alerts scattered), so the files can
    /// go: the log stays within about twice the bytes waiting.
    pub(super) fn compact(&self, st: &mut Inner, now: Now) -> Result<(), OutboxError> {
        let live = st.index.bytes();
        let disk = st.log.used_bytes();
        let seg_bytes = st.log.segment_bytes();
        if disk <= live.saturating_mul(2) + 2 * seg_bytes {
            return Ok(());
        }
        let candidates: Vec<u32> = st
            .log
            .segments()
            .filter(|s| {
                Some(*s) != st.log.active_segment() && {
                    let l = st.index.seg_live(*s);
                    l.count > 0 && l.bytes * 4 < st.log.segment_len(*s)
                }
            })
            .take(4)
            .collect();
        for seg in candidates {
            let alerts = st.index.in_segment(seg);
            let Some(file) = st.log.file(seg) else {
                continue;
            };
            let mut owned = Vec::with_capacity(alerts.len());
            for (seq, _, e) in &alerts {
                let mut buf = vec![0u8; e.len as usize];
                if file.read_exact_at(&mut buf, u64::from(e.loc.off)).is_ok() {
                    owned.push((*seq, buf));
                }
            }
            let entries: Vec<AlertEntry<'_>> = owned
                .iter()
                .filter_map(|(_, b)| record::decode_alert(b).ok())
                .collect();
            if entries.is_empty() {
                continue;
            }
            st.append_moved(&entries, now)?;
            st.changed = true;
        }
        Ok(())
    }
}

impl Inner {
    /// Appends alerts that are already stored somewhere (a sparse segment,
    /// the earlier format) as a `moved` record, and points the index at
    /// their new places.
    fn append_moved(&mut self, entries: &[AlertEntry<'_>], now: Now) -> Result<(), OutboxError> {
        let w = self.clock.w(now);
        let (body, places) = record::moved(w, now.wall_ms, entries);
        let loc = self.append(&body, now)?;
        for (a, (at, len)) in entries.iter().zip(places) {
            self.index
                .insert(a.seq, a.severity, Entry::placed(loc, at, len, a));
        }
        Ok(())
    }

    /// Takes the engine state changes for the next checkpoint (later ones
    /// win).
    pub(super) fn take_engine(&mut self, changes: Vec<(Vec<u8>, Option<Vec<u8>>)>) {
        self.engine.extend(changes);
        self.changed = true;
    }

    /// Imports the alerts, events and counters of an earlier-format outbox.
    pub(super) fn import(&mut self, l: &v1::Legacy, now: Now) -> Result<u64, OutboxError> {
        let w = self.clock.w(now);
        let mut n = 0;
        l.for_each_chunk(256, |chunk| {
            let entries: Vec<AlertEntry<'_>> = chunk
                .iter()
                .map(|a| AlertEntry {
                    seq: a.seq,
                    severity: a.severity,
                    state: a.state,
                    created_ms: a.created_ms,
                    // Waited as long as the wall clock says, when it can be believed.
                    created_w: w.saturating_sub(if a.created_ms >= SANE_WALL_MS {
                        (now.wall_ms - a.created_ms).clamp(0, MAX_DOWNTIME_MS)
                    } else {
                        0
                    }),
                    rule: &a.rule,
                    sensor: &a.sensor,
                    payload: &a.payload,
                })
                .collect();
            self.append_moved(&entries, now)?;
            n += entries.len() as u64;
            Ok(())
        })?;
        self.next_seq = self.next_seq.max(l.next_seq);
        for s in SEVERITIES {
            self.dropped.add(s, l.dropped.get(s));
        }
        for ev in &l.events {
            let k = self.next_event;
            self.next_event += 1;
            self.events.insert(k, ev.clone());
            self.append_event(k, ev, now)?;
        }
        self.changed = true;
        Ok(n)
    }
}
