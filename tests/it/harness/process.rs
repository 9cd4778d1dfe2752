//! Processes and ports: finding a program, signalling and reaping a child,
//! and free TCP ports on 127.0.0.1.
//!
//! Shared with the end-to-end bench (`benches/e2e`), which includes this
//! file and `broker.rs` by path: keep it free of the rest of the harness.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How often a child's exit or a port is polled.
const POLL: Duration = Duration::from_millis(10);

/// A TCP port that was free a moment ago on 127.0.0.1.
///
/// Another process may take it before it is bound again: whoever binds it
/// later must retry with a new port when that happens (see `Mosquitto`).
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

/// A `kB` line of /proc/PID/status (`VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// The first of `well_known` that exists, else `name` on the PATH.
pub fn find_program(name: &str, well_known: &[&str]) -> Option<PathBuf> {
    if let Some(p) = well_known.iter().map(Path::new).find(|p| p.is_file()) {
        return Some(p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Sends `sig` to a child we own and have not reaped.
pub fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child we own and have not reaped, so
    // the pid cannot have been reused by another process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// SIGKILL, and reap, unless it already exited.
pub fn kill_and_reap(child: &mut Child) {
    if !matches!(child.try_wait(), Ok(Some(_))) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// SIGTERM, up to `timeout` for the exit, then SIGKILL. The exit status
/// when it stopped by itself.
pub fn stop_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    signal(child, libc::SIGTERM);
    let st = wait_child(child, timeout);
    kill_and_reap(child);
    st
}

/// Runs the tool `name` (looked for in `well_known`, then on the PATH) with
/// `args` in `dir`; panics, with its stderr, when it is missing or fails.
pub fn run_tool(name: &str, well_known: &[&str], args: &[&str], dir: &Path) {
    let bin = find_program(name, well_known)
        .unwrap_or_else(|| panic!("{name} not found: run `./scripts/test`, or install it"));
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
