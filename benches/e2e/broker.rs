//! Mosquitto brokers for the benchmark: one per role, on a free port of
//! 127.0.0.1, in a temporary folder, killed on drop.

use std::fs::{self, File};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

pub fn port_accepts(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

pub fn find_program(name: &str, well_known: &[&str]) -> Option<PathBuf> {
    if let Some(p) = well_known.iter().map(Path::new).find(|p| p.is_file()) {
        return Some(p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

pub fn mosquitto_binary() -> Result<PathBuf, String> {
    find_program("mosquitto", &["/usr/sbin/mosquitto", "/usr/bin/mosquitto"])
        .ok_or_else(|| "mosquitto not found: apt-get install mosquitto".to_string())
}

/// `mosquitto -h` prints its version on the first line.
pub fn mosquitto_version() -> String {
    let Ok(bin) = mosquitto_binary() else {
        return "?".into();
    };
    Command::new(bin)
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

impl Mosquitto {
    pub fn start(role: &str) -> Result<Mosquitto, String> {
        let mut errors = Vec::new();
        for _ in 0..5 {
            match Self::spawn(role) {
                Ok(m) => return Ok(m),
                Err(e) => errors.push(e),
            }
        }
        Err(format!(
            "mosquitto ({role}) did not start:\n{}",
            errors.join("\n")
        ))
    }

    fn spawn(role: &str) -> Result<Mosquitto, String> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("outpost-bench-{role}-"))
            .tempdir()
            .map_err(|e| e.to_string())?;
        let port = free_port()?;
        let d = dir.path();
        // No persistence, no per-message log lines: only what the runner
        // reads (subscriptions, to know when a gateway is ready). No queue
        // limit, so a slow subscriber is measured as slow rather than
        // silently losing QoS 0 readings.
        let mut conf = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence false\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n\
             log_type subscribe\n\
             max_queued_messages 0\n\
             max_queued_bytes 0\n",
            dir = d.display()
        );
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } == 0 {
            conf.push_str("user root\n");
        }
        let conf_path = d.join("mosquitto.conf");
        fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let stderr = File::create(d.join("mosquitto.stderr")).map_err(|e| e.to_string())?;
        let child = Command::new(mosquitto_binary()?)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn mosquitto: {e}"))?;
        let mut m = Mosquitto { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = m.child.try_wait() {
                return Err(format!("mosquitto exited with {st}: {}", m.log()));
            }
            if port_accepts(port) {
                return Ok(m);
            }
            if Instant::now() >= deadline {
                return Err(format!("mosquitto did not accept on {port}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        let d = self.dir.path();
        let log = fs::read_to_string(d.join("mosquitto.log")).unwrap_or_default();
        let err = fs::read_to_string(d.join("mosquitto.stderr")).unwrap_or_default();
        format!("{log}{err}")
    }

    /// True once the broker logged a subscription of `client_id` to `filter`
    /// (`log_type subscribe`: `<time>: <client id> <qos> <filter>`).
    pub fn has_subscription(&self, client_id: &str, filter: &str) -> bool {
        let log = fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default();
        log.lines().any(|l| {
            let mut w = l.split_whitespace().skip(1);
            w.next() == Some(client_id) && w.nth(1) == Some(filter)
        })
    }

    /// Lines the broker logged about dropping messages, if any.
    pub fn drops(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("dropped") || l.contains("Dropped"))
            .count()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
