//! Modbus through the real binary against a Modbus implementation nobody
//! here wrote: pymodbus's server, on the far end of a socat pseudo-terminal
//! pair (RTU) or on a TCP port. Values of every type and order go through
//! the rules to a real Mosquitto; devices that stop answering or answer
//! garbled frames are counted and never trusted; a bus that vanishes is
//! reopened.
//!
//! Polling every 100 ms keeps each test to a few seconds; timeouts are
//! generous (1 s) where a test asserts that a device never timed out,
//! since pymodbus shares two cores with the other tests. Ptys ignore
//! the baud rate: the wire is as fast as the kernel.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

/// One value on a device: where pymodbus holds it, how outpost reads it,
/// and what outpost must make of it.
struct Entry {
    metric: &'static str,
    /// `hr`, `ir`, `co`, `di`: pymodbus's names for the four tables.
    table: &'static str,
    address: u16,
    ty: &'static str,
    /// What the device holds (pymodbus encodes it with Python's struct).
    raw: Value,
    word_order: &'static str,
    byte_order: &'static str,
    /// `scale = .., offset = ..` or "".
    extra: &'static str,
    expect: f64,
}

/// A temperature probe: input register 1, a signed tenth of a degree.
fn probe_temperature() -> Entry {
    e(
        "temperature",
        "ir",
        1,
        "i16",
        json!(215),
        "big",
        "big",
        "scale = 0.1",
        21.5,
    )
}

#[allow(clippy::too_many_arguments)]
fn e(
    metric: &'static str,
    table: &'static str,
    address: u16,
    ty: &'static str,
    raw: Value,
    word_order: &'static str,
    byte_order: &'static str,
    extra: &'static str,
    expect: f64,
) -> Entry {
    Entry {
        metric,
        table,
        address,
        ty,
        raw,
        word_order,
        byte_order,
        extra,
        expect,
    }
}

fn kind(table: &str) -> &'static str {
    match table {
        "hr" => "holding",
        "ir" => "input",
        "co" => "coil",
        _ => "discrete",
    }
}

/// The pymodbus device (`modbus_server.py` spec).
fn device_spec(unit: u8, entries: &[Entry], more: Vec<Value>) -> Value {
    let mut values: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({"table": e.table, "address": e.address, "type": e.ty, "value": e.raw,
                   "word_order": e.word_order, "byte_order": e.byte_order})
        })
        .collect();
    values.extend(more);
    json!({"unit": unit, "values": values})
}

/// The `[[modbus.device]]` table for the same entries.
fn device_toml(unit: u8, sensor: &str, entries: &[Entry], more: &str, extra: &str) -> String {
    let mut s =
        format!("[[modbus.device]]\nunit = {unit}\nsensor = \"{sensor}\"\n{extra}registers = [\n");
    for e in entries {
        s.push_str(&format!(
            "  {{ metric = \"{}\", kind = \"{}\", address = {}, type = \"{}\", word_order = \"{}\", byte_order = \"{}\"{}{} }},\n",
            e.metric,
            kind(e.table),
            e.address,
            e.ty,
            e.word_order,
            e.byte_order,
            if e.extra.is_empty() { "" } else { ", " },
            e.extra
        ));
    }
    s.push_str(more);
    s.push_str("]\n");
    s
}

/// `[[modbus]]` on `path`, polled every 100 ms.
fn bus_toml(name: &str, path: &Path, timeout: &str) -> String {
    format!(
        "[[modbus]]\nname = \"{name}\"\npath = \"{}\"\nbaud = 9600\ninterval = \"100ms\"\ntimeout = \"{timeout}\"\n",
        path.display()
    )
}

/// Fires once for every (sensor, metric) pair: its alert carries the value.
const SEEN: &str = "[[rule]]\nid = \"seen\"\nsensor = \"*\"\nmetric = \"*\"\nabove = -1e300\nseverity = \"info\"\n";

/// A broker, a pty pair with pymodbus on one end, a subscriber to the
/// alerts, and the gateway (HTTP on) polling the other end.
struct Rig {
    gw: Gateway,
    sub: Subscriber,
    server: Option<ModbusServer>,
    spec: Value,
    pty: Pty,
    _up: Mosquitto,
    dir: tempfile::TempDir,
}

impl Rig {
    fn start(spec: Value, modbus: impl FnOnce(&Path) -> String, rules: &str) -> Rig {
        let dir = tempdir();
        let up = Mosquitto::start();
        let pty = Pty::new(dir.path(), "rs485");
        let server = ModbusServer::serial(dir.path(), &pty.test_path(), &spec);
        let sub = Subscriber::connect(up.port(), ALERTS);
        let mut cfg = Config::new(&up.url());
        cfg.extra_sections = modbus(pty.path());
        let gw = Launch::default()
            .http()
            .start(dir.path(), &cfg.toml(), rules);
        Rig {
            gw,
            sub,
            server: Some(server),
            spec,
            pty,
            _up: up,
            dir,
        }
    }

    fn server(&mut self) -> &mut ModbusServer {
        self.server.as_mut().expect("server stopped")
    }

    fn metrics(&self) -> String {
        http::get(self.gw.http_port(), "/metrics").body
    }

    /// A per-device series of `/metrics` (0 when absent).
    fn device(&self, name: &str, unit: u8, sensor: &str, error: Option<&str>) -> u64 {
        let labels = match error {
            Some(e) => {
                format!("{{source=\"rs485\",unit=\"{unit}\",sensor=\"{sensor}\",error=\"{e}\"}}")
            }
            None => format!("{{source=\"rs485\",unit=\"{unit}\",sensor=\"{sensor}\"}}"),
        };
        http::sample(&self.metrics(), &format!("outpost_modbus_{name}{labels}")).unwrap_or(0.0)
            as u64
    }

    fn wait_device(
        &self,
        what: &str,
        name: &str,
        unit: u8,
        sensor: &str,
        error: Option<&str>,
        at_least: u64,
    ) -> u64 {
        poll_until(WAIT, what, || {
            let n = self.device(name, unit, sensor, error);
            (n >= at_least).then_some(n)
        })
    }
}

/// The alert of `rule` for `sensor`/`metric` in `state`, waited for.
fn alert(sub: &mut Subscriber, rule: &str, sensor: &str, metric: &str, state: &str) -> Value {
    sub.wait_for(WAIT, &format!("{rule} {sensor} {metric} {state}"), |m| {
        m.is_alert() && {
            let v = m.json();
            v["rule"] == rule
                && v["sensor"] == sensor
                && v["metric"] == metric
                && v["state"] == state
        }
    })
    .json()
}

/// The one `modbus request failed` warning of `log` whose line contains
/// `with` (failures are logged at most once per 10 s; `what` says how many
/// there were, for the message when there is not exactly one).
fn one_failure_warning<'a>(log: &'a str, with: &str, what: &str) -> &'a str {
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("modbus request failed") && l.contains(with))
        .collect();
    assert_eq!(
        warned.len(),
        1,
        "{what}, warnings (at most one per 10 s):\n{}",
        warned.join("\n")
    );
    warned[0]
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-9 * want.abs().max(1.0)
}

/// Every type in every word and byte order, coils and discrete inputs,
/// scale and offset, and a status register's bits: each read from pymodbus
/// over RTU, through the rules, to the upstream broker, with the value
/// expected. The meter's holding registers (max_registers 16) take three
/// requests.
#[test]
fn every_type_and_order_decodes_and_alerts_through_the_rules() {
    let f32v = |v: f32| f64::from(v);
    let probe = [
        e(
            "temperature",
            "ir",
            1,
            "i16",
            json!(315),
            "big",
            "big",
            "scale = 0.1",
            31.5,
        ),
        e(
            "humidity",
            "ir",
            2,
            "i16",
            json!(-55),
            "big",
            "big",
            "scale = 0.1",
            -5.5,
        ),
    ];
    let types = [
        e(
            "u16",
            "hr",
            0,
            "u16",
            json!(65000),
            "big",
            "big",
            "",
            65000.0,
        ),
        e(
            "i16",
            "hr",
            1,
            "i16",
            json!(-1234),
            "big",
            "big",
            "",
            -1234.0,
        ),
        e(
            "u32",
            "hr",
            2,
            "u32",
            json!(4_000_000_000u32),
            "big",
            "big",
            "",
            4e9,
        ),
        e(
            "i32",
            "hr",
            4,
            "i32",
            json!(-123_456_789),
            "little",
            "big",
            "",
            -123_456_789.0,
        ),
        e(
            "f32_abcd",
            "hr",
            6,
            "f32",
            json!(-273.15),
            "big",
            "big",
            "",
            f32v(-273.15),
        ),
        e(
            "f32_cdab",
            "hr",
            8,
            "f32",
            json!(123.456),
            "little",
            "big",
            "",
            f32v(123.456),
        ),
        e(
            "f32_badc",
            "hr",
            10,
            "f32",
            json!(9.81),
            "big",
            "little",
            "",
            f32v(9.81),
        ),
        e(
            "f32_dcba",
            "hr",
            12,
            "f32",
            json!(1013.25),
            "little",
            "little",
            "",
            1013.25,
        ),
        e(
            "u64",
            "hr",
            14,
            "u64",
            json!(12_345_678_901_234u64),
            "big",
            "big",
            "",
            12_345_678_901_234.0,
        ),
        e(
            "i64",
            "hr",
            18,
            "i64",
            json!(-9_876_543_210i64),
            "little",
            "little",
            "",
            -9_876_543_210.0,
        ),
        e(
            "f64",
            "hr",
            22,
            "f64",
            json!(6.02214076e23),
            "big",
            "big",
            "",
            6.02214076e23,
        ),
        e(
            "f64_cdab",
            "hr",
            26,
            "f64",
            json!(-0.0001),
            "little",
            "big",
            "",
            -0.0001,
        ),
        e(
            "scaled",
            "hr",
            31,
            "u16",
            json!(1000),
            "big",
            "big",
            "scale = 0.01, offset = -5.0",
            5.0,
        ),
        e(
            "energy",
            "ir",
            0,
            "u32",
            json!(70000),
            "little",
            "big",
            "scale = 0.001",
            70.0,
        ),
    ];
    let more = vec![
        json!({"table": "hr", "address": 30, "type": "u16", "value": 0x8005}),
        json!({"table": "co", "address": 3, "type": "bool", "value": 1}),
        json!({"table": "di", "address": 9, "type": "bool", "value": 0}),
    ];
    let spec = json!({"devices": [device_spec(1, &probe, vec![]), device_spec(7, &types, more)]});
    let probe_toml = device_toml(1, "probe/1", &probe, "", "");
    let types_toml = device_toml(
        7,
        "meter/7",
        &types,
        "  { kind = \"holding\", address = 30, bits = { run = 0, door = 1, heat = 2, fault = 15 } },\n  \
         { metric = \"pump\", kind = \"coil\", address = 3 },\n  { metric = \"closed\", kind = \"discrete\", address = 9 },\n",
        "max_registers = 16\n",
    );
    let rules = format!(
        "{SEEN}\n[[rule]]\nid = \"hot\"\nsensor = \"probe/*\"\nmetric = \"temperature\"\nabove = 30.0\nseverity = \"critical\"\n"
    );
    let mut rig = Rig::start(
        spec,
        |path| {
            format!(
                "{}\n{probe_toml}\n{types_toml}",
                bus_toml("rs485", path, "1s")
            )
        },
        &rules,
    );

    let mut want: Vec<(&str, String, f64)> = probe
        .iter()
        .map(|e| ("probe/1", e.metric.to_string(), e.expect))
        .collect();
    want.extend(
        types
            .iter()
            .map(|e| ("meter/7", e.metric.to_string(), e.expect)),
    );
    for (m, v) in [
        ("run", 1.0),
        ("door", 0.0),
        ("heat", 1.0),
        ("fault", 1.0),
        ("pump", 1.0),
        ("closed", 0.0),
    ] {
        want.push(("meter/7", m.to_string(), v));
    }
    let mut wrong = Vec::new();
    for (sensor, metric, expect) in &want {
        let a = alert(&mut rig.sub, "seen", sensor, metric, "firing");
        let got = a["value"].as_f64().unwrap();
        if !close(got, *expect) {
            wrong.push(format!("{sensor} {metric}: got {got}, want {expect}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let hot = alert(&mut rig.sub, "hot", "probe/1", "temperature", "firing");
    assert_eq!(hot["value"], 31.5);

    // One request a round for the probe, six for the meter: holding 0-13,
    // 14-29 and 30-31 under max_registers 16 (the u64 at 14-17 does not fit
    // the first, and a value never splits), input 0-1, coil 3, discrete 9.
    // The probe is polled first and a device's requests are counted when
    // its poll ends, so after k probe requests the meter has made 6(k-1)
    // or 6k.
    let probe_reqs = rig.device("requests_total", 1, "probe/1", None);
    let meter_reqs = rig.device("requests_total", 7, "meter/7", None);
    assert!(probe_reqs > 0);
    assert!(
        meter_reqs == 6 * probe_reqs || meter_reqs + 6 == 6 * probe_reqs,
        "{meter_reqs} meter requests for {probe_reqs} probe requests"
    );
    let text = rig.metrics();
    assert!(
        !text.contains("outpost_modbus_errors_total"),
        "no errors expected:\n{text}"
    );
}

/// A device that stops answering costs one timeout a round, is counted and
/// logged (rate-limited, naming it and its registers), fires its
/// `silent_for` rule, and the other device on the bus keeps being read;
/// when it answers again the rule resolves.
#[test]
fn a_device_that_stops_answering_is_counted_and_the_other_keeps_being_read() {
    let probe = [probe_temperature()];
    let meter = [e(
        "power",
        "ir",
        12,
        "f32",
        json!(1520.5),
        "big",
        "big",
        "",
        1520.5,
    )];
    let spec = json!({"devices": [device_spec(1, &probe, vec![]), device_spec(2, &meter, vec![])]});
    let toml = format!(
        "{}\n{}\n{}",
        "",
        device_toml(1, "probe/1", &probe, "", ""),
        device_toml(2, "meter/2", &meter, "", "")
    );
    let rules = "[[rule]]\nid = \"meter-silent\"\nsensor = \"meter/2\"\nmetric = \"power\"\nsilent_for = \"1s\"\nseverity = \"critical\"\n";
    let mut rig = Rig::start(
        spec,
        |path| format!("{}{toml}", bus_toml("rs485", path, "300ms")),
        rules,
    );
    rig.wait_device(
        "the meter's first answer",
        "answers_total",
        2,
        "meter/2",
        None,
        1,
    );

    rig.server().command("silence 2");
    let fired = alert(&mut rig.sub, "meter-silent", "meter/2", "power", "firing");
    assert!(fired["value"].as_f64().unwrap() >= 1.0, "{fired}");
    let timeouts = rig.wait_device(
        "timeouts of the meter",
        "errors_total",
        2,
        "meter/2",
        Some("timeout"),
        8,
    );
    // The probe is still read, round after round.
    let probe_then = rig.device("answers_total", 1, "probe/1", None);
    rig.wait_device(
        "the probe read while the meter is silent",
        "answers_total",
        1,
        "probe/1",
        None,
        probe_then + 5,
    );
    assert_eq!(rig.device("device_up", 2, "meter/2", None), 0);
    assert_eq!(rig.device("device_up", 1, "probe/1", None), 1);
    // The silent device's failures are its own: the probe's answers keep
    // coming (above), and a timeout of the probe is rare (only pymodbus
    // slowed past the timeout by the other tests on two cores).
    let probe_timeouts = rig.device("errors_total", 1, "probe/1", Some("timeout"));
    let meter_timeouts = rig.device("errors_total", 2, "meter/2", Some("timeout"));
    assert!(
        probe_timeouts * 4 < meter_timeouts,
        "probe {probe_timeouts} timeouts, meter {meter_timeouts}"
    );

    // `outpost status` says which device fails and how.
    let status = run_outpost(
        rig.dir.path(),
        &[
            "status",
            "--config",
            rig.dir.path().join("outpost.toml").to_str().unwrap(),
        ],
    );
    let line = status
        .stdout
        .lines()
        .find(|l| l.contains("meter/2"))
        .unwrap_or_else(|| panic!("no meter in:\n{}", status.all()))
        .to_string();
    assert!(
        line.contains("FAILING") && line.contains("timeout"),
        "{line}"
    );
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.contains("probe/1") && l.contains(" ok ")),
        "{}",
        status.stdout
    );

    // Logged with the device and its registers, at most once per 10 s.
    let log = rig.gw.run_log();
    let warned = one_failure_warning(&log, "unit=2 ", &format!("{timeouts} timeouts"));
    assert!(
        warned.contains("unit=2")
            && warned.contains("sensor=meter/2")
            && warned.contains("registers=input 12-13"),
        "{warned}"
    );

    rig.server().command("speak 2");
    alert(&mut rig.sub, "meter-silent", "meter/2", "power", "resolved");
}

/// A frame with a flipped bit fails its CRC: counted as `bad_crc`, never a
/// value (a rule that fires on any other value than the device's stays
/// quiet), and the next clean answer is read again.
#[test]
fn a_garbled_answer_is_counted_and_never_trusted() {
    let probe = [probe_temperature()];
    let spec = json!({"devices": [device_spec(1, &probe, vec![])]});
    let toml = device_toml(1, "probe/1", &probe, "", "");
    let rules = "[[rule]]\nid = \"wrong\"\nsensor = \"probe/1\"\nmetric = \"temperature\"\noutside = [21.4, 21.6]\n";
    let mut rig = Rig::start(
        spec,
        |path| format!("{}{toml}", bus_toml("rs485", path, "1s")),
        rules,
    );
    let answers = rig.wait_device(
        "the probe's first answer",
        "answers_total",
        1,
        "probe/1",
        None,
        1,
    );

    rig.server().command("garble 1");
    rig.wait_device(
        "a garbled answer",
        "errors_total",
        1,
        "probe/1",
        Some("bad_crc"),
        1,
    );
    let during = rig.device("answers_total", 1, "probe/1", None);
    rig.wait_device(
        "more garbled answers",
        "errors_total",
        1,
        "probe/1",
        Some("bad_crc"),
        4,
    );
    assert_eq!(
        rig.device("answers_total", 1, "probe/1", None),
        during,
        "a garbled frame was taken as an answer"
    );
    assert!(during <= answers + 1);

    rig.server().command("clean 1");
    rig.wait_device(
        "answers again",
        "answers_total",
        1,
        "probe/1",
        None,
        during + 3,
    );
    rig.sub.barrier("outpost/test-gw/alerts/barrier");
    let alerts = dedup_alerts(rig.sub.messages());
    assert!(
        alerts.is_empty(),
        "a garbled value reached the rules: {alerts:?}"
    );
    assert_eq!(rig.device("errors_total", 1, "probe/1", Some("timeout")), 0);
}

/// A register the device does not have: pymodbus answers that request with
/// exception 2 (illegal data address), a real device's answer to a wrong
/// register map. Counted as `exception` and logged with its code and the
/// registers asked for; the device's other request, to registers it has,
/// keeps being answered and alerting. The device is shown failing (up means
/// every request of its last poll answered), with the exception as the
/// reason.
#[test]
fn an_exception_answer_is_counted_logged_with_its_code_and_the_other_registers_still_read() {
    let probe = [probe_temperature()];
    let spec = json!({"devices": [device_spec(1, &probe, vec![])]});
    // Input register 40 is not in the device (a separate request: max_gap 0).
    let missing = "  { metric = \"humidity\", kind = \"input\", address = 40, type = \"u16\" },\n";
    let toml = device_toml(1, "probe/1", &probe, missing, "");
    let mut rig = Rig::start(
        spec,
        |path| format!("{}{toml}", bus_toml("rs485", path, "1s")),
        SEEN,
    );
    alert(&mut rig.sub, "seen", "probe/1", "temperature", "firing");
    let exceptions = rig.wait_device(
        "exception answers",
        "errors_total",
        1,
        "probe/1",
        Some("exception"),
        3,
    );
    let answers = rig.device("answers_total", 1, "probe/1", None);
    rig.wait_device(
        "the probe's temperature read beside the exceptions",
        "answers_total",
        1,
        "probe/1",
        None,
        answers + 3,
    );
    assert_eq!(rig.device("device_up", 1, "probe/1", None), 0);
    let status = run_outpost(
        rig.dir.path(),
        &[
            "status",
            "--config",
            rig.dir.path().join("outpost.toml").to_str().unwrap(),
        ],
    );
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.contains("probe/1") && l.contains("FAILING") && l.contains("exception")),
        "{}",
        status.all()
    );
    for other in ["timeout", "bad_crc", "bad_frame"] {
        assert_eq!(
            rig.device("errors_total", 1, "probe/1", Some(other)),
            0,
            "{other} counted for an exception answer"
        );
    }
    rig.sub.barrier("outpost/test-gw/alerts/barrier");
    let metrics: Vec<String> = dedup_alerts(rig.sub.messages())
        .iter()
        .filter_map(|a| a["metric"].as_str().map(str::to_string))
        .collect();
    assert_eq!(metrics, vec!["temperature"], "an exception became a value");

    let log = rig.gw.run_log();
    let warned = one_failure_warning(&log, "", &format!("{exceptions} exceptions"));
    assert!(
        warned.contains("exception 2 (illegal data address)")
            && warned.contains("registers=input 40 metrics=humidity")
            && warned.contains("error=\"exception\""),
        "{warned}"
    );
}

/// The adapter unplugged: the bus is retried with backoff (no busy loop)
/// and reopened at the same path when it is back.
#[test]
fn an_unplugged_bus_is_reopened_without_spinning() {
    let probe = [probe_temperature()];
    let spec = json!({"devices": [device_spec(1, &probe, vec![])]});
    let toml = device_toml(1, "probe/1", &probe, "", "");
    let mut rig = Rig::start(
        spec,
        |path| format!("{}{toml}", bus_toml("rs485", path, "100ms")),
        SEEN,
    );
    alert(&mut rig.sub, "seen", "probe/1", "temperature", "firing");

    rig.server = None;
    rig.pty.unplug();
    rig.gw.wait_log(WAIT, "modbus bus lost");
    let cpu0 = cpu_time(rig.gw.pid());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let share = (cpu_time(rig.gw.pid()) - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
    assert!(share < 0.10, "{:.0}% CPU while unplugged", share * 100.0);

    rig.pty.replug();
    rig.server = Some(ModbusServer::serial(
        rig.dir.path(),
        &rig.pty.test_path(),
        &rig.spec,
    ));
    let before = rig.device("answers_total", 1, "probe/1", None);
    rig.wait_device(
        "answers after the replug",
        "answers_total",
        1,
        "probe/1",
        None,
        before + 3,
    );
    let reopens = http::sample(
        &rig.metrics(),
        r#"outpost_source_reopens_total{source="rs485",kind="modbus"}"#,
    );
    assert_eq!(reopens, Some(1.0));
}

/// Modbus TCP with the same tables: answers matched by transaction id.
#[test]
fn modbus_tcp_reads_the_same_tables() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let port = free_port().unwrap();
    let entries = [
        e(
            "power",
            "ir",
            12,
            "f32",
            json!(1520.5),
            "big",
            "big",
            "",
            1520.5,
        ),
        e(
            "total",
            "ir",
            342,
            "f32",
            json!(12345.5),
            "big",
            "big",
            "",
            12345.5,
        ),
        e(
            "count",
            "hr",
            0,
            "u32",
            json!(70000),
            "little",
            "big",
            "",
            70000.0,
        ),
    ];
    let _server = ModbusServer::tcp(
        dir.path(),
        port,
        &json!({"devices": [device_spec(1, &entries, vec![])]}),
    );
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let mut cfg = Config::new(&up.url());
    cfg.extra_sections = format!(
        "[[modbus]]\nname = \"plc\"\nurl = \"tcp://127.0.0.1:{port}\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\n{}",
        device_toml(1, "meter/tcp", &entries, "", "")
    );
    let _gw = Gateway::start(dir.path(), &cfg.toml(), SEEN);
    for en in &entries {
        let a = alert(&mut sub, "seen", "meter/tcp", en.metric, "firing");
        assert!(
            close(a["value"].as_f64().unwrap(), en.expect),
            "{en_metric}: {a}",
            en_metric = en.metric
        );
    }
}

/// `outpost modbus read` polls once and prints each value with where it
/// came from; a device that does not answer makes it exit 1, saying so.
#[test]
fn modbus_read_prints_what_the_devices_answered() {
    let dir = tempdir();
    let pty = Pty::new(dir.path(), "rs485");
    let probe = [
        e(
            "temperature",
            "ir",
            1,
            "i16",
            json!(215),
            "big",
            "big",
            "scale = 0.1",
            21.5,
        ),
        e(
            "humidity",
            "ir",
            2,
            "i16",
            json!(405),
            "big",
            "big",
            "scale = 0.1",
            40.5,
        ),
    ];
    let meter = [e(
        "power",
        "ir",
        12,
        "f32",
        json!(1520.5),
        "big",
        "big",
        "",
        1520.5,
    )];
    let mut server = ModbusServer::serial(
        dir.path(),
        &pty.test_path(),
        &json!({"devices": [device_spec(1, &probe, vec![]), device_spec(2, &meter, vec![])]}),
    );
    let config = format!(
        "[gateway]\nid = \"gw\"\nstate_dir = \"state\"\n\n{}\n{}\n{}",
        bus_toml("rs485", pty.path(), "1s"),
        device_toml(1, "probe/1", &probe, "", ""),
        device_toml(2, "meter/2", &meter, "", "")
    );
    std::fs::write(dir.path().join("rules.toml"), SEEN).unwrap();
    std::fs::write(dir.path().join("outpost.toml"), config).unwrap();
    let read = || run_outpost(dir.path(), &["modbus", "read", "--config", "outpost.toml"]);
    let out = read();
    assert_eq!(out.code, Some(0), "{}", out.all());
    for want in [
        "rs485  ",
        "  unit 1  probe/1",
        "temperature  21.5  input 1 i16 x0.1",
        "humidity     40.5  input 2 i16 x0.1",
        "  unit 2  meter/2",
        "power  1520.5  input 12 f32",
    ] {
        assert!(
            out.stdout.contains(want),
            "missing {want:?} in:\n{}",
            out.stdout
        );
    }
    server.command("silence 2");
    let out = read();
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stdout
            .contains("input 12-13: timeout (no answer) within 1s"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("temperature  21.5"), "{}", out.stdout);
}
