//! Mosquitto brokers on free ports of 127.0.0.1, each in its own
//! temporary folder, killed on drop.
//!
//! Shared with the end-to-end bench (`benches/e2e`), which includes this
//! file and `process.rs` by path: keep it free of the rest of the harness.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{find_program, free_port, kill_and_reap, port_accepts, run_tool, stop_child};

/// How long a broker may take to accept connections, or to stop.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A Mosquitto broker on 127.0.0.1:`port()`, killed on drop.
///
/// By default persistence is on (in its temporary folder), so a persistent
/// session (`clean_session = false`, like the harness's `Subscriber`) and
/// retained messages survive `stop()` + `start_again()`: a subscriber misses
/// nothing a gateway publishes right after the broker comes back.
pub struct Mosquitto {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    opts: MosquittoOpts,
    /// Ports of the extra listeners: TLS, then password.
    tls_port: u16,
    auth_port: u16,
}

/// What a broker needs beyond the plain anonymous listener every broker has.
#[derive(Clone, Default)]
pub struct MosquittoOpts {
    /// A TLS listener on `tls_port()`.
    pub tls: Option<TlsListener>,
    /// A listener on `auth_port()` that takes only the users of this
    /// password file (see `password_file`).
    pub password_file: Option<PathBuf>,
    /// An ACL file for the password listener (`acl_file`).
    pub acl_file: Option<PathBuf>,
    /// More global configuration lines (`max_packet_size 4096`, ...).
    pub extra: String,
    /// A benchmark's broker: no persistence, no per-message log lines, no
    /// queue limit (a slow subscriber is measured as slow rather than
    /// silently losing QoS 0 messages). The log keeps connections and
    /// subscriptions.
    pub quiet: bool,
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
    /// A broker with the plain listener only; panics when it cannot start.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(MosquittoOpts::default())
    }

    /// A broker with extra listeners or settings; panics when it cannot start.
    pub fn start_with(opts: MosquittoOpts) -> Mosquitto {
        Mosquitto::try_start(opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a broker, with a new set of free ports when one was taken
    /// between picking it and mosquitto's bind.
    pub fn try_start(opts: MosquittoOpts) -> Result<Mosquitto, String> {
        let keep = std::env::var_os("OUTPOST_E2E_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("outpost-mosq")
            .disable_cleanup(keep)
            .tempdir()
            .map_err(|e| format!("broker folder: {e}"))?;
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
            m.port = free_port()?;
            m.tls_port = free_port()?;
            m.auth_port = free_port()?;
            match m.spawn() {
                Ok(()) => return Ok(m),
                Err(e) => errors.push(e),
            }
        }
        Err(format!(
            "mosquitto did not start on any of 5 sets of free ports:\n{}",
            errors.join("\n")
        ))
    }

    fn binary() -> Result<PathBuf, String> {
        find_program("mosquitto", &["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]).ok_or_else(|| {
            "mosquitto not found (looked in /usr/sbin, /usr/bin and PATH): \
             run `./scripts/test`, or `apt-get install mosquitto mosquitto-clients socat`"
                .to_string()
        })
    }

    /// `mosquitto -h` prints its version on the first line.
    pub fn version() -> String {
        Mosquitto::binary()
            .ok()
            .and_then(|bin| Command::new(bin).arg("-h").output().ok())
            .and_then(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.lines().next().map(|l| l.trim().to_string())
            })
            .unwrap_or_else(|| "?".into())
    }

    fn config(&self) -> String {
        let d = self.dir.path().display();
        let mut conf = String::from("per_listener_settings true\n");
        conf.push_str(&if self.opts.quiet {
            format!(
                "persistence false\n\
                 log_dest file {d}/mosquitto.log\n\
                 log_type error\nlog_type warning\nlog_type notice\n\
                 log_type information\nlog_type subscribe\n\
                 max_queued_messages 0\nmax_queued_bytes 0\n"
            )
        } else {
            format!(
                "persistence true\n\
                 persistence_location {d}/\n\
                 persistence_file mosquitto.db\n\
                 log_dest file {d}/mosquitto.log\n\
                 log_type all\n\
                 max_queued_messages 1000000\n"
            )
        });
        conf.push_str(&format!(
            "{}\nlistener {} 127.0.0.1\nallow_anonymous true\n",
            self.opts.extra, self.port
        ));
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
            if let Some(acl) = &self.opts.acl_file {
                conf.push_str(&format!("acl_file {}\n", acl.display()));
            }
        }
        // Run as root (CI), mosquitto would switch to the `mosquitto` user,
        // which cannot write into our private temporary folder.
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } == 0 {
            conf.push_str("user root\n");
        }
        conf
    }

    fn spawn(&mut self) -> Result<(), String> {
        let d = self.dir.path();
        let conf_path = d.join("mosquitto.conf");
        fs::write(&conf_path, self.config()).map_err(|e| format!("broker config: {e}"))?;
        let stderr = File::create(d.join("mosquitto.stderr")).map_err(|e| e.to_string())?;
        let child = Command::new(Mosquitto::binary()?)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn mosquitto: {e}"))?;
        let child = self.child.insert(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
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
                // A broker that never listens is no port race: do not retry.
                panic!(
                    "mosquitto did not accept on port {} in {START_TIMEOUT:?}:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
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
            stop_child(&mut child, START_TIMEOUT);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while port_accepts(self.port) {
            assert!(
                Instant::now() < deadline,
                "the stopped broker's port {} still accepts",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the broker again on the same port with the same saved state.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again on a running broker");
        if let Err(e) = self.spawn() {
            panic!("restarting mosquitto on the same port failed: {e}");
        }
    }

    /// Mosquitto's log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// Mosquitto's log file and stderr.
    pub fn log(&self) -> String {
        let log = fs::read_to_string(self.log_file()).unwrap_or_default();
        let err = fs::read_to_string(self.dir.path().join("mosquitto.stderr")).unwrap_or_default();
        format!("{log}{err}")
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "---- {} :{} log (tail) ----\n{}",
                Mosquitto::version(),
                self.port,
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// A Mosquitto password file `dir/mosquitto.passwd` with one user, made by
/// `mosquitto_passwd -b` (the password is stored hashed).
pub fn password_file(dir: &std::path::Path, user: &str, password: &str) -> PathBuf {
    let path = dir.join("mosquitto.passwd");
    fs::write(&path, "").unwrap();
    let file = path.to_str().unwrap(); // a temporary folder's path: UTF-8
    run_tool(
        "mosquitto_passwd",
        &["/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd"],
        &["-b", file, user, password],
        dir,
    );
    path
}
