//! What decoding Modbus answers costs: the CRC-16 of a frame, and an answer
//! checked against its request and turned into readings, for a probe (one
//! request, two registers) and a meter (one request, 124 registers: 62
//! floats). Per register it is a few nanoseconds; a 9,600-baud bus delivers
//! at most 444 registers a second (README, "Modbus"), so decoding is
//! never what limits a bus.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outpost::config::{ModbusDevice, Order, RegisterKind, RegisterMap, Target, ValueType};
use outpost::source::modbus::{decode, frame};

fn device(entries: Vec<(u16, ValueType, f64)>) -> ModbusDevice {
    ModbusDevice {
        unit: 1,
        sensor: "pumphouse/mains".into(),
        max_registers: 125,
        max_gap: 0,
        registers: entries
            .into_iter()
            .enumerate()
            .map(|(i, (address, value, scale))| RegisterMap {
                kind: RegisterKind::Input,
                address,
                value,
                word_order: Order::Big,
                byte_order: Order::Big,
                scale,
                offset: 0.0,
                target: Target::Metric(format!("m{i}")),
            })
            .collect(),
    }
}

/// The RTU answer a device sends for `block`, every register `word`.
fn answer(block: &decode::Block, word: u16) -> Vec<u8> {
    let r = &block.request;
    let mut f = vec![r.unit, r.function(), r.data_len() as u8];
    for _ in 0..r.count {
        f.extend_from_slice(&word.to_be_bytes());
    }
    let crc = frame::crc16(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

fn decoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("modbus");
    let big = vec![0x5Au8; 253];
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("crc16_253_bytes", |b| {
        b.iter(|| frame::crc16(black_box(&big)))
    });

    let cases = [
        (
            "probe_2_registers",
            device(vec![(1, ValueType::I16, 0.1), (2, ValueType::U16, 0.1)]),
        ),
        (
            "meter_124_registers_62_f32",
            device((0..62).map(|i| (i * 2, ValueType::F32, 1.0)).collect()),
        ),
    ];
    for (name, dev) in &cases {
        let blocks = decode::plan(dev);
        assert_eq!(blocks.len(), 1, "{name}: one request");
        let block = &blocks[0];
        let bytes = answer(block, 0x4366);
        g.throughput(Throughput::Elements(u64::from(block.request.count)));
        let mut out = Vec::with_capacity(dev.registers.len());
        g.bench_function(*name, |b| {
            b.iter(|| {
                out.clear();
                let frame::RtuCheck::Data(data) =
                    frame::check_rtu(&block.request, black_box(&bytes))
                else {
                    panic!("a good answer");
                };
                let bad = decode::decode_block(dev, block, data, 0, &mut out);
                black_box((bad.len(), out.len()))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decoding);
criterion_main!(benches);
