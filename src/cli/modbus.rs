//! `outpost modbus read`: polls each device of the `[[modbus]]` buses once
//! and prints what came back, for setting up a new device (no gateway, no
//! broker, no rules).

use std::path::Path;

use super::{EXIT_FAILURE, EXIT_INVALID, EXIT_OK, load};
use crate::config::{ModbusConfig, ModbusDevice, Target, ValueType};
use crate::source::modbus::{DevicePoll, decode, read_once};

/// Polls every bus (or the one named `source`) once; exit 0 when every
/// request was answered, 1 when one was not or a bus could not be opened.
pub fn read(path: &Path, source: Option<&str>) -> u8 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let buses: Vec<&ModbusConfig> = config
        .modbus
        .iter()
        .filter(|m| source.is_none_or(|s| s == m.name))
        .collect();
    if buses.is_empty() {
        match source {
            Some(s) => eprintln!("{}: no [[modbus]] source named `{s}`", path.display()),
            None => eprintln!("{}: no [[modbus]] source", path.display()),
        }
        return EXIT_INVALID;
    }
    let rt = match super::runtime(None) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut all_good = true;
    for bus in buses {
        println!("{}  {}", bus.name, bus.link);
        match rt.block_on(read_once(bus)) {
            Ok(polls) => {
                for (device, poll) in bus.devices.iter().zip(&polls) {
                    all_good &= poll.faults.is_empty() && poll.not_finite.is_empty();
                    print!("{}", render(bus, device, poll));
                }
            }
            Err(e) => {
                println!("  cannot open: {e}");
                all_good = false;
            }
        }
    }
    if all_good { EXIT_OK } else { EXIT_FAILURE }
}

/// A device's readings (metric, value, where it came from) and faults.
fn render(bus: &ModbusConfig, device: &ModbusDevice, poll: &DevicePoll) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "  unit {}  {}", device.unit, device.sensor);
    let mut rows: Vec<[String; 3]> = Vec::new();
    for r in &poll.readings {
        let from = device
            .registers
            .iter()
            .find(|m| m.metrics().contains(&r.metric.as_str()));
        let (value, place) = match from {
            Some(m) => {
                let value = if m.value == ValueType::F32 && m.scale == 1.0 && m.offset == 0.0 {
                    format!("{}", r.value as f32)
                } else {
                    number(r.value)
                };
                let mut place = format!("{} {} {}", m.kind.as_str(), m.address, m.value.as_str());
                match &m.target {
                    Target::Bits(bits) => {
                        if let Some((_, b)) = bits.iter().find(|(name, _)| *name == r.metric) {
                            let _ = write!(place, " bit {b}");
                        }
                    }
                    Target::Metric(_) => {
                        if m.scale != 1.0 {
                            let _ = write!(place, " x{}", m.scale);
                        }
                        if m.offset != 0.0 {
                            let _ = write!(place, " {:+}", m.offset);
                        }
                    }
                }
                (value, place)
            }
            None => (number(r.value), String::new()),
        };
        rows.push([r.metric.clone(), value, place]);
    }
    let w0 = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r[1].chars().count()).max().unwrap_or(0);
    for [metric, value, place] in rows {
        let _ = writeln!(o, "    {metric:<w0$}  {value:>w1$}  {place}");
    }
    let blocks = decode::plan(device);
    for (i, fault) in &poll.faults {
        let registers = blocks
            .get(*i)
            .map_or_else(String::new, decode::Block::registers);
        let _ = writeln!(
            o,
            "    {registers}: {fault}{}",
            if *fault == crate::source::modbus::frame::Fault::Timeout {
                format!(" within {}", humantime::format_duration(bus.timeout))
            } else {
                String::new()
            }
        );
    }
    for metric in &poll.not_finite {
        let _ = writeln!(
            o,
            "    {metric}: not a finite number (NaN or infinite), left out"
        );
    }
    o
}

/// A value as people write it: 21.5, not 21.500000000000004.
fn number(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}
