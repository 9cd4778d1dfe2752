//! The data path through the real binary: readings from serial ports and
//! a local broker in, alerts upstream out, checked field by field against
//! the alert contract (docs/contract.md); the outbox across an outage and
//! restarts; `check`; the retained status topic.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use rumqttc::QoS;
use serde_json::{Value, json};

use crate::harness::*;

/// Checks one alert message against the alert contract (docs/contract.md)
/// for the `HOT_RULE` on gateway `test-gw`: `sensor`, `state`, `value` and
/// `message` as given, every other field as the contract says. Returns the
/// payload.
fn check_alert(m: &Msg, sensor: &str, state: &str, value: f64, message: &str) -> Value {
    let v = m.json();
    let ctx = format!("alert on {}: {}", m.topic, m.text());
    assert_eq!(
        m.topic,
        format!("outpost/test-gw/alerts/hot/{}", sensor),
        "{ctx}"
    );
    assert_eq!(
        m.qos,
        QoS::AtLeastOnce,
        "alerts are published with QoS 1; {ctx}"
    );
    assert!(!m.retain, "alerts are not retained; {ctx}");

    let keys: BTreeSet<&str> = v
        .as_object()
        .expect("alert is a JSON object")
        .keys()
        .map(|k| k.as_str())
        .collect();
    let contract: BTreeSet<&str> = ALERT_FIELDS.into();
    assert_eq!(
        keys, contract,
        "payload fields differ from the contract; {ctx}"
    );

    let seq = v["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("seq is not an unsigned integer; {ctx}"));
    assert!(seq >= 1, "{ctx}");
    // id = {gateway}-{6 hex}-{seq}
    let id = v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("id is not a string; {ctx}"));
    let rest = id
        .strip_prefix("test-gw-")
        .unwrap_or_else(|| panic!("id does not start with the gateway id; {ctx}"));
    let (db, seq_part) = rest
        .split_once('-')
        .unwrap_or_else(|| panic!("id is not gateway-xxxxxx-seq; {ctx}"));
    assert!(
        db.len() == 6
            && db
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "id's database part is not 6 lowercase hex digits; {ctx}"
    );
    assert_eq!(
        seq_part,
        seq.to_string(),
        "id does not end with the seq; {ctx}"
    );

    assert_eq!(v["gateway"], "test-gw", "{ctx}");
    assert_eq!(v["rule"], "hot", "{ctx}");
    assert_eq!(v["sensor"], sensor, "{ctx}");
    assert_eq!(v["metric"], "temperature", "{ctx}");
    assert_eq!(v["state"], state, "{ctx}");
    assert_eq!(v["severity"], "critical", "{ctx}");
    assert_eq!(v["value"].as_f64(), Some(value), "{ctx}");
    let threshold = v["threshold"]
        .as_f64()
        .unwrap_or_else(|| panic!("threshold is not a number; {ctx}"));
    if state == "firing" {
        assert_eq!(threshold, 30.0, "{ctx}");
    } else {
        // The contract does not say whether a resolution reports the limit
        // or the clear value; either is a number of the rule.
        assert!(threshold == 30.0 || threshold == 28.0, "{ctx}");
    }
    let ts = parse_ts_millis_z(v["ts"].as_str().unwrap_or_default())
        .unwrap_or_else(|| panic!("ts is not RFC 3339 UTC with millis and Z; {ctx}"));
    let since = parse_ts_millis_z(v["since"].as_str().unwrap_or_default())
        .unwrap_or_else(|| panic!("since is not RFC 3339 UTC with millis and Z; {ctx}"));
    assert!(since <= ts, "since after ts; {ctx}");
    let now = time::OffsetDateTime::from(SystemTime::now());
    assert!(
        (now - ts).abs() < time::Duration::seconds(120),
        "ts is not about now ({now}); {ctx}"
    );
    assert_eq!(v["message"], message, "{ctx}");
    assert_eq!(v["labels"], json!({ "room": "lab" }), "{ctx}");
    v
}

fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

fn db_part(v: &Value) -> String {
    let id = v["id"].as_str().unwrap();
    id.rsplit_once('-').unwrap().0.to_string()
}

// ---------------------------------------------------------------------------
// Foundation: readings in, alerts out, outbox, check, status
// ---------------------------------------------------------------------------

/// A json and a kv serial line each fire the rule, with every payload field
/// of the contract; a value below `clear` resolves it with the next seq.
#[test]
fn serial_json_and_kv_lines_fire_and_resolve_alerts_upstream() {
    let mut rig = SerialRig::start_with_kv(Launch::default());

    // Bad input is counted and dropped; it does not stop the source.
    rig.pty.write_line("this is not json");
    let m = rig.alert(&reading("t1", 31.5), "t1", "firing");
    let t1 = check_alert(&m, "t1", "firing", 31.5, "t1 is 31.5");

    let m = rig.alert_kv("sensor=t2 temperature=33.25 humidity=40", "t2", "firing");
    let t2 = check_alert(&m, "t2", "firing", 33.25, "t2 is 33.25");
    assert_eq!(seq(&t2), seq(&t1) + 1);

    // A kv line naming no sensor is the port's `sensor`; commas separate too.
    let m = rig.alert_kv("temperature=40.5,humidity=10", "shelf", "firing");
    let shelf = check_alert(&m, "shelf", "firing", 40.5, "shelf is 40.5");
    assert_eq!(seq(&shelf), seq(&t1) + 2);

    // 29 is below the limit but above `clear`: nothing; 27.5 resolves.
    rig.pty.write_line(&reading("t1", 29.0));
    let m = rig.alert(&reading("t1", 27.5), "t1", "resolved");
    let resolved = check_alert(&m, "t1", "resolved", 27.5, "t1 is 27.5");
    assert_eq!(
        seq(&resolved),
        seq(&t1) + 3,
        "hysteresis: 29.0 must not resolve; resolution is the next alert"
    );
    assert_ne!(resolved["id"], t1["id"]);
    assert_eq!(
        db_part(&resolved),
        db_part(&t1),
        "one database, one id prefix"
    );

    // Once per transition, never once per reading (the barrier: anything
    // published so far has arrived).
    rig.sub.barrier("outpost/test-gw/alerts/barrier");
    let alerts = dedup_alerts(rig.sub.messages());
    assert_eq!(alerts.len(), 4, "exactly four alerts: {alerts:#?}");
    assert_eq!(
        rig.sub.messages().iter().filter(|m| m.is_alert()).count(),
        4,
        "no redelivery on a healthy link"
    );

    // state_dir = "state" resolves against the config's folder, not the cwd.
    assert!(
        rig.dir.path().join("state").is_dir(),
        "state dir not created beside the config"
    );
    assert!(
        !rig.dir.path().join("cwd/state").exists(),
        "state dir resolved against the cwd"
    );
    rig.gw.assert_running();
}

/// A reading on the local broker fires the rule; the sensor id comes from
/// the payload's `sensor` field, else from the topic.
#[test]
fn mqtt_source_reading_fires_alert() {
    let mut rig = MqttRig::start(HOT_RULE);

    // The payload names the sensor: it wins over the topic.
    let m = rig.alert(
        "sensors/node-1/reading",
        &reading("t7", 32.5),
        "t7",
        "firing",
    );
    let t7 = check_alert(&m, "t7", "firing", 32.5, "t7 is 32.5");

    // No `sensor` field: the sensor id comes from the topic, by the default
    // template: the whole topic (`{topic}`) or the level `+` matched are
    // both reasonable, anything else is not.
    let m = retry_until(
        WAIT,
        Duration::from_millis(500),
        "an alert for the sensor named by the topic",
        || {
            publish(
                rig.local.port(),
                "sensors/room-9/reading",
                r#"{"temperature":36}"#,
            )
        },
        |t| rig.sub.try_wait_for(t, |m| m.topic.contains("room-9")),
    );
    let sensor = m.json()["sensor"].as_str().unwrap_or_default().to_string();
    assert!(
        sensor == "sensors/room-9/reading" || sensor == "room-9",
        "sensor id from topic sensors/room-9/reading is {sensor:?}"
    );
    let v = check_alert(&m, &sensor, "firing", 36.0, &format!("{sensor} is 36"));
    assert_eq!(seq(&v), seq(&t7) + 1);

    // A topic outside the filters is not read: it was published first, and
    // the local broker delivers one publisher's messages in order.
    publish(
        rig.local.port(),
        "elsewhere/t8/reading",
        &reading("t8", 50.0),
    );
    rig.alert("sensors/t9/reading", &reading("t9", 50.0), "t9", "firing");
    assert!(
        !rig.sub
            .messages()
            .iter()
            .any(|m| alert_is(m, "t8", "firing")),
        "a reading outside `topics` fired"
    );
}

/// With the upstream broker stopped the gateway keeps running and keeps the
/// alerts; when the broker is back they arrive in seq order with no gap,
/// and a new alert queues behind them.
#[test]
fn alerts_made_while_upstream_is_down_arrive_in_seq_order_when_it_is_back() {
    let mut rig = SerialRig::start();
    let warm = rig.alert(&reading("w", 40.0), "w", "firing").json();
    let seq0 = seq(&warm);
    let created0 = rig.gw.alerts_created();

    rig.up.stop();
    rig.gw.wait_log(WAIT, "upstream link lost");
    let script = [
        ("c1", 35.0, "firing"),
        ("c2", 36.0, "firing"),
        ("c1", 20.0, "resolved"),
        ("c3", 37.0, "firing"),
        ("c2", 21.0, "resolved"),
    ];
    for (sensor, t, _) in script {
        rig.pty.write_line(&reading(sensor, t));
    }
    // The scenario: all five are made (and stored) while the broker is down.
    rig.gw.wait_created(created0 + script.len());
    rig.up.start_again();

    let got = rig
        .sub
        .wait_until(WAIT, "the 5 alerts made while upstream was down", |msgs| {
            let a: Vec<Value> = dedup_alerts(msgs)
                .into_iter()
                .filter(|v| seq(v) > seq0)
                .collect();
            (a.len() >= script.len()).then_some(a)
        });
    let seqs: Vec<u64> = got.iter().map(seq).collect();
    let want: Vec<u64> = (seq0 + 1..=seq0 + script.len() as u64).collect();
    assert_eq!(seqs, want, "backlog must drain in seq order with no gap");
    for (v, (sensor, t, state)) in got.iter().zip(script) {
        assert_eq!(
            (
                v["sensor"].as_str(),
                v["state"].as_str(),
                v["value"].as_f64()
            ),
            (Some(sensor), Some(state), Some(t)),
            "{v}"
        );
    }

    // New alerts queue behind the backlog.
    let m = rig.alert(&reading("c3", 10.0), "c3", "resolved");
    assert_eq!(seq(&m.json()), seq0 + script.len() as u64 + 1);
    let order: Vec<u64> = dedup_alerts(rig.sub.messages()).iter().map(seq).collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "alerts out of seq order: {order:?}"
    );
    rig.gw.assert_running();
}

/// A gateway whose alerts reach the broker through a proxy holding them
/// back; makes alerts for k1..k3 and returns them as the gateway published
/// them (so they are in its outbox, unacknowledged).
fn gateway_with_unacked_alerts() -> (SerialRig, Vec<Value>) {
    let mut rig = SerialRig::start_proxied(|p| p.hold_publishes(true));
    for sensor in ["k1", "k2", "k3"] {
        retry_until(
            WAIT,
            Duration::from_millis(500),
            &format!("the gateway to publish an alert for {sensor}"),
            || rig.pty.write_line(&reading(sensor, 45.0)),
            |t| {
                let proxy = rig.proxy.as_ref().unwrap(); // start_proxied
                proxy.try_wait(t, |traffic| {
                    dedup_alerts(&traffic.held_alerts())
                        .into_iter()
                        .find(|v| v["sensor"] == sensor)
                })
            },
        );
    }
    let mut held = dedup_alerts(&rig.proxy().traffic().held_alerts());
    held.sort_by_key(seq);
    assert_eq!(held.len(), 3, "{held:#?}");
    assert!(
        held.windows(2).all(|w| seq(&w[1]) == seq(&w[0]) + 1),
        "{held:#?}"
    );
    (rig, held)
}

/// After a restart the gateway delivers exactly the stored alerts, same ids,
/// in seq order, and the seq goes on from there.
fn assert_delivered_after_restart(rig: &mut SerialRig, held: &[Value]) {
    let want: Vec<&Value> = held.iter().map(|v| &v["id"]).collect();
    let got = rig
        .sub
        .wait_until(WAIT, "the stored alerts after the restart", |msgs| {
            let a = dedup_alerts(msgs);
            (a.len() >= held.len()).then_some(a)
        });
    let ids: Vec<&Value> = got.iter().map(|v| &v["id"]).collect();
    assert_eq!(
        ids, want,
        "stored alerts must arrive with their ids, in seq order"
    );
    for (g, h) in got.iter().zip(held) {
        assert_eq!(g, h, "a redelivered alert must be the same alert");
    }
    let last = seq(held.last().unwrap());
    let m = rig.alert(&reading("k4", 45.0), "k4", "firing");
    let k4 = m.json();
    assert_eq!(seq(&k4), last + 1, "seq goes on across restarts");
    assert_eq!(
        db_part(&k4),
        db_part(&held[0]),
        "same database, same id prefix"
    );
}

/// Alerts published but never acknowledged, then the gateway stopped by
/// `stop`: they were in the outbox, and after a restart they arrive.
fn stored_alerts_survive(stop: impl FnOnce(&mut SerialRig)) {
    let (mut rig, held) = gateway_with_unacked_alerts();
    rig.sub.barrier("outpost/test-gw/alerts/barrier");
    assert!(
        dedup_alerts(rig.sub.messages()).is_empty(),
        "the proxy let an alert through"
    );
    stop(&mut rig);
    rig.proxy().hold_publishes(false);
    rig.gw.restart();
    assert_delivered_after_restart(&mut rig, &held);
}

#[test]
fn stored_alerts_survive_sigterm_while_upstream_is_down() {
    stored_alerts_survive(|rig| {
        rig.up.stop();
        rig.gw.sigterm();
        let st = rig.gw.wait_exit(Duration::from_secs(12));
        assert_eq!(
            st.code(),
            Some(0),
            "SIGTERM exits 0 with upstream down ({st})"
        );
        rig.up.start_again();
    });
}

#[test]
fn stored_alerts_survive_kill_9() {
    stored_alerts_survive(|rig| rig.gw.kill9());
}

/// A broker whose CONNACK takes 1.5 s to arrive (a cellular link, a slow
/// TLS handshake) is still reached: the gateway must not abandon its
/// connection attempt while it is under way.
#[test]
fn upstream_with_a_slow_handshake_is_still_reached() {
    let mut rig = SerialRig::start_proxied(|p| p.handshake_latency(Duration::from_millis(1500)));
    rig.alert(&reading("slow", 45.0), "slow", "firing");
}

/// Where `key` is in `text`: (line, column), both from 1.
fn position_of(text: &str, key: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        if let Some(col) = line.find(key) {
            return (i + 1, col + 1);
        }
    }
    panic!("{key} not in the text");
}

/// The `FILE:LINE:COL: message` line for `file` whose message names `key`.
fn error_line_for(output: &str, file: &str, key: &str) -> (usize, usize, String) {
    for line in output.lines() {
        let Some(at) = line.find(&format!("{file}:")) else {
            continue;
        };
        let mut parts = line[at + file.len() + 1..].splitn(3, ':');
        let (Some(l), Some(c), Some(msg)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(l), Ok(c)) = (l.parse::<usize>(), c.parse::<usize>()) else {
            continue;
        };
        if msg.contains(key) {
            return (l, c, msg.trim().to_string());
        }
    }
    panic!("no `{file}:LINE:COL: ...{key}...` line in the output:\n{output}");
}

#[test]
fn check_reports_every_mistyped_key_as_file_line_col() {
    let dir = tempdir();
    let config = r#"[gateway]
id = "test-gw"
state_dir = "state"
rules = ["rules.toml"]

[upstream]
url = "mqtt://127.0.0.1:1883"

[http]
listen = ""

[[serial]]
name = "bench"
path = "/dev/ttyOUTPOST-missing"
  baud_rate = 115200
format = "json"
"#;
    let rules = r#"[[rule]]
id = "hot"
sensor = "*"
metric = "temperature"
abvoe = 30.0
severity = "critical"
"#;
    let out = check(dir.path(), config, rules);
    let all = out.all();
    assert_eq!(
        out.code,
        Some(2),
        "exit 2 for an invalid config; output:\n{all}"
    );

    // `baud_rate` is indented: the column is where the key starts, not 1.
    for (file, text, key) in [
        ("outpost.toml", config, "baud_rate"),
        ("rules.toml", rules, "abvoe"),
    ] {
        let want = position_of(text, key);
        let (l, c, msg) = error_line_for(&all, file, key);
        assert_eq!((l, c), want, "wrong place for {key}: {msg}\n{all}");
    }
    assert_eq!(
        position_of(config, "baud_rate").1,
        3,
        "the case is indented"
    );
}

#[test]
fn check_accepts_a_valid_config_and_prints_a_summary() {
    let dir = tempdir();
    let cfg = Config::new("mqtt://127.0.0.1:18830")
        .serial(
            "bench",
            std::path::Path::new("/dev/ttyOUTPOST-missing"),
            "json",
            "bench",
        )
        .mqtt("local", "mqtt://127.0.0.1:18831", &["sensors/+/reading"]);
    let out = check(dir.path(), &cfg.toml(), HOT_RULE);
    let all = out.all();
    assert_eq!(
        out.code,
        Some(0),
        "a valid config (with a device not plugged in yet) passes; output:\n{all}"
    );
    for name in ["bench", "local", "127.0.0.1:18830"] {
        assert!(
            out.stdout.contains(name),
            "the summary does not name {name}:\n{all}"
        );
    }
    // The rules: by id, or counted ("rules 1 in rules.toml").
    let rules_shown = out.stdout.contains("hot")
        || out
            .stdout
            .lines()
            .any(|l| l.contains("rule") && l.split_whitespace().any(|w| w == "1"));
    assert!(rules_shown, "the summary does not show the rules:\n{all}");
}
