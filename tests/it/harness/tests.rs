//! The harness itself, without a gateway: what the other tests rely on.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use rumqttc::QoS;
use serde_json::json;

use super::*;

#[test]
fn subscriber_receives_what_is_published() {
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
fn subscriber_misses_nothing_across_a_broker_restart() {
    let mut broker = Mosquitto::start();
    let port = broker.port();
    let mut sub = Subscriber::connect(port, "a/#");
    publish(port, "a/1", "one");
    sub.wait_for(WAIT, "one", |m| m.text() == "one");
    let pid = broker.pid();
    broker.stop();
    assert!(!port_accepts(port));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the stopped broker still runs"
    );
    broker.start_again();
    assert_eq!(broker.port(), port);
    // Published before the subscriber is back: its saved session queues it.
    publish(port, "a/2", "two");
    sub.wait_for(WAIT, "two", |m| m.text() == "two");
}

#[test]
fn pty_carries_lines_and_can_be_replugged() {
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

/// A client on the proxy, with its event loop pumped in a thread.
fn client(port: u16) -> rumqttc::Client {
    let mut opts =
        rumqttc::MqttOptions::new(format!("test-proxy-{}", unique_suffix()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(opts, 10);
    std::thread::spawn(move || for _ in conn.iter() {});
    client
}

#[test]
fn proxy_holds_publishes_or_pubacks_and_records_both() {
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.port());
    let mut sub = Subscriber::connect(broker.port(), "t/#");
    proxy.hold_publishes(true);
    let c = client(proxy.port());
    c.publish("t/held", QoS::AtLeastOnce, false, b"x".to_vec())
        .unwrap();
    proxy.wait(WAIT, "the held publish", |t| {
        t.events
            .iter()
            .any(|e| matches!(e, proxy::Event::Publish(p) if p.held && p.msg.topic == "t/held"))
            .then_some(())
    });

    // PUBACKs withheld: the publish reaches the broker, its PUBACK does not
    // come back, and it counts as in flight on its connection.
    proxy.hold_publishes(false);
    proxy.hold_pubacks(true);
    c.publish("t/alerts/x", QoS::AtLeastOnce, false, b"y".to_vec())
        .unwrap();
    sub.wait_for(WAIT, "the forwarded publish", |m| m.topic == "t/alerts/x");
    proxy.wait(WAIT, "the withheld PUBACK", |t| {
        t.events
            .iter()
            .any(|e| matches!(e, proxy::Event::PubAck { withheld: true, .. }))
            .then_some(())
    });
    assert_eq!(proxy.traffic().max_alerts_in_flight(), vec![(1, 1)]);
    // The barrier proves the held publish never reached the broker.
    sub.barrier("t/barrier");
    assert!(sub.messages().iter().all(|m| m.topic != "t/held"));
    let _ = c.disconnect();
}

#[test]
fn proxy_refuses_and_counts_every_connection() {
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.port());
    proxy.refuse(true);
    let refused = std::net::TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    proxy.wait(WAIT, "the refused connection", |t| {
        (t.accepts().len() == 1).then_some(())
    });
    drop(refused);
    proxy.refuse(false);
    let port = proxy.port();
    publish(port, "t/1", "through the proxy");
    assert_eq!(proxy.accepted(), 2);
    let accepts = proxy.traffic().accepts();
    assert!(accepts[0] <= accepts[1]);
}
