//! Sources under real-world abuse, through the real binary: hostile serial
//! input, adapters unplugged and plugged back, devices that appear late,
//! silent ports, and a local broker that restarts.

mod common;

use std::time::{Duration, Instant};

use common::*;

const ALERTS: &str = "outpost/test-gw/alerts/#";

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// CPU time (user + system) a process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn serial_config(up: &Mosquitto, pty: &Pty, extra: &str) -> String {
    let mut cfg = Config::new(&up.url())
        .serial("bench", pty.path(), "json", "bench")
        .toml();
    cfg.push_str(extra);
    cfg
}

#[test]
fn hostile_serial_input_is_dropped_and_the_next_good_line_still_alerts() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let mut pty = Pty::new(dir.path(), "tty");
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let mut gw = Gateway::start(dir.path(), &serial_config(&up, &pty, ""), HOT_RULE);
    gw.wait_open(&pty.device(), WAIT);
    // A first alert proves the port is read, and gives a baseline for memory.
    serial_until(
        &mut pty,
        &mut sub,
        &reading("warmup", 35.0),
        "warm-up alert",
        |m| alert_is(m, "warmup", "firing"),
    );
    let rss_before = rss_kib(gw.pid());

    // 1 MiB with no line end, in pieces, as a babbling device would send it.
    let junk = vec![b'x'; 64 * 1024];
    for _ in 0..16 {
        pty.write_raw(&junk);
    }
    pty.write_raw(b"\n");
    pty.write_raw(b"\xff\xfe{\"sensor\":\"bad\",\"temperature\":99}\n"); // not UTF-8
    pty.write_line("{\"sensor\":\"nan\",\"temperature\":NaN}");
    pty.write_line("{\"sensor\":\"inf\",\"temperature\":1e999}");
    pty.write_line("{\"sensor\":\"str\",\"temperature\":\"hot\"}"); // wrong type: no metric
    pty.write_line("[{\"sensor\":\"arr\",\"temperature\":99}]");
    pty.write_line("");
    pty.write_raw(b"\r\n\r\n\0\0\0\n");
    pty.write_line("sensor=kv temperature=99"); // kv on a json port
    serial_until(
        &mut pty,
        &mut sub,
        &reading("good", 31.0),
        "the good line's alert",
        |m| alert_is(m, "good", "firing"),
    );

    let alerts = dedup_alerts(sub.messages());
    let sensors: Vec<&str> = alerts.iter().filter_map(|a| a["sensor"].as_str()).collect();
    assert_eq!(
        sensors,
        vec!["warmup", "good"],
        "no bad line may reach the rules"
    );
    let rss_after = rss_kib(gw.pid());
    assert!(
        rss_after < rss_before + 4 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB on a 1 MiB line"
    );
    let log = gw.log();
    assert!(log.contains("bad input dropped"), "{}", tail(&log, 40));
    assert!(
        log.contains("too_long"),
        "the overlong line is counted as such"
    );
    gw.assert_running();
}

#[test]
fn an_unplugged_adapter_is_reopened_at_the_same_path_without_spinning() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let mut pty = Pty::new(dir.path(), "ttyUSB");
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let mut gw = Gateway::start(dir.path(), &serial_config(&up, &pty, ""), HOT_RULE);
    gw.wait_open(&pty.device(), WAIT);
    serial_until(
        &mut pty,
        &mut sub,
        &reading("before", 31.0),
        "alert before unplug",
        |m| alert_is(m, "before", "firing"),
    );

    pty.unplug();
    poll_until(WAIT, "the gateway notices the unplug", || {
        gw.log().contains("reopening").then_some(())
    });
    // Unplugged for 3 s: the gateway retries with backoff, it does not spin.
    let cpu0 = cpu_time(gw.pid());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_time(gw.pid()) - cpu0;
    let share = used.as_secs_f64() / t0.elapsed().as_secs_f64();
    assert!(share < 0.10, "{:.0}% CPU while unplugged", share * 100.0);
    gw.assert_running();

    pty.replug();
    gw.wait_open(&pty.device(), WAIT);
    serial_until(
        &mut pty,
        &mut sub,
        &reading("after", 31.0),
        "alert after replug",
        |m| alert_is(m, "after", "firing"),
    );
}

#[test]
fn a_device_missing_at_start_is_opened_when_it_appears() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let mut pty = Pty::new(dir.path(), "ttyACM");
    pty.unplug();
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let mut gw = Gateway::start(dir.path(), &serial_config(&up, &pty, ""), HOT_RULE);
    poll_until(WAIT, "the gateway reports the missing port", || {
        gw.log().contains("cannot open serial port").then_some(())
    });
    gw.assert_running_for(Duration::from_secs(1));
    pty.replug();
    gw.wait_open(&pty.device(), WAIT);
    serial_until(
        &mut pty,
        &mut sub,
        &reading("late", 31.0),
        "alert from the late device",
        |m| alert_is(m, "late", "firing"),
    );
}

#[test]
fn a_port_silent_past_reopen_after_silence_is_reopened() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let mut pty = Pty::new(dir.path(), "ttyS");
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let mut cfg = Config::new(&up.url())
        .serial("bench", pty.path(), "json", "bench")
        .toml();
    cfg = cfg.replace(
        "sensor = \"bench\"\n",
        "sensor = \"bench\"\nreopen_after_silence = \"1s\"\n",
    );
    let mut gw = Gateway::start(dir.path(), &cfg, HOT_RULE);
    gw.wait_open(&pty.device(), WAIT);
    poll_until(WAIT, "a reopen after silence", || {
        gw.log().contains("silent too long").then_some(())
    });
    serial_until(
        &mut pty,
        &mut sub,
        &reading("quiet", 31.0),
        "alert after the reopen",
        |m| alert_is(m, "quiet", "firing"),
    );
}

#[test]
fn an_mqtt_source_resubscribes_after_its_broker_restarts() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let mut local = Mosquitto::start();
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let cfg = Config::new(&up.url()).mqtt("local", &local.url(), &["sensors/+/reading"]);
    let _gw = Gateway::start(dir.path(), &cfg.toml(), HOT_RULE);
    retry_until(
        WAIT,
        Duration::from_millis(300),
        "alert before the restart",
        || publish(local.port(), "sensors/a/reading", &reading("a", 31.0)),
        |t| sub.try_wait_for(t, |m| alert_is(m, "a", "firing")),
    );
    local.stop();
    local.start_again();
    retry_until(
        WAIT,
        Duration::from_millis(300),
        "alert after the restart",
        || publish(local.port(), "sensors/b/reading", &reading("b", 31.0)),
        |t| sub.try_wait_for(t, |m| alert_is(m, "b", "firing")),
    );
}

#[test]
fn shared_subscriptions_deliver_with_the_plain_topic() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let local = Mosquitto::start();
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let mut cfg = Config::new(&up.url())
        .mqtt("local", &local.url(), &["$share/outpost/tele/+/SENSOR"])
        .toml();
    cfg.push_str("sensor = \"{+}\"\n");
    let _gw = Gateway::start(dir.path(), &cfg, HOT_RULE);
    retry_until(
        WAIT,
        Duration::from_millis(300),
        "alert through a shared subscription",
        || {
            publish(
                local.port(),
                "tele/kitchen/SENSOR",
                r#"{"temperature":31.5}"#,
            )
        },
        |t| sub.try_wait_for(t, |m| alert_is(m, "kitchen", "firing")),
    );
}
