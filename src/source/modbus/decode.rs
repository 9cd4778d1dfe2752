//! Register tables turned into requests and answers into readings, pure.
//!
//! [`plan`] groups a device's entries into as few requests as its limits
//! allow (entries of one table, adjacent or `max_gap` apart, at most
//! `max_registers` per request); [`decode_block`] turns the data of one
//! answer into readings: each value's registers put in order (`word_order`
//! says which register is most significant, `byte_order` which byte within
//! a register), read as its type, then `raw × scale + offset`; a status
//! register's bits each become a 0/1 metric.

use crate::config::{ModbusDevice, Order, RegisterMap, Target, ValueType};
use crate::reading::Reading;

use super::frame::{MAX_READ_BITS, MAX_READ_REGISTERS, Request};

/// One request of a device's poll, and the entries (indexes into the
/// device's `registers`) its answer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub request: Request,
    pub maps: Vec<usize>,
}

impl Block {
    /// `input 0-11`, for logs and errors.
    pub fn registers(&self) -> String {
        let r = &self.request;
        let last = u32::from(r.address) + u32::from(r.count).saturating_sub(1);
        if r.count <= 1 {
            format!("{} {}", r.kind.as_str(), r.address)
        } else {
            format!("{} {}-{last}", r.kind.as_str(), r.address)
        }
    }
}

/// The requests that read every entry of `device`, in table and address order.
pub fn plan(device: &ModbusDevice) -> Vec<Block> {
    let mut order: Vec<usize> = (0..device.registers.len()).collect();
    order.sort_by_key(|&i| (device.registers[i].kind, device.registers[i].address));
    let mut blocks: Vec<Block> = Vec::new();
    let mut block_end = 0u32; // last address the current block covers
    for i in order {
        let m = &device.registers[i];
        let limit = u32::from(if m.kind.is_bits() {
            device
                .max_registers
                .saturating_mul(16)
                .clamp(1, MAX_READ_BITS)
        } else {
            device.max_registers.clamp(1, MAX_READ_REGISTERS)
        });
        if let Some(b) = blocks.last_mut() {
            let start = u32::from(b.request.address);
            let end = block_end.max(m.end());
            let joins = b.request.kind == m.kind
                && u32::from(m.address) <= block_end + 1 + u32::from(device.max_gap)
                && end - start < limit;
            if joins {
                b.maps.push(i);
                block_end = end;
                // end - start < limit <= 2000: fits a u16.
                b.request.count = (end - start + 1) as u16;
                continue;
            }
        }
        blocks.push(Block {
            request: Request {
                unit: device.unit,
                kind: m.kind,
                address: m.address,
                count: m.count(),
            },
            maps: vec![i],
        });
        block_end = m.end();
    }
    blocks
}

/// The register `i` (0 = the first asked for) of an answer's data, whose
/// registers are big-endian on the wire.
pub fn word(data: &[u8], i: usize) -> Option<u16> {
    let b = data.get(2 * i..2 * i + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// The bit `i` of a coil or discrete-input answer's data: the first asked
/// for is the least significant bit of the first byte.
pub fn bit(data: &[u8], i: usize) -> Option<bool> {
    Some(data.get(i / 8)? >> (i % 8) & 1 == 1)
}

/// The value's registers, `words` as received, put together into one
/// unsigned integer (most significant first per `word_order`, the bytes of
/// each register per `byte_order`).
pub fn assemble(words: &[u16], word_order: Order, byte_order: Order) -> u64 {
    let fix = |w: u16| match byte_order {
        Order::Big => w,
        Order::Little => w.swap_bytes(),
    };
    let acc = |acc: u64, w: &u16| acc << 16 | u64::from(fix(*w));
    match word_order {
        Order::Big => words.iter().fold(0, acc),
        Order::Little => words.iter().rev().fold(0, acc),
    }
}

/// The unscaled value of `bits` (from [`assemble`]) read as `ty`.
pub fn raw_value(ty: ValueType, bits: u64) -> f64 {
    match ty {
        ValueType::Bool => (bits & 1) as f64,
        ValueType::U16 => f64::from(bits as u16),
        ValueType::I16 => f64::from(bits as u16 as i16),
        ValueType::U32 => f64::from(bits as u32),
        ValueType::I32 => f64::from(bits as u32 as i32),
        ValueType::F32 => f64::from(f32::from_bits(bits as u32)),
        ValueType::U64 => bits as f64,
        ValueType::I64 => bits as i64 as f64,
        ValueType::F64 => f64::from_bits(bits),
    }
}

/// `raw × scale`, as a person would compute it: a scale that is one over
/// a whole number (0.1, 0.01) divides by that number, so 267 × 0.1 is 26.7,
/// not 26.700000000000003.
pub fn scaled(raw: f64, scale: f64) -> f64 {
    let inverse = 1.0 / scale;
    let whole = inverse.round();
    if whole.abs() >= 2.0 && (inverse - whole).abs() < 1e-9 * whole.abs() {
        raw / whole
    } else {
        raw * scale
    }
}

/// The raw bits of entry `m` in the data of an answer to `req`; None when
/// the data does not hold it (a block that does not cover the entry).
pub fn entry_bits(m: &RegisterMap, req: &Request, data: &[u8]) -> Option<u64> {
    let offset = usize::from(m.address.checked_sub(req.address)?);
    if m.kind.is_bits() {
        return bit(data, offset).map(u64::from);
    }
    let n = usize::from(m.count());
    let mut words = [0u16; 4];
    for (k, w) in words.iter_mut().enumerate().take(n) {
        *w = word(data, offset + k)?;
    }
    Some(assemble(&words[..n], m.word_order, m.byte_order))
}

/// The readings of one answer (`data` as checked by `frame`), pushed onto
/// `out`; returns the metrics whose value was not finite (a float register
/// holding NaN), which are left out.
pub fn decode_block<'a>(
    device: &'a ModbusDevice,
    block: &Block,
    data: &[u8],
    ts_ms: i64,
    out: &mut Vec<Reading>,
) -> Vec<&'a str> {
    let mut not_finite = Vec::new();
    for &i in &block.maps {
        let Some(m) = device.registers.get(i) else {
            continue;
        };
        let Some(bits) = entry_bits(m, &block.request, data) else {
            continue;
        };
        match &m.target {
            Target::Metric(metric) => {
                let value = scaled(raw_value(m.value, bits), m.scale) + m.offset;
                if value.is_finite() {
                    out.push(Reading {
                        sensor: device.sensor.clone(),
                        metric: metric.clone(),
                        value,
                        ts_ms,
                    });
                } else {
                    not_finite.push(metric.as_str());
                }
            }
            Target::Bits(bits_of) => {
                for (metric, n) in bits_of {
                    out.push(Reading {
                        sensor: device.sensor.clone(),
                        metric: metric.clone(),
                        value: ((bits >> n) & 1) as f64,
                        ts_ms,
                    });
                }
            }
        }
    }
    not_finite
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegisterKind;
    use proptest::prelude::*;

    fn map(kind: RegisterKind, address: u16, value: ValueType, metric: &str) -> RegisterMap {
        RegisterMap {
            kind,
            address,
            value,
            word_order: Order::Big,
            byte_order: Order::Big,
            scale: 1.0,
            offset: 0.0,
            target: Target::Metric(metric.into()),
        }
    }

    fn device(registers: Vec<RegisterMap>, max_registers: u16, max_gap: u16) -> ModbusDevice {
        ModbusDevice {
            unit: 1,
            sensor: "dev".into(),
            max_registers,
            max_gap,
            registers,
        }
    }

    /// Register words as the wire carries them.
    fn data(words: &[u16]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    #[test]
    fn the_four_orders_of_a_float_give_the_same_value() {
        // 123.456f32 = 0x42F6E979: ABCD, CDAB, BADC, DCBA.
        let cases = [
            ([0x42F6, 0xE979], Order::Big, Order::Big),
            ([0xE979, 0x42F6], Order::Little, Order::Big),
            ([0xF642, 0x79E9], Order::Big, Order::Little),
            ([0x79E9, 0xF642], Order::Little, Order::Little),
        ];
        for (words, wo, bo) in cases {
            let v = raw_value(ValueType::F32, assemble(&words, wo, bo));
            assert_eq!(v, f64::from(123.456f32), "{words:x?} {wo:?} {bo:?}");
        }
    }

    #[test]
    fn integers_of_every_width_and_sign() {
        let c = |ty, words: &[u16]| raw_value(ty, assemble(words, Order::Big, Order::Big));
        assert_eq!(c(ValueType::U16, &[0xFF38]), 65336.0);
        assert_eq!(c(ValueType::I16, &[0xFF38]), -200.0);
        assert_eq!(c(ValueType::U32, &[0xFFFF, 0xFFFE]), 4294967294.0);
        assert_eq!(c(ValueType::I32, &[0xFFFF, 0xFFFE]), -2.0);
        assert_eq!(c(ValueType::U64, &[0, 0, 0x0001, 0x0000]), 65536.0);
        assert_eq!(c(ValueType::I64, &[0xFFFF; 4]), -1.0);
        assert_eq!(
            c(ValueType::F64, &[0x4093, 0x4A45, 0x6D5C, 0xFAAD]),
            1234.5678
        );
    }

    #[test]
    fn a_block_gives_scaled_values_and_status_bits() {
        let mut t = map(RegisterKind::Input, 1, ValueType::I16, "temperature");
        t.scale = 0.1;
        let mut h = map(RegisterKind::Input, 2, ValueType::U16, "humidity");
        h.scale = 0.1;
        h.offset = -1.0;
        let mut s = map(RegisterKind::Input, 3, ValueType::U16, "");
        s.target = Target::Bits(vec![("running".into(), 0), ("fault".into(), 15)]);
        let dev = device(vec![t, h, s], 125, 0);
        let blocks = plan(&dev);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].registers(), "input 1-3");
        let mut out = Vec::new();
        let bad = decode_block(&dev, &blocks[0], &data(&[0xFF38, 415, 0x8001]), 7, &mut out);
        assert!(bad.is_empty());
        let got: Vec<(&str, f64)> = out.iter().map(|r| (r.metric.as_str(), r.value)).collect();
        assert_eq!(
            got,
            vec![
                ("temperature", -20.0),
                ("humidity", 40.5),
                ("running", 1.0),
                ("fault", 1.0)
            ]
        );
        assert!(out.iter().all(|r| r.sensor == "dev" && r.ts_ms == 7));
    }

    #[test]
    fn decimal_scales_give_the_decimal_value() {
        assert_eq!(scaled(267.0, 0.1), 26.7);
        assert_eq!(scaled(-215.0, 0.1), -21.5);
        assert_eq!(scaled(12345.0, 0.01), 123.45);
        assert_eq!(scaled(70000.0, 0.001), 70.0);
        assert_eq!(scaled(3.0, 2.5), 7.5);
        assert_eq!(scaled(3.0, 1.0), 3.0);
        assert_eq!(scaled(3.0, -0.5), -1.5);
    }

    #[test]
    fn coils_are_read_bit_by_bit() {
        let dev = device(
            vec![
                map(RegisterKind::Coil, 0, ValueType::Bool, "pump"),
                map(RegisterKind::Coil, 9, ValueType::Bool, "valve"),
                map(RegisterKind::Discrete, 0, ValueType::Bool, "door"),
            ],
            125,
            10,
        );
        let blocks = plan(&dev);
        assert_eq!(blocks.len(), 2, "{blocks:?}");
        assert_eq!(blocks[0].request.count, 10);
        let mut out = Vec::new();
        decode_block(&dev, &blocks[0], &[0b0000_0001, 0b0000_0010], 0, &mut out);
        let got: Vec<f64> = out.iter().map(|r| r.value).collect();
        assert_eq!(got, vec![1.0, 1.0]);
    }

    #[test]
    fn nan_from_a_float_register_is_left_out_and_named() {
        let dev = device(
            vec![map(RegisterKind::Holding, 0, ValueType::F32, "power")],
            125,
            0,
        );
        let b = &plan(&dev)[0];
        let mut out = Vec::new();
        assert_eq!(
            decode_block(&dev, b, &data(&[0x7FC0, 0]), 0, &mut out),
            vec!["power"]
        );
        assert!(out.is_empty());
    }

    #[test]
    fn requests_merge_adjacent_entries_up_to_the_limit_and_the_gap() {
        let regs: Vec<RegisterMap> = (0..10)
            .map(|i| map(RegisterKind::Input, i * 2, ValueType::F32, "m"))
            .collect();
        let counts = |max, gap| -> Vec<(u16, u16)> {
            plan(&device(regs.clone(), max, gap))
                .iter()
                .map(|b| (b.request.address, b.request.count))
                .collect()
        };
        assert_eq!(counts(125, 0), vec![(0, 20)]);
        assert_eq!(counts(6, 0), vec![(0, 6), (6, 6), (12, 6), (18, 2)]);
        assert_eq!(counts(1, 0).len(), 10, "a value never splits");
        let sparse: Vec<RegisterMap> = [0u16, 6, 12]
            .iter()
            .map(|&a| map(RegisterKind::Input, a, ValueType::F32, "m"))
            .collect();
        let plan_of = |gap| plan(&device(sparse.clone(), 125, gap)).len();
        assert_eq!(plan_of(0), 3);
        assert_eq!(
            plan_of(3),
            3,
            "a gap of 4 registers does not join at max_gap 3"
        );
        assert_eq!(plan_of(4), 1);
    }

    fn order() -> impl Strategy<Value = Order> {
        prop_oneof![Just(Order::Big), Just(Order::Little)]
    }

    /// The registers a device would send for `bytes` (most significant
    /// first) in the given orders: the inverse of `assemble`, written the
    /// other way round (reverse the byte string, then swap).
    fn encode(bytes: &[u8], wo: Order, bo: Order) -> Vec<u16> {
        let mut words: Vec<u16> = bytes
            .chunks(2)
            .map(|c| match bo {
                Order::Big => u16::from_be_bytes([c[0], c[1]]),
                Order::Little => u16::from_le_bytes([c[0], c[1]]),
            })
            .collect();
        if wo == Order::Little {
            words.reverse();
        }
        words
    }

    proptest! {
        #[test]
        fn every_type_round_trips_in_every_order(
            v in any::<i64>(), f in any::<f64>(), g in any::<f32>(), wo in order(), bo in order(),
        ) {
            let dec = |ty, bytes: &[u8]| raw_value(ty, assemble(&encode(bytes, wo, bo), wo, bo));
            prop_assert_eq!(dec(ValueType::I16, &(v as i16).to_be_bytes()), f64::from(v as i16));
            prop_assert_eq!(dec(ValueType::U16, &(v as u16).to_be_bytes()), f64::from(v as u16));
            prop_assert_eq!(dec(ValueType::I32, &(v as i32).to_be_bytes()), f64::from(v as i32));
            prop_assert_eq!(dec(ValueType::U32, &(v as u32).to_be_bytes()), f64::from(v as u32));
            prop_assert_eq!(dec(ValueType::I64, &v.to_be_bytes()), v as f64);
            prop_assert_eq!(dec(ValueType::U64, &(v as u64).to_be_bytes()), v as u64 as f64);
            let df = dec(ValueType::F64, &f.to_be_bytes());
            prop_assert!(df == f || (df.is_nan() && f.is_nan()));
            let dg = dec(ValueType::F32, &g.to_be_bytes());
            prop_assert!(dg == f64::from(g) || (dg.is_nan() && g.is_nan()));
        }

        /// Any table is covered exactly: every entry in one block, inside
        /// it, blocks within the limits, never mixing tables.
        #[test]
        fn a_plan_covers_every_entry_once_within_limits(
            entries in proptest::collection::vec((0u16..300, 0usize..4, 0usize..3), 0..40),
            max in 1u16..=130, gap in 0u16..5,
        ) {
            let kinds = [RegisterKind::Coil, RegisterKind::Discrete, RegisterKind::Holding, RegisterKind::Input];
            let types = [ValueType::U16, ValueType::F32, ValueType::F64];
            let regs: Vec<RegisterMap> = entries.iter().map(|&(a, k, t)| {
                let ty = if kinds[k].is_bits() { ValueType::Bool } else { types[t] };
                map(kinds[k], a, ty, "m")
            }).collect();
            let dev = device(regs.clone(), max, gap);
            let blocks = plan(&dev);
            let mut seen = vec![0; regs.len()];
            for b in &blocks {
                let r = &b.request;
                let limit = if r.kind.is_bits() { (max * 16).min(2000) } else { max.min(125) };
                prop_assert!(r.count >= 1);
                prop_assert!(r.count <= limit || b.maps.len() == 1);
                for &i in &b.maps {
                    seen[i] += 1;
                    prop_assert_eq!(regs[i].kind, r.kind);
                    prop_assert!(regs[i].address >= r.address);
                    prop_assert!(regs[i].end() < u32::from(r.address) + u32::from(r.count));
                }
            }
            prop_assert!(seen.iter().all(|&n| n == 1));
        }

        /// Data of any length never panics the decoder.
        #[test]
        fn short_or_long_data_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let dev = device(vec![
                map(RegisterKind::Input, 0, ValueType::F64, "a"),
                map(RegisterKind::Input, 4, ValueType::I32, "b"),
            ], 125, 0);
            for b in plan(&dev) {
                let mut out = Vec::new();
                let _ = decode_block(&dev, &b, &data, 0, &mut out);
            }
        }
    }
}
