//! MQTT clients on the test's side: a subscriber that observes what
//! arrives, a one-shot publisher (a sensor on the local broker), and the
//! helpers that read alerts out of what arrived.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use super::{WAIT, unique_suffix};

/// One message as a subscriber received it (or as the proxy saw it pass).
#[derive(Clone, Debug)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub qos: QoS,
}

impl Msg {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The payload as JSON; panics with the payload when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload on {} is not JSON ({e}): {:?}",
                self.topic,
                self.text()
            )
        })
    }

    pub fn is_alert(&self) -> bool {
        self.topic.contains("/alerts/")
    }
}

/// An MQTT subscriber collecting every message on `filter`.
///
/// Its session is persistent (`clean_session = false`) and it subscribes
/// with QoS 2, so the QoS it sees is the QoS the publisher used, and it
/// misses nothing across a broker restart (see `Mosquitto`). It reconnects
/// by itself. `connect` returns once the broker acknowledged the
/// subscription (SUBACK). `connect_login` is the fresh observer a broker
/// with logins wants (RabbitMQ: `vhost:user`): a clean session, QoS 1, the
/// SUBACK awaited `within` (a loaded broker may be slow).
pub struct Subscriber {
    client: Client,
    port: u16,
    rx: Receiver<Msg>,
    seen: Vec<Msg>,
    stop: Arc<AtomicBool>,
    filter: String,
}

impl Subscriber {
    pub fn connect(port: u16, filter: &str) -> Subscriber {
        let mut opts = Subscriber::options(port);
        opts.set_clean_session(false);
        Subscriber::start(opts, filter, QoS::ExactlyOnce, WAIT)
    }

    pub fn connect_login(
        port: u16,
        username: &str,
        password: &str,
        filter: &str,
        within: Duration,
    ) -> Subscriber {
        let mut opts = Subscriber::options(port);
        opts.set_clean_session(true);
        opts.set_credentials(username, password);
        Subscriber::start(opts, filter, QoS::AtLeastOnce, within)
    }

    fn options(port: u16) -> MqttOptions {
        let mut opts = MqttOptions::new(format!("test-sub-{}", unique_suffix()), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts
    }

    fn start(opts: MqttOptions, filter: &str, qos: QoS, within: Duration) -> Subscriber {
        let port = opts.broker_address().1;
        let (client, mut conn) = Client::new(opts, 64);
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (c, f, s) = (client.clone(), filter.to_string(), stop.clone());
        let last_error = Arc::new(std::sync::Mutex::new(None::<String>));
        let error_seen = last_error.clone();
        thread::spawn(move || {
            for ev in conn.iter() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if !ack.session_present {
                            let _ = c.try_subscribe(f.clone(), qos);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let msg = Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            qos: p.qos,
                        };
                        if tx.send(msg).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    // Broker down: rumqttc reconnects on the next poll; this
                    // is a reconnect backoff, not a wait for a condition.
                    Err(e) => {
                        *error_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                        thread::sleep(Duration::from_millis(100))
                    }
                }
            }
        });
        if ready_rx.recv_timeout(within).is_err() {
            let error = last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
            panic!(
                "no SUBACK for {filter} from 127.0.0.1:{port} within {within:?} (last error: {})",
                error.as_deref().unwrap_or("none")
            );
        }
        Subscriber {
            client,
            port,
            rx,
            seen: Vec::new(),
            stop,
            filter: filter.to_string(),
        }
    }

    fn pull(&mut self, timeout: Duration) {
        match self.rx.recv_timeout(timeout) {
            Ok(m) => {
                self.seen.push(m);
                while let Ok(m) = self.rx.try_recv() {
                    self.seen.push(m);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                panic!("subscriber {} thread ended", self.filter)
            }
        }
    }

    /// Every message received so far, in arrival order.
    pub fn messages(&mut self) -> &[Msg] {
        while let Ok(m) = self.rx.try_recv() {
            self.seen.push(m);
        }
        &self.seen
    }

    /// Returns once everything the broker received before this call has
    /// reached this subscriber: publishes a marker on `topic` (which the
    /// filter must match) and waits for it. Mosquitto routes messages in
    /// the order it receives them, so nothing published earlier, by anyone,
    /// can still be on its way here. The marker is not kept in `messages()`.
    pub fn barrier(&mut self, topic: &str) {
        let marker = format!("barrier-{}", unique_suffix());
        publish(self.port, topic, &marker);
        self.wait_for(WAIT, "the barrier marker", |m| m.text() == marker);
        self.seen.retain(|m| m.text() != marker);
    }

    /// Publishes `payload` on `topic` at 127.0.0.1:`port` (a sensor on a
    /// local broker) until an alert for `sensor` in `state` arrives here.
    /// Repeating a reading is harmless (rules alert on transitions); it
    /// covers the moment before a gateway's MQTT source has subscribed.
    pub fn publish_until_alert(
        &mut self,
        port: u16,
        topic: &str,
        payload: &str,
        sensor: &str,
        state: &str,
    ) -> Msg {
        super::retry_until(
            WAIT,
            Duration::from_millis(300),
            &format!("an alert for {sensor} {state} after publishing {payload} on {topic}"),
            || publish(port, topic, payload),
            |t| self.try_wait_for(t, |m| alert_is(m, sensor, state)),
        )
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        for m in &self.seen {
            s.push_str(&format!(
                "  {} (retain={}, {:?}) {}\n",
                m.topic,
                m.retain,
                m.qos,
                m.text()
            ));
        }
        if s.is_empty() {
            s.push_str("  (nothing)\n");
        }
        s
    }

    /// The first message (in arrival order, earlier ones included) that
    /// satisfies `pred`; panics after `timeout` listing what did arrive.
    pub fn wait_for(&mut self, timeout: Duration, what: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        self.wait_until(timeout, what, |seen| seen.iter().find(|m| pred(m)).cloned())
    }

    /// Like `wait_for`, `None` on timeout.
    pub fn try_wait_for(&mut self, timeout: Duration, pred: impl Fn(&Msg) -> bool) -> Option<Msg> {
        self.try_wait_until(timeout, |seen| seen.iter().find(|m| pred(m)).cloned())
    }

    /// Polls `cond` over everything received so far until it returns `Some`.
    pub fn wait_until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&[Msg]) -> Option<T>,
    ) -> T {
        match self.try_wait_until(timeout, cond) {
            Some(v) => v,
            None => panic!(
                "timed out after {timeout:?} waiting for {what} on {}; received:\n{}",
                self.filter,
                self.dump()
            ),
        }
    }

    /// Like `wait_until`, `None` on timeout.
    pub fn try_wait_until<T>(
        &mut self,
        timeout: Duration,
        cond: impl Fn(&[Msg]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            self.messages();
            if let Some(v) = cond(&self.seen) {
                return Some(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.pull(deadline - now);
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
        if thread::panicking() {
            eprintln!(
                "---- subscriber {} received ----\n{}",
                self.filter,
                self.dump()
            );
        }
    }
}

/// Publishes one QoS 1 message to the broker on 127.0.0.1:`port` and waits
/// for its PUBACK (a sensor publishing to the local broker).
pub fn publish(port: u16, topic: &str, payload: &str) {
    let mut opts = MqttOptions::new(format!("test-pub-{}", unique_suffix()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, 10);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
        .unwrap(); // the request channel is empty
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!("no PUBACK from 127.0.0.1:{port} for {topic} within {WAIT:?}");
        }
        match conn.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publish to 127.0.0.1:{port} failed: {e}"),
            Err(_) => panic!("no PUBACK from 127.0.0.1:{port} for {topic} within {WAIT:?}"),
        }
    }
    let _ = client.disconnect();
    // Let the DISCONNECT go out; ends at the first error or after a moment.
    let _ = conn.recv_timeout(Duration::from_millis(200));
}

/// Publishes `messages` (topic, payload) to the broker on
/// 127.0.0.1:`port` as fast as one connection goes, QoS 0 (sensors in a
/// storm), then one QoS 1 message on `burst/done`, whose PUBACK says the
/// broker has taken them all.
pub fn publish_burst(
    port: u16,
    messages: impl IntoIterator<Item = (String, Vec<u8>), IntoIter: Send + 'static>,
) {
    let messages = messages.into_iter();
    let mut opts = MqttOptions::new(format!("test-burst-{}", unique_suffix()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(opts, 1024);
    let sender = thread::spawn(move || {
        for (topic, payload) in messages {
            if client
                .publish(topic, QoS::AtMostOnce, false, payload)
                .is_err()
            {
                return;
            }
        }
        let _ = client.publish("burst/done", QoS::AtLeastOnce, false, "done");
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the burst to 127.0.0.1:{port} did not finish"
        );
        match conn.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("burst to 127.0.0.1:{port} failed: {e}"),
            Err(_) => panic!("the burst to 127.0.0.1:{port} did not finish"),
        }
    }
    sender.join().unwrap();
}

/// The alerts among `msgs`, duplicates by `id` removed (first delivery
/// kept), in arrival order.
pub fn dedup_alerts(msgs: &[Msg]) -> Vec<Value> {
    let mut ids = HashSet::new();
    let mut out = Vec::new();
    for m in msgs.iter().filter(|m| m.is_alert()) {
        let v = m.json();
        if ids.insert(v["id"].as_str().unwrap_or_default().to_string()) {
            out.push(v);
        }
    }
    out
}

/// Is `m` an alert for `sensor` in `state`?
pub fn alert_is(m: &Msg, sensor: &str, state: &str) -> bool {
    m.is_alert()
        && serde_json::from_slice::<Value>(&m.payload)
            .is_ok_and(|v| v["sensor"] == sensor && v["state"] == state)
}

/// Is `s` an RFC 3339 UTC time with exactly millisecond precision and `Z`
/// (`2026-11-26T10:00:00.123Z`)? Returns it parsed.
pub fn parse_ts_millis_z(s: &str) -> Option<time::OffsetDateTime> {
    let shape = "dddd-dd-ddTdd:dd:dd.dddZ";
    if s.len() != shape.len() {
        return None;
    }
    let shaped = s.bytes().zip(shape.bytes()).all(|(c, p)| {
        if p == b'd' {
            c.is_ascii_digit()
        } else {
            c == p
        }
    });
    if !shaped {
        return None;
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}
