//! The `outpost` binary: the gateway as a process, and one-shot commands.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::process::{free_port, kill_and_reap, signal, wait_child};
use super::{POLL, WAIT, tail};

pub const BIN: &str = env!("CARGO_BIN_EXE_outpost");

const RUST_LOG: &str = "debug,sled=info,mio=info,rumqttc=info";

/// What the gateway logs once its HTTP endpoint listens, and when it cannot.
const HTTP_UP: &str = "HTTP: /metrics /healthz /status";
const HTTP_BIND_FAILED: &str = "cannot listen for HTTP";

/// How a gateway is started: its `RUST_LOG`, more environment, and
/// whether its HTTP endpoint is on.
pub struct Launch {
    rust_log: String,
    env: Vec<(String, String)>,
    http: bool,
}

impl Default for Launch {
    fn default() -> Launch {
        Launch {
            rust_log: RUST_LOG.into(),
            env: Vec::new(),
            http: false,
        }
    }
}

impl Launch {
    /// This `RUST_LOG` (e.g. "trace", to show that even the most verbose
    /// log holds no secret).
    pub fn rust_log(mut self, filter: &str) -> Launch {
        self.rust_log = filter.into();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The HTTP endpoint on a free port of 127.0.0.1 (`Gateway::http_port`):
    /// the config's `listen = ""` is replaced. A port taken by someone else
    /// between picking and binding it (the gateway logs that it cannot
    /// listen) is replaced by another, and the gateway started again.
    pub fn http(mut self) -> Launch {
        self.http = true;
        self
    }

    /// Writes `outpost.toml` and `rules.toml` into `dir` and starts the gateway.
    pub fn start(self, dir: &Path, config: &str, rules: &str) -> Gateway {
        fs::write(dir.join("rules.toml"), rules).unwrap();
        let mut g = Gateway {
            dir: dir.to_path_buf(),
            config: dir.join("outpost.toml"),
            template: config.to_string(),
            child: None,
            runs: 0,
            launch: self,
            http_port: None,
        };
        g.spawn();
        g
    }
}

/// A running `outpost run`, killed on drop. Its stdout and stderr go to
/// `gateway-N.log` in its folder (one per run), printed when a test fails.
///
/// It runs with its working directory in a sub-folder, so paths in the
/// config must resolve against the config file's folder, not the cwd.
pub struct Gateway {
    dir: PathBuf,
    config: PathBuf,
    /// The config as the test wrote it (before the HTTP port is filled in).
    template: String,
    child: Option<Child>,
    runs: usize,
    launch: Launch,
    http_port: Option<u16>,
}

impl Gateway {
    /// Writes `outpost.toml` and `rules.toml` into `dir` and starts the
    /// gateway with the default `Launch`.
    pub fn start(dir: &Path, config: &str, rules: &str) -> Gateway {
        Launch::default().start(dir, config, rules)
    }

    /// Replaces `outpost.toml` (takes effect at the next `restart`).
    pub fn rewrite_config(&mut self, config: &str) {
        self.template = config.to_string();
        self.write_config();
    }

    fn write_config(&self) {
        let text = match self.http_port {
            Some(port) => {
                assert!(
                    self.template.contains("listen = \"\""),
                    "Launch::http needs `listen = \"\"` in the config"
                );
                self.template
                    .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""))
            }
            None => self.template.clone(),
        };
        fs::write(&self.config, text).unwrap();
    }

    /// The port of the HTTP endpoint (`Launch::http`).
    pub fn http_port(&self) -> u16 {
        self.http_port.expect("the gateway runs without HTTP")
    }

    fn spawn(&mut self) {
        for _ in 0..5 {
            if self.launch.http && self.http_port.is_none() {
                self.http_port = Some(free_port().unwrap_or_else(|e| panic!("{e}")));
            }
            self.write_config();
            self.spawn_once();
            if !self.launch.http {
                return;
            }
            let line = self.wait_log_any(WAIT, &[HTTP_UP, HTTP_BIND_FAILED]);
            if line.contains(HTTP_UP) {
                return;
            }
            // Someone took the port: stop this run, try another port.
            self.http_port = None;
            if let Some(mut child) = self.child.take() {
                signal(&child, libc::SIGTERM);
                if wait_child(&mut child, WAIT).is_none() {
                    kill_and_reap(&mut child);
                }
            }
        }
        panic!("the gateway could not listen for HTTP on any of 5 free ports");
    }

    fn spawn_once(&mut self) {
        self.runs += 1;
        let cwd = self.dir.join("cwd");
        fs::create_dir_all(&cwd).unwrap();
        let log = File::create(self.log_path(self.runs)).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .current_dir(&cwd)
            .env("RUST_LOG", &self.launch.rust_log)
            .env_remove("OUTPOST_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.launch.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn outpost"));
    }

    fn log_path(&self, run: usize) -> PathBuf {
        self.dir.join(format!("gateway-{run}.log"))
    }

    /// The log of the current run.
    pub fn run_log(&self) -> String {
        fs::read_to_string(self.log_path(self.runs)).unwrap_or_default()
    }

    /// Waits until the log of the current run has a line containing
    /// `needle`, and returns it. Panics after `timeout`, or when the
    /// gateway exits first.
    pub fn wait_log(&mut self, timeout: Duration, needle: &str) -> String {
        self.wait_log_any(timeout, &[needle])
    }

    /// Like `wait_log`, for the first line containing any of `needles`.
    pub fn wait_log_any(&mut self, timeout: Duration, needles: &[&str]) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.run_log();
            if let Some(line) = text.lines().find(|l| needles.iter().any(|n| l.contains(n))) {
                return line.to_string();
            }
            if Instant::now() >= deadline {
                panic!("the gateway did not log any of {needles:?} within {timeout:?}");
            }
            self.assert_running();
            thread::sleep(POLL);
        }
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

    /// Waits until the gateway catches SIGTERM and SIGHUP (`SigCgt` in
    /// /proc/PID/status): a signal sent earlier, in the first moments after
    /// a start, would find the default action and kill it.
    fn wait_catches_signals(&mut self) {
        let want = (1u64 << (libc::SIGTERM - 1)) | (1u64 << (libc::SIGHUP - 1));
        let status = format!("/proc/{}/status", self.pid());
        let deadline = Instant::now() + WAIT;
        loop {
            self.assert_running();
            let caught = fs::read_to_string(&status)
                .ok()
                .and_then(|s| {
                    let hex = s.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
                    u64::from_str_radix(hex.trim(), 16).ok()
                })
                .unwrap_or(0);
            if caught & want == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not install its signal handlers within {WAIT:?}"
            );
            thread::sleep(POLL);
        }
    }

    pub fn sigterm(&mut self) {
        self.wait_catches_signals();
        signal(self.child.as_ref().unwrap(), libc::SIGTERM); // running: checked above
    }

    pub fn sighup(&mut self) {
        self.wait_catches_signals();
        signal(self.child.as_ref().unwrap(), libc::SIGHUP); // running: checked above
    }

    /// kill -9, and reap it.
    pub fn kill9(&mut self) {
        let child = self.child.as_mut().expect("gateway not running");
        signal(child, libc::SIGKILL);
        child.wait().unwrap();
    }

    /// SIGTERM, and the gateway must exit 0 within `WAIT`.
    pub fn stop(&mut self) {
        self.sigterm();
        let st = self.wait_exit(WAIT);
        assert_eq!(st.code(), Some(0), "SIGTERM must exit 0 ({st})");
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

    /// Waits until the gateway's process has `device` open (via /proc/PID/fd).
    pub fn wait_open(&mut self, device: &Path, timeout: Duration) {
        let fd_dir = PathBuf::from(format!("/proc/{}/fd", self.pid()));
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            let open = fs::read_dir(&fd_dir).is_ok_and(|rd| {
                rd.flatten()
                    .any(|e| fs::read_link(e.path()).ok().as_deref() == Some(device))
            });
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

    /// Everything the gateway logged, all runs.
    pub fn log(&self) -> String {
        let mut s = String::new();
        for run in 1..=self.runs {
            s.push_str(&format!("==== gateway run {run} ====\n"));
            s.push_str(&fs::read_to_string(self.log_path(run)).unwrap_or_default());
        }
        s
    }

    /// How many alerts the gateway has stored, all runs (it logs each one).
    pub fn alerts_created(&self) -> usize {
        self.log().matches(" alert id=").count()
    }

    /// Waits until the gateway has stored at least `n` alerts (all runs).
    pub fn wait_created(&mut self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.alerts_created() < n {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "the gateway stored {} alerts, not {n}, within {WAIT:?}",
                self.alerts_created()
            );
            thread::sleep(POLL);
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
        if thread::panicking() {
            let log = self.log();
            // A storm's alert lines would push these out of the tail.
            let notable: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .collect();
            eprintln!(
                "---- outpost warnings and errors ({}, the last 60) ----\n{}",
                notable.len(),
                notable[notable.len().saturating_sub(60)..].join("\n")
            );
            eprintln!("---- outpost log (tail) ----\n{}", tail(&log, 150));
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

    /// Asserts exit 2 (an invalid configuration) with each of `needles`
    /// in stderr.
    pub fn assert_invalid(&self, needles: &[&str]) {
        assert_eq!(self.code, Some(2), "{}", self.all());
        for n in needles {
            assert!(self.stderr.contains(n), "no {n:?} in:\n{}", self.all());
        }
    }
}

/// Writes `outpost.toml` and `rules.toml` into `dir` and runs
/// `outpost check --config DIR/outpost.toml` there.
pub fn check(dir: &Path, config: &str, rules: &str) -> Output {
    fs::write(dir.join("outpost.toml"), config).unwrap();
    fs::write(dir.join("rules.toml"), rules).unwrap();
    let path = dir.join("outpost.toml");
    run_outpost(dir, &["check", "--config", path.to_str().unwrap()])
}

/// Runs `outpost ARGS...` in `cwd` to completion (at most 20 s).
pub fn run_outpost(cwd: &Path, args: &[&str]) -> Output {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "info")
        .env_remove("OUTPOST_CONFIG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .expect("spawn outpost");
    let status = wait_child(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
        kill_and_reap(&mut child);
        panic!("outpost {args:?} did not finish within 20 s");
    });
    let read = |mut f: File| {
        use std::io::{Read, Seek};
        let mut bytes = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut bytes).unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Output {
        code: status.code(),
        stdout: read(out),
        stderr: read(err),
    }
}
