//! Payload parsers: bytes from a serial line or an MQTT message in, [`Reading`]s out.
//!
//! Pure code: no I/O, no clock. The caller passes the time the payload was
//! received ([`ParseContext::received_ms`]); it becomes the reading's time
//! unless the payload carries its own `ts`.
//!
//! # Formats
//!
//! - [`Format::Json`]: one object. A top-level string field `sensor` is the
//!   sensor id (it overrides [`ParseContext::default_sensor`]). Numbers are
//!   metrics, booleans are 1 and 0, nested objects flatten with `.`
//!   (`{"BME280":{"Temperature":21.5}}` gives `BME280.Temperature`). Strings,
//!   `null` and arrays inside the object are ignored (Tasmota's `"Time"`,
//!   Zigbee2MQTT's `"update":{"state":"idle"}`). Only the top-level `sensor` and
//!   `ts` keys are special.
//! - [`Format::Kv`]: `sensor=t1 temperature=21.5 humidity=40`; tokens are
//!   separated by any run of spaces, tabs and commas. No quoting.
//! - [`Format::Csv`]: values in the order of [`ParseContext::columns`], comma
//!   separated, each trimmed. No quoting.
//! - [`Format::Number`]: the whole payload is one number, named
//!   [`ParseContext::metric`], for [`ParseContext::default_sensor`].
//!
//! # Choices
//!
//! - `ts` (json, kv, csv) is RFC 3339 with any offset, or Unix time as a
//!   number: values `>= 1e11` are milliseconds, smaller ones seconds
//!   (fractions allowed; rounded to the nearest millisecond). In kv, csv and a
//!   JSON string, a value that parses as a number is Unix time, anything else
//!   must be RFC 3339. Times before 1970 or after 9999 are
//!   [`ParseError::BadTimestamp`]. A present but invalid `ts` (including JSON
//!   `null`) is an error, never silently replaced by the receive time.
//! - The `sensor` field must be a string in JSON; anything else is
//!   [`ParseError::SensorIdInvalid`].
//! - Sensor ids and metric names must be 1..=128 bytes without control
//!   characters (which include NUL). A bad metric name is an error
//!   ([`ParseError::MetricNameInvalid`]), not skipped: bad input is counted,
//!   never silently dropped. Only names of actual metrics are checked; an
//!   ignored string under an odd key is still ignored.
//! - Values must be finite. `true`/`false` are 1/0 in every format (kv, csv
//!   and number included). JSON numbers too large for `f64` (`1e400`) are
//!   rejected by serde_json itself, as [`ParseError::Syntax`].
//! - csv: an empty field means "absent": an empty metric field is skipped, an
//!   empty `sensor` field falls back to the default sensor, an empty `ts` field
//!   to the receive time. A column named `_` is ignored (a value you don't
//!   want). If every metric field is empty: [`ParseError::NoMetrics`].
//! - kv: `sensor` or `ts` given twice is a [`ParseError::Syntax`] error;
//!   a repeated metric gives two readings.
//! - Input over [`MAX_PAYLOAD_BYTES`], objects nested deeper than
//!   [`MAX_DEPTH`], or more than [`MAX_METRICS`] metrics are errors, so hostile
//!   input costs bounded work and memory.
//! - Leading/trailing ASCII whitespace (so a trailing `\r`) and a leading
//!   UTF-8 byte order mark are ignored.
//! - All or nothing: on error `out` is left exactly as it was; on success the
//!   readings are appended (in an unspecified but deterministic order).

use crate::reading::Reading;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Largest payload accepted, in bytes (before trimming).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Deepest object nesting accepted in JSON (the top-level object is depth 1).
pub const MAX_DEPTH: usize = 16;
/// Most metrics accepted from one payload.
pub const MAX_METRICS: usize = 256;
/// Longest sensor id or metric name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// 9999-12-31T23:59:59.999Z: the last instant RFC 3339 can write.
const MAX_TS_MS: i64 = 253_402_300_799_999;
/// Unix-time numbers at or above this are milliseconds, below it seconds.
/// 1e11 s is the year 5138; 1e11 ms is March 1973.
const MS_THRESHOLD: f64 = 1e11;

/// The payload format of a source, as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Kv,
    Csv,
    Number,
}

/// What the parser needs to know besides the bytes.
#[derive(Debug, Clone, Copy)]
pub struct ParseContext<'a> {
    /// Sensor id when the payload names none (e.g. derived from the MQTT topic
    /// or the serial source's config). Required by `number`.
    pub default_sensor: Option<&'a str>,
    /// Column names for `csv`; `sensor` and `ts` are special, `_` is ignored.
    pub columns: &'a [String],
    /// Metric name for `number`.
    pub metric: &'a str,
    /// When the payload was received, Unix milliseconds (wall clock).
    pub received_ms: i64,
}

/// Why a payload was rejected. [`ParseError::kind`] labels it for counters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("payload of {len} bytes is larger than {max}")]
    TooLarge { len: usize, max: usize },
    #[error("payload is not valid UTF-8")]
    NotUtf8,
    #[error("payload is empty")]
    Empty,
    #[error("syntax error: {0}")]
    Syntax(String),
    #[error("JSON payload is not an object")]
    NotAnObject,
    #[error("payload names no sensor and the source has no default sensor")]
    NoSensor,
    #[error("payload has no numeric metric")]
    NoMetrics,
    #[error("metric `{metric}` is not finite")]
    NonFinite { metric: String },
    #[error("`ts` is not RFC 3339 or Unix time in 1970..=9999")]
    BadTimestamp,
    #[error("expected {expected} comma-separated values, got {got}")]
    WrongColumnCount { expected: usize, got: usize },
    #[error("value of metric `{metric}` is not a number")]
    BadNumber { metric: String },
    #[error("sensor id is empty, longer than 128 bytes, or has control characters")]
    SensorIdInvalid,
    #[error("metric name is empty, longer than 128 bytes, or has control characters")]
    MetricNameInvalid,
    #[error("JSON objects nested deeper than {max}")]
    TooDeep { max: usize },
    #[error("more than {max} metrics in one payload")]
    TooManyMetrics { max: usize },
}

impl ParseError {
    /// Short snake_case label, stable, for metrics counters.
    pub fn kind(&self) -> &'static str {
        match self {
            ParseError::TooLarge { .. } => "too_large",
            ParseError::NotUtf8 => "not_utf8",
            ParseError::Empty => "empty",
            ParseError::Syntax(_) => "syntax",
            ParseError::NotAnObject => "not_an_object",
            ParseError::NoSensor => "no_sensor",
            ParseError::NoMetrics => "no_metrics",
            ParseError::NonFinite { .. } => "non_finite",
            ParseError::BadTimestamp => "bad_timestamp",
            ParseError::WrongColumnCount { .. } => "wrong_column_count",
            ParseError::BadNumber { .. } => "bad_number",
            ParseError::SensorIdInvalid => "sensor_id_invalid",
            ParseError::MetricNameInvalid => "metric_name_invalid",
            ParseError::TooDeep { .. } => "too_deep",
            ParseError::TooManyMetrics { .. } => "too_many_metrics",
        }
    }
}

/// Parses one payload and appends its readings to `out`.
///
/// On error `out` is unchanged: a payload is taken whole or not at all.
pub fn parse(
    format: Format,
    input: &[u8],
    ctx: &ParseContext,
    out: &mut Vec<Reading>,
) -> Result<(), ParseError> {
    let start = out.len();
    let result = parse_inner(format, input, ctx, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn parse_inner(
    format: Format,
    input: &[u8],
    ctx: &ParseContext,
    out: &mut Vec<Reading>,
) -> Result<(), ParseError> {
    if input.len() > MAX_PAYLOAD_BYTES {
        return Err(ParseError::TooLarge {
            len: input.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    let text = std::str::from_utf8(input).map_err(|_| ParseError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let text = text.trim_ascii();
    if text.is_empty() {
        return Err(ParseError::Empty);
    }
    match format {
        Format::Json => parse_json(text, ctx, out),
        Format::Kv => parse_kv(text, ctx, out),
        Format::Csv => parse_csv(text, ctx, out),
        Format::Number => parse_number(text, ctx, out),
    }
}

/// Collects the readings of one payload once its sensor and time are known.
struct Emitter<'o> {
    out: &'o mut Vec<Reading>,
    sensor: String,
    ts_ms: i64,
    count: usize,
}

impl Emitter<'_> {
    fn emit(&mut self, metric: &str, value: f64) -> Result<(), ParseError> {
        if !valid_name(metric) {
            return Err(ParseError::MetricNameInvalid);
        }
        if !value.is_finite() {
            return Err(ParseError::NonFinite {
                metric: metric.to_owned(),
            });
        }
        if self.count == MAX_METRICS {
            return Err(ParseError::TooManyMetrics { max: MAX_METRICS });
        }
        self.count += 1;
        self.out.push(Reading {
            sensor: self.sensor.clone(),
            metric: metric.to_owned(),
            value,
            ts_ms: self.ts_ms,
        });
        Ok(())
    }

    fn finish(self) -> Result<(), ParseError> {
        if self.count == 0 {
            Err(ParseError::NoMetrics)
        } else {
            Ok(())
        }
    }
}

/// 1..=128 bytes, no control characters (NUL included).
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && !name.chars().any(char::is_control)
}

/// The payload's sensor if it names one, else the default; validated.
fn resolve_sensor(given: Option<&str>, ctx: &ParseContext) -> Result<String, ParseError> {
    let sensor = given.or(ctx.default_sensor).ok_or(ParseError::NoSensor)?;
    if valid_name(sensor) {
        Ok(sensor.to_owned())
    } else {
        Err(ParseError::SensorIdInvalid)
    }
}

/// Unix time as a number: `>= 1e11` is milliseconds, else seconds.
fn ts_from_number(v: f64) -> Result<i64, ParseError> {
    if !v.is_finite() || v < 0.0 {
        return Err(ParseError::BadTimestamp);
    }
    let ms = if v >= MS_THRESHOLD { v } else { v * 1000.0 }.round();
    if ms > MAX_TS_MS as f64 {
        return Err(ParseError::BadTimestamp);
    }
    // In 0..=MAX_TS_MS, so the cast is exact.
    Ok(ms as i64)
}

/// A textual time: a number (Unix time) or RFC 3339.
fn ts_from_str(s: &str) -> Result<i64, ParseError> {
    if let Ok(v) = s.parse::<f64>() {
        return ts_from_number(v);
    }
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| ParseError::BadTimestamp)?;
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    if !(0..=i128::from(MAX_TS_MS)).contains(&ms) {
        return Err(ParseError::BadTimestamp);
    }
    Ok(ms as i64)
}

/// A value in kv, csv or number: a finite number or `true`/`false`.
fn value_from_str(metric: &str, s: &str) -> Result<f64, ParseError> {
    let value = match s {
        "true" => 1.0,
        "false" => 0.0,
        _ => s.parse::<f64>().map_err(|_| ParseError::BadNumber {
            metric: metric.to_owned(),
        })?,
    };
    if value.is_finite() {
        Ok(value)
    } else {
        Err(ParseError::NonFinite {
            metric: metric.to_owned(),
        })
    }
}

fn parse_json(text: &str, ctx: &ParseContext, out: &mut Vec<Reading>) -> Result<(), ParseError> {
    // serde_json bounds its own recursion (128 levels), so this cannot
    // overflow the stack; MAX_DEPTH is enforced while flattening.
    let value: Value = serde_json::from_str(text).map_err(|e| ParseError::Syntax(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(ParseError::NotAnObject);
    };
    let given = match object.get("sensor") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(ParseError::SensorIdInvalid),
    };
    let sensor = resolve_sensor(given, ctx)?;
    let ts_ms = match object.get("ts") {
        None => ctx.received_ms,
        Some(Value::Number(n)) => ts_from_number(n.as_f64().ok_or(ParseError::BadTimestamp)?)?,
        Some(Value::String(s)) => ts_from_str(s)?,
        Some(_) => return Err(ParseError::BadTimestamp),
    };
    let mut emitter = Emitter {
        out,
        sensor,
        ts_ms,
        count: 0,
    };
    let mut name = String::new();
    flatten(&object, &mut name, 1, true, &mut emitter)?;
    emitter.finish()
}

/// Emits the numbers and booleans of `object`, named `prefix.key`.
/// `name` is a scratch buffer holding the prefix on entry and on return.
fn flatten(
    object: &Map<String, Value>,
    name: &mut String,
    depth: usize,
    top: bool,
    emitter: &mut Emitter,
) -> Result<(), ParseError> {
    if depth > MAX_DEPTH {
        return Err(ParseError::TooDeep { max: MAX_DEPTH });
    }
    let prefix_len = name.len();
    for (key, value) in object {
        if top && (key == "sensor" || key == "ts") {
            continue;
        }
        if !top {
            name.push('.');
        }
        name.push_str(key);
        let result = match value {
            Value::Number(n) => {
                // Without serde_json's arbitrary_precision every number is
                // representable as f64; non-finite is checked by `emit`.
                let v = n.as_f64().unwrap_or(f64::NAN);
                emitter.emit(name, v)
            }
            Value::Bool(b) => emitter.emit(name, if *b { 1.0 } else { 0.0 }),
            Value::Object(inner) => flatten(inner, name, depth + 1, false, emitter),
            Value::String(_) | Value::Array(_) | Value::Null => Ok(()),
        };
        name.truncate(prefix_len);
        result?;
    }
    Ok(())
}

fn parse_kv(text: &str, ctx: &ParseContext, out: &mut Vec<Reading>) -> Result<(), ParseError> {
    let mut sensor: Option<&str> = None;
    let mut ts: Option<&str> = None;
    let mut metrics: Vec<(&str, &str)> = Vec::new();
    let tokens = text.split([' ', '\t', ',']).filter(|t| !t.is_empty());
    for token in tokens {
        let Some((key, value)) = token.split_once('=') else {
            return Err(ParseError::Syntax(format!(
                "`{}` is not key=value",
                preview(token.as_bytes())
            )));
        };
        let slot = match key {
            "sensor" => &mut sensor,
            "ts" => &mut ts,
            _ => {
                if metrics.len() == MAX_METRICS {
                    return Err(ParseError::TooManyMetrics { max: MAX_METRICS });
                }
                metrics.push((key, value));
                continue;
            }
        };
        if slot.replace(value).is_some() {
            return Err(ParseError::Syntax(format!("`{key}` given twice")));
        }
    }
    let sensor = resolve_sensor(sensor, ctx)?;
    let ts_ms = ts.map_or(Ok(ctx.received_ms), ts_from_str)?;
    let mut emitter = Emitter {
        out,
        sensor,
        ts_ms,
        count: 0,
    };
    for (key, value) in metrics {
        if !valid_name(key) {
            return Err(ParseError::MetricNameInvalid);
        }
        emitter.emit(key, value_from_str(key, value)?)?;
    }
    emitter.finish()
}

fn parse_csv(text: &str, ctx: &ParseContext, out: &mut Vec<Reading>) -> Result<(), ParseError> {
    let got = text.split(',').count();
    if got != ctx.columns.len() {
        return Err(ParseError::WrongColumnCount {
            expected: ctx.columns.len(),
            got,
        });
    }
    let mut sensor = None;
    let mut ts = None;
    for (column, field) in ctx.columns.iter().zip(text.split(',')) {
        let field = field.trim();
        match column.as_str() {
            "sensor" if !field.is_empty() => sensor = Some(field),
            "ts" if !field.is_empty() => ts = Some(field),
            _ => {}
        }
    }
    let sensor = resolve_sensor(sensor, ctx)?;
    let ts_ms = ts.map_or(Ok(ctx.received_ms), ts_from_str)?;
    let mut emitter = Emitter {
        out,
        sensor,
        ts_ms,
        count: 0,
    };
    for (column, field) in ctx.columns.iter().zip(text.split(',')) {
        let field = field.trim();
        match column.as_str() {
            "sensor" | "ts" | "_" => {}
            _ if field.is_empty() => {}
            metric => {
                if !valid_name(metric) {
                    return Err(ParseError::MetricNameInvalid);
                }
                emitter.emit(metric, value_from_str(metric, field)?)?;
            }
        }
    }
    emitter.finish()
}

fn parse_number(text: &str, ctx: &ParseContext, out: &mut Vec<Reading>) -> Result<(), ParseError> {
    let sensor = resolve_sensor(None, ctx)?;
    if !valid_name(ctx.metric) {
        return Err(ParseError::MetricNameInvalid);
    }
    let value = value_from_str(ctx.metric, text)?;
    let mut emitter = Emitter {
        out,
        sensor,
        ts_ms: ctx.received_ms,
        count: 0,
    };
    emitter.emit(ctx.metric, value)?;
    emitter.finish()
}

/// Bytes of input quoted by [`preview`].
pub const PREVIEW_BYTES: usize = 64;

/// The start of `input` (first [`PREVIEW_BYTES`] bytes) as one printable line,
/// for rate-limited warnings about bad input.
///
/// Valid UTF-8 is kept (quotes included, for readable JSON); control and other
/// unprintable characters are escaped as `\n`, `\u{…}`; invalid bytes as
/// `\xNN`; a backslash as `\\`. A cut-off input ends with `…`.
pub fn preview(input: &[u8]) -> String {
    let head = &input[..input.len().min(PREVIEW_BYTES)];
    let mut s = String::with_capacity(head.len() + 8);
    for chunk in head.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' | '\'' => s.push(c),
                _ => s.extend(c.escape_debug()),
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    if input.len() > PREVIEW_BYTES {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_800_000_000_000;
    const ALL_FORMATS: [Format; 4] = [Format::Json, Format::Kv, Format::Csv, Format::Number];

    fn ctx<'a>(default_sensor: Option<&'a str>, columns: &'a [String]) -> ParseContext<'a> {
        ParseContext {
            default_sensor,
            columns,
            metric: "value",
            received_ms: NOW,
        }
    }

    /// Parses with `ctx` and returns (sensor, metric, value, ts) sorted by metric.
    fn run(
        format: Format,
        input: &str,
        ctx: &ParseContext,
    ) -> Result<Vec<(String, String, f64, i64)>, ParseError> {
        let mut out = Vec::new();
        parse(format, input.as_bytes(), ctx, &mut out)?;
        let mut v: Vec<_> = out
            .into_iter()
            .map(|r| (r.sensor, r.metric, r.value, r.ts_ms))
            .collect();
        v.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(v)
    }

    /// The one helper for good input: `expected` is (sensor, metric, value, ts).
    fn check(format: Format, input: &str, ctx: &ParseContext, expected: &[(&str, &str, f64, i64)]) {
        let got = run(format, input, ctx).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        let mut expected: Vec<_> = expected
            .iter()
            .map(|&(s, m, v, t)| (s.to_owned(), m.to_owned(), v, t))
            .collect();
        expected.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(got, expected, "input {input:?}");
    }

    /// The one helper for bad input: the error's kind, and `out` left untouched.
    fn check_err(format: Format, input: &[u8], ctx: &ParseContext, kind: &str) {
        let sentinel = Reading {
            sensor: "keep".into(),
            metric: "me".into(),
            value: 1.0,
            ts_ms: 0,
        };
        let mut out = vec![sentinel.clone()];
        let err = parse(format, input, ctx, &mut out)
            .expect_err(&format!("{:?} should fail", preview(input)));
        assert_eq!(err.kind(), kind, "{:?}: {err}", preview(input));
        assert_eq!(out, vec![sentinel], "out changed on error");
    }

    fn ts_of(input: &str) -> Result<i64, ParseError> {
        let c = ctx(Some("s"), &[]);
        run(Format::Json, input, &c).map(|v| v[0].3)
    }

    // ---- json ----

    #[test]
    fn json_with_sensor_field_gives_one_reading_per_number() {
        let c = ctx(Some("default"), &[]);
        check(
            Format::Json,
            r#"{"sensor":"t1","temperature":21.5,"humidity":40}"#,
            &c,
            &[
                ("t1", "temperature", 21.5, NOW),
                ("t1", "humidity", 40.0, NOW),
            ],
        );
    }

    #[test]
    fn json_without_sensor_field_uses_the_default_sensor() {
        let c = ctx(Some("kitchen"), &[]);
        check(
            Format::Json,
            r#"{"t":-3}"#,
            &c,
            &[("kitchen", "t", -3.0, NOW)],
        );
    }

    #[test]
    fn tasmota_sensor_telemetry_flattens_bme280_and_energy_and_ignores_time() {
        let c = ctx(Some("tele/x/SENSOR"), &[]);
        let input = r#"{"Time":"2026-11-26T10:00:00","BME280":{"Temperature":21.5,"Humidity":40.1,"Pressure":1013.2},
            "ENERGY":{"TotalStartTime":"2026-01-01T00:00:00","Total":12.345,"Yesterday":0.5,"Today":0.25,"Power":[12,0],"Voltage":230},
            "PressureUnit":"hPa","TempUnit":"C"}"#;
        let s = "tele/x/SENSOR";
        check(
            Format::Json,
            input,
            &c,
            &[
                (s, "BME280.Temperature", 21.5, NOW),
                (s, "BME280.Humidity", 40.1, NOW),
                (s, "BME280.Pressure", 1013.2, NOW),
                (s, "ENERGY.Total", 12.345, NOW),
                (s, "ENERGY.Yesterday", 0.5, NOW),
                (s, "ENERGY.Today", 0.25, NOW),
                (s, "ENERGY.Voltage", 230.0, NOW),
            ],
        );
    }

    #[test]
    fn zigbee2mqtt_payload_maps_booleans_and_ignores_string_only_objects() {
        let c = ctx(Some("zigbee2mqtt/hall"), &[]);
        let s = "zigbee2mqtt/hall";
        check(
            Format::Json,
            r#"{"temperature":21.3,"humidity":55,"battery":97,"linkquality":120,"occupancy":false,"update":{"state":"idle"}}"#,
            &c,
            &[
                (s, "temperature", 21.3, NOW),
                (s, "humidity", 55.0, NOW),
                (s, "battery", 97.0, NOW),
                (s, "linkquality", 120.0, NOW),
                (s, "occupancy", 0.0, NOW),
            ],
        );
        check(
            Format::Json,
            r#"{"contact":true}"#,
            &c,
            &[(s, "contact", 1.0, NOW)],
        );
    }

    #[test]
    fn shelly_gen2_temperature_object_gives_every_number_including_id() {
        let c = ctx(Some("shelly/temperature:0"), &[]);
        let s = "shelly/temperature:0";
        check(
            Format::Json,
            r#"{"id":0,"tC":45.1,"tF":113.2}"#,
            &c,
            &[
                (s, "id", 0.0, NOW),
                (s, "tC", 45.1, NOW),
                (s, "tF", 113.2, NOW),
            ],
        );
    }

    #[test]
    fn arduino_json_line_with_trailing_cr_parses() {
        let c = ctx(None, &[]);
        check(
            Format::Json,
            "{\"sensor\":\"bench/ds18b20\",\"temp\":19.0625,\"ts\":1700000000}\r",
            &c,
            &[("bench/ds18b20", "temp", 19.0625, 1_700_000_000_000)],
        );
    }

    #[test]
    fn json_arrays_null_and_strings_inside_objects_are_ignored() {
        let c = ctx(Some("s"), &[]);
        check(
            Format::Json,
            r#"{"a":[1,2,{"b":3}],"n":null,"unit":"C","v":1,"deep":{"x":{"y":2}}}"#,
            &c,
            &[("s", "v", 1.0, NOW), ("s", "deep.x.y", 2.0, NOW)],
        );
    }

    #[test]
    fn json_nested_ts_and_sensor_keys_are_ordinary_fields() {
        let c = ctx(Some("s"), &[]);
        check(
            Format::Json,
            r#"{"inner":{"ts":5,"sensor":"ignored"}}"#,
            &c,
            &[("s", "inner.ts", 5.0, NOW)],
        );
    }

    #[test]
    fn json_accepts_leading_bom_and_surrounding_whitespace() {
        let c = ctx(Some("s"), &[]);
        check(
            Format::Json,
            "\u{feff} \t{\"v\":1}\r\n",
            &c,
            &[("s", "v", 1.0, NOW)],
        );
    }

    #[test]
    fn json_nesting_up_to_max_depth_is_accepted() {
        let c = ctx(Some("s"), &[]);
        let input = format!(
            "{}\"v\":1{}",
            "{\"a\":".repeat(MAX_DEPTH - 1) + "{",
            "}".repeat(MAX_DEPTH)
        );
        let name = vec!["a"; MAX_DEPTH - 1].join(".") + ".v";
        check(Format::Json, &input, &c, &[("s", &name, 1.0, NOW)]);
    }

    #[test]
    fn json_with_exactly_max_metrics_is_accepted() {
        let c = ctx(Some("s"), &[]);
        let body: Vec<String> = (0..MAX_METRICS).map(|i| format!("\"m{i}\":{i}")).collect();
        let got = run(Format::Json, &format!("{{{}}}", body.join(",")), &c).unwrap();
        assert_eq!(got.len(), MAX_METRICS);
    }

    // ---- ts ----

    #[test]
    fn ts_in_unix_seconds_milliseconds_and_fractions_converts_to_ms() {
        assert_eq!(ts_of(r#"{"ts":1700000000,"v":1}"#), Ok(1_700_000_000_000));
        assert_eq!(
            ts_of(r#"{"ts":1700000000.25,"v":1}"#),
            Ok(1_700_000_000_250)
        );
        assert_eq!(
            ts_of(r#"{"ts":1700000000123,"v":1}"#),
            Ok(1_700_000_000_123)
        );
        assert_eq!(ts_of(r#"{"ts":99999999999,"v":1}"#), Ok(99_999_999_999_000));
        assert_eq!(ts_of(r#"{"ts":100000000000,"v":1}"#), Ok(100_000_000_000));
        assert_eq!(ts_of(r#"{"ts":0,"v":1}"#), Ok(0));
        assert_eq!(ts_of(r#"{"ts":"1700000000","v":1}"#), Ok(1_700_000_000_000));
    }

    #[test]
    fn ts_in_rfc3339_with_any_offset_converts_to_utc_ms() {
        assert_eq!(
            ts_of(r#"{"ts":"2026-11-26T10:00:00.123Z","v":1}"#),
            Ok(1_795_687_200_123)
        );
        assert_eq!(
            ts_of(r#"{"ts":"2026-11-26T11:00:00.123+01:00","v":1}"#),
            Ok(1_795_687_200_123)
        );
        assert_eq!(
            ts_of(r#"{"ts":"2026-11-26T05:30:00-04:30","v":1}"#),
            Ok(1_795_687_200_000)
        );
    }

    #[test]
    fn ts_applies_to_every_reading_in_kv_and_csv() {
        let cols: Vec<String> = ["ts", "sensor", "t"].map(String::from).to_vec();
        let c = ctx(None, &cols);
        check(
            Format::Kv,
            "ts=2026-11-26T10:00:00Z sensor=a x=1 y=2",
            &c,
            &[
                ("a", "x", 1.0, 1_795_687_200_000),
                ("a", "y", 2.0, 1_795_687_200_000),
            ],
        );
        check(
            Format::Csv,
            "1700000000123, b, 4",
            &c,
            &[("b", "t", 4.0, 1_700_000_000_123)],
        );
    }

    #[test]
    fn bad_ts_is_an_error_not_the_receive_time() {
        let c = ctx(Some("s"), &[]);
        for input in [
            r#"{"ts":"yesterday","v":1}"#,
            r#"{"ts":"2026-11-26 10:00:00","v":1}"#,
            r#"{"ts":"2026-11-26T10:00:00","v":1}"#,
            r#"{"ts":-1,"v":1}"#,
            r#"{"ts":1e300,"v":1}"#,
            r#"{"ts":null,"v":1}"#,
            r#"{"ts":true,"v":1}"#,
            r#"{"ts":{"s":1},"v":1}"#,
            r#"{"ts":"1969-12-31T23:59:59Z","v":1}"#,
        ] {
            check_err(Format::Json, input.as_bytes(), &c, "bad_timestamp");
        }
        check_err(Format::Kv, b"ts=nan v=1", &c, "bad_timestamp");
        check_err(Format::Kv, b"ts=inf v=1", &c, "bad_timestamp");
    }

    // ---- kv ----

    #[test]
    fn kv_splits_on_spaces_commas_and_tabs() {
        let c = ctx(None, &[]);
        check(
            Format::Kv,
            "sensor=t1 temperature=21.5,humidity=40\t, on=true off=false\r",
            &c,
            &[
                ("t1", "temperature", 21.5, NOW),
                ("t1", "humidity", 40.0, NOW),
                ("t1", "on", 1.0, NOW),
                ("t1", "off", 0.0, NOW),
            ],
        );
    }

    #[test]
    fn kv_without_sensor_key_uses_the_default_sensor() {
        let c = ctx(Some("d"), &[]);
        check(Format::Kv, "v=-1e3", &c, &[("d", "v", -1000.0, NOW)]);
    }

    // ---- csv ----

    #[test]
    fn csv_maps_values_to_columns_in_order() {
        let cols: Vec<String> = ["sensor", "temperature", "humidity"]
            .map(String::from)
            .to_vec();
        let c = ctx(None, &cols);
        check(
            Format::Csv,
            " t1 , 21.5,40 \r",
            &c,
            &[
                ("t1", "temperature", 21.5, NOW),
                ("t1", "humidity", 40.0, NOW),
            ],
        );
    }

    #[test]
    fn csv_empty_field_is_absent_and_underscore_column_is_ignored() {
        let cols: Vec<String> = ["sensor", "_", "a", "b", "ts"].map(String::from).to_vec();
        let c = ctx(Some("dflt"), &cols);
        check(Format::Csv, ",junk,,2,", &c, &[("dflt", "b", 2.0, NOW)]);
        check_err(Format::Csv, b"x,junk,, ,", &c, "no_metrics");
    }

    // ---- number ----

    #[test]
    fn number_payload_is_one_reading_for_the_default_sensor() {
        let c = ParseContext {
            metric: "power",
            ..ctx(Some("shellies/x/relay/0"), &[])
        };
        check(
            Format::Number,
            "  42.5\n",
            &c,
            &[("shellies/x/relay/0", "power", 42.5, NOW)],
        );
        check(
            Format::Number,
            "0",
            &c,
            &[("shellies/x/relay/0", "power", 0.0, NOW)],
        );
        check(
            Format::Number,
            "true",
            &c,
            &[("shellies/x/relay/0", "power", 1.0, NOW)],
        );
    }

    // ---- errors, one test per kind ----

    #[test]
    fn payload_over_the_size_limit_is_too_large() {
        let c = ctx(Some("s"), &[]);
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        check_err(Format::Json, &big, &c, "too_large");
    }

    #[test]
    fn invalid_utf8_is_not_utf8_in_every_format() {
        let cols = vec!["a".to_string()];
        let c = ctx(Some("s"), &cols);
        for f in ALL_FORMATS {
            check_err(f, b"{\"v\":1,\"x\":\"\xff\"}", &c, "not_utf8");
        }
    }

    #[test]
    fn empty_or_whitespace_input_is_empty_in_every_format() {
        let c = ctx(Some("s"), &[]);
        for f in ALL_FORMATS {
            check_err(f, b"", &c, "empty");
            check_err(f, b" \t\r\n", &c, "empty");
        }
    }

    #[test]
    fn malformed_json_and_bare_kv_tokens_are_syntax_errors() {
        let c = ctx(Some("s"), &[]);
        check_err(Format::Json, b"{\"v\":1", &c, "syntax");
        check_err(Format::Json, b"{\"v\":1}{}", &c, "syntax");
        check_err(Format::Json, b"hello", &c, "syntax");
        // serde_json refuses numbers beyond f64 itself.
        check_err(Format::Json, b"{\"v\":1e400}", &c, "syntax");
        check_err(Format::Kv, b"sensor=a temperature 21", &c, "syntax");
        check_err(Format::Kv, b"sensor=a sensor=b v=1", &c, "syntax");
        check_err(Format::Kv, b"ts=1 ts=2 v=1", &c, "syntax");
    }

    #[test]
    fn top_level_array_or_scalar_json_is_not_an_object() {
        let c = ctx(Some("s"), &[]);
        for input in ["[1,2]", "42", "\"x\"", "true", "null"] {
            check_err(Format::Json, input.as_bytes(), &c, "not_an_object");
        }
    }

    #[test]
    fn no_sensor_field_and_no_default_is_no_sensor() {
        let cols = vec!["v".to_string()];
        let c = ctx(None, &cols);
        check_err(Format::Json, b"{\"v\":1}", &c, "no_sensor");
        check_err(Format::Kv, b"v=1", &c, "no_sensor");
        check_err(Format::Csv, b"1", &c, "no_sensor");
        check_err(Format::Number, b"1", &c, "no_sensor");
    }

    #[test]
    fn payload_without_any_numeric_metric_is_no_metrics() {
        let c = ctx(Some("s"), &[]);
        check_err(Format::Json, b"{}", &c, "no_metrics");
        check_err(
            Format::Json,
            br#"{"sensor":"a","ts":1,"Time":"x","update":{"state":"idle"}}"#,
            &c,
            "no_metrics",
        );
        check_err(Format::Kv, b"sensor=a ts=1", &c, "no_metrics");
    }

    #[test]
    fn infinite_and_nan_values_are_non_finite() {
        let cols = vec!["v".to_string()];
        let c = ctx(Some("s"), &cols);
        check_err(Format::Kv, b"v=1e400", &c, "non_finite");
        check_err(Format::Kv, b"v=NaN", &c, "non_finite");
        check_err(Format::Kv, b"v=-inf", &c, "non_finite");
        check_err(Format::Csv, b"infinity", &c, "non_finite");
        check_err(Format::Number, b"nan", &c, "non_finite");
        let err = run(Format::Kv, "a=1 b=inf", &c).unwrap_err();
        assert_eq!(err, ParseError::NonFinite { metric: "b".into() });
    }

    #[test]
    fn csv_with_too_few_or_too_many_fields_is_wrong_column_count() {
        let cols: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let c = ctx(Some("s"), &cols);
        check_err(Format::Csv, b"1", &c, "wrong_column_count");
        let err = run(Format::Csv, "1,2,3", &c).unwrap_err();
        assert_eq!(
            err,
            ParseError::WrongColumnCount {
                expected: 2,
                got: 3
            }
        );
        check_err(Format::Csv, b"1,2,", &c, "wrong_column_count");
    }

    #[test]
    fn value_that_is_not_a_number_is_bad_number() {
        let cols = vec!["v".to_string()];
        let c = ctx(Some("s"), &cols);
        check_err(Format::Kv, b"v=", &c, "bad_number");
        check_err(Format::Kv, b"v=21.5C", &c, "bad_number");
        check_err(Format::Csv, b"on", &c, "bad_number");
        check_err(Format::Number, b"on", &c, "bad_number");
        check_err(Format::Number, b"1 2", &c, "bad_number");
        let err = run(Format::Kv, "ok=1 temp=x", &c).unwrap_err();
        assert_eq!(
            err,
            ParseError::BadNumber {
                metric: "temp".into()
            }
        );
    }

    #[test]
    fn empty_long_or_control_character_sensor_ids_are_invalid() {
        let c = ctx(None, &[]);
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        check_err(
            Format::Json,
            br#"{"sensor":"","v":1}"#,
            &c,
            "sensor_id_invalid",
        );
        check_err(
            Format::Json,
            br#"{"sensor":"a\u0000b","v":1}"#,
            &c,
            "sensor_id_invalid",
        );
        check_err(
            Format::Json,
            br#"{"sensor":"a\nb","v":1}"#,
            &c,
            "sensor_id_invalid",
        );
        check_err(
            Format::Json,
            br#"{"sensor":7,"v":1}"#,
            &c,
            "sensor_id_invalid",
        );
        check_err(
            Format::Json,
            format!(r#"{{"sensor":"{long}","v":1}}"#).as_bytes(),
            &c,
            "sensor_id_invalid",
        );
        check_err(Format::Kv, b"sensor=a\x01b v=1", &c, "sensor_id_invalid");
        check_err(Format::Kv, b"sensor= v=1", &c, "sensor_id_invalid");
        let bad_default = ctx(Some("a\u{7f}"), &[]);
        check_err(Format::Number, b"1", &bad_default, "sensor_id_invalid");
        let max = "x".repeat(MAX_NAME_BYTES);
        check(
            Format::Kv,
            &format!("sensor={max} v=1"),
            &c,
            &[(&max, "v", 1.0, NOW)],
        );
    }

    #[test]
    fn empty_long_or_control_character_metric_names_are_invalid() {
        let c = ctx(Some("s"), &[]);
        let long = "m".repeat(MAX_NAME_BYTES + 1);
        check_err(Format::Json, br#"{"":1}"#, &c, "metric_name_invalid");
        check_err(Format::Json, br#"{"a\u0007":1}"#, &c, "metric_name_invalid");
        check_err(
            Format::Json,
            format!(r#"{{"{long}":1}}"#).as_bytes(),
            &c,
            "metric_name_invalid",
        );
        check_err(Format::Kv, b"=1", &c, "metric_name_invalid");
        let cols = vec![String::new()];
        check_err(
            Format::Csv,
            b"1",
            &ctx(Some("s"), &cols),
            "metric_name_invalid",
        );
        let number = ParseContext { metric: "", ..c };
        check_err(Format::Number, b"1", &number, "metric_name_invalid");
        // An ignored string under a strange key is still just ignored.
        check(
            Format::Json,
            r#"{"":"x","v":1}"#,
            &c,
            &[("s", "v", 1.0, NOW)],
        );
    }

    #[test]
    fn json_nested_deeper_than_max_depth_is_too_deep() {
        let c = ctx(Some("s"), &[]);
        let input = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        check_err(Format::Json, input.as_bytes(), &c, "too_deep");
        // Beyond serde_json's own recursion limit it is a syntax error, not a crash.
        let input = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        check_err(Format::Json, input.as_bytes(), &c, "syntax");
    }

    #[test]
    fn more_than_max_metrics_is_too_many_metrics() {
        let c = ctx(Some("s"), &[]);
        let json: Vec<String> = (0..=MAX_METRICS).map(|i| format!("\"m{i}\":{i}")).collect();
        check_err(
            Format::Json,
            format!("{{{}}}", json.join(",")).as_bytes(),
            &c,
            "too_many_metrics",
        );
        let kv: Vec<String> = (0..=MAX_METRICS).map(|i| format!("m{i}={i}")).collect();
        check_err(Format::Kv, kv.join(" ").as_bytes(), &c, "too_many_metrics");
    }

    #[test]
    fn every_kind_label_is_distinct_snake_case() {
        let all = [
            ParseError::TooLarge { len: 0, max: 0 },
            ParseError::NotUtf8,
            ParseError::Empty,
            ParseError::Syntax(String::new()),
            ParseError::NotAnObject,
            ParseError::NoSensor,
            ParseError::NoMetrics,
            ParseError::NonFinite {
                metric: String::new(),
            },
            ParseError::BadTimestamp,
            ParseError::WrongColumnCount {
                expected: 0,
                got: 0,
            },
            ParseError::BadNumber {
                metric: String::new(),
            },
            ParseError::SensorIdInvalid,
            ParseError::MetricNameInvalid,
            ParseError::TooDeep { max: 0 },
            ParseError::TooManyMetrics { max: 0 },
        ];
        let mut kinds: Vec<_> = all.iter().map(ParseError::kind).collect();
        assert!(kinds.iter().all(|k| {
            k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }));
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), all.len());
    }

    #[test]
    fn parse_appends_to_out_without_clearing_it() {
        let c = ctx(Some("s"), &[]);
        let mut out = Vec::new();
        parse(Format::Kv, b"a=1", &c, &mut out).unwrap();
        parse(Format::Kv, b"b=2", &c, &mut out).unwrap();
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn format_deserializes_from_lowercase_names() {
        let f: Vec<Format> = serde_json::from_str(r#"["json","kv","csv","number"]"#).unwrap();
        assert_eq!(f, [Format::Json, Format::Kv, Format::Csv, Format::Number]);
        assert!(serde_json::from_str::<Format>(r#""JSON""#).is_err());
    }

    // ---- preview ----

    #[test]
    fn preview_escapes_controls_and_invalid_bytes_and_marks_truncation() {
        assert_eq!(preview(b"{\"v\":1}"), "{\"v\":1}");
        assert_eq!(preview(b"a\r\n\0\x1b[31m\\"), "a\\r\\n\\0\\u{1b}[31m\\\\");
        assert_eq!(preview(b"\xff\xfe21\xc2\xb0C"), "\\xff\\xfe21°C");
        assert_eq!(preview("\u{202e}evil".as_bytes()), "\\u{202e}evil");
        let long = preview(&[b'a'; 200]);
        assert_eq!(long, format!("{}…", "a".repeat(PREVIEW_BYTES)));
        assert_eq!(preview(b""), "");
    }

    // ---- properties ----

    /// Value text as it may appear in any format: mostly plausible, some hostile.
    fn value_text() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => any::<i32>().prop_map(|v| v.to_string()),
            8 => (-1e6f64..1e6).prop_map(|v| v.to_string()),
            1 => any::<f64>().prop_map(|v| format!("{v:?}")),
            1 => prop::sample::select(vec![
                "true", "false", "null", "1e400", "-1e400", "1e-400", "NaN", "inf", "Infinity",
                "18446744073709551616", "-0", "", "x", "\"s\"", "1700000000", "1e11",
                "\"2026-11-26T10:00:00Z\"", "2026-11-26T10:00:00+01:00",
            ])
            .prop_map(String::from),
        ]
    }

    /// Keys: mostly plain metric names, sometimes the special or invalid ones.
    fn key_text() -> impl Strategy<Value = String> {
        prop_oneof![
            12 => "[a-zA-Z][a-zA-Z0-9_]{0,6}",
            1 => prop::sample::select(vec!["sensor", "ts", "", "a.b", "T\u{0}", "Time", "_"])
                .prop_map(String::from),
            1 => "[\\x00-\\x1f\\u{80}-\\u{10ffff}]{0,4}",
        ]
    }

    /// JSON objects with hostile numbers, keys and nesting, sometimes cut short.
    fn jsonish() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            4 => value_text(),
            1 => "[a-z\\\\\"\\x00-\\x1f\\u{80}-\\u{10ffff}]{0,8}"
                .prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        let object = |inner: BoxedStrategy<String>| {
            prop::collection::vec((key_text(), inner), 0..6).prop_map(|kv| {
                let fields: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap()))
                    .collect();
                format!("{{{}}}", fields.join(","))
            })
        };
        let value = leaf.prop_recursive(20, 300, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                object(inner),
            ]
        });
        let top = object(value.boxed());
        (top, any::<prop::sample::Index>(), 0..8u8).prop_map(|(s, cut, roll)| {
            if roll == 0 && !s.is_empty() {
                let mut at = cut.index(s.len());
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                s[..at].to_string()
            } else {
                s
            }
        })
    }

    /// `key=value` tokens joined by random separators, sometimes a bare token.
    fn kvish() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            30 => (key_text(), value_text()).prop_map(|(k, v)| format!("{k}={v}")),
            1 => "[a-z0-9]{1,4}",
        ];
        let sep = prop::sample::select(vec![" ", ",", "\t", ", ", "  "]);
        prop::collection::vec((token, sep), 0..8)
            .prop_map(|ts| ts.into_iter().map(|(t, s)| t + s).collect())
    }

    /// Comma-separated values, usually as many as `COLUMNS` has.
    fn csvish() -> impl Strategy<Value = String> {
        let field = prop_oneof![4 => value_text(), 1 => "[a-z/ ]{0,4}"];
        let count = prop_oneof![3 => Just(COLUMNS.len()), 1 => 0..8usize];
        count
            .prop_flat_map(move |n| prop::collection::vec(field.clone(), n))
            .prop_map(|f| f.join(","))
    }

    const COLUMNS: [&str; 4] = ["sensor", "a", "ts", "b"];

    fn assert_invariants(format: Format, input: &[u8], default: Option<&str>) {
        let cols: Vec<String> = COLUMNS.map(String::from).to_vec();
        let c = ParseContext {
            default_sensor: default,
            columns: &cols,
            metric: "m",
            received_ms: NOW,
        };
        let mut out = Vec::new();
        match parse(format, input, &c, &mut out) {
            Ok(()) => {
                assert!(!out.is_empty() && out.len() <= MAX_METRICS);
                for r in &out {
                    assert!(r.value.is_finite(), "{r:?}");
                    assert!(valid_name(&r.sensor), "{r:?}");
                    assert!(valid_name(&r.metric), "{r:?}");
                    assert!(
                        (0..=MAX_TS_MS).contains(&r.ts_ms) || r.ts_ms == NOW,
                        "{r:?}"
                    );
                }
            }
            Err(e) => {
                assert!(out.is_empty());
                assert!(!e.kind().is_empty());
                let _ = e.to_string();
            }
        }
        let _ = preview(input);
    }

    /// The default sensor: usually set, sometimes absent.
    fn default_sensor() -> impl Strategy<Value = Option<&'static str>> {
        prop_oneof![3 => Just(Some("dev")), 1 => Just(None)]
    }

    proptest! {
        #[test]
        fn no_byte_input_panics_and_readings_are_valid(
            input in prop::collection::vec(any::<u8>(), 0..200),
            default in prop::option::of("[a-z\\x00/]{0,4}"),
        ) {
            for format in ALL_FORMATS {
                assert_invariants(format, &input, default.as_deref());
            }
        }

        #[test]
        fn no_jsonish_input_panics_and_readings_are_valid(
            input in jsonish(),
            default in default_sensor(),
        ) {
            for format in ALL_FORMATS {
                assert_invariants(format, input.as_bytes(), default);
            }
        }

        #[test]
        fn no_kv_csv_or_number_like_input_panics_and_readings_are_valid(
            input in prop_oneof![kvish(), csvish(), value_text()],
            default in default_sensor(),
        ) {
            for format in ALL_FORMATS {
                assert_invariants(format, input.as_bytes(), default);
            }
        }
    }
}
