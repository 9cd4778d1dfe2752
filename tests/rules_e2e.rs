//! Every rule kind through the real binary with real Mosquitto brokers,
//! and the rule state across restarts and SIGHUP reloads.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const ALERTS: &str = "outpost/test-gw/alerts/#";

fn send(local: &Mosquitto, sensor: &str, metric: &str, value: f64) {
    publish(
        local.port(),
        "sensors/x/reading",
        &json!({ "sensor": sensor, metric: value }).to_string(),
    );
}

fn alerts_of(sub: &mut Subscriber, rule: &str, sensor: &str) -> Vec<Value> {
    dedup_alerts(sub.messages())
        .into_iter()
        .filter(|a| a["rule"] == rule && a["sensor"] == sensor)
        .collect()
}

fn wait_alert(sub: &mut Subscriber, rule: &str, sensor: &str, state: &str) -> Value {
    let what = format!("{rule} {sensor} {state}");
    sub.wait_for(WAIT, &what, |m| {
        m.topic.contains("/alerts/")
            && serde_json::from_slice::<Value>(&m.payload)
                .map(|v| v["rule"] == rule && v["sensor"] == sensor && v["state"] == state)
                .unwrap_or(false)
    })
    .json()
}

/// Publishes until the gateway's MQTT source is subscribed (the first alert
/// of `rule` for `sensor` arrives).
fn prime(local: &Mosquitto, sub: &mut Subscriber, sensor: &str, value: f64) {
    retry_until(
        WAIT,
        Duration::from_millis(300),
        "the gateway's MQTT source is subscribed",
        || send(local, sensor, "t", value),
        |t| {
            sub.try_wait_for(t, |m| {
                m.topic.contains("/alerts/") && m.json()["sensor"] == sensor
            })
        },
    );
}

const KINDS: &str = r#"
[[rule]]
id = "probe"
sensor = "probe"
metric = "t"
above = 0.0

[[rule]]
id = "above-for"
sensor = "a"
metric = "t"
above = 30.0
clear = 28.0
for = "1s"

[[rule]]
id = "below"
sensor = "b"
metric = "t"
below = 5.0
clear = 6.0

[[rule]]
id = "band"
sensor = "c"
metric = "t"
outside = [10.0, 20.0]
clear = [11.0, 19.0]

[[rule]]
id = "rate"
sensor = "d"
metric = "t"
rate_above = 60.0
window = "1s"

[[rule]]
id = "avg"
sensor = "e"
metric = "t"
below = 10.0
aggregate = "avg"
window = "30s"

[[rule]]
id = "silent"
sensor = "pump"
metric = "bar"
silent_for = "2s"
severity = "critical"

[[rule]]
id = "repeat"
sensor = "f"
metric = "t"
above = 30.0
repeat = "1s"

[[rule]]
id = "fan"
sensor = "g"
metric = "t"
above = 30.0
clear = 25.0
[[rule.actions]]
broker = "local"
topic = "fan/set"
on_firing = '{"state":"ON"}'
on_resolved = '{"state":"OFF"}'
"#;

#[test]
fn every_rule_kind_alerts_through_the_binary() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let local = Mosquitto::start();
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let mut fan = Subscriber::connect(local.port(), "fan/set");
    let cfg = Config::new(&up.url()).mqtt("local", &local.url(), &["sensors/+/reading"]);
    let _gw = Gateway::start(dir.path(), &cfg.toml(), KINDS);
    prime(&local, &mut sub, "probe", 1.0);

    // `for`: pending first, firing only after it held for 1 s.
    send(&local, "a", "t", 31.0);
    let a = wait_alert(&mut sub, "above-for", "a", "firing");
    let held = common::parse_ts_millis_z(a["ts"].as_str().unwrap()).unwrap()
        - common::parse_ts_millis_z(a["since"].as_str().unwrap()).unwrap();
    assert!(held >= time::Duration::seconds(1), "fired after {held}");

    send(&local, "b", "t", 4.0);
    wait_alert(&mut sub, "below", "b", "firing");
    send(&local, "b", "t", 5.5);
    send(&local, "b", "t", 6.0);
    wait_alert(&mut sub, "below", "b", "resolved");

    send(&local, "c", "t", 25.0);
    let c = wait_alert(&mut sub, "band", "c", "firing");
    assert_eq!(c["threshold"], 20.0);

    // A rate needs samples spanning half its window (0.5 s here).
    send(&local, "d", "t", 0.0);
    std::thread::sleep(Duration::from_millis(600));
    send(&local, "d", "t", 10.0);
    let d = wait_alert(&mut sub, "rate", "d", "firing");
    assert!(d["value"].as_f64().unwrap() > 60.0, "{d}");

    // The average, not the single value: 20 then 0 averages 10 (not below).
    send(&local, "e", "t", 20.0);
    send(&local, "e", "t", 0.0);
    send(&local, "e", "t", 0.0);
    let e = wait_alert(&mut sub, "avg", "e", "firing");
    assert!(
        (e["value"].as_f64().unwrap() - 20.0 / 3.0).abs() < 1e-9,
        "{e}"
    );
    assert_eq!(alerts_of(&mut sub, "avg", "e").len(), 1);

    // A literal sensor never heard from fires after its silence; a reading resolves it.
    let s = wait_alert(&mut sub, "silent", "pump", "firing");
    assert_eq!(s["severity"], "critical");
    send(&local, "pump", "bar", 2.0);
    wait_alert(&mut sub, "silent", "pump", "resolved");

    send(&local, "f", "t", 35.0);
    poll_until(WAIT, "two firing alerts for the repeat rule", || {
        let fired = alerts_of(&mut sub, "repeat", "f");
        (fired.len() >= 2).then_some(fired)
    });
    let fired = alerts_of(&mut sub, "repeat", "f");
    assert!(fired.iter().all(|a| a["state"] == "firing"));
    assert_ne!(
        fired[0]["id"], fired[1]["id"],
        "a repeat is a new alert with its own id"
    );

    // A local action on the local broker, on firing and on resolving.
    send(&local, "g", "t", 31.0);
    fan.wait_for(WAIT, "fan ON", |m| m.text() == r#"{"state":"ON"}"#);
    send(&local, "g", "t", 24.0);
    fan.wait_for(WAIT, "fan OFF", |m| m.text() == r#"{"state":"OFF"}"#);
    wait_alert(&mut sub, "fan", "g", "resolved");
}

const TWO_RULES: &str = r#"
[[rule]]
id = "hot"
sensor = "*"
metric = "t"
above = 30.0
clear = 28.0

[[rule]]
id = "cold"
sensor = "*"
metric = "t"
below = 0.0
"#;

#[test]
fn a_restarted_gateway_neither_refires_nor_forgets_to_resolve() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let local = Mosquitto::start();
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let cfg = Config::new(&up.url()).mqtt("local", &local.url(), &["sensors/+/reading"]);
    let mut gw = Gateway::start(dir.path(), &cfg.toml(), TWO_RULES);
    retry_until(
        WAIT,
        Duration::from_millis(300),
        "first alert",
        || send(&local, "room", "t", 35.0),
        |t| sub.try_wait_for(t, |m| alert_is(m, "room", "firing")),
    );
    let fired = wait_alert(&mut sub, "hot", "room", "firing");

    // kill -9: the state went to the outbox in the same batch as the alert.
    gw.kill9();
    gw.restart();
    // Still hot after the restart: no second firing alert.
    retry_until(
        WAIT,
        Duration::from_millis(300),
        "the restarted gateway reads again (a cold alert on another sensor)",
        || {
            send(&local, "room", "t", 36.0);
            send(&local, "probe", "t", -5.0);
        },
        |t| sub.try_wait_for(t, |m| alert_is(m, "probe", "firing")),
    );
    send(&local, "room", "t", 27.0);
    let resolved = wait_alert(&mut sub, "hot", "room", "resolved");
    assert_eq!(
        resolved["since"], fired["since"],
        "the resolution belongs to the same episode"
    );
    let hot: Vec<Value> = alerts_of(&mut sub, "hot", "room");
    let states: Vec<&str> = hot.iter().map(|a| a["state"].as_str().unwrap()).collect();
    assert_eq!(
        states,
        vec!["firing", "resolved"],
        "no re-fire after the restart"
    );
}

#[test]
fn sighup_keeps_unchanged_rules_resolves_removed_ones_and_refuses_a_broken_file() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let local = Mosquitto::start();
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let cfg = Config::new(&up.url()).mqtt("local", &local.url(), &["sensors/+/reading"]);
    let gw = Gateway::start(dir.path(), &cfg.toml(), TWO_RULES);
    retry_until(
        WAIT,
        Duration::from_millis(300),
        "hot fires",
        || send(&local, "h", "t", 35.0),
        |t| sub.try_wait_for(t, |m| alert_is(m, "h", "firing")),
    );
    send(&local, "c", "t", -3.0);
    wait_alert(&mut sub, "cold", "c", "firing");

    // Remove `cold`, keep `hot` exactly as it was, add `new`.
    let reloaded = format!(
        "{}\n[[rule]]\nid = \"new\"\nsensor = \"*\"\nmetric = \"t\"\nabove = 100.0\n",
        &TWO_RULES[..TWO_RULES.find("[[rule]]\nid = \"cold\"").unwrap()]
    );
    std::fs::write(dir.path().join("rules.toml"), reloaded).unwrap();
    gw.sighup();
    let r = wait_alert(&mut sub, "cold", "c", "resolved");
    assert_eq!(r["rule"], "cold");
    send(&local, "h", "t", 101.0);
    wait_alert(&mut sub, "new", "h", "firing");
    assert_eq!(
        alerts_of(&mut sub, "hot", "h").len(),
        1,
        "the unchanged rule kept its firing state"
    );

    // An action on a broker that is not configured is refused the same way.
    std::fs::write(
        dir.path().join("rules.toml"),
        "[[rule]]\nid = \"fan\"\nsensor = \"*\"\nmetric = \"t\"\nabove = 30.0\n\
         [[rule.actions]]\nbroker = \"nowhere\"\ntopic = \"fan/set\"\non_firing = \"ON\"\n",
    )
    .unwrap();
    gw.sighup();
    poll_until(
        WAIT,
        "the refused reload of an unknown broker in the log",
        || {
            gw.log()
                .contains("rules.toml:2:6: rule `fan` has an action on broker `nowhere`")
                .then_some(())
        },
    );

    // A broken file is refused whole, with its place, and the old rules run on.
    std::fs::write(
        dir.path().join("rules.toml"),
        "[[rule]]\nid = \"hot\"\nsensor = \"*\"\nmetric = \"t\"\nabvoe = 30.0\n",
    )
    .unwrap();
    gw.sighup();
    poll_until(WAIT, "the refused reload in the log", || {
        gw.log()
            .contains("rules.toml:5:1: unknown field `abvoe`")
            .then_some(())
    });
    send(&local, "h", "t", 20.0);
    wait_alert(&mut sub, "hot", "h", "resolved");
    wait_alert(&mut sub, "new", "h", "resolved");
}
