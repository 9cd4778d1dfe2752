//! A fault-injecting MQTT-aware TCP proxy to put between the gateway and
//! its upstream broker: what a flaky cellular link, a NAT that forgets a
//! connection, or a broker host that vanishes looks like from the gateway,
//! and a window onto what the gateway sends.
//!
//! It forwards whole MQTT packets and records, in order, every connection
//! it accepts, every PUBLISH the client (the gateway) sends and every
//! PUBACK the broker returns (`traffic`), so a test can see what the
//! gateway published on which connection, and when.
//!
//! - `hold_publishes(true)`: PUBLISH packets are recorded and *not*
//!   forwarded: the gateway stays connected but never gets a PUBACK.
//! - `hold_pubacks(true)`: PUBLISH packets reach the broker, its PUBACKs
//!   never reach the gateway.
//! - `cut()`: every current connection is reset (both sides closed).
//! - `blackhole()`: every current connection goes silent: bytes in either
//!   direction are read and thrown away, the sockets stay open (a half-open
//!   link: writes succeed, nothing ever comes back). New connections pass.
//! - `refuse(true)`: new connections are closed at once (broker unreachable).
//! - `throttle(Some(bytes_per_s))`: slows both directions (a slow uplink).
//! - `handshake_latency(d)`: the broker's first answer (CONNACK) on a new
//!   connection reaches the client `d` late (a slow TLS handshake).
//!
//! Each connection is one tokio task per direction on the proxy's own
//! runtime; dropping the proxy stops it and closes everything.

use std::net::TcpListener as StdListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::QoS;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::Msg;

const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;

/// What passed through the proxy, in the order it happened.
#[derive(Clone, Debug)]
pub enum Event {
    /// A connection was accepted (refused ones too). Connections count
    /// from 1 in the order they were accepted.
    Accept { at: Instant },
    /// The client sent a PUBLISH.
    Publish(Publish),
    /// The broker sent a PUBACK; `withheld` when it did not reach the client.
    PubAck {
        conn: usize,
        pkid: u16,
        withheld: bool,
    },
}

/// A PUBLISH the client sent.
#[derive(Clone, Debug)]
pub struct Publish {
    pub conn: usize,
    pub pkid: u16,
    pub msg: Msg,
    /// Held back (`hold_publishes`): the broker never saw it.
    pub held: bool,
}

/// Everything recorded so far.
#[derive(Default)]
pub struct Traffic {
    pub events: Vec<Event>,
}

impl Traffic {
    /// When each connection was accepted.
    pub fn accepts(&self) -> Vec<Instant> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Accept { at } => Some(*at),
                _ => None,
            })
            .collect()
    }

    /// Every PUBLISH of an alert the client sent, in order.
    pub fn alerts(&self) -> impl Iterator<Item = &Publish> {
        self.events.iter().filter_map(|e| match e {
            Event::Publish(p) if p.msg.is_alert() => Some(p),
            _ => None,
        })
    }

    /// The alerts held back (`hold_publishes`), in order.
    pub fn held_alerts(&self) -> Vec<Msg> {
        self.alerts()
            .filter(|p| p.held)
            .map(|p| p.msg.clone())
            .collect()
    }

    /// Alerts in flight on connection `conn` now: sent, and their PUBACK
    /// not passed to the client.
    pub fn alerts_in_flight(&self, conn: usize) -> usize {
        self.in_flight()
            .get(&conn)
            .map_or(0, |(flight, _)| flight.len())
    }

    /// Per connection, the most alerts that were in flight at once.
    pub fn max_alerts_in_flight(&self) -> Vec<(usize, usize)> {
        self.in_flight()
            .into_iter()
            .map(|(c, (_, max))| (c, max))
            .collect()
    }

    /// Per connection: the packet ids of the alerts in flight, and the most
    /// there ever were.
    fn in_flight(&self) -> std::collections::BTreeMap<usize, (Vec<u16>, usize)> {
        let mut open: std::collections::BTreeMap<usize, (Vec<u16>, usize)> = Default::default();
        for e in &self.events {
            match e {
                Event::Publish(p) if p.msg.is_alert() && p.msg.qos != QoS::AtMostOnce => {
                    let (flight, max) = open.entry(p.conn).or_default();
                    flight.push(p.pkid);
                    *max = (*max).max(flight.len());
                }
                Event::PubAck {
                    conn,
                    pkid,
                    withheld: false,
                } => {
                    if let Some((flight, _)) = open.get_mut(conn) {
                        flight.retain(|k| k != pkid);
                    }
                }
                _ => {}
            }
        }
        open
    }
}

/// Checks the time between connection attempts against outpost's
/// reconnect backoff (README: "a capped backoff (0.5 s doubling up to
/// 30 s)"): the k-th delay is in the upper half of its step, 0.5 s × 2^k,
/// with up to 1 s of slack for a loaded machine. A fixed retry fails: the
/// fourth delay must be at least 2 s, and 2.5 times the first.
pub fn assert_backs_off(gaps: &[Duration]) {
    assert!(gaps.len() >= 4, "{} gaps: too few to tell", gaps.len());
    for (k, gap) in gaps.iter().enumerate() {
        let step = Duration::from_millis(500) * 2u32.pow(k as u32);
        let (lo, hi) = (step / 2, step + Duration::from_secs(1));
        assert!(
            (lo.saturating_sub(Duration::from_millis(20))..=hi).contains(gap),
            "attempt {} came {gap:?} after the one before, not within {lo:?}..{hi:?} \
             (0.5 s doubling): {gaps:?}",
            k + 2
        );
    }
    assert!(
        gaps[3] >= gaps[0].mul_f64(2.5),
        "delays do not grow: {gaps:?}"
    );
}

struct Conn {
    blackholed: Arc<AtomicBool>,
    cut: watch::Sender<bool>,
}

#[derive(Default)]
struct Shared {
    refuse: AtomicBool,
    throttle: AtomicU64,
    latency_ms: AtomicU64,
    hold_publishes: AtomicBool,
    hold_pubacks: AtomicBool,
    conns: Mutex<Vec<Conn>>,
    traffic: Mutex<Traffic>,
    changed: Condvar,
}

impl Shared {
    fn record(&self, e: Event) {
        self.traffic.lock().unwrap().events.push(e);
        self.changed.notify_all();
    }
}

pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to 127.0.0.1:`upstream_port`.
    pub fn start(upstream_port: u16) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let std_listener = StdListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = std_listener.local_addr().unwrap().port();
        std_listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        rt.spawn(async move {
            let listener = TcpListener::from_std(std_listener).expect("tokio listener");
            let mut n = 0;
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                n += 1;
                s.record(Event::Accept { at: Instant::now() });
                if s.refuse.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                    drop(client);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let blackholed = Arc::new(AtomicBool::new(false));
                let (cut_tx, cut_rx) = watch::channel(false);
                s.conns.lock().unwrap().push(Conn {
                    blackholed: blackholed.clone(),
                    cut: cut_tx,
                });
                let latency = Duration::from_millis(s.latency_ms.load(Ordering::SeqCst));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let up = Pump {
                    conn: n,
                    from_client: true,
                    blackholed: blackholed.clone(),
                    shared: s.clone(),
                    delay_first: Duration::ZERO,
                };
                let down = Pump {
                    conn: n,
                    from_client: false,
                    blackholed,
                    shared: s.clone(),
                    delay_first: latency,
                };
                tokio::spawn(up.run(cr, sw, cut_rx.clone()));
                tokio::spawn(down.run(sr, cw, cut_rx));
            }
        });
        Proxy {
            port,
            shared,
            rt: Some(rt),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// What passed so far (locked: do not hold it across a wait).
    pub fn traffic(&self) -> MutexGuard<'_, Traffic> {
        self.shared.traffic.lock().unwrap()
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> usize {
        self.traffic().accepts().len()
    }

    /// Waits, without polling, until `cond` over the traffic returns `Some`;
    /// `None` after `timeout`.
    pub fn try_wait<T>(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&Traffic) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut t = self.shared.traffic.lock().unwrap();
        loop {
            if let Some(v) = cond(&t) {
                return Some(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            t = self.shared.changed.wait_timeout(t, left).unwrap().0;
        }
    }

    /// Like `try_wait`; panics with `what` after `timeout`.
    pub fn wait<T>(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl FnMut(&Traffic) -> Option<T>,
    ) -> T {
        self.try_wait(timeout, cond).unwrap_or_else(|| {
            let t = self.traffic();
            let seen: Vec<String> = t
                .events
                .iter()
                .rev()
                .take(30)
                .map(|e| format!("  {e:?}"))
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; last through the proxy:\n{}",
                seen.join("\n")
            )
        })
    }

    /// Waits for `n` connections (refused ones count: connection attempts)
    /// and returns the time between each and the next.
    pub fn attempt_gaps(&self, n: usize, timeout: Duration) -> Vec<Duration> {
        let accepts = self.wait(timeout, &format!("{n} connection attempts"), |t| {
            let a = t.accepts();
            (a.len() >= n).then_some(a)
        });
        accepts[..n]
            .windows(2)
            .map(|w| w[1].duration_since(w[0]))
            .collect()
    }

    pub fn hold_publishes(&self, on: bool) {
        let _control = self.shared.conns.lock().unwrap();
        self.shared.hold_publishes.store(on, Ordering::SeqCst);
    }

    pub fn hold_pubacks(&self, on: bool) {
        let _control = self.shared.conns.lock().unwrap();
        self.shared.hold_pubacks.store(on, Ordering::SeqCst);
    }

    /// New connections get the broker's first answer `d` late.
    pub fn handshake_latency(&self, d: Duration) {
        self.shared
            .latency_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Resets every current connection.
    pub fn cut(&self) {
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.cut.send(true);
        }
    }

    /// Makes every current connection a black hole (sockets stay open).
    pub fn blackhole(&self) {
        for c in self.shared.conns.lock().unwrap().iter() {
            c.blackholed.store(true, Ordering::SeqCst);
        }
    }

    /// While on, new connections are closed at once.
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    /// Limits each direction of each connection to `bytes_per_s`.
    pub fn throttle(&self, bytes_per_s: Option<u64>) {
        self.shared
            .throttle
            .store(bytes_per_s.unwrap_or(0), Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// One direction of one connection.
struct Pump {
    conn: usize,
    from_client: bool,
    blackholed: Arc<AtomicBool>,
    shared: Arc<Shared>,
    delay_first: Duration,
}

impl Pump {
    async fn run(
        self,
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut cut: watch::Receiver<bool>,
    ) {
        let mut first = true;
        loop {
            let packet = tokio::select! {
                p = read_packet(&mut from) => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = cut.changed() => break,
            };
            // Decided under the lock `cut` and the holds take: a packet read
            // just as the link is cut never arrives, and one read before a
            // hold is lifted is held.
            let pass = {
                let _control = self.shared.conns.lock().unwrap();
                if *cut.borrow() {
                    break;
                }
                self.pass(&packet)
            };
            if first && !self.delay_first.is_zero() {
                tokio::time::sleep(self.delay_first).await;
            }
            first = false;
            if self.blackholed.load(Ordering::SeqCst) {
                continue; // the bytes vanish; the socket stays open
            }
            if !pass {
                continue;
            }
            let rate = self.shared.throttle.load(Ordering::SeqCst);
            if rate > 0 {
                tokio::time::sleep(Duration::from_secs_f64(packet.len() as f64 / rate as f64))
                    .await;
            }
            if to.write_all(&packet).await.is_err() {
                break;
            }
        }
        // One side ended or the link was cut: close the other side too.
        let _ = to.shutdown().await;
    }

    /// Records what matters in `packet`; false when it is held back.
    fn pass(&self, packet: &[u8]) -> bool {
        let kind = packet[0] >> 4;
        if self.from_client && kind == PUBLISH {
            let held = self.shared.hold_publishes.load(Ordering::SeqCst);
            if let Some((pkid, msg)) = parse_publish(packet) {
                self.shared.record(Event::Publish(Publish {
                    conn: self.conn,
                    pkid,
                    msg,
                    held,
                }));
            }
            return !held;
        }
        if !self.from_client && kind == PUBACK {
            let withheld = self.shared.hold_pubacks.load(Ordering::SeqCst);
            let body = body(packet);
            if body.len() >= 2 {
                self.shared.record(Event::PubAck {
                    conn: self.conn,
                    pkid: u16::from_be_bytes([body[0], body[1]]),
                    withheld,
                });
            }
            return !withheld;
        }
        true
    }
}

/// Reads one whole MQTT packet (fixed header, remaining length, body).
async fn read_packet(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut packet = vec![r.read_u8().await?];
    let mut len = 0usize;
    for i in 0..4 {
        let b = r.read_u8().await?;
        packet.push(b);
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    let start = packet.len();
    packet.resize(start + len, 0);
    r.read_exact(&mut packet[start..]).await?;
    Ok(packet)
}

/// The variable header and payload of a packet.
fn body(packet: &[u8]) -> &[u8] {
    let n = packet[1..]
        .iter()
        .position(|b| b & 0x80 == 0)
        .map_or(packet.len(), |i| i + 2);
    &packet[n.min(packet.len())..]
}

/// An MQTT 3.1.1 PUBLISH: its packet id (0 at QoS 0) and message.
fn parse_publish(packet: &[u8]) -> Option<(u16, Msg)> {
    let flags = packet[0];
    let qos = match (flags >> 1) & 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let b = body(packet);
    let tlen = usize::from(u16::from_be_bytes([*b.first()?, *b.get(1)?]));
    let topic = String::from_utf8_lossy(b.get(2..2 + tlen)?).into_owned();
    let mut at = 2 + tlen;
    let mut pkid = 0;
    if qos != QoS::AtMostOnce {
        pkid = u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]);
        at += 2;
    }
    let msg = Msg {
        topic,
        payload: b.get(at..)?.to_vec(),
        retain: flags & 1 == 1,
        qos,
    };
    Some((pkid, msg))
}
