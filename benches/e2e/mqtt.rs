//! The load generator and the subscribers that observe delivery, on rumqttc.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::workload::Workload;

fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// A client of the runner, with `TCP_NODELAY`: a reading is on the wire
/// when it is published, as a sensor's lone message would be. Under Nagle
/// the generator's small QoS 0 publishes (the broker sends nothing back to
/// carry the TCP acknowledgement) sometimes went out in bunches every
/// 20-40 ms for a whole run, and whichever gateway was measured then showed
/// a p50 of 10-13 ms.
fn client(id: &str, port: u16, cap: usize) -> (AsyncClient, rumqttc::EventLoop) {
    let (client, mut el) = AsyncClient::new(options(id, port), cap);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    (client, el)
}

/// Polls the event loop until `ready` says so (ConnAck or SubAck), then keeps
/// polling; reconnects after a pause on errors.
fn drive(
    mut el: rumqttc::EventLoop,
    subscribe: Option<(AsyncClient, String, QoS)>,
    state: Option<Arc<Mutex<Inbox>>>,
) -> (JoinHandle<()>, oneshot::Receiver<()>) {
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ready = Some(tx);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => match &subscribe {
                    Some((c, f, q)) => {
                        let _ = c.try_subscribe(f.clone(), *q);
                    }
                    None => {
                        if let Some(t) = ready.take() {
                            let _ = t.send(());
                        }
                    }
                },
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(t) = ready.take() {
                        let _ = t.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(s) = &state {
                        let at = Instant::now();
                        let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
                        s.count += 1;
                        let new = match &mut s.distinct {
                            Some(seen) => seen.insert(p.payload.to_vec()),
                            None => true,
                        };
                        if new {
                            s.first.get_or_insert(at);
                            s.last = Some(at);
                        }
                        if s.keep {
                            s.messages.push((at, p.payload.to_vec()));
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (task, rx)
}

async fn ready(rx: oneshot::Receiver<()>, what: &str) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(15), rx).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(format!("{what}: no ConnAck/SubAck within 15 s")),
    }
}

/// The load generator: one MQTT connection publishing readings at QoS 0.
pub struct Publisher {
    client: AsyncClient,
    task: JoinHandle<()>,
}

/// When each reading was handed to the client.
pub struct Sent {
    pub at: Vec<Instant>,
}

impl Sent {
    pub fn first(&self) -> Instant {
        self.at.first().copied().unwrap_or_else(Instant::now)
    }
    pub fn last(&self) -> Instant {
        self.at.last().copied().unwrap_or_else(Instant::now)
    }
}

impl Publisher {
    pub async fn connect(port: u16) -> Result<Publisher, String> {
        let (client, el) = client("bench-load", port, 1024);
        let (task, rx) = drive(el, None, None);
        ready(rx, "load generator").await?;
        Ok(Publisher { client, task })
    }

    /// Publishes every reading of `w`, at full speed or at `rate` per second.
    pub async fn publish(&self, w: &Workload, rate: Option<f64>) -> Result<Sent, String> {
        let mut at = Vec::with_capacity(w.len());
        let start = Instant::now();
        for (i, (sensor, payload)) in w.readings.iter().enumerate() {
            if let Some(r) = rate {
                let due = start + Duration::from_secs_f64(i as f64 / r);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            at.push(Instant::now());
            self.client
                .publish(
                    w.topics[*sensor].clone(),
                    QoS::AtMostOnce,
                    false,
                    payload.clone(),
                )
                .await
                .map_err(|e| format!("publish: {e}"))?;
        }
        Ok(Sent { at })
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct Inbox {
    keep: bool,
    /// Every message, duplicates included.
    count: usize,
    /// The distinct payloads, when asked: at-least-once delivery may bring
    /// a message twice, and a duplicate is the same bytes again.
    distinct: Option<HashSet<Vec<u8>>>,
    first: Option<Instant>,
    last: Option<Instant>,
    messages: Vec<(Instant, Vec<u8>)>,
}

/// A subscriber counting (and, if asked, keeping) what arrives on a filter.
pub struct Subscriber {
    inbox: Arc<Mutex<Inbox>>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects and subscribes; returns once the broker acknowledged.
    /// `keep`: keep every message; `distinct`: count distinct payloads
    /// (`received`), so duplicates never count toward a target.
    pub async fn connect(
        port: u16,
        id: &str,
        filter: &str,
        qos: QoS,
        keep: bool,
        distinct: bool,
    ) -> Result<Subscriber, String> {
        let (client, el) = client(id, port, 64);
        let inbox = Arc::new(Mutex::new(Inbox {
            keep,
            distinct: distinct.then(HashSet::new),
            ..Inbox::default()
        }));
        let (task, rx) = drive(
            el,
            Some((client, filter.to_string(), qos)),
            Some(inbox.clone()),
        );
        ready(rx, id).await?;
        Ok(Subscriber { inbox, task })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inbox) -> T) -> T {
        f(&mut self.inbox.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Messages received: distinct ones when counting distinct payloads.
    pub fn received(&self) -> usize {
        self.with(|s| s.distinct.as_ref().map_or(s.count, HashSet::len))
    }

    /// Messages received again (0 unless counting distinct payloads).
    pub fn duplicates(&self) -> usize {
        self.with(|s| s.count - s.distinct.as_ref().map_or(s.count, HashSet::len))
    }

    /// When the last new message arrived.
    pub fn last(&self) -> Option<Instant> {
        self.with(|s| s.last)
    }

    pub fn messages(&self) -> Vec<(Instant, Vec<u8>)> {
        self.with(|s| s.messages.clone())
    }

    /// The arrival of the first message whose payload is `payload`.
    pub fn first_with(&self, payload: &[u8]) -> Option<Instant> {
        self.with(|s| {
            s.messages
                .iter()
                .find(|(_, p)| p.as_slice() == payload)
                .map(|(t, _)| *t)
        })
    }

    /// Waits until `target` messages arrived (`received`: duplicates do
    /// not count when counting distinct payloads), or nothing new arrived
    /// for `stall`. Returns whether the target was reached.
    pub async fn wait_for(&self, target: usize, stall: Duration) -> bool {
        let mut seen = self.received();
        let mut progress = Instant::now();
        loop {
            let n = self.received();
            if n >= target {
                return true;
            }
            if n != seen {
                seen = n;
                progress = Instant::now();
            } else if progress.elapsed() > stall {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
