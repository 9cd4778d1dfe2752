//! Where each waiting alert is in the log, by severity: what the outbox
//! keeps in memory (about 40 bytes per waiting alert, no payloads). Pure.
//!
//! Three ordered maps, one per severity, so eviction takes the oldest
//! alert of the lowest severity in O(log n), and publishing merges them
//! back into seq order. Per-segment live counts tell the outbox when a
//! segment holds nothing waiting any more, or so little that its alerts
//! are worth moving forward to free the file.

use std::collections::{BTreeMap, HashMap};

use super::log::Loc;
use super::record::severity_byte;
use crate::rules::Severity;

/// One waiting alert: where its entry is, and its payload size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub loc: Loc,
    /// Length of the whole alert entry in the log.
    pub len: u32,
    /// Payload bytes (what `max_bytes` counts).
    pub payload: u32,
}

impl Entry {
    /// An alert entry at offset `at` (length `len`) of a record body that
    /// starts at `body`.
    pub fn placed(body: Loc, at: usize, len: usize, a: &super::record::AlertEntry<'_>) -> Entry {
        Entry {
            loc: Loc {
                seg: body.seg,
                off: body
                    .off
                    .saturating_add(u32::try_from(at).unwrap_or(u32::MAX)),
            },
            len: u32::try_from(len).unwrap_or(u32::MAX),
            payload: u32::try_from(a.payload.len()).unwrap_or(u32::MAX),
        }
    }
}

/// Live alerts of one segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegLive {
    pub count: u64,
    /// Bytes of their entries.
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub struct Index {
    by_sev: [BTreeMap<u64, Entry>; 3],
    segs: HashMap<u32, SegLive>,
    depth: u64,
    bytes: u64,
}

pub const SEVERITIES: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];

impl Index {
    pub fn new() -> Index {
        Index::default()
    }

    /// Adds (or moves) an alert. Returns the entry it replaced.
    pub fn insert(&mut self, seq: u64, sev: Severity, e: Entry) -> Option<Entry> {
        let old = self.remove(seq).map(|(_, e)| e);
        self.by_sev[usize::from(severity_byte(sev))].insert(seq, e);
        let s = self.segs.entry(e.loc.seg).or_default();
        s.count += 1;
        s.bytes += u64::from(e.len);
        self.depth += 1;
        self.bytes += u64::from(e.payload);
        old
    }

    /// Removes an alert (acknowledged, dropped); `None` if it was not waiting.
    pub fn remove(&mut self, seq: u64) -> Option<(Severity, Entry)> {
        for sev in SEVERITIES {
            if let Some(e) = self.by_sev[usize::from(severity_byte(sev))].remove(&seq) {
                if let Some(s) = self.segs.get_mut(&e.loc.seg) {
                    s.count = s.count.saturating_sub(1);
                    s.bytes = s.bytes.saturating_sub(u64::from(e.len));
                    if s.count == 0 {
                        self.segs.remove(&e.loc.seg);
                    }
                }
                self.depth -= 1;
                self.bytes -= u64::from(e.payload);
                return Some((sev, e));
            }
        }
        None
    }

    pub fn get(&self, seq: u64) -> Option<(Severity, Entry)> {
        SEVERITIES.into_iter().find_map(|sev| {
            self.by_sev[usize::from(severity_byte(sev))]
                .get(&seq)
                .map(|e| (sev, *e))
        })
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.get(seq).is_some()
    }

    /// Up to `limit` alerts with seq above `after` (all when `None`), in seq
    /// order.
    pub fn after(&self, after: Option<u64>, limit: usize) -> Vec<(u64, Severity, Entry)> {
        let from = match after {
            Some(s) => match s.checked_add(1) {
                Some(n) => n,
                None => return Vec::new(),
            },
            None => 0,
        };
        let mut iters: Vec<_> = SEVERITIES
            .into_iter()
            .map(|sev| {
                self.by_sev[usize::from(severity_byte(sev))]
                    .range(from..)
                    .map(move |(s, e)| (*s, sev, *e))
                    .peekable()
            })
            .collect();
        let mut out = Vec::with_capacity(limit.min(1024));
        while out.len() < limit {
            let next = iters
                .iter_mut()
                .enumerate()
                .filter_map(|(i, it)| it.peek().map(|(s, _, _)| (*s, i)))
                .min();
            let Some((_, i)) = next else { break };
            if let Some(item) = iters[i].next() {
                out.push(item);
            }
        }
        out
    }

    /// The oldest waiting alerts of the lowest severity first: what the
    /// byte bound drops.
    pub fn eviction_order(&self) -> impl Iterator<Item = (u64, Severity, Entry)> + '_ {
        SEVERITIES.into_iter().flat_map(move |sev| {
            self.by_sev[usize::from(severity_byte(sev))]
                .iter()
                .map(move |(s, e)| (*s, sev, *e))
        })
    }

    /// Waiting alerts.
    pub fn depth(&self) -> u64 {
        self.depth
    }

    /// Their payload bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn seg_live(&self, seg: u32) -> SegLive {
        self.segs.get(&seg).copied().unwrap_or_default()
    }

    /// Waiting alerts of one segment, in seq order.
    pub fn in_segment(&self, seg: u32) -> Vec<(u64, Severity, Entry)> {
        let mut out: Vec<_> = SEVERITIES
            .into_iter()
            .flat_map(|sev| {
                self.by_sev[usize::from(severity_byte(sev))]
                    .iter()
                    .filter(move |(_, e)| e.loc.seg == seg)
                    .map(move |(s, e)| (*s, sev, *e))
            })
            .collect();
        out.sort_unstable_by_key(|(s, _, _)| *s);
        out
    }

    /// Seqs below `next_seq` that are not waiting, as inclusive ranges.
    pub fn dead_below(&self, next_seq: u64) -> Vec<[u64; 2]> {
        let mut live: Vec<u64> = self
            .by_sev
            .iter()
            .flat_map(|m| m.range(..next_seq).map(|(s, _)| *s))
            .collect();
        live.sort_unstable();
        let mut out = Vec::new();
        let mut from = 1u64;
        for s in live {
            if s > from {
                out.push([from, s - 1]);
            }
            from = s + 1;
        }
        if next_seq > from {
            out.push([from, next_seq - 1]);
        }
        out
    }
}

/// Whether `seq` is in sorted, disjoint inclusive `ranges`.
pub fn in_ranges(ranges: &[[u64; 2]], seq: u64) -> bool {
    let i = ranges.partition_point(|r| r[1] < seq);
    ranges.get(i).is_some_and(|r| r[0] <= seq)
}

/// Sorted, disjoint inclusive ranges of the given seqs (any order, dupes
/// fine).
pub fn ranges_of(seqs: impl IntoIterator<Item = u64>) -> Vec<[u64; 2]> {
    let mut v: Vec<u64> = seqs.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<[u64; 2]> = Vec::new();
    for s in v {
        match out.last_mut() {
            Some(r) if r[1] + 1 == s => r[1] = s,
            _ => out.push([s, s]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(seg: u32, payload: u32) -> Entry {
        Entry {
            loc: Loc { seg, off: 64 },
            len: payload + 40,
            payload,
        }
    }

    #[test]
    fn after_merges_the_severities_back_into_seq_order() {
        let mut ix = Index::new();
        let sevs = [Severity::Critical, Severity::Info, Severity::Warning];
        for seq in 1..=30 {
            ix.insert(seq, sevs[seq as usize % 3], e(1, 10));
        }
        let all: Vec<u64> = ix.after(None, 100).iter().map(|x| x.0).collect();
        assert_eq!(all, (1..=30).collect::<Vec<_>>());
        let some: Vec<u64> = ix.after(Some(10), 5).iter().map(|x| x.0).collect();
        assert_eq!(some, vec![11, 12, 13, 14, 15]);
        assert!(ix.after(Some(u64::MAX), 5).is_empty());
    }

    #[test]
    fn eviction_takes_info_then_warning_then_critical_oldest_first() {
        let mut ix = Index::new();
        ix.insert(1, Severity::Critical, e(1, 10));
        ix.insert(2, Severity::Info, e(1, 10));
        ix.insert(3, Severity::Warning, e(1, 10));
        ix.insert(4, Severity::Info, e(1, 10));
        let order: Vec<u64> = ix.eviction_order().map(|x| x.0).collect();
        assert_eq!(order, vec![2, 4, 3, 1]);
    }

    #[test]
    fn counts_follow_inserts_moves_and_removals() {
        let mut ix = Index::new();
        ix.insert(1, Severity::Info, e(1, 100));
        ix.insert(2, Severity::Info, e(1, 50));
        assert_eq!((ix.depth(), ix.bytes()), (2, 150));
        assert_eq!(ix.seg_live(1).count, 2);
        // Moved forward to segment 3.
        ix.insert(1, Severity::Info, e(3, 100));
        assert_eq!((ix.depth(), ix.bytes()), (2, 150));
        assert_eq!((ix.seg_live(1).count, ix.seg_live(3).count), (1, 1));
        assert_eq!(ix.remove(2).map(|x| x.0), Some(Severity::Info));
        assert_eq!(ix.remove(2), None);
        assert_eq!(ix.seg_live(1), SegLive::default());
        assert_eq!((ix.depth(), ix.bytes()), (1, 100));
    }

    #[test]
    fn dead_ranges_are_what_does_not_wait_below_next_seq() {
        let mut ix = Index::new();
        for seq in [3, 4, 7] {
            ix.insert(seq, Severity::Info, e(1, 1));
        }
        assert_eq!(ix.dead_below(10), vec![[1, 2], [5, 6], [8, 9]]);
        assert_eq!(Index::new().dead_below(1), Vec::<[u64; 2]>::new());
        assert_eq!(Index::new().dead_below(5), vec![[1, 4]]);
    }

    proptest! {
        #[test]
        fn ranges_of_and_in_ranges_agree_with_a_set(seqs in proptest::collection::vec(0u64..200, 0..100), probe in 0u64..200) {
            let r = ranges_of(seqs.iter().copied());
            prop_assert_eq!(in_ranges(&r, probe), seqs.contains(&probe));
            for w in r.windows(2) {
                prop_assert!(w[0][1] + 1 < w[1][0]);
            }
        }
    }
}
