//! Per-reading cost of the rule engine with few and with many rules, and at
//! its pair limit.
//!
//! `on_reading`: each reading matches about the same number of rules (its
//! own literal or prefixed rule plus two catch-all rules) whatever the rule
//! count, so with the index the cost should stay flat from 10 to 10,000
//! rules.
//!
//! `at_max_pairs`: a flood of sensor ids never seen, against a silence
//! watch and a 1 h average on every sensor, with the engine full: every
//! reading needs two new pairs, so each evicts two (`evict`) or is refused
//! (`refuse`). Eviction is amortized O(1): the cost should stay flat from
//! 2,000 to 200,000 pairs.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use outpost::reading::{Now, Reading};
use outpost::rules::{Aggregate, Condition, Engine, Limits, OnMaxPairs, Rule};

const METRICS: [&str; 4] = ["temperature", "humidity", "pressure", "co2"];

fn rule(id: String, sensor: String, metric: &str, condition: Condition) -> Rule {
    Rule::plain(&id, &sensor, metric, condition)
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

fn at_max_pairs(c: &mut Criterion) {
    let mut group = c.benchmark_group("at_max_pairs");
    let rules = || {
        let mut avg = rule(
            "avg".into(),
            "*".into(),
            "temperature",
            Condition::Above {
                threshold: 1e9,
                clear: None,
            },
        );
        avg.aggregate = Some((Aggregate::Avg, 3_600_000));
        let quiet = rule(
            "quiet".into(),
            "*".into(),
            "temperature",
            Condition::Silent {
                after_ms: 3_600_000,
            },
        );
        vec![avg, quiet]
    };
    let at = |t: u64| Now {
        mono_ms: t,
        wall_ms: 1_700_000_000_000 + t as i64,
    };
    // Ids cycle through more than the engine holds: each is new again by
    // the time it comes back.
    let ids: Vec<Reading> = (0..400_000u64)
        .map(|i| Reading {
            sensor: format!("flood/{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            metric: "temperature".into(),
            value: 20.0,
            ts_ms: 0,
        })
        .collect();
    for (name, max_pairs, on_max_pairs) in [
        ("evict/2000", 2_000, OnMaxPairs::Evict),
        ("evict/20000", 20_000, OnMaxPairs::Evict),
        ("evict/200000", 200_000, OnMaxPairs::Evict),
        ("refuse/20000", 20_000, OnMaxPairs::Refuse),
    ] {
        let limits = Limits {
            max_pairs,
            on_max_pairs,
            ..Limits::default()
        };
        let mut engine = Engine::with_limits(rules(), limits);
        let mut out = Vec::new();
        let mut t: u64 = 0;
        let mut k = 0usize;
        // Full before measuring.
        while engine.stats().pairs < max_pairs {
            t += 1;
            engine.on_reading(&ids[k % ids.len()], at(t), &mut out);
            k += 1;
        }
        group.bench_function(name, |b| {
            b.iter(|| {
                t += 1;
                k += 1;
                engine.on_reading(black_box(&ids[k % ids.len()]), at(t), &mut out);
                out.clear();
            });
        });
        assert!(engine.stats().pairs <= max_pairs);
    }
    group.finish();
}

criterion_group!(benches, per_reading, at_max_pairs);
criterion_main!(benches);
