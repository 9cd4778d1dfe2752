//! Every rule kind through the real binary with real Mosquitto brokers,
//! and the rule state across restarts and SIGHUP reloads.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

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

fn is_alert(m: &Msg, rule: &str, sensor: &str, state: &str) -> bool {
    m.is_alert()
        && serde_json::from_slice::<Value>(&m.payload)
            .is_ok_and(|v| v["rule"] == rule && v["sensor"] == sensor && v["state"] == state)
}

fn wait_alert(sub: &mut Subscriber, rule: &str, sensor: &str, state: &str) -> Value {
    let what = format!("{rule} {sensor} {state}");
    sub.wait_for(WAIT, &what, |m| is_alert(m, rule, sensor, state))
        .json()
}

/// Sends a reading of `t` for `sensor` until it fires: the gateway's MQTT
/// source is subscribed from then on.
fn prime(rig: &mut MqttRig, sensor: &str, value: f64) {
    let reading = json!({ "sensor": sensor, "t": value }).to_string();
    rig.alert("sensors/x/reading", &reading, sensor, "firing");
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
    let mut rig = MqttRig::start(KINDS);
    let mut fan = Subscriber::connect(rig.local.port(), "fan/set");
    prime(&mut rig, "probe", 1.0);

    // `for`: pending first, firing only after it held for 1 s.
    send(&rig.local, "a", "t", 31.0);
    let a = wait_alert(&mut rig.sub, "above-for", "a", "firing");
    let held = parse_ts_millis_z(a["ts"].as_str().unwrap()).unwrap()
        - parse_ts_millis_z(a["since"].as_str().unwrap()).unwrap();
    assert!(held >= time::Duration::seconds(1), "fired after {held}");

    send(&rig.local, "b", "t", 4.0);
    wait_alert(&mut rig.sub, "below", "b", "firing");
    send(&rig.local, "b", "t", 5.5);
    send(&rig.local, "b", "t", 6.0);
    wait_alert(&mut rig.sub, "below", "b", "resolved");

    send(&rig.local, "c", "t", 25.0);
    let c = wait_alert(&mut rig.sub, "band", "c", "firing");
    assert_eq!(c["threshold"], 20.0);

    // A rate needs samples spanning half its window (0.5 s here): a ramp,
    // one step up every 100 ms or so, fires once enough of it has been
    // seen, however late its readings arrive.
    let mut step = 0.0;
    let d = retry_until(
        WAIT,
        Duration::from_millis(100),
        "the rate alert",
        || {
            step += 1.0;
            send(&rig.local, "d", "t", step);
        },
        |t| {
            rig.sub
                .try_wait_for(t, |m| is_alert(m, "rate", "d", "firing"))
        },
    )
    .json();
    assert!(d["value"].as_f64().unwrap() > 60.0, "{d}");

    // The average, not the single value: 20 then 0 averages 10 (not below).
    send(&rig.local, "e", "t", 20.0);
    send(&rig.local, "e", "t", 0.0);
    send(&rig.local, "e", "t", 0.0);
    let e = wait_alert(&mut rig.sub, "avg", "e", "firing");
    assert!(
        (e["value"].as_f64().unwrap() - 20.0 / 3.0).abs() < 1e-9,
        "{e}"
    );
    assert_eq!(alerts_of(&mut rig.sub, "avg", "e").len(), 1);

    // A literal sensor never heard from fires after its silence; a reading resolves it.
    let s = wait_alert(&mut rig.sub, "silent", "pump", "firing");
    assert_eq!(s["severity"], "critical");
    send(&rig.local, "pump", "bar", 2.0);
    wait_alert(&mut rig.sub, "silent", "pump", "resolved");

    send(&rig.local, "f", "t", 35.0);
    poll_until(WAIT, "two firing alerts for the repeat rule", || {
        let fired = alerts_of(&mut rig.sub, "repeat", "f");
        (fired.len() >= 2).then_some(fired)
    });
    let fired = alerts_of(&mut rig.sub, "repeat", "f");
    assert!(fired.iter().all(|a| a["state"] == "firing"));
    assert_ne!(
        fired[0]["id"], fired[1]["id"],
        "a repeat is a new alert with its own id"
    );

    // A local action on the local broker, on firing and on resolving.
    send(&rig.local, "g", "t", 31.0);
    fan.wait_for(WAIT, "fan ON", |m| m.text() == r#"{"state":"ON"}"#);
    send(&rig.local, "g", "t", 24.0);
    fan.wait_for(WAIT, "fan OFF", |m| m.text() == r#"{"state":"OFF"}"#);
    wait_alert(&mut rig.sub, "fan", "g", "resolved");
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
    let mut rig = MqttRig::start(TWO_RULES);
    prime(&mut rig, "room", 35.0);
    let fired = wait_alert(&mut rig.sub, "hot", "room", "firing");

    // kill -9: the state went to the outbox in the same batch as the alert.
    rig.gw.kill9();
    rig.gw.restart();
    // Still hot after the restart: no second firing alert.
    retry_until(
        WAIT,
        Duration::from_millis(300),
        "the restarted gateway reads again (a cold alert on another sensor)",
        || {
            send(&rig.local, "room", "t", 36.0);
            send(&rig.local, "probe", "t", -5.0);
        },
        |t| rig.sub.try_wait_for(t, |m| alert_is(m, "probe", "firing")),
    );
    send(&rig.local, "room", "t", 27.0);
    let resolved = wait_alert(&mut rig.sub, "hot", "room", "resolved");
    assert_eq!(
        resolved["since"], fired["since"],
        "the resolution belongs to the same episode"
    );
    let hot: Vec<Value> = alerts_of(&mut rig.sub, "hot", "room");
    let states: Vec<&str> = hot.iter().map(|a| a["state"].as_str().unwrap()).collect();
    assert_eq!(
        states,
        vec!["firing", "resolved"],
        "no re-fire after the restart"
    );
}

#[test]
fn sighup_keeps_unchanged_rules_resolves_removed_ones_and_refuses_a_broken_file() {
    let mut rig = MqttRig::start(TWO_RULES);
    prime(&mut rig, "h", 35.0);
    send(&rig.local, "c", "t", -3.0);
    wait_alert(&mut rig.sub, "cold", "c", "firing");

    // Remove `cold`, keep `hot` exactly as it was, add `new`.
    let reloaded = format!(
        "{}\n[[rule]]\nid = \"new\"\nsensor = \"*\"\nmetric = \"t\"\nabove = 100.0\n",
        &TWO_RULES[..TWO_RULES.find("[[rule]]\nid = \"cold\"").unwrap()]
    );
    std::fs::write(rig.dir.path().join("rules.toml"), reloaded).unwrap();
    rig.gw.sighup();
    let r = wait_alert(&mut rig.sub, "cold", "c", "resolved");
    assert_eq!(r["rule"], "cold");
    send(&rig.local, "h", "t", 101.0);
    wait_alert(&mut rig.sub, "new", "h", "firing");
    assert_eq!(
        alerts_of(&mut rig.sub, "hot", "h").len(),
        1,
        "the unchanged rule kept its firing state"
    );

    // An action on a broker that is not configured is refused the same way.
    std::fs::write(
        rig.dir.path().join("rules.toml"),
        "[[rule]]\nid = \"fan\"\nsensor = \"*\"\nmetric = \"t\"\nabove = 30.0\n\
         [[rule.actions]]\nbroker = \"nowhere\"\ntopic = \"fan/set\"\non_firing = \"ON\"\n",
    )
    .unwrap();
    rig.gw.sighup();
    poll_until(
        WAIT,
        "the refused reload of an unknown broker in the log",
        || {
            rig.gw
                .log()
                .contains("rules.toml:2:6: rule `fan` has an action on broker `nowhere`")
                .then_some(())
        },
    );

    // A broken file is refused whole, with its place, and the old rules run on.
    std::fs::write(
        rig.dir.path().join("rules.toml"),
        "[[rule]]\nid = \"hot\"\nsensor = \"*\"\nmetric = \"t\"\nabvoe = 30.0\n",
    )
    .unwrap();
    rig.gw.sighup();
    poll_until(WAIT, "the refused reload in the log", || {
        rig.gw
            .log()
            .contains("rules.toml:5:1: unknown field `abvoe`")
            .then_some(())
    });
    send(&rig.local, "h", "t", 20.0);
    wait_alert(&mut rig.sub, "hot", "h", "resolved");
    wait_alert(&mut rig.sub, "new", "h", "resolved");
}
