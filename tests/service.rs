//! Running as a service: the local HTTP endpoint (`/metrics`, `/healthz`,
//! `/status`), `outpost status`, and a clean stop on SIGTERM, all through
//! the real binary against a real Mosquitto and a pseudo-terminal serial
//! port. See `common/mod.rs` for the harness.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const ALERTS: &str = "outpost/test-gw/alerts/#";

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("outpost-svc")
        .tempdir()
        .unwrap()
}

/// The harness's test config, with the HTTP endpoint on `port`.
fn with_http(cfg: &Config, port: u16) -> String {
    let toml = cfg.toml();
    assert!(toml.contains("listen = \"\""), "{toml}");
    toml.replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""))
}

/// GET `path` from the gateway with the client `outpost status` uses.
fn get(port: u16, path: &str) -> outpost::http::client::Response {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    rt.block_on(outpost::http::client::get(
        addr,
        path,
        Duration::from_secs(5),
    ))
    .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `/status` as JSON, once the endpoint answers.
fn status_json(port: u16) -> Value {
    poll_until(WAIT, "the HTTP endpoint", || {
        port_accepts(port).then_some(())
    });
    let r = get(port, "/status");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {}", r.body))
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn line(sensor: &str, temperature: f64) -> String {
    serde_json::json!({ "sensor": sensor, "temperature": temperature }).to_string()
}

fn alert_is(m: &Msg, state: &str) -> bool {
    m.topic.contains("/alerts/")
        && serde_json::from_slice::<Value>(&m.payload).is_ok_and(|v| v["state"] == state)
}

/// A reading fires an alert, the broker acknowledges it, another reading
/// resolves it; meanwhile a bad line is counted. `/status` and `outpost
/// status` show the firing alert while it fires, and `/metrics` counts
/// all of it once delivered.
#[test]
fn metrics_status_and_healthz_report_real_traffic() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let mut pty = Pty::new(dir.path(), "tty");
    let mut online = Subscriber::connect(up.port(), "outpost/test-gw/status");
    let mut sub = Subscriber::connect(up.port(), ALERTS);
    let port = free_port();
    let cfg = Config::new(&up.url()).serial("bench", pty.path(), "json", "bench");
    let mut gw = Gateway::start(dir.path(), &with_http(&cfg, port), HOT_RULE);
    online.wait_for(WAIT, "online", |m| m.text() == "online");
    gw.wait_open(&pty.device(), WAIT);

    // One reading above 30: one firing alert.
    pty.write_line(&line("t1", 31.5));
    sub.wait_for(WAIT, "the firing alert", |m| alert_is(m, "firing"));

    // /status while it fires (PUBACK handled: the outbox is empty again).
    let st = poll_until(WAIT, "/status with an empty outbox", || {
        let s = status_json(port);
        (s["outbox"]["depth"] == 0).then_some(s)
    });
    assert_eq!(st["gateway"], "test-gw");
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st["pipeline"]["healthy"], true);
    assert_eq!(st["upstream"]["connected"], true, "{st:#}");
    assert_eq!(st["upstream"]["url"], up.url().as_str());
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
        dir.path(),
        &[
            "status",
            "--config",
            &dir.path().join("outpost.toml").to_string_lossy(),
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    for want in [
        "outpost test-gw",
        "pipeline ok",
        &format!("upstream  {} connected", up.url()),
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
    pty.write_line("this is not json");
    pty.write_line(&line("t1", 25.0));
    sub.wait_for(WAIT, "the resolved alert", |m| alert_is(m, "resolved"));

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

/// SIGTERM: `offline` is published retained and the process exits 0, within
/// 5 seconds, with the HTTP endpoint on.
#[test]
fn sigterm_publishes_offline_retained_and_exits_0_within_5_s() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let mut pty = Pty::new(dir.path(), "tty");
    let status = "outpost/test-gw/status";
    let mut sub = Subscriber::connect(up.port(), status);
    let mut alerts = Subscriber::connect(up.port(), ALERTS);
    let port = free_port();
    let cfg = Config::new(&up.url()).serial("bench", pty.path(), "json", "bench");
    let mut gw = Gateway::start(dir.path(), &with_http(&cfg, port), HOT_RULE);
    sub.wait_for(WAIT, "online", |m| m.text() == "online");
    gw.wait_open(&pty.device(), WAIT);
    // Traffic just before the signal: an alert in flight or just acknowledged.
    pty.write_line(&line("t1", 35.0));
    alerts.wait_for(WAIT, "the alert", |m| alert_is(m, "firing"));

    let t0 = Instant::now();
    gw.sigterm();
    let st = gw.wait_exit(Duration::from_secs(5));
    let took = t0.elapsed();
    assert_eq!(st.code(), Some(0), "SIGTERM exits 0 ({st})");
    assert!(took < Duration::from_secs(5), "took {took:?}");

    sub.wait_for(WAIT, "offline", |m| m.text() == "offline");
    let mut later = Subscriber::connect(up.port(), status);
    let m = later.wait_for(WAIT, "the retained status", |m| m.retain);
    assert_eq!(m.text(), "offline");
    // The endpoint is gone with the process.
    assert!(!port_accepts(port), "port {port} still accepts after exit");
    assert!(
        gw.log().contains("published offline and disconnected"),
        "{}",
        gw.log()
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

/// No gateway: `outpost status` exits 1 and says so, naming the address.
#[test]
fn status_without_a_running_gateway_exits_1_and_says_why() {
    let dir = tempdir();
    let port = free_port();
    let cfg = Config::new("mqtt://127.0.0.1:1");
    let out = status_cmd(dir.path(), &with_http(&cfg, port));
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stderr.contains("the gateway is not running")
            && out.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        out.all()
    );
    assert!(out.stdout.is_empty(), "{}", out.all());

    // HTTP off in the config: nothing to ask, and the message says which key.
    let out = status_cmd(dir.path(), &cfg.toml());
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.stderr.contains("[http] listen"), "{}", out.all());
}
