//! End-to-end tests: the `outpost` binary against a real Mosquitto and
//! pseudo-terminal serial ports. See `common/mod.rs` for the harness.
//!
//! These tests need `mosquitto` and `socat` installed (`.ci/run` installs
//! them); they fail with a message saying so when they are missing.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use common::*;
use rumqttc::QoS;
use serde_json::{Value, json};

const ALERTS: &str = "outpost/test-gw/alerts/#";

/// What a test expects of one alert; the rest is checked by `check_alert`.
struct Expect<'a> {
    sensor: &'a str,
    state: &'a str,
    value: f64,
    message: &'a str,
}

/// Checks one alert message against the contract in SPEC.md ("Alerts: the
/// public contract") for the `HOT_RULE` on gateway `test-gw`, and returns
/// its payload.
fn check_alert(m: &Msg, e: &Expect) -> Value {
    let v = m.json();
    let ctx = format!("alert on {}: {}", m.topic, m.text());
    assert_eq!(
        m.topic,
        format!("outpost/test-gw/alerts/hot/{}", e.sensor),
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
    let spec: BTreeSet<&str> = [
        "id",
        "seq",
        "gateway",
        "rule",
        "sensor",
        "metric",
        "state",
        "severity",
        "value",
        "threshold",
        "ts",
        "since",
        "message",
        "labels",
    ]
    .into();
    assert_eq!(keys, spec, "payload fields differ from SPEC.md; {ctx}");

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
    assert_eq!(v["sensor"], e.sensor, "{ctx}");
    assert_eq!(v["metric"], "temperature", "{ctx}");
    assert_eq!(v["state"], e.state, "{ctx}");
    assert_eq!(v["severity"], "critical", "{ctx}");
    assert_eq!(v["value"].as_f64(), Some(e.value), "{ctx}");
    let threshold = v["threshold"]
        .as_f64()
        .unwrap_or_else(|| panic!("threshold is not a number; {ctx}"));
    if e.state == "firing" {
        assert_eq!(threshold, 30.0, "{ctx}");
    } else {
        // SPEC.md does not say whether a resolution reports the limit or
        // the clear value; either is a number of the rule.
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
    assert_eq!(v["message"], e.message, "{ctx}");
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
// The harness itself (needs no gateway)
// ---------------------------------------------------------------------------

#[test]
fn harness_subscriber_receives_what_is_published() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::connect(broker.port(), "sensors/+/reading");
    publish(broker.port(), "other/topic", "ignored");
    publish(
        broker.port(),
        "sensors/t1/reading",
        r#"{"temperature":21.5}"#,
    );
    let m = sub.wait_for(WAIT, "the reading", |m| m.topic == "sensors/t1/reading");
    assert_eq!(m.json(), json!({ "temperature": 21.5 }));
    assert_eq!(m.qos, QoS::AtLeastOnce);
    assert!(!m.retain);
    assert!(sub.messages().iter().all(|m| m.topic != "other/topic"));
}

#[test]
fn harness_subscriber_misses_nothing_across_a_broker_restart() {
    let mut broker = Mosquitto::start();
    let port = broker.port();
    let mut sub = Subscriber::connect(port, "a/#");
    publish(port, "a/1", "one");
    sub.wait_for(WAIT, "one", |m| m.text() == "one");
    broker.stop();
    assert!(!port_accepts(port));
    broker.start_again();
    assert_eq!(broker.port(), port);
    // Published before the subscriber is back: its saved session queues it.
    publish(port, "a/2", "two");
    sub.wait_for(WAIT, "two", |m| m.text() == "two");
}

#[test]
fn harness_pty_carries_lines_and_can_be_replugged() {
    use std::io::{BufRead, BufReader};
    let dir = tempdir();
    let mut pty = Pty::new(dir.path(), "tty");
    for round in 0..2 {
        let port = std::fs::File::open(pty.path()).unwrap();
        let mut lines = BufReader::new(port);
        pty.write_line(&format!("hello {round}"));
        let mut got = String::new();
        lines.read_line(&mut got).unwrap();
        assert_eq!(got, format!("hello {round}\n"));
        drop(lines);
        pty.unplug();
        assert!(!pty.path().exists());
        pty.replug();
    }
    assert!(pty.path().exists());
}

#[test]
fn harness_proxy_holds_publishes_then_forwards() {
    let broker = Mosquitto::start();
    let proxy = MqttProxy::start(broker.port());
    let mut sub = Subscriber::connect(broker.port(), "t/#");
    proxy.hold_publishes(true);
    // publish() waits for a PUBACK, which a held publish never gets; so use
    // a subscriber-side check through a raw client instead.
    let mut opts = rumqttc::MqttOptions::new("test-proxy-client", "127.0.0.1", proxy.port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(opts, 10);
    let pump = std::thread::spawn(move || for _ in conn.iter() {});
    client
        .publish("t/held", QoS::AtLeastOnce, false, b"x".to_vec())
        .unwrap();
    proxy.wait_held(WAIT, "the publish", |h| {
        h.iter().find(|m| m.topic == "t/held").cloned()
    });
    proxy.hold_publishes(false);
    publish(proxy.port(), "t/passed", "y");
    sub.wait_for(WAIT, "the forwarded publish", |m| m.topic == "t/passed");
    assert!(sub.messages().iter().all(|m| m.topic != "t/held"));
    let _ = client.disconnect();
    drop(pump);
}

// ---------------------------------------------------------------------------
// Foundation: readings in, alerts out, outbox, check, status
// ---------------------------------------------------------------------------

/// A json and a kv serial line each fire the rule, with every payload field
/// of SPEC.md; a value below `clear` resolves it with the next seq.
#[test]
fn serial_json_and_kv_lines_fire_and_resolve_alerts_upstream() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let mut json_pty = Pty::new(dir.path(), "tty-json");
    let mut kv_pty = Pty::new(dir.path(), "tty-kv");
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let cfg = Config::new(&up.url())
        .serial("bench", json_pty.path(), "json", "bench")
        .serial("shelf", kv_pty.path(), "kv", "shelf");
    let mut gw = Gateway::start(dir.path(), &cfg.toml(), HOT_RULE);
    gw.wait_open(&json_pty.device(), WAIT);
    gw.wait_open(&kv_pty.device(), WAIT);

    // Bad input is counted and dropped; it does not stop the source.
    json_pty.write_line("this is not json");
    let m = serial_until(
        &mut json_pty,
        &mut sub,
        &reading("t1", 31.5),
        "t1 firing",
        |m| alert_is(m, "t1", "firing"),
    );
    let t1 = check_alert(
        &m,
        &Expect {
            sensor: "t1",
            state: "firing",
            value: 31.5,
            message: "t1 is 31.5",
        },
    );

    let m = serial_until(
        &mut kv_pty,
        &mut sub,
        "sensor=t2 temperature=33.25 humidity=40",
        "t2 firing",
        |m| alert_is(m, "t2", "firing"),
    );
    let t2 = check_alert(
        &m,
        &Expect {
            sensor: "t2",
            state: "firing",
            value: 33.25,
            message: "t2 is 33.25",
        },
    );
    assert_eq!(seq(&t2), seq(&t1) + 1);

    // A kv line naming no sensor is the port's `sensor`; commas separate too.
    let m = serial_until(
        &mut kv_pty,
        &mut sub,
        "temperature=40.5,humidity=10",
        "shelf firing",
        |m| alert_is(m, "shelf", "firing"),
    );
    let shelf = check_alert(
        &m,
        &Expect {
            sensor: "shelf",
            state: "firing",
            value: 40.5,
            message: "shelf is 40.5",
        },
    );
    assert_eq!(seq(&shelf), seq(&t1) + 2);

    // 29 is below the limit but above `clear`: nothing; 27.5 resolves.
    json_pty.write_line(&reading("t1", 29.0));
    let m = serial_until(
        &mut json_pty,
        &mut sub,
        &reading("t1", 27.5),
        "t1 resolved",
        |m| alert_is(m, "t1", "resolved"),
    );
    let resolved = check_alert(
        &m,
        &Expect {
            sensor: "t1",
            state: "resolved",
            value: 27.5,
            message: "t1 is 27.5",
        },
    );
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

    // Once per transition, never once per reading.
    let alerts = dedup_alerts(sub.messages());
    assert_eq!(alerts.len(), 4, "exactly four alerts: {alerts:#?}");
    assert_eq!(
        sub.messages()
            .iter()
            .filter(|m| m.topic.contains("/alerts/"))
            .count(),
        4,
        "no redelivery on a healthy link"
    );

    // state_dir = "state" resolves against the config's folder, not the cwd.
    assert!(
        dir.path().join("state").is_dir(),
        "state dir not created beside the config"
    );
    assert!(
        !dir.path().join("cwd/state").exists(),
        "state dir resolved against the cwd"
    );
    gw.assert_running();
}

/// A reading on the local broker fires the rule; the sensor id comes from
/// the payload's `sensor` field, else from the topic.
#[test]
fn mqtt_source_reading_fires_alert() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let local = Mosquitto::start();
    let pty = Pty::new(dir.path(), "tty");
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let cfg = Config::new(&up.url())
        .serial("bench", pty.path(), "json", "bench")
        .mqtt("local", &local.url(), &["sensors/+/reading"]);
    let _gw = Gateway::start(dir.path(), &cfg.toml(), HOT_RULE);

    // The payload names the sensor: it wins over the topic.
    let m = retry_until(
        WAIT,
        Duration::from_millis(500),
        "an alert for t7 from the local broker",
        || publish(local.port(), "sensors/node-1/reading", &reading("t7", 32.5)),
        |t| sub.try_wait_for(t, |m| alert_is(m, "t7", "firing")),
    );
    let t7 = check_alert(
        &m,
        &Expect {
            sensor: "t7",
            state: "firing",
            value: 32.5,
            message: "t7 is 32.5",
        },
    );

    // No `sensor` field: the sensor id comes from the topic. SPEC.md leaves
    // the default template to the implementation; the whole topic
    // (`{topic}`, as in SPEC.md's example) and the level `+` matched are
    // both reasonable, anything else is not.
    let m = retry_until(
        WAIT,
        Duration::from_millis(500),
        "an alert for the sensor named by the topic",
        || {
            publish(
                local.port(),
                "sensors/room-9/reading",
                r#"{"temperature":36}"#,
            )
        },
        |t| sub.try_wait_for(t, |m| m.topic.contains("room-9")),
    );
    let sensor = m.json()["sensor"].as_str().unwrap_or_default().to_string();
    assert!(
        sensor == "sensors/room-9/reading" || sensor == "room-9",
        "sensor id from topic sensors/room-9/reading is {sensor:?}"
    );
    let v = check_alert(
        &m,
        &Expect {
            sensor: &sensor,
            state: "firing",
            value: 36.0,
            message: &format!("{sensor} is 36"),
        },
    );
    assert_eq!(seq(&v), seq(&t7) + 1);

    // A topic outside the filters is not read: it was published first, and
    // the local broker delivers one publisher's messages in order.
    publish(local.port(), "elsewhere/t8/reading", &reading("t8", 50.0));
    retry_until(
        WAIT,
        Duration::from_millis(500),
        "an alert for t9",
        || publish(local.port(), "sensors/t9/reading", &reading("t9", 50.0)),
        |t| sub.try_wait_for(t, |m| alert_is(m, "t9", "firing")),
    );
    assert!(
        !sub.messages().iter().any(|m| alert_is(m, "t8", "firing")),
        "a reading outside `topics` fired"
    );
}

/// With the upstream broker stopped the gateway keeps running and keeps the
/// alerts; when the broker is back they arrive in seq order with no gap,
/// and a new alert queues behind them.
#[test]
fn alerts_made_while_upstream_is_down_arrive_in_seq_order_when_it_is_back() {
    let dir = tempdir();
    let mut up = Mosquitto::start();
    let mut pty = Pty::new(dir.path(), "tty");
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let cfg = Config::new(&up.url()).serial("bench", pty.path(), "json", "bench");
    let mut gw = Gateway::start(dir.path(), &cfg.toml(), HOT_RULE);
    gw.wait_open(&pty.device(), WAIT);
    let warm = serial_until(
        &mut pty,
        &mut sub,
        &reading("w", 40.0),
        "warm-up alert",
        |m| alert_is(m, "w", "firing"),
    )
    .json();
    let seq0 = seq(&warm);

    up.stop();
    let script = [
        ("c1", 35.0, "firing"),
        ("c2", 36.0, "firing"),
        ("c1", 20.0, "resolved"),
        ("c3", 37.0, "firing"),
        ("c2", 21.0, "resolved"),
    ];
    for (sensor, t, _) in script {
        pty.write_line(&reading(sensor, t));
    }
    gw.assert_running_for(Duration::from_millis(1500));
    up.start_again();

    let got = sub.wait_until(WAIT, "the 5 alerts made while upstream was down", |msgs| {
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
    let m = serial_until(
        &mut pty,
        &mut sub,
        &reading("c3", 10.0),
        "c3 resolved",
        |m| alert_is(m, "c3", "resolved"),
    );
    assert_eq!(seq(&m.json()), seq0 + script.len() as u64 + 1);
    let order: Vec<u64> = dedup_alerts(sub.messages()).iter().map(seq).collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "alerts out of seq order: {order:?}"
    );
    gw.assert_running();
}

/// Starts a gateway whose alerts reach the broker through a proxy holding
/// them back, makes alerts for k1..k3 and returns them as the gateway
/// published them (so they are in its outbox, unacknowledged).
fn gateway_with_unacked_alerts(
    dir: &std::path::Path,
    up: &Mosquitto,
    proxy: &MqttProxy,
    pty: &mut Pty,
) -> (Gateway, Vec<Value>) {
    proxy.hold_publishes(true);
    let cfg = Config::new(&proxy.url()).serial("bench", pty.path(), "json", "bench");
    let mut gw = Gateway::start(dir, &cfg.toml(), HOT_RULE);
    gw.wait_open(&pty.device(), WAIT);
    for sensor in ["k1", "k2", "k3"] {
        retry_until(
            WAIT,
            Duration::from_millis(500),
            &format!("the gateway to publish an alert for {sensor}"),
            || pty.write_line(&reading(sensor, 45.0)),
            |t| {
                proxy.try_wait_held(t, |h| {
                    dedup_alerts(h).into_iter().find(|v| v["sensor"] == sensor)
                })
            },
        );
    }
    let mut held = dedup_alerts(&proxy.held());
    held.sort_by_key(seq);
    assert_eq!(held.len(), 3, "{held:#?}");
    assert!(
        held.windows(2).all(|w| seq(&w[1]) == seq(&w[0]) + 1),
        "{held:#?}"
    );
    let _ = up;
    (gw, held)
}

/// After a restart the gateway delivers exactly the stored alerts, same ids,
/// in seq order, and the seq goes on from there.
fn assert_delivered_after_restart(sub: &mut Subscriber, pty: &mut Pty, held: &[Value]) {
    let want: Vec<&Value> = held.iter().map(|v| &v["id"]).collect();
    let got = sub.wait_until(WAIT, "the stored alerts after the restart", |msgs| {
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
    let m = serial_until(pty, sub, &reading("k4", 45.0), "k4 firing", |m| {
        alert_is(m, "k4", "firing")
    });
    let k4 = m.json();
    assert_eq!(seq(&k4), last + 1, "seq goes on across restarts");
    assert_eq!(
        db_part(&k4),
        db_part(&held[0]),
        "same database, same id prefix"
    );
}

#[test]
fn stored_alerts_survive_sigterm_while_upstream_is_down() {
    let dir = tempdir();
    let mut up = Mosquitto::start();
    let proxy = MqttProxy::start(up.port());
    let mut pty = Pty::new(dir.path(), "tty");
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let (mut gw, held) = gateway_with_unacked_alerts(dir.path(), &up, &proxy, &mut pty);

    up.stop();
    gw.sigterm();
    let st = gw.wait_exit(Duration::from_secs(12));
    assert_eq!(
        st.code(),
        Some(0),
        "SIGTERM exits 0 even with upstream down ({st})"
    );

    up.start_again();
    proxy.hold_publishes(false);
    gw.restart();
    assert_delivered_after_restart(&mut sub, &mut pty, &held);
}

#[test]
fn stored_alerts_survive_kill_9() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let proxy = MqttProxy::start(up.port());
    let mut pty = Pty::new(dir.path(), "tty");
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let (mut gw, held) = gateway_with_unacked_alerts(dir.path(), &up, &proxy, &mut pty);
    assert!(
        dedup_alerts(sub.messages()).is_empty(),
        "the proxy let an alert through"
    );

    gw.kill9();
    proxy.hold_publishes(false);
    gw.restart();
    assert_delivered_after_restart(&mut sub, &mut pty, &held);
}

/// A broker whose CONNACK takes 1.5 s to arrive (a cellular link, a slow
/// TLS handshake) is still reached: the gateway must not abandon its
/// connection attempt while it is under way.
#[test]
fn upstream_with_a_slow_handshake_is_still_reached() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let proxy = MqttProxy::start(up.port());
    proxy.set_handshake_latency(Duration::from_millis(1500));
    let mut pty = Pty::new(dir.path(), "tty");
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let cfg = Config::new(&proxy.url()).serial("bench", pty.path(), "json", "bench");
    let mut gw = Gateway::start(dir.path(), &cfg.toml(), HOT_RULE);
    gw.wait_open(&pty.device(), WAIT);
    serial_until(
        &mut pty,
        &mut sub,
        &reading("slow", 45.0),
        "an alert over the slow link",
        |m| alert_is(m, "slow", "firing"),
    );
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
    std::fs::write(dir.path().join("outpost.toml"), config).unwrap();
    std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
    let cfg_path = dir.path().join("outpost.toml");
    let out = run_outpost(
        dir.path(),
        &["check", "--config", cfg_path.to_str().unwrap()],
    );
    let all = out.all();
    assert_eq!(
        out.code,
        Some(2),
        "exit 2 for an invalid config; output:\n{all}"
    );

    let (line, _) = position_of(config, "baud_rate");
    let (l, c, msg) = error_line_for(&all, "outpost.toml", "baud_rate");
    assert_eq!(l, line, "wrong line for baud_rate: {msg}\n{all}");
    assert!(c >= 1, "{all}");

    let (line, _) = position_of(rules, "abvoe");
    let (l, c, msg) = error_line_for(&all, "rules.toml", "abvoe");
    assert_eq!(l, line, "wrong line for abvoe: {msg}\n{all}");
    assert!(c >= 1, "{all}");
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
    std::fs::write(dir.path().join("outpost.toml"), cfg.toml()).unwrap();
    std::fs::write(dir.path().join("rules.toml"), HOT_RULE).unwrap();
    let cfg_path = dir.path().join("outpost.toml");
    let out = run_outpost(
        dir.path(),
        &["check", "--config", cfg_path.to_str().unwrap()],
    );
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

#[test]
fn status_topic_is_retained_online_then_offline_after_sigterm() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let pty = Pty::new(dir.path(), "tty");
    let status = "outpost/test-gw/status";
    let mut sub = Subscriber::connect(up.port(), status);
    let cfg = Config::new(&up.url()).serial("bench", pty.path(), "json", "bench");
    let mut gw = Gateway::start(dir.path(), &cfg.toml(), HOT_RULE);

    sub.wait_for(WAIT, "online", |m| m.text() == "online");
    // A subscriber arriving later gets it as a retained message.
    let mut late = Subscriber::connect(up.port(), status);
    let m = late.wait_for(WAIT, "retained status", |m| m.retain);
    assert_eq!(m.text(), "online");

    gw.sigterm();
    let st = gw.wait_exit(Duration::from_secs(12));
    assert_eq!(st.code(), Some(0), "SIGTERM exits 0 ({st})");
    sub.wait_for(WAIT, "offline", |m| m.text() == "offline");
    let mut later = Subscriber::connect(up.port(), status);
    let m = later.wait_for(WAIT, "retained status", |m| m.retain);
    assert_eq!(m.text(), "offline");
    let texts: Vec<String> = sub.messages().iter().map(Msg::text).collect();
    assert_eq!(
        texts.last().map(String::as_str),
        Some("offline"),
        "{texts:?}"
    );
}
