//! Each example config under config/examples/ with the payloads its device
//! really sends: the config is loaded and validated as `outpost check`
//! would, and the payloads go through the same parsing the running gateway
//! does (topic templates, formats, columns).

use std::path::Path;

use outpost::config::Config;
use outpost::reading::Reading;
use outpost::source::modbus::{decode, frame};
use outpost::source::{mqtt, serial};

const RECEIVED: i64 = 1_795_687_200_000; // 2026-11-26T10:00:00Z

fn load(name: &str) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/examples")
        .join(name);
    Config::load(&path).unwrap_or_else(|d| panic!("{name} does not validate:\n{d}"))
}

/// (sensor, metric, value) sorted, for comparison.
fn triples(readings: &[Reading]) -> Vec<(String, String, f64)> {
    let mut v: Vec<_> = readings
        .iter()
        .map(|r| (r.sensor.clone(), r.metric.clone(), r.value))
        .collect();
    v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    v
}

fn t(sensor: &str, metric: &str, value: f64) -> (String, String, f64) {
    (sensor.into(), metric.into(), value)
}

fn mqtt_message(cfg: &Config, source: &str, topic: &str, payload: &str) -> Vec<Reading> {
    let src = cfg.mqtt.iter().find(|m| m.name == source).expect("source");
    assert!(
        src.topics
            .iter()
            .any(|f| outpost::topic::match_filter(f, topic).is_some()),
        "{topic} is not subscribed by {source}"
    );
    let mut out = Vec::new();
    mqtt::readings(src, topic, payload.as_bytes(), RECEIVED, &mut out)
        .unwrap_or_else(|e| panic!("{topic} {payload}: {e}"));
    out
}

fn serial_line(cfg: &Config, line: &str) -> Vec<Reading> {
    let mut out = Vec::new();
    serial::readings_from_line(&cfg.serial[0], line.as_bytes(), RECEIVED, &mut out)
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    out
}

#[test]
fn arduino_json_lines_with_and_without_a_sensor_field() {
    let cfg = load("arduino-json.toml");
    assert_eq!(
        triples(&serial_line(
            &cfg,
            "{\"sensor\":\"bench\",\"temperature\":21.5,\"humidity\":40.2}\r"
        )),
        vec![
            t("bench", "humidity", 40.2),
            t("bench", "temperature", 21.5)
        ]
    );
    let r = serial_line(&cfg, "{\"temperature\":21.6,\"humidity\":40.1}");
    assert_eq!(
        triples(&r),
        vec![
            t("workshop/bench", "humidity", 40.1),
            t("workshop/bench", "temperature", 21.6)
        ]
    );
    assert_eq!(r[0].ts_ms, RECEIVED);
    // Half a line printed at reset is an error, counted, not a reading.
    let mut out = Vec::new();
    assert!(
        serial::readings_from_line(
            &cfg.serial[0],
            b"ure\":21.6,\"humidity\":40.1}",
            RECEIVED,
            &mut out
        )
        .is_err()
    );
    assert!(out.is_empty());
}

#[test]
fn csv_logger_rows_take_time_and_sensor_from_their_columns() {
    let cfg = load("csv-logger.toml");
    let r = serial_line(&cfg, "1795687200,coldroom-1,3.9,81");
    assert_eq!(
        triples(&r),
        vec![
            t("coldroom-1", "humidity", 81.0),
            t("coldroom-1", "temperature", 3.9)
        ]
    );
    assert!(r.iter().all(|r| r.ts_ms == 1_795_687_200_000));
}

#[test]
fn tasmota_telemetry_flattens_nested_sensors() {
    let cfg = load("tasmota.toml");
    let r = mqtt_message(
        &cfg,
        "tasmota",
        "tele/kitchen-plug/SENSOR",
        r#"{"Time":"2026-11-26T10:00:00","ENERGY":{"TotalStartTime":"2026-01-01T00:00:00","Total":12.3,"Power":1500,"Voltage":231,"Current":6.5},"BME280":{"Temperature":21.5,"Humidity":45.2,"Pressure":1013.2},"PressureUnit":"hPa","TempUnit":"C"}"#,
    );
    assert_eq!(
        triples(&r),
        vec![
            t("kitchen-plug", "BME280.Humidity", 45.2),
            t("kitchen-plug", "BME280.Pressure", 1013.2),
            t("kitchen-plug", "BME280.Temperature", 21.5),
            t("kitchen-plug", "ENERGY.Current", 6.5),
            t("kitchen-plug", "ENERGY.Power", 1500.0),
            t("kitchen-plug", "ENERGY.Total", 12.3),
            t("kitchen-plug", "ENERGY.Voltage", 231.0),
        ]
    );
    // Tasmota's local "Time" is not the reading's time: the time received is.
    assert!(r.iter().all(|r| r.ts_ms == RECEIVED));
}

#[test]
fn zigbee2mqtt_devices_are_named_from_the_topic() {
    let cfg = load("zigbee2mqtt.toml");
    let r = mqtt_message(
        &cfg,
        "zigbee",
        "zigbee2mqtt/greenhouse-th",
        r#"{"temperature":21.3,"humidity":55,"battery":97,"linkquality":120,"occupancy":false,"update":{"state":"idle"},"update_available":null}"#,
    );
    assert_eq!(
        triples(&r),
        vec![
            t("zigbee/greenhouse-th", "battery", 97.0),
            t("zigbee/greenhouse-th", "humidity", 55.0),
            t("zigbee/greenhouse-th", "linkquality", 120.0),
            t("zigbee/greenhouse-th", "occupancy", 0.0),
            t("zigbee/greenhouse-th", "temperature", 21.3),
        ]
    );
    let src = &cfg.mqtt[0];
    assert!(
        src.topics
            .iter()
            .all(|f| outpost::topic::match_filter(f, "zigbee2mqtt/bridge/state").is_none()),
        "the bridge's own topics are not readings"
    );
}

#[test]
fn shelly_gen1_numbers_take_sensor_and_metric_from_the_topic() {
    let cfg = load("shelly.toml");
    assert_eq!(
        triples(&mqtt_message(
            &cfg,
            "shelly-power",
            "shellies/shellyplug-s-C3B1A2/relay/0/power",
            "1520.4"
        )),
        vec![t("shellyplug-s-C3B1A2", "power", 1520.4)]
    );
    assert_eq!(
        triples(&mqtt_message(
            &cfg,
            "shelly-ht",
            "shellies/shellyht-6A7B8C/sensor/temperature",
            "21.5"
        )),
        vec![t("shellyht-6A7B8C", "temperature", 21.5)]
    );
    assert_eq!(
        triples(&mqtt_message(
            &cfg,
            "shelly-ht",
            "shellies/shellyht-6A7B8C/sensor/battery",
            "87"
        )),
        vec![t("shellyht-6A7B8C", "battery", 87.0)]
    );
}

#[test]
fn shelly_gen2_status_objects_flatten() {
    let cfg = load("shelly.toml");
    let r = mqtt_message(
        &cfg,
        "shelly-gen2",
        "shellyplus1pm-a8032ab1/status/switch:0",
        r#"{"id":0,"source":"init","output":true,"apower":1520.4,"voltage":230.1,"current":6.61,"aenergy":{"total":1234.5,"by_minute":[1.0,2.0,3.0],"minute_ts":1795687200},"temperature":{"tC":45.1,"tF":113.2}}"#,
    );
    let got = triples(&r);
    for want in [
        t("shellyplus1pm-a8032ab1", "apower", 1520.4),
        t("shellyplus1pm-a8032ab1", "aenergy.total", 1234.5),
        t("shellyplus1pm-a8032ab1", "output", 1.0),
        t("shellyplus1pm-a8032ab1", "temperature.tC", 45.1),
        t("shellyplus1pm-a8032ab1", "voltage", 230.1),
    ] {
        assert!(got.contains(&want), "missing {want:?} in {got:?}");
    }
}

#[test]
fn the_example_rules_match_the_example_metrics() {
    // The example rules are written against these payloads: check one each
    // through the real engine, so a renamed metric in an example is caught.
    use outpost::reading::Now;
    use outpost::rules::{AlertState, engine::Engine};
    let cfg = load("tasmota.toml");
    let mut engine = Engine::new(cfg.rules.clone());
    let mut out = Vec::new();
    let now = Now {
        mono_ms: 0,
        wall_ms: RECEIVED,
    };
    for r in mqtt_message(
        &cfg,
        "tasmota",
        "tele/kitchen-plug/SENSOR",
        r#"{"ENERGY":{"Power":2500},"BME280":{"Temperature":31.5}}"#,
    ) {
        engine.on_reading(&r, now, &mut out);
    }
    let mut fired: Vec<(String, String)> = out
        .iter()
        .filter(|a| a.state == AlertState::Firing)
        .map(|a| (a.rule.clone(), a.metric.clone()))
        .collect();
    fired.sort();
    assert_eq!(
        fired,
        vec![
            ("plug-overload".to_string(), "ENERGY.Power".to_string()),
            ("too-hot".to_string(), "BME280.Temperature".to_string()),
        ]
    );
}

/// A Modbus answer, as the device sends it (CRC included), decoded for the
/// first request the example config makes of `unit` on its first bus.
fn modbus_answer(cfg: &Config, unit: u8, answer: &str) -> (Vec<decode::Block>, Vec<Reading>) {
    let device = cfg.modbus[0]
        .devices
        .iter()
        .find(|d| d.unit == unit)
        .expect("unit");
    let blocks = decode::plan(device);
    let bytes: Vec<u8> = answer
        .split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let frame::RtuCheck::Data(data) = frame::check_rtu(&blocks[0].request, &bytes) else {
        panic!("{answer} is not the answer to {:?}", blocks[0].request);
    };
    let mut out = Vec::new();
    let bad = decode::decode_block(device, &blocks[0], data, RECEIVED, &mut out);
    assert!(bad.is_empty(), "{bad:?}");
    (blocks, out)
}

#[test]
fn sht20_rs485_probes_answer_temperature_and_humidity_in_one_request() {
    let cfg = load("sht20-rs485.toml");
    assert_eq!(cfg.modbus[0].devices.len(), 2);
    // Read input registers 1-2 of unit 1: 01 04 00 01 00 02 20 0B.
    let (blocks, r) = modbus_answer(&cfg, 1, "01 04 04 01 0b 01 90 8a 46");
    assert_eq!(blocks.len(), 1);
    assert_eq!(
        blocks[0].request.rtu(),
        [0x01, 0x04, 0x00, 0x01, 0x00, 0x02, 0x20, 0x0B]
    );
    assert_eq!(
        triples(&r),
        vec![
            t("greenhouse/probe-1", "humidity", 40.0),
            t("greenhouse/probe-1", "temperature", 26.7)
        ]
    );
}

#[test]
fn sdm120_floats_are_read_high_word_first_in_three_requests() {
    let cfg = load("sdm120.toml");
    let (blocks, r) = modbus_answer(
        &cfg,
        1,
        "01 04 40 43 66 80 00 00 00 00 00 00 00 00 00 40 d3 85 1f 00 00 00 00 00 00 00 00 \
         44 be 0c cd 00 00 00 00 00 00 00 00 44 be a0 00 00 00 00 00 00 00 00 00 c2 f1 00 00 \
         00 00 00 00 00 00 00 00 3f 7f 3b 64 c6 10",
    );
    let spans: Vec<String> = blocks.iter().map(decode::Block::registers).collect();
    assert_eq!(spans, ["input 0-31", "input 70-75", "input 342-343"]);
    let f = |v: f32| f64::from(v);
    assert_eq!(
        triples(&r),
        vec![
            t("pumphouse/mains", "apparent_power", 1525.0),
            t("pumphouse/mains", "current", f(6.61)),
            t("pumphouse/mains", "power", f(1520.4)),
            t("pumphouse/mains", "power_factor", f(0.997)),
            t("pumphouse/mains", "reactive_power", -120.5),
            t("pumphouse/mains", "voltage", 230.5),
        ]
    );
}
