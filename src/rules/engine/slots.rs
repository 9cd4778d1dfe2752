//! The pairs of one rule: slots with stable numbers (the eviction queue
//! refers to them), found by (sensor, metric) through a hash table of slot
//! numbers. One allocation per pair for its names; no ordered map, whose
//! nodes cost more than the pair (order, where output needs it, is made by
//! sorting what is output).

use std::hash::{BuildHasher, Hasher};

use hashbrown::HashTable;

use super::pair::Pair;

/// One stored pair and what the engine keeps about it.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    /// The sensor id, then the metric name.
    names: Box<str>,
    /// Where the metric starts in `names`.
    split: u32,
    pub(super) pair: Pair,
    /// When the pair last had a reading: the engine's count of readings
    /// applied to pairs, so idle order survives clock jumps.
    pub(super) stamp: u64,
    /// Had more than one reading (see `bounds.rs`: pairs heard from once go
    /// first).
    pub(super) again: bool,
}

impl Slot {
    pub(super) fn sensor(&self) -> &str {
        self.names.get(..self.split as usize).unwrap_or_default()
    }

    pub(super) fn metric(&self) -> &str {
        self.names.get(self.split as usize..).unwrap_or_default()
    }

    /// The names and the pair, the pair mutable.
    pub(super) fn parts(&mut self) -> (&str, &str, &mut Pair) {
        let (sensor, metric) = self
            .names
            .split_at_checked(self.split as usize)
            .unwrap_or((&self.names, ""));
        (sensor, metric, &mut self.pair)
    }

    fn is(&self, sensor: &str, metric: &str) -> bool {
        self.sensor() == sensor && self.metric() == metric
    }
}

/// How (sensor, metric) are hashed: SipHash with random keys, as sensor
/// ids come from outside and chosen ones must not pile up in one bucket.
/// One per engine, shared by all its rules' `Slots`, so a reading's hash
/// is computed once for every rule it concerns.
pub(super) type Keys = std::collections::hash_map::RandomState;

/// The pairs of one rule (see the module header).
#[derive(Debug, Clone, Default)]
pub(super) struct Slots {
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    table: HashTable<u32>,
    hasher: Keys,
    len: usize,
}

impl Slots {
    pub(super) fn new(hasher: Keys) -> Self {
        Slots {
            hasher,
            ..Slots::default()
        }
    }

    /// The hash of (sensor, metric): the same in every `Slots` made with
    /// the same keys.
    pub(super) fn hash(&self, sensor: &str, metric: &str) -> u64 {
        hash(&self.hasher, sensor, metric)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn find(&self, sensor: &str, metric: &str) -> Option<u32> {
        self.find_hashed(self.hash(sensor, metric), sensor, metric)
    }

    /// `find`, given `hash(sensor, metric)`.
    pub(super) fn find_hashed(&self, h: u64, sensor: &str, metric: &str) -> Option<u32> {
        let slots = &self.slots;
        self.table
            .find(h, |&i| {
                slot_at(slots, i).is_some_and(|s| s.is(sensor, metric))
            })
            .copied()
    }

    pub(super) fn get(&self, i: u32) -> Option<&Slot> {
        slot_at(&self.slots, i)
    }

    pub(super) fn get_mut(&mut self, i: u32) -> Option<&mut Slot> {
        self.slots.get_mut(i as usize).and_then(Option::as_mut)
    }

    /// Stores a pair that is not stored yet; returns its slot number.
    pub(super) fn insert(&mut self, sensor: &str, metric: &str, pair: Pair, stamp: u64) -> u32 {
        let mut names = String::with_capacity(sensor.len() + metric.len());
        names.push_str(sensor);
        names.push_str(metric);
        let slot = Slot {
            names: names.into_boxed_str(),
            // Sensor ids are far shorter than 4 GiB (payloads are bounded).
            split: u32::try_from(sensor.len()).unwrap_or(u32::MAX),
            pair,
            stamp,
            again: false,
        };
        let i = match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i as usize) {
                    *s = Some(slot);
                }
                i
            }
            None => {
                self.slots.push(Some(slot));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let h = self.hash(sensor, metric);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.table.insert_unique(h, i, |&j| {
            slot_at(slots, j).map_or(0, |s| hash(hasher, s.sensor(), s.metric()))
        });
        self.len += 1;
        i
    }

    /// Takes a pair out; its slot number may be given to another.
    pub(super) fn remove(&mut self, i: u32) -> Option<Slot> {
        let s = self.slots.get_mut(i as usize)?.take()?;
        let h = self.hash(s.sensor(), s.metric());
        if let Ok(entry) = self.table.find_entry(h, |&j| j == i) {
            entry.remove();
        }
        self.free.push(i);
        self.len = self.len.saturating_sub(1);
        Some(s)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((u32::try_from(i).ok()?, s.as_ref()?)))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut Slot)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| Some((u32::try_from(i).ok()?, s.as_mut()?)))
    }

    /// Slot numbers in (sensor, metric) order: the order alerts and lists
    /// come out in.
    pub(super) fn sorted(&self, mut which: Vec<u32>) -> Vec<u32> {
        which.sort_unstable_by(|&a, &b| {
            let key = |i| self.get(i).map(|s| (s.sensor(), s.metric()));
            key(a).cmp(&key(b))
        });
        which
    }
}

fn slot_at(slots: &[Option<Slot>], i: u32) -> Option<&Slot> {
    slots.get(i as usize).and_then(Option::as_ref)
}

fn hash(hasher: &impl BuildHasher, sensor: &str, metric: &str) -> u64 {
    let mut h = hasher.build_hasher();
    h.write(sensor.as_bytes());
    h.write_u8(0xff);
    h.write(metric.as_bytes());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_found_by_both_names_and_slot_numbers_are_reused() {
        let mut s = Slots::default();
        let a = s.insert("a", "bc", Pair::new(), 1);
        let b = s.insert("ab", "c", Pair::new(), 2);
        assert_ne!(a, b);
        assert_eq!((s.find("a", "bc"), s.find("ab", "c")), (Some(a), Some(b)));
        assert_eq!(s.find("abc", ""), None);
        assert_eq!(
            s.get(b).map(|x| (x.sensor(), x.metric())),
            Some(("ab", "c"))
        );
        assert_eq!(s.remove(a).map(|x| x.stamp), Some(1));
        assert_eq!((s.find("a", "bc"), s.len()), (None, 1));
        assert_eq!(s.remove(a).map(|x| x.stamp), None);
        let c = s.insert("é", "", Pair::new(), 3);
        assert_eq!(c, a, "the freed slot");
        assert_eq!(s.find("é", ""), Some(c));
        assert_eq!(s.sorted(vec![b, c]), [b, c]);
        assert_eq!(s.iter().count(), 2);
    }

    #[test]
    fn slots_made_with_the_same_keys_share_hashes() {
        let keys = Keys::new();
        let (mut a, b) = (Slots::new(keys.clone()), Slots::new(keys));
        let i = a.insert("s", "m", Pair::new(), 1);
        assert_eq!(a.hash("s", "m"), b.hash("s", "m"));
        assert_eq!(a.find_hashed(b.hash("s", "m"), "s", "m"), Some(i));
        assert_eq!(a.find_hashed(b.hash("s", "m"), "s", "x"), None);
    }
}
