//! The upstream link against brokers configured as people run them: TLS
//! with a private CA, mutual TLS, password files, packet size limits, and
//! Home Assistant discovery; and how it backs off when refused. Real
//! `outpost` binary, real Mosquitto, and certificates made at test time
//! with `openssl` (see `harness::pki`).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

/// Where the tests' sensors publish (an `[[mqtt]]` source on the broker's
/// plain listener).
const INPUT: &str = "sensors/in/reading";

/// A config whose readings come from `INPUT` on `broker`'s plain listener
/// and whose alerts go to `upstream_url` with these `[upstream]` lines.
fn config(broker: &Mosquitto, upstream_url: &str, upstream: &str) -> Config {
    let mut c = Config::new(upstream_url).mqtt("local", &broker.url(), &[INPUT]);
    c.extra_upstream = upstream.to_string();
    c
}

fn tls_lines(ca: &Path, client: Option<(&Path, &Path)>) -> String {
    let mut s = format!("ca_file = \"{}\"\n", ca.display());
    if let Some((cert, key)) = client {
        s.push_str(&format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    s
}

/// True once the gateway logged that it created the alert for `sensor`.
fn alert_logged(gw: &Gateway, sensor: &str, state: &str) -> bool {
    gw.log().lines().any(|l| {
        l.contains(" alert ")
            && l.contains(&format!("sensor={sensor} "))
            && l.contains(&format!("state={state}"))
    })
}

/// Publishes a reading for `sensor` until the gateway has made its alert
/// (repeating a reading is harmless: rules alert on transitions).
fn make_alert(broker: &Mosquitto, gw: &Gateway, sensor: &str, temperature: f64, state: &str) {
    retry_until(
        WAIT,
        Duration::from_millis(500),
        &format!("the gateway to make a {state} alert for {sensor}"),
        || publish(broker.port(), INPUT, &reading(sensor, temperature)),
        |t| {
            let deadline = Instant::now() + t;
            loop {
                if alert_logged(gw, sensor, state) {
                    return Some(());
                }
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        },
    );
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/// The test certificates, a broker with a TLS listener that requires a
/// client certificate, and a subscriber to the alerts (on the plain one).
fn mutual_tls_broker() -> (&'static Pki, Mosquitto, Subscriber) {
    let pki = Pki::get();
    let broker = Mosquitto::start_with(MosquittoOpts {
        tls: Some(pki.listener(true)),
        ..Default::default()
    });
    let sub = Subscriber::connect(broker.port(), ALERTS);
    (pki, broker, sub)
}

#[test]
fn alerts_are_delivered_over_mutual_tls() {
    let (pki, broker, mut sub) = mutual_tls_broker();
    let dir = tempdir();
    let url = format!("mqtts://localhost:{}", broker.tls_port());
    let cfg = config(
        &broker,
        &url,
        &tls_lines(&pki.ca, Some((&pki.client_ec, &pki.client_ec_sec1))),
    );
    let mut gw = Gateway::start(dir.path(), &cfg.toml(), HOT_RULE);
    let line = gw.wait_log(WAIT, "upstream connected");
    assert!(line.contains(&url), "{line}");
    make_alert(&broker, &gw, "greenhouse/t1", 35.0, "firing");
    let m = sub.wait_for(WAIT, "the alert", |m| {
        alert_is(m, "greenhouse/t1", "firing")
    });
    assert_eq!(m.topic, "outpost/test-gw/alerts/hot/greenhouse/t1");
    // It came in through the TLS listener, with the client certificate.
    let log = broker.log();
    assert!(
        log.contains(&format!("on port {}", broker.tls_port())),
        "no connection on the TLS port:\n{}",
        tail(&log, 30)
    );
    gw.stop();
}

/// Each broken TLS setup is refused with a plain reason in the log, the
/// alerts made meanwhile wait in the outbox, and all of them arrive, in
/// order, once the config is fixed. `mqtts://` never falls back to
/// plaintext, even where a plaintext listener would accept.
#[test]
fn tls_failures_are_named_plainly_and_alerts_wait_until_the_config_is_fixed() {
    let (pki, broker, mut sub) = mutual_tls_broker();
    let dir = tempdir();
    let tls = |host: &str| format!("mqtts://{host}:{}", broker.tls_port());
    let client = Some((pki.client_rsa.as_path(), pki.client_rsa_pkcs1.as_path()));
    let cases = [
        (
            "wrong-ca",
            tls("localhost"),
            tls_lines(&pki.other_ca, client),
            "the broker's certificate is not signed by a trusted CA (unknown issuer)",
        ),
        (
            "no-client-cert",
            tls("localhost"),
            tls_lines(&pki.ca, None),
            "the broker requires a client certificate",
        ),
        (
            "name-mismatch",
            tls("127.0.0.1"),
            tls_lines(&pki.ca, client),
            "the broker's certificate is not valid for `127.0.0.1` (name mismatch",
        ),
        (
            "plain-port",
            format!("mqtts://localhost:{}", broker.port()),
            tls_lines(&pki.ca, client),
            "during the TLS handshake",
        ),
    ];
    let mut gw: Option<Gateway> = None;
    for (sensor, url, lines, reason) in &cases {
        let cfg = config(&broker, url, lines).toml();
        let g = match gw.as_mut() {
            None => gw.insert(Gateway::start(dir.path(), &cfg, HOT_RULE)),
            Some(g) => {
                g.rewrite_config(&cfg);
                g.restart();
                g
            }
        };
        let line = g.wait_log(WAIT, reason);
        assert!(line.contains("WARN"), "a refused link is a warning: {line}");
        make_alert(&broker, g, sensor, 35.0, "firing");
        g.stop();
    }
    // Anything a broken setup let through has reached the subscriber by now.
    sub.barrier("outpost/test-gw/alerts/barrier");
    assert!(
        sub.messages().is_empty(),
        "nothing may pass a broken TLS setup"
    );

    // Fixed: the right CA and a client certificate (PKCS#8 key this time).
    let g = gw.as_mut().unwrap(); // the loop above started it
    let fixed = tls_lines(&pki.ca, Some((&pki.client_rsa, &pki.client_rsa_pkcs8)));
    g.rewrite_config(&config(&broker, &tls("localhost"), &fixed).toml());
    g.restart();
    let got = sub.wait_until(WAIT, "the 4 stored alerts", |seen| {
        let alerts = dedup_alerts(seen);
        (alerts.len() >= 4).then_some(alerts)
    });
    let sensors: Vec<&str> = got.iter().map(|a| a["sensor"].as_str().unwrap()).collect();
    assert_eq!(
        sensors,
        ["wrong-ca", "no-client-cert", "name-mismatch", "plain-port"]
    );
    let seqs: Vec<u64> = got.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    g.stop();
}

#[test]
fn check_reads_pkcs1_pkcs8_and_sec1_keys_and_refuses_broken_tls_files() {
    let pki = Pki::get();
    let dir = tempdir();
    let url = "mqtts://localhost:8883";
    let check = |lines: &str| {
        let mut c = Config::new(url);
        c.extra_upstream = lines.to_string();
        check(dir.path(), &c.toml(), HOT_RULE)
    };
    // `outpost.toml:N:` for the line that sets `key`.
    let at = |key: &str| {
        let text = fs::read_to_string(dir.path().join("outpost.toml")).unwrap();
        let n = text.lines().position(|l| l.starts_with(key)).unwrap(); // written by check()
        format!("outpost.toml:{}:", n + 1)
    };
    for (cert, key) in [
        (&pki.client_rsa, &pki.client_rsa_pkcs1),
        (&pki.client_rsa, &pki.client_rsa_pkcs8),
        (&pki.client_ec, &pki.client_ec_sec1),
    ] {
        let out = check(&tls_lines(&pki.ca, Some((cert, key))));
        assert_eq!(out.code, Some(0), "{}: {}", key.display(), out.all());
        assert!(
            out.stdout
                .contains("TLS with ca_file and a client certificate"),
            "{}",
            out.all()
        );
    }

    // A key that belongs to another certificate: named at the key_file line.
    let out = check(&tls_lines(
        &pki.ca,
        Some((&pki.client_ec, &pki.client_rsa_pkcs8)),
    ));
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains(&at("key_file"))
            && out.stderr.contains("key_file")
            && out.stderr.contains("does not fit cert_file"),
        "{}",
        out.all()
    );

    // A ca_file that holds no certificate.
    let out = check(&tls_lines(&pki.client_ec_sec1, None));
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains(&at("ca_file")) && out.stderr.contains("holds no PEM certificate"),
        "{}",
        out.all()
    );
}

#[test]
fn secret_files_others_can_read_are_warned_about_at_check_and_at_start() {
    let pki = Pki::get();
    let dir = tempdir();
    let key = dir.path().join("client.key");
    fs::copy(&pki.client_ec_sec1, &key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let secret = dir.path().join("upstream.secret");
    fs::write(&secret, "s3cret-Pa55\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o640)).unwrap();
    // Nothing listens there: the gateway keeps retrying, which is fine here.
    let mut c = Config::new(&format!("mqtts://localhost:{}", free_port().unwrap()));
    c.extra_upstream = format!(
        "{}username = \"gw\"\npassword_file = \"upstream.secret\"\n",
        tls_lines(&pki.ca, Some((&pki.client_ec, &key)))
    );
    let out = check(dir.path(), &c.toml(), HOT_RULE);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stderr.contains("warning: key_file")
            && out
                .stderr
                .contains("readable by group or others (mode 0644)"),
        "{}",
        out.all()
    );
    assert!(
        out.stderr.contains("warning: password_file") && out.stderr.contains("(mode 0640)"),
        "{}",
        out.all()
    );
    assert!(!out.all().contains("s3cret-Pa55"), "{}", out.all());

    let mut gw = Gateway::start(dir.path(), &c.toml(), HOT_RULE);
    let line = gw.wait_log(WAIT, "readable by group or others (mode 0644)");
    assert!(line.contains("WARN"), "{line}");
    // Logged first thing, maybe before the signal handlers are set up.
    gw.kill9();

    // Fixed modes: no warning.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let out = check(dir.path(), &c.toml(), HOT_RULE);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(!out.stderr.contains("warning"), "{}", out.all());
}

// ---------------------------------------------------------------------------
// Passwords and reconnects
// ---------------------------------------------------------------------------

#[test]
fn a_wrong_password_is_refused_plainly_retried_with_backoff_and_never_logged() {
    const RIGHT: &str = "Right-Pa55-7f3a";
    const WRONG: &str = "Wrong-Pa55-c0ff";
    let dir = tempdir();
    let broker = Mosquitto::start_with(MosquittoOpts {
        password_file: Some(password_file(dir.path(), "greenhouse", RIGHT)),
        ..Default::default()
    });
    // Every connection attempt passes the proxy, which times it.
    let proxy = Proxy::start(broker.auth_port());
    let mut sub = Subscriber::connect(broker.port(), ALERTS);
    let secret = dir.path().join("upstream.secret");
    fs::write(&secret, format!("{WRONG}\n")).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let url = proxy.url();
    let cfg = config(
        &broker,
        &url,
        "username = \"greenhouse\"\npassword_file = \"upstream.secret\"\n",
    );
    // The most verbose log there is: still no password in it.
    let mut gw =
        Launch::default()
            .rust_log("trace,sled=debug")
            .start(dir.path(), &cfg.toml(), HOT_RULE);
    let line = gw.wait_log(WAIT, "the broker refused the login");
    assert!(line.contains("WARN"), "{line}");
    make_alert(&broker, &gw, "cold-room", 35.0, "firing");

    // A refused login is retried with backoff, not in a loop.
    let gaps = proxy.attempt_gaps(5, Duration::from_secs(20));
    assert_backs_off(&gaps);
    gw.stop();
    sub.barrier("outpost/test-gw/alerts/barrier");
    assert!(sub.messages().is_empty(), "nothing passes a refused login");

    let out = run_outpost(dir.path(), &["check", "--config", "outpost.toml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("user greenhouse with password"),
        "{}",
        out.all()
    );

    // The right password: the stored alert arrives.
    fs::write(&secret, format!("{RIGHT}\n")).unwrap();
    gw.restart();
    sub.wait_for(WAIT, "the stored alert", |m| {
        alert_is(m, "cold-room", "firing")
    });
    gw.stop();

    let log = gw.log();
    assert!(log.contains("TRACE"), "the log was not at trace level");
    for secret in [RIGHT, WRONG] {
        assert!(!log.contains(secret), "the gateway logged a password");
        assert!(!out.all().contains(secret), "check printed a password");
    }
}

#[test]
fn check_refuses_a_source_that_would_share_the_upstream_client_id() {
    let dir = tempdir();
    let mut c = Config::new("mqtt://127.0.0.1:1883");
    c.extra_upstream = "client_id = \"pi-1\"\n".into();
    c.mqtt.push(
        "[[mqtt]]\nname = \"local\"\nurl = \"mqtt://127.0.0.1:1883\"\n\
         topics = [\"a/#\"]\nclient_id = \"pi-1\"\n"
            .into(),
    );
    let out = check(dir.path(), &c.toml(), HOT_RULE);
    assert_eq!(out.code, Some(2), "{}", out.all());
    let text = fs::read_to_string(dir.path().join("outpost.toml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let line = lines
        .iter()
        .rposition(|l| l.starts_with("client_id"))
        .unwrap() // the config above has two client_id lines
        + 1;
    assert!(
        out.stderr.contains(&format!("outpost.toml:{line}:"))
            && out.stderr.contains("client_id `pi-1`, like [upstream]"),
        "{}",
        out.all()
    );

    // The same id on another broker is no conflict.
    let other = text.replacen(
        "url = \"mqtt://127.0.0.1:1883\"\ntopics",
        "url = \"mqtt://127.0.0.1:1884\"\ntopics",
        1,
    );
    let out = check(dir.path(), &other, HOT_RULE);
    assert_eq!(out.code, Some(0), "{}", out.all());
}

// ---------------------------------------------------------------------------
// Topics and sizes
// ---------------------------------------------------------------------------

#[test]
fn hostile_sensor_ids_make_safe_topics_and_never_cut_the_link() {
    let broker = Mosquitto::start();
    // The proxy counts the gateway's connections: a cut link is a second one.
    let proxy = Proxy::start(broker.port());
    let dir = tempdir();
    let mut sub = Subscriber::connect(broker.port(), ALERTS);
    let cfg = config(&broker, &proxy.url(), "");
    let mut gw = Gateway::start(dir.path(), &cfg.toml(), HOT_RULE);
    let long = "s".repeat(128);
    let p = "outpost/test-gw/alerts/hot";
    let cases = [
        ("a+b", format!("{p}/a_b")),
        ("x/#", format!("{p}/x/_")),
        ("$SYS/broker/uptime", format!("{p}/$SYS/broker/uptime")),
        ("/lead//trail/", format!("{p}/_/lead/_/trail/_")),
        ("quote\"brace}", format!("{p}/quote\"brace}}")),
        (long.as_str(), format!("{p}/{long}")),
    ];
    for (sensor, topic) in &cases {
        make_alert(&broker, &gw, sensor, 35.0, "firing");
        let m = sub.wait_for(WAIT, &format!("the alert for {sensor:?}"), |m| {
            alert_is(m, sensor, "firing")
        });
        assert_eq!(&m.topic, topic, "sensor {sensor:?}");
    }
    // Control characters never make a sensor id: the reading is refused
    // and counted, and no alert (and no topic) comes of it.
    publish(broker.port(), INPUT, &reading("bell\u{7}x", 35.0));
    publish(broker.port(), INPUT, &reading("after", 35.0));
    sub.wait_for(WAIT, "the alert after", |m| alert_is(m, "after", "firing"));
    assert!(
        !sub.messages()
            .iter()
            .any(|m| m.topic.contains("bell") || m.text().contains("bell")),
        "a sensor id with a control character reached upstream"
    );
    assert_eq!(proxy.accepted(), 1, "the link was cut and made again");
    gw.stop();
}

/// Publishes a QoS 1 message of `size` bytes; true when the broker
/// disconnected us instead of acknowledging it.
fn broker_refuses(port: u16, size: usize) -> bool {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let mut opts = MqttOptions::new("test-big", "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(opts, 10);
    client
        .publish("probe/big", QoS::AtLeastOnce, false, vec![b'x'; size])
        .unwrap(); // the request channel is empty
    loop {
        match conn.recv_timeout(WAIT) {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => return false,
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return true,
            Err(_) => panic!("no answer from the broker within {WAIT:?}"),
        }
    }
}

/// `max_payload = "1KiB"` and a broker that disconnects any client sending
/// a packet over 1300 bytes (1 KiB of payload and a long topic): every
/// payload the gateway publishes fits, alerts (an alert with a long message,
/// about 1.4 KiB, goes out with its message cut), the health, the events and
/// the Home Assistant messages, so none turns into a disconnect-and-resend
/// loop. The proxy sees every PUBLISH, even one the broker would refuse.
#[test]
fn every_payload_fits_max_payload_and_the_link_stays_up() {
    const MAX: usize = 1024;
    let broker = Mosquitto::start_with(MosquittoOpts {
        extra: "max_packet_size 1300\n".into(),
        ..Default::default()
    });
    assert!(
        broker_refuses(broker.port(), 1400),
        "the broker does not enforce its limit; the test would prove nothing"
    );
    let proxy = Proxy::start(broker.port());
    let dir = tempdir();
    let mut sub = Subscriber::connect(broker.port(), "#");
    let mut cfg = config(&broker, &proxy.url(), "max_payload = \"1KiB\"\n");
    cfg.extra_sections = "[homeassistant]\nnode_name = \"Test greenhouse\"\n".into();
    let long_rule = HOT_RULE.replace(
        "message = \"{sensor} is {value}\"",
        &format!(
            "message = \"{{sensor}} is {{value}}: {}\"",
            "x".repeat(5000)
        ),
    );
    let mut gw = Gateway::start(dir.path(), &cfg.toml(), &long_rule);
    let sensor = "greenhouse/t1";
    make_alert(&broker, &gw, sensor, 35.0, "firing");
    let m = sub.wait_for(WAIT, "the cut alert", |m| alert_is(m, sensor, "firing"));
    let v = m.json();
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!("{sensor} is 35: xxx")) && msg.ends_with('…'),
        "not cut: {:?}",
        &msg[msg.len().saturating_sub(20)..]
    );
    // The link stays up and the next alert follows.
    make_alert(&broker, &gw, sensor, 20.0, "resolved");
    sub.wait_for(WAIT, "the resolution", |m| alert_is(m, sensor, "resolved"));

    // An event: alerts held back, the gateway stopped, the outbox purged;
    // the `purged` event goes out on the next run.
    proxy.hold_publishes(true);
    for i in 0..5 {
        make_alert(&broker, &gw, &format!("held-{i}"), 35.0, "firing");
    }
    gw.stop();
    let out = run_outpost(dir.path(), &["outbox", "purge", "--config", "outpost.toml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    proxy.hold_publishes(false);
    gw.restart();
    sub.wait_for(WAIT, "the purged event", |m| m.topic.ends_with("/events"));
    sub.wait_for(WAIT, "the health", |m| m.topic.ends_with("/health"));
    gw.stop();

    let traffic = proxy.traffic();
    let mut kinds = BTreeSet::new();
    for e in &traffic.events {
        if let proxy::Event::Publish(p) = e {
            let t = &p.msg.topic;
            let kind = [
                "/alerts/", "/health", "/events", "/state/", "/config", "/status",
            ]
            .into_iter()
            .find(|k| t.contains(k))
            .unwrap_or(t);
            kinds.insert(kind.to_string());
            assert!(
                p.msg.payload.len() <= MAX,
                "{} bytes on {t} (max_payload {MAX}): {}",
                p.msg.payload.len(),
                p.msg.text()
            );
        }
    }
    let all = [
        "/alerts/", "/health", "/events", "/state/", "/config", "/status",
    ];
    assert_eq!(kinds, all.map(String::from).into(), "kinds of payload seen");
    // One connection per run: the broker never cut the link.
    assert_eq!(
        traffic.accepts().len(),
        2,
        "the link was cut and made again"
    );
}

// ---------------------------------------------------------------------------
// Home Assistant
// ---------------------------------------------------------------------------

#[test]
fn home_assistant_discovery_and_state_have_the_documented_shape() {
    let broker = Mosquitto::start();
    let dir = tempdir();
    let mut sub = Subscriber::connect(broker.port(), "#");
    let mut cfg = config(&broker, &broker.url(), "");
    cfg.extra_sections = "[homeassistant]\nnode_name = \"Test greenhouse\"\n".into();
    let mut gw = Gateway::start(dir.path(), &cfg.toml(), HOT_RULE);
    make_alert(&broker, &gw, "greenhouse/t1", 35.0, "firing");
    let state_topic = "outpost/test-gw/state/hot/greenhouse/t1";
    let is_config = |m: &Msg| {
        m.topic
            .starts_with("homeassistant/binary_sensor/test-gw/hot_greenhouse_t1")
            && m.topic.ends_with("/config")
    };
    let config_msg = sub.wait_for(WAIT, "the discovery config", is_config);
    sub.wait_for(WAIT, "the alert", |m| {
        alert_is(m, "greenhouse/t1", "firing")
    });

    // The object id is [a-zA-Z0-9_-] (Home Assistant's rule).
    let object = config_msg.topic.split('/').nth(3).unwrap(); // matched above
    assert!(
        object
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "{object}"
    );
    let c = config_msg.json();
    assert_eq!(c["unique_id"], format!("outpost_test-gw_{object}"));
    assert_eq!(c["name"], "hot greenhouse/t1");
    assert_eq!(c["device_class"], "problem");
    assert_eq!(c["state_topic"], state_topic);
    assert_eq!(c["payload_on"], "ON");
    assert_eq!(c["payload_off"], "OFF");
    assert_eq!(c["availability_topic"], "outpost/test-gw/status");
    assert_eq!(c["payload_available"], "online");
    assert_eq!(c["payload_not_available"], "offline");
    assert_eq!(
        c["json_attributes_topic"],
        "outpost/test-gw/alerts/hot/greenhouse/t1"
    );
    assert_eq!(c["qos"], 1);
    assert_eq!(c["device"]["identifiers"], json!(["outpost_test-gw"]));
    assert_eq!(c["device"]["name"], "Test greenhouse");
    assert_eq!(c["device"]["manufacturer"], "outpost");

    // The state goes out before the alert it comes from.
    let seen = sub.messages();
    let on = seen
        .iter()
        .position(|m| m.topic == state_topic && m.text() == "ON")
        .expect("state ON published");
    let alert = seen
        .iter()
        .position(|m| alert_is(m, "greenhouse/t1", "firing"))
        .unwrap(); // waited for above
    assert!(on < alert, "state ON after the alert");

    make_alert(&broker, &gw, "greenhouse/t1", 20.0, "resolved");
    sub.wait_for(WAIT, "state OFF", |m| {
        m.topic == state_topic && m.text() == "OFF"
    });

    // A Home Assistant that starts later finds the entity and its state:
    // both are retained.
    let mut late = Subscriber::connect(broker.port(), "#");
    let cfg_late = late.wait_for(WAIT, "the retained config", is_config);
    assert!(cfg_late.retain);
    let st = late.wait_for(WAIT, "the retained state", |m| m.topic == state_topic);
    assert!(st.retain && st.text() == "OFF", "{st:?}");
    let status = late.wait_for(WAIT, "the retained status", |m| {
        m.topic == "outpost/test-gw/status"
    });
    assert_eq!(status.text(), "online");
    gw.stop();
}

#[test]
fn check_validates_the_homeassistant_section_and_topic_prefix() {
    let dir = tempdir();
    let check = |toml: &str| check(dir.path(), toml, HOT_RULE);
    let mut c = Config::new("mqtt://127.0.0.1:1883");
    c.extra_sections = "[homeassistant]\ndiscovery_prefix = \"ha\"\n".into();
    let out = check(&c.toml());
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout
            .contains("homeassistant discovery on ha/binary_sensor/test-gw/#"),
        "{}",
        out.all()
    );

    let base = c.toml();
    let last = format!("outpost.toml:{}:", base.lines().count());
    let ha_line = |line: &str| base.replace("discovery_prefix = \"ha\"\n", line);
    let prefix = |p: &str| {
        let mut c = Config::new("mqtt://127.0.0.1:1883");
        c.extra_upstream = format!("topic_prefix = \"{p}\"\n");
        c.toml()
    };
    // Without an [upstream] there is no broker to announce on.
    let no_upstream = base.replace(
        "[upstream]\nurl = \"mqtt://127.0.0.1:1883\"\nkeep_alive = \"5s\"\n",
        "",
    );
    let cases: [(String, &[&str]); 8] = [
        (
            ha_line("discovry_prefix = \"ha\"\n"),
            &[&last, "unknown field `discovry_prefix`"],
        ),
        (
            ha_line("node_name = \"\"\n"),
            &[&last, "node_name must be 1 to 128 characters"],
        ),
        (
            base.replace("\"ha\"", "\"$ha\""),
            &["discovery_prefix `$ha` starts with `$`"],
        ),
        (no_upstream, &["[homeassistant] needs an [upstream]"]),
        (prefix("a//b"), &["topic_prefix `a//b` has an empty level"]),
        (prefix("a/+/b"), &["topic_prefix `a/+/b` contains '+'"]),
        (prefix("$SYS/x"), &["topic_prefix `$SYS/x` starts with `$`"]),
        (prefix("a/#"), &["topic_prefix `a/#` contains '#'"]),
    ];
    for (toml, expect) in &cases {
        check(toml).assert_invalid(expect);
    }
}
