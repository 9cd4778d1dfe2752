//! The bounds and what they drop: `max_bytes` after every push, `max_age`
//! on the wait clock, a full disk; and alerts that could not be stored.

use super::*;

impl Outbox {
    /// Drops what is over the byte bound (or the lowered one of a full disk).
    pub(super) fn enforce_bytes(&self, st: &mut Inner, now: Now) -> Result<(), OutboxError> {
        let cap = st.bounds.max_bytes.min(st.disk_cap.unwrap_or(u64::MAX));
        let mut over = st.index.bytes().saturating_sub(cap);
        if over == 0 {
            return Ok(());
        }
        let reason = if st.disk_cap.is_some_and(|c| c < st.bounds.max_bytes) {
            DropReason::DiskFull
        } else {
            DropReason::MaxBytes
        };
        let mut victims = Vec::new();
        for (seq, sev, e) in st.index.eviction_order() {
            victims.push((seq, sev));
            over = over.saturating_sub(u64::from(e.payload).max(1));
            if over == 0 {
                break;
            }
        }
        self.drop_locked(st, &victims, reason, now)
    }

    /// Drops `victims`, counted and reported by one record.
    pub(super) fn drop_locked(
        &self,
        st: &mut Inner,
        victims: &[(u64, Severity)],
        reason: DropReason,
        now: Now,
    ) -> Result<(), OutboxError> {
        if victims.is_empty() {
            return Ok(());
        }
        let ts = rfc3339_ms(now.wall_ms);
        let (n, mut ev) = match st.events.iter().next_back() {
            Some((n, e @ OutboxEvent::Dropped { .. })) if *n >= st.sealed_below => (*n, e.clone()),
            _ => (st.next_event, OutboxEvent::dropped(ts.clone())),
        };
        let mut counts = BySeverity::default();
        for (seq, sev) in victims {
            ev.add_drop(*seq, *sev, reason, &ts);
            counts.add(*sev, 1);
        }
        let json = serde_json::to_vec(&ev).unwrap_or_default();
        let w = st.clock.w(now);
        let body = record::drop(
            w,
            now.wall_ms,
            &record::Drop {
                reason: match reason {
                    DropReason::MaxBytes => 0,
                    DropReason::MaxAge => 1,
                    DropReason::DiskFull => 2,
                },
                counts: [counts.info, counts.warning, counts.critical],
                seqs: index::ranges_of(victims.iter().map(|v| v.0)),
                event: n,
                event_json: &json,
            },
        );
        st.append(&body, now)?;
        for (seq, _) in victims {
            st.index.remove(*seq);
        }
        for s in SEVERITIES {
            st.dropped.add(s, counts.get(s));
        }
        st.events.insert(n, ev);
        st.next_event = st.next_event.max(n + 1);
        st.changed = true;
        if let Some(suppressed) = st.drop_log.check(Instant::now()) {
            warn!(
                dropped = victims.len(),
                info = counts.info,
                warning = counts.warning,
                critical = counts.critical,
                first = victims.iter().map(|v| v.0).min().unwrap_or(0),
                last = victims.iter().map(|v| v.0).max().unwrap_or(0),
                reason = ?reason,
                similar_warnings_suppressed = suppressed,
                "outbox bound reached: alerts dropped (reported on the events topic)"
            );
        }
        Ok(())
    }

    /// Counts alerts that could not be stored (the disk refuses writes),
    /// into an `unstored` event appended as soon as a write succeeds.
    pub fn count_unstored(&self, drafts: &[AlertDraft], reason: &str, now: Now) {
        if drafts.is_empty() {
            return;
        }
        let mut st = self.lock();
        let ts = rfc3339_ms(now.wall_ms);
        let n = match st.unstored_event {
            Some(n) if n >= st.sealed_below && st.events.contains_key(&n) => n,
            _ => {
                let n = st.next_event;
                st.next_event += 1;
                st.events
                    .insert(n, OutboxEvent::unstored(reason.to_string(), ts.clone()));
                st.unstored_event = Some(n);
                n
            }
        };
        if let Some(ev) = st.events.get_mut(&n) {
            for d in drafts {
                ev.add_unstored(d.severity, &ts);
            }
        }
        st.changed = true;
        self.unstored
            .fetch_add(drafts.len() as u64, Ordering::Relaxed);
        // Appended when possible; kept in memory meanwhile.
        if let Some(ev) = st.events.get(&n).cloned() {
            // Kept in memory (and in the next checkpoint) when this fails.
            let _ = st.append_event(n, &ev, now);
        }
        self.publish_counters(&st);
    }

    /// Drops alerts that waited longer than `max_age`, oldest first. Call
    /// periodically. Returns how many were dropped.
    pub fn expire(&self, now: Now) -> Result<u64, OutboxError> {
        let mut st = self.lock();
        st.last = now;
        let Some(age) = st.bounds.max_age else {
            return Ok(0);
        };
        let cutoff = st
            .clock
            .w(now)
            .saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        let mut victims = Vec::new();
        for (seq, sev, e) in st.index.after(None, EXPIRE_SCAN) {
            let Some(file) = st.log.file(e.loc.seg) else {
                continue;
            };
            let mut head = [0u8; record::CREATED_W_END];
            if file.read_exact_at(&mut head, u64::from(e.loc.off)).is_err() {
                continue;
            }
            let Some(created_w) = record::created_w(&head) else {
                continue;
            };
            // Wait-clock times grow with seqs: the first young one ends it.
            if created_w >= cutoff {
                break;
            }
            victims.push((seq, sev));
        }
        let n = victims.len() as u64;
        let r = self.drop_locked(&mut st, &victims, DropReason::MaxAge, now);
        self.publish_counters(&st);
        r.map(|()| n)
    }

    /// The disk is full: lower the bound to what it holds when the outbox's
    /// own files fill it (dropping by the usual order), give back the
    /// reserve so the drop and a checkpoint can be written, and free the
    /// segments that made unnecessary. Returns whether room was made.
    pub fn relieve_full_disk(&self, now: Now) -> bool {
        let mut st = self.lock();
        st.last = now;
        if let Some(r) = st.reserve.take() {
            let _ = std::fs::remove_file(r);
        }
        let ours = st.log.disk_bytes();
        let fs = filesystem_bytes(&self.dir).unwrap_or(0);
        let mut made_room = false;
        // Only when we are what fills the disk: a disk filled by something
        // else is not a reason to drop alerts that are safely stored.
        if fs > 0 && ours.saturating_mul(2) >= fs && st.index.bytes() > 0 {
            let cap = st.index.bytes() * 3 / 4;
            if st.disk_cap.is_none_or(|c| cap < c) {
                warn!(
                    max_bytes = st.bounds.max_bytes,
                    lowered_to = cap,
                    filesystem = fs,
                    "the disk is full and the outbox fills it: its bound is lowered to what the disk holds"
                );
            }
            st.disk_cap = Some(cap);
            made_room = self.enforce_bytes(&mut st, now).is_ok();
        }
        if self.checkpoint_locked(&mut st, now).is_ok() {
            made_room = true;
        }
        self.publish_counters(&st);
        made_room
    }
}
