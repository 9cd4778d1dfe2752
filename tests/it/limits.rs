//! The rules' limits (`[rules]`) under a flood of sensor ids: a local MQTT
//! source whose sensor id is a topic level, and topics made up at random.

use std::thread;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

use crate::harness::*;

/// Sensor ids in the flood: more than twice the default `max_pairs`
/// (20,000) for each of the two rules that keep a pair per sensor.
const FLOOD: u64 = 52_000;
/// Published before waiting for the gateway to have read them all: well
/// under Mosquitto's default of 1,000 queued QoS 1 messages per client (the
/// test broker queues without a limit), so none would be dropped on the
/// way by a broker as configured in the field.
const CHUNK: u64 = 500;

/// A silence watch and a 1 h average on every sensor (a pair each, never
/// firing at the flood's values), and the threshold the real sensor
/// crosses.
const RULES: &str = r#"
[[rule]]
id = "quiet"
sensor = "*"
metric = "temperature"
silent_for = "1h"

[[rule]]
id = "avg"
sensor = "*"
metric = "temperature"
above = 1000.0
aggregate = "avg"
window = "1h"

[[rule]]
id = "hot"
sensor = "*"
metric = "temperature"
above = 30.0
"#;

fn metric(port: u16, series: &str) -> f64 {
    http::sample(&http::get(port, "/metrics").body, series).unwrap_or(0.0)
}

/// One connection publishing `{"temperature":20}` on
/// `sensors/<random>/reading`, QoS 1, `CHUNK` at a time: each chunk waits
/// until the gateway has read everything sent so far (`readings` says how
/// many it has), so the local broker never has to drop any.
fn flood(broker: u16, n: u64, readings: impl Fn() -> u64) {
    let mut opts = MqttOptions::new(format!("flood-{}", unique_suffix()), "127.0.0.1", broker);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut conn) = Client::new(opts, CHUNK as usize);
    let pump = thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(Event::Incoming(Packet::Disconnect)) => break,
                Ok(_) => {}
            }
        }
    });
    let start = readings();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut x = (u64::from(std::process::id()) << 32 | u64::from(nanos)) | 1;
    let mut sent = 0;
    while sent < n {
        for _ in 0..CHUNK.min(n - sent) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let topic = format!("sensors/{x:016x}/reading");
            client
                .publish(topic, QoS::AtLeastOnce, false, &b"{\"temperature\":20}"[..])
                .expect("the publisher's queue is open");
            sent += 1;
        }
        poll_until(
            WAIT,
            &format!("the gateway to read {sent} flood readings"),
            || (readings() >= start + sent).then_some(()),
        );
    }
    let _ = client.disconnect();
    let _ = pump.join();
}

/// 52,000 made-up sensor ids, each wanting two pairs, against the default
/// `max_pairs` of 20,000: the engine stays at its limit, evicting the
/// longest idle pairs; the evictions are counted in `/metrics`, `outpost
/// status` and `{prefix}/health` and logged; memory stays bounded; a real
/// sensor published after the flood still alerts, and so does one after a
/// restart, which brings back no more than the limit.
#[test]
fn a_flood_of_sensor_ids_is_evicted_counted_and_logged_and_a_real_sensor_still_alerts() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let local = Mosquitto::start();
    let mut alerts = Subscriber::connect(up.port(), ALERTS);
    let mut health = Subscriber::connect(up.port(), "outpost/test-gw/health");
    let mut cfg = Config::new(&up.url());
    cfg.mqtt.push(format!(
        "[[mqtt]]\nname = \"local\"\nurl = \"{}\"\ntopics = [\"sensors/+/reading\"]\n\
         qos = 1\nformat = \"json\"\nsensor = \"{{+}}\"\n",
        local.url()
    ));
    let mut gw = Launch::default()
        .rust_log("info")
        .http()
        .start(dir.path(), &cfg.toml(), RULES);
    let port = gw.http_port();
    let readings = || {
        metric(
            port,
            r#"outpost_source_readings_total{source="local",kind="mqtt"}"#,
        ) as u64
    };

    // A first sensor proves the source reads; memory from there on.
    alerts.publish_until_alert(
        local.port(),
        "sensors/first/reading",
        "{\"temperature\":31}",
        "first",
        "firing",
    );
    let pid = gw.pid();
    let rss_before = status_kib(pid, "VmRSS:");

    let t0 = Instant::now();
    flood(local.port(), FLOOD, readings);
    let took = t0.elapsed();

    let pairs = metric(port, "outpost_rule_pairs");
    let evicted = metric(port, "outpost_rule_pairs_evicted_total");
    assert_eq!(metric(port, "outpost_rule_pairs_max"), 20_000.0);
    assert!(pairs <= 20_000.0, "{pairs} pairs");
    // Two pairs per new id, 20,000 kept: the rest evicted.
    assert!(evicted >= (2 * FLOOD - 20_000) as f64, "{evicted} evicted");
    assert_eq!(metric(port, "outpost_rule_pairs_refused_total"), 0.0);
    gw.wait_log(WAIT, "rule state at max_pairs = 20000");

    // A real sensor after the flood: its alert comes through.
    let hot = alerts.publish_until_alert(
        local.port(),
        "sensors/greenhouse-t1/reading",
        "{\"temperature\":35}",
        "greenhouse-t1",
        "firing",
    );
    assert_eq!(hot.json()["rule"], "hot");

    let rss_peak = status_kib(pid, "VmHWM:");
    let rss_after = status_kib(pid, "VmRSS:");
    eprintln!(
        "{FLOOD} sensor ids in {took:?}: {pairs} pairs, {evicted} evicted; \
         RSS {rss_before} KiB before, {rss_after} KiB after, peak {rss_peak} KiB"
    );
    // The engine at its default limits holds about 10 MiB (at most ~20 MiB
    // of heap, examples/engine_memory.rs); the packaged unit's MemoryHigh
    // is 96 MiB for the whole gateway.
    assert!(
        rss_peak < rss_before + 32 * 1024,
        "peak RSS {rss_peak} KiB, {rss_before} KiB before the flood"
    );
    assert!(rss_peak < 96 * 1024, "peak RSS {rss_peak} KiB");

    // `outpost status` and the health topic tell it too.
    let out = run_outpost(
        dir.path(),
        &[
            "status",
            "--config",
            &dir.path().join("outpost.toml").to_string_lossy(),
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("state     20000 of 20000 pairs FULL ("),
        "{}",
        out.stdout
    );
    let h = health.wait_for(WAIT, "a health message with evictions", |m| {
        m.json()["rules"]["state"]["pairs_evicted"].as_u64() > Some(0)
    });
    assert_eq!(h.json()["rules"]["state"]["max_pairs"], 20_000);

    // A clean stop saves every pair with its window; a restart restores
    // them within the limit, and the next real sensor still alerts.
    gw.stop();
    gw.restart();
    gw.wait_log(WAIT, "rule state restored");
    alerts.publish_until_alert(
        local.port(),
        "sensors/greenhouse-t2/reading",
        "{\"temperature\":36}",
        "greenhouse-t2",
        "firing",
    );
    let port = gw.http_port();
    assert!(metric(port, "outpost_rule_pairs") <= 20_000.0);
    let restarted_peak = status_kib(gw.pid(), "VmHWM:");
    eprintln!("after a restart: peak RSS {restarted_peak} KiB");
    assert!(
        restarted_peak < 96 * 1024,
        "peak RSS {restarted_peak} KiB after a restart"
    );
}
