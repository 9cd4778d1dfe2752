//! A real RabbitMQ node with its MQTT plugin, for the tests of outpost's
//! upstream against it, and the two clients a RabbitMQ user would point at
//! it: an AMQP consumer on a durable queue bound to `amq.topic`, and an
//! MQTT subscriber that logs in as `vhost:user`.
//!
//! The node is the Debian package's (`apt-get install rabbitmq-server`, as
//! `scripts/test` does), never its system service: each `RabbitMq` runs its
//! own node as the current user, with a unique node name, on free ports
//! (AMQP, MQTT, Erlang distribution, and a private epmd so nothing touches
//! the machine's port 4369), and keeps its config, data, logs, cookie and
//! enabled plugins in a temporary folder. Everything it started is killed
//! on drop, and its log is printed when a test fails.
//!
//! Self-contained (std, libc, tempfile, rumqttc, amqprs, tokio): no other
//! harness module is needed.
#![allow(dead_code)]

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicQosArguments, QueueBindArguments,
    QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};

use super::{POLL, poll_until, port_accepts, tail, unique_suffix as unique};

/// How long a node may take to accept on its ports. A first boot spends
/// 3 to 6 s waiting for MQTT cluster peers that never come (the plugin's
/// client-id tracker), plus the VM's start; a loaded 2-core CI machine may
/// take several times longer.
pub const BOOT: Duration = Duration::from_secs(90);

/// Deadline of the smaller waits (a subscription, a message): longer than
/// the harness's, a node under load answers slowly.
pub const WAIT: Duration = Duration::from_secs(20);

/// Where Debian's package puts the scripts that run a node as the calling
/// user (`/usr/sbin/rabbitmq-server` would switch to the `rabbitmq` user).
const SCRIPTS: &str = "/usr/lib/rabbitmq/bin";

/// Sends `sig` to every process of the group `pgid` (a child started with
/// `process_group(0)`, so its pid is its group's id).
fn kill_group(pgid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals that process group, one
    // we created for a child. Called before the child is reaped, or right
    // after: a group outlives its leader while any member lives, and its id
    // is not given to another process meanwhile.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------
// The node
// ---------------------------------------------------------------------------

/// A RabbitMQ node with the MQTT plugin on 127.0.0.1, killed on drop.
///
/// `stop()` shuts it down cleanly (SIGTERM: RabbitMQ closes its listeners
/// and connections, then writes its queues), `start_again()` boots it with
/// the same name, ports and data, so durable queues, their persistent
/// messages, users, permissions and retained MQTT messages survive.
pub struct RabbitMq {
    dir: tempfile::TempDir,
    node: String,
    epmd_port: u16,
    amqp_port: u16,
    mqtt_port: u16,
    dist_port: u16,
    epmd: Option<Child>,
    child: Option<Child>,
    boots: Vec<Duration>,
}

impl RabbitMq {
    /// Boots a fresh node and waits until its AMQP and MQTT listeners accept.
    pub fn start() -> RabbitMq {
        let server = Path::new(SCRIPTS).join("rabbitmq-server");
        assert!(
            server.is_file(),
            "{} not found: run ./scripts/test, or `apt-get install rabbitmq-server`",
            server.display()
        );
        let keep = std::env::var_os("OUTPOST_E2E_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("outpost-rabbitmq")
            .disable_cleanup(keep)
            .tempdir()
            .expect("temporary folder");
        if keep {
            eprintln!("rabbitmq folder kept: {}", dir.path().display());
        }
        for sub in ["home", "data", "log"] {
            fs::create_dir_all(dir.path().join(sub)).expect("node folders");
        }
        fs::write(dir.path().join("enabled_plugins"), "[rabbitmq_mqtt].\n").expect("write");
        fs::write(dir.path().join("rabbitmq-env.conf"), "").expect("write");
        let mut r = RabbitMq {
            dir,
            node: String::new(),
            epmd_port: 0,
            amqp_port: 0,
            mqtt_port: 0,
            dist_port: 0,
            epmd: None,
            child: None,
            boots: Vec::new(),
        };
        let mut errors = Vec::new();
        for _ in 0..3 {
            // A fresh name, so a failed attempt's data is not reused.
            r.node = format!("outpost-test-{}@localhost", unique());
            r.epmd_port = super::free_port().expect("a free port");
            r.amqp_port = super::free_port().expect("a free port");
            r.mqtt_port = super::free_port().expect("a free port");
            r.dist_port = super::free_port().expect("a free port");
            match r.spawn() {
                Ok(()) => return r,
                // A port was taken between super::free_port().expect("a free port") and the node's bind.
                Err(e) => {
                    r.kill();
                    errors.push(e);
                }
            }
        }
        panic!(
            "rabbitmq did not start on any of 3 sets of free ports:\n{}",
            errors.join("\n")
        );
    }

    fn spawn(&mut self) -> Result<(), String> {
        let d = self.dir.path();
        // listeners.tcp.N replaces the default 0.0.0.0:5672 (and likewise
        // for MQTT's 1883), so nothing is bound outside loopback.
        fs::write(
            d.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.1 = 127.0.0.1:{}\n\
                 mqtt.listeners.tcp.1 = 127.0.0.1:{}\n\
                 log.console = false\n\
                 log.file.level = info\n",
                self.amqp_port, self.mqtt_port
            ),
        )
        .expect("write rabbitmq.conf");
        if self.epmd.is_none() {
            // Our own epmd on a free port: the node registers there instead
            // of starting (or joining) the machine's daemon on 4369, which
            // would outlive the test.
            let epmd = Command::new("epmd")
                .arg("-port")
                .arg(self.epmd_port.to_string())
                .arg("-address")
                .arg("127.0.0.1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(d.join("epmd.log")).expect("epmd.log"))
                .process_group(0)
                .spawn()
                .map_err(|e| format!("cannot run epmd (erlang-base): {e}"))?;
            self.epmd = Some(epmd);
            poll_until(WAIT, "the private epmd to listen", || {
                port_accepts(self.epmd_port).then_some(())
            });
        }
        let started = Instant::now();
        let run = self.boots.len() + 1;
        let mut cmd = Command::new(Path::new(SCRIPTS).join("rabbitmq-server"));
        self.env(&mut cmd);
        cmd.current_dir(d)
            .stdin(Stdio::null())
            .stdout(File::create(d.join(format!("stdout-{run}.log"))).expect("stdout log"))
            .stderr(File::create(d.join(format!("stderr-{run}.log"))).expect("stderr log"))
            // Its own process group: the script, the Erlang VM and the VM's
            // helpers are stopped together.
            .process_group(0);
        self.child = Some(
            cmd.spawn()
                .map_err(|e| format!("spawn rabbitmq-server: {e}"))?,
        );
        let deadline = started + BOOT;
        loop {
            let child = self.child.as_mut().expect("just spawned");
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Err(format!(
                    "rabbitmq-server exited with {st} before accepting:\n{}",
                    tail(&self.log(), 30)
                ));
            }
            if port_accepts(self.amqp_port) && port_accepts(self.mqtt_port) {
                let took = started.elapsed();
                eprintln!(
                    "rabbitmq {} boot {run} ready in {:.1} s",
                    self.node,
                    took.as_secs_f64()
                );
                self.boots.push(took);
                return Ok(());
            }
            if Instant::now() >= deadline {
                panic!(
                    "rabbitmq did not accept on {} (AMQP) and {} (MQTT) within {BOOT:?}:\n{}",
                    self.amqp_port,
                    self.mqtt_port,
                    tail(&self.log(), 40)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// The environment of the node and of `rabbitmqctl` talking to it.
    fn env(&self, cmd: &mut Command) {
        let d = self.dir.path();
        // Whatever the calling shell set for another node does not apply.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("RABBITMQ_") || k.starts_with("ERL_") {
                cmd.env_remove(&*k);
            }
        }
        cmd.env("HOME", d.join("home")) // the Erlang cookie is made here
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            // Nothing from /etc/rabbitmq: no conf.d, no advanced.config.
            .env("RABBITMQ_CONFIG_FILES", d.join("conf.d/*.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", d.join("data"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("rabbitmq.pid"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", d.join("plugins-expand"))
            // Distribution (the node's, and rabbitmqctl's) on loopback only.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env(
                "RABBITMQ_CTL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            );
    }

    pub fn amqp_port(&self) -> u16 {
        self.amqp_port
    }

    pub fn mqtt_port(&self) -> u16 {
        self.mqtt_port
    }

    pub fn mqtt_url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.mqtt_port)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// How long each boot took until both listeners accepted.
    pub fn boot_times(&self) -> &[Duration] {
        &self.boots
    }

    /// Runs `rabbitmqctl ARGS...` against this node; panics with its output
    /// when it fails. Returns stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(Path::new(SCRIPTS).join("rabbitmqctl"));
        self.env(&mut cmd);
        let out = cmd
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run rabbitmqctl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Stops the node cleanly (SIGTERM) and waits until it has exited and
    /// both ports are closed.
    pub fn stop(&mut self) {
        let mut child = self
            .child
            .take()
            .expect("stop of a node that is not running");
        // The start script traps SIGTERM and stops the VM gracefully.
        // SAFETY: kill(2) on our unreaped child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        if !wait_exit(&mut child, BOOT) {
            kill_group(child.id(), libc::SIGKILL);
            let _ = child.wait();
            panic!("rabbitmq did not stop within {BOOT:?} of SIGTERM");
        }
        // Helpers of the VM (erl_child_setup, inet_gethost) go with it.
        kill_group(child.id(), libc::SIGKILL);
        poll_until(WAIT, "the stopped node's ports to close", || {
            (!port_accepts(self.amqp_port) && !port_accepts(self.mqtt_port)).then_some(())
        });
    }

    /// Boots the stopped node again: same name, ports and data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again on a running node");
        if let Err(e) = self.spawn() {
            panic!("restarting rabbitmq on the same ports failed: {e}");
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
        if let Some(mut epmd) = self.epmd.take() {
            let _ = epmd.kill();
            let _ = epmd.wait();
        }
    }

    /// The node's log, then the start script's output, every boot.
    pub fn log(&self) -> String {
        let d = self.dir.path();
        let node = self.node.clone();
        let mut s =
            fs::read_to_string(d.join("log").join(format!("{node}.log"))).unwrap_or_default();
        for run in 1..=self.boots.len() + 1 {
            for f in [format!("stdout-{run}.log"), format!("stderr-{run}.log")] {
                s.push_str(&fs::read_to_string(d.join(f)).unwrap_or_default());
            }
        }
        s
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "---- rabbitmq {} log (tail) ----\n{}",
                self.node,
                tail(&self.log(), 60)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// AMQP consumer
// ---------------------------------------------------------------------------

/// One message as the AMQP consumer received it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub exchange: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
    /// `delivery_mode` 2: written to disk in a durable queue.
    pub persistent: bool,
    pub redelivered: bool,
}

impl Delivery {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The payload as JSON; panics with the payload when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload with routing key {} is not JSON ({e}): {:?}",
                self.routing_key,
                self.text()
            )
        })
    }
}

/// Who the consumer logs in as, and where.
#[derive(Clone)]
pub struct AmqpLogin {
    pub vhost: String,
    pub user: String,
    pub password: String,
}

/// How many messages `queue` holds, ready for a consumer (a passive
/// `queue.declare` on a connection of its own); `None` while the broker or
/// the queue is not there.
pub fn queue_depth(port: u16, login: &AmqpLogin, queue: &str) -> Option<u32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let ask = async {
            let mut args =
                OpenConnectionArguments::new("127.0.0.1", port, &login.user, &login.password);
            args.virtual_host(&login.vhost);
            let conn = Connection::open(&args).await.ok()?;
            let ch = conn.open_channel(None).await.ok()?;
            let mut declare = QueueDeclareArguments::new(queue);
            declare.passive(true);
            let depth = ch.queue_declare(declare).await.ok()?.map(|(_, n, _)| n);
            let _ = ch.close().await;
            let _ = conn.close().await;
            depth
        };
        tokio::time::timeout(Duration::from_secs(5), ask)
            .await
            .ok()
            .flatten()
    })
}

/// An AMQP consumer as a back end runs one: it declares a durable queue,
/// binds it to `amq.topic` with a routing-key pattern, and consumes it
/// with manual acks (each message is acked once handed to the test). When
/// the broker goes away it reconnects by itself and consumes on, so what
/// the queue kept across a restart still arrives, and what was delivered
/// but not yet acked arrives again (`redelivered`).
pub struct AmqpConsumer {
    rx: Receiver<Delivery>,
    seen: Vec<Delivery>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    what: String,
}

impl AmqpConsumer {
    /// Returns once the queue is declared, bound and consumed.
    pub fn bind(port: u16, login: &AmqpLogin, queue: &str, binding: &str) -> AmqpConsumer {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (login, q, b, s) = (
            login.clone(),
            queue.to_string(),
            binding.to_string(),
            stop.clone(),
        );
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime for the AMQP consumer");
            rt.block_on(consume(port, login, q, b, s, tx, ready_tx));
        });
        let what = format!("AMQP queue {queue} (bound with {binding})");
        match ready_rx.recv_timeout(WAIT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{what}: {e}"),
            Err(_) => panic!("{what}: not consuming within {WAIT:?}"),
        }
        AmqpConsumer {
            rx,
            seen: Vec::new(),
            stop,
            thread: Some(thread),
            what,
        }
    }

    /// Every message received so far, in arrival order.
    pub fn messages(&mut self) -> &[Delivery] {
        while let Ok(m) = self.rx.try_recv() {
            self.seen.push(m);
        }
        &self.seen
    }

    /// Polls `cond` over everything received so far until it returns
    /// `Some`; panics after `timeout` listing what did arrive.
    pub fn wait_until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&[Delivery]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            self.messages();
            if let Some(v) = cond(&self.seen) {
                return v;
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what} on {}; received:\n{}",
                    self.what,
                    self.dump()
                );
            }
            match self.rx.recv_timeout(deadline - now) {
                Ok(m) => self.seen.push(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{}: consumer thread ended", self.what)
                }
            }
        }
    }

    /// Disconnects, as a consumer that goes away does, and returns every
    /// message received, in arrival order: each message this consumer acked
    /// is in it (what it had not acked goes back to the queue).
    pub fn close(mut self) -> Vec<Delivery> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.messages();
        std::mem::take(&mut self.seen)
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        for m in &self.seen {
            s.push_str(&format!(
                "  {} {} (redelivered={}) {}\n",
                m.exchange,
                m.routing_key,
                m.redelivered,
                m.text()
            ));
        }
        if s.is_empty() {
            s.push_str("  (nothing)\n");
        }
        s
    }
}

impl Drop for AmqpConsumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if thread::panicking() {
            eprintln!("---- {} received ----\n{}", self.what, self.dump());
        }
    }
}

/// The consumer's loop: connect, declare, bind, consume until the
/// connection is lost, then again (every 200 ms) until told to stop.
async fn consume(
    port: u16,
    login: AmqpLogin,
    queue: String,
    binding: String,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<Delivery>,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let session = async {
            let mut args =
                OpenConnectionArguments::new("127.0.0.1", port, &login.user, &login.password);
            args.virtual_host(&login.vhost);
            let conn = Connection::open(&args).await.map_err(|e| e.to_string())?;
            let ch = conn.open_channel(None).await.map_err(|e| e.to_string())?;
            ch.queue_declare(QueueDeclareArguments::durable_client_named(&queue))
                .await
                .map_err(|e| format!("queue.declare {queue}: {e}"))?;
            ch.queue_bind(QueueBindArguments::new(&queue, "amq.topic", &binding))
                .await
                .map_err(|e| format!("queue.bind {queue} amq.topic {binding}: {e}"))?;
            ch.basic_qos(BasicQosArguments::new(0, 100, false))
                .await
                .map_err(|e| e.to_string())?;
            let (_tag, rx) = ch
                .basic_consume_rx(
                    BasicConsumeArguments::new(&queue, "outpost-test")
                        .manual_ack(true)
                        .finish(),
                )
                .await
                .map_err(|e| format!("basic.consume {queue}: {e}"))?;
            Ok::<_, String>((conn, ch, rx))
        };
        let session = match tokio::time::timeout(Duration::from_secs(5), session).await {
            Ok(r) => r,
            Err(_) => Err("no answer within 5 s".to_string()),
        };
        let (conn, ch, mut rx) = match session {
            Ok(s) => s,
            Err(e) => {
                if first {
                    // A refused login or permission is the test's failure,
                    // not a broker that is still coming back.
                    let _ = ready.send(Err(e));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if first {
            first = false;
            let _ = ready.send(Ok(()));
        }
        while !stop.load(Ordering::Relaxed) && conn.is_open() && ch.is_open() {
            let msg = match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                Err(_) => continue,
                Ok(None) => break,
                Ok(Some(m)) => m,
            };
            let (Some(deliver), Some(content)) = (msg.deliver, msg.content) else {
                continue;
            };
            let props = msg.basic_properties.unwrap_or_default();
            let d = Delivery {
                exchange: deliver.exchange().to_string(),
                routing_key: deliver.routing_key().to_string(),
                payload: content,
                persistent: props.delivery_mode() == Some(2),
                redelivered: deliver.redelivered(),
            };
            if tx.send(d).is_err() {
                return;
            }
            // Acked only once handed over: a connection lost in between
            // brings it again, as it would to a real back end.
            let _ = ch
                .basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false))
                .await;
        }
        if stop.load(Ordering::Relaxed) {
            let _ = ch.close().await;
            let _ = conn.close().await;
        }
    }
}
