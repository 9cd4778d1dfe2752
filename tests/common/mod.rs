//! Test harness for the end-to-end tests: real processes, real sockets.
//!
//! Everything here talks to the outside world the way a user's setup would:
//! a real Mosquitto on `127.0.0.1:<free port>`, pseudo-terminals made by
//! `socat` standing in for USB serial adapters, and the `outpost` binary
//! itself. Each test owns its brokers, ports and temporary folders, so tests
//! run in parallel.
//!
//! Every wait is a poll of a condition with a deadline; nothing sleeps "to
//! let things settle". When a test fails, the helpers' `Drop` prints the
//! gateway's and the brokers' logs to make the failure readable.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

/// The default deadline of a wait: long enough for a loaded 2-core CI
/// machine, short enough that a broken test fails quickly.
pub const WAIT: Duration = Duration::from_secs(15);

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/// A TCP port that was free a moment ago on 127.0.0.1.
///
/// Another process may take it before we bind it again; `Mosquitto::start`
/// retries with a new port when that happens.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` until it returns `Some`, or panics with `what` after `timeout`.
pub fn poll_until<T>(timeout: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(POLL);
    }
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn find_program(name: &str, well_known: &[&str]) -> Option<PathBuf> {
    for p in well_known {
        let p = Path::new(p);
        if p.is_file() {
            return Some(p.to_path_buf());
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child we own and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

fn kill_and_reap(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

fn unique_suffix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// MQTT topic filter matching (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

// ---------------------------------------------------------------------------
// Mosquitto
// ---------------------------------------------------------------------------

/// A Mosquitto broker on 127.0.0.1:`port`, killed on drop.
///
/// Persistence is on (in its temporary folder), so a persistent session
/// (`clean_session = false`, like `Subscriber`'s) and retained messages
/// survive `stop()` + `start_again()`: a subscriber misses nothing the
/// gateway publishes right after the broker comes back.
pub struct Mosquitto {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    opts: MosquittoOpts,
    /// Ports of the extra listeners: TLS, then password.
    tls_port: u16,
    auth_port: u16,
}

/// What a broker needs beyond the plain anonymous listener every test uses
/// (and that `Subscriber` and `publish` connect to).
#[derive(Clone, Default)]
pub struct MosquittoOpts {
    /// A TLS listener on `tls_port()`.
    pub tls: Option<TlsListener>,
    /// A listener on `auth_port()` that takes only the users of this
    /// password file (see `password_file`).
    pub password_file: Option<PathBuf>,
    /// More global configuration lines (`max_packet_size 4096`, ...).
    pub extra: String,
}

/// A TLS listener: the server's certificate and key, and the CA its
/// clients' certificates must be signed by when `require_certificate`.
#[derive(Clone)]
pub struct TlsListener {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub require_certificate: bool,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(MosquittoOpts::default())
    }

    /// A broker with extra listeners or settings (see `MosquittoOpts`).
    pub fn start_with(opts: MosquittoOpts) -> Mosquitto {
        let keep = std::env::var_os("OUTPOST_E2E_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("outpost-mosq")
            .disable_cleanup(keep)
            .tempdir()
            .unwrap();
        if keep {
            eprintln!("broker folder kept: {}", dir.path().display());
        }
        let mut m = Mosquitto {
            port: 0,
            dir,
            child: None,
            opts,
            tls_port: 0,
            auth_port: 0,
        };
        let mut errors = Vec::new();
        for _ in 0..5 {
            m.port = free_port();
            m.tls_port = free_port();
            m.auth_port = free_port();
            match m.spawn() {
                Ok(()) => return m,
                // The port was taken between free_port() and mosquitto's bind.
                Err(e) => errors.push(e),
            }
        }
        panic!(
            "mosquitto did not start on any of 5 free ports:\n{}",
            errors.join("\n")
        );
    }

    fn binary() -> PathBuf {
        find_program("mosquitto", &["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]).unwrap_or_else(
            || {
                panic!(
                    "mosquitto not found (looked in /usr/sbin, /usr/bin and PATH): \
                     run `.ci/run`, or `apt-get install mosquitto mosquitto-clients socat`"
                )
            },
        )
    }

    fn spawn(&mut self) -> Result<(), String> {
        let d = self.dir.path();
        let mut conf = format!(
            "per_listener_settings true\n\
             persistence true\n\
             persistence_location {dir}/\n\
             persistence_file mosquitto.db\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type all\n\
             max_queued_messages 10000\n\
             {extra}\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n",
            port = self.port,
            dir = d.display(),
            extra = self.opts.extra,
        );
        if let Some(t) = &self.opts.tls {
            conf.push_str(&format!(
                "listener {} 127.0.0.1\n\
                 cafile {}\ncertfile {}\nkeyfile {}\n\
                 require_certificate {}\n\
                 allow_anonymous true\n",
                self.tls_port,
                t.ca.display(),
                t.cert.display(),
                t.key.display(),
                t.require_certificate
            ));
        }
        if let Some(p) = &self.opts.password_file {
            conf.push_str(&format!(
                "listener {} 127.0.0.1\npassword_file {}\nallow_anonymous false\n",
                self.auth_port,
                p.display()
            ));
        }
        // Run as root (CI), mosquitto would switch to the `mosquitto` user,
        // which cannot write into our private temporary folder.
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } == 0 {
            conf.push_str("user root\n");
        }
        let conf_path = d.join("mosquitto.conf");
        fs::write(&conf_path, conf).unwrap();
        let child = Command::new(Self::binary())
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(d.join("mosquitto.stderr")).unwrap())
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "mosquitto exited with {st} before accepting on port {}:\n{}",
                    self.port,
                    self.log()
                ));
            }
            let extra_up = (self.opts.tls.is_none() || port_accepts(self.tls_port))
                && (self.opts.password_file.is_none() || port_accepts(self.auth_port));
            if port_accepts(self.port) && extra_up {
                return Ok(());
            }
            if Instant::now() >= deadline {
                panic!(
                    "mosquitto did not accept on port {} in {WAIT:?}:\n{}",
                    self.port,
                    self.log()
                );
            }
            thread::sleep(POLL);
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The TLS listener's port (`MosquittoOpts::tls`).
    pub fn tls_port(&self) -> u16 {
        assert!(self.opts.tls.is_some(), "broker has no TLS listener");
        self.tls_port
    }

    /// The password listener's port (`MosquittoOpts::password_file`).
    pub fn auth_port(&self) -> u16 {
        assert!(
            self.opts.password_file.is_some(),
            "broker has no password listener"
        );
        self.auth_port
    }

    /// Stops the broker cleanly (SIGTERM: it saves its sessions) and waits
    /// until the port no longer accepts.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            if wait_child(&mut child, WAIT).is_none() {
                kill_and_reap(&mut child);
            }
        }
        poll_until(WAIT, "the stopped broker's port to close", || {
            (!port_accepts(self.port)).then_some(())
        });
    }

    /// Starts the broker again on the same port with the same saved state.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again on a running broker");
        if let Err(e) = self.spawn() {
            panic!("restarting mosquitto on the same port failed: {e}");
        }
    }

    /// Mosquitto's log file and stderr.
    pub fn log(&self) -> String {
        let d = self.dir.path();
        let log = fs::read_to_string(d.join("mosquitto.log")).unwrap_or_default();
        let err = fs::read_to_string(d.join("mosquitto.stderr")).unwrap_or_default();
        format!("{log}{err}")
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
        if thread::panicking() {
            eprintln!(
                "---- mosquitto :{} log (tail) ----\n{}",
                self.port,
                tail(&self.log(), 40)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// MQTT clients
// ---------------------------------------------------------------------------

/// One message as a subscriber received it.
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
}

/// An MQTT subscriber collecting every message on `filter`.
///
/// Its session is persistent (`clean_session = false`) and it subscribes
/// with QoS 2, so the QoS it sees is the QoS the publisher used, and it
/// misses nothing across a broker restart (see `Mosquitto`). It reconnects
/// by itself. `connect` returns once the broker acknowledged the
/// subscription (SUBACK).
pub struct Subscriber {
    client: Client,
    rx: Receiver<Msg>,
    seen: Vec<Msg>,
    stop: Arc<AtomicBool>,
    filter: String,
}

impl Subscriber {
    pub fn connect(port: u16, filter: &str) -> Subscriber {
        let mut opts = MqttOptions::new(format!("test-sub-{}", unique_suffix()), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(false);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = Client::new(opts, 64);
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (c, f, s) = (client.clone(), filter.to_string(), stop.clone());
        thread::spawn(move || {
            for ev in conn.iter() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if !ack.session_present {
                            let _ = c.try_subscribe(f.clone(), QoS::ExactlyOnce);
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
                    Err(_) => thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        match ready_rx.recv_timeout(WAIT) {
            Ok(()) => {}
            Err(_) => panic!("no SUBACK for {filter} from 127.0.0.1:{port} within {WAIT:?}"),
        }
        Subscriber {
            client,
            rx,
            seen: Vec::new(),
            stop,
            filter: filter.to_string(),
        }
    }

    fn pull(&mut self, timeout: Duration) -> bool {
        match self.rx.recv_timeout(timeout) {
            Ok(m) => {
                self.seen.push(m);
                while let Ok(m) = self.rx.try_recv() {
                    self.seen.push(m);
                }
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
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

    /// The first `n` messages whose topic matches `filter`, in arrival order.
    pub fn collect(&mut self, filter: &str, n: usize, timeout: Duration) -> Vec<Msg> {
        self.wait_until(timeout, &format!("{n} messages on {filter}"), |seen| {
            let hits: Vec<Msg> = seen
                .iter()
                .filter(|m| topic_matches(filter, &m.topic))
                .cloned()
                .collect();
            (hits.len() >= n).then(|| hits[..n].to_vec())
        })
    }

    /// Like `collect`, payloads parsed as JSON.
    pub fn collect_json(&mut self, filter: &str, n: usize, timeout: Duration) -> Vec<Value> {
        self.collect(filter, n, timeout)
            .iter()
            .map(Msg::json)
            .collect()
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
        .unwrap();
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

// ---------------------------------------------------------------------------
// A TCP proxy in front of the upstream broker
// ---------------------------------------------------------------------------

/// A TCP proxy in front of a broker that can hold back PUBLISH packets.
///
/// While `hold_publishes(true)`, every PUBLISH the client (the gateway)
/// sends is recorded and *not* forwarded: the gateway stays connected but
/// never gets a PUBACK, so its alerts must stay in its outbox. What it
/// tried to publish is observable with `held()`, which tells a test that
/// the gateway has created and sent an alert without the broker seeing it.
/// Everything else (CONNECT, PINGREQ, ...) passes through.
pub struct MqttProxy {
    port: u16,
    latency_ms: Arc<AtomicUsize>,
    hold: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<Msg>>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl MqttProxy {
    pub fn start(upstream_port: u16) -> MqttProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = MqttProxy {
            port,
            latency_ms: Arc::new(AtomicUsize::new(0)),
            hold: Arc::new(AtomicBool::new(false)),
            held: Arc::new(Mutex::new(Vec::new())),
            conns: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let latency = p.latency_ms.clone();
        let (hold, held, conns, stop) = (
            p.hold.clone(),
            p.held.clone(),
            p.conns.clone(),
            p.stop.clone(),
        );
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    // Upstream down: the gateway sees a refused/closed link.
                    drop(client);
                    continue;
                };
                {
                    let mut c = conns.lock().unwrap();
                    c.push(client.try_clone().unwrap());
                    c.push(server.try_clone().unwrap());
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (hold, held) = (hold.clone(), held.clone());
                thread::spawn(move || {
                    let _ = forward_packets(client, server, &hold, &held);
                });
                let delay = Duration::from_millis(latency.load(Ordering::SeqCst) as u64);
                thread::spawn(move || {
                    let (mut s, mut c) = (s2, c2);
                    // A slow link: the broker's first answer (CONNACK)
                    // reaches the client `delay` late.
                    thread::sleep(delay);
                    let _ = std::io::copy(&mut s, &mut c);
                    let _ = c.shutdown(Shutdown::Both);
                    let _ = s.shutdown(Shutdown::Both);
                });
            }
        });
        p
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Makes new connections slow: the broker's replies start `d` late,
    /// as over a cellular link with a slow TLS handshake.
    pub fn set_handshake_latency(&self, d: Duration) {
        self.latency_ms
            .store(d.as_millis() as usize, Ordering::SeqCst);
    }

    pub fn hold_publishes(&self, on: bool) {
        self.hold.store(on, Ordering::SeqCst);
    }

    /// The PUBLISH packets held back so far.
    pub fn held(&self) -> Vec<Msg> {
        self.held.lock().unwrap().clone()
    }

    /// Waits until `cond` holds over the held packets.
    pub fn wait_held<T>(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&[Msg]) -> Option<T>,
    ) -> T {
        self.try_wait_held(timeout, cond).unwrap_or_else(|| {
            let list: Vec<String> = self
                .held()
                .iter()
                .map(|m| format!("  {} {}", m.topic, m.text()))
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; held:\n{}",
                list.join("\n")
            )
        })
    }

    /// Like `wait_held`, `None` on timeout.
    pub fn try_wait_held<T>(
        &self,
        timeout: Duration,
        cond: impl Fn(&[Msg]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = cond(&self.held()) {
                return Some(v);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    /// Closes every proxied connection (both sides).
    pub fn drop_connections(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for MqttProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.drop_connections();
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies MQTT packets from `client` to `server`, holding back PUBLISH
/// packets while `hold` is set.
fn forward_packets(
    mut client: TcpStream,
    mut server: TcpStream,
    hold: &AtomicBool,
    held: &Mutex<Vec<Msg>>,
) -> std::io::Result<()> {
    let result = (|| loop {
        let mut first = [0u8; 1];
        client.read_exact(&mut first)?;
        let mut header = vec![first[0]];
        let mut len: usize = 0;
        for i in 0..4 {
            let mut b = [0u8; 1];
            client.read_exact(&mut b)?;
            header.push(b[0]);
            len |= ((b[0] & 0x7f) as usize) << (7 * i);
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        client.read_exact(&mut body)?;
        if first[0] >> 4 == 3 && hold.load(Ordering::SeqCst) {
            let qos = (first[0] >> 1) & 3;
            let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
            let topic = String::from_utf8_lossy(&body[2..2 + tlen]).into_owned();
            let start = 2 + tlen + if qos > 0 { 2 } else { 0 };
            held.lock().unwrap().push(Msg {
                topic,
                payload: body[start..].to_vec(),
                retain: first[0] & 1 == 1,
                qos: match qos {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => QoS::ExactlyOnce,
                },
            });
            continue;
        }
        server.write_all(&header)?;
        server.write_all(&body)?;
    })();
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    result
}

// ---------------------------------------------------------------------------
// Pseudo-terminal serial ports
// ---------------------------------------------------------------------------

/// A pair of pseudo-terminals joined by `socat`, standing in for a USB
/// serial adapter: the gateway opens `path()` (a symlink, like
/// `/dev/serial/by-id/...`), the test writes lines to the other end.
///
/// The test never opens the gateway's side (outpost opens it exclusively).
/// `unplug()` ends socat, so both terminals vanish as an unplugged adapter
/// does; `replug()` makes new ones at the same paths.
pub struct Pty {
    gw_link: PathBuf,
    test_link: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    writer: Option<File>,
}

impl Pty {
    /// Creates `dir/name` (the gateway's side) and `dir/name.test`.
    pub fn new(dir: &Path, name: &str) -> Pty {
        let mut p = Pty {
            gw_link: dir.join(name),
            test_link: dir.join(format!("{name}.test")),
            log: dir.join(format!("{name}.socat.log")),
            child: None,
            writer: None,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let socat = find_program("socat", &["/usr/bin/socat"]).unwrap_or_else(|| {
            panic!("socat not found: run `.ci/run`, or `apt-get install socat`")
        });
        let _ = fs::remove_file(&self.gw_link);
        let _ = fs::remove_file(&self.test_link);
        let child = Command::new(socat)
            .arg("-d")
            .arg("-d")
            .arg(format!("pty,rawer,link={}", self.gw_link.display()))
            .arg(format!("pty,rawer,link={}", self.test_link.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            )
            .spawn()
            .expect("spawn socat");
        self.child = Some(child);
        let (gw, test) = (self.gw_link.clone(), self.test_link.clone());
        let log = self.log.clone();
        let child = self.child.as_mut().unwrap();
        poll_until(WAIT, "socat's pseudo-terminals", || {
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "socat exited with {st}: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            (fs::canonicalize(&gw).is_ok() && fs::canonicalize(&test).is_ok()).then_some(())
        });
    }

    /// The path the gateway opens (`[[serial]] path`).
    pub fn path(&self) -> &Path {
        &self.gw_link
    }

    /// The `/dev/pts/N` behind `path()`.
    pub fn device(&self) -> PathBuf {
        fs::canonicalize(&self.gw_link).expect("pty link")
    }

    /// Writes `line` and a newline, as a sensor prints a reading.
    pub fn write_line(&mut self, line: &str) {
        self.write_raw(format!("{line}\n").as_bytes());
    }

    /// Writes bytes exactly as given (CRLF, partial lines, garbage).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        let w = self.writer.get_or_insert_with(|| open_raw(&self.test_link));
        w.write_all(bytes).expect("write to pty");
        w.flush().unwrap();
    }

    /// Unplugs the adapter: both terminals disappear.
    pub fn unplug(&mut self) {
        self.writer = None;
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            if wait_child(&mut child, WAIT).is_none() {
                kill_and_reap(&mut child);
            }
        }
        let _ = fs::remove_file(&self.gw_link);
        let _ = fs::remove_file(&self.test_link);
    }

    /// Plugs an adapter in again at the same path.
    pub fn replug(&mut self) {
        assert!(self.child.is_none(), "replug of a plugged pty");
        self.spawn();
    }
}

/// Opens the test's side of a pty in raw mode, so that bytes pass
/// unchanged (no `\n` to `\r\n`).
fn open_raw(path: &Path) -> File {
    use std::os::fd::AsRawFd;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open pty test side");
    // SAFETY: termios calls on an fd we own, with a zeroed struct that
    // tcgetattr fills before use.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(
            libc::tcgetattr(f.as_raw_fd(), &mut t),
            0,
            "tcgetattr on pty"
        );
        libc::cfmakeraw(&mut t);
        assert_eq!(
            libc::tcsetattr(f.as_raw_fd(), libc::TCSANOW, &t),
            0,
            "tcsetattr on pty"
        );
    }
    f
}

impl Drop for Pty {
    fn drop(&mut self) {
        self.writer = None;
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}

// ---------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------

pub const BIN: &str = env!("CARGO_BIN_EXE_outpost");

const RUST_LOG: &str = "debug,sled=info,mio=info,rumqttc=info";

/// A running `outpost run`, killed on drop. Its stdout and stderr go to
/// `gateway-N.log` in its folder (one per run), printed when a test fails.
///
/// It runs with its working directory in a sub-folder, so paths in the
/// config must resolve against the config file's folder, not the cwd.
pub struct Gateway {
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    runs: usize,
    rust_log: String,
}

impl Gateway {
    /// Writes `outpost.toml` and `rules.toml` into `dir` and starts the gateway.
    pub fn start(dir: &Path, config: &str, rules: &str) -> Gateway {
        fs::write(dir.join("outpost.toml"), config).unwrap();
        fs::write(dir.join("rules.toml"), rules).unwrap();
        Gateway::start_with_log(dir, config, rules, RUST_LOG)
    }

    /// Like `start`, with this `RUST_LOG` (e.g. "trace", to show that even
    /// the most verbose log holds no secret).
    pub fn start_with_log(dir: &Path, config: &str, rules: &str, rust_log: &str) -> Gateway {
        fs::write(dir.join("outpost.toml"), config).unwrap();
        fs::write(dir.join("rules.toml"), rules).unwrap();
        let mut g = Gateway {
            dir: dir.to_path_buf(),
            config: dir.join("outpost.toml"),
            child: None,
            runs: 0,
            rust_log: rust_log.to_string(),
        };
        g.spawn();
        g
    }

    /// Replaces `outpost.toml` (takes effect at the next `restart`).
    pub fn rewrite_config(&self, config: &str) {
        fs::write(&self.config, config).unwrap();
    }

    /// Waits until the log of the current run has a line containing
    /// `needle`, and returns it. Panics after `timeout`.
    pub fn wait_log(&mut self, timeout: Duration, needle: &str) -> String {
        let path = self.log_path(self.runs);
        let deadline = Instant::now() + timeout;
        loop {
            let text = fs::read_to_string(&path).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if Instant::now() >= deadline {
                panic!("the gateway did not log {needle:?} within {timeout:?}");
            }
            self.assert_running();
            thread::sleep(POLL);
        }
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let cwd = self.dir.join("cwd");
        fs::create_dir_all(&cwd).unwrap();
        let log = File::create(self.log_path(self.runs)).unwrap();
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .current_dir(&cwd)
            .env("RUST_LOG", &self.rust_log)
            .env_remove("OUTPOST_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn outpost");
        self.child = Some(child);
    }

    fn log_path(&self, run: usize) -> PathBuf {
        self.dir.join(format!("gateway-{run}.log"))
    }

    /// Starts the gateway again with the same config and state dir.
    pub fn restart(&mut self) {
        if let Some(child) = self.child.as_mut() {
            assert!(
                child.try_wait().unwrap().is_some(),
                "restart of a gateway that still runs"
            );
        }
        self.child = None;
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway not running").id()
    }

    pub fn sigterm(&self) {
        signal(
            self.child.as_ref().expect("gateway not running"),
            libc::SIGTERM,
        );
    }

    pub fn sighup(&self) {
        signal(
            self.child.as_ref().expect("gateway not running"),
            libc::SIGHUP,
        );
    }

    /// kill -9, and reap it.
    pub fn kill9(&mut self) {
        let child = self.child.as_mut().expect("gateway not running");
        signal(child, libc::SIGKILL);
        child.wait().unwrap();
    }

    /// Waits for the gateway to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("gateway not running");
        wait_child(child, timeout)
            .unwrap_or_else(|| panic!("gateway did not exit within {timeout:?}"))
    }

    /// Panics if the gateway has exited.
    pub fn assert_running(&mut self) {
        let st = self
            .child
            .as_mut()
            .expect("gateway not started")
            .try_wait()
            .unwrap();
        if let Some(st) = st {
            panic!("gateway exited ({st}) but should be running");
        }
    }

    /// Asserts the gateway keeps running for `d` (e.g. while a broker is down).
    pub fn assert_running_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            self.assert_running();
            thread::sleep(POLL);
        }
        self.assert_running();
    }

    /// Waits until the gateway's process has `device` open (via /proc/PID/fd).
    pub fn wait_open(&mut self, device: &Path, timeout: Duration) {
        let fd_dir = PathBuf::from(format!("/proc/{}/fd", self.pid()));
        let device = device.to_path_buf();
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            let open = fs::read_dir(&fd_dir)
                .map(|rd| {
                    rd.flatten()
                        .any(|e| fs::read_link(e.path()).ok().as_deref() == Some(&device))
                })
                .unwrap_or(false);
            if open {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "gateway did not open {} within {timeout:?}",
                    device.display()
                );
            }
            thread::sleep(POLL);
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Everything the gateway logged, all runs.
    pub fn log(&self) -> String {
        let mut s = String::new();
        for run in 1..=self.runs {
            s.push_str(&format!("==== gateway run {run} ====\n"));
            s.push_str(&fs::read_to_string(self.log_path(run)).unwrap_or_default());
        }
        s
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
        if thread::panicking() {
            eprintln!("---- outpost log (tail) ----\n{}", tail(&self.log(), 150));
        }
    }
}

/// What a one-shot `outpost` command did.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `outpost ARGS...` in `cwd` to completion (at most 20 s).
pub fn run_outpost(cwd: &Path, args: &[&str]) -> Output {
    let out = cwd.join(format!(".cmd-{}.out", unique_suffix()));
    let err = cwd.join(format!(".cmd-{}.err", unique_suffix()));
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "info")
        .env_remove("OUTPOST_CONFIG")
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .expect("spawn outpost");
    let status = wait_child(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
        kill_and_reap(&mut child);
        panic!("outpost {args:?} did not finish within 20 s");
    });
    let o = Output {
        code: status.code(),
        stdout: fs::read_to_string(&out).unwrap_or_default(),
        stderr: fs::read_to_string(&err).unwrap_or_default(),
    };
    let _ = fs::remove_file(out);
    let _ = fs::remove_file(err);
    o
}

// ---------------------------------------------------------------------------
// Configs and alerts
// ---------------------------------------------------------------------------

/// Builds an `outpost.toml` for a test: no simulated sensors, no HTTP,
/// `flush = "always"`, state in `state/` beside the config.
pub struct Config {
    pub id: String,
    pub upstream: String,
    pub extra_upstream: String,
    pub serial: Vec<String>,
    pub mqtt: Vec<String>,
    /// More sections, written last (`[homeassistant]\n...`).
    pub extra_sections: String,
}

impl Config {
    pub fn new(upstream_url: &str) -> Config {
        Config {
            id: "test-gw".into(),
            upstream: upstream_url.into(),
            extra_upstream: String::new(),
            serial: vec![],
            mqtt: vec![],
            extra_sections: String::new(),
        }
    }

    pub fn serial(mut self, name: &str, path: &Path, format: &str, sensor: &str) -> Config {
        self.serial.push(format!(
            "[[serial]]\nname = \"{name}\"\npath = \"{}\"\nbaud = 115200\nformat = \"{format}\"\nsensor = \"{sensor}\"\n",
            path.display()
        ));
        self
    }

    pub fn mqtt(mut self, name: &str, url: &str, topics: &[&str]) -> Config {
        let topics: Vec<String> = topics.iter().map(|t| format!("\"{t}\"")).collect();
        self.mqtt.push(format!(
            "[[mqtt]]\nname = \"{name}\"\nurl = \"{url}\"\ntopics = [{}]\nformat = \"json\"\n",
            topics.join(", ")
        ));
        self
    }

    pub fn toml(&self) -> String {
        let mut s = format!(
            "[gateway]\nid = \"{}\"\nstate_dir = \"state\"\nrules = [\"rules.toml\"]\n\n\
             [upstream]\nurl = \"{}\"\nkeep_alive = \"5s\"\n{}\n\
             [outbox]\nflush = \"always\"\n\n\
             [http]\nlisten = \"\"\n\n",
            self.id, self.upstream, self.extra_upstream
        );
        for s2 in self.serial.iter().chain(&self.mqtt) {
            s.push_str(s2);
            s.push('\n');
        }
        s.push_str(&self.extra_sections);
        s
    }
}

/// The rule most tests use: `hot` fires above 30 and resolves below 28.
pub const HOT_RULE: &str = r#"[[rule]]
id = "hot"
sensor = "*"
metric = "temperature"
above = 30.0
clear = 28.0
severity = "critical"
message = "{sensor} is {value}"
labels = { room = "lab" }
"#;

/// Is `s` an RFC 3339 UTC time with exactly millisecond precision and `Z`
/// (`2026-11-26T10:00:00.123Z`)? Returns it parsed.
pub fn parse_ts_millis_z(s: &str) -> Option<time::OffsetDateTime> {
    let b = s.as_bytes();
    let shape = "dddd-dd-ddTdd:dd:dd.dddZ";
    if b.len() != shape.len() {
        return None;
    }
    for (c, p) in b.iter().zip(shape.bytes()) {
        let ok = if p == b'd' {
            c.is_ascii_digit()
        } else {
            *c == p
        };
        if !ok {
            return None;
        }
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// The alerts among `msgs` (payloads on `.../alerts/...`), duplicates by
/// `id` removed (first delivery kept), in arrival order.
pub fn dedup_alerts(msgs: &[Msg]) -> Vec<Value> {
    let mut ids = HashSet::new();
    let mut out = Vec::new();
    for m in msgs.iter().filter(|m| m.topic.contains("/alerts/")) {
        let v = m.json();
        if ids.insert(v["id"].as_str().unwrap_or_default().to_string()) {
            out.push(v);
        }
    }
    out
}

/// Repeats `action` every `every` until `cond` returns `Some` or `timeout`
/// passes. For inputs that are idempotent for the gateway (a reading
/// repeated while a rule fires alerts once), this covers the moment before
/// the gateway has opened its port or subscribed, without guessing a delay.
pub fn retry_until<T>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut action: impl FnMut(),
    mut cond: impl FnMut(Duration) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        action();
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(v) = cond(every.min(left)) {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?}: {what}");
        }
    }
}

// ---------------------------------------------------------------------------
// Certificates and password files
// ---------------------------------------------------------------------------

/// Certificates made at test time with the `openssl` command: a test CA, a
/// broker certificate for `localhost` signed by it, client certificates
/// signed by it (an RSA one whose key is PKCS#1 and, converted, PKCS#8, and
/// an EC one whose key is SEC1), and a second CA that signed nothing of ours.
/// Made once per test binary, in Cargo's per-target temporary folder.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// RSA client certificate; its key as PKCS#1 and as PKCS#8.
    pub client_rsa: PathBuf,
    pub client_rsa_pkcs1: PathBuf,
    pub client_rsa_pkcs8: PathBuf,
    /// EC (P-256) client certificate and its SEC1 key.
    pub client_ec: PathBuf,
    pub client_ec_sec1: PathBuf,
}

impl Pki {
    /// The certificates, made on first use.
    pub fn get() -> &'static Pki {
        static PKI: std::sync::OnceLock<Pki> = std::sync::OnceLock::new();
        PKI.get_or_init(Pki::generate)
    }

    fn generate() -> Pki {
        let dir =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pki-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let p = |n: &str| dir.join(n);
        for (name, cn) in [("ca", "outpost test CA"), ("other-ca", "some other CA")] {
            let (key, pem, subj) = (
                format!("{name}.key"),
                format!("{name}.pem"),
                format!("/CN={cn}"),
            );
            openssl(
                &dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    &key,
                    "-out",
                    &pem,
                    "-days",
                    "30",
                    "-subj",
                    &subj,
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
        }
        let ec_key = |out: &str| {
            openssl(
                &dir,
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    out,
                ],
            )
        };
        ec_key("server.key");
        ec_key("client-ec.sec1.key");
        openssl(
            &dir,
            &[
                "genrsa",
                "-traditional",
                "-out",
                "client-rsa.pkcs1.key",
                "2048",
            ],
        );
        openssl(
            &dir,
            &[
                "pkcs8",
                "-topk8",
                "-nocrypt",
                "-in",
                "client-rsa.pkcs1.key",
                "-out",
                "client-rsa.pkcs8.key",
            ],
        );
        fs::write(
            p("server.ext"),
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        fs::write(p("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (key, out, cn, ext) in [
            ("server.key", "server.pem", "localhost", "server.ext"),
            (
                "client-rsa.pkcs1.key",
                "client-rsa.pem",
                "outpost-rsa",
                "client.ext",
            ),
            (
                "client-ec.sec1.key",
                "client-ec.pem",
                "outpost-ec",
                "client.ext",
            ),
        ] {
            let (csr, subj) = (format!("{out}.csr"), format!("/CN={cn}"));
            openssl(
                &dir,
                &["req", "-new", "-key", key, "-out", &csr, "-subj", &subj],
            );
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    out,
                    "-days",
                    "30",
                    "-extfile",
                    ext,
                ],
            );
        }
        // Client keys as a careful user keeps them.
        use std::os::unix::fs::PermissionsExt;
        for k in [
            "client-rsa.pkcs1.key",
            "client-rsa.pkcs8.key",
            "client-ec.sec1.key",
        ] {
            fs::set_permissions(p(k), fs::Permissions::from_mode(0o600)).unwrap();
        }
        let pki = Pki {
            ca: p("ca.pem"),
            other_ca: p("other-ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_rsa: p("client-rsa.pem"),
            client_rsa_pkcs1: p("client-rsa.pkcs1.key"),
            client_rsa_pkcs8: p("client-rsa.pkcs8.key"),
            client_ec: p("client-ec.pem"),
            client_ec_sec1: p("client-ec.sec1.key"),
            dir,
        };
        // The key formats are what the tests claim they are.
        for (key, first) in [
            (&pki.client_rsa_pkcs1, "-----BEGIN RSA PRIVATE KEY-----"),
            (&pki.client_rsa_pkcs8, "-----BEGIN PRIVATE KEY-----"),
            (&pki.client_ec_sec1, "-----BEGIN EC PRIVATE KEY-----"),
        ] {
            let text = fs::read_to_string(key).unwrap();
            assert_eq!(text.lines().next(), Some(first), "{}", key.display());
        }
        pki
    }

    /// A TLS listener with this PKI's broker certificate (for `localhost`).
    pub fn listener(&self, require_certificate: bool) -> TlsListener {
        TlsListener {
            ca: self.ca.clone(),
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
            require_certificate,
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let bin = find_program("openssl", &["/usr/bin/openssl"])
        .unwrap_or_else(|| panic!("openssl not found: `apt-get install openssl`"));
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Mosquitto password file `dir/mosquitto.passwd` with one user, made by
/// `mosquitto_passwd -b` (the password is stored hashed).
pub fn password_file(dir: &Path, user: &str, password: &str) -> PathBuf {
    let bin = find_program(
        "mosquitto_passwd",
        &["/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd"],
    )
    .unwrap_or_else(|| panic!("mosquitto_passwd not found: `apt-get install mosquitto`"));
    let path = dir.join("mosquitto.passwd");
    fs::write(&path, "").unwrap();
    let out = Command::new(bin)
        .arg("-b")
        .arg(&path)
        .arg(user)
        .arg(password)
        .output()
        .expect("run mosquitto_passwd");
    assert!(
        out.status.success(),
        "mosquitto_passwd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

// ---------------------------------------------------------------------------
// Test folders, readings and alerts
// ---------------------------------------------------------------------------

/// A test's folder; kept (and its path printed) when `OUTPOST_E2E_KEEP` is
/// set, to read the gateway's and the brokers' logs after a run.
pub fn tempdir() -> tempfile::TempDir {
    let keep = std::env::var_os("OUTPOST_E2E_KEEP").is_some();
    let dir = tempfile::Builder::new()
        .prefix("outpost-e2e")
        .disable_cleanup(keep)
        .tempdir()
        .unwrap();
    if keep {
        eprintln!("test folder kept: {}", dir.path().display());
    }
    dir
}

pub fn reading(sensor: &str, temperature: f64) -> String {
    json!({ "sensor": sensor, "temperature": temperature }).to_string()
}

/// Writes `line` to `pty` until an alert matching `pred` arrives at `sub`.
///
/// Repeating a reading is harmless: a rule alerts on transitions, not per
/// reading. It covers the gateway opening the port a moment late.
pub fn serial_until(
    pty: &mut Pty,
    sub: &mut Subscriber,
    line: &str,
    what: &str,
    pred: impl Fn(&Msg) -> bool,
) -> Msg {
    retry_until(
        WAIT,
        Duration::from_millis(500),
        what,
        || pty.write_line(line),
        |t| sub.try_wait_for(t, |m| pred(m)),
    )
}

pub fn alert_is(m: &Msg, sensor: &str, state: &str) -> bool {
    m.topic.contains("/alerts/")
        && serde_json::from_slice::<Value>(&m.payload)
            .map(|v| v["sensor"] == sensor && v["state"] == state)
            .unwrap_or(false)
}
