//! Which rules a reading may concern, without testing them all: rules by
//! literal metric, then by literal sensor or sensor prefix.

use std::collections::HashMap;

use super::pair::LiveRule;
use crate::rules::Rule;

#[derive(Debug, Clone, Default)]
struct SensorIndex {
    literal: HashMap<String, Vec<u32>>,
    /// Glob rules keyed by their literal prefix (non-empty).
    prefixed: HashMap<String, Vec<u32>>,
    /// Distinct lengths of the keys of `prefixed`, ascending.
    prefix_lens: Vec<usize>,
    /// Glob rules starting with `*`.
    unprefixed: Vec<u32>,
}

impl SensorIndex {
    fn add(&mut self, rule: &Rule, idx: u32) {
        if let Some(sensor) = rule.sensor.literal() {
            self.literal
                .entry(sensor.to_string())
                .or_default()
                .push(idx);
            return;
        }
        let prefix = rule.sensor.literal_prefix();
        if prefix.is_empty() {
            self.unprefixed.push(idx);
        } else {
            self.prefixed
                .entry(prefix.to_string())
                .or_default()
                .push(idx);
            if let Err(at) = self.prefix_lens.binary_search(&prefix.len()) {
                self.prefix_lens.insert(at, prefix.len());
            }
        }
    }

    fn candidates(&self, sensor: &str, out: &mut Vec<u32>) {
        if let Some(v) = self.literal.get(sensor) {
            out.extend_from_slice(v);
        }
        for &len in &self.prefix_lens {
            // `get` returns None past the end or off a char boundary.
            let Some(prefix) = sensor.get(..len) else {
                continue;
            };
            if let Some(v) = self.prefixed.get(prefix) {
                out.extend_from_slice(v);
            }
        }
        out.extend_from_slice(&self.unprefixed);
    }
}

/// Rules by literal metric, then by literal sensor or sensor prefix.
#[derive(Debug, Clone, Default)]
pub(super) struct Index {
    by_metric: HashMap<String, SensorIndex>,
    /// Rules whose metric is a glob.
    metric_globs: SensorIndex,
}

impl Index {
    pub(super) fn build(live: &[LiveRule]) -> Self {
        let mut index = Index::default();
        for (i, live) in live.iter().enumerate() {
            let idx = u32::try_from(i).unwrap_or(u32::MAX);
            match live.rule.metric.literal() {
                Some(metric) => index
                    .by_metric
                    .entry(metric.to_string())
                    .or_default()
                    .add(&live.rule, idx),
                None => index.metric_globs.add(&live.rule, idx),
            }
        }
        index
    }

    /// An index that offers every one of `n` rules for every reading: the
    /// scan the real index must agree with, for tests.
    #[cfg(test)]
    pub(super) fn every_rule(n: usize) -> Self {
        let mut index = Index::default();
        index.metric_globs.unprefixed = (0..n).filter_map(|i| u32::try_from(i).ok()).collect();
        index
    }

    pub(super) fn candidates(&self, sensor: &str, metric: &str, out: &mut Vec<u32>) {
        if let Some(bucket) = self.by_metric.get(metric) {
            bucket.candidates(sensor, out);
        }
        self.metric_globs.candidates(sensor, out);
    }
}
