//! The gateways under test, as processes: outpost (the real binary with a
//! real config) and Node-RED (with a flow doing the same job), plus what
//! /proc says about them.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::process::{find_program, free_port};
use crate::workload::{ABOVE, CLEAR};

#[derive(Clone, Debug)]
pub enum Kind {
    /// `flush` is `outbox.flush` ("always" for the benchmark).
    /// `rust_log`, when set, is outpost's `RUST_LOG` (default: its own `info`).
    Outpost {
        bin: PathBuf,
        flush: String,
        rust_log: Option<String>,
    },
    NodeRed {
        dir: PathBuf,
    },
}

impl Kind {
    /// (label, where its alerts arrive upstream, its retained status topic
    /// (`online` once connected), its client id on the local broker (ready
    /// once subscribed there)).
    fn names(&self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Kind::Outpost { .. } => (
                "outpost",
                "outpost/bench/alerts/#",
                "outpost/bench/status",
                "outpost-bench-local",
            ),
            Kind::NodeRed { .. } => (
                "Node-RED",
                "nodered/bench/alerts/#",
                "nodered/bench/status",
                "nodered-bench-local",
            ),
        }
    }

    pub fn label(&self) -> &'static str {
        self.names().0
    }

    pub fn alerts_filter(&self) -> &'static str {
        self.names().1
    }

    pub fn status_topic(&self) -> &'static str {
        self.names().2
    }

    pub fn local_client(&self) -> &'static str {
        self.names().3
    }
}

pub struct Gateway {
    child: Child,
    dir: tempfile::TempDir,
    pub spawned: Instant,
    http_port: Option<u16>,
    /// How to start this gateway again in its folder (outpost only).
    again: Option<(PathBuf, Option<String>)>,
    /// The threads copying its output into `gateway.log`.
    copiers: Vec<std::thread::JoinHandle<()>>,
}

pub struct Stopped {
    /// outpost's "outpost stopped waiting=N": alerts still in the outbox.
    pub waiting: Option<u64>,
    pub clean: bool,
}

/// The threshold-with-hysteresis rule, per sensor, in a Node-RED function node.
const NODE_RED_FUNCTION: &str = r#"
const sensor = msg.topic;
const v = msg.payload && msg.payload.temperature;
if (typeof v !== 'number' || !isFinite(v)) { return null; }
const firing = context.get(sensor) === true;
let state = null;
if (!firing && v > ABOVE) { state = 'firing'; }
else if (firing && v <= CLEAR) { state = 'resolved'; }
if (state === null) { return null; }
context.set(sensor, state === 'firing');
const seq = (context.get('$seq') || 0) + 1;
context.set('$seq', seq);
return {
  topic: 'nodered/bench/alerts/bench-hot/' + sensor,
  payload: JSON.stringify({
    id: 'nodered-bench-' + seq, seq: seq, gateway: 'nodered-bench', rule: 'bench-hot',
    sensor: sensor, metric: 'temperature', state: state, severity: 'warning',
    value: v, threshold: ABOVE, ts: new Date().toISOString(),
    message: sensor + ' temperature is ' + v + ', above ' + ABOVE
  })
};
"#;

impl Gateway {
    /// Starts a gateway. outpost's HTTP port is picked free, then bound by
    /// outpost: when someone took it meanwhile (outpost logs that it cannot
    /// listen), it starts again on another.
    pub fn start(kind: &Kind, local_port: u16, up_port: u16) -> Result<Gateway, String> {
        let mut taken = Vec::new();
        for _ in 0..5 {
            let mut gw = Gateway::start_once(kind, local_port, up_port)?;
            match gw.http_listening() {
                Ok(()) => return Ok(gw),
                Err(e) => taken.push(e),
            }
        }
        Err(format!(
            "{} found no free HTTP port: {}",
            kind.label(),
            taken.join("; ")
        ))
    }

    /// Waits for outpost to log that its HTTP endpoint listens; `Err` when
    /// it says the port is taken. (Anything else, a gateway that never gets
    /// ready, is for the caller's readiness wait to report.)
    fn http_listening(&mut self) -> Result<(), String> {
        let Some(port) = self.http_port else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = self.log();
            if log.contains("HTTP: /metrics") {
                return Ok(());
            }
            if log.contains("cannot listen for HTTP") {
                return Err(format!("port {port} was taken"));
            }
            if self.exited() || Instant::now() >= deadline {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn start_once(kind: &Kind, local_port: u16, up_port: u16) -> Result<Gateway, String> {
        let dir = tempfile::Builder::new()
            .prefix("outpost-bench-gw-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let d = dir.path();
        let log = File::create(d.join("gateway.log")).map_err(|e| e.to_string())?;
        let (mut cmd, http_port) = match kind {
            Kind::Outpost {
                bin,
                flush,
                rust_log,
            } => {
                let http = free_port()?;
                write(
                    &d.join("outpost.toml"),
                    &format!(
                        "[gateway]\nid = \"bench\"\nstate_dir = \"state\"\nrules = [\"rules.toml\"]\n\n\
                         [upstream]\nurl = \"mqtt://127.0.0.1:{up_port}\"\nkeep_alive = \"30s\"\n\n\
                         [outbox]\nflush = \"{flush}\"\n\n\
                         [http]\nlisten = \"127.0.0.1:{http}\"\n\n\
                         [[mqtt]]\nname = \"local\"\nurl = \"mqtt://127.0.0.1:{local_port}\"\n\
                         topics = [\"bench/+\"]\nformat = \"json\"\nsensor = \"{{topic}}\"\n"
                    ),
                )?;
                write(
                    &d.join("rules.toml"),
                    &format!(
                        "[[rule]]\nid = \"bench-hot\"\nsensor = \"bench/*\"\nmetric = \"temperature\"\n\
                         above = {ABOVE:.1}\nclear = {CLEAR:.1}\nseverity = \"warning\"\n"
                    ),
                )?;
                (outpost_command(bin, d, rust_log.as_deref()), Some(http))
            }
            Kind::NodeRed { dir: install } => {
                let red = install.join("node_modules/node-red/red.js");
                if !red.is_file() {
                    return Err(format!(
                        "Node-RED not installed: {} is missing",
                        red.display()
                    ));
                }
                let node = find_program("node", &[])
                    .ok_or_else(|| "node not found in PATH".to_string())?;
                let ui = free_port()?;
                write(&d.join("flows.json"), &node_red_flow(local_port, up_port))?;
                write(
                    &d.join("settings.js"),
                    &format!(
                        "module.exports = {{\n  uiHost: '127.0.0.1',\n  uiPort: {ui},\n  \
                         flowFile: 'flows.json',\n  credentialSecret: false,\n  \
                         httpAdminRoot: false,\n  \
                         logging: {{ console: {{ level: 'info', metrics: false, audit: false }} }},\n  \
                         diagnostics: {{ enabled: false, ui: false }},\n  \
                         runtimeState: {{ enabled: false, ui: false }},\n  \
                         telemetry: {{ enabled: false }},\n  \
                         editorTheme: {{ projects: {{ enabled: false }} }},\n}};\n"
                    ),
                )?;
                let mut cmd = Command::new(node);
                cmd.arg(red)
                    .arg("--settings")
                    .arg(d.join("settings.js"))
                    .arg("--userDir")
                    .arg(d);
                (cmd, None)
            }
        };
        let spawned = Instant::now();
        let (child, copiers) = spawn_logged(cmd.current_dir(d), log)
            .map_err(|e| format!("spawn {}: {e}", kind.label()))?;
        let again = match kind {
            Kind::Outpost { bin, rust_log, .. } => Some((bin.clone(), rust_log.clone())),
            Kind::NodeRed { .. } => None,
        };
        Ok(Gateway {
            child,
            dir,
            spawned,
            http_port,
            again,
            copiers,
        })
    }

    /// Stops outpost (SIGTERM) and starts it again on the same folder:
    /// the same outbox, config and HTTP port.
    pub fn restart(&mut self) -> Result<Stopped, String> {
        let (bin, rust_log) = self
            .again
            .clone()
            .ok_or_else(|| "only outpost restarts".to_string())?;
        let stopped = self.terminate();
        let d = self.dir.path();
        let log = fs::OpenOptions::new()
            .append(true)
            .open(d.join("gateway.log"))
            .map_err(|e| e.to_string())?;
        self.spawned = Instant::now();
        let (child, copiers) = spawn_logged(
            outpost_command(&bin, d, rust_log.as_deref()).current_dir(d),
            log,
        )
        .map_err(|e| format!("spawn outpost again: {e}"))?;
        self.child = child;
        self.copiers = copiers;
        Ok(stopped)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid())
    }

    /// Bytes this process caused to be written to storage (`/proc/PID/io`).
    pub fn written_bytes(&self) -> Option<u64> {
        written_bytes(self.pid())
    }

    /// An outpost metric's value from /metrics (the first sample named so).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let body = http_get(self.http_port?, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    pub fn peak_rss_kib(&self) -> Option<u64> {
        status_kib(self.pid(), "VmHWM:")
    }

    /// outpost's `outpost_outbox_depth` from /metrics, when it serves one.
    pub fn outbox_depth(&self) -> Option<u64> {
        self.metric("outpost_outbox_depth").map(|v| v as u64)
    }

    /// SIGTERM, then up to 15 s for a clean exit, then SIGKILL.
    pub fn stop(mut self) -> Stopped {
        self.terminate()
    }

    fn terminate(&mut self) -> Stopped {
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut clean = false;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    clean = st.success();
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its output has all reached the log once the pipes close.
        for c in self.copiers.drain(..) {
            let _ = c.join();
        }
        let waiting = self
            .log()
            .lines()
            .filter(|l| l.contains("outpost stopped"))
            .filter_map(|l| l.split("waiting=").nth(1))
            .filter_map(|v| v.split_whitespace().next()?.parse().ok())
            .next_back();
        Stopped { waiting, clean }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` with its stdout and stderr through a pipe that a thread of
/// this process copies into `log`, as journald takes a service's output:
/// the gateway's own disk writes (`/proc/PID/io`) are then its storage's,
/// not its log's.
fn spawn_logged(
    cmd: &mut Command,
    log: File,
) -> std::io::Result<(Child, Vec<std::thread::JoinHandle<()>>)> {
    let mut copiers = Vec::new();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    for out in [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let mut log = log.try_clone()?;
        copiers.push(std::thread::spawn(move || {
            let mut out = out;
            let _ = std::io::copy(&mut out, &mut log);
        }));
    }
    Ok((child, copiers))
}

fn outpost_command(bin: &Path, dir: &Path, rust_log: Option<&str>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg("--config")
        .arg(dir.join("outpost.toml"))
        .env_remove("RUST_LOG")
        .env_remove("OUTPOST_CONFIG");
    if let Some(l) = rust_log {
        cmd.env("RUST_LOG", l);
    }
    cmd
}

/// This disk's own cost of making one small write durable: `n` appends of
/// 4 KiB to a file in `dir`, each followed by `fdatasync`, as the outbox
/// commits an alert alone. Returns the sorted durations.
pub fn fsync_floor(dir: &Path, n: usize) -> Result<Vec<Duration>, String> {
    let t = tempfile::Builder::new()
        .prefix("outpost-bench-fsync-")
        .tempdir_in(dir)
        .map_err(|e| e.to_string())?;
    let mut f = File::create(t.path().join("f")).map_err(|e| e.to_string())?;
    let page = vec![0x5Au8; 4096];
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        f.write_all(&page).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        v.push(t0.elapsed());
    }
    v.sort();
    Ok(v)
}

/// Bytes a process caused to be written to storage so far.
pub fn written_bytes(pid: u32) -> Option<u64> {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn node_red_flow(local_port: u16, up_port: u16) -> String {
    let func = NODE_RED_FUNCTION
        .replace("ABOVE", &format!("{ABOVE:.1}"))
        .replace("CLEAR", &format!("{CLEAR:.1}"));
    let broker = |id: &str, name: &str, port: u16, client: &str, birth: bool| {
        let (topic, payload, will) = if birth {
            ("nodered/bench/status", "online", "offline")
        } else {
            ("", "", "")
        };
        json!({
            "id": id, "type": "mqtt-broker", "name": name,
            "broker": "127.0.0.1", "port": port.to_string(), "clientid": client,
            "autoConnect": true, "usetls": false, "protocolVersion": "4",
            "keepalive": "30", "cleansession": true, "autoUnsubscribe": true,
            "birthTopic": topic, "birthQos": "1", "birthRetain": "true", "birthPayload": payload, "birthMsg": {},
            "closeTopic": "", "closeQos": "0", "closePayload": "", "closeMsg": {},
            "willTopic": topic, "willQos": "1", "willRetain": "true", "willPayload": will, "willMsg": {},
            "userProps": "", "sessionExpiry": ""
        })
    };
    let flow = json!([
        {"id": "bench-tab", "type": "tab", "label": "outpost bench", "disabled": false},
        broker("bench-local", "local", local_port, "nodered-bench-local", false),
        broker("bench-up", "upstream", up_port, "nodered-bench-up", true),
        {"id": "bench-in", "type": "mqtt in", "z": "bench-tab", "name": "readings",
         "topic": "bench/+", "qos": "0", "datatype": "json", "broker": "bench-local",
         "nl": false, "rap": true, "rh": 0, "inputs": 0, "x": 100, "y": 100,
         "wires": [["bench-fn"]]},
        {"id": "bench-fn", "type": "function", "z": "bench-tab",
         "name": "threshold with hysteresis", "func": func, "outputs": 1,
         "timeout": 0, "noerr": 0, "initialize": "", "finalize": "", "libs": [],
         "x": 300, "y": 100, "wires": [["bench-out"]]},
        {"id": "bench-out", "type": "mqtt out", "z": "bench-tab", "name": "alerts",
         "topic": "", "qos": "1", "retain": "false", "respTopic": "", "contentType": "",
         "userProps": "", "correl": "", "expiry": "", "broker": "bench-up",
         "x": 500, "y": 100, "wires": []}
    ]);
    serde_json::to_string_pretty(&flow).unwrap_or_default()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.").then_some(body)
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 })
}

/// A `kB` line of /proc/PID/status (`VmHWM:`, `VmRSS:`).
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
