//! Outbox costs: a push plus the flush that makes it durable, by group size
//! (group commit: alerts arriving together share one flush), and the
//! publish path (read a window, acknowledge one by one).
//!
//! `cargo bench --bench outbox`. The end-to-end numbers (durable alerts/s,
//! drain to Mosquitto, bytes per alert, RSS) come from
//! `examples/outbox_bench.rs`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use outpost::outbox::Outbox;
use outpost::rules::{AlertDraft, AlertState, Reason, Severity};

fn draft(i: u64) -> AlertDraft {
    AlertDraft {
        rule: "greenhouse-hot".into(),
        sensor: format!("greenhouse/t{}", i % 16),
        metric: "temperature".into(),
        state: AlertState::Firing,
        severity: Severity::Warning,
        value: 31.2,
        threshold: 30.0,
        ts_ms: 1_800_000_000_000 + i as i64,
        since_ms: 1_800_000_000_000,
        message: "greenhouse/t1 is 31.2°C, above 30°C".into(),
        labels: [("room".to_string(), "greenhouse".to_string())].into(),
        actions: Vec::new(),
        reason: Reason::Transition,
    }
}

fn push_and_flush(c: &mut Criterion) {
    let mut g = c.benchmark_group("push_flush");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for group in [1u64, 16, 256] {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path()).unwrap().0;
        let drafts: Vec<_> = (0..group).map(draft).collect();
        g.throughput(Throughput::Elements(group));
        g.bench_with_input(BenchmarkId::from_parameter(group), &drafts, |b, d| {
            b.iter(|| {
                o.push("bench", d, &[], outpost::reading::Clock::new().now())
                    .unwrap();
                o.flush_blocking().unwrap();
            })
        });
    }
    g.finish();
}

fn read_and_ack(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish_path");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    let o = Outbox::open(dir.path()).unwrap().0;
    let drafts: Vec<_> = (0..64).map(draft).collect();
    g.throughput(Throughput::Elements(64));
    g.bench_function("push_64_read_window_ack_each", |b| {
        b.iter(|| {
            o.push("bench", &drafts, &[], outpost::reading::Clock::new().now())
                .unwrap();
            let window = o.after(None, 64).unwrap();
            for r in &window {
                black_box(r.alert().unwrap());
                o.ack(r.seq).unwrap();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, push_and_flush, read_and_ack);
criterion_main!(benches);
