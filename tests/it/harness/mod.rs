//! The integration tests' harness: real processes, real sockets.
//!
//! Everything here talks to the outside world the way a user's setup would:
//! a real Mosquitto on `127.0.0.1:<free port>` (`broker`), pseudo-terminals
//! made by `socat` standing in for USB serial adapters (`pty`), the
//! `outpost` binary itself (`gateway`), a TCP proxy between the gateway and
//! its broker that can break the link in the ways real links break
//! (`proxy`), MQTT clients that observe what arrives (`subscriber`),
//! certificates made with `openssl` (`pki`), a plain HTTP client for the
//! gateway's endpoint (`http`), pymodbus's Modbus server (`modbus`), a
//! RabbitMQ node with its MQTT plugin and an AMQP consumer (`rabbitmq`), the
//! configs tests write (`config`), the
//! setups most tests share (`rig`), storage faults made for real: a small
//! filesystem to fill, an outbox's files to damage (`storage`), and a
//! process's file descriptors and their limit (`fds`). Each test owns its
//! brokers, ports and
//! temporary folders, so tests run in parallel.
//!
//! Every wait is a poll of a condition with a deadline (or a blocking
//! receive with one); nothing sleeps "to let things settle". When a test
//! fails, the helpers' `Drop` prints the gateway's and the brokers' logs.

/// The fields of an alert's JSON payload, as docs/contract.md lists them.
pub const ALERT_FIELDS: [&str; 14] = [
    "id",
    "seq",
    "gateway",
    "rule",
    "sensor",
    "metric",
    "state",
    "severity",
    "value",
    "threshold",
    "ts",
    "since",
    "message",
    "labels",
];

pub mod broker;
pub mod config;
pub mod fds;
pub mod gateway;
pub mod http;
pub mod modbus;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod pty;
pub mod rabbitmq;
pub mod rig;
pub mod storage;
pub mod subscriber;
pub mod tinyfs;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub use broker::{Mosquitto, MosquittoOpts, password_file};
pub use config::{Config, HOT_RULE, reading};
pub use gateway::{Gateway, Launch, Output, check, run_outpost};
pub use modbus::ModbusServer;
pub use pki::Pki;
pub use process::{cpu_time, free_port, port_accepts, status_kib};
pub use proxy::{Proxy, assert_backs_off};
pub use pty::Pty;
pub use rig::{ALERTS, MqttRig, SerialRig};
pub use subscriber::{
    Msg, Subscriber, alert_is, dedup_alerts, parse_ts_millis_z, publish, publish_burst,
};
pub use tinyfs::TinyFs;

/// The default deadline of a wait: long enough for a loaded 2-core CI
/// machine, short enough that a broken test fails quickly.
pub const WAIT: Duration = Duration::from_secs(15);

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(20);

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

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Unique within this test run: for client ids and file names.
pub fn unique_suffix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

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

mod tests;
