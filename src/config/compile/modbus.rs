//! `[[modbus]]` compiled: the bus (a serial port's line settings, or a
//! `tcp://` address), its `[[modbus.device]]` tables and each device's
//! `registers`, every entry checked where it is written: units, addresses
//! that overlap or run past 65535, a type that does not fit its table or
//! its `count`, bits out of range, a sensor and metric given twice.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::super::raw::{RawModbus, RawModbusDevice, RawRegister};
use super::super::{
    FlowControl, LineSettings, ModbusConfig, ModbusDevice, ModbusLink, Order, Parity, RegisterMap,
    Target, ValueType,
};
use super::Compiler;

/// Where each (sensor, metric) of every Modbus device was defined, to
/// refuse a second definition.
pub(super) type Metrics = HashMap<(String, String), String>;

type Span = std::ops::Range<usize>;

/// The value under `key` of a table, with its span.
fn field<'v>(v: &Spanned<DeValue<'v>>, key: &str) -> Option<Spanned<DeValue<'v>>> {
    match v.get_ref() {
        DeValue::Table(t) => t
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v.clone()),
        _ => None,
    }
}

/// Sensor ids and metric names: 1..=128 bytes, no control characters (as
/// the payload parsers require of what devices send).
fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control)
}

impl Compiler<'_, '_> {
    /// A serial line's settings (`[[serial]]` and `[[modbus]]` share them).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn line(
        &mut self,
        baud: Option<Spanned<u32>>,
        data_bits: Option<Spanned<u8>>,
        parity: Option<Parity>,
        stop_bits: Option<Spanned<u8>>,
        flow_control: Option<FlowControl>,
        default_baud: u32,
        ok: &mut bool,
    ) -> LineSettings {
        let baud = baud.map_or(default_baud, |b| {
            if *b.get_ref() == 0 {
                self.err(b.span(), "baud must be greater than zero");
                *ok = false;
            }
            b.into_inner()
        });
        let data_bits = data_bits.map_or(8, |b| {
            if !(5..=8).contains(b.get_ref()) {
                self.err(b.span(), "data_bits must be 5, 6, 7 or 8");
                *ok = false;
            }
            b.into_inner()
        });
        let stop_bits = stop_bits.map_or(1, |b| {
            if !(1..=2).contains(b.get_ref()) {
                self.err(b.span(), "stop_bits must be 1 or 2");
                *ok = false;
            }
            b.into_inner()
        });
        LineSettings {
            baud,
            data_bits,
            parity: parity.unwrap_or(Parity::None),
            stop_bits,
            flow_control: flow_control.unwrap_or(FlowControl::None),
        }
    }

    /// A small integer key within `range`, or `default`.
    fn ranged(
        &mut self,
        v: Option<Spanned<i64>>,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        default: u16,
        ok: &mut bool,
    ) -> u16 {
        match v {
            None => default,
            Some(v) if range.contains(v.get_ref()) => {
                u16::try_from(*v.get_ref()).unwrap_or(default)
            }
            Some(v) => {
                self.err(
                    v.span(),
                    format!(
                        "{key} must be {} to {}, not {}",
                        range.start(),
                        range.end(),
                        v.get_ref()
                    ),
                );
                *ok = false;
                default
            }
        }
    }

    pub(super) fn modbus(
        &mut self,
        v: &Spanned<DeValue>,
        i: usize,
        metrics: &mut Metrics,
    ) -> Option<ModbusConfig> {
        let raw: RawModbus = self.de(v)?;
        let mut ok = true;
        let name = raw
            .name
            .unwrap_or_else(|| Spanned::new(v.span(), format!("modbus-{}", i + 1)));
        self.unique_name(&name);
        let line_keys: Vec<(&str, Option<Span>)> = vec![
            ("baud", raw.baud.as_ref().map(Spanned::span)),
            ("data_bits", raw.data_bits.as_ref().map(Spanned::span)),
            ("parity", raw.parity.as_ref().map(Spanned::span)),
            ("stop_bits", raw.stop_bits.as_ref().map(Spanned::span)),
            ("flow_control", raw.flow_control.as_ref().map(Spanned::span)),
        ];
        let link = match (raw.path, raw.url) {
            (Some(p), None) => {
                if p.get_ref().is_empty() {
                    self.err(p.span(), "modbus path is empty");
                    ok = false;
                }
                let line = self.line(
                    raw.baud,
                    raw.data_bits,
                    raw.parity.map(Spanned::into_inner),
                    raw.stop_bits,
                    raw.flow_control.map(Spanned::into_inner),
                    9600,
                    &mut ok,
                );
                ModbusLink::Rtu {
                    path: PathBuf::from(p.into_inner()),
                    line,
                }
            }
            (None, Some(u)) => {
                for (key, span) in line_keys {
                    if let Some(span) = span {
                        self.err(
                            span,
                            format!("`{key}` is for serial buses (`path`); a tcp:// bus has none"),
                        );
                        ok = false;
                    }
                }
                match parse_tcp(u.get_ref()) {
                    Ok((host, port)) => ModbusLink::Tcp { host, port },
                    Err(e) => {
                        self.err(u.span(), e);
                        return None;
                    }
                }
            }
            (Some(p), Some(_)) => {
                self.err(
                    p.span(),
                    "a [[modbus]] bus has either `path` (RTU on a serial port) or `url` (tcp://host:502), not both",
                );
                return None;
            }
            (None, None) => {
                self.err(
                    name.span(),
                    "[[modbus]] needs `path` (RTU on a serial port) or `url` (tcp://host:502)",
                );
                return None;
            }
        };
        let tcp = matches!(link, ModbusLink::Tcp { .. });
        let interval = raw
            .interval
            .map_or(Duration::from_secs(5), |d| d.into_inner().0);
        let timeout = match raw.timeout {
            Some(t) if t.get_ref().0 > Duration::from_secs(60) => {
                self.err(t.span(), "timeout must be at most 60s");
                ok = false;
                Duration::from_secs(60)
            }
            Some(t) => t.into_inner().0,
            None => Duration::from_millis(500),
        };
        let max_registers = self.ranged(raw.max_registers, "max_registers", 1..=125, 125, &mut ok);
        let max_gap = self.ranged(raw.max_gap, "max_gap", 0..=124, 0, &mut ok);

        let mut devices = Vec::new();
        let mut units: HashMap<u8, ()> = HashMap::new();
        match field(v, "device").map(|d| (d.span(), d.into_inner())) {
            Some((_, DeValue::Array(items))) => {
                for item in items {
                    match self.modbus_device(&item, tcp, max_registers, max_gap, metrics) {
                        Some(d) => {
                            if units.insert(d.unit, ()).is_some() {
                                let span = field(&item, "unit").map_or(item.span(), |u| u.span());
                                self.err(span, format!("unit {} is on this bus twice", d.unit));
                                ok = false;
                            }
                            devices.push(d);
                        }
                        None => ok = false,
                    }
                }
            }
            Some((span, _)) => {
                self.err(span, "`device` must be written as [[modbus.device]] tables");
                ok = false;
            }
            None => {
                self.err(
                    name.span(),
                    format!("[[modbus]] `{}` has no [[modbus.device]]", name.get_ref()),
                );
                ok = false;
            }
        }
        if ok && !devices.is_empty() && timeout * devices.len() as u32 > interval {
            self.warn(
                name.span(),
                format!(
                    "with {} devices not answering, a poll round takes {} x timeout = {}, longer than interval ({})",
                    devices.len(),
                    devices.len(),
                    humantime::format_duration(timeout * devices.len() as u32),
                    humantime::format_duration(interval),
                ),
            );
        }
        ok.then(|| ModbusConfig {
            name: name.into_inner(),
            link,
            interval,
            timeout,
            reopen_after_silence: raw.reopen_after_silence.map(|d| d.0),
            devices,
        })
    }

    fn modbus_device(
        &mut self,
        v: &Spanned<DeValue>,
        tcp: bool,
        max_registers: u16,
        max_gap: u16,
        metrics: &mut Metrics,
    ) -> Option<ModbusDevice> {
        let raw: RawModbusDevice = self.de(v)?;
        let mut ok = true;
        let units = if tcp { 0..=255 } else { 1..=247 };
        let unit = match u8::try_from(*raw.unit.get_ref()) {
            Ok(u) if units.contains(&u) => u,
            _ => {
                self.err(
                    raw.unit.span(),
                    format!(
                        "unit must be {} to {} on a{} bus, not {}",
                        units.start(),
                        units.end(),
                        if tcp { " tcp://" } else { "n RTU" },
                        raw.unit.get_ref()
                    ),
                );
                ok = false;
                0
            }
        };
        if !valid_name(raw.sensor.get_ref()) {
            self.err(
                raw.sensor.span(),
                "sensor must be 1 to 128 bytes without control characters",
            );
            ok = false;
        }
        let max_registers = self.ranged(
            raw.max_registers,
            "max_registers",
            1..=125,
            max_registers,
            &mut ok,
        );
        let max_gap = self.ranged(raw.max_gap, "max_gap", 0..=124, max_gap, &mut ok);
        let sensor = raw.sensor.get_ref().clone();
        let mut registers: Vec<(RegisterMap, Span)> = Vec::new();
        match field(v, "registers").map(|r| (r.span(), r.into_inner())) {
            Some((span, DeValue::Array(items))) => {
                if items.is_empty() {
                    self.err(span, "`registers` is empty; map at least one");
                    ok = false;
                }
                for item in items {
                    match self.register(&item) {
                        Some(m) => registers.push((m, item.span())),
                        None => ok = false,
                    }
                }
            }
            Some((span, _)) => {
                self.err(
                    span,
                    "`registers` must be a list of { metric, kind, address, ... } tables",
                );
                ok = false;
            }
            None => ok = false, // `registers` missing: reported by `de`
        }
        // Overlaps, within one table of this device.
        for (k, (m, span)) in registers.iter().enumerate() {
            let clash = registers[..k].iter().find(|(o, _)| {
                o.kind == m.kind
                    && u32::from(o.address) <= m.end()
                    && u32::from(m.address) <= o.end()
            });
            if let Some((o, _)) = clash {
                let msg = format!(
                    "{} {} overlaps {} (of `{}`) on unit {unit}",
                    m.kind.as_str(),
                    span_desc(m),
                    span_desc(o),
                    o.metrics().join(", ")
                );
                self.err(span.clone(), msg);
                ok = false;
            }
        }
        // A sensor's metric is defined once, across every device of every bus.
        for (m, span) in &registers {
            for metric in m.metrics() {
                let key = (sensor.clone(), metric.to_string());
                let here = format!("unit {unit} {} {}", m.kind.as_str(), m.address);
                if let Some(first) = metrics.get(&key) {
                    self.err(
                        span.clone(),
                        format!("sensor `{sensor}` metric `{metric}` is already read from {first}"),
                    );
                    ok = false;
                } else {
                    metrics.insert(key, here);
                }
            }
        }
        ok.then(|| ModbusDevice {
            unit,
            sensor,
            max_registers,
            max_gap,
            registers: registers.into_iter().map(|(m, _)| m).collect(),
        })
    }

    fn register(&mut self, v: &Spanned<DeValue>) -> Option<RegisterMap> {
        let raw: RawRegister = self.de(v)?;
        let mut ok = true;
        let kind = *raw.kind.get_ref();
        let value = match (&raw.value, kind.is_bits()) {
            (None, true) => ValueType::Bool,
            (None, false) => ValueType::U16,
            (Some(t), bits) => {
                let ty = *t.get_ref();
                if bits && ty != ValueType::Bool {
                    self.err(
                        t.span(),
                        format!(
                            "a {} holds one bit: its type is bool, not {}",
                            kind.as_str(),
                            ty.as_str()
                        ),
                    );
                    ok = false;
                } else if !bits && ty == ValueType::Bool {
                    self.err(
                        t.span(),
                        format!(
                            "type bool is for coils and discrete inputs; a {} register is u16, i16, u32, i32, f32, u64, i64 or f64 (or use `bits`)",
                            kind.as_str()
                        ),
                    );
                    ok = false;
                }
                ty
            }
        };
        if let Some(c) = &raw.count
            && *c.get_ref() != i64::from(value.registers())
        {
            let what = if kind.is_bits() {
                "coil or input"
            } else {
                "register"
            };
            self.err(
                c.span(),
                format!(
                    "type {} takes {} {what}{}, not {}",
                    value.as_str(),
                    value.registers(),
                    if value.registers() == 1 { "" } else { "s" },
                    c.get_ref()
                ),
            );
            ok = false;
        }
        let address = match u16::try_from(*raw.address.get_ref()) {
            Ok(a) if u32::from(a) + u32::from(value.registers()) - 1 <= 0xFFFF => a,
            Ok(a) => {
                self.err(
                    raw.address.span(),
                    format!(
                        "a {} at address {a} takes {} registers and runs past the last address, 65535",
                        value.as_str(),
                        value.registers()
                    ),
                );
                ok = false;
                a
            }
            Err(_) => {
                self.err(
                    raw.address.span(),
                    format!("address must be 0 to 65535, not {}", raw.address.get_ref()),
                );
                ok = false;
                0
            }
        };
        let mut finite =
            |s: &Option<Spanned<f64>>, key: &str, zero_ok: bool, this: &mut Self| -> f64 {
                match s {
                    None => f64::NAN,
                    Some(x) if x.get_ref().is_finite() && (zero_ok || *x.get_ref() != 0.0) => {
                        *x.get_ref()
                    }
                    Some(x) => {
                        this.err(
                            x.span(),
                            format!(
                                "{key} must be a finite number{}",
                                if zero_ok { "" } else { " other than 0" }
                            ),
                        );
                        ok = false;
                        f64::NAN
                    }
                }
            };
        let scale = finite(&raw.scale, "scale", false, self);
        let offset = finite(&raw.offset, "offset", true, self);
        let target = match (raw.metric, raw.bits) {
            (Some(m), None) => {
                if !valid_name(m.get_ref()) {
                    self.err(
                        m.span(),
                        "metric must be 1 to 128 bytes without control characters",
                    );
                    ok = false;
                }
                Target::Metric(m.into_inner())
            }
            (None, Some(bits)) => {
                let width = u32::from(value.registers()) * 16;
                if !value.is_integer() {
                    self.err(
                        bits.span(),
                        format!(
                            "`bits` are read from an unsigned or signed integer register, not {}",
                            value.as_str()
                        ),
                    );
                    ok = false;
                }
                if raw.scale.is_some() || raw.offset.is_some() {
                    self.err(
                        bits.span(),
                        "`bits` are 0 or 1: they take no scale or offset",
                    );
                    ok = false;
                }
                if bits.get_ref().is_empty() {
                    self.err(
                        bits.span(),
                        "`bits` is empty; name at least one, like { alarm = 0 }",
                    );
                    ok = false;
                }
                let mut out = Vec::new();
                for (metric, n) in bits.get_ref() {
                    if !valid_name(metric) {
                        self.err(
                            n.span(),
                            "metric must be 1 to 128 bytes without control characters",
                        );
                        ok = false;
                    }
                    match u8::try_from(*n.get_ref()) {
                        Ok(b) if u32::from(b) < width => out.push((metric.clone(), b)),
                        _ => {
                            self.err(
                                n.span(),
                                format!(
                                    "bit {} is out of range for a {} (0 to {})",
                                    n.get_ref(),
                                    value.as_str(),
                                    width - 1
                                ),
                            );
                            ok = false;
                        }
                    }
                }
                out.sort_by_key(|(_, b)| *b);
                Target::Bits(out)
            }
            (Some(m), Some(_)) => {
                self.err(
                    m.span(),
                    "an entry has either `metric` (one value) or `bits` (a status register's bits), not both",
                );
                return None;
            }
            (None, None) => {
                self.err(
                    v.span(),
                    "a register entry needs `metric` (one value) or `bits` (a status register's bits)",
                );
                return None;
            }
        };
        ok.then(|| RegisterMap {
            kind,
            address,
            value,
            word_order: raw.word_order.map_or(Order::Big, Spanned::into_inner),
            byte_order: raw.byte_order.map_or(Order::Big, Spanned::into_inner),
            scale: if scale.is_nan() { 1.0 } else { scale },
            offset: if offset.is_nan() { 0.0 } else { offset },
            target,
        })
    }
}

/// `2` or `2-3`: the addresses an entry covers.
fn span_desc(m: &RegisterMap) -> String {
    if m.count() == 1 {
        m.address.to_string()
    } else {
        format!("{}-{}", m.address, m.end())
    }
}

/// `tcp://host[:port]` (port 502 by default), `tcp://[::1]:502` for IPv6.
fn parse_tcp(url: &str) -> Result<(String, u16), String> {
    let bad = || format!("url must be tcp://host:502, not `{url}`");
    let rest = url.strip_prefix("tcp://").ok_or_else(bad)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = match rest.strip_prefix('[') {
        Some(r) => {
            let (h, after) = r.split_once(']').ok_or_else(bad)?;
            match after {
                "" => (h, None),
                a => (h, Some(a.strip_prefix(':').ok_or_else(bad)?)),
            }
        }
        None => match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    let port = match port {
        None => 502,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port `{p}` in `{url}` must be 1 to 65535"))?,
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#', ':']) && !rest.starts_with('[') {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::parse_tcp;

    #[test]
    fn tcp_urls_take_a_host_and_an_optional_port() {
        assert_eq!(parse_tcp("tcp://10.0.0.5"), Ok(("10.0.0.5".into(), 502)));
        assert_eq!(
            parse_tcp("tcp://meter.lan:1502/"),
            Ok(("meter.lan".into(), 1502))
        );
        assert_eq!(parse_tcp("tcp://[::1]:5020"), Ok(("::1".into(), 5020)));
        for bad in [
            "meter.lan:502",
            "tcp://",
            "tcp://h:0",
            "tcp://h:x",
            "tcp://u@h",
            "tcp://[::1",
        ] {
            assert!(parse_tcp(bad).is_err(), "{bad}");
        }
    }
}
