//! Pseudo-terminals joined by `socat`: the serial ports of the tests.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::process::{find_program, kill_and_reap, stop_child};
use super::{Msg, Subscriber, WAIT, alert_is, poll_until, retry_until};

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
            panic!("socat not found: run `./scripts/test`, or `apt-get install socat`")
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

    /// The other end, for a test-side program that opens it itself (a
    /// Modbus server).
    pub fn test_path(&self) -> PathBuf {
        self.test_link.clone()
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

    /// Writes `line` until an alert for `sensor` in `state` arrives at `sub`.
    ///
    /// Repeating a reading is harmless: a rule alerts on transitions, not
    /// per reading. It covers the gateway opening the port a moment late.
    pub fn write_until_alert(
        &mut self,
        sub: &mut Subscriber,
        line: &str,
        sensor: &str,
        state: &str,
    ) -> Msg {
        retry_until(
            WAIT,
            std::time::Duration::from_millis(500),
            &format!("an alert for {sensor} {state} after writing {line}"),
            || self.write_line(line),
            |t| sub.try_wait_for(t, |m| alert_is(m, sensor, state)),
        )
    }

    /// Unplugs the adapter: both terminals disappear.
    pub fn unplug(&mut self) {
        self.writer = None;
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, WAIT);
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
