//! The bounds: `max_bytes` enforced in the batch of every push, `max_age`
//! on the writer's timer, and the eviction both make (alerts removed, drop
//! counters advanced and the `dropped` event written, in one batch).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::warn;

use super::event::{BySeverity, DropReason, OutboxEvent};
use super::keys::*;
use super::{Outbox, OutboxError, State};
use crate::alert::{DEFAULT_MAX_PAYLOAD, rfc3339_ms};
use crate::rules::Severity;

/// The outbox bounds: `[outbox] max_bytes` and `max_age`, and the largest
/// payload stored (`[upstream] max_payload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Payload bytes of waiting alerts, at most.
    pub max_bytes: u64,
    /// Alerts older than this are dropped; `None`: never.
    pub max_age: Option<Duration>,
    /// Largest alert payload: a longer one has its message cut at push
    /// ([`Alert::to_payload`](crate::alert::Alert::to_payload)), so what is
    /// stored is what is published.
    pub max_payload: usize,
}

impl Bounds {
    /// No bound on bytes or age; payloads cut at the default `max_payload`.
    pub const DEFAULT: Bounds = Bounds {
        max_bytes: u64::MAX,
        max_age: None,
        max_payload: DEFAULT_MAX_PAYLOAD,
    };
}

/// 2020-01-01T00:00:00Z: creation times before it mean the clock was not set.
pub(super) const SANE_WALL_MS: i64 = 1_577_836_800_000;

/// Records looked at per `expire` call at most (bounds the work per tick).
pub(super) const EXPIRE_SCAN: usize = 4096;

/// What an eviction changes in memory once its batch is applied.
#[derive(Debug, Default)]
pub(super) struct Effects {
    pub(super) counts: BySeverity,
    pub(super) freed: u64,
    /// The next event number, when a new event was started.
    pub(super) new_event: Option<u64>,
}

/// One alert chosen for eviction.
#[derive(Debug, Clone, Copy)]
pub(super) struct Victim {
    pub(super) seq: u64,
    pub(super) severity: Severity,
    pub(super) len: u64,
    pub(super) reason: DropReason,
}

/// `counter += plus - minus`, as one atomic update.
pub(super) fn add_signed(counter: &AtomicU64, plus: u64, minus: u64) {
    if plus >= minus {
        counter.fetch_add(plus - minus, Ordering::Relaxed);
    } else {
        counter.fetch_sub(minus - plus, Ordering::Relaxed);
    }
}

impl Outbox {
    /// What to drop so that the stored bytes plus `added` (the `fresh`
    /// alerts about to be stored) fit `max_bytes`: info, then warning, then
    /// critical; oldest first within each (fresh ones are the newest).
    pub(super) fn over_bytes(
        &self,
        st: &State,
        added: u64,
        fresh: &[Victim],
    ) -> Result<Vec<Victim>, OutboxError> {
        let mut over = (self.bytes() + added).saturating_sub(st.bounds.max_bytes);
        let mut victims = Vec::new();
        if over == 0 {
            return Ok(victims);
        }
        for sev in SEVERITIES {
            let stored = self
                .tree
                .scan_prefix([INDEX, severity_byte(sev)])
                .map(|kv| {
                    let (k, v) = kv.map_err(OutboxError::Write)?;
                    Ok(key_seq(&k).map(|seq| Victim {
                        seq,
                        severity: sev,
                        len: u64::from(u32_value(&v)),
                        reason: DropReason::MaxBytes,
                    }))
                });
            let new = fresh
                .iter()
                .filter(|v| v.severity == sev)
                .map(|v| Ok(Some(*v)));
            for v in stored.chain(new) {
                let Some(v) = v? else { continue };
                victims.push(v);
                over = over.saturating_sub(v.len.max(1));
                if over == 0 {
                    return Ok(victims);
                }
            }
        }
        Ok(victims)
    }

    /// Drops alerts created more than `max_age` before `now_ms`, oldest
    /// first. Call periodically. Returns how many were dropped.
    pub fn expire(&self, now_ms: i64) -> Result<u64, OutboxError> {
        let mut st = self.lock();
        let Some(age) = st.bounds.max_age else {
            return Ok(0);
        };
        let cutoff = now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        let mut victims = Vec::new();
        for kv in self.tree.scan_prefix([ALERT]).take(EXPIRE_SCAN) {
            let (k, v) = kv.map_err(OutboxError::Write)?;
            let Some(seq) = key_seq(&k) else { continue };
            let Ok(r) = Record::decode(seq, &v) else {
                continue;
            };
            if r.created_ms < SANE_WALL_MS {
                continue; // the clock was not set: age unknown
            }
            if r.created_ms >= cutoff {
                break;
            }
            victims.push(Victim {
                seq,
                severity: r.severity,
                len: r.payload.len() as u64,
                reason: DropReason::MaxAge,
            });
        }
        if victims.is_empty() {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        let effects = self.evict_into(&mut batch, &st, &victims, now_ms)?;
        batch.insert(
            COUNTS,
            &counts_value(
                self.depth().saturating_sub(victims.len() as u64),
                self.bytes().saturating_sub(effects.freed),
            ),
        );
        self.tree.apply_batch(batch).map_err(OutboxError::Write)?;
        self.depth
            .fetch_sub(victims.len() as u64, Ordering::Relaxed);
        self.bytes.fetch_sub(effects.freed, Ordering::Relaxed);
        self.applied(&mut st, effects, &victims);
        Ok(victims.len() as u64)
    }

    /// Adds to `batch` the removal of `victims`, the advanced drop counters
    /// and the `dropped` event that reports them (merged into the newest
    /// event when that one is an unsealed `dropped` one).
    pub(super) fn evict_into(
        &self,
        batch: &mut sled::Batch,
        st: &State,
        victims: &[Victim],
        now_ms: i64,
    ) -> Result<Effects, OutboxError> {
        let mut fx = Effects::default();
        if victims.is_empty() {
            return Ok(fx);
        }
        let ts = rfc3339_ms(now_ms);
        let (n, mut ev, new) = match self.last_event()? {
            Some((n, e @ OutboxEvent::Dropped { .. })) if n >= st.sealed_below => (n, e, false),
            _ => (st.next_event, OutboxEvent::dropped(ts.clone()), true),
        };
        for v in victims {
            // Removes override inserts of the same key earlier in the batch.
            batch.remove(&seq_key(v.seq));
            batch.remove(&index_key(v.severity, v.seq));
            fx.counts.add(v.severity, 1);
            fx.freed += v.len;
            ev.add_drop(v.seq, v.severity, v.reason, &ts);
        }
        for s in SEVERITIES {
            let c = fx.counts.get(s);
            if c > 0 {
                let total = self.dropped[sev_index(s)].load(Ordering::Relaxed) + c;
                batch.insert(dropped_key(s), &total.to_be_bytes());
            }
        }
        batch.insert(&event_key(n), event_bytes(&ev));
        if new {
            batch.insert(NEXT_EVENT, &(n + 1).to_be_bytes());
            fx.new_event = Some(n + 1);
        }
        Ok(fx)
    }

    /// The in-memory side of an applied eviction (but depth and bytes,
    /// which the caller updates), and its (rate-limited) log line.
    pub(super) fn applied(&self, st: &mut State, fx: Effects, victims: &[Victim]) {
        if victims.is_empty() {
            return;
        }
        if let Some(next) = fx.new_event {
            st.next_event = next;
            self.events.fetch_add(1, Ordering::Relaxed);
        }
        for s in SEVERITIES {
            self.dropped[sev_index(s)].fetch_add(fx.counts.get(s), Ordering::Relaxed);
        }
        let n = victims.len() as u64;
        if let Some(suppressed) = st.drop_log.check(Instant::now()) {
            let first = victims.iter().map(|v| v.seq).min().unwrap_or(0);
            let last = victims.iter().map(|v| v.seq).max().unwrap_or(0);
            warn!(
                dropped = n,
                info = fx.counts.info,
                warning = fx.counts.warning,
                critical = fx.counts.critical,
                first,
                last,
                reason = ?victims[0].reason,
                similar_warnings_suppressed = suppressed,
                "outbox bound reached: alerts dropped (reported on the events topic)"
            );
        }
    }
}
