//! Opening: the checkpoint, the replay of the log after it, what damage
//! cost, and the id prefix and wait clock the run goes on with.

use super::*;

/// What the damage found at open cost.
struct Losses {
    lost: event::Ranges,
    count: u64,
    exact: bool,
    /// The end of the log was damaged.
    tail: bool,
    after_seq: Option<u64>,
}

/// What replaying the log found, before it becomes an [`Inner`].
#[derive(Default)]
struct Replay {
    index: Index,
    max_seq: u64,
    next_seq_floor: u64,
    next_event: u64,
    events: BTreeMap<u64, OutboxEvent>,
    dropped: BySeverity,
    engine: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Commits in log order: place, first and last seq.
    commits: Vec<(Loc, u64, u64)>,
    last_w: i64,
    last_wall: i64,
    db_id: Option<String>,
    /// The last record was `close`.
    clean: bool,
    undecodable: Vec<Loc>,
}

impl Replay {
    pub(super) fn record(&mut self, loc: Loc, body: &[u8], full: bool, dead: &[[u64; 2]]) {
        let rec = match record::decode(body) {
            Ok(r) => r,
            Err(_) => {
                self.undecodable.push(loc);
                return;
            }
        };
        self.last_w = self.last_w.max(rec.w_ms);
        self.last_wall = rec.wall_ms;
        self.clean = matches!(rec.body, Body::Close { .. });
        match rec.body {
            Body::Commit(c) => {
                if let (Some(first), Some(last)) = (c.alerts.first(), c.alerts.last()) {
                    self.commits.push((loc, first.alert.seq, last.alert.seq));
                }
                for p in &c.alerts {
                    self.alert(loc, p, full, dead);
                }
                if full {
                    for r in &c.acks {
                        self.acked(*r);
                    }
                    for (k, v) in c.state {
                        match v {
                            Some(v) => self.engine.insert(k.to_vec(), v.to_vec()),
                            None => self.engine.remove(k),
                        };
                    }
                }
            }
            Body::Moved(alerts) => {
                for p in &alerts {
                    self.alert(loc, p, full, dead);
                }
            }
            Body::Acks(ranges) if full => ranges.into_iter().for_each(|r| self.acked(r)),
            Body::Drop(d) if full => {
                for r in &d.seqs {
                    self.acked(*r);
                }
                for (i, s) in SEVERITIES.iter().enumerate() {
                    self.dropped.add(*s, d.counts[i]);
                }
                if let Ok(ev) = serde_json::from_slice(d.event_json) {
                    self.events.insert(d.event, ev);
                }
                self.next_event = self.next_event.max(d.event + 1);
            }
            Body::Event { n, json } if full => {
                if let Ok(ev) = serde_json::from_slice(json) {
                    self.events.insert(n, ev);
                }
                self.next_event = self.next_event.max(n + 1);
            }
            Body::EventAck(n) if full => {
                self.events.remove(&n);
            }
            Body::Prefix { db_id, next_seq } => {
                self.db_id = Some(db_id.to_string());
                self.next_seq_floor = self.next_seq_floor.max(next_seq);
            }
            Body::Close { next_seq } => {
                self.next_seq_floor = self.next_seq_floor.max(next_seq);
            }
            Body::Acks(_) | Body::Drop(_) | Body::Event { .. } | Body::EventAck(_) => {}
        }
    }

    /// An alert found in the record whose body is at `body`.
    pub(super) fn alert(
        &mut self,
        body: Loc,
        p: &record::Placed<'_>,
        full: bool,
        dead: &[[u64; 2]],
    ) {
        let seq = p.alert.seq;
        self.max_seq = self.max_seq.max(seq);
        if !full && index::in_ranges(dead, seq) {
            return;
        }
        self.index.insert(
            seq,
            p.alert.severity,
            Entry::placed(body, p.at, p.len, &p.alert),
        );
    }

    pub(super) fn acked(&mut self, r: [u64; 2]) {
        self.max_seq = self.max_seq.max(r[1]);
        // By what waits in the range, not by every seq in it.
        let waiting: Vec<u64> = self
            .index
            .after(r[0].checked_sub(1), usize::MAX)
            .into_iter()
            .map(|x| x.0)
            .take_while(|s| *s <= r[1])
            .collect();
        for s in waiting {
            self.index.remove(s);
        }
    }

    /// The seqs lost in each stretch of damage, from the commits around it.
    pub(super) fn losses(&self, damage: &[Damage], known_next: u64) -> Losses {
        let mut lost = event::Ranges::new();
        let mut count = 0u64;
        let mut exact = true;
        let mut tail = false;
        let mut after_seq = None;
        for d in damage {
            let at = d.at;
            let before = self.commits.iter().rev().find(|c| c.0 < at).map(|c| c.2);
            let after = self.commits.iter().find(|c| c.0 > at).map(|c| c.1);
            let (from, to) = match (before, after) {
                (Some(b), Some(a)) => (b + 1, a.saturating_sub(1)),
                (Some(b), None) => {
                    tail = true;
                    exact = false;
                    after_seq = Some(b);
                    (b + 1, known_next.saturating_sub(1))
                }
                (None, Some(a)) => {
                    exact = false;
                    (a, a.saturating_sub(1))
                }
                (None, None) => {
                    tail = true;
                    exact = false;
                    after_seq = Some(known_next.saturating_sub(1));
                    (known_next, known_next.saturating_sub(1))
                }
            };
            if from <= to {
                count += to - from + 1;
                lost.insert_range(from, to);
            }
        }
        Losses {
            lost,
            count,
            exact,
            tail,
            after_seq,
        }
    }
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`/outbox with default options,
    /// at the current time.
    pub fn open(dir: &Path) -> Result<(Outbox, Vec<OpenEvent>), OutboxError> {
        let now = Now {
            mono_ms: 0,
            wall_ms: crate::reading::wall_ms(),
        };
        Outbox::open_with(dir, Options::default(), now)
    }

    /// Opens (or creates) the outbox in `dir`/outbox. `now.mono_ms` is the
    /// caller's monotonic clock: later calls pass times on the same clock.
    pub fn open_with(
        dir: &Path,
        opts: Options,
        now: Now,
    ) -> Result<(Outbox, Vec<OpenEvent>), OutboxError> {
        let root = dir.join("outbox");
        let mut opened = Vec::new();
        let legacy = v1::take_legacy(dir, &root, now.wall_ms)?;
        std::fs::create_dir_all(&root).map_err(|source| OutboxError::Io {
            path: root.clone(),
            source,
        })?;
        let (meta, repair) = Meta::open(&root.join("meta"), now.wall_ms).map_err(|e| match e {
            MetaError::Locked { .. } => OutboxError::Locked { path: root.clone() },
            e => e.into(),
        })?;
        let mut replaced = None;
        match repair {
            Some(Repair::Rebuilt { kept, reason }) => {
                opened.push(OpenEvent::Repaired { kept, reason });
            }
            Some(Repair::Replaced { moved_to, reason }) => {
                replaced = Some((moved_to.clone(), reason.clone()));
                opened.push(OpenEvent::Replaced { moved_to, reason });
            }
            None => {}
        }
        let cp = meta.load()?.unwrap_or_default();
        let cp_pos = cp.pos();
        let mut rp = Replay {
            next_event: cp.next_event.max(1),
            events: cp
                .events
                .iter()
                .filter_map(|(n, j)| serde_json::from_str(j).ok().map(|e| (*n, e)))
                .collect(),
            dropped: BySeverity {
                info: cp.dropped[0],
                warning: cp.dropped[1],
                critical: cp.dropped[2],
            },
            engine: meta.engine_state()?.into_iter().collect(),
            last_w: cp.w_ms,
            last_wall: cp.wall_ms,
            ..Replay::default()
        };
        let (log, damage) = Log::open(
            &root.join("log"),
            segment_bytes(opts.max_bytes),
            now.wall_ms,
            |loc, body| rp.record(loc, body, loc >= cp_pos, &cp.dead),
        )?;
        // The checkpoint is taken after a sync of everything before its
        // place: a log that ends before it went back in time.
        let rolled_back = log.end() < cp_pos && cp_pos.seg > 0;
        let known_next = cp
            .next_seq
            .max(rp.next_seq_floor)
            .max(rp.max_seq + 1)
            .max(1);
        let Losses {
            lost,
            count: lost_count,
            exact,
            tail: tail_damaged,
            after_seq,
        } = rp.losses(&damage, known_next);
        let mut db_id = rp
            .db_id
            .clone()
            .or_else(|| (!cp.db_id.is_empty()).then(|| cp.db_id.clone()))
            .or_else(|| legacy.as_ref().map(|l| l.db_id.clone()))
            .unwrap_or_else(new_db_id);
        let fresh = rp.db_id.is_none() && cp.db_id.is_empty() && legacy.is_none();
        let prefix_reason = if tail_damaged {
            Some("the end of the outbox log was damaged")
        } else if rolled_back {
            Some("the outbox log ends before its last checkpoint")
        } else if !opts.flush_always && !rp.clean && !fresh && !rp.commits.is_empty() {
            Some(
                "the last run did not stop cleanly and alerts may have been sent before they were on disk (flush period)",
            )
        } else {
            None
        };
        let new_prefix = prefix_reason.map(|r| {
            let old = db_id.clone();
            let mut new = new_db_id();
            while new == old {
                new = new_db_id();
            }
            db_id = new.clone();
            OpenEvent::NewPrefix {
                old,
                new,
                reason: r.to_string(),
            }
        });

        // The wait clock goes on from where it was, plus the downtime when
        // both wall clocks are plausible.
        let downtime = if rp.last_wall >= SANE_WALL_MS && now.wall_ms >= rp.last_wall {
            (now.wall_ms - rp.last_wall).min(MAX_DOWNTIME_MS)
        } else {
            0
        };
        let clock = WaitClock {
            w_at_open: rp.last_w.saturating_add(downtime),
            mono_at_open: now.mono_ms,
            instant_at_open: Instant::now(),
        };
        let next_seq = known_next;
        let reserve = make_reserve(&root);
        let mut inner = Inner {
            db_id: db_id.clone(),
            log,
            meta: Some(meta),
            index: std::mem::take(&mut rp.index),
            next_seq,
            next_event: rp.next_event,
            sealed_below: 0,
            events: std::mem::take(&mut rp.events),
            dropped: rp.dropped,
            acks: Vec::new(),
            acks_since_w: None,
            engine: BTreeMap::new(),
            checkpoint_pos: cp_pos,
            checkpoint_w: clock.w_at_open,
            changed: true,
            clock,
            last: now,
            bounds: Bounds::DEFAULT,
            disk_cap: None,
            drop_log: WarnLimiter::new(Duration::from_secs(10)),
            unstored_event: None,
            reserve,
        };
        let ts = rfc3339_ms(now.wall_ms);
        // Every new run writes its prefix and next seq first: the log alone
        // then says where seqs resume, whatever happens to the checkpoint.
        // A disk too full for it is not a reason not to start: the next
        // append that finds room starts the segment (and its prefix).
        if let Err(e) = inner.append_prefix(now) {
            warn!(error = %e, "cannot start an outbox segment yet; alerts will wait in memory until the disk has room");
        }
        if let Some((moved_to, reason)) = replaced {
            inner.add_event(
                OutboxEvent::DatabaseReplaced {
                    moved_to: moved_to.display().to_string(),
                    reason,
                    ts: ts.clone(),
                    alerts_lost: 0,
                },
                now,
            )?;
        }
        let damaged = !damage.is_empty() || rolled_back || !rp.undecodable.is_empty();
        if damaged {
            let kept = damage.iter().find_map(|d| d.kept.clone());
            let reason = if rolled_back {
                "the outbox log ends before its last checkpoint (files went back in time)"
                    .to_string()
            } else {
                format!(
                    "{} damaged stretch(es) in the outbox log{}",
                    damage.len() + rp.undecodable.len(),
                    if rp.undecodable.is_empty() {
                        String::new()
                    } else {
                        format!(", {} unreadable record(s)", rp.undecodable.len())
                    }
                )
            };
            let mut lost = lost;
            let mut count = lost_count;
            if rolled_back && cp.next_seq > rp.max_seq + 1 {
                lost.insert_range(rp.max_seq + 1, cp.next_seq - 1);
                count += cp.next_seq - rp.max_seq - 1;
            }
            let exact = exact && rp.undecodable.is_empty() && !rolled_back;
            opened.push(OpenEvent::Damaged {
                count,
                exact,
                kept: kept.clone(),
                reason: reason.clone(),
            });
            inner.add_event(
                OutboxEvent::Lost {
                    count,
                    seqs: if exact {
                        lost
                    } else {
                        event::Ranges {
                            exact: false,
                            ..lost
                        }
                    },
                    after_seq: after_seq.or(rolled_back.then_some(rp.max_seq)),
                    reason,
                    kept: kept.map(|k| k.display().to_string()),
                    new_prefix: new_prefix.as_ref().and_then(|p| match p {
                        OpenEvent::NewPrefix { new, .. } => Some(new.clone()),
                        _ => None,
                    }),
                    ts: ts.clone(),
                },
                now,
            )?;
        }
        opened.extend(new_prefix);
        let mut engine = EngineState {
            entries: std::mem::take(&mut rp.engine),
            legacy_snapshot: None,
        };
        if let Some(l) = &legacy {
            let n = inner.import(l, now)?;
            engine.legacy_snapshot = l.rules_state.clone();
            opened.push(OpenEvent::Imported {
                alerts: n,
                from: l.path.clone(),
            });
        }
        inner.log.sync()?;
        let o = Outbox {
            dir: root,
            db_id,
            depth: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
            flushed_through: AtomicU64::new(next_seq.saturating_sub(1)),
            dropped: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            events: AtomicU64::new(0),
            unstored: AtomicU64::new(0),
            disk_bytes: AtomicU64::new(0),
            failing: AtomicU8::new(0),
            storage_error: Mutex::new(None),
            recovered: Mutex::new(Some(engine)),
            ahead: Mutex::new(None),
            inner: Mutex::new(inner),
        };
        {
            let mut st = o.lock();
            // A fresh run starts from a checkpoint of what it found: the
            // replay of the next start is short, and an imported or damaged
            // outbox is not imported or reported twice.
            match o.checkpoint_locked(&mut st, now) {
                Ok(()) => {
                    if let Some(l) = legacy {
                        l.remove();
                    }
                }
                // The old database stays until an import is checkpointed.
                Err(e) if legacy.is_some() => return Err(e),
                Err(e) => warn!(error = %e, "cannot write the first outbox checkpoint; will retry"),
            }
            o.publish_counters(&st);
        }
        Ok((o, opened))
    }
}
