//! Sources under real-world abuse, through the real binary: hostile serial
//! input, adapters unplugged and plugged back, devices that appear late,
//! silent ports, and a local broker that restarts or is not there.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::harness::*;

fn serial_config(up: &Mosquitto, pty: &Pty) -> String {
    Config::new(&up.url())
        .serial("bench", pty.path(), "json", "bench")
        .toml()
}

/// The errors a source counted, by kind, from `/metrics`.
fn source_errors(port: u16, source: &str) -> BTreeMap<String, u64> {
    let prefix =
        format!("outpost_source_errors_total{{source=\"{source}\",kind=\"serial\",error=\"");
    http::get(port, "/metrics")
        .body
        .lines()
        .filter_map(|l| {
            let (kind, value) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
            Some((kind.to_string(), value.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// Every kind of bad line a serial device can send is counted by kind and
/// dropped, and the next good line on each port still alerts. A 16 MiB line
/// with no end costs no more memory than a few buffers: the splitter drops
/// what is over `max_line` as it comes, it does not hold the line.
#[test]
fn hostile_serial_input_is_counted_and_dropped_and_the_next_good_line_still_alerts() {
    let mut rig = SerialRig::start_with_kv(Launch::default().http());
    let port = rig.gw.http_port();
    // First alerts prove the ports are read, and give a baseline for memory.
    rig.alert(&reading("warm-json", 35.0), "warm-json", "firing");
    rig.alert_kv("sensor=warm-kv temperature=35", "warm-kv", "firing");
    let peak_before = status_kib(rig.gw.pid(), "VmHWM:");

    // 16 MiB with no line end, in pieces, as a babbling device sends it.
    let junk = vec![b'x'; 64 * 1024];
    for _ in 0..256 {
        rig.pty.write_raw(&junk);
    }
    rig.pty.write_raw(b"\n");
    rig.pty
        .write_raw(b"\xff\xfe{\"sensor\":\"bad\",\"temperature\":99}\n");
    rig.pty
        .write_line("{\"sensor\":\"inf\",\"temperature\":1e999}"); // out of range
    rig.pty
        .write_line("{\"sensor\":\"str\",\"temperature\":\"hot\"}"); // no number
    rig.pty
        .write_line("[{\"sensor\":\"arr\",\"temperature\":99}]");
    rig.pty.write_raw(b"\0\0\0\n");
    rig.pty.write_line("sensor=kv temperature=99"); // kv on a json port
    // Non-finite values written as the kv format allows them.
    for v in ["NaN", "inf", "-infinity", "1e999"] {
        rig.kv()
            .write_line(&format!("sensor=nonfinite temperature={v}"));
    }
    rig.alert(&reading("good", 31.0), "good", "firing");
    rig.alert_kv("sensor=good-kv temperature=31", "good-kv", "firing");

    let alerts = dedup_alerts(rig.sub.messages());
    let sensors: Vec<&str> = alerts.iter().filter_map(|a| a["sensor"].as_str()).collect();
    assert_eq!(
        sensors,
        vec!["warm-json", "warm-kv", "good", "good-kv"],
        "no bad line may reach the rules"
    );
    let json_errors = source_errors(port, "bench");
    let kv_errors = source_errors(port, "shelf");
    eprintln!("json errors {json_errors:?}, kv errors {kv_errors:?}");
    // Each line counted once, by what is wrong with it (1e999, the NULs
    // and the kv line are syntax errors to a JSON port).
    let counts = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    };
    assert_eq!(
        json_errors,
        counts(&[
            ("no_metrics", 1),
            ("not_an_object", 1),
            ("not_utf8", 1),
            ("syntax", 3),
            ("too_long", 1),
        ])
    );
    assert_eq!(kv_errors, counts(&[("non_finite", 4)]));
    let peak_after = status_kib(rig.gw.pid(), "VmHWM:");
    eprintln!("peak RSS {peak_before} KiB before the 16 MiB line, {peak_after} KiB after");
    assert!(
        peak_after < peak_before + 4 * 1024,
        "peak memory grew from {peak_before} KiB to {peak_after} KiB on a 16 MiB line"
    );
    rig.gw.assert_running();
}

#[test]
fn an_unplugged_adapter_is_reopened_at_the_same_path_without_spinning() {
    let mut rig = SerialRig::start();
    rig.alert(&reading("before", 31.0), "before", "firing");

    rig.pty.unplug();
    poll_until(WAIT, "the gateway notices the unplug", || {
        rig.gw.log().contains("reopening").then_some(())
    });
    // Unplugged for 3 s: the gateway retries with backoff, it does not spin.
    let cpu0 = cpu_time(rig.gw.pid());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_time(rig.gw.pid()) - cpu0;
    let share = used.as_secs_f64() / t0.elapsed().as_secs_f64();
    assert!(share < 0.10, "{:.0}% CPU while unplugged", share * 100.0);
    rig.gw.assert_running();

    rig.pty.replug();
    rig.gw.wait_open(&rig.pty.device(), WAIT);
    rig.alert(&reading("after", 31.0), "after", "firing");
}

#[test]
fn a_device_missing_at_start_is_opened_when_it_appears() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let mut pty = Pty::new(dir.path(), "ttyACM");
    pty.unplug();
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let mut gw = Gateway::start(dir.path(), &serial_config(&up, &pty), HOT_RULE);
    poll_until(WAIT, "the gateway reports the missing port", || {
        gw.log().contains("cannot open serial port").then_some(())
    });
    // It keeps trying (and keeps running) while the device is missing.
    gw.wait_log(WAIT, "serial port still unavailable");
    pty.replug();
    gw.wait_open(&pty.device(), WAIT);
    pty.write_until_alert(&mut sub, &reading("late", 31.0), "late", "firing");
}

#[test]
fn a_port_silent_past_reopen_after_silence_is_reopened() {
    let mut rig = SerialRig::start_with(Launch::default(), |mut c| {
        c.serial[0].push_str("reopen_after_silence = \"1s\"\n");
        c
    });
    poll_until(WAIT, "a reopen after silence", || {
        rig.gw.log().contains("silent too long").then_some(())
    });
    rig.alert(&reading("quiet", 31.0), "quiet", "firing");
}

#[test]
fn an_mqtt_source_resubscribes_after_its_broker_restarts() {
    let mut rig = MqttRig::start(HOT_RULE);
    rig.alert("sensors/a/reading", &reading("a", 31.0), "a", "firing");
    rig.local.stop();
    rig.local.start_again();
    rig.alert("sensors/b/reading", &reading("b", 31.0), "b", "firing");
}

#[test]
fn shared_subscriptions_deliver_with_the_plain_topic() {
    let mut rig = MqttRig::start_with(HOT_RULE, |mut c| {
        c.mqtt[0] = c.mqtt[0].replace("sensors/+/reading", "$share/outpost/tele/+/SENSOR")
            + "sensor = \"{+}\"\n";
        c
    });
    let payload = r#"{"temperature":31.5}"#;
    rig.alert("tele/kitchen/SENSOR", payload, "kitchen", "firing");
}

/// A local broker that is not there (connections refused) is retried with
/// growing delays, not at a fixed rate (coming back is the restart test's).
#[test]
fn an_unreachable_mqtt_source_is_retried_with_backoff() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let local = Mosquitto::start();
    let proxy = Proxy::start(local.port());
    proxy.refuse(true);
    let cfg = Config::new(&up.url()).mqtt("local", &proxy.url(), &["sensors/+/reading"]);
    let mut gw = Gateway::start(dir.path(), &cfg.toml(), HOT_RULE);
    let gaps = proxy.attempt_gaps(5, Duration::from_secs(20));
    assert_backs_off(&gaps);
    gw.assert_running();
}
