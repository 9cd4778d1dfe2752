//! Per-payload cost of the parsers (json, a Tasmota-shaped nested JSON, kv,
//! csv, number) and of the alert topic builder: the pure code every reading
//! and every alert goes through.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outpost::payload::{self, Format, ParseContext};
use outpost::topic;

/// (name, format, payload): what devices really send.
const PAYLOADS: [(&str, Format, &str); 6] = [
    (
        "json_flat",
        Format::Json,
        r#"{"temperature":21.5,"humidity":40.2}"#,
    ),
    (
        "json_sensor_ts",
        Format::Json,
        r#"{"sensor":"greenhouse/t1","ts":"2026-11-26T10:00:00.123Z","temperature":21.5,"humidity":40.2}"#,
    ),
    (
        "json_tasmota",
        Format::Json,
        r#"{"Time":"2026-11-26T10:00:00","BME280":{"Temperature":21.5,"Humidity":40.2,"DewPoint":7.6,"Pressure":1013.2},"PressureUnit":"hPa","TempUnit":"C"}"#,
    ),
    ("kv", Format::Kv, "sensor=t1 temperature=21.5 humidity=40"),
    ("csv", Format::Csv, "1764151200,t1,21.5,40.2"),
    ("number", Format::Number, "21.5"),
];

fn parsers(c: &mut Criterion) {
    let columns: Vec<String> = ["ts", "sensor", "temperature", "humidity"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let ctx = ParseContext {
        default_sensor: Some("tele/bench/SENSOR"),
        columns: &columns,
        metric: "temperature",
        received_ms: 1_764_151_200_000,
    };
    let mut group = c.benchmark_group("parse");
    for (name, format, text) in PAYLOADS {
        let mut out = Vec::with_capacity(8);
        // A benchmark of a parser that fails would measure the error path.
        if let Err(e) = payload::parse(format, text.as_bytes(), &ctx, &mut out) {
            panic!("bench payload {name} does not parse: {e}");
        }
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let r = payload::parse(format, black_box(text.as_bytes()), &ctx, &mut out);
                black_box((r, out.len()))
            })
        });
    }
    group.finish();
}

fn topics(c: &mut Criterion) {
    let mut group = c.benchmark_group("alert_topic");
    group.bench_function("plain", |b| {
        b.iter(|| {
            topic::alert_topic(
                black_box("outpost/greenhouse-pi"),
                black_box("greenhouse-hot"),
                black_box("greenhouse/t1"),
            )
        })
    });
    group.bench_function("sanitized", |b| {
        b.iter(|| {
            topic::alert_topic(
                black_box("outpost/greenhouse-pi"),
                black_box("greenhouse-hot"),
                black_box("zigbee2mqtt/+kitchen#\u{1}//sensor"),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, parsers, topics);
criterion_main!(benches);
