//! The limits on what the engine keeps (`[rules]` in `outpost.toml`), and
//! the queue that finds the pair to evict when `max_pairs` is reached.
//!
//! Only a pair in `ok` can be evicted: one with a window or a silence watch
//! and nothing else. A pending or firing pair never is (that would forget
//! an alert), nor the one pair of a rule that names a single sensor and
//! metric (there is one per rule, so a flood cannot make them). Evicting
//! costs a window its samples (it refills) and a silence watch its sensor
//! (watched again from its next reading); an evicted pair also leaves the
//! stored state, so it cannot come back at a restart.
//!
//! Which one goes: the longest idle of the pairs that had only one reading
//! (what a flood of made-up sensor ids leaves behind), and only when there
//! is none of those, the longest idle of the others. Real sensors, which
//! report again and again, are the last to go.
//!
//! The queue: each reading that leaves its pair evictable appends (rule,
//! slot, stamp) to one of two FIFOs; an entry whose pair has had a reading
//! since (another stamp), has gone, or is pending or firing now is stale
//! and skipped when met. Evicting pops from the front: every entry is
//! pushed once and popped at most once, so a flood of new sensor ids costs
//! O(1) per reading, amortized. When the stale entries outnumber the pairs,
//! the FIFOs are compacted (one pass, order kept): memory stays O(pairs).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// What `max_pairs` does to a reading that needs a new pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMaxPairs {
    /// Evict the longest idle pair (see the module header) to make room.
    #[default]
    Evict,
    /// Refuse the new pair: its reading is ignored by that rule.
    Refuse,
}

impl OnMaxPairs {
    pub fn as_str(self) -> &'static str {
        match self {
            OnMaxPairs::Evict => "evict",
            OnMaxPairs::Refuse => "refuse",
        }
    }
}

/// Bounds on the engine's memory. Each pair costs at most
/// [`Limits::PAIR_BYTES`], each window sample [`Limits::SAMPLE_BYTES`]
/// (measured, with allocator slack: `examples/engine_memory.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// (rule, sensor, metric) pairs stored, over all rules.
    pub max_pairs: usize,
    pub on_max_pairs: OnMaxPairs,
    /// Window samples over all pairs. When a reading would pass it, every
    /// pair holding more than its share (`max_samples / 2` over the pairs
    /// with samples) is thinned to it.
    pub max_samples: usize,
    /// Window samples of one pair; past it the pair is thinned to half.
    pub max_samples_per_pair: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pairs: 20_000,
            on_max_pairs: OnMaxPairs::Evict,
            max_samples: 250_000,
            max_samples_per_pair: 10_000,
        }
    }
}

impl Limits {
    /// Heap per stored pair at most, names of ~40 bytes included.
    pub const PAIR_BYTES: usize = 400;
    /// Heap per window sample at most (24 bytes, a deque at most twice
    /// the length it holds).
    pub const SAMPLE_BYTES: usize = 48;
    /// The fewest samples per pair `max_samples_per_pair` can ask for.
    pub const MIN_SAMPLES_PER_PAIR: usize = 16;
    /// `max_samples` must be at least this many per pair of `max_pairs`,
    /// so that thinning always frees half of it.
    pub const MIN_SAMPLES_PER_MAX_PAIR: usize = 4;

    /// The engine's heap at the limits, at most.
    pub fn worst_case_bytes(&self) -> usize {
        self.max_pairs
            .saturating_mul(Self::PAIR_BYTES)
            .saturating_add(self.max_samples.saturating_mul(Self::SAMPLE_BYTES))
    }

    /// The limits the engine applies: `max_pairs` at least 1, and samples
    /// raised to the minimums `check` asks for.
    pub(super) fn effective(self) -> Limits {
        let max_pairs = self.max_pairs.max(1);
        Limits {
            max_pairs,
            on_max_pairs: self.on_max_pairs,
            max_samples: self
                .max_samples
                .max(max_pairs.saturating_mul(Self::MIN_SAMPLES_PER_MAX_PAIR)),
            max_samples_per_pair: self.max_samples_per_pair.max(Self::MIN_SAMPLES_PER_PAIR),
        }
    }
}

/// A pair that was evictable when it had its reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) rule: u32,
    pub(super) slot: u32,
    pub(super) stamp: u64,
}

/// The eviction queue (see the module header).
#[derive(Debug, Clone, Default)]
pub(super) struct Idle {
    /// Pairs that had one reading.
    once: VecDeque<Entry>,
    /// Pairs that had more.
    again: VecDeque<Entry>,
    /// Entries looked at (pushed, popped or kept by a compaction): the work
    /// the queue does, for the test that it stays O(1) per reading.
    #[cfg(test)]
    pub(super) work: u64,
}

impl Idle {
    pub(super) fn len(&self) -> usize {
        self.once.len() + self.again.len()
    }

    pub(super) fn push(&mut self, e: Entry, again: bool) {
        #[cfg(test)]
        {
            self.work += 1;
        }
        if again {
            self.again.push_back(e);
        } else {
            self.once.push_back(e);
        }
    }

    /// The first entry `valid` accepts, taken out with every stale one
    /// before it.
    pub(super) fn pop(&mut self, mut valid: impl FnMut(Entry) -> bool) -> Option<Entry> {
        for q in [&mut self.once, &mut self.again] {
            while let Some(e) = q.pop_front() {
                #[cfg(test)]
                {
                    self.work += 1;
                }
                if valid(e) {
                    return Some(e);
                }
            }
        }
        None
    }

    /// Drops the stale entries, keeping the order of the others.
    pub(super) fn compact(&mut self, mut valid: impl FnMut(Entry) -> bool) {
        #[cfg(test)]
        {
            self.work += self.len() as u64;
        }
        self.once.retain(|&e| valid(e));
        self.again.retain(|&e| valid(e));
        for q in [&mut self.once, &mut self.again] {
            if q.capacity() > 2 * q.len() + 64 {
                q.shrink_to(q.len() + q.len() / 2 + 16);
            }
        }
    }

    pub(super) fn clear(&mut self) {
        self.once.clear();
        self.again.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(slot: u32, stamp: u64) -> Entry {
        Entry {
            rule: 0,
            slot,
            stamp,
        }
    }

    #[test]
    fn pairs_heard_once_go_first_oldest_first_and_stale_entries_are_skipped() {
        let mut q = Idle::default();
        q.push(e(1, 1), true);
        q.push(e(2, 2), false);
        q.push(e(3, 3), false);
        q.push(e(2, 4), false);
        let live = |x: Entry| [(1, 1), (3, 3), (2, 4)].contains(&(x.slot, x.stamp));
        assert_eq!(q.pop(live), Some(e(3, 3)), "slot 2's first entry is stale");
        assert_eq!(q.pop(live), Some(e(2, 4)));
        assert_eq!(q.pop(live), Some(e(1, 1)), "then the pairs heard again");
        assert_eq!(q.pop(live), None);
    }

    #[test]
    fn compaction_keeps_the_valid_entries_in_order() {
        let mut q = Idle::default();
        for i in 0..100 {
            q.push(e(i % 10, u64::from(i)), i % 3 == 0);
        }
        q.compact(|x| x.stamp >= 90);
        assert_eq!(q.len(), 10);
        let order: Vec<u64> = std::iter::from_fn(|| q.pop(|_| true).map(|x| x.stamp)).collect();
        assert_eq!(order, [91, 92, 94, 95, 97, 98, 90, 93, 96, 99]);
    }

    #[test]
    fn the_effective_limits_keep_a_few_samples_per_pair() {
        let l = Limits {
            max_pairs: 0,
            on_max_pairs: OnMaxPairs::Refuse,
            max_samples: 0,
            max_samples_per_pair: 1,
        }
        .effective();
        assert_eq!(
            (l.max_pairs, l.max_samples, l.max_samples_per_pair),
            (1, 4, 16)
        );
    }
}
