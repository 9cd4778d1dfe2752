//! Running as a service: the local HTTP endpoint (`/metrics`, `/healthz`,
//! `/status`), `outpost status`, the systemd watchdog, and a clean stop on
//! SIGTERM, all through the real binary against a real Mosquitto and a
//! pseudo-terminal serial port.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::harness::http::{get, sample};
use crate::harness::*;

/// `/status` as JSON.
fn status_json(port: u16) -> Value {
    let r = get(port, "/status");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {}", r.body))
}

fn state_is(m: &Msg, state: &str) -> bool {
    m.is_alert() && serde_json::from_slice::<Value>(&m.payload).is_ok_and(|v| v["state"] == state)
}

/// A reading fires an alert, the broker acknowledges it, another reading
/// resolves it; meanwhile a bad line is counted. `/status` and `outpost
/// status` show the firing alert while it fires, and `/metrics` counts
/// all of it once delivered.
#[test]
fn metrics_status_and_healthz_report_real_traffic() {
    let mut rig = SerialRig::start_with(Launch::default().http(), |c| c);
    let mut online = Subscriber::connect(rig.up.port(), "outpost/test-gw/status");
    let port = rig.gw.http_port();
    online.wait_for(WAIT, "online", |m| m.text() == "online");

    // One reading above 30: one firing alert.
    rig.pty.write_line(&reading("t1", 31.5));
    rig.sub
        .wait_for(WAIT, "the firing alert", |m| state_is(m, "firing"));

    // /status while it fires (PUBACK handled: the outbox is empty again).
    let st = poll_until(WAIT, "/status with an empty outbox", || {
        let s = status_json(port);
        (s["outbox"]["depth"] == 0).then_some(s)
    });
    assert_eq!(st["gateway"], "test-gw");
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st["pipeline"]["healthy"], true);
    assert_eq!(st["upstream"]["connected"], true, "{st:#}");
    assert_eq!(st["upstream"]["url"], rig.up.url().as_str());
    assert_eq!(st["outbox"]["oldest"], Value::Null);
    assert_eq!(st["outbox"]["next_seq"], 2);
    let src = &st["sources"][0];
    assert_eq!(
        (
            &src["name"],
            &src["kind"],
            &src["connected"],
            &src["readings"]
        ),
        (
            &Value::from("bench"),
            &Value::from("serial"),
            &Value::from(true),
            &Value::from(1)
        ),
        "{st:#}"
    );
    let firing = st["alerts"]["firing"].as_array().expect("firing is a list");
    assert_eq!(firing.len(), 1, "{st:#}");
    assert_eq!(
        (
            &firing[0]["rule"],
            &firing[0]["sensor"],
            &firing[0]["value"]
        ),
        (&Value::from("hot"), &Value::from("t1"), &Value::from(31.5))
    );
    assert!(
        parse_ts_millis_z(firing[0]["since"].as_str().unwrap_or_default()).is_some(),
        "{st:#}"
    );

    // `outpost status` prints the same for a person.
    let out = run_outpost(
        rig.dir.path(),
        &[
            "status",
            "--config",
            &rig.dir.path().join("outpost.toml").to_string_lossy(),
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    for want in [
        "outpost test-gw",
        "pipeline ok",
        &format!("upstream  {} connected", rig.up.url()),
        "outbox    0 alerts waiting",
        "bench",
        "serial",
        "firing    1",
        "hot",
        "t1",
        "31.5",
    ] {
        assert!(
            out.stdout.contains(want),
            "missing {want:?}:\n{}",
            out.stdout
        );
    }

    // A line that is not JSON is counted; a reading below 28 resolves.
    rig.pty.write_line("this is not json");
    rig.pty.write_line(&reading("t1", 25.0));
    rig.sub
        .wait_for(WAIT, "the resolved alert", |m| state_is(m, "resolved"));

    let delivered = r#"outpost_alerts_delivered_total{rule="hot",state="resolved"}"#;
    let metrics = poll_until(WAIT, "/metrics with both alerts delivered", || {
        let r = get(port, "/metrics");
        assert_eq!(r.status, 200);
        (sample(&r.body, delivered) == Some(1.0)
            && sample(&r.body, "outpost_outbox_depth") == Some(0.0))
        .then_some(r)
    });
    assert!(
        metrics
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{:?}",
        metrics.content_type
    );
    let m = &metrics.body;
    let src = r#"{source="bench",kind="serial"}"#;
    let errors: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with(r#"outpost_source_errors_total{source="bench",kind="serial",error=""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    for (series, want) in [
        (format!("outpost_source_messages_total{src}"), 3.0),
        (format!("outpost_source_readings_total{src}"), 2.0),
        (format!("outpost_source_connected{src}"), 1.0),
        (
            r#"outpost_alerts_created_total{rule="hot",state="firing"}"#.into(),
            1.0,
        ),
        (
            r#"outpost_alerts_created_total{rule="hot",state="resolved"}"#.into(),
            1.0,
        ),
        (
            r#"outpost_alerts_delivered_total{rule="hot",state="firing"}"#.into(),
            1.0,
        ),
        (delivered.into(), 1.0),
        ("outpost_outbox_depth".into(), 0.0),
        ("outpost_outbox_bytes".into(), 0.0),
        ("outpost_outbox_oldest_age_seconds".into(), 0.0),
        ("outpost_upstream_connected".into(), 1.0),
        ("outpost_upstream_reconnects_total".into(), 0.0),
        ("outpost_upstream_publish_latency_seconds_count".into(), 2.0),
        (
            r#"outpost_upstream_publish_latency_seconds_bucket{le="+Inf"}"#.into(),
            2.0,
        ),
        ("outpost_alerts_published_total".into(), 2.0),
        ("outpost_rules_loaded".into(), 1.0),
        ("outpost_rule_reloads_total".into(), 0.0),
    ] {
        assert_eq!(sample(m, &series), Some(want), "{series} in:\n{m}");
    }
    assert_eq!(errors, 1.0, "one bad line, counted by kind:\n{m}");
    assert!(
        !m.contains("outpost_alerts_firing{"),
        "nothing fires after the resolution:\n{m}"
    );

    let h = get(port, "/healthz");
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    assert_eq!(get(port, "/nope").status, 404);
}

/// The retained status: `online` once connected (a subscriber that comes
/// later gets it too); on SIGTERM, with an alert just sent and the HTTP
/// endpoint on, `offline` (retained, the last status message) and exit 0
/// within 5 s, the endpoint gone with the process.
#[test]
fn status_is_retained_online_then_offline_and_sigterm_exits_0_within_5_s() {
    let mut rig = SerialRig::start_with(Launch::default().http(), |c| c);
    let port = rig.gw.http_port();
    let status = "outpost/test-gw/status";
    let retained = |up: &Mosquitto| {
        let mut late = Subscriber::connect(up.port(), status);
        late.wait_for(WAIT, "the retained status", |m| m.retain)
            .text()
    };
    let mut sub = Subscriber::connect(rig.up.port(), status);
    sub.wait_for(WAIT, "online", |m| m.text() == "online");
    assert_eq!(retained(&rig.up), "online");
    // Traffic just before the signal: an alert in flight or just acknowledged.
    rig.alert(&reading("t1", 35.0), "t1", "firing");

    rig.gw.sigterm();
    let st = rig.gw.wait_exit(Duration::from_secs(5));
    assert_eq!(st.code(), Some(0), "SIGTERM exits 0 ({st})");
    sub.wait_for(WAIT, "offline", |m| m.text() == "offline");
    assert_eq!(retained(&rig.up), "offline");
    sub.barrier(status);
    let texts: Vec<String> = sub.messages().iter().map(Msg::text).collect();
    assert_eq!(
        texts.last().map(String::as_str),
        Some("offline"),
        "{texts:?}"
    );
    // The endpoint is gone with the process.
    assert!(!port_accepts(port), "port {port} still accepts after exit");
    assert!(
        rig.gw.log().contains("published offline and disconnected"),
        "{}",
        rig.gw.log()
    );
}

fn status_cmd(dir: &Path, config: &str) -> Output {
    std::fs::write(dir.join("outpost.toml"), config).unwrap();
    std::fs::write(dir.join("rules.toml"), HOT_RULE).unwrap();
    run_outpost(
        dir,
        &[
            "status",
            "--config",
            &dir.join("outpost.toml").to_string_lossy(),
        ],
    )
}

/// A port of 127.0.0.1 that refuses connections, and that nobody else can
/// take while the returned socket lives: bound, never listening.
fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// No gateway: `outpost status` exits 1 and says so, naming the address.
#[test]
fn status_without_a_running_gateway_exits_1_and_says_why() {
    let dir = tempdir();
    let (_held, port) = refusing_port();
    let cfg = Config::new("mqtt://127.0.0.1:1")
        .toml()
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    let out = status_cmd(dir.path(), &cfg);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stderr.contains("the gateway is not running")
            && out.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        out.all()
    );
    assert!(out.stdout.is_empty(), "{}", out.all());

    // HTTP off in the config: nothing to ask, and the message says which key.
    let out = status_cmd(dir.path(), &Config::new("mqtt://127.0.0.1:1").toml());
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.stderr.contains("[http] listen"), "{}", out.all());
}

/// The broker password (upstream and an `[[mqtt]]` source, both in use)
/// appears nowhere in `/status`, `/metrics` or `outpost status`, which do
/// show the brokers.
#[test]
fn status_and_metrics_never_show_a_password() {
    const SECRET: &str = "Broker-Pa55-9d2e";
    let dir = tempdir();
    let broker = Mosquitto::start_with(MosquittoOpts {
        password_file: Some(password_file(dir.path(), "gw", SECRET)),
        ..Default::default()
    });
    let secret = dir.path().join("broker.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let url = format!("mqtt://127.0.0.1:{}", broker.auth_port());
    let login = "username = \"gw\"\npassword_file = \"broker.secret\"\n";
    let mut cfg = Config::new(&url);
    cfg.extra_upstream = login.into();
    cfg.mqtt.push(format!(
        "[[mqtt]]\nname = \"local\"\nurl = \"{url}\"\ntopics = [\"sensors/+/reading\"]\n\
         format = \"json\"\nclient_id = \"test-gw-local\"\n{login}"
    ));
    let gw = Launch::default()
        .http()
        .start(dir.path(), &cfg.toml(), HOT_RULE);
    let port = gw.http_port();
    // Both logins in use: the password was read and sent.
    let status = poll_until(WAIT, "upstream and source connected", || {
        let s = status_json(port);
        (s["upstream"]["connected"] == true && s["sources"][0]["connected"] == true).then_some(s)
    });
    assert_eq!(status["upstream"]["url"], url.as_str(), "{status:#}");
    let status = get(port, "/status").body;
    let metrics = get(port, "/metrics").body;
    assert!(metrics.contains("outpost_source_connected"), "{metrics}");
    let out = run_outpost(dir.path(), &["status", "--config", "outpost.toml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stdout.contains(&url), "{}", out.all());
    for (what, text) in [
        ("/status", &status),
        ("/metrics", &metrics),
        ("outpost status", &out.all()),
    ] {
        assert!(!text.contains(SECRET), "{what} shows the password:\n{text}");
    }
}

/// Someone else holds the HTTP port: the gateway says so and runs on
/// without its endpoint, alerting as ever.
#[test]
fn a_taken_http_port_leaves_the_gateway_running_and_alerting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut rig = SerialRig::start_with(Launch::default(), |mut c| {
        c.listen = format!("127.0.0.1:{port}");
        c
    });
    let line = rig.gw.wait_log(WAIT, "cannot listen for HTTP");
    assert!(
        line.contains("ERROR") && line.contains(&format!("127.0.0.1:{port}")),
        "{line}"
    );
    rig.alert(&reading("t1", 35.0), "t1", "firing");
    rig.gw.assert_running();
    drop(taken);
}

/// Under systemd (`NOTIFY_SOCKET`, `WATCHDOG_USEC`) the gateway says
/// READY=1 once running, then pings WATCHDOG=1 well within every
/// watchdog period while the pipeline moves.
#[test]
fn the_watchdog_is_pinged_within_every_period_while_the_pipeline_moves() {
    use std::os::unix::net::UnixDatagram;
    let sockets = tempdir();
    let sock_path = sockets.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let period = Duration::from_secs(2);
    let launch = Launch::default()
        .env("NOTIFY_SOCKET", sock_path.to_str().unwrap())
        .env("WATCHDOG_USEC", &period.as_micros().to_string());
    let mut rig = SerialRig::start_with(launch, |c| c);
    let mut buf = [0u8; 512];
    let mut recv = |timeout: Duration| -> String {
        sock.set_read_timeout(Some(timeout)).unwrap();
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification within {timeout:?}: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv(WAIT);
    assert!(first.contains("READY=1"), "{first:?}");
    for _ in 0..5 {
        // systemd restarts a service that stays silent for a whole period.
        let msg = recv(period);
        assert!(msg.contains("WATCHDOG=1"), "{msg:?}");
    }
    rig.gw.assert_running();
}
