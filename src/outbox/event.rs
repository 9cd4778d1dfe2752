//! Outbox events: what subscribers of `{topic_prefix}/events` learn about
//! alerts they will never receive (dropped by a bound, purged by hand, lost
//! to damage, never stored because the disk was full) and about a store
//! that had to be replaced. Pure: no I/O, no clock.
//!
//! Events are stored in the outbox's log with the change they report (a
//! drop and its event are one record), and published like alerts: removed
//! only on the broker's PUBACK. Drops are merged into the newest event that is not yet
//! being published, so a producer faster than the bound makes one event per
//! connection, not one per alert.

use serde::{Deserialize, Serialize};

use crate::rules::Severity;

/// Seq ranges kept exactly per event; beyond this the closest ranges merge
/// and `exact` becomes false (the ranges then also cover some seqs that were
/// not dropped), so an event stays small whatever happens offline.
pub const MAX_RANGES: usize = 64;

/// Why alerts were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The outbox reached `max_bytes`.
    MaxBytes,
    /// The alert was older than `max_age`.
    MaxAge,
    /// The disk was full and the outbox's own files filled it: its byte
    /// bound was lowered to what the disk holds.
    DiskFull,
}

/// Counts per severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BySeverity {
    pub info: u64,
    pub warning: u64,
    pub critical: u64,
}

impl BySeverity {
    pub fn add(&mut self, s: Severity, n: u64) {
        let c = match s {
            Severity::Info => &mut self.info,
            Severity::Warning => &mut self.warning,
            Severity::Critical => &mut self.critical,
        };
        *c = c.saturating_add(n);
    }

    pub fn get(&self, s: Severity) -> u64 {
        match s {
            Severity::Info => self.info,
            Severity::Warning => self.warning,
            Severity::Critical => self.critical,
        }
    }

    pub fn total(&self) -> u64 {
        self.info
            .saturating_add(self.warning)
            .saturating_add(self.critical)
    }
}

/// Counts per reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByReason {
    pub max_bytes: u64,
    pub max_age: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disk_full: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Sorted, disjoint, non-adjacent `[first, last]` seq ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ranges {
    pub ranges: Vec<[u64; 2]>,
    /// False once ranges were merged to stay under [`MAX_RANGES`].
    pub exact: bool,
}

impl Ranges {
    pub fn new() -> Self {
        Ranges {
            ranges: Vec::new(),
            exact: true,
        }
    }

    /// Adds one seq, merging with its neighbours.
    pub fn insert(&mut self, seq: u64) {
        // First range whose end is >= seq - 1 (could absorb or follow seq).
        let i = self
            .ranges
            .partition_point(|r| r[1].saturating_add(1) < seq);
        match self.ranges.get_mut(i) {
            Some(r) if r[0] <= seq && seq <= r[1] => return,
            Some(r) if r[1].saturating_add(1) == seq => r[1] = seq,
            Some(r) if seq.saturating_add(1) == r[0] => r[0] = seq,
            _ => self.ranges.insert(i, [seq, seq]),
        }
        // The range at i may now touch the next one.
        if let (Some(a), Some(b)) = (self.ranges.get(i), self.ranges.get(i + 1))
            && a[1].saturating_add(1) >= b[0]
        {
            let end = a[1].max(b[1]);
            self.ranges[i][1] = end;
            self.ranges.remove(i + 1);
        }
        while self.ranges.len() > MAX_RANGES {
            self.merge_closest();
        }
    }

    /// Adds every seq of `[first, last]`.
    pub fn insert_range(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        let i = self
            .ranges
            .partition_point(|r| r[1].saturating_add(1) < first);
        let mut j = i;
        let (mut a, mut b) = (first, last);
        while let Some(r) = self.ranges.get(j) {
            if r[0] > b.saturating_add(1) {
                break;
            }
            a = a.min(r[0]);
            b = b.max(r[1]);
            j += 1;
        }
        self.ranges.splice(i..j, [[a, b]]);
        while self.ranges.len() > MAX_RANGES {
            self.merge_closest();
        }
    }

    fn merge_closest(&mut self) {
        let Some((i, _)) = self
            .ranges
            .windows(2)
            .enumerate()
            .min_by_key(|(_, w)| w[1][0] - w[0][1])
        else {
            return;
        };
        self.ranges[i][1] = self.ranges[i + 1][1];
        self.ranges.remove(i + 1);
        self.exact = false;
    }

    pub fn contains(&self, seq: u64) -> bool {
        let i = self.ranges.partition_point(|r| r[1] < seq);
        self.ranges.get(i).is_some_and(|r| r[0] <= seq)
    }
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum OutboxEvent {
    /// Alerts dropped by the bound (`max_bytes`, `max_age`).
    Dropped {
        count: u64,
        by_severity: BySeverity,
        by_reason: ByReason,
        #[serde(flatten)]
        seqs: Ranges,
        /// When the first and the last of these drops happened (RFC 3339).
        first_ts: String,
        last_ts: String,
    },
    /// Alerts removed by `outpost outbox purge`.
    Purged {
        count: u64,
        #[serde(flatten)]
        seqs: Ranges,
        ts: String,
    },
    /// The database would not open and was replaced by a fresh one; the
    /// alerts it held are in `moved_to`, not lost, but will not be sent.
    DatabaseReplaced {
        moved_to: String,
        reason: String,
        ts: String,
        /// Alerts that will not be sent because of it (the checkpoint store
        /// alone holds no alerts: 0 there).
        #[serde(default)]
        alerts_lost: u64,
    },
    /// Part of the outbox's files was damaged (a torn write after a power
    /// cut, a bad SD card sector) and the alerts stored there are gone.
    /// `count` and the ranges are what could be established; `exact` is
    /// false when more may be lost (a damaged end of the log). When the end
    /// was damaged, new alerts carry a new id prefix (`new_prefix`), so no
    /// id can repeat one that was lost.
    Lost {
        count: u64,
        #[serde(flatten)]
        seqs: Ranges,
        /// Every alert after this seq may be lost too (the end of the log
        /// was damaged: how many came after it cannot be known).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_seq: Option<u64>,
        reason: String,
        /// Where the damaged file was kept for inspection.
        #[serde(skip_serializing_if = "Option::is_none")]
        kept: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        new_prefix: Option<String>,
        ts: String,
    },
    /// Alerts the rules created that could not be stored (the disk was
    /// full, or failing): they have no seq and will never be sent.
    Unstored {
        count: u64,
        by_severity: BySeverity,
        reason: String,
        first_ts: String,
        last_ts: String,
    },
}

impl OutboxEvent {
    /// A fresh `dropped` event.
    pub fn dropped(ts: String) -> OutboxEvent {
        OutboxEvent::Dropped {
            count: 0,
            by_severity: BySeverity::default(),
            by_reason: ByReason::default(),
            seqs: Ranges::new(),
            first_ts: ts.clone(),
            last_ts: ts,
        }
    }

    /// Adds one drop to a `dropped` event; false (and unchanged) for another kind.
    pub fn add_drop(&mut self, seq: u64, severity: Severity, reason: DropReason, ts: &str) -> bool {
        let OutboxEvent::Dropped {
            count,
            by_severity,
            by_reason,
            seqs,
            last_ts,
            ..
        } = self
        else {
            return false;
        };
        *count = count.saturating_add(1);
        by_severity.add(severity, 1);
        match reason {
            DropReason::MaxBytes => by_reason.max_bytes = by_reason.max_bytes.saturating_add(1),
            DropReason::MaxAge => by_reason.max_age = by_reason.max_age.saturating_add(1),
            DropReason::DiskFull => by_reason.disk_full = by_reason.disk_full.saturating_add(1),
        }
        seqs.insert(seq);
        ts.clone_into(last_ts);
        true
    }

    /// The published payload: the stored event plus `id` and `gateway`.
    pub fn to_payload(&self, id: &str, gateway: &str) -> Vec<u8> {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("id".into(), id.into());
            o.insert("gateway".into(), gateway.into());
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

impl OutboxEvent {
    /// A fresh `unstored` event.
    pub fn unstored(reason: String, ts: String) -> OutboxEvent {
        OutboxEvent::Unstored {
            count: 0,
            by_severity: BySeverity::default(),
            reason,
            first_ts: ts.clone(),
            last_ts: ts,
        }
    }

    /// Counts one alert that could not be stored; false for another kind.
    pub fn add_unstored(&mut self, severity: Severity, ts: &str) -> bool {
        let OutboxEvent::Unstored {
            count,
            by_severity,
            last_ts,
            ..
        } = self
        else {
            return false;
        };
        *count = count.saturating_add(1);
        by_severity.add(severity, 1);
        ts.clone_into(last_ts);
        true
    }
}

/// `{gateway}-{db_id}-e{n}`: stable across redeliveries, like alert ids.
pub fn event_id(gateway: &str, db_id: &str, n: u64) -> String {
    format!("{gateway}-{db_id}-e{n}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn adjacent_seqs_make_one_range() {
        let mut r = Ranges::new();
        for s in [5, 3, 4, 9, 7, 8, 1] {
            r.insert(s);
        }
        assert_eq!(r.ranges, vec![[1, 1], [3, 5], [7, 9]]);
        r.insert(2);
        r.insert(6);
        assert_eq!(r.ranges, vec![[1, 9]]);
        assert!(r.exact);
    }

    #[test]
    fn too_many_ranges_merge_the_closest_and_say_so() {
        let mut r = Ranges::new();
        for i in 0..(MAX_RANGES as u64 + 1) {
            r.insert(i * 10);
        }
        assert_eq!(r.ranges.len(), MAX_RANGES);
        assert!(!r.exact);
        assert!(r.contains(0) && r.contains(MAX_RANGES as u64 * 10));
    }

    #[test]
    fn a_dropped_event_counts_by_severity_and_reason() {
        let mut e = OutboxEvent::dropped("t0".into());
        assert!(e.add_drop(3, Severity::Info, DropReason::MaxBytes, "t1"));
        assert!(e.add_drop(4, Severity::Critical, DropReason::MaxAge, "t2"));
        let v: serde_json::Value =
            serde_json::from_slice(&e.to_payload("gw-abc-e1", "gw")).unwrap();
        assert_eq!(v["event"], "dropped");
        assert_eq!(v["id"], "gw-abc-e1");
        assert_eq!(v["count"], 2);
        assert_eq!(v["by_severity"]["info"], 1);
        assert_eq!(v["by_severity"]["critical"], 1);
        assert_eq!(v["by_reason"]["max_age"], 1);
        assert_eq!(v["ranges"], serde_json::json!([[3, 4]]));
        assert_eq!(v["exact"], true);
        assert_eq!(
            (v["first_ts"].as_str(), v["last_ts"].as_str()),
            (Some("t0"), Some("t2"))
        );
        let back: OutboxEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    proptest! {
        /// Ranges cover exactly the inserted seqs while exact, and always at least them.
        #[test]
        fn ranges_cover_every_inserted_seq(seqs in proptest::collection::vec(0u64..400, 0..300)) {
            let mut r = Ranges::new();
            for s in &seqs { r.insert(*s); }
            for w in r.ranges.windows(2) {
                prop_assert!(w[0][1] + 1 < w[1][0], "not disjoint/merged: {:?}", r.ranges);
            }
            prop_assert!(r.ranges.iter().all(|x| x[0] <= x[1]));
            prop_assert!(r.ranges.len() <= MAX_RANGES);
            let mut by_range = Ranges::new();
            for s in &seqs { by_range.insert_range(*s, *s); }
            if r.exact { prop_assert_eq!(&by_range, &r); }
            for s in &seqs { prop_assert!(r.contains(*s)); }
            if r.exact {
                let set: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
                let covered: u64 = r.ranges.iter().map(|x| x[1] - x[0] + 1).sum();
                prop_assert_eq!(covered, set.len() as u64);
            }
        }
    }
}
