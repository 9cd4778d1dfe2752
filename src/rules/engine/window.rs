//! A pair's window samples: kept for the rule's window, and thinned when a
//! pair, or all pairs together, would hold more than the limits allow.
//!
//! Thinning merges samples that are close in time: the window, up to the
//! newest sample (always kept as it came), is cut into at most `limit - 1`
//! slices of equal length, and the samples starting within a slice of the
//! first one of a run become one. A merged sample remembers the time
//! between its oldest and newest reading (`span`), so it never takes in
//! readings more than about two slices apart, however often it is thinned
//! again. What a merged sample keeps depends on what the rule tests, so the
//! aggregates stay sensible:
//! - `avg`: the mean of its readings, weighted by how many it stands for,
//!   so the window's average is that of every reading kept;
//! - `min`, `max`: the lowest or highest of its readings;
//! - these three take the time of their newest reading and leave the
//!   window with it: a thinned window reaches back at most two slices
//!   further than the rule's (an old extreme is kept a little longer);
//! - `rate_*`: the first reading, with its time: the rate is still
//!   (newest - oldest) / the time between them, over a window up to two
//!   slices shorter.
//!
//! Samples are kept in arrival order; if the clock ran backwards they may
//! not be sorted by time, and merging pairs of neighbours then halves them
//! until they fit.

use std::collections::VecDeque;

use super::Mono;
use crate::rules::{Aggregate, Condition, Rule};

/// The fewest samples a thinned window keeps: a merged one and the newest.
pub(super) const MIN_KEPT: usize = 2;

/// One window sample: a reading, or after thinning several merged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Sample {
    /// When it leaves the window: its newest reading's time, or for rates
    /// its oldest's (see [`Merge`]).
    pub(super) at: Mono,
    pub(super) value: f64,
    /// Readings it stands for: 1 until thinned.
    pub(super) weight: u32,
    /// Ms from its oldest reading to its newest: 0 until thinned.
    pub(super) span: u32,
}

impl Sample {
    pub(super) fn new(at: Mono, value: f64) -> Self {
        Sample {
            at,
            value,
            weight: 1,
            span: 0,
        }
    }
}

pub(super) type Samples = VecDeque<Sample>;

/// How the samples of one rule merge (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Merge {
    Avg,
    Min,
    Max,
    /// Rates: the first reading of a slice.
    First,
}

impl Merge {
    pub(super) fn of(rule: &Rule) -> Merge {
        match (&rule.condition, rule.aggregate) {
            (Condition::RateAbove { .. } | Condition::RateBelow { .. }, _) => Merge::First,
            (_, Some((Aggregate::Min, _))) => Merge::Min,
            (_, Some((Aggregate::Max, _))) => Merge::Max,
            _ => Merge::Avg,
        }
    }

    /// The time of the oldest reading `s` stands for.
    fn oldest(self, s: &Sample) -> Mono {
        match self {
            Merge::First => s.at,
            _ => s.at.saturating_sub(i64::from(s.span)),
        }
    }

    /// The time of the newest reading `s` stands for.
    fn newest(self, s: &Sample) -> Mono {
        match self {
            Merge::First => s.at.saturating_add(i64::from(s.span)),
            _ => s.at,
        }
    }

    /// `a` and its neighbour `b` (usually newer) as one sample.
    fn merge(self, a: Sample, b: Sample) -> Sample {
        let weight = a.weight.saturating_add(b.weight);
        let oldest = self.oldest(&a).min(self.oldest(&b));
        let newest = self.newest(&a).max(self.newest(&b));
        let span = u32::try_from(newest.saturating_sub(oldest)).unwrap_or(u32::MAX);
        let (at, value) = match self {
            Merge::Avg => {
                let (wa, wb) = (f64::from(a.weight), f64::from(b.weight));
                (newest, (a.value * wa + b.value * wb) / (wa + wb))
            }
            Merge::Min => (newest, a.value.min(b.value)),
            Merge::Max => (newest, a.value.max(b.value)),
            Merge::First if self.oldest(&b) < self.oldest(&a) => (oldest, b.value),
            Merge::First => (oldest, a.value),
        };
        Sample {
            at,
            value,
            weight,
            span,
        }
    }
}

/// The mean of the readings the samples stand for.
pub(super) fn weighted_mean(samples: &Samples) -> Option<f64> {
    let (sum, n) = samples.iter().fold((0.0, 0.0), |(s, n), x| {
        let w = f64::from(x.weight);
        (s + x.value * w, n + w)
    });
    (n > 0.0).then(|| sum / n)
}

/// Drops the samples older than `oldest` (from the front); returns how many.
pub(super) fn expire(samples: &mut Samples, oldest: Mono) -> usize {
    let before = samples.len();
    while samples.front().is_some_and(|s| s.at < oldest) {
        samples.pop_front();
    }
    let gone = before - samples.len();
    if gone > 0 {
        fit_capacity(samples);
    }
    gone
}

/// Gives memory back when a window holds far fewer samples than it once
/// did: capacity stays within twice the length (plus a little).
fn fit_capacity(samples: &mut Samples) {
    let len = samples.len();
    if samples.capacity() > 2 * len + 8 {
        samples.shrink_to(len + len / 2 + 4);
    }
}

/// Thins `samples` to at most `limit` (never fewer than [`MIN_KEPT`]),
/// keeping the newest as it is; returns how many samples went.
pub(super) fn thin(samples: &mut Samples, limit: usize, merge: Merge) -> usize {
    let limit = limit.max(MIN_KEPT);
    let before = samples.len();
    if before <= limit {
        return 0;
    }
    let Some(newest) = samples.pop_back() else {
        return 0;
    };
    let slices = limit - 1;
    let older = samples.make_contiguous();
    // `older` is not empty: `before > limit >= 2`.
    let first = older.first().map_or(0, |s| merge.oldest(s));
    let last = older.last().map_or(0, |s| merge.oldest(s));
    let span = u64::try_from(last.saturating_sub(first)).unwrap_or(0);
    // span / width < slices: runs starting `width` apart fit in `slices`.
    let width = span / u64::try_from(slices).unwrap_or(u64::MAX) + 1;
    let mut kept = merge_runs(older, merge, |run, next| {
        let gap = next_gap(merge.oldest(run), merge.oldest(next));
        gap < width
    });
    // Unsorted times (a clock that ran backwards) make more runs than
    // slices: merge neighbours pairwise until they fit.
    while kept > slices {
        let mut i = 0;
        kept = merge_runs(&mut older[..kept], merge, |_, _| {
            i += 1;
            i % 2 == 1
        });
    }
    samples.truncate(kept);
    samples.push_back(newest);
    fit_capacity(samples);
    before - samples.len()
}

/// Ms from `from` to `to`, 0 if `to` is earlier.
fn next_gap(from: Mono, to: Mono) -> u64 {
    u64::try_from(to.saturating_sub(from)).unwrap_or(0)
}

/// Merges each run of consecutive samples that `same` says belong together
/// (asked of the run so far, merged, and the next sample), in place;
/// returns how many remain at the front of `s`.
fn merge_runs(
    s: &mut [Sample],
    merge: Merge,
    mut same: impl FnMut(&Sample, &Sample) -> bool,
) -> usize {
    let mut w = 0;
    for r in 1..s.len() {
        if same(&s[w], &s[r]) {
            s[w] = merge.merge(s[w], s[r]);
        } else {
            w += 1;
            s[w] = s[r];
        }
    }
    if s.is_empty() { 0 } else { w + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(values: impl IntoIterator<Item = (Mono, f64)>) -> Samples {
        values.into_iter().map(|(t, v)| Sample::new(t, v)).collect()
    }

    fn values(s: &Samples) -> Vec<f64> {
        s.iter().map(|x| x.value).collect()
    }

    #[test]
    fn a_window_within_its_limit_is_left_alone() {
        let mut s = window((0..10).map(|i| (i, i as f64)));
        assert_eq!(thin(&mut s, 10, Merge::Avg), 0);
        assert_eq!(s.len(), 10);
    }

    #[test]
    fn thinning_keeps_the_weighted_mean_the_extremes_and_the_newest_reading() {
        let readings: Vec<(Mono, f64)> = (0..1000)
            .map(|i| (i * 10, ((i * 37) % 101) as f64))
            .collect();
        let mean = readings.iter().map(|r| r.1).sum::<f64>() / 1000.0;
        for limit in [2, 3, 10, 100, 999] {
            let mut avg = window(readings.clone());
            let gone = thin(&mut avg, limit, Merge::Avg);
            assert!(avg.len() <= limit && avg.len() + gone == 1000, "{limit}");
            assert!(
                (weighted_mean(&avg).unwrap() - mean).abs() < 1e-9,
                "{limit}"
            );
            assert_eq!(avg.back(), Some(&Sample::new(9990, 98.0)));
            assert_eq!(avg.iter().map(|s| s.weight).sum::<u32>(), 1000);

            let mut min = window(readings.clone());
            thin(&mut min, limit, Merge::Min);
            let lowest = values(&min).into_iter().fold(f64::INFINITY, f64::min);
            assert_eq!(lowest, 0.0);
            let mut max = window(readings.clone());
            thin(&mut max, limit, Merge::Max);
            let highest = values(&max).into_iter().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(highest, 100.0);
            // A merged extreme carries its newest time: it stays while any
            // of its readings is in the window.
            assert!(max.iter().all(|s| s.at % 10 == 0));
        }
    }

    #[test]
    fn a_thinned_rate_window_keeps_its_oldest_and_newest_readings() {
        let mut s = window((0..1000).map(|i| (i * 10, i as f64 * 2.0)));
        thin(&mut s, 50, Merge::First);
        assert!(s.len() <= 50);
        assert_eq!((s[0].at, s[0].value), (0, 0.0));
        assert_eq!(s.back(), Some(&Sample::new(9990, 1998.0)));
        // Every kept reading is a real one: the slope between any two is 2 per 10 ms.
        assert!(s.iter().all(|x| x.value == x.at as f64 / 5.0));
    }

    #[test]
    fn slices_are_even_in_time_so_old_samples_are_no_coarser_than_new_ones() {
        let mut s = window((0..10_000).map(|i| (i, 1.0)));
        thin(&mut s, 101, Merge::Avg);
        // 100 slices of 100 ms each, then the newest.
        let weights: Vec<u32> = s.iter().map(|x| x.weight).collect();
        assert!(
            weights[..weights.len() - 1]
                .iter()
                .all(|&w| (99..=101).contains(&w)),
            "{weights:?}"
        );
    }

    #[test]
    fn a_merged_spike_leaves_a_sliding_window_within_two_slices_of_its_time() {
        // Readings every 10 ms in a 10 s window, a spike at 5 s, the window
        // thinned to 8 whenever it holds 16 (as a pair's cap does): merged
        // again and again, the spike's sample never takes in readings more
        // than two slices (10 s / 7) after it.
        let slice = 10_000 / 7 + 1;
        let mut s = Samples::new();
        let mut gone_at = None;
        for t in (0..30_000).step_by(10) {
            expire(&mut s, t - 10_000);
            if s.len() >= 16 {
                thin(&mut s, 8, Merge::Max);
            }
            s.push_back(Sample::new(t, if t == 5_000 { 99.0 } else { 20.0 }));
            let has_spike = s.iter().any(|x| x.value == 99.0);
            match gone_at {
                None if t > 5_000 && !has_spike => gone_at = Some(t),
                Some(_) => assert!(!has_spike, "back at {t}"),
                None => {}
            }
        }
        let gone_at = gone_at.expect("the spike left");
        assert!(
            (15_000..=15_000 + 2 * slice).contains(&gone_at),
            "gone at {gone_at}"
        );
    }

    #[test]
    fn samples_out_of_time_order_still_fit_the_limit() {
        let mut s = window((0..500).map(|i| (if i % 2 == 0 { i } else { 10_000 - i }, i as f64)));
        thin(&mut s, 7, Merge::Avg);
        assert!(s.len() <= 7);
        assert_eq!(s.iter().map(|x| x.weight).sum::<u32>(), 500);
    }

    #[test]
    fn expiring_gives_memory_back() {
        let mut s = window((0..10_000).map(|i| (i, 0.0)));
        assert_eq!(expire(&mut s, 9_990), 9_990);
        assert_eq!(s.len(), 10);
        assert!(s.capacity() <= 2 * 10 + 8, "{}", s.capacity());
    }
}
