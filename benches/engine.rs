//! Per-reading cost of the rule engine with few and with many rules.
//!
//! Each reading matches about the same number of rules (its own literal or
//! prefixed rule plus two catch-all rules) whatever the rule count, so with
//! the index the cost should stay flat from 10 to 10,000 rules.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use outpost::reading::{Now, Reading};
use outpost::rules::{Aggregate, Condition, Engine, Glob, Rule, Severity};

const METRICS: [&str; 4] = ["temperature", "humidity", "pressure", "co2"];

fn rule(id: String, sensor: String, metric: &str, condition: Condition) -> Rule {
    Rule {
        id,
        sensor: Glob::new(sensor),
        metric: Glob::new(metric),
        condition,
        aggregate: None,
        for_ms: 0,
        repeat_ms: None,
        severity: Severity::Warning,
        message: None,
        labels: BTreeMap::new(),
        actions: Vec::new(),
    }
}

fn rules(n: usize) -> Vec<Rule> {
    let above = |threshold| Condition::Above {
        threshold,
        clear: Some(threshold - 10.0),
    };
    let mut v: Vec<Rule> = (0..n.saturating_sub(2))
        .map(|i| {
            let metric = METRICS[i % METRICS.len()];
            let mut r = match i % 4 {
                0 => rule(format!("r{i}"), format!("site{i}/t"), metric, above(90.0)),
                1 => rule(format!("r{i}"), format!("site{i}/*"), metric, above(95.0)),
                2 => {
                    let mut r = rule(format!("r{i}"), format!("site{i}/*t"), metric, above(80.0));
                    r.aggregate = Some((Aggregate::Avg, 10_000));
                    r
                }
                _ => {
                    let mut r = rule(format!("r{i}"), format!("site{i}/t"), metric, above(90.0));
                    r.for_ms = 5_000;
                    r
                }
            };
            r.message = Some("{sensor} {metric} is {value:.1}".to_string());
            r
        })
        .collect();
    v.push(rule(
        "any-temp".into(),
        "*".into(),
        "temperature",
        above(99.0),
    ));
    v.push(rule(
        "any-quiet".into(),
        "*/t".into(),
        "*",
        Condition::Silent { after_ms: 600_000 },
    ));
    v
}

/// A fixed pseudo-random series of readings aimed at existing rules.
fn readings(n: usize) -> Vec<Reading> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let sites = n.saturating_sub(2).max(1);
    (0..4096)
        .map(|_| {
            let i = (next() % sites as u64) as usize;
            Reading {
                sensor: format!("site{i}/t"),
                metric: METRICS[i % METRICS.len()].to_string(),
                value: (next() % 1000) as f64 / 10.0,
                ts_ms: 0,
            }
        })
        .collect()
}

fn per_reading(c: &mut Criterion) {
    let mut group = c.benchmark_group("on_reading");
    for n in [10usize, 10_000] {
        let mut engine = Engine::new(rules(n));
        let readings = readings(n);
        let mut out = Vec::new();
        let mut k = 0usize;
        let mut t: u64 = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                t += 7;
                k = (k + 1) % readings.len();
                let now = Now {
                    mono_ms: t,
                    wall_ms: 1_700_000_000_000 + t as i64,
                };
                engine.on_reading(black_box(&readings[k]), now, &mut out);
                out.clear();
            });
        });
    }
    group.finish();
}

criterion_group!(benches, per_reading);
criterion_main!(benches);
