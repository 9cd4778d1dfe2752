//! A real Modbus implementation nobody here wrote: pymodbus's server
//! (`modbus_server.py` beside this file), on the far end of a socat
//! pseudo-terminal pair (RTU) or on a free TCP port, with the registers a
//! test gives it and faults injected on command (a unit that stops
//! answering, answers with a flipped bit).
//!
//! Python with pymodbus comes from `$OUTPOST_TEST_PYTHON`, else the
//! virtualenv `./scripts/test` makes in `target/test-venv`, else `python3`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};

use serde_json::Value;

use super::WAIT;
use super::process::kill_and_reap;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/it/harness/modbus_server.py"
);

/// The Python that has pymodbus.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("OUTPOST_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python3");
    if venv.is_file() {
        return venv;
    }
    PathBuf::from("python3")
}

/// A running pymodbus server; killed on drop.
pub struct ModbusServer {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    log: PathBuf,
}

impl ModbusServer {
    /// An RTU server on the serial port `port` (the test's end of a pty
    /// pair), with the devices of `spec` (see `modbus_server.py`).
    pub fn serial(dir: &Path, port: &Path, spec: &Value) -> ModbusServer {
        ModbusServer::start(dir, spec, &["--serial", &port.display().to_string()])
    }

    /// A Modbus TCP server on 127.0.0.1:`port`.
    pub fn tcp(dir: &Path, port: u16, spec: &Value) -> ModbusServer {
        ModbusServer::start(dir, spec, &["--tcp", &port.to_string()])
    }

    fn start(dir: &Path, spec: &Value, args: &[&str]) -> ModbusServer {
        let n = super::unique_suffix();
        let spec_path = dir.join(format!("modbus-spec-{n}.json"));
        std::fs::write(&spec_path, spec.to_string()).unwrap();
        let log = dir.join(format!("modbus-server-{n}.log"));
        let mut child = Command::new(python())
            .arg(SCRIPT)
            .arg("--spec")
            .arg(&spec_path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (python with pymodbus: run ./scripts/test): {e}",
                    python().display()
                )
            });
        let stdin = child.stdin.take().unwrap(); // piped above
        let stdout = child.stdout.take().unwrap(); // piped above
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut s = ModbusServer {
            child,
            stdin,
            lines,
            log,
        };
        s.expect("ready");
        s
    }

    fn expect(&mut self, want: &str) {
        match self.lines.recv_timeout(WAIT) {
            Ok(line) if line == want => {}
            got => panic!(
                "the modbus server said {got:?}, not {want:?}; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            ),
        }
    }

    /// `silence U`, `speak U`, `garble U`, `clean U`: in force when it returns.
    pub fn command(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        self.expect("ok");
    }
}

impl Drop for ModbusServer {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "---- modbus server log ----\n{}",
                super::tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 40)
            );
        }
    }
}
